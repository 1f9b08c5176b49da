"""PSNR and SSIM of predicted frames against the true continuation, per frame, and their mean
and best of k samples.

PSNR = 10 log10(data_range^2 / MSE) per frame (MSE over the frame's pixels and channels),
capped at `max_db` (default 100 dB) so that a frame predicted exactly gives 100 dB rather than
infinity and means over frames stay finite.

SSIM (Wang et al. 2004) per frame: the mean over the frame's valid pixels (those whose window
lies inside the frame: an (H - 10) x (W - 10) region) and its channels of
((2 mu_x mu_y + C1)(2 cov_xy + C2)) / ((mu_x^2 + mu_y^2 + C1)(var_x + var_y + C2)), with
Gaussian-weighted local means, variances and covariance (11x11 window, sigma 1.5, weights
normalised to sum 1, population moments), C1 = (0.01 L)^2, C2 = (0.03 L)^2, L = data_range.
This is `skimage.metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=L)` (which averages the same valid region). Frames
must be at least as large as the window.

Small images (`window="auto"`, or `ssim_window(shape)`): frames of at least 11 px keep the 11x11
window; frames of 7 to 10 px (8x8 digits) get a 7x7 window with sigma 1.5 * 7 / 11 = 0.955
(the standard window shrunk in proportion; on 8x8 it leaves 2x2 window positions), which is
`structural_similarity(..., win_size=7, gaussian_weights=True, sigma=1.5 * 7 / 11, ...)`.
Smaller frames are refused. Scores with different windows are not comparable.
"""

from __future__ import annotations

import numpy as np

from score_sde.metrics.clips import as_unit_clips

__all__ = ["SMALL_SSIM_WINDOW", "SSIM_WINDOW", "gaussian_window", "prediction_scores", "psnr",
           "ssim", "ssim_window"]

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SMALL_SSIM_WINDOW = (7, SSIM_SIGMA * 7 / SSIM_WINDOW)  # (size, sigma) for frames under 11 px
K1, K2 = 0.01, 0.03


def psnr(pred: np.ndarray, target: np.ndarray, *, data_range: float = 1.0,
         max_db: float = 100.0) -> np.ndarray:
    """PSNR in dB of images (..., H, W, C) against targets of the same shape: shape (...)."""
    pred, target = _pair(pred, target)
    mse = np.mean((pred - target) ** 2, axis=(-3, -2, -1))
    with np.errstate(divide="ignore"):
        db = 10.0 * np.log10(data_range**2 / mse)
    return np.minimum(db, max_db)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The 1-D Gaussian weights (size,) of SSIM's separable window, summing to 1."""
    x = np.arange(size) - (size - 1) / 2
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _filter_valid(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable 'valid' weighted window sums of x (..., H, W, C) along H and W."""
    windows = np.lib.stride_tricks.sliding_window_view  # the window axis goes last
    x = np.einsum("...hwck,k->...hwc", windows(x, len(w), axis=-3), w)
    return np.einsum("...hwck,k->...hwc", windows(x, len(w), axis=-2), w)


def ssim_window(shape: tuple[int, ...]) -> tuple[int, float]:
    """(size, sigma) of the Gaussian window for frames of shape (..., H, W, C): 11x11 with
    sigma 1.5 where it fits, else SMALL_SSIM_WINDOW (module docstring)."""
    side = min(shape[-3:-1])
    if side >= SSIM_WINDOW:
        return SSIM_WINDOW, SSIM_SIGMA
    if side >= SMALL_SSIM_WINDOW[0]:
        return SMALL_SSIM_WINDOW
    raise ValueError(f"SSIM needs frames of at least {SMALL_SSIM_WINDOW[0]}x"
                     f"{SMALL_SSIM_WINDOW[0]} pixels, got shape {tuple(shape)}")


def ssim(pred: np.ndarray, target: np.ndarray, *, data_range: float = 1.0,
         window: tuple[int, float] | str = (SSIM_WINDOW, SSIM_SIGMA)) -> np.ndarray:
    """SSIM of images (..., H, W, C) against targets of the same shape: shape (...), the mean
    over valid pixels and channels (module docstring). window: (size, sigma) of the Gaussian
    window (odd size; frames at least size x size), default 11x11 with sigma 1.5, or "auto"
    for `ssim_window`'s choice by the frame size."""
    pred, target = _pair(pred, target)
    size, sigma = ssim_window(pred.shape) if window == "auto" else window
    if int(size) != size or size < 1 or size % 2 == 0 or not sigma > 0:
        raise ValueError(f"SSIM's window must be (odd size >= 1, sigma > 0), got {window!r}")
    if min(pred.shape[-3:-1]) < size:
        raise ValueError(f"SSIM with a {size}x{size} window needs frames of at least "
                         f"{size}x{size} pixels, got shape {pred.shape}")
    w = gaussian_window(int(size), float(sigma))
    mx, my = _filter_valid(pred, w), _filter_valid(target, w)
    vx = _filter_valid(pred * pred, w) - mx * mx
    vy = _filter_valid(target * target, w) - my * my
    cxy = _filter_valid(pred * target, w) - mx * my
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(axis=(-3, -2, -1))


def _pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, np.float64)
    target = np.asarray(target, np.float64)
    if pred.shape != target.shape or pred.ndim < 3:
        raise ValueError(f"pred and target must be images (..., H, W, C) of one shape, got "
                         f"{pred.shape} and {target.shape}")
    return pred, target


def prediction_scores(samples: np.ndarray, target: np.ndarray, *, centered: bool = False,
                      max_db: float = 100.0) -> dict[str, np.ndarray | float]:
    """PSNR and SSIM of k predicted continuations per clip against the true one.

    samples (N, K, T, H, W, C) and target (N, T, H, W, C), both in [0, 1] (or [-1, 1] with
    centered=True; clipped to the range first), compared frame by frame with data_range 1.
    Each sample's score is its mean over the T frames. Returns 'psnr_mean' / 'ssim_mean' (over
    clips and samples), 'psnr_best' / 'ssim_best' (over clips, of each clip's best sample, the
    best chosen per metric), and 'psnr_per_frame' / 'ssim_per_frame' (T,) (over clips and
    samples: quality against time into the future).
    """
    samples = np.asarray(samples)
    target = np.asarray(target)
    if samples.ndim != 6 or target.ndim != 5 or samples.shape[:1] + samples.shape[2:] != \
            target.shape:
        raise ValueError(f"samples must be (N, K, T, H, W, C) and target (N, T, H, W, C) with "
                         f"the same N, T, H, W, C; got {samples.shape} and {target.shape}")
    n, k = samples.shape[:2]
    x = as_unit_clips(samples.reshape(n * k, *samples.shape[2:]), centered=centered,
                      name="samples").reshape(samples.shape)
    y = as_unit_clips(target, centered=centered, name="target")[:, None]
    y = np.broadcast_to(y, x.shape)
    out: dict[str, np.ndarray | float] = {}
    for name, per_frame in (("psnr", psnr(x, y, max_db=max_db)), ("ssim", ssim(x, y))):
        per_sample = per_frame.mean(axis=-1)  # (N, K)
        out[f"{name}_mean"] = float(per_sample.mean())
        out[f"{name}_best"] = float(per_sample.max(axis=1).mean())
        out[f"{name}_per_frame"] = per_frame.mean(axis=(0, 1))
    return out
