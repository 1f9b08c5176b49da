"""Score networks: forward passes over the option space, config errors, score_fn conventions."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from score_sde import sde_lib
from score_sde.models import count_params, get_model, init_model, list_models
from score_sde.models.utils import get_model_fn, get_score_fn
from tests.test_configs import expected_params

RNG = jax.random.PRNGKey(0)


def make_config(name: str = "ncsnpp", size: int = 8, channels: int = 2,
                **model) -> ml_collections.ConfigDict:
    """A tiny config: 8x8 input, ch_mult (1, 2), nf 8, attention at 4x4."""
    c = ml_collections.ConfigDict()
    c.training = dict(continuous=True)
    c.data = dict(image_size=size, num_channels=channels, centered=False)
    c.model = dict(
        name=name, nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1,
        resamp_with_conv=True, conditional=True, fir=False, fir_kernel=[1, 3, 3, 1],
        skip_rescale=True, resblock_type="biggan", progressive="none", progressive_input="none",
        progressive_combine="sum", attention_type="ddpm", init_scale=0.0,
        embedding_type="positional", fourier_scale=16, conv_size=3, scale_by_sigma=False,
        normalization="GroupNorm", nonlinearity="swish", sigma_min=0.01, sigma_max=50.0,
        num_scales=10, beta_min=0.1, beta_max=20.0, num_classes=0, interpolation="bilinear")
    c.model.update(model)
    if name == "mlp":
        c.data.dim = 3
    return c


def noise_input(config, batch: int) -> jax.Array:
    """Labels each model accepts: sigmas for Fourier models, noise-level indices otherwise."""
    if config.model.embedding_type == "fourier":
        return jnp.linspace(0.05, 20.0, batch)
    return jnp.arange(batch, dtype=jnp.float32) % config.model.num_scales


COMBOS = {
    "ncsnpp_ve_fir_residual_input_fourier_sigma": dict(
        fir=True, progressive_input="residual", embedding_type="fourier", scale_by_sigma=True),
    "ddpmpp_positional": dict(),
    "ncsnpp_fir_output_skip_input_skip": dict(
        fir=True, progressive="output_skip", progressive_input="input_skip",
        embedding_type="fourier"),
    "biggan_residual_both_cat": dict(
        progressive="residual", progressive_input="input_skip", progressive_combine="cat"),
    "ddpmblocks_fir_residual_both": dict(
        resblock_type="ddpm", fir=True, progressive="residual", progressive_input="residual"),
    "ddpmblocks_nofir_output_skip_cat_noconv": dict(
        resblock_type="ddpm", progressive="output_skip", progressive_input="input_skip",
        progressive_combine="cat", resamp_with_conv=False, embedding_type="fourier"),
    "unconditional_class_conditional": dict(conditional=False, num_classes=3),
    # The DDPM U-Net uses GroupNorm with 32 groups: nf must be a multiple of 32.
    "ddpm": dict(name="ddpm", nf=32, channels=3),
    "ddpm_smld_scale_by_sigma_classes": dict(name="ddpm", nf=32, scale_by_sigma=True,
                                             num_classes=2, channels=3),
    "small_unet_classes": dict(name="small_unet", num_classes=4),
    "small_unet_fourier_16px": dict(name="small_unet", size=16, embedding_type="fourier",
                                    attn_resolutions=(8,)),
    "mlp_classes": dict(name="mlp", nf=16, num_res_blocks=2, num_classes=3),
    "ncsnv2_64_instancenorm_plus": dict(name="ncsnv2_64", size=16, scale_by_sigma=True,
                                        normalization="InstanceNorm++", nonlinearity="elu"),
}


# The parameter-count formula covers the image networks; label tests need num_classes > 0.
IMAGE_COMBOS = sorted(c for c in COMBOS if COMBOS[c].get("name") != "mlp")
CLASS_COMBOS = sorted(c for c in COMBOS if COMBOS[c].get("num_classes", 0) > 0)


def build(combo: str):
    options = dict(COMBOS[combo])
    name = options.pop("name", "ncsnpp")
    size = options.pop("size", 8)
    channels = options.pop("channels", 2 if name != "ddpm" else 3)
    config = make_config(name, size=size, channels=channels, **options)
    return config, get_model(config)


def fake_params(model, x, t, seed: int = 0, **kwargs) -> dict:
    """Parameters of the right tree and shapes, filled by numpy (no XLA RNG compiles: fast)."""
    shapes = jax.eval_shape(lambda: model.init({"params": RNG, "dropout": RNG}, x, t,
                                               **kwargs))["params"]
    rng = np.random.default_rng(seed)

    def fill(path, s):
        if path[-1].key == "scale":  # GroupNorm scale
            return jnp.asarray(1.0 + 0.1 * rng.standard_normal(s.shape), s.dtype)
        return jnp.asarray(0.2 * rng.standard_normal(s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def forward(request):
    """One forward pass of COMBOS[request.param] (tests choose the combos by parametrize)."""
    config, model = build(request.param)
    batch = 3
    shape = (batch, 3) if config.model.name == "mlp" else (
        batch, config.data.image_size, config.data.image_size, config.data.num_channels)
    x = jax.random.normal(RNG, shape)
    t = noise_input(config, batch)
    y = jnp.arange(batch) % config.model.num_classes if config.model.num_classes else None
    kwargs = {} if y is None else {"y": y}
    params = fake_params(model, x, t, **kwargs)
    out = model.apply({"params": params}, x, t, train=False, **kwargs)
    return dict(name=request.param, config=config, model=model, params=params, x=x, t=t, y=y,
                out=out)


@pytest.mark.parametrize("forward", sorted(COMBOS), indirect=True)
def test_output_shape_and_finite(forward):
    assert forward["out"].shape == forward["x"].shape
    assert np.all(np.isfinite(forward["out"]))


@pytest.mark.parametrize("forward", IMAGE_COMBOS, indirect=True)
def test_param_count_matches_formula(forward):
    assert count_params(forward["params"]) == expected_params(forward["config"])


@pytest.mark.parametrize("combo", ["small_unet_classes", "mlp_classes"])
def test_dropout_active_only_in_training(combo):
    config, model = build(combo)
    shape = (2, 3) if config.model.name == "mlp" else (2, 8, 8, config.data.num_channels)
    x, t = jax.random.normal(RNG, shape), noise_input(config, 2)
    params = fake_params(model, x, t)
    apply = model.apply
    a = apply({"params": params}, x, t, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    b = apply({"params": params}, x, t, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    c = apply({"params": params}, x, t, train=False)
    assert a.shape == c.shape == x.shape and np.all(np.isfinite(a))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(c, apply({"params": params}, x, t, train=False))


@pytest.mark.parametrize("forward", CLASS_COMBOS, indirect=True)
def test_class_labels_change_the_output(forward):
    params = forward["params"]
    model, x, t, y = forward["model"], forward["x"], forward["t"], forward["y"]
    out = model.apply({"params": params}, x, t, y=y)
    null = model.apply({"params": params}, x, t)  # y=None is the null label
    explicit_null = model.apply({"params": params}, x, t,
                                y=jnp.full_like(y, forward["config"].model.num_classes))
    assert not np.allclose(out, null)
    np.testing.assert_allclose(null, explicit_null, rtol=1e-6, atol=1e-6)


def test_scale_by_sigma_divides_by_the_noise_level():
    config, model = build("ncsnpp_ve_fir_residual_input_fourier_sigma")
    x = jax.random.normal(RNG, (2, 8, 8, 2))
    sigma = jnp.array([0.5, 4.0])
    params = fake_params(model, x, sigma)
    scaled = model.apply({"params": params}, x, sigma)
    config.model.scale_by_sigma = False
    raw = get_model(config).apply({"params": params}, x, sigma)
    np.testing.assert_allclose(scaled * sigma[:, None, None, None], raw, rtol=1e-5, atol=1e-6)


def test_init_model_is_deterministic_and_zero_initialises_the_output():
    config = make_config("mlp", nf=8, num_res_blocks=1)
    a, b = init_model(RNG, config), init_model(RNG, config)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    time_mlp = (8 * 32 + 32) + (32 * 32 + 32)
    block = 2 * (8 * 8 + 8) + (32 * 8 + 8)
    assert count_params(a) == (3 * 8 + 8) + time_mlp + block + (8 * 3 + 3)
    # The last layer uses init_scale 0 (variance 1e-10, as DDPM): a fresh network outputs ~0.
    out = get_model(config).apply({"params": a}, jnp.ones((2, 3)), jnp.ones((2,)))
    assert np.abs(out).max() < 1e-4


def test_init_model_shapes_follow_the_config():
    config = make_config("small_unet")
    shapes = jax.eval_shape(lambda: init_model(RNG, config))
    assert shapes["Conv_0"]["kernel"].shape == (3, 3, 2, 8)
    assert count_params(shapes) == expected_params(config)


# ----------------------------------------------------------------------------------------------
# Config errors: one clear ValueError naming the field.


def test_unknown_model_name():
    with pytest.raises(ValueError, match=r"config\.model\.name='nope'.*ncsnpp"):
        get_model(make_config("nope"))
    assert {"ncsnpp", "ddpm", "small_unet", "mlp", "ncsnv2_64", "ncsnv2_128",
            "ncsnv2_256"} <= set(list_models())


@pytest.mark.parametrize("name", ["ncsnpp", "ddpm", "small_unet"])
def test_image_size_must_allow_the_downsampling(name):
    config = make_config(name, size=10, ch_mult=(1, 2, 2))
    with pytest.raises(ValueError, match=r"config\.data\.image_size=10 .*divisible by .*=4"):
        get_model(config)


@pytest.mark.parametrize("field,value", [("progressive", "skip"), ("progressive_input", "sum"),
                                         ("progressive_combine", "avg"),
                                         ("resblock_type", "wide"), ("embedding_type", "rff"),
                                         ("nonlinearity", "gelu2"), ("normalization", "BN")])
def test_bad_option_names_the_field(field, value):
    config = make_config("ncsnv2_64" if field == "normalization" else "ncsnpp", **{field: value})
    with pytest.raises(ValueError, match=rf"config\.model\.{field}='{value}'"):
        model = get_model(config)
        model.init({"params": RNG}, jnp.zeros((1, 8, 8, 2)), jnp.ones((1,)))


def test_fourier_needs_continuous_training():
    config = make_config(embedding_type="fourier")
    config.training.continuous = False
    with pytest.raises(ValueError, match=r"config\.training\.continuous"):
        get_model(config).init({"params": RNG}, jnp.zeros((1, 8, 8, 2)), jnp.ones((1,)))


def test_class_labels_without_classes_is_an_error():
    config = make_config("small_unet")
    with pytest.raises(ValueError, match=r"config\.model\.num_classes is 0"):
        get_model(config).init({"params": RNG}, jnp.zeros((1, 8, 8, 2)), jnp.ones((1,)),
                               y=jnp.zeros((1,), jnp.int32))


# ----------------------------------------------------------------------------------------------
# get_score_fn conventions, checked with a stub network that returns its noise input.


class Stub(nn.Module):
    """output = labels (+ 1000 * y), broadcast to x's shape."""

    @nn.compact
    def __call__(self, x, labels, train=False, y=None):
        out = jnp.broadcast_to(labels.reshape((-1,) + (1,) * (x.ndim - 1)), x.shape)
        if y is not None:
            out = out + 1000.0 * y.reshape((-1,) + (1,) * (x.ndim - 1))
        return out.astype(jnp.float32)


