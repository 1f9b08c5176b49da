"""Feature statistics of datasets and samples, and the sample-quality numbers built on them.

A *feature function* maps a batch of NHWC float images in [0, 1] to features (N, D), or to a
dict {'features': (N, D), 'logits': (N, C)}. `get_feature_fn('inception' | 'digits')` gives
the two built in. Statistics are dicts {'mu': (D,), 'sigma': (D, D), 'features': (N, D)} and
are stored as `.npz` with those keys. `load_statistics` also reads the statistics files published
with score_sde (Inception features under 'pool_3'), and every path may be local or gs://.

    stats = dataset_statistics(batches, kind="inception", inception_weights="inception.msgpack")
    save_statistics("cifar10_train_stats.npz", stats)
    evaluate_samples(samples, "cifar10_train_stats.npz", "inception", inception_weights=...)
    # -> {'fid', 'kid', 'kid_std', 'is', 'is_std', 'num_samples'}
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from etils import epath

from score_sde import logging_utils as log
from score_sde.metrics.frechet import feature_statistics, frechet_distance_from_stats
from score_sde.metrics.inception_score import inception_score
from score_sde.metrics.kid import kernel_distance

__all__ = [
    "FEATURE_KINDS",
    "compute_statistics",
    "dataset_statistics",
    "evaluate_samples",
    "get_feature_fn",
    "load_statistics",
    "save_statistics",
]

FeatureFn = Callable[[np.ndarray], "np.ndarray | Mapping[str, np.ndarray]"]
FEATURE_KINDS = ("inception", "digits")
_RANGE_TOLERANCE = 1e-3


def get_feature_fn(
    kind: str,
    *,
    inception_weights: str | Path | Mapping | None = None,
    digits_weights: str | Path | None = None,
    batch_size: int = 64,
    mesh: Any = None,
) -> FeatureFn:
    """Feature function of a kind: 'inception' (2048-d pool3 + 1008 logits; needs
    `inception_weights`, a weights file or loaded variables) or 'digits' (128-d + 10 logits)."""
    if kind == "inception":
        from score_sde.metrics.inception import cached_inception_feature_fn, inception_feature_fn

        if inception_weights is None:
            raise ValueError(
                "feature kind 'inception' needs inception_weights: a path to pytorch-fid's "
                "pt_inception-2015-12-05-6726825d.pth or a .msgpack converted from it "
                "(nothing is downloaded)"
            )
        if isinstance(inception_weights, str | Path) and mesh is None:
            return cached_inception_feature_fn(str(inception_weights), batch_size)
        return inception_feature_fn(inception_weights, batch_size=batch_size, mesh=mesh)
    if kind == "digits":
        from score_sde.metrics.digits_classifier import digits_feature_fn

        return digits_feature_fn(digits_weights)
    raise ValueError(f"unknown feature kind {kind!r}; allowed: {', '.join(FEATURE_KINDS)}")


def _as_images(batch: Any, clip: bool) -> np.ndarray:
    """A batch (array, or mapping with an 'image' entry) as float32 NHWC in [0, 1]."""
    if isinstance(batch, Mapping):
        if "image" not in batch:
            raise KeyError(f"batch dict needs an 'image' entry, has {sorted(batch)}")
        batch = batch["image"]
    x = np.asarray(batch)
    if x.ndim != 4:
        raise ValueError(f"expected NHWC image batches (N, H, W, C), got shape {x.shape}")
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    if not clip and x.size:
        lo, hi = float(x.min()), float(x.max())
        if lo < -_RANGE_TOLERANCE or hi > 1.0 + _RANGE_TOLERANCE:
            raise ValueError(
                f"images must lie in [0, 1], got values in [{lo:.3f}, {hi:.3f}]; undo the data "
                "scaler first (e.g. (x + 1) / 2 for data centred to [-1, 1])"
            )
    return np.clip(x, 0.0, 1.0)


def _collect(
    feature_fn: FeatureFn, batches: Iterable, max_examples: int | None, clip: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(batches, np.ndarray | Mapping):
        batches = [batches]
    feats, logits, count = [], [], 0
    for batch in batches:
        x = _as_images(batch, clip)
        if max_examples is not None:
            x = x[: max_examples - count]
        if x.shape[0] == 0:
            break
        out = feature_fn(x)
        if isinstance(out, Mapping):
            feats.append(np.asarray(out["features"], np.float32))
            if "logits" in out:
                logits.append(np.asarray(out["logits"], np.float32))
        else:
            feats.append(np.asarray(out, np.float32))
        count += x.shape[0]
        if max_examples is not None and count >= max_examples:
            break
    if count < 2:
        raise ValueError(f"need at least 2 images to compute statistics, got {count}")
    return np.concatenate(feats), (np.concatenate(logits) if logits else None)


def compute_statistics(
    feature_fn: FeatureFn, batches: Iterable, *, max_examples: int | None = None
) -> dict[str, np.ndarray]:
    """Features of all images in `batches` (NHWC float in [0, 1]) and their Gaussian fit:
    {'mu': (D,) float64, 'sigma': (D, D) float64, 'features': (N, D) float32}."""
    feats, _ = _collect(feature_fn, batches, max_examples, clip=False)
    mu, sigma = feature_statistics(feats)
    return {"mu": mu, "sigma": sigma, "features": feats}


def save_statistics(path: str | Path, stats: Mapping[str, np.ndarray]) -> None:
    """Save statistics as `.npz` with keys mu, sigma and (when present) features."""
    missing = {"mu", "sigma"} - set(stats)
    if missing:
        raise KeyError(f"statistics lack {sorted(missing)}")
    arrays = {k: np.asarray(stats[k]) for k in ("mu", "sigma", "features") if k in stats}
    with epath.Path(path).open("wb") as f:  # an open file keeps numpy from appending '.npz'
        np.savez(f, **arrays)


# The statistics files published with score_sde hold TF-GAN Inception pool_3 features only.
PUBLISHED_FEATURES_KEY = "pool_3"
PUBLISHED_LAYOUT_NOTE = (
    "features of TF-GAN's Inception, not of the pytorch-fid network that scores samples here, "
    "so FID/KID against them are not directly comparable (neither with FIDs against statistics "
    "from --mode fid_stats nor with published numbers)")


def load_statistics(path: str | Path) -> dict[str, np.ndarray]:
    """Reference statistics from an `.npz` (local or gs://), in either of two layouts:

    - this framework's (`save_statistics`, `--mode fid_stats`): mu, sigma and maybe features;
    - score_sde's published files: Inception features (N, D) under 'pool_3'; mu and sigma are
      computed from them (sigma unbiased, like TF-GAN's) and the features kept for KID.

    Prints one line naming the layout read.
    """
    path = epath.Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"statistics file {path} not found; compute it with dataset_statistics() "
            "(the driver's --mode fid_stats)"
        )
    with path.open("rb") as f, np.load(f) as data:
        arrays = {k: data[k] for k in data.files}
    if {"mu", "sigma"} <= set(arrays):
        log.say(f"Reference statistics {path}: this framework's layout (mu, sigma"
                f"{', features' if 'features' in arrays else ''})")
        return arrays
    if PUBLISHED_FEATURES_KEY in arrays:
        feats = arrays[PUBLISHED_FEATURES_KEY]
        feats = feats.reshape(len(feats), -1)  # (N, D) as stored
        mu, sigma = feature_statistics(feats)
        log.say(f"Reference statistics {path}: published score_sde layout ({feats.shape[0]} "
                f"pool_3 features of dimension {feats.shape[1]}; mean and covariance computed "
                f"from them): {PUBLISHED_LAYOUT_NOTE}")
        return {"mu": mu, "sigma": sigma, "features": feats}
    raise ValueError(
        f"{path} is not a statistics file: it has keys {sorted(arrays)}, expected 'mu' and "
        f"'sigma' (this framework's --mode fid_stats) or '{PUBLISHED_FEATURES_KEY}' (score_sde's "
        "published statistics)")


def dataset_statistics(
    images_iterable: Iterable,
    kind: str = "inception",
    *,
    inception_weights: str | Path | Mapping | None = None,
    digits_weights: str | Path | None = None,
    batch_size: int = 64,
    mesh: Any = None,
    max_examples: int | None = None,
    out_path: str | Path | None = None,
) -> dict[str, np.ndarray]:
    """Reference statistics of a dataset for FID/KID ('inception') or digits FD ('digits').

    `images_iterable` yields NHWC batches in [0, 1] (arrays, or dicts with an 'image' entry;
    uint8 is divided by 255); values outside [0, 1] raise. Writes `out_path` (.npz) if given.
    """
    fn = get_feature_fn(
        kind, inception_weights=inception_weights, digits_weights=digits_weights,
        batch_size=batch_size, mesh=mesh,
    )
    stats = compute_statistics(fn, images_iterable, max_examples=max_examples)
    if out_path is not None:
        save_statistics(out_path, stats)
    return stats


def evaluate_samples(
    samples: np.ndarray | Iterable,
    ref_stats: Mapping[str, np.ndarray] | str | Path | None,
    feature_kind: str = "inception",
    *,
    inception_weights: str | Path | Mapping | None = None,
    digits_weights: str | Path | None = None,
    batch_size: int = 64,
    mesh: Any = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    is_splits: int = 10,
) -> dict[str, float]:
    """Sample quality against reference statistics (a dict or a `.npz` path).

    Samples (N, H, W, C) or an iterable of batches, floats nominally in [0, 1] (clipped).
    Returns {'fid' (inception) or 'digits_fd' (digits), 'is', 'is_std', 'num_samples'} plus
    'kid', 'kid_std' when the reference holds features. For 'digits', `ref_stats=None` means
    the digits train split. IS uses the kind's classifier (1008 Inception classes, or 10 digits).
    """
    if feature_kind not in FEATURE_KINDS:
        raise ValueError(
            f"unknown feature_kind {feature_kind!r}; allowed: {', '.join(FEATURE_KINDS)}"
        )
    if ref_stats is None:
        if feature_kind != "digits":
            raise ValueError("ref_stats is required for feature_kind='inception'")
        from score_sde.metrics.digits_classifier import digits_reference_statistics

        ref_stats = digits_reference_statistics("train", digits_weights)
    elif isinstance(ref_stats, str | Path):
        ref_stats = load_statistics(ref_stats)
    fn = get_feature_fn(
        feature_kind, inception_weights=inception_weights, digits_weights=digits_weights,
        batch_size=batch_size, mesh=mesh,
    )
    feats, logits = _collect(fn, samples, None, clip=True)
    mu, sigma = feature_statistics(feats)
    if mu.shape != np.shape(ref_stats["mu"]):
        raise ValueError(
            f"reference statistics have dimension {np.shape(ref_stats['mu'])}, but "
            f"{feature_kind!r} features have {mu.shape}: were they computed with another kind?"
        )
    name = "fid" if feature_kind == "inception" else "digits_fd"
    result = {name: frechet_distance_from_stats({"mu": mu, "sigma": sigma}, ref_stats)}
    if "features" in ref_stats:
        result["kid"], result["kid_std"] = kernel_distance(
            feats, ref_stats["features"], num_subsets=kid_subsets, subset_size=kid_subset_size
        )
    if logits is not None:
        result["is"], result["is_std"] = inception_score(
            logits=logits, num_splits=min(is_splits, len(logits))
        )
    result["num_samples"] = len(feats)
    return result
