"""NCSN++ / DDPM++ building blocks (Song et al. 2021, appendix H).

Class names are the published ones (`ResnetBlockBigGANpp`, `AttnBlockpp`, `Combine`, ...): flax
names submodules after their class, so these names are part of the checkpoint format.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_sde.models import up_down_sampling as fir_ops
from score_sde.models.layers import (
    NIN,
    Dtype,
    conv1x1,
    conv3x3,
    default_init,
    group_norm,
    spatial_attention,
)

Array = jax.Array


def residual_sum(x: Array, h: Array, skip_rescale: bool) -> Array:
    """x + h, divided by sqrt(2) when `skip_rescale` (keeps the variance of two unit signals)."""
    # A Python float is weakly typed: it keeps bfloat16 activations in bfloat16.
    return (x + h) / math.sqrt(2.0) if skip_rescale else x + h


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of a scalar (log-sigma) input; `W` is fixed after init.

    Always float32: sin/cos of large arguments lose all precision in bfloat16.
    """

    embedding_size: int = 256
    scale: float = 1.0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        w = self.param("W", nn.initializers.normal(stddev=self.scale), (self.embedding_size,))
        proj = x.astype(jnp.float32)[:, None] * jax.lax.stop_gradient(w)[None, :] * 2 * jnp.pi
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


class Combine(nn.Module):
    """Merge a skip (pyramid) input x into y: 1x1 conv of x, then sum or concatenate."""

    method: str = "cat"
    dtype: Dtype = None

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        h = conv1x1(x, y.shape[-1], dtype=self.dtype)
        if self.method == "cat":
            return jnp.concatenate([h, y], axis=-1)
        if self.method == "sum":
            return h + y
        raise ValueError(f"config.model.progressive_combine={self.method!r}; choose 'sum' or 'cat'")


class AttnBlockpp(nn.Module):
    """DDPM self-attention with optional 1/sqrt(2) skip rescaling."""

    skip_rescale: bool = False
    init_scale: float = 0.0
    dtype: Dtype = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = spatial_attention(x, group_norm(x.shape[-1], self.dtype)(x), self.dtype)
        h = NIN(x.shape[-1], init_scale=self.init_scale, dtype=self.dtype)(h)
        return residual_sum(x, h, self.skip_rescale)


class Upsample(nn.Module):
    """x2 upsampling: nearest or FIR, with an optional (fused) 3x3 conv to `out_ch` channels."""

    out_ch: int | None = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    dtype: Dtype = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, h, w, c = x.shape
        out_ch = self.out_ch or c
        if not self.fir:
            x = jax.image.resize(x, (b, 2 * h, 2 * w, c), "nearest")
            return conv3x3(x, out_ch, dtype=self.dtype) if self.with_conv else x
        if not self.with_conv:
            return fir_ops.upsample_2d(x, self.fir_kernel, factor=2)
        return fir_ops.Conv2d(out_ch, kernel=3, up=True, resample_kernel=self.fir_kernel,
                              kernel_init=default_init(), dtype=self.dtype)(x)


class Downsample(nn.Module):
    """x2 downsampling: average pool or FIR, with an optional (fused) 3x3 conv to `out_ch`."""

    out_ch: int | None = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    dtype: Dtype = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        out_ch = self.out_ch or x.shape[-1]
        if not self.fir:
            if self.with_conv:
                return conv3x3(x, out_ch, stride=2, dtype=self.dtype)
            return nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2), padding="SAME")
        if not self.with_conv:
            return fir_ops.downsample_2d(x, self.fir_kernel, factor=2)
        return fir_ops.Conv2d(out_ch, kernel=3, down=True, resample_kernel=self.fir_kernel,
                              kernel_init=default_init(), dtype=self.dtype)(x)


class ResnetBlockDDPMpp(nn.Module):
    """DDPM residual block with GroupNorm(min(C/4, 32)), init_scale and skip rescaling."""

    act: Callable[[Array], Array]
    out_ch: int | None = None
    conv_shortcut: bool = False
    dropout: float = 0.1
    skip_rescale: bool = False
    init_scale: float = 0.0
    dtype: Dtype = None

    @nn.compact
    def __call__(self, x: Array, temb: Array | None = None, train: bool = True) -> Array:
        c, dtype = x.shape[-1], self.dtype
        out_ch = self.out_ch or c
        h = conv3x3(self.act(group_norm(c, dtype)(x)), out_ch, dtype=dtype)
        if temb is not None:
            h += nn.Dense(out_ch, kernel_init=default_init(), dtype=dtype)(
                self.act(temb))[:, None, None, :]
        h = self.act(group_norm(out_ch, dtype)(h))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = conv3x3(h, out_ch, init_scale=self.init_scale, dtype=dtype)
        if c != out_ch:
            x = (conv3x3(x, out_ch, dtype=dtype) if self.conv_shortcut
                 else NIN(out_ch, dtype=dtype)(x))
        return residual_sum(x, h, self.skip_rescale)


class ResnetBlockBigGANpp(nn.Module):
    """BigGAN-style residual block that can also resample (up or down) both paths."""

    act: Callable[[Array], Array]
    up: bool = False
    down: bool = False
    out_ch: int | None = None
    dropout: float = 0.1
    fir: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    skip_rescale: bool = True
    init_scale: float = 0.0
    dtype: Dtype = None

    def _resample(self, x: Array) -> Array:
        if self.up:
            if self.fir:
                return fir_ops.upsample_2d(x, self.fir_kernel, factor=2)
            return fir_ops.naive_upsample_2d(x, factor=2)
        if self.down:
            if self.fir:
                return fir_ops.downsample_2d(x, self.fir_kernel, factor=2)
            return fir_ops.naive_downsample_2d(x, factor=2)
        return x

    @nn.compact
    def __call__(self, x: Array, temb: Array | None = None, train: bool = True) -> Array:
        c, dtype = x.shape[-1], self.dtype
        out_ch = self.out_ch or c
        h = self._resample(self.act(group_norm(c, dtype)(x)))
        x = self._resample(x)
        h = conv3x3(h, out_ch, dtype=dtype)
        if temb is not None:
            h += nn.Dense(out_ch, kernel_init=default_init(), dtype=dtype)(
                self.act(temb))[:, None, None, :]
        h = self.act(group_norm(out_ch, dtype)(h))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = conv3x3(h, out_ch, init_scale=self.init_scale, dtype=dtype)
        if c != out_ch or self.up or self.down:
            x = conv1x1(x, out_ch, dtype=dtype)
        return residual_sum(x, h, self.skip_rescale)
