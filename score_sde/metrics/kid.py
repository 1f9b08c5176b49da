"""Kernel Inception Distance (Binkowski et al., 2018): unbiased MMD^2, cubic polynomial kernel.

k(x, y) = (x . y / d + 1)^3 with d the feature dimension. The unbiased MMD^2 estimate is
averaged over random subsets of both feature sets; its standard deviation over the subsets is
reported alongside. `mmd2_jackknife` gives the same estimator with its standard error from
the data themselves (the delete-one jackknife, closed form from kernel row sums), optionally as
the mean over disjoint generated sets scored against one reference set.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["kernel_distance", "mmd2_jackknife", "mmd2_unbiased", "polynomial_kernel"]


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cubic polynomial kernel matrix (x . y / d + 1)^3 between rows of x (N, d) and y (M, d)."""
    d = x.shape[1]
    return (x @ y.T / d + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 estimate with the cubic polynomial kernel (float64)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"need at least 2 samples in each set, got {m} and {n}")
    kxx = polynomial_kernel(x, x)
    kyy = polynomial_kernel(y, y)
    kxy = polynomial_kernel(x, y)
    term_xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    term_yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(term_xx + term_yy - 2.0 * kxy.mean())


def kernel_distance(
    features1: np.ndarray,
    features2: np.ndarray,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID between two feature sets (N1, D), (N2, D): (mean, std) of MMD^2 over subsets.

    Each subset draws min(subset_size, N1, N2) rows of each set without replacement, with a
    NumPy generator seeded by `seed` (deterministic).
    """
    f1 = np.asarray(features1, dtype=np.float64)
    f2 = np.asarray(features2, dtype=np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"features must be (N, D) with equal D, got {f1.shape} and {f2.shape}")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    m = min(subset_size, f1.shape[0], f2.shape[0])
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets)
    for i in range(num_subsets):
        x = f1[rng.choice(f1.shape[0], m, replace=False)]
        y = f2[rng.choice(f2.shape[0], m, replace=False)]
        values[i] = mmd2_unbiased(x, y)
    return float(values.mean()), float(values.std())


def _off_diagonal_sums(k: np.ndarray) -> tuple[float, np.ndarray]:
    """(sum over i != j, row sums without the diagonal) of a square kernel matrix."""
    rows = k.sum(1) - np.diag(k)
    return float(rows.sum()), rows


def _leave_one_out(x: np.ndarray, y: np.ndarray, syy: float, ry: np.ndarray):
    """MMD^2 of (x, y) and its values without each x_i (m,) and without each y_j (n,)."""
    m, n = len(x), len(y)
    sxx, rx = _off_diagonal_sums(polynomial_kernel(x, x))
    kxy = polynomial_kernel(x, y)
    sxy, cx, cy = float(kxy.sum()), kxy.sum(1), kxy.sum(0)
    full = sxx / (m * (m - 1)) + syy / (n * (n - 1)) - 2.0 * sxy / (m * n)
    without_x = ((sxx - 2.0 * rx) / ((m - 1) * (m - 2)) + syy / (n * (n - 1))
                 - 2.0 * (sxy - cx) / ((m - 1) * n))
    without_y = (sxx / (m * (m - 1)) + (syy - 2.0 * ry) / ((n - 1) * (n - 2))
                 - 2.0 * (sxy - cy) / (m * (n - 1)))
    return full, without_x, without_y


def _jackknife_variance(values: np.ndarray) -> float:
    n = len(values)
    return float((n - 1) / n * np.sum((values - values.mean()) ** 2))


def mmd2_jackknife(xs: Sequence[np.ndarray], y: np.ndarray) -> tuple[float, float]:
    """(mean over the sets xs of the unbiased MMD^2 of each against y, its standard error).

    xs: one or more disjoint generated feature sets (m_c >= 3, D); y: reference features
    (n >= 3, D). The standard error is the two-sample delete-one jackknife: the jackknife
    variances over every generated row and over every reference row, added.
    """
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 2 or len(y) < 3:
        raise ValueError(f"y must be (n >= 3, D), got {y.shape}")
    xs = [np.asarray(x, dtype=np.float64) for x in xs]
    if not xs or any(x.ndim != 2 or x.shape[1] != y.shape[1] or len(x) < 3 for x in xs):
        raise ValueError(f"xs must be (m >= 3, D = {y.shape[1]}) feature sets, got "
                         f"{[x.shape for x in xs]}")
    syy, ry = _off_diagonal_sums(polynomial_kernel(y, y))
    parts = [_leave_one_out(x, y, syy, ry) for x in xs]
    fulls = np.array([p[0] for p in parts])
    mean = float(fulls.mean())
    # Leaving out a generated row changes its own set's term only; a reference row, every set's.
    without_x = np.concatenate([mean + (p[1] - p[0]) / len(xs) for p in parts])
    without_y = np.mean([p[2] for p in parts], axis=0)
    se = np.sqrt(_jackknife_variance(without_x) + _jackknife_variance(without_y))
    return mean, float(se)
