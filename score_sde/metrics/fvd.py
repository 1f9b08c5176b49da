"""Frechet Video Distance (Unterthiner et al. 2018): the Frechet distance between Gaussians fitted
to I3D Kinetics-400 logits of real and generated clips.

Preprocessing, as the reference code (google-research/frechet_video_distance) does it, from
clips (N, T, H, W, C) in [0, 1] (or [-1, 1] with centered=True, or uint8; C = 1 is repeated to
RGB):
- frames: clips shorter than `min_frames` (default 9, the fewest frames I3D accepts) are
  extended to exactly `min_frames` frames by `pad_mode`: 'reflect' (default) plays the clip
  forward and back, frames 0..T-1, T-2, ..., 0, 1, ... (motion continues, reversed as at a
  bounce), 'loop' repeats it from frame 0, 'edge' repeats the last frame; longer clips are used
  whole (the network averages its logits over time);
- resize: every frame to 224x224 bilinearly as TensorFlow 1's `tf.image.resize_bilinear` (the
  reference's call: align_corners=False, no half-pixel centres: source coordinate
  dst * in/out, neighbours floor and min(ceil, in - 1), float32 coordinates, no antialiasing);
  resize='half_pixel' uses PyTorch's `F.interpolate(mode='bilinear', align_corners=False)`
  instead;
- values: [0, 1] -> [-1, 1].
The features are the time-averaged logits of `InceptionI3D` (400 with Kinetics weights), the
tensor the reference reads. Weights come from a file the user supplies (see
`score_sde.metrics.i3d`); nothing is downloaded. FVD values match published ones only with the
same weights, preprocessing, clip length and number of clips.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from score_sde.metrics.clips import as_unit_clips
from score_sde.metrics.frechet import frechet_distance_from_features
from score_sde.metrics.i3d import I3D_MIN_FRAMES, I3D_SIZE, i3d_model, load_i3d_variables
from score_sde.metrics.inception import resize_bilinear

__all__ = [
    "PAD_MODES",
    "RESIZE_MODES",
    "frame_indices",
    "frechet_video_distance",
    "fvd_feature_fn",
    "fvd_features",
    "resize_bilinear_tf1",
]

PAD_MODES = ("reflect", "loop", "edge")
RESIZE_MODES = ("tf1", "half_pixel")
Weights = str | Path | Mapping | Callable[..., dict[str, np.ndarray]]


def frame_indices(num_frames: int, min_frames: int, pad_mode: str = "reflect") -> np.ndarray:
    """Indices into a clip of `num_frames` frames that extend it to `min_frames` (see module
    docstring); arange(num_frames) when it is long enough."""
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    k = np.arange(max(num_frames, min_frames))
    if num_frames == 1 or pad_mode == "edge":
        return np.minimum(k, num_frames - 1)
    if pad_mode == "loop":
        return k % num_frames
    period = 2 * (num_frames - 1)
    k = k % period
    return np.where(k < num_frames, k, period - k)


def _legacy_interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) weights of TensorFlow 1's bilinear resize without half-pixel centres."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.arange(out_size, dtype=np.float32) * scale
    lower = np.floor(src)
    lerp = (src - lower).astype(np.float32)
    i0 = np.clip(lower.astype(np.int64), 0, in_size - 1)
    i1 = np.minimum(np.ceil(src).astype(np.int64), in_size - 1)
    mat = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    np.add.at(mat, (rows, i0), np.float32(1.0) - lerp)
    np.add.at(mat, (rows, i1), lerp)
    return mat


def resize_bilinear_tf1(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of NHWC images to `size` = (H, W) as TF1's `tf.image.resize_bilinear`
    with its defaults (align_corners=False, half_pixel_centers=False)."""
    wh = _legacy_interpolation_matrix(x.shape[1], size[0])
    ww = _legacy_interpolation_matrix(x.shape[2], size[1])
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,bhwc->bowc", wh, x, precision=hi)
    return jnp.einsum("pw,bowc->bopc", ww, x, precision=hi)


def _i3d_input(clips: jax.Array, resize: str) -> jax.Array:
    """(B, T, H, W, 3) in [0, 1] -> (B, T, 224, 224, 3) in [-1, 1]."""
    b, t, h, w, c = clips.shape
    resize_fn = resize_bilinear_tf1 if resize == "tf1" else resize_bilinear
    frames = resize_fn(clips.reshape(b * t, h, w, c), (I3D_SIZE, I3D_SIZE))
    return 2.0 * frames.reshape(b, t, I3D_SIZE, I3D_SIZE, c) - 1.0


