"""Sample-quality metrics: Frechet distance (FID, digits FD), KID, Inception Score, precision
and recall; for digits, all of them beside sample-size-matched floors
(`score_sde.metrics.digits_quality.digits_quality`); for clips FVD (`fvd`, on the I3D network of
`i3d`), the moving-digits metric (`moving_digits`) and PSNR / SSIM of predicted frames
(`frame_quality`).

Feature networks: the FID Inception-v3 (`inception`) and the Kinetics-400 I3D (`i3d`), weights
supplied by the user, never downloaded; a small digits classifier shipped with the package
(`digits_classifier`) and a fixed random convolutional feature map (`random_features`, nothing
trained). Torch is imported only to read PyTorch weight files.
"""

from score_sde.metrics.digits_classifier import digits_fd, digits_split
from score_sde.metrics.frame_quality import prediction_scores, psnr, ssim
from score_sde.metrics.frechet import (
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
    frechet_distance_from_stats,
)
from score_sde.metrics.fvd import frechet_video_distance, fvd_feature_fn, fvd_features
from score_sde.metrics.inception_score import inception_score
from score_sde.metrics.kid import kernel_distance
from score_sde.metrics.moving_digits import moving_digits_metrics, moving_digits_reference
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
    "frechet_video_distance",
    "fvd_feature_fn",
    "fvd_features",
    "get_feature_fn",
    "inception_score",
    "kernel_distance",
    "load_statistics",
    "moving_digits_metrics",
    "moving_digits_reference",
    "prediction_scores",
    "psnr",
    "save_statistics",
    "ssim",
]
