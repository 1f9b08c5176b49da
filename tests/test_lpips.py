"""LPIPS (score_sde/lpips.py): the weights file, the distance's defining properties, the
converter from the PyTorch files, the one-line errors, and 'lpips' as the CD distance.

All with randomly generated weights in the file layout (the real ones cannot be shipped);
agreement with the reference package on its real lin weights is benchmarks/lpips_reference.py
(benchmarks/results/lpips_reference.json). Fast tests use 16 x 16 images without resizing
(VGG16's smallest input with a relu5_3 map); the CD step at the published 224 x 224 is slow.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import consistency_losses as CL
from score_sde import lpips as L


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """(path, params): a random weights file in the layout."""
    params = L.random_params(0)
    path = str(tmp_path_factory.mktemp("lpips") / "lpips_vgg.npz")
    L.save_weights(path, params)
    return path, params


LPIPS = jax.jit(L.lpips)  # (params, a, b): one compilation serves every weights variant


@pytest.fixture(scope="module")
def dist(weights):
    """LPIPS on network-range images with the file's weights."""
    params = jax.tree.map(jnp.asarray, L.load_weights(weights[0]))
    return lambda a, b: LPIPS(params, a, b)


def _images(seed: int, shape=(2, 16, 16, 3), low: float = -1.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, 1.0, shape).astype(np.float32)


def test_weights_file_round_trip(weights):
    path, params = weights
    loaded = L.load_weights(path)
    assert set(loaded) == set(L.expected_shapes()) == set(params)
    for k in params:
        np.testing.assert_array_equal(loaded[k], params[k])
    assert len([k for k in loaded if k.endswith("/kernel")]) == 13  # VGG16's convolutions
    assert sum(v.size for k, v in loaded.items() if not k.startswith("lin/")) == 14_714_688


def test_constants_are_imagenet_normalisation_of_unit_range_images():
    """(x - SHIFT) / SCALE on [-1, 1] equals ((x + 1) / 2 - mean) / std with ImageNet's
    mean and std (what piq's LPIPS in the consistency-models code applies to [0, 1])."""
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(L.SHIFT, 2 * mean - 1, atol=1e-3)
    np.testing.assert_allclose(L.SCALE, 2 * std, atol=1e-3)


def test_taps_are_the_last_relu_of_each_vgg_block(weights):
    shapes = jax.eval_shape(lambda x: L.vgg_features(weights[1], x),
                            jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
    assert [s.shape for s in shapes] == [(2, 32, 32, 64), (2, 16, 16, 128), (2, 8, 8, 256),
                                         (2, 4, 4, 512), (2, 2, 2, 512)]


def test_distance_is_zero_on_equal_images_symmetric_and_positive(dist):
    x, y = _images(0), _images(1)
    d_xy, d_yx = np.asarray(dist(x, y)), np.asarray(dist(y, x))
    # 0 up to float32 round-off (rows of one batch may be summed in different orders)
    assert float(jnp.max(dist(x, x))) < 1e-12 < 1e-4 < d_xy.min()
    np.testing.assert_allclose(d_xy, d_yx, rtol=1e-6)
    assert np.all(d_xy > 1e-4)
    # one image at a time gives the same per-example values (no mixing across the batch)
    np.testing.assert_allclose(np.asarray(dist(x[:1].repeat(2, 0), y[:1].repeat(2, 0))),
                               [d_xy[0]] * 2, rtol=1e-5)


def test_unit_normalisation_is_per_pixel_over_channels():
    f = jnp.asarray(_images(0, (2, 5, 5, 7), low=0.0))
    s = 10.0 * _images(1, (2, 5, 5, 1), low=0.01)
    unit = jax.jit(L.unit_normalize)
    n = unit(f)
    np.testing.assert_allclose(np.asarray(unit(f * s)), np.asarray(n), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(n), axis=-1), 1.0, rtol=1e-5)
    # a pixel whose features all vanish: value 0 and a finite gradient (a plain sqrt: NaN)
    g = jax.jit(jax.grad(lambda f: L.unit_normalize(f).sum()))(f.at[0, 0, 0].set(0.0))
    assert np.all(np.isfinite(np.asarray(g)))


