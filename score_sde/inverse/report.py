"""How well a restoration did: its metrics against the truth, beside simple baselines'.

Baselines (`baselines(operator, y)`, image-space arrays in the data's scaling), the answers a
method must beat to be worth its network passes:

  pinv         A^+ y, the minimum-norm least-squares image (operators with a pseudo-inverse,
               the identity excepted)
  observation  y itself, no restoration (operators whose observation is an image of the
               input's shape: denoising, blur)
  bicubic      y upsampled bicubically (observations that are smaller images with the same
               channels: super-resolution); jax.image.resize's 'bicubic' (Keys' cubic,
               a = -0.5, half-pixel centres)

Metrics (`restore_metrics`, NumPy on images in [0, 1], each set against the same truths):
  psnr, ssim   per image (metrics.frame_quality; SSIM's window "auto": 11x11, or 7x7 with
               sigma 1.5 * 7 / 11 on images under 11 px such as the 8x8 digits), and the means
  lpips        per image and mean, where an LPIPS distance is given (score_sde.lpips, the
               user's weights file; images repeated to 3 channels and resized to 224)
  digits_fd    the set's digits FD (metrics.digits_quality: classifier features, against the
               360-image test split) with the matched floor of as many real train digits; the
               truths' own FD (a perfect restoration; below the floor when the truths are test
               images, as they are then part of the reference). Digits data, >= 4 images.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from score_sde.inverse.operators import IdentityOperator
from score_sde.metrics.digits_quality import MIN_SAMPLES, digits_quality
from score_sde.metrics.frame_quality import psnr, ssim

__all__ = ["BASELINES", "baselines", "format_report", "lpips_distance", "restore_metrics"]

BASELINES = {"pinv": "A^+ y", "observation": "y (as is)", "bicubic": "bicubic(y)"}
PER_IMAGE = ("psnr", "ssim", "lpips")


def _is_smaller_image(operator) -> bool:
    """The observation is an image with the input's channels and smaller sides (SR)."""
    x, y = tuple(operator.input_shape), tuple(operator.observation_shape)
    return (len(x) == len(y) == 3 and x[2] == y[2] and y[:2] != x[:2]
            and all(o <= i for o, i in zip(y[:2], x[:2], strict=True)))


def baselines(operator, y) -> dict[str, jax.Array]:
    """{name: (B, *input_shape)} of the BASELINES that apply to the operator (module doc)."""
    y = operator.check_observation(jnp.asarray(y))
    out = {}
    if operator.has_pinv and not isinstance(operator, IdentityOperator):
        out["pinv"] = operator.pinv(y)
    if tuple(operator.observation_shape) == tuple(operator.input_shape):
        out["observation"] = y
    if _is_smaller_image(operator):
        out["bicubic"] = jax.image.resize(y, (len(y), *operator.input_shape), "bicubic")
    return out


def lpips_distance(weights: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """distance(a, b) -> (N,) LPIPS of images in [0, 1] from a weights file (score_sde.lpips),
    jitted, run in chunks of 8 (each image becomes 224 x 224 x 3)."""
    from score_sde import lpips  # VGG16 and its weights: only when asked for

    fn = jax.jit(lpips.get_lpips_fn(lpips.load_weights(weights, "--lpips_weights"),
                                    centered=False))

    def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(fn(jnp.asarray(a[i:i + 8], jnp.float32),
                                             jnp.asarray(b[i:i + 8], jnp.float32)))
                               for i in range(0, len(a), 8)]).astype(np.float64)

    return distance


def _as_unit(images, truth: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(images, np.float64)
    if x.shape != truth.shape:
        raise ValueError(f"restore_metrics: {name} has shape {x.shape}, the truth {truth.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"restore_metrics: {name} has non-finite values")
    return np.clip(x, 0.0, 1.0)


def _digits_fd(images: Mapping[str, np.ndarray], truth: np.ndarray, out: dict) -> None:
    """Add digits_fd (+ _floor, _floor_std) to every set and digits_fd_truth to each."""
    if len(truth) < MIN_SAMPLES:
        return
    clean = digits_quality(truth).scores["fd_classifier"].value
    for name, x in images.items():
        s = digits_quality(x).scores["fd_classifier"]
        out[name].update(digits_fd=s.value, digits_fd_floor=s.floor,
                         digits_fd_floor_std=s.floor_std, digits_fd_truth=clean)


def restore_metrics(images: Mapping[str, np.ndarray], truth: np.ndarray, *,
                    lpips_fn: Callable | None = None, digits: bool = False) -> dict[str, dict]:
    """{name: {metric: mean, 'per_image': {metric: list}}} for every set of images (N, H, W, C)
    (e.g. 'result' and the baselines) against the truth (N, H, W, C), all in [0, 1] (clipped).
    lpips_fn: lpips_distance's distance, or None; digits: add the digits FD (module doc)."""
    truth = np.asarray(truth, np.float64)
    if truth.ndim != 4 or not len(truth):
        raise ValueError(f"restore_metrics: truth must be images (N, H, W, C), got {truth.shape}")
    sets = {name: _as_unit(x, truth, name) for name, x in images.items()}
    out: dict[str, dict] = {}
    for name, x in sets.items():
        per = {"psnr": psnr(x, truth), "ssim": ssim(x, truth, window="auto")}
        if lpips_fn is not None:
            per["lpips"] = np.asarray(lpips_fn(x, truth), np.float64)
        out[name] = {k: float(np.mean(v)) for k, v in per.items()}
        out[name]["per_image"] = {k: [round(float(v), 6) for v in vs] for k, vs in per.items()}
    if digits:
        _digits_fd(sets, truth, out)
    return out


def format_report(metrics: Mapping[str, Mapping]) -> list[str]:
    """Aligned lines: one row per set (result first), its mean PSNR (dB), SSIM, LPIPS and
    digits FD (with the floor on the result's row) where measured."""
    cols = [("psnr", "PSNR dB", "{:.2f}"), ("ssim", "SSIM", "{:.3f}"),
            ("lpips", "LPIPS", "{:.3f}"), ("digits_fd", "digits FD", "{:.1f}")]
    cols = [c for c in cols if any(c[0] in m for m in metrics.values())]
    width = max(len(_label(n)) for n in metrics)
    lines = [" " * width + "".join(f"  {head:>9}" for _, head, _ in cols)]
    for name, m in metrics.items():
        cells = "".join(f"  {fmt.format(m[key]) if key in m else '-':>9}"
                        for key, _, fmt in cols)
        lines.append(f"{_label(name):<{width}}{cells}")
    first = next(iter(metrics.values()))
    if "digits_fd" in first:
        lines.append(f"digits FD floor ({len(first['per_image']['psnr'])} real digits): "
                     f"{first['digits_fd_floor']:.1f} +- {first['digits_fd_floor_std']:.1f}; "
                     f"the truths: {first['digits_fd_truth']:.1f}")
    return lines


def _label(name: str) -> str:
    return BASELINES.get(name, name)
