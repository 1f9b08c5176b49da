"""Mixed precision (config.model.dtype) and the attention / rematerialisation fast paths.

bfloat16 computes convolutions, dense layers and attention in bf16 with float32 parameters; the
noise embedding, GroupNorm statistics, the softmax and the output stay float32.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import losses, sde_lib
from score_sde.models import get_model, init_model
from score_sde.models.layers import (
    attention_reference,
    get_dtype,
    get_timestep_embedding,
    pixel_attention,
)
from score_sde.models.layerspp import GaussianFourierProjection
from tests.test_models import RNG, build, fake_params, noise_input

# One of each network that supports bfloat16 (NCSNv2 is float32 only), with its main options.
BF16_COMBOS = ["ncsnpp_ve_fir_residual_input_fourier_sigma", "ddpmpp_positional",
               "ddpmblocks_fir_residual_both", "ddpm", "small_unet_classes", "mlp_classes"]
# Relative L2 error of the bf16 output against fp32 with the same random (std 0.2) parameters.
# Measured over every COMBOS network and 3 parameter seeds: 0.3% (mlp) to 2.2% (bf16 keeps an
# 8-bit mantissa, 2^-9 = 0.2% relative rounding per operation).
BF16_REL_ERROR = 0.04


def _inputs(config, batch: int = 3):
    shape = (batch, config.data.dim) if config.model.name == "mlp" else (
        batch, config.data.image_size, config.data.image_size, config.data.num_channels)
    x = jax.random.normal(RNG, shape)
    y = jnp.arange(batch) % config.model.num_classes if config.model.num_classes else None
    return x, noise_input(config, batch), ({} if y is None else {"y": y})


def _with(config, **model):
    config = copy.deepcopy(config)
    config.model.update(model)
    return config


def _rel_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("combo", BF16_COMBOS)
def test_bf16_forward_is_close_to_fp32_and_returns_fp32(combo):
    config, model = build(combo)
    x, t, kwargs = _inputs(config)
    params = fake_params(model, x, t, **kwargs)
    model16 = get_model(_with(config, dtype="bfloat16"))
    out32 = jax.jit(lambda p: model.apply({"params": p}, x, t, **kwargs))(params)
    out16 = jax.jit(lambda p: model16.apply({"params": p}, x, t, **kwargs))(params)
    assert out32.dtype == jnp.float32 and out16.dtype == jnp.float32
    assert np.all(np.isfinite(out16))
    assert _rel_error(out16, out32) < BF16_REL_ERROR


def test_bf16_init_keeps_float32_parameters_with_the_same_tree():
    config, _ = build("ncsnpp_ve_fir_residual_input_fourier_sigma")
    p32 = jax.eval_shape(lambda: init_model(RNG, config))
    p16 = jax.eval_shape(lambda: init_model(RNG, _with(config, dtype="bfloat16")))
    assert jax.tree.structure(p16) == jax.tree.structure(p32)
    assert jax.tree.map(lambda a: a.shape, p16) == jax.tree.map(lambda a: a.shape, p32)
    assert {leaf.dtype for leaf in jax.tree.leaves(p16)} == {jnp.dtype(jnp.float32)}


def _tiny_training_config(**model):
    from configs.tiny import get_config

    config = get_config()
    config.model.update(model)
    return config


def test_bf16_train_step_keeps_state_in_float32():
    config = _tiny_training_config(dtype="bfloat16")
    sde, _ = sde_lib.get_sde(config)
    model, optimizer = get_model(config), losses.get_optimizer(config)
    state = jax.jit(lambda rng: losses.init_train_state(rng, config, optimizer=optimizer))(RNG)
    step = jax.jit(losses.get_step_fn(config, sde, model, optimizer, train=True))
    images = jax.random.uniform(RNG, (4, 8, 8, 1), minval=-1.0, maxval=1.0)
    new_state, loss = step(state, {"image": images})
    new_state, loss = step(new_state, {"image": images})  # past the zero-lr warm-up step
    assert loss.dtype == jnp.float32 and np.isfinite(loss)
    for tree in (new_state.params, new_state.opt_state, new_state.ema_params):
        floats = [a for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)]
        assert floats and all(a.dtype == jnp.float32 for a in floats)
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), new_state.params,
                         state.params)
    assert max(jax.tree.leaves(moved)) > 0  # gradients reached the parameters


def test_dot_product_attention_equals_the_reference_formula():
    q, k, v = jax.random.normal(RNG, (3, 2, 4, 4, 16))
    np.testing.assert_allclose(pixel_attention(q, k, v), attention_reference(q, k, v),
                               rtol=1e-5, atol=1e-5)
    half = pixel_attention(*(a.astype(jnp.bfloat16) for a in (q, k, v)))
    assert half.dtype == jnp.bfloat16
    assert _rel_error(half, attention_reference(q, k, v)) < 0.02


def test_noise_embeddings_are_float32_for_bf16_inputs():
    t = jnp.array([0.5, 998.0], jnp.bfloat16)
    assert get_timestep_embedding(t, 16).dtype == jnp.float32
    fourier = GaussianFourierProjection(embedding_size=8, scale=16.0)
    out, _ = fourier.init_with_output(RNG, jnp.log(t))
    assert out.dtype == jnp.float32


@pytest.mark.parametrize("combo", ["ddpmpp_positional",
                                   pytest.param("ddpm", marks=pytest.mark.slow)])
def test_remat_keeps_parameter_paths_outputs_and_gradients(combo):
    config, model = build(combo)
    remat_model = get_model(_with(config, remat=True))
    x, t, kwargs = _inputs(config)
    params = fake_params(model, x, t, **kwargs)
    shapes = jax.eval_shape(lambda: remat_model.init({"params": RNG, "dropout": RNG}, x, t,
                                                     **kwargs))["params"]
    assert jax.tree.structure(shapes) == jax.tree.structure(params)

    def loss_and_grad(m):
        def loss(p):
            out = m.apply({"params": p}, x, t, train=True, rngs={"dropout": RNG}, **kwargs)
            return jnp.mean(out**2)

        return jax.jit(jax.value_and_grad(loss))(params)

    (value, grads), (value_remat, grads_remat) = loss_and_grad(model), loss_and_grad(remat_model)
    np.testing.assert_allclose(value_remat, value, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads_remat), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("value", ["float16", "fp32", "bf16", None])
def test_bad_dtype_names_the_field(value):
    config, _ = build("ddpmpp_positional")
    config.model.dtype = value
    with pytest.raises(ValueError, match=r"config\.model\.dtype"):
        get_model(config)


def test_ncsnv2_refuses_bf16_with_the_field_name():
    config, _ = build("ncsnv2_64_instancenorm_plus")
    with pytest.raises(ValueError, match=r"config\.model\.dtype"):
        get_model(_with(config, dtype="bfloat16"))


def test_dtype_defaults_to_float32_when_absent():
    config, _ = build("ddpmpp_positional")
    assert "dtype" not in config.model
    assert get_dtype(config) == jnp.float32
