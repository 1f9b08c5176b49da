"""NCSN++ and DDPM++ (Song et al., ICLR 2021): one U-Net family, configured by config.model.

DDPM++ is this network with resblock_type 'biggan', no FIR and no progressive paths (the
vp/*ddpmpp* configs); NCSN++ adds FIR resampling, progressive input/output pyramids and Fourier
noise embeddings. Submodules are created in the published order, so flax's auto-names (and hence
parameter paths) equal the published checkpoints'.
"""

from __future__ import annotations

import dataclasses
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
    get_sigmas,
    get_timestep_embedding,
    group_norm,
    identity_frame_layer,
    maybe_remat,
)
from score_sde.models.registry import register_model

Array = jax.Array

PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
COMBINE = ("sum", "cat")
RESBLOCKS = ("ddpm", "biggan")
EMBEDDINGS = ("fourier", "positional")


@dataclasses.dataclass(frozen=True)
class _Options:
    """config.model's architecture choices, validated and lower-cased."""

    progressive: str
    progressive_input: str
    combine: str
    resblock_type: str
    embedding_type: str

    @classmethod
    def parse(cls, config) -> _Options:
        return cls(
            progressive=check_choice(config, "progressive", PROGRESSIVE),
            progressive_input=check_choice(config, "progressive_input", PROGRESSIVE_INPUT),
            combine=check_choice(config, "progressive_combine", COMBINE),
            resblock_type=check_choice(config, "resblock_type", RESBLOCKS),
            embedding_type=check_choice(config, "embedding_type", EMBEDDINGS),
        )


def _time_embedding(config, opts: _Options, time_cond: Array) -> tuple[Array, Array]:
    """(embedding of the noise input, the sigma each example is at) -- inside a compact call."""
    m = config.model
    if opts.embedding_type == "fourier":
        if not config.get("training", {}).get("continuous", True):
            raise ValueError("config.model.embedding_type='fourier' needs continuous noise levels "
                             "(config.training.continuous=True); use 'positional'")
        # Continuous VE models take sigma itself as the noise input.
        emb = layerspp.GaussianFourierProjection(embedding_size=m.nf, scale=m.fourier_scale)(
            jnp.log(time_cond))
        return emb, time_cond
    # Discrete models take the index of the noise level (0 = sigma_max for SMLD).
    used_sigmas = get_sigmas(config)[time_cond.astype(jnp.int32)]
    return get_timestep_embedding(time_cond, m.nf), used_sigmas


