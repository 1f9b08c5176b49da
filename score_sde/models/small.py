"""Small score networks for CPU work: a compact U-Net for 8x8 / 16x16 images and an MLP for
low-dimensional vectors. Both take the same noise input as the big networks (t*999 for VP,
sigma for VE) and optional class labels `y` (config.model.num_classes > 0).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from score_sde.models import layerspp
from score_sde.models.layers import (
    FrameLayer,
    add_class_embedding,
    check_choice,
    check_resolution,
    conv3x3,
    default_init,
    get_act,
    get_dtype,
    get_timestep_embedding,
    group_norm,
    identity_frame_layer,
    maybe_remat,
)
from score_sde.models.registry import register_model

Array = jax.Array


def _noise_embedding(config, time_cond: Array, act) -> Array:
    """Sinusoidal ('positional') or Fourier-of-log ('fourier') embedding -> 2-layer MLP, 4*nf.

    The embedding itself is formed in float32; the MLP computes in config.model.dtype.
    """
    m, dtype = config.model, get_dtype(config)
    kind = check_choice(config, "embedding_type", ("positional", "fourier"))
    if kind == "fourier":
        emb = layerspp.GaussianFourierProjection(
            embedding_size=m.nf, scale=m.get("fourier_scale", 16.0))(jnp.log(time_cond))
    else:
        emb = get_timestep_embedding(time_cond, m.nf)
    emb = nn.Dense(4 * m.nf, kernel_init=default_init(), dtype=dtype)(emb)
    return nn.Dense(4 * m.nf, kernel_init=default_init(), dtype=dtype)(act(emb))


def _scale_by_sigma(config, h: Array, time_cond: Array) -> Array:
    """h in float32, divided by the noise input (sigma, for continuous VE models) when
    model.scale_by_sigma."""
    h = h.astype(jnp.float32)
    if not config.model.get("scale_by_sigma", False):
        return h
    return h / time_cond.reshape((h.shape[0],) + (1,) * (h.ndim - 1))


@register_model("small_unet")
class SmallUNet(nn.Module):
    """A lean DDPM++-style U-Net: one skip per resolution, one middle block + attention.

    About 0.45M parameters at nf=32, ch_mult=(1, 2), num_res_blocks=1 (8x8 or 16x16 input).

    config.model fields: nf, ch_mult, num_res_blocks, attn_resolutions, dropout, nonlinearity,
    embedding_type ('positional' | 'fourier'), num_classes, scale_by_sigma (optional).
    """

    config: ml_collections.ConfigDict

    @staticmethod
    def check_config(config) -> None:
        check_resolution(config)

    @nn.compact
    def __call__(self, x: Array, time_cond: Array, train: bool = False,
                 y: Array | None = None, frame_layer: FrameLayer | None = None) -> Array:
        """frame_layer: see FrameLayer (the space-time networks of models/video.py)."""
        config = self.config
        m = config.model
        check_resolution(config, x.shape[1])
        mix = frame_layer or identity_frame_layer
        act = get_act(config)
        ch_mult = tuple(m.ch_mult)
        dtype, remat = get_dtype(config), bool(m.get("remat", False))
        block = functools.partial(maybe_remat(layerspp.ResnetBlockDDPMpp, remat), act=act,
                                  dropout=m.dropout, skip_rescale=True, dtype=dtype)
        attn = functools.partial(layerspp.AttnBlockpp, skip_rescale=True, dtype=dtype)
        attn_resolutions = tuple(m.attn_resolutions)

        temb = _noise_embedding(config, time_cond, act)
        temb = add_class_embedding(config, temb, y, x.shape[0], 4 * m.nf).astype(dtype)

        def stage(h: Array, mult: int) -> Array:
            for _ in range(m.num_res_blocks):
                h = block(out_ch=m.nf * mult)(h, temb, train)
                if h.shape[1] in attn_resolutions:
                    h = attn()(h)
                h = mix(h, "block")
            return h

        h = x if config.data.get("centered", True) else 2 * x - 1.0
        h = mix(conv3x3(h, m.nf, dtype=dtype), "input")
        skips = []
        for level, mult in enumerate(ch_mult):
            h = stage(h, mult)
            skips.append(h)
            if level != len(ch_mult) - 1:
                h = layerspp.Downsample(with_conv=True, dtype=dtype)(h)

        h = mix(attn()(block()(h, temb, train)), "block")

        for level in reversed(range(len(ch_mult))):
            h = stage(jnp.concatenate([h, skips.pop()], axis=-1), ch_mult[level])
            if level != 0:
                h = layerspp.Upsample(with_conv=True, dtype=dtype)(h)

        h = conv3x3(act(group_norm(h.shape[-1], dtype)(h)), x.shape[-1], init_scale=0.0,
                    dtype=dtype)
        return _scale_by_sigma(config, h, time_cond)


@register_model("mlp")
class MLP(nn.Module):
    """Residual MLP score model for vectors x of shape (B, D), D = config.data.dim.

    config.model fields: nf (hidden width), num_res_blocks (residual blocks), nonlinearity,
    embedding_type, dropout, num_classes, scale_by_sigma (optional).
    """

    config: ml_collections.ConfigDict

    @staticmethod
    def input_shape(config, batch: int = 1) -> tuple[int, ...]:
        return (batch, config.data.dim)

    @nn.compact
    def __call__(self, x: Array, time_cond: Array, train: bool = False,
                 y: Array | None = None) -> Array:
        config = self.config
        m = config.model
        if x.ndim != 2:
            raise ValueError(f"mlp expects inputs of shape (B, D), got {x.shape}")
        act, dtype = get_act(config), get_dtype(config)
        dense = functools.partial(nn.Dense, kernel_init=default_init(), dtype=dtype)
        temb = _noise_embedding(config, time_cond, act)
        temb = add_class_embedding(config, temb, y, x.shape[0], 4 * m.nf).astype(dtype)

        h = dense(m.nf)(x)
        for _ in range(m.num_res_blocks):
            r = dense(m.nf)(act(h))
            r = r + dense(m.nf)(act(temb))
            r = nn.Dropout(m.dropout)(act(r), deterministic=not train)
            h = h + dense(m.nf)(r)
        h = dense(x.shape[-1], kernel_init=default_init(0.0))(act(h))
        return _scale_by_sigma(config, h, time_cond)
