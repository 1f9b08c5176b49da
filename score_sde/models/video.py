"""Score networks for clips x of shape (B, T, H, W, C): factorised space-time and concat.

'spacetime' (Ho et al. 2022's factorisation): an image U-Net of config.model.image_model
('small_unet' or 'ncsnpp', i.e. NCSN++ / DDPM++) runs over all frames at once (T folded into
the batch, the noise level shared by the frames of a clip), and after each of its blocks at a
resolution in config.model.temporal_resolutions a temporal attention layer lets every pixel
attend to the same pixel in the other frames, with a learned relative-position bias. The
temporal layers' output projections start at zero, so a network whose image part holds an
image model's weights (`load_image_params`) gives, frame by frame, exactly that model's output.

'video_concat' (MCVD's "concat" baseline): the frames stacked on the channel axis of one image
U-Net; it takes exactly config.data.num_frames frames.

Both take optional keyword inputs (all (B, T) per frame):
  mask        frames given clean (masked conditioning, config.model.mask_conditioning): they
              replace x by `observed` there, and an indicator of them enters after the input
              convolution through a zero-initialised 1x1 map (the "indicator channel")
  observed    the clean frames (B, T, H, W, C) that `mask` selects
  independent frames that attend only to themselves along time ('spacetime' only): extra
              images trained beside the clips (joint image-video training)
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from score_sde.models.layers import Dtype, get_dtype, group_norm
from score_sde.models.registry import _MODELS, register_model

Array = jax.Array
IMAGE_MODELS = ("small_unet", "ncsnpp")
IMAGE_PARAMS = "image_net"  # the image U-Net's parameters inside a video network's


def num_frames(config) -> int:
    """config.data.num_frames: the clip length the network trains on."""
    frames = config.data.get("num_frames", None)
    if frames is None or int(frames) < 1:
        raise ValueError(f"config.data.num_frames={frames!r}: a video network needs the clip "
                         "length (a positive number of frames)")
    return int(frames)


def _image_model(config) -> type[nn.Module]:
    name = str(config.model.get("image_model", "small_unet"))
    if name not in IMAGE_MODELS:
        raise ValueError(f"config.model.image_model={name!r}; choose one of {IMAGE_MODELS}")
    return _MODELS.lookup(name)


def _check_clip(x: Array, min_frames: int, name: str) -> None:
    if x.ndim != 5:
        raise ValueError(f"{name} takes clips (B, T, H, W, C); got an input of shape {x.shape}")
    if x.shape[1] < min_frames:
        raise ValueError(f"{name}: a clip of {x.shape[1]} frame(s) is shorter than the "
                         f"network's minimum of {min_frames}")


def _per_frame(a: Array | None, shape: tuple[int, int], field: str) -> Array:
    """A (B, T) per-frame flag as float32 (zeros when None); one line for a wrong shape."""
    if a is None:
        return jnp.zeros(shape, jnp.float32)
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{field} has shape {tuple(a.shape)}; the clips need (batch, frames) "
                         f"= {tuple(shape)}")
    return jnp.asarray(a, jnp.float32)


def given_input(x: Array, mask: Array | None, observed: Array | None) -> Array:
    """x with the given frames (mask (B, T) true) replaced by the clean `observed` frames."""
    if mask is None:
        return x
    if observed is None:
        raise ValueError("a frame mask needs the observed frames (observed=) it selects")
    keep = jnp.asarray(mask, bool).reshape(mask.shape + (1,) * (x.ndim - 2))
    return jnp.where(keep, observed.astype(x.dtype), x)


def attention_allowed(independent: Array) -> Array:
    """(B, T, T) bool: frame i may attend to frame j iff i == j or neither is independent."""
    ind = jnp.asarray(independent, bool)
    frames = ind.shape[-1]
    linked = ~ind[:, :, None] & ~ind[:, None, :]
    return linked | jnp.eye(frames, dtype=bool)[None]


def relative_bias(table: Array, frames: int, max_distance: int) -> Array:
    """(heads, T, T) attention bias of query t and key s: table[clip(s - t) + max_distance],
    table (2 max_distance + 1, heads)."""
    pos = jnp.arange(frames)
    dist = jnp.clip(pos[None, :] - pos[:, None], -max_distance, max_distance)
    return jnp.moveaxis(table[dist + max_distance], -1, 0)


class TemporalAttention(nn.Module):
    """Multi-head self-attention along time at every pixel, plus a learned relative-position
    bias (per head, distances clipped to +-max_distance); residual with a zero-initialised
    output projection, so a fresh layer is exactly the identity.

    Called on folded features (B * frames, H, W, C) with `allowed` (B, T, T) from
    `attention_allowed`.
    """

    frames: int
    num_heads: int = 4
    max_distance: int = 16
    dtype: Dtype = None

    @nn.compact
    def __call__(self, h: Array, allowed: Array) -> Array:
        bt, height, width, c = h.shape
        heads = self.num_heads if c % self.num_heads == 0 else 1
        x = group_norm(c, self.dtype)(h).reshape(bt // self.frames, self.frames, height, width, c)
        split = lambda a: a.reshape(*a.shape[:-1], heads, c // heads)
        q, k, v = (split(nn.Dense(c, dtype=self.dtype, name=n)(x)) for n in ("q", "k", "v"))
        logits = jnp.einsum("bthwnd,bshwnd->bhwnts", q, k).astype(jnp.float32)
        table = self.param("relative_bias", nn.initializers.zeros,
                           (2 * self.max_distance + 1, self.num_heads))
        bias = relative_bias(table, self.frames, self.max_distance)[:heads]
        logits = logits * (c // heads) ** -0.5 + bias[None, None, None]
        logits = jnp.where(allowed[:, None, None, None], logits, -1e9)
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhwnts,bshwnd->bthwnd", weights, v).reshape(bt, height, width, c)
        out = nn.Dense(c, kernel_init=nn.initializers.zeros, dtype=self.dtype, name="out")(out)
        return h + out.astype(h.dtype)


def _temporal_block(remat: bool) -> type[TemporalAttention]:
    if not remat:
        return TemporalAttention
    wrapped = nn.remat(TemporalAttention)
    wrapped.__name__ = wrapped.__qualname__ = TemporalAttention.__name__
    return wrapped


class _Indicator(nn.Module):
    """h + W ind: the given-frame indicator (one value per example) through a 1x1 map that
    starts at zero, added to the features after the input convolution."""

    dtype: Dtype = None

    @nn.compact
    def __call__(self, h: Array, indicator: Array) -> Array:
        w = nn.Dense(h.shape[-1], use_bias=False, kernel_init=nn.initializers.zeros,
                     dtype=self.dtype)(indicator.reshape(h.shape[0], -1))
        return h + w[:, None, None, :].astype(h.dtype)


def _fold(a: Array | None, frames: int) -> Array | None:
    """(B, ...) per-clip values repeated for each of the clip's frames: (B * frames, ...)."""
    return None if a is None else jnp.repeat(a, frames, axis=0)


