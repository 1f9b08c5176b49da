"""The Flax FID Inception against pytorch-fid's module (same random weights), resize and shapes.

Test-only dependencies: torch (CPU), torchvision and pytorch-fid, e.g.
`pip install torch==2.13.0 torchvision==0.28.0 pytorch-fid==0.3.0`. The equivalence test is not
skipped when they are missing: it fails, so CI cannot silently lose it.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from score_sde.metrics import inception as inc


def _import_torchvision():
    """Import torchvision even where its C++ ops cannot load.

    PyPI's x86_64 torchvision wheel links CUDA torch; beside the CPU build of torch its `_C`
    extension fails to load, and torchvision's import then trips over two unguarded fake-kernel
    registrations for the detection ops `nms` and `qnms`. Declaring those two operator schemas
    (no kernels) lets the pure-Python model code (all pytorch-fid uses) import unchanged.
    """
    import torch

    try:
        import torchvision
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            try:
                lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            except RuntimeError:
                pass
        _import_torchvision.lib = lib  # keep the registration alive
        import torchvision
    return torchvision


def _random_state_dict(torch, model, seed=0):
    """Random weights with O(1) activations throughout (He-scaled convs, near-identity BN)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, value in model.state_dict().items():
        shape = value.shape
        if key.endswith("num_batches_tracked"):
            sd[key] = value
        elif key.endswith("conv.weight"):
            fan_in = shape[1] * shape[2] * shape[3]
            sd[key] = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
        elif key == "fc.weight":
            sd[key] = torch.randn(shape, generator=gen) / shape[1] ** 0.5
        elif key.endswith("running_var") or key.endswith("bn.weight"):
            sd[key] = 0.5 + torch.rand(shape, generator=gen)
        else:  # bn.bias, running_mean, fc.bias
            sd[key] = 0.2 * (torch.rand(shape, generator=gen) - 0.5)
    return sd


@pytest.fixture(scope="module")
def pytorch_fid_models():
    """pytorch-fid's InceptionV3 (pool3 features) and FID Inception3 (logits), random weights."""
    import torch

    _import_torchvision()
    from pytorch_fid import inception as pfi

    # torchvision's Inception3 has the FID network's parameter names and shapes (the FID blocks
    # only change forward passes), so it serves as the template for random weights.
    template = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    state_dict = _random_state_dict(torch, template)
    original_loader = pfi.load_state_dict_from_url
    pfi.load_state_dict_from_url = lambda *a, **k: state_dict  # never download
    try:
        features_net = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
        logits_net = pfi.fid_inception_v3().eval()
    finally:
        pfi.load_state_dict_from_url = original_loader
    return torch, state_dict, features_net, logits_net


def test_flax_matches_pytorch_fid_with_same_weights(pytorch_fid_models, tmp_path):
    torch, state_dict, features_net, logits_net = pytorch_fid_models
    # The user's path: a .pth state_dict, converted once by the CLI into a .msgpack.
    pth, converted = tmp_path / "pt_inception.pth", tmp_path / "inception.msgpack"
    torch.save(state_dict, pth)
    inc.main([str(pth), str(converted)])
    variables = inc.load_inception_variables(converted)
    n_torch = sum(p.numel() for p in logits_net.parameters())
    n_flax = sum(v.size for v in jax.tree_util.tree_leaves(variables["params"]))
    assert n_flax == n_torch == 23_850_960

    rng = np.random.default_rng(0)
    images = rng.uniform(size=(2, 37, 45, 3)).astype(np.float32)  # odd size: exercises resize

    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2)
        ref_features = features_net(x)[0].reshape(2, -1).numpy()
        x299 = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear",
                                               align_corners=False)
        ref_logits = logits_net(2 * x299 - 1).numpy()

    # Batch sharded over a 2-device 'data' mesh.
    mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
    fn = inc.inception_feature_fn(variables, batch_size=2, mesh=mesh)
    out = fn(images)
    assert out["features"].shape == (2, 2048) and out["logits"].shape == (2, 1008)
    feat_diff = np.max(np.abs(out["features"] - ref_features))
    logit_diff = np.max(np.abs(out["logits"] - ref_logits))
    print(f"max |features diff| {feat_diff:.2e} (scale {np.abs(ref_features).max():.2f}), "
          f"max |logits diff| {logit_diff:.2e} (scale {np.abs(ref_logits).max():.2f})")
    assert np.abs(ref_features).max() > 0.1 and np.abs(ref_logits).max() > 0.1  # not degenerate
    assert feat_diff < 1e-4
    assert logit_diff < 1e-4


