"""FIR up/down-sampling (StyleGAN2's upfirdn) used by NCSN++ when `config.model.fir` is on.

All functions take NHWC arrays. A 1-D kernel k (e.g. (1, 3, 3, 1)) is used separably as
outer(k, k), normalised to sum to 1 (times factor**2 when upsampling so that a constant image
keeps its value). Padding follows StyleGAN2 so that published NCSN++ weights give the same output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
_DIMS = ("NHWC", "HWIO", "NHWC")


def setup_kernel(k: Sequence[float]) -> np.ndarray:
    """A normalised 2-D FIR kernel from a 1-D (separable) or 2-D one."""
    k = np.asarray(k, dtype=np.float32)
    if k.ndim == 1:
        k = np.outer(k, k)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"fir_kernel must be 1-D or square 2-D, got shape {k.shape}")
    return k / np.sum(k)


def upfirdn_2d(x: Array, k: np.ndarray, up: int = 1, down: int = 1,
               pad0: int = 0, pad1: int = 0) -> Array:
    """Upsample (zero insertion), pad, convolve with the 2-D FIR `k`, downsample; per channel."""
    channels = x.shape[-1]
    # True convolution = correlation with the flipped kernel; depthwise over channels.
    w = jnp.tile(jnp.asarray(k[::-1, ::-1], x.dtype)[:, :, None, None], (1, 1, 1, channels))
    # lhs_dilation inserts up-1 zeros *between* pixels; upfirdn also appends them at the end.
    pad = (pad0, pad1 + up - 1)
    return jax.lax.conv_general_dilated(
        x, w, window_strides=(down, down), padding=(pad, pad), lhs_dilation=(up, up),
        dimension_numbers=_DIMS, feature_group_count=channels)


def upsample_2d(x: Array, k: Sequence[float] | None = None, factor: int = 2) -> Array:
    """FIR-filtered upsampling by `factor` (no learned weights)."""
    kernel = setup_kernel(k if k is not None else [1] * factor) * factor**2
    p = kernel.shape[0] - factor
    return upfirdn_2d(x, kernel, up=factor, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2)


def downsample_2d(x: Array, k: Sequence[float] | None = None, factor: int = 2) -> Array:
    """FIR-filtered downsampling by `factor` (no learned weights)."""
    kernel = setup_kernel(k if k is not None else [1] * factor)
    p = kernel.shape[0] - factor
    return upfirdn_2d(x, kernel, down=factor, pad0=(p + 1) // 2, pad1=p // 2)


def upsample_conv_2d(x: Array, w: Array, k: Sequence[float] | None = None,
                     factor: int = 2) -> Array:
    """Transposed conv with stride `factor` (weights `w`, HWIO) followed by FIR smoothing."""
    ksize = w.shape[0]
    kernel = setup_kernel(k if k is not None else [1] * factor) * factor**2
    p = (kernel.shape[0] - factor) - (ksize - 1)
    # A stride-`factor` VALID transposed convolution: dilate the input, pad by ksize - 1.
    x = jax.lax.conv_general_dilated(
        x, w, window_strides=(1, 1), padding=((ksize - 1, ksize - 1),) * 2,
        lhs_dilation=(factor, factor), dimension_numbers=_DIMS)
    return upfirdn_2d(x, kernel, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2 + 1)


def conv_downsample_2d(x: Array, w: Array, k: Sequence[float] | None = None,
                       factor: int = 2) -> Array:
    """FIR smoothing followed by a stride-`factor` VALID convolution with `w` (HWIO)."""
    ksize = w.shape[0]
    kernel = setup_kernel(k if k is not None else [1] * factor)
    p = (kernel.shape[0] - factor) + (ksize - 1)
    x = upfirdn_2d(x, kernel, pad0=(p + 1) // 2, pad1=p // 2)
    return jax.lax.conv_general_dilated(
        x, w, window_strides=(factor, factor), padding="VALID", dimension_numbers=_DIMS)


def naive_upsample_2d(x: Array, factor: int = 2) -> Array:
    """Nearest-neighbour upsampling (each pixel repeated factor x factor times)."""
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def naive_downsample_2d(x: Array, factor: int = 2) -> Array:
    """Average pooling over non-overlapping factor x factor windows."""
    b, h, w, c = x.shape
    return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


class Conv2d(nn.Module):
    """Convolution with optional fused FIR up/down-sampling (params `weight`, `bias`)."""

    fmaps: int
    kernel: int
    up: bool = False
    down: bool = False
    resample_kernel: Sequence[int] = (1, 3, 3, 1)
    use_bias: bool = True
    kernel_init: Any = None
    dtype: Any = None  # compute dtype; None = that of the inputs and (float32) parameters

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.up and self.down:
            raise ValueError("Conv2d: up and down cannot both be set")
        w = self.param("weight", self.kernel_init,
                       (self.kernel, self.kernel, x.shape[-1], self.fmaps))
        x, w = nn.dtypes.promote_dtype(x, w, dtype=self.dtype)
        if self.up:
            x = upsample_conv_2d(x, w, k=self.resample_kernel)
        elif self.down:
            x = conv_downsample_2d(x, w, k=self.resample_kernel)
        else:
            x = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=_DIMS)
        if self.use_bias:
            x = x + self.param("bias", nn.initializers.zeros, (x.shape[-1],)).astype(x.dtype)
        return x