@register_model("spacetime")
class SpaceTimeUNet(nn.Module):
    """Factorised space-time U-Net (module docstring): clips (B, T, H, W, C) -> same shape.

    config.model fields beyond the image model's: image_model ('small_unet' | 'ncsnpp'),
    temporal_resolutions (feature-map sizes that get temporal attention), temporal_heads,
    temporal_max_distance (relative positions are clipped beyond it), mask_conditioning,
    remat (also rematerialises the temporal layers).
    """

    config: ml_collections.ConfigDict
    min_frames = 1

    @staticmethod
    def check_config(config) -> None:
        num_frames(config)
        cls = _image_model(config)
        cls.check_config(config)

    @staticmethod
    def input_shape(config, batch: int = 1) -> tuple[int, ...]:
        d = config.data
        return (batch, num_frames(config), d.image_size, d.image_size, d.num_channels)

    @nn.compact
    def __call__(self, x: Array, time_cond: Array, train: bool = False, y: Array | None = None,
                 mask: Array | None = None, observed: Array | None = None,
                 independent: Array | None = None) -> Array:
        _check_clip(x, self.min_frames, "config.model.name='spacetime'")
        b, frames = x.shape[:2]
        indicator = _per_frame(mask, (b, frames), "the frame mask")
        x = given_input(x, mask, observed)
        allowed = attention_allowed(_per_frame(independent, (b, frames), "independent") > 0)
        net = _image_model(self.config)(config=self.config, name=IMAGE_PARAMS)
        layer = lambda h, where: self.frame_layer(h, where, frames, indicator, allowed)
        out = net(x.reshape(b * frames, *x.shape[2:]), _fold(time_cond, frames), train,
                  _fold(y, frames), frame_layer=layer)
        return out.reshape(x.shape)

    def frame_layer(self, h: Array, where: str, frames: int, indicator: Array,
                    allowed: Array) -> Array:
        """The image U-Net's FrameLayer: the indicator after the input convolution, temporal
        attention after the blocks at config.model.temporal_resolutions."""
        m, dtype = self.config.model, get_dtype(self.config)
        if where == "input":
            if m.get("mask_conditioning", False):
                h = _Indicator(dtype=dtype)(h, indicator.reshape(-1, 1))
            return h
        if h.shape[1] not in tuple(m.get("temporal_resolutions", ())):
            return h
        block = _temporal_block(bool(m.get("remat", False)))
        return block(frames=frames, num_heads=int(m.get("temporal_heads", 4)),
                     max_distance=int(m.get("temporal_max_distance", 16)), dtype=dtype)(
            h, allowed)


