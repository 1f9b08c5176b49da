"""An offline metric for moving digits (sklearn's 8x8 digits moving on a larger canvas): digit
quality per frame, identity along the clip, and motion, with the shipped digits classifier.

Clips are (N, T, H, W, 1), H, W >= 8, in [0, 1] (centered=False) or [-1, 1] (centered=True),
with `num_digits` = K digits each.

Where the digits are. The classifier sees 8x8 digits and the canvas is larger, so every digit of
every frame is cut out as the 8x8 patch centred on its centre of mass (halves rounded up; the
canvas is surrounded by black, so a patch may reach past its edge). Downscaling the canvas
instead would shrink the digits to a size the classifier never saw. Centring on the centre of
mass needs no threshold and is translation-invariant: a digit moved by whole pixels gives the
same patch, so the patches of real clips stay the same along a clip, and sklearn's digits cut
this way are classified as well as uncut. Each frame is read on its own: K times the 8x8
window with the most intensity that the windows before it left, then each centre moved a few
times to the centre of mass of the pixels within 12x12 of it that are nearer to it than to any
other centre (k-means restricted to a window), so neighbouring digits are split between their
patches rather than merged. Overlapping digits give mixed patches, in real clips as in
generated ones: the FD counts them on both sides, identity leaves those frames out, and every
number has its twin on the real clips.

The numbers (`moving_digits_metrics`):
- 'digits_fd': per-frame digits FD, the Frechet distance between the classifier's 128-d features
  of all patches (every frame, every digit) of the clips and of the real clips;
- 'identity': the fraction of clips whose predicted digits, as a multiset (so two digits that
  cross and swap places still count as kept), are the same in at least `agreement` (default:
  all) of the frames where each patch shows one digit alone (patches 2 pixels apart or more,
  none nearly empty; two digits on a 16x16 canvas are almost never that far apart, so there
  identity is mostly NaN); 'frame_agreement': the mean fraction of those frames that show the
  clip's most frequent multiset; 'identity_scored': the fraction of clips with at least two
  such frames (the others are left out of both);
- 'motion_energy': mean((x[t+1] - x[t])^2) over clips, frames and pixels in [0, 1] units (0 for a
  frozen clip), and 'motion_ratio' = its ratio to the real clips' (1 is the data's motion).
The keys ending in '_data' are the same numbers on the real clips.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from score_sde.metrics.clips import as_unit_clips
from score_sde.metrics.digits_classifier import digits_feature_fn
from score_sde.metrics.frechet import frechet_distance_from_features

__all__ = [
    "PATCH",
    "digit_patches",
    "identity_consistency",
    "locate_digits",
    "motion_energy",
    "moving_digits_metrics",
    "moving_digits_reference",
]

PATCH = 8
_MARGIN = PATCH // 2  # black around the canvas, so a patch may reach past its edge
_SEARCH = PATCH + 4  # the window whose centre of mass moves a centre: a whole digit and a margin
_REFINE_STEPS = 5
_APART = PATCH + 2  # patch corners this far apart: a 2-pixel gap, no neighbour in the crop
_MIN_SHARE = 0.25  # a patch with less of the frame's intensity per digit found no digit


def _corner(centres: np.ndarray, size: int) -> np.ndarray:
    """Integer top-left corners (..., 2) of size x size windows centred on centres (..., 2)."""
    return np.floor(centres - (size - 1) / 2 + 0.5).astype(np.int64)


def _refine(frames: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Centres (M, K, 2) moved to the centre of mass of the pixels of frames (M, H, W) within
    their 12x12 window and nearer to them than to any other centre."""
    padded = np.pad(frames, ((0, 0), (_SEARCH, _SEARCH), (_SEARCH, _SEARCH)))
    index = np.arange(frames.shape[0])[:, None, None, None]
    num = centres.shape[1]
    for _ in range(_REFINE_STEPS):
        corners = _corner(centres, _SEARCH)
        rows = corners[..., :1] + np.arange(_SEARCH)  # (M, K, 12) canvas rows
        cols = corners[..., 1:] + np.arange(_SEARCH)
        window = padded[index, rows[..., :, None] + _SEARCH, cols[..., None, :] + _SEARCH]
        coords = np.stack(np.broadcast_arrays(rows[..., :, None], cols[..., None, :]), -1)
        # (M, K, 12, 12, K): squared distance of each window pixel to every centre
        dist = np.sum((coords[..., None, :] - centres[:, None, None, None]) ** 2, axis=-1)
        own = np.argmin(dist, axis=-1) == np.arange(num)[None, :, None, None]
        weight = window * own
        mass = weight.sum(axis=(2, 3))
        com = np.einsum("mkhw,mkhwc->mkc", weight, coords) / np.maximum(mass, 1e-12)[..., None]
        centres = np.where(mass[..., None] > 0, com, centres)
    return centres