def test_feature_scale_does_not_change_the_distance(weights):
    """With zero biases VGG16 is positively homogeneous, so images shift + u and shift + c u
    (c > 0) have proportional features at every tap: LPIPS between them is 0 (up to the
    1e-10 of the normalisation) and their distances to a third image are equal; with the
    biases, contrast matters again."""
    no_bias = {k: (np.zeros_like(v) if k.endswith("/bias") else v)
               for k, v in weights[1].items()}
    d = LPIPS
    shift = np.asarray(L.SHIFT, np.float32)
    u = 0.2 * _images(2)
    a, a3, y = shift + u, shift + 3.0 * u, _images(3)
    assert float(np.max(d(no_bias, a, a3))) < 1e-6
    np.testing.assert_allclose(np.asarray(d(no_bias, a3, y)), np.asarray(d(no_bias, a, y)),
                               rtol=1e-5)
    assert float(np.min(d(weights[1], a, a3))) > 1e-4


def test_layers_add_up_with_their_lin_weights(weights, dist):
    """d is linear in the lin weights: the distances with the taps split into two groups
    (the other group's lin weights zero) add up to the distance."""
    x, y = _images(4), _images(5)
    parts = []
    for group in (L.TAPS[0::2], L.TAPS[1::2]):
        only = {k: (v if not k.startswith("lin/") or k[4:] in group else np.zeros_like(v))
                for k, v in weights[1].items()}
        parts.append(np.asarray(LPIPS(only, x, y)))
    assert all(np.all(p > 1e-5) for p in parts)
    np.testing.assert_allclose(parts[0] + parts[1], np.asarray(dist(x, y)), rtol=1e-5)


def test_prepare_maps_data_to_lpips_input():
    x01 = _images(0, (2, 16, 16, 1), low=0.0)
    got = jax.jit(lambda x: L.prepare(x, centered=False, resize=None))(x01)
    np.testing.assert_allclose(np.asarray(got), np.repeat(2 * np.asarray(x01) - 1, 3, -1),
                               rtol=1e-6)
    big = jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32)
    assert jax.eval_shape(L.prepare, big).shape == big.shape  # side >= 256: as is
    # a ramp along the width, upsampled bilinearly with half-pixel centres (torch's
    # align_corners=False): out[j] = clip((j + 0.5) 16 / 224 - 0.5, 0, 15)
    ramp = np.broadcast_to(np.arange(16.0, dtype=np.float32)[None, None, :, None], (1, 16, 16, 1))
    out = np.asarray(jax.jit(L.prepare)(ramp))
    assert out.shape == (1, 224, 224, 3)
    want = np.clip((np.arange(224) + 0.5) * 16 / 224 - 0.5, 0, 15)
    np.testing.assert_allclose(out[0, 100, :, 1], want, atol=1e-4)


# ---------------------------------------------------------------------------- converter


def _torch_layout(params, prefix):
    """The PyTorch state dicts of `params` (OIHW kernels, (1, C, 1, 1) lin weights)."""
    vgg = {}
    for (name, _, _), idx in zip(L.conv_names(), L.VGG_CONV_INDEX, strict=True):
        vgg[f"{prefix(idx)}{idx}.weight"] = params[f"{name}/kernel"].transpose(3, 2, 0, 1)
        vgg[f"{prefix(idx)}{idx}.bias"] = params[f"{name}/bias"]
    lin = {f"lin{k}.model.1.weight": params[f"lin/{t}"].reshape(1, -1, 1, 1)
           for k, t in enumerate(L.TAPS)}
    return vgg, lin


@pytest.mark.parametrize("layout", ["torchvision", "features_only", "lpips_model"])
def test_converter_reads_the_pytorch_layouts(weights, layout):
    params = weights[1]
    prefix = {"torchvision": lambda i: "features.", "features_only": lambda i: "",
              "lpips_model": lambda i: f"net.slice{1 + sum(i > j for j in (3, 8, 15, 22))}."}
    vgg, lin = _torch_layout(params, prefix[layout])
    vgg["classifier.0.weight"] = np.zeros((4, 4), np.float32)  # other keys are ignored
    got = L.from_torch_state_dicts(vgg, lin)
    assert set(got) == set(params)
    for k in params:
        np.testing.assert_array_equal(got[k], params[k])


def test_converter_names_the_missing_key(weights):
    vgg, lin = _torch_layout(weights[1], lambda i: "features.")
    del vgg["features.19.bias"]
    with pytest.raises(KeyError, match=r"features\.19\.bias \(VGG16 conv4_2\.bias\)"):
        L.from_torch_state_dicts(vgg, lin)
    vgg, lin = _torch_layout(weights[1], lambda i: "features.")
    del lin["lin3.model.1.weight"]
    with pytest.raises(KeyError, match="lin3.model.1.weight"):
        L.from_torch_state_dicts(vgg, lin)