def _rgb_padded(clips: np.ndarray, centered: bool, min_frames: int, pad_mode: str) -> np.ndarray:
    x = as_unit_clips(clips, centered=centered)
    if x.shape[-1] not in (1, 3):
        raise ValueError(f"clips must have 1 or 3 channels, got shape {x.shape}")
    x = np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x
    return x[:, frame_indices(x.shape[1], min_frames, pad_mode)]


def fvd_feature_fn(
    weights: str | Path | Mapping,
    *,
    batch_size: int = 8,
    min_frames: int = I3D_MIN_FRAMES,
    pad_mode: str = "reflect",
    resize: str = "tf1",
) -> Callable[..., dict[str, np.ndarray]]:
    """`fn(clips (N, T, H, W, C), centered=False) -> {'logits': (N, classes), 'features':
    (N, 1024)}` (numpy, float32), I3D on the preprocessed clips (module docstring).

    `weights`: a converted .npz or a PyTorch state dict (.pt/.pth), loaded and compiled once per
    process and set of options, or loaded variables. Clips run in jitted chunks of `batch_size`
    (the last one padded), so each clip shape compiles once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if min_frames < I3D_MIN_FRAMES:
        raise ValueError(f"min_frames must be >= {I3D_MIN_FRAMES} (I3D's minimum), "
                         f"got {min_frames}")
    frame_indices(1, min_frames, pad_mode)  # checks pad_mode
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    if isinstance(weights, str | Path):
        return _cached_feature_fn(str(weights), batch_size, min_frames, pad_mode, resize)
    return _build_feature_fn(weights, batch_size, min_frames, pad_mode, resize)


@functools.lru_cache(maxsize=4)
def _cached_feature_fn(path: str, batch_size: int, min_frames: int, pad_mode: str, resize: str
                       ) -> Callable[..., dict[str, np.ndarray]]:
    return _build_feature_fn(load_i3d_variables(path), batch_size, min_frames, pad_mode, resize)


def _build_feature_fn(variables: Mapping, batch_size: int, min_frames: int, pad_mode: str,
                      resize: str) -> Callable[..., dict[str, np.ndarray]]:
    variables = jax.device_put(variables)
    model = i3d_model(variables)

    @jax.jit
    def apply(v: Mapping, clips: jax.Array) -> dict[str, jax.Array]:
        with jax.default_matmul_precision("highest"):
            return model.apply(v, _i3d_input(clips, resize))

    def fn(clips: np.ndarray, centered: bool = False) -> dict[str, np.ndarray]:
        x = _rgb_padded(clips, centered, min_frames, pad_mode)
        outs: dict[str, list[np.ndarray]] = {"logits": [], "features": []}
        for start in range(0, x.shape[0], batch_size):
            chunk = x[start : start + batch_size]
            valid = chunk.shape[0]
            if valid < batch_size:
                pad = np.zeros((batch_size - valid, *chunk.shape[1:]), chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            out = apply(variables, chunk)
            for k in outs:
                outs[k].append(np.asarray(out[k])[:valid])
        return {k: np.concatenate(v) for k, v in outs.items()}

    return fn


def fvd_features(
    clips: np.ndarray,
    weights: Weights,
    *,
    centered: bool = False,
    batch_size: int = 8,
    min_frames: int = I3D_MIN_FRAMES,
    pad_mode: str = "reflect",
    resize: str = "tf1",
) -> np.ndarray:
    """FVD features (N, classes): the time-averaged I3D logits of clips (N, T, H, W, C).

    `weights`: as for `fvd_feature_fn`, or a function it made (which fixes the other options).
    """
    if callable(weights):
        return weights(clips, centered=centered)["logits"]
    fn = fvd_feature_fn(weights, batch_size=batch_size, min_frames=min_frames,
                        pad_mode=pad_mode, resize=resize)
    return fn(clips, centered=centered)["logits"]


def frechet_video_distance(
    real_clips: np.ndarray,
    generated_clips: np.ndarray,
    weights: Weights,
    *,
    centered: bool = False,
    batch_size: int = 8,
    min_frames: int = I3D_MIN_FRAMES,
    pad_mode: str = "reflect",
    resize: str = "tf1",
) -> float:
    """FVD between two sets of clips (N1, T, H, W, C) and (N2, T', H', W', C') (N >= 2 each),
    in squared logit units; `weights` as for `fvd_features`. Its bias grows as the number of
    clips shrinks: compare values computed with equal numbers of clips."""
    options = dict(centered=centered, batch_size=batch_size, min_frames=min_frames,
                   pad_mode=pad_mode, resize=resize)
    return frechet_distance_from_features(fvd_features(real_clips, weights, **options),
                                          fvd_features(generated_clips, weights, **options))