@register_model("ncsnpp")
class NCSNpp(nn.Module):
    """NCSN++ / DDPM++ score network: (x NHWC, noise input (B,)) -> output shaped like x."""

    config: ml_collections.ConfigDict

    @staticmethod
    def check_config(config) -> None:
        _Options.parse(config)
        check_resolution(config)

    @nn.compact
    def __call__(self, x: Array, time_cond: Array, train: bool = False,
                 y: Array | None = None, frame_layer: FrameLayer | None = None) -> Array:
        """frame_layer: see layers.FrameLayer (the space-time networks of models/video.py)."""
        config = self.config
        m = config.model
        opts = _Options.parse(config)
        check_resolution(config, x.shape[1])
        act = get_act(config)
        nf, ch_mult = m.nf, tuple(m.ch_mult)
        num_resolutions = len(ch_mult)
        attn_resolutions = tuple(m.attn_resolutions)
        fir_kernel = tuple(m.fir_kernel)
        skip_rescale, init_scale = m.skip_rescale, m.init_scale
        dtype, remat = get_dtype(config), bool(m.get("remat", False))
        mix = frame_layer or identity_frame_layer

        # The noise embedding is formed in float32; the layers after it compute in `dtype`.
        temb, used_sigmas = _time_embedding(config, opts, time_cond)
        if m.conditional:
            temb = nn.Dense(nf * 4, kernel_init=default_init(), dtype=dtype)(temb)
            temb = nn.Dense(nf * 4, kernel_init=default_init(), dtype=dtype)(act(temb))
        else:
            temb = None
        temb = add_class_embedding(config, temb, y, x.shape[0], nf * 4)
        temb = None if temb is None else temb.astype(dtype)

        attn_block = functools.partial(layerspp.AttnBlockpp, init_scale=init_scale,
                                       skip_rescale=skip_rescale, dtype=dtype)
        upsample = functools.partial(layerspp.Upsample, with_conv=m.resamp_with_conv,
                                     fir=m.fir, fir_kernel=fir_kernel, dtype=dtype)
        downsample = functools.partial(layerspp.Downsample, with_conv=m.resamp_with_conv,
                                       fir=m.fir, fir_kernel=fir_kernel, dtype=dtype)
        pyramid_upsample = functools.partial(layerspp.Upsample, fir=m.fir, fir_kernel=fir_kernel,
                                             with_conv=opts.progressive == "residual",
                                             dtype=dtype)
        pyramid_downsample = functools.partial(layerspp.Downsample, fir=m.fir,
                                               fir_kernel=fir_kernel,
                                               with_conv=opts.progressive_input == "residual",
                                               dtype=dtype)
        combiner = functools.partial(layerspp.Combine, method=opts.combine, dtype=dtype)
        if opts.resblock_type == "ddpm":
            resnet_block = functools.partial(
                maybe_remat(layerspp.ResnetBlockDDPMpp, remat), act=act, dropout=m.dropout,
                init_scale=init_scale, skip_rescale=skip_rescale, dtype=dtype)
        else:
            resnet_block = functools.partial(
                maybe_remat(layerspp.ResnetBlockBigGANpp, remat), act=act, dropout=m.dropout,
                fir=m.fir, fir_kernel=fir_kernel, init_scale=init_scale,
                skip_rescale=skip_rescale, dtype=dtype)

        if not config.data.centered:
            x = 2 * x - 1.0  # data in [0, 1] -> [-1, 1]

        # Downsampling path.
        input_pyramid = x if opts.progressive_input != "none" else None
        hs = [mix(conv3x3(x, nf, dtype=dtype), "input")]
        for i_level in range(num_resolutions):
            for _ in range(m.num_res_blocks):
                h = resnet_block(out_ch=nf * ch_mult[i_level])(hs[-1], temb, train)
                if h.shape[1] in attn_resolutions:
                    h = attn_block()(h)
                hs.append(mix(h, "block"))
            if i_level == num_resolutions - 1:
                continue
            if opts.resblock_type == "ddpm":
                h = downsample()(hs[-1])
            else:
                h = resnet_block(down=True)(hs[-1], temb, train)
            if opts.progressive_input == "input_skip":
                input_pyramid = pyramid_downsample()(input_pyramid)
                h = combiner()(input_pyramid, h)
            elif opts.progressive_input == "residual":
                input_pyramid = pyramid_downsample(out_ch=h.shape[-1])(input_pyramid)
                input_pyramid = layerspp.residual_sum(input_pyramid, h, skip_rescale)
                h = input_pyramid
            hs.append(h)

        h = hs[-1]
        h = resnet_block()(h, temb, train)
        h = mix(attn_block()(h), "block")
        h = resnet_block()(h, temb, train)

        # Upsampling path.
        pyramid = None
        for i_level in reversed(range(num_resolutions)):
            for _ in range(m.num_res_blocks + 1):
                h = resnet_block(out_ch=nf * ch_mult[i_level])(
                    jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
            if h.shape[1] in attn_resolutions:
                h = attn_block()(h)
            h = mix(h, "block")

            if opts.progressive != "none":
                if opts.progressive == "output_skip":
                    if pyramid is not None:
                        pyramid = pyramid_upsample()(pyramid)
                    out = conv3x3(act(group_norm(h.shape[-1], dtype)(h)), x.shape[-1],
                                  init_scale=init_scale, dtype=dtype)
                    pyramid = out if pyramid is None else pyramid + out
                elif pyramid is None:  # residual, coarsest level
                    pyramid = conv3x3(act(group_norm(h.shape[-1], dtype)(h)), h.shape[-1],
                                      dtype=dtype)
                else:  # residual
                    pyramid = pyramid_upsample(out_ch=h.shape[-1])(pyramid)
                    pyramid = layerspp.residual_sum(pyramid, h, skip_rescale)
                    h = pyramid

            if i_level != 0:
                if opts.resblock_type == "ddpm":
                    h = upsample()(h)
                else:
                    h = resnet_block(up=True)(h, temb, train)

        if hs:
            raise AssertionError("NCSNpp: unused skip connections")

        if opts.progressive == "output_skip":
            h = pyramid
        else:
            h = conv3x3(act(group_norm(h.shape[-1], dtype)(h)), x.shape[-1],
                        init_scale=init_scale, dtype=dtype)

        h = h.astype(jnp.float32)  # the score is formed in float32, whatever `dtype` is
        if m.scale_by_sigma:
            h = h / used_sigmas.reshape((x.shape[0],) + (1,) * (x.ndim - 1))
        return h