def locate_digits(frames: np.ndarray, num_digits: int) -> np.ndarray:
    """Centres (M, K, 2) (row, column, pixels) of the K = num_digits digits in each of frames
    (M, H, W) with values in [0, 1] (module docstring)."""
    if num_digits < 1:
        raise ValueError(f"num_digits must be >= 1, got {num_digits}")
    m = frames.shape[0]
    residual = frames.astype(np.float64)
    centres = []
    for _ in range(num_digits):
        integral = np.pad(residual.cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))
        box = (integral[:, PATCH:, PATCH:] - integral[:, :-PATCH, PATCH:]
               - integral[:, PATCH:, :-PATCH] + integral[:, :-PATCH, :-PATCH])
        flat = box.reshape(m, -1).argmax(axis=1)
        corner = np.stack(np.unravel_index(flat, box.shape[1:]), axis=-1)
        centres.append(corner + (PATCH - 1) / 2)
        rows = corner[:, :1] + np.arange(PATCH)
        cols = corner[:, 1:] + np.arange(PATCH)
        residual[np.arange(m)[:, None, None], rows[:, :, None], cols[:, None, :]] = 0.0
    return _refine(frames.astype(np.float64), np.stack(centres, axis=1))


def _grey(clips: np.ndarray, centered: bool) -> np.ndarray:
    x = as_unit_clips(clips, centered=centered)
    if x.shape[-1] != 1 or min(x.shape[2:4]) < PATCH:
        raise ValueError(f"moving-digits clips must be (N, T, H >= 8, W >= 8, 1), got {x.shape}")
    return x[..., 0]