@register_model("video_concat")
class ConcatUNet(nn.Module):
    """MCVD's "concat" baseline: the T frames of a clip stacked on the channels of one image
    U-Net (config.model.image_model), which sees the whole clip at once at every layer but
    takes exactly config.data.num_frames frames. Clips (B, T, H, W, C) -> same shape."""

    config: ml_collections.ConfigDict

    @staticmethod
    def check_config(config) -> None:
        num_frames(config)
        _image_model(config).check_config(config)

    @staticmethod
    def input_shape(config, batch: int = 1) -> tuple[int, ...]:
        return SpaceTimeUNet.input_shape(config, batch)

    @nn.compact
    def __call__(self, x: Array, time_cond: Array, train: bool = False, y: Array | None = None,
                 mask: Array | None = None, observed: Array | None = None,
                 independent: Array | None = None) -> Array:
        frames = num_frames(self.config)
        _check_clip(x, frames, "config.model.name='video_concat'")
        if x.shape[1] != frames:
            raise ValueError(f"config.model.name='video_concat' stacks config.data.num_frames="
                             f"{frames} frames on its channels; got a clip of {x.shape[1]}")
        if independent is not None:
            raise ValueError("config.model.name='video_concat' has no temporal attention to "
                             "mask: joint image-video training needs 'spacetime'")
        b, _, height, width, c = x.shape
        indicator = _per_frame(mask, (b, frames), "the frame mask")
        x = given_input(x, mask, observed)
        stacked = jnp.moveaxis(x, 1, 3).reshape(b, height, width, frames * c)
        use_indicator = bool(self.config.model.get("mask_conditioning", False))
        dtype = get_dtype(self.config)

        def layer(h, where):
            return _Indicator(dtype=dtype)(h, indicator) if where == "input" and \
                use_indicator else h

        net = _image_model(self.config)(config=self.config, name=IMAGE_PARAMS)
        out = net(stacked, time_cond, train, y, frame_layer=layer)
        return jnp.moveaxis(out.reshape(b, height, width, frames, c), 3, 1)


def load_image_params(video_params: dict, image_params: dict) -> dict:
    """A 'spacetime' network's parameters with its image U-Net's replaced by those of an image
    model built from the same config.model (image_model, nf, ch_mult, ...).

    The temporal and indicator layers keep their values; freshly initialised (zero output),
    the network then gives, frame by frame, the image model's output exactly. A tree of
    another architecture is refused with one line naming the first parameter that differs.
    """
    if IMAGE_PARAMS not in video_params:
        raise ValueError(f"the video parameters have no '{IMAGE_PARAMS}' part (a 'spacetime' "
                         "network's have)")
    want = jax.tree_util.tree_flatten_with_path(video_params[IMAGE_PARAMS])[0]
    got = dict(jax.tree_util.tree_flatten_with_path(image_params)[0])
    for path, leaf in want:
        other = got.pop(path, None)
        if other is None or tuple(other.shape) != tuple(leaf.shape):
            found = "missing" if other is None else f"shape {tuple(other.shape)}"
            raise ValueError(f"the image parameters do not fit the video network: "
                             f"{jax.tree_util.keystr(path)} needs shape {tuple(leaf.shape)}, "
                             f"the image model's is {found} (same config.model for both?)")
    if got:
        extra = jax.tree_util.keystr(next(iter(got)))
        raise ValueError(f"the image parameters have {extra}, which the video network's image "
                         "part lacks (same config.model for both?)")
    return {**video_params, IMAGE_PARAMS: image_params}


def image_config(video_config) -> ml_collections.ConfigDict:
    """The config of the image model whose weights `load_image_params` takes: the video
    config with config.model.name = config.model.image_model."""
    config = ml_collections.ConfigDict(video_config.to_dict())
    config.model.name = str(video_config.model.get("image_model", "small_unet"))
    return config
