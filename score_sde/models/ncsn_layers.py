"""RefineNet layers and instance norms of NCSNv2 (Song & Ermon 2020), with published names.

Convolutions use PyTorch's default initialisation (as the NCSN code did): kernel and bias uniform
with variance 1/3 of fan-in scaling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def _torch_init(kernel_shape: tuple[int, ...], init_scale: float = 1.0):
    """PyTorch-default conv init; the bias reuses the kernel initialiser's distribution."""
    kernel_init = nn.initializers.variance_scaling(
        (1e-10 if init_scale == 0 else init_scale) / 3, "fan_in", "uniform")

    def bias_init(key, shape, dtype=jnp.float32):
        return kernel_init(key, kernel_shape, dtype)[0, 0, 0, :]

    return kernel_init, bias_init


def ncsn_conv(x: Array, out_ch: int, kernel: int, stride: int = 1, bias: bool = True,
              dilation: int = 1, init_scale: float = 1.0) -> Array:
    """SAME convolution with PyTorch initialisation (call inside a compact module)."""
    kernel_init, bias_init = _torch_init((kernel, kernel, x.shape[-1], out_ch), init_scale)
    return nn.Conv(out_ch, kernel_size=(kernel, kernel), strides=(stride, stride), padding="SAME",
                   use_bias=bias, kernel_dilation=(dilation, dilation), kernel_init=kernel_init,
                   bias_init=bias_init)(x)


def ncsn_conv3x3(x: Array, out_ch: int, stride: int = 1, bias: bool = True,
                 dilation: int = 1) -> Array:
    return ncsn_conv(x, out_ch, 3, stride, bias, dilation)


def ncsn_conv1x1(x: Array, out_ch: int, stride: int = 1, bias: bool = True) -> Array:
    return ncsn_conv(x, out_ch, 1, stride, bias)


def _near_one(key, shape, dtype=jnp.float32):
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


class InstanceNorm2d(nn.Module):
    """Instance normalisation over H, W with per-channel scale and bias."""

    bias: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        mean = jnp.mean(x, axis=(1, 2), keepdims=True)
        h = (x - mean) / jnp.sqrt(jnp.var(x, axis=(1, 2), keepdims=True) + 1e-5)
        h = h * self.param("scale", nn.initializers.ones, (1, 1, 1, x.shape[-1]))
        if self.bias:
            h = h + self.param("bias", nn.initializers.zeros, (1, 1, 1, x.shape[-1]))
        return h


class InstanceNorm2dPlus(nn.Module):
    """InstanceNorm++ (NCSN): instance norm that keeps the channel means' relative offsets."""

    bias: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        means = jnp.mean(x, axis=(1, 2))
        mean_of_means = jnp.mean(means, axis=-1, keepdims=True)
        var_of_means = jnp.var(means, axis=-1, keepdims=True)
        means_plus = (means - mean_of_means) / jnp.sqrt(var_of_means + 1e-5)
        h = (x - means[:, None, None, :]) / jnp.sqrt(
            jnp.var(x, axis=(1, 2), keepdims=True) + 1e-5)
        h = h + means_plus[:, None, None, :] * self.param("alpha", _near_one, (1, 1, 1, c))
        h = h * self.param("gamma", _near_one, (1, 1, 1, c))
        if self.bias:
            h = h + self.param("beta", nn.initializers.zeros, (1, 1, 1, c))
        return h


class VarianceNorm2d(nn.Module):
    """Divide by the per-channel spatial standard deviation (no centring)."""

    bias: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = x / jnp.sqrt(jnp.var(x, axis=(1, 2), keepdims=True) + 1e-5)
        h = h * self.param("scale", _near_one, (1, 1, 1, x.shape[-1]))
        if self.bias:
            h = h + self.param("bias", nn.initializers.zeros, (1, 1, 1, x.shape[-1]))
        return h


NORMALIZATIONS = {
    "InstanceNorm": InstanceNorm2d,
    "InstanceNorm++": InstanceNorm2dPlus,
    "VarianceNorm": VarianceNorm2d,
    "GroupNorm": nn.GroupNorm,
}


def get_normalization(config) -> Any:
    """The (unconditional) normalisation module class named by config.model.normalization."""
    name = config.model.normalization
    if name not in NORMALIZATIONS:
        raise ValueError(f"config.model.normalization={name!r} is not known; "
                         f"choose one of {sorted(NORMALIZATIONS)}")
    return NORMALIZATIONS[name]


