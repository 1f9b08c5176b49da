"""The DDPM U-Net (Ho et al. 2020), as used by the vp/ddpm and ve/cifar10_ddpm configs."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from score_sde.models import layers
from score_sde.models.layers import (
    add_class_embedding,
    check_choice,
    check_resolution,
    conv3x3,
    default_init,
    get_act,
    get_dtype,
    get_sigmas,
    get_timestep_embedding,
    maybe_remat,
)
from score_sde.models.registry import register_model

Array = jax.Array


@register_model("ddpm")
class DDPM(nn.Module):
    """DDPM score network: (x NHWC, timestep or noise index (B,)) -> output shaped like x."""

    config: ml_collections.ConfigDict

    @staticmethod
    def check_config(config) -> None:
        check_choice(config, "normalization", ("groupnorm",))
        check_resolution(config)

    @nn.compact
    def __call__(self, x: Array, labels: Array, train: bool = False,
                 y: Array | None = None) -> Array:
        config = self.config
        m = config.model
        check_resolution(config, x.shape[1])
        act = get_act(config)
        nf, ch_mult = m.nf, tuple(m.ch_mult)
        num_resolutions = len(ch_mult)
        attn_resolutions = tuple(m.attn_resolutions)
        dtype, remat = get_dtype(config), bool(m.get("remat", False))
        attn_block = functools.partial(layers.AttnBlock, normalize=nn.GroupNorm, dtype=dtype)
        resnet_block = functools.partial(maybe_remat(layers.ResnetBlockDDPM, remat), act=act,
                                         normalize=nn.GroupNorm, dropout=m.dropout, dtype=dtype)

        temb = None
        if m.conditional:  # sinusoidal embedding in float32, then the MLP in `dtype`
            temb = get_timestep_embedding(labels, nf)
            temb = nn.Dense(nf * 4, kernel_init=default_init(), dtype=dtype)(temb)
            temb = nn.Dense(nf * 4, kernel_init=default_init(), dtype=dtype)(act(temb))
        temb = add_class_embedding(config, temb, y, x.shape[0], nf * 4)
        temb = None if temb is None else temb.astype(dtype)

        h = x if config.data.centered else 2 * x - 1.0

        hs = [conv3x3(h, nf, dtype=dtype)]
        for i_level in range(num_resolutions):
            for _ in range(m.num_res_blocks):
                h = resnet_block(out_ch=nf * ch_mult[i_level])(hs[-1], temb, train)
                if h.shape[1] in attn_resolutions:
                    h = attn_block()(h)
                hs.append(h)
            if i_level != num_resolutions - 1:
                hs.append(layers.Downsample(with_conv=m.resamp_with_conv, dtype=dtype)(hs[-1]))

        h = hs[-1]
        h = resnet_block()(h, temb, train)
        h = attn_block()(h)
        h = resnet_block()(h, temb, train)

        for i_level in reversed(range(num_resolutions)):
            for _ in range(m.num_res_blocks + 1):
                h = resnet_block(out_ch=nf * ch_mult[i_level])(
                    jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
            if h.shape[1] in attn_resolutions:
                h = attn_block()(h)
            if i_level != 0:
                h = layers.Upsample(with_conv=m.resamp_with_conv, dtype=dtype)(h)

        if hs:
            raise AssertionError("DDPM: unused skip connections")

        h = act(nn.GroupNorm(dtype=dtype)(h))
        h = conv3x3(h, x.shape[-1], init_scale=0.0, dtype=dtype).astype(jnp.float32)

        if m.scale_by_sigma:
            # Noise-conditional (SMLD) training: labels index the sigma ladder.
            sigmas = get_sigmas(config)[labels.astype(jnp.int32)]
            h = h / sigmas.reshape((x.shape[0],) + (1,) * (x.ndim - 1))
        return h