X = jnp.ones((3, 2, 2, 1))
T = jnp.array([0.1, 0.5, 1.0])


def score(sde, continuous, **kwargs):
    return np.asarray(get_score_fn(sde, Stub(), {}, continuous=continuous, **kwargs)(X, T))[:, 0,
                                                                                           0, 0]


def test_vp_continuous_score_is_minus_output_over_std():
    sde = sde_lib.VPSDE()
    std = np.asarray(sde.marginal_prob(X, T)[1])
    np.testing.assert_allclose(score(sde, True), -(np.asarray(T) * 999) / std, rtol=1e-5)


def test_vp_discrete_uses_ddpm_grid():
    sde = sde_lib.VPSDE(N=1000)
    idx = np.floor(np.asarray(T) * 999 + 1e-4).astype(int)
    std = np.sqrt(1 - sde.alphas_cumprod[idx])
    np.testing.assert_allclose(score(sde, False), -(np.asarray(T) * 999) / std, rtol=1e-5)


def test_subvp_always_uses_continuous_labels():
    sde = sde_lib.subVPSDE()
    std = np.asarray(sde.marginal_prob(X, T)[1])
    expected = -(np.asarray(T) * 999) / std
    np.testing.assert_allclose(score(sde, False), expected, rtol=1e-5)
    np.testing.assert_allclose(score(sde, True), expected, rtol=1e-5)


def test_ve_continuous_feeds_sigma_and_returns_output():
    sde = sde_lib.VESDE()
    np.testing.assert_allclose(score(sde, True), np.asarray(sde.sigma(T)), rtol=1e-5)


def test_ve_discrete_feeds_smld_index():
    sde = sde_lib.VESDE(N=1000)
    np.testing.assert_array_equal(score(sde, False), np.round((1 - np.asarray(T)) * 999))


def test_class_labels_are_forwarded():
    sde = sde_lib.VESDE()
    y = jnp.array([0, 1, 2])
    np.testing.assert_allclose(score(sde, True, labels=y) - score(sde, True), [0, 1000, 2000],
                               rtol=1e-5)


def test_training_mode_needs_a_dropout_key():
    with pytest.raises(ValueError, match="rng"):
        get_model_fn(Stub(), {}, train=True)
