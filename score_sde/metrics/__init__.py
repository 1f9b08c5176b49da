"""Sample-quality metrics: Frechet distance (FID, digits FD), KID, Inception Score, precision
and recall; for digits, all of them beside sample-size-matched floors
(`score_sde.metrics.digits_quality.digits_quality`).

Feature networks: the FID Inception-v3 (`inception`, weights supplied by the user, never
downloaded), a small digits classifier shipped with the package (`digits_classifier`) and a
fixed random convolutional feature map (`random_features`, nothing trained).
The Inception network (and torch, for reading .pth weights) is imported only when needed.
"""

from score_sde.metrics.digits_classifier import digits_fd, digits_split
from score_sde.metrics.frechet import (
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
    frechet_distance_from_stats,
)
from score_sde.metrics.inception_score import inception_score
from score_sde.metrics.kid import kernel_distance
from score_sde.metrics.stats import (
    compute_statistics,
    dataset_statistics,
    evaluate_samples,
    get_feature_fn,
    load_statistics,
    save_statistics,
)

__all__ = [
    "compute_statistics",
    "dataset_statistics",
    "digits_fd",
    "digits_split",
    "evaluate_samples",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_features",
    "frechet_distance_from_stats",
    "get_feature_fn",
    "inception_score",
    "kernel_distance",
    "load_statistics",
    "save_statistics",
]
