"""Layers shared by the score networks, and the DDPM U-Net's blocks.

Module and parameter names (`Conv_0`, `Dense_0`, `NIN_0/W`, `GroupNorm_0`, ...) and initialisers
follow the published score_sde flax code, so published checkpoints load without renaming. The
conv helpers are plain functions: called inside a parent's `nn.compact` method they create an
`nn.Conv` child of that parent, which is what gives the published auto-names.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_sde.registry import Registry

Array = jax.Array
Dtype = Any  # a jnp dtype, or None for "as the inputs and (float32) parameters"
ModuleT = TypeVar("ModuleT", bound=type[nn.Module])

# A space-time network's per-frame hook into an image U-Net (models/video.py): called on the
# features (frames folded into the batch) after the input convolution with "input" and after
# every block where attention may sit with "block"; it returns features of the same shape.
FrameLayer = Callable[[Array, str], Array]


def identity_frame_layer(h: Array, where: str) -> Array:
    """The image networks' own FrameLayer: the features unchanged."""
    return h


COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

ACTIVATIONS: Registry[Callable[[Array], Array]] = Registry(
    "activation", field="config.model.nonlinearity", entries={
        "elu": nn.elu,
        "relu": nn.relu,
        "lrelu": functools.partial(nn.leaky_relu, negative_slope=0.2),
        "swish": nn.swish,
    })


def get_act(config) -> Callable[[Array], Array]:
    """The activation named by `config.model.nonlinearity`."""
    return ACTIVATIONS.lookup(str(config.model.nonlinearity).lower())


def get_dtype(config) -> Dtype:
    """The compute dtype named by `config.model.dtype` ('float32' when the field is absent).

    Parameters stay float32 whatever this is (flax `param_dtype`); bfloat16 only changes the
    dtype convolutions, dense layers and attention compute in.
    """
    name = str(config.model.get("dtype", "float32")).lower()
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"config.model.dtype={config.model.get('dtype')!r} is not valid; "
                         f"choose one of {sorted(COMPUTE_DTYPES)}")
    return COMPUTE_DTYPES[name]


@functools.cache
def rematerialised(block: ModuleT) -> ModuleT:
    """`block` wrapped in `nn.remat` (activations recomputed in the backward pass).

    The wrapper keeps the block's class name, so flax's auto-names and hence the parameter
    paths are unchanged. The block is called as `block(...)(x, temb, train)`: `train` is static.
    """
    wrapped = nn.remat(block, static_argnums=(3,))
    wrapped.__name__ = wrapped.__qualname__ = block.__name__
    return wrapped


def maybe_remat(block: ModuleT, remat: bool) -> ModuleT:
    """`rematerialised(block)` when `remat` (config.model.remat), else `block` itself."""
    return rematerialised(block) if remat else block


def default_init(scale: float = 1.0) -> Callable:
    """DDPM's initialiser: variance scaling, fan_avg, uniform; scale 0 means (almost) zero."""
    return nn.initializers.variance_scaling(1e-10 if scale == 0 else scale, "fan_avg", "uniform")


def ddpm_conv(x: Array, out_ch: int, kernel: int, stride: int = 1, bias: bool = True,
              dilation: int = 1, init_scale: float = 1.0, dtype: Dtype = None) -> Array:
    """A SAME-padded convolution with DDPM initialisation (call inside a compact module)."""
    return nn.Conv(out_ch, kernel_size=(kernel, kernel), strides=(stride, stride), padding="SAME",
                   use_bias=bias, kernel_dilation=(dilation, dilation),
                   kernel_init=default_init(init_scale), bias_init=nn.initializers.zeros,
                   dtype=dtype)(x)


def conv3x3(x: Array, out_ch: int, stride: int = 1, bias: bool = True, dilation: int = 1,
            init_scale: float = 1.0, dtype: Dtype = None) -> Array:
    """3x3 convolution with DDPM initialisation (published `ddpm_conv3x3`)."""
    return ddpm_conv(x, out_ch, 3, stride, bias, dilation, init_scale, dtype)


def conv1x1(x: Array, out_ch: int, stride: int = 1, bias: bool = True, dilation: int = 1,
            init_scale: float = 1.0, dtype: Dtype = None) -> Array:
    """1x1 convolution with DDPM initialisation (published `ddpm_conv1x1`)."""
    return ddpm_conv(x, out_ch, 1, stride, bias, dilation, init_scale, dtype)