# ------------------------------------------------------------------------------- errors


def _one_line(call, exc, *needles):
    with pytest.raises(exc) as e:
        call()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)


def test_bad_weights_files_give_one_line_naming_the_key(tmp_path, weights):
    field = "config.consistency.lpips_weights"
    load = lambda p: L.load_weights(str(p), field)  # noqa: E731
    _one_line(lambda: load(tmp_path / "none.npz"), FileNotFoundError, field, "none.npz",
              "does not exist", "convert_lpips_weights.py")
    (tmp_path / "text.npz").write_text("not a zip")
    _one_line(lambda: load(tmp_path / "text.npz"), ValueError, "not an .npz")
    params = dict(weights[1])
    del params["conv3_2/kernel"]
    np.savez(tmp_path / "missing.npz", **params)
    _one_line(lambda: load(tmp_path / "missing.npz"), ValueError, "missing key 'conv3_2/kernel'",
              "(3, 3, 256, 256)")
    np.savez(tmp_path / "shape.npz", **dict(weights[1], **{"lin/relu4_3": np.ones(256)}))
    _one_line(lambda: load(tmp_path / "shape.npz"), ValueError, "'lin/relu4_3'", "(256,)",
              "(512,)")
    np.savez(tmp_path / "neg.npz", **dict(weights[1], **{"lin/relu1_2": -np.ones(64)}))
    _one_line(lambda: load(tmp_path / "neg.npz"), ValueError, "'lin/relu1_2'", "negative")
    np.savez(tmp_path / "layout.npz", layout=np.asarray("other"), **weights[1])
    _one_line(lambda: load(tmp_path / "layout.npz"), ValueError, "'layout'")


def test_lpips_distance_errors_are_one_line(tmp_path, weights):
    _one_line(lambda: CL.get_distance("lpips", 64, ""), ValueError,
              "config.consistency.lpips_weights", "convert_lpips_weights.py")
    _one_line(lambda: CL.get_distance("lpips", 64, str(tmp_path / "x.npz")), FileNotFoundError,
              "config.consistency.lpips_weights", "x.npz")
    d = CL.get_distance("lpips", 4, weights[0])
    _one_line(lambda: jax.eval_shape(d, jnp.zeros((2, 4)), jnp.zeros((2, 4))), ValueError,
              "config.consistency.distance='lpips'", "(2, 4)", "images")


# ------------------------------------------------------------------------- the CD step


@pytest.mark.slow
def test_cd_step_with_lpips_distance_trains_a_tiny_model(weights):
    """One CD step with distance 'lpips' (8 x 8 images upsampled to 224, as published) on a
    tiny EDM network, its own teacher: a finite positive loss, finite updated parameters,
    and the loss differs from the l2 one on the same batch and key."""
    from configs.consistency import make_consistency
    from score_sde import losses
    from score_sde.models import get_model
    from tests.driver_configs import tiny

    def step_for(distance):
        base = tiny({"training.batch_size": 2, "optim.warmup": 0})  # warm-up: lr 0 at step 0
        config = make_consistency(base, "cd", num_levels=6, distance=distance,
                                  lpips_weights=weights[0])
        model = get_model(config)
        opt = losses.get_optimizer(config)
        state = losses.init_train_state(jax.random.PRNGKey(0), config, model, opt)
        step = jax.jit(CL.get_step_fn(config, model, opt, (config, CL._student_sde(config),
                                                          model)))
        return state, step, config

    state, step, config = step_for("lpips")
    size, ch = int(config.data.image_size), int(config.data.num_channels)
    batch = {"image": jax.random.uniform(jax.random.PRNGKey(1), (2, size, size, ch),
                                         minval=-1.0, maxval=1.0)}
    new, loss = step(state, batch)
    assert np.isfinite(float(loss)) and float(loss) > 0
    leaves = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)),
                                          new.params, state.params))
    assert all(np.isfinite(float(v)) for v in leaves) and max(float(v) for v in leaves) > 0
    l2_state, l2_step, _ = step_for("l2")
    assert abs(float(l2_step(l2_state, batch)[1]) - float(loss)) > 1e-6
