"""Frechet distance between Gaussians fitted to feature sets (FID, digits FD).

FD(N(mu1, S1), N(mu2, S2)) = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)).

The trace term is computed without a general (non-symmetric) matrix square root: with
A = S1^(1/2), the matrix S1 S2 is similar to the symmetric PSD matrix A S2 A, so
tr((S1 S2)^(1/2)) = sum_i sqrt(lambda_i(A S2 A)). Two symmetric eigendecompositions in float64
are stable even for rank-deficient covariances (fewer samples than feature dimensions), where
scipy.linalg.sqrtm of S1 S2 can return complex or non-finite values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

__all__ = [
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_features",
    "frechet_distance_from_stats",
    "frechet_distance_to",
    "sqrtm_psd",
    "trace_sqrt_product",
]


def _as_matrix(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains non-finite values")
    return a


def sqrtm_psd(mat: np.ndarray) -> np.ndarray:
    """Principal square root of a symmetric positive semi-definite matrix (float64).

    Negative eigenvalues caused by round-off are clipped to zero.
    """
    mat = _as_matrix("mat", mat)
    mat = 0.5 * (mat + mat.T)
    w, v = np.linalg.eigh(mat)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((sigma1 @ sigma2)^(1/2)) for symmetric PSD sigma1, sigma2, in float64."""
    s1 = _as_matrix("sigma1", sigma1)
    s2 = _as_matrix("sigma2", sigma2)
    if s1.shape != s2.shape:
        raise ValueError(f"covariance shapes differ: {s1.shape} vs {s2.shape}")
    return _trace_sqrt_with_root(sqrtm_psd(s1), s2)


def _trace_sqrt_with_root(root1: np.ndarray, s2: np.ndarray) -> float:
    """tr((sigma1 @ sigma2)^(1/2)) given root1 = sigma1^(1/2)."""
    m = root1 @ (0.5 * (s2 + s2.T)) @ root1
    w = np.linalg.eigvalsh(0.5 * (m + m.T))
    return float(np.sum(np.sqrt(np.clip(w, 0.0, None))))


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (squared units of features)."""
    mu1 = np.asarray(mu1, dtype=np.float64).reshape(-1)
    mu2 = np.asarray(mu2, dtype=np.float64).reshape(-1)
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean shapes differ: {mu1.shape} vs {mu2.shape}")
    s1 = _as_matrix("sigma1", sigma1)
    s2 = _as_matrix("sigma2", sigma2)
    if s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"sigma1 has shape {s1.shape}, expected {(mu1.size, mu1.size)}")
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2)
    # Round-off can push the (non-negative) distance slightly below zero.
    return float(max(fd, 0.0))


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must have shape (N >= 2, D), got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N1, D) and (N2, D)."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def frechet_distance_from_stats(stats1: Mapping, stats2: Mapping) -> float:
    """Frechet distance between two statistics dicts with keys 'mu' and 'sigma'."""
    for name, s in (("stats1", stats1), ("stats2", stats2)):
        missing = {"mu", "sigma"} - set(s)
        if missing:
            raise KeyError(f"{name} lacks {sorted(missing)}; it must have keys 'mu' and 'sigma'")
    return frechet_distance(stats1["mu"], stats1["sigma"], stats2["mu"], stats2["sigma"])


def frechet_distance_to(reference: Mapping) -> Callable[[np.ndarray], float]:
    """`fd(features (N, D)) -> float`: the Frechet distance of each feature set's Gaussian fit
    to one fixed reference {'mu', 'sigma'}, whose covariance root is computed once (the same
    distance as `frechet_distance`, with the reference as the first argument)."""
    mu_ref = np.asarray(reference["mu"], dtype=np.float64).reshape(-1)
    sigma_ref = _as_matrix("reference sigma", reference["sigma"])
    root = sqrtm_psd(sigma_ref)
    trace_ref = float(np.trace(sigma_ref))

    def fd(features: np.ndarray) -> float:
        mu, sigma = feature_statistics(features)
        if mu.shape != mu_ref.shape:
            raise ValueError(f"features have dimension {mu.size}, the reference {mu_ref.size}")
        diff = mu_ref - mu
        value = diff @ diff + trace_ref + np.trace(sigma) - 2.0 * _trace_sqrt_with_root(root, sigma)
        return float(max(value, 0.0))

    return fd