@pytest.mark.parametrize("in_size,out_size", [(8, 299), (32, 299), (299, 299), (64, 17),
                                              (1024, 299)])
def test_resize_matches_torch_interpolate(in_size, out_size):
    import torch

    rng = np.random.default_rng(in_size)
    x = rng.uniform(size=(1, in_size, in_size + 3, 2)).astype(np.float32)
    got = np.asarray(inc.resize_bilinear(jnp.asarray(x), (out_size, out_size + 1)))
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(x).permute(0, 3, 1, 2), size=(out_size, out_size + 1),
        mode="bilinear", align_corners=False,
    ).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_resize_constant_image_stays_constant():
    x = jnp.full((1, 8, 8, 3), 0.25)
    np.testing.assert_allclose(np.asarray(inc.resize_bilinear(x, (299, 299))), 0.25, atol=1e-6)


@pytest.mark.parametrize("size", [8, 32, 64, 256, 1024])
def test_output_shapes_any_input_size(size):
    def forward(x):
        return inc.InceptionV3FID().init_with_output(jax.random.key(0), x)[0]

    out = jax.eval_shape(forward, jax.ShapeDtypeStruct((3, size, size, 3), jnp.float32))
    assert out["features"].shape == (3, 2048)
    assert out["logits"].shape == (3, 1008)


def test_no_resize_needs_at_least_75_pixels():
    model = inc.InceptionV3FID(resize_input=False)
    out = jax.eval_shape(
        lambda x: model.init_with_output(jax.random.key(0), x)[0],
        jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32),
    )
    assert out["features"].shape == (1, 2048)


def test_converted_weights_roundtrip_msgpack(tmp_path):
    shapes = inc._variable_shapes()
    rng = np.random.default_rng(0)
    variables = jax.tree_util.tree_map(
        lambda s: rng.normal(size=s).astype(np.float32), shapes,
        is_leaf=lambda s: isinstance(s, tuple),
    )
    path = tmp_path / "inception.msgpack"
    inc.save_inception_variables(path, variables)
    loaded = inc.load_inception_variables(path)
    for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(loaded),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_weight_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="Nothing is downloaded"):
        inc.load_inception_variables(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="not an FID Inception"):
        inc.convert_pytorch_fid_state_dict({"fc.weight": np.zeros((10, 2048))})
    bad = tmp_path / "weights.h5"
    bad.write_bytes(b"")
    with pytest.raises(ValueError, match="format"):
        inc.load_inception_variables(bad)


@pytest.mark.slow
def test_fid_statistics_and_evaluation_with_inception(tmp_path):
    """dataset_statistics / evaluate_samples through the Inception path (random weights)."""
    from score_sde.metrics import stats

    shapes = inc._variable_shapes()
    rng = np.random.default_rng(0)
    variables = jax.tree_util.tree_map(
        lambda s: (0.5 + rng.uniform(size=s) if len(s) == 1 else
                   rng.normal(size=s) * (2.0 / np.prod(s[:-1])) ** 0.5).astype(np.float32),
        shapes, is_leaf=lambda s: isinstance(s, tuple),
    )
    weights = tmp_path / "inception.msgpack"
    inc.save_inception_variables(weights, variables)
    images = rng.uniform(size=(8, 16, 16, 1)).astype(np.float32)
    ref_path = tmp_path / "ref.npz"
    ref = stats.dataset_statistics([images[:4], {"image": images[4:]}], "inception",
                                   inception_weights=weights, batch_size=4, out_path=ref_path)
    assert ref["features"].shape == (8, 2048) and ref["sigma"].shape == (2048, 2048)
    res = stats.evaluate_samples(images, ref_path, "inception", inception_weights=weights,
                                 batch_size=4, kid_subsets=5, is_splits=2)
    assert set(res) == {"fid", "kid", "kid_std", "is", "is_std", "num_samples"}
    assert res["fid"] < 1e-3 * max(1.0, np.trace(ref["sigma"]))
    assert 1.0 <= res["is"] <= 1008