def digit_patches(clips: np.ndarray, num_digits: int, *, centered: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(patches (N, T, K, 8, 8, 1) in [0, 1] around the K = num_digits digits of every frame,
    apart (N, T): whether every two of the frame's patches are 2 pixels apart or more and each
    holds at least a quarter of the frame's intensity per digit, i.e. each shows one digit
    alone)."""
    x = _grey(clips, centered)
    n, t, height, width = x.shape
    frames = x.reshape(n * t, height, width)
    corners = _corner(locate_digits(frames, num_digits), PATCH)  # (N*T, K, 2)
    padded = np.pad(frames, ((0, 0), (_MARGIN, _MARGIN), (_MARGIN, _MARGIN)))
    rows = corners[..., :1] + _MARGIN + np.arange(PATCH)  # (N*T, K, 8)
    cols = corners[..., 1:] + _MARGIN + np.arange(PATCH)
    index = np.arange(n * t)[:, None, None, None]
    patches = padded[index, rows[..., :, None], cols[..., None, :]]  # (N*T, K, 8, 8)
    delta = np.abs(corners[:, :, None] - corners[:, None, :]).max(axis=-1)  # (N*T, K, K)
    apart = np.all((delta >= _APART) | np.eye(num_digits, dtype=bool), axis=(1, 2))
    mass = patches.sum(axis=(2, 3))  # (N*T, K)
    share = frames.sum(axis=(1, 2))[:, None] / num_digits
    apart &= np.all(mass >= _MIN_SHARE * share, axis=1)
    return patches.reshape(n, t, num_digits, PATCH, PATCH, 1), apart.reshape(n, t)


def identity_consistency(classes: np.ndarray, apart: np.ndarray | None = None,
                         agreement: float = 1.0) -> tuple[float, float, float]:
    """Identity along the clip from predicted classes (N, T, K) of the digits of each frame,
    counting the frames where `apart` (N, T) (default: all).

    Returns (fraction of scored clips whose multiset of classes is the most frequent one in
    >= `agreement` of their counted frames, mean fraction of counted frames showing it,
    fraction of clips scored: those with >= 2 counted frames); NaN, NaN, 0 when none is.
    """
    classes = np.asarray(classes)
    if classes.ndim != 3:
        raise ValueError(f"classes must have shape (N, T, K), got {classes.shape}")
    if not 0.0 < agreement <= 1.0:
        raise ValueError(f"agreement must be in (0, 1], got {agreement}")
    apart = np.ones(classes.shape[:2], bool) if apart is None else np.asarray(apart, bool)
    base = int(classes.max()) + 1
    keys = np.sort(classes, axis=-1) @ (base ** np.arange(classes.shape[-1]))  # (N, T)
    counted = apart.sum(axis=1)
    scored = counted >= 2
    if not scored.any():
        return float("nan"), float("nan"), 0.0
    top = np.array([np.bincount(k[a]).max() if a.any() else 0 for k, a in zip(keys, apart,
                                                                             strict=True)])
    frac = top[scored] / counted[scored]
    return float(np.mean(frac >= agreement - 1e-9)), float(frac.mean()), float(scored.mean())


def motion_energy(clips: np.ndarray, *, centered: bool = False) -> float:
    """mean((x[:, t+1] - x[:, t])^2) over clips, frames and pixels, values in [0, 1]."""
    x = as_unit_clips(clips, centered=centered).astype(np.float64)
    if x.shape[1] < 2:
        raise ValueError(f"motion needs clips of >= 2 frames, got shape {x.shape}")
    return float(np.mean(np.diff(x, axis=1) ** 2))


def moving_digits_reference(real_clips: np.ndarray, *, num_digits: int, centered: bool = False,
                            weights: str | Path | None = None) -> dict[str, np.ndarray]:
    """What `moving_digits_metrics` needs of the real clips (N, T, H, W, 1), computed once:
    {'features' (N*T*K, 128), 'classes' (N, T, K), 'apart' (N, T), 'motion_energy' ()}."""
    patches, apart = digit_patches(real_clips, num_digits, centered=centered)
    out = digits_feature_fn(weights)(patches.reshape(-1, PATCH, PATCH, 1))
    classes = np.argmax(out["logits"], -1).reshape(patches.shape[:3])
    return {"features": out["features"], "classes": classes, "apart": apart,
            "motion_energy": np.asarray(motion_energy(real_clips, centered=centered))}


def moving_digits_metrics(
    clips: np.ndarray,
    real: np.ndarray | Mapping[str, np.ndarray],
    *,
    num_digits: int,
    centered: bool = False,
    agreement: float = 1.0,
    weights: str | Path | None = None,
) -> dict[str, float]:
    """The moving-digits numbers (module docstring) of clips (N, T, H, W, 1) against real clips
    in the same value range, or against their `moving_digits_reference` (same num_digits and
    weights); `weights`: the digits classifier (default: the shipped one). Keys: digits_fd,
    identity, frame_agreement, identity_scored, motion_energy, motion_ratio, and identity_data,
    frame_agreement_data, identity_scored_data, motion_energy_data (the real clips')."""
    ref = real if isinstance(real, Mapping) else moving_digits_reference(
        real, num_digits=num_digits, centered=centered, weights=weights)
    ours = moving_digits_reference(clips, num_digits=num_digits, centered=centered,
                                   weights=weights)
    out = {"digits_fd": frechet_distance_from_features(ours["features"], ref["features"])}
    for suffix, r in (("", ours), ("_data", ref)):
        kept, agree, scored = identity_consistency(r["classes"], r["apart"], agreement)
        out |= {f"identity{suffix}": kept, f"frame_agreement{suffix}": agree,
                f"identity_scored{suffix}": scored}
    energy, energy_data = float(ours["motion_energy"]), float(ref["motion_energy"])
    return out | {
        "motion_energy": energy,
        "motion_energy_data": energy_data,
        "motion_ratio": energy / energy_data if energy_data > 0 else float("inf"),
    }