def group_norm(channels: int, dtype: Dtype = None) -> nn.GroupNorm:
    """NCSN++'s GroupNorm: min(channels // 4, 32) groups; statistics always in float32."""
    return nn.GroupNorm(num_groups=min(channels // 4, 32), dtype=dtype)


def get_timestep_embedding(timesteps: Array, embedding_dim: int,
                           max_positions: int = 10000) -> Array:
    """Transformer sinusoidal embedding of (possibly fractional) timesteps, shape (B, dim)."""
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must have shape (B,), got {timesteps.shape}")
    half = embedding_dim // 2
    freqs = jnp.exp(-math.log(max_positions) / (half - 1) * jnp.arange(half, dtype=jnp.float32))
    args = timesteps.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
    if embedding_dim % 2 == 1:
        emb = jnp.pad(emb, [[0, 0], [0, 1]])
    return emb


def get_sigmas(config) -> Array:
    """SMLD noise levels, geometric from sigma_max down to sigma_min (index 0 = largest)."""
    m = config.model
    return jnp.exp(jnp.linspace(np.log(m.sigma_max), np.log(m.sigma_min), m.num_scales))


class NIN(nn.Module):
    """Per-pixel linear map over the channel axis (params `W`, `b`), computed in `dtype`."""

    num_units: int
    init_scale: float = 0.1
    dtype: Dtype = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        w = self.param("W", default_init(self.init_scale), (x.shape[-1], self.num_units))
        b = self.param("b", nn.initializers.zeros, (self.num_units,))
        x, w, b = nn.dtypes.promote_dtype(x, w, b, dtype=self.dtype)
        return jnp.tensordot(x, w, axes=1) + b


def attention_reference(q: Array, k: Array, v: Array) -> Array:
    """softmax(q k^T / sqrt(C)) v over all pixels, written out (NHWC q, k, v; for tests)."""
    b, height, width, c = q.shape
    logits = jnp.einsum("bhwc,bHWc->bhwHW", q, k).reshape(b, height, width, -1) * c**-0.5
    weights = jax.nn.softmax(logits, axis=-1).reshape(b, height, width, height, width)
    return jnp.einsum("bhwHW,bHWc->bhwc", weights, v)


def pixel_attention(q: Array, k: Array, v: Array) -> Array:
    """Single-head attention over all pixels of NHWC q, k, v via `jax.nn.dot_product_attention`.

    XLA's implementation forms the logits and the softmax in float32 even for bfloat16 inputs;
    the result has the inputs' dtype.
    """
    b, height, width, c = q.shape
    tokens = lambda a: a.reshape(b, height * width, 1, c)  # (batch, seq, heads=1, head_dim)
    out = jax.nn.dot_product_attention(tokens(q), tokens(k), tokens(v), implementation=None)
    return out.reshape(b, height, width, c)


def spatial_attention(x: Array, h: Array, dtype: Dtype = None) -> Array:
    """Single-head self-attention over all pixels; q, k, v projections of h; shape of x."""
    c = x.shape[-1]
    q, k, v = NIN(c, dtype=dtype)(h), NIN(c, dtype=dtype)(h), NIN(c, dtype=dtype)(h)
    return pixel_attention(q, k, v)


class AttnBlock(nn.Module):
    """DDPM's self-attention block with a residual connection."""

    normalize: Any = nn.GroupNorm
    dtype: Dtype = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = spatial_attention(x, self.normalize(dtype=self.dtype)(x), self.dtype)
        return x + NIN(x.shape[-1], init_scale=0.0, dtype=self.dtype)(h)


class Upsample(nn.Module):
    """DDPM upsampling: nearest neighbour x2, then optionally a 3x3 conv."""

    with_conv: bool = False
    dtype: Dtype = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, h, w, c = x.shape
        x = jax.image.resize(x, (b, 2 * h, 2 * w, c), "nearest")
        return conv3x3(x, c, dtype=self.dtype) if self.with_conv else x


class Downsample(nn.Module):
    """DDPM downsampling: stride-2 3x3 conv, or 2x2 average pooling."""

    with_conv: bool = False
    dtype: Dtype = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.with_conv:
            return conv3x3(x, x.shape[-1], stride=2, dtype=self.dtype)
        return nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2), padding="SAME")


class ResnetBlockDDPM(nn.Module):
    """DDPM's residual block: norm-act-conv, + time bias, norm-act-dropout-conv, shortcut."""

    act: Callable[[Array], Array]
    normalize: Any = nn.GroupNorm
    out_ch: int | None = None
    conv_shortcut: bool = False
    dropout: float = 0.5
    dtype: Dtype = None

    @nn.compact
    def __call__(self, x: Array, temb: Array | None = None, train: bool = True) -> Array:
        c, dtype = x.shape[-1], self.dtype
        out_ch = self.out_ch or c
        h = conv3x3(self.act(self.normalize(dtype=dtype)(x)), out_ch, dtype=dtype)
        if temb is not None:
            h += nn.Dense(out_ch, kernel_init=default_init(), dtype=dtype)(
                self.act(temb))[:, None, None, :]
        h = self.act(self.normalize(dtype=dtype)(h))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = conv3x3(h, out_ch, init_scale=0.0, dtype=dtype)
        if c != out_ch:
            x = (conv3x3(x, out_ch, dtype=dtype) if self.conv_shortcut
                 else NIN(out_ch, dtype=dtype)(x))
        return x + h


def add_class_embedding(config, temb: Array | None, y: Array | None, batch: int,
                        features: int) -> Array | None:
    """temb + a class embedding when `config.model.num_classes` > 0; temb unchanged otherwise.

    Call inside a compact module. The table (`class_embed/embedding`) has num_classes + 1 rows:
    row `num_classes` is the reserved "null" label of classifier-free guidance, and `y=None`
    means null for the whole batch. Unconditional configs get no extra parameters.
    """
    num_classes = int(config.model.get("num_classes", 0) or 0)
    if num_classes <= 0:
        if y is not None:
            raise ValueError("class labels y were given but config.model.num_classes is 0")
        return temb
    if y is None:
        y = jnp.full((batch,), num_classes, jnp.int32)
    emb = nn.Embed(num_classes + 1, features, name="class_embed")(jnp.asarray(y, jnp.int32))
    return emb if temb is None else temb + emb


def check_choice(config, field: str, allowed: Sequence[str]) -> str:
    """config.model.<field>, lower-cased, or one ValueError naming the field and the choices."""
    value = str(config.model[field]).lower()
    if value not in allowed:
        raise ValueError(f"config.model.{field}={config.model[field]!r} is not valid; "
                         f"choose one of {list(allowed)}")
    return value


def check_resolution(config, size: int | None = None) -> None:
    """The U-Nets halve the resolution len(ch_mult) - 1 times: image_size must allow that."""
    size = config.data.image_size if size is None else size
    factor = 2 ** (len(config.model.ch_mult) - 1)
    if size % factor:
        raise ValueError(
            f"config.data.image_size={size} must be divisible by 2**(len(config.model.ch_mult)-1)"
            f"={factor} (ch_mult={tuple(config.model.ch_mult)})")