class ConvMeanPool(nn.Module):
    """Convolution, then 2x2 mean pooling."""

    output_dim: int
    kernel_size: int = 3
    biases: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = nn.Conv(self.output_dim, (self.kernel_size, self.kernel_size), padding="SAME",
                    use_bias=self.biases)(x)
        return (h[:, ::2, ::2] + h[:, 1::2, ::2] + h[:, ::2, 1::2] + h[:, 1::2, 1::2]) / 4.0


class ResidualBlock(nn.Module):
    """NCSNv2 ResNet block; 'down' halves the resolution unless dilated."""

    output_dim: int
    normalization: Any
    resample: str | None = None
    act: Callable[[Array], Array] = nn.elu
    dilation: int = 1

    @nn.compact
    def __call__(self, x: Array) -> Array:
        d = self.dilation
        h = self.act(self.normalization()(x))
        if self.resample == "down":
            h = ncsn_conv3x3(h, h.shape[-1], dilation=d)
            h = self.act(self.normalization()(h))
            if d > 1:
                h = ncsn_conv3x3(h, self.output_dim, dilation=d)
                shortcut = ncsn_conv3x3(x, self.output_dim, dilation=d)
            else:
                h = ConvMeanPool(self.output_dim)(h)
                shortcut = ConvMeanPool(self.output_dim, kernel_size=1)(x)
            return h + shortcut
        if self.resample is not None:
            raise ValueError(f"ResidualBlock: resample={self.resample!r}; use None or 'down'")
        if self.output_dim == x.shape[-1]:
            shortcut = x
        elif d > 1:
            shortcut = ncsn_conv3x3(x, self.output_dim, dilation=d)
        else:
            shortcut = ncsn_conv1x1(x, self.output_dim)
        h = ncsn_conv3x3(h, self.output_dim, dilation=d)
        h = self.act(self.normalization()(h))
        h = ncsn_conv3x3(h, self.output_dim, dilation=d)
        return h + shortcut


class RCUBlock(nn.Module):
    """Residual conv unit: n_blocks x (n_stages x (act, conv)) with identity shortcuts."""

    features: int
    n_blocks: int
    n_stages: int
    act: Callable[[Array], Array] = nn.relu

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for _ in range(self.n_blocks):
            residual = x
            for _ in range(self.n_stages):
                x = ncsn_conv3x3(self.act(x), self.features, bias=False)
            x = x + residual
        return x


class CRPBlock(nn.Module):
    """Chained residual pooling: repeated (5x5 max-pool, conv) paths summed onto the input."""

    features: int
    n_stages: int
    act: Callable[[Array], Array] = nn.relu

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = self.act(x)
        path = x
        for _ in range(self.n_stages):
            path = nn.max_pool(path, window_shape=(5, 5), strides=(1, 1), padding="SAME")
            path = ncsn_conv3x3(path, self.features, bias=False)
            x = path + x
        return x


class MSFBlock(nn.Module):
    """Multi-resolution fusion: conv each input, resize to `shape`, sum."""

    shape: Sequence[int]
    features: int
    interpolation: str = "bilinear"

    @nn.compact
    def __call__(self, xs: Sequence[Array]) -> Array:
        methods = {"bilinear": "bilinear", "nearest_neighbor": "nearest"}
        if self.interpolation not in methods:
            raise ValueError(f"config.model.interpolation={self.interpolation!r}; "
                             f"choose one of {sorted(methods)}")
        total = jnp.zeros((xs[0].shape[0], *self.shape, self.features))
        for x in xs:
            h = ncsn_conv3x3(x, self.features, bias=True)
            total = total + jax.image.resize(h, (h.shape[0], *self.shape, self.features),
                                             methods[self.interpolation])
        return total


class RefineBlock(nn.Module):
    """RefineNet block: RCU per input, fuse (unless start), chained pooling, output RCU."""

    output_shape: Sequence[int]
    features: int
    act: Callable[[Array], Array] = nn.relu
    interpolation: str = "bilinear"
    start: bool = False
    end: bool = False

    @nn.compact
    def __call__(self, xs: Sequence[Array]) -> Array:
        hs = [RCUBlock(x.shape[-1], n_blocks=2, n_stages=2, act=self.act)(x) for x in xs]
        if self.start:
            h = hs[0]
        else:
            h = MSFBlock(tuple(self.output_shape), self.features, self.interpolation)(hs)
        h = CRPBlock(self.features, n_stages=2, act=self.act)(h)
        return RCUBlock(self.features, n_blocks=3 if self.end else 1, n_stages=2, act=self.act)(h)
