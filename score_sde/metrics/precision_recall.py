"""Improved precision and recall (Kynkaanniemi et al., NeurIPS 2019) on k-NN manifolds.

A feature set's manifold is the union of the balls centred on its points, each with the radius
to that point's k-th nearest neighbour in the same set (the point itself not counted). Precision
is the fraction of generated features inside the real manifold (fidelity: are the samples
realistic?); recall the fraction of real features inside the generated manifold (coverage: is
every kind of real image produced?). A ball's boundary counts as inside. Distances are
Euclidean, in float64.
"""

from __future__ import annotations

import numpy as np

__all__ = ["knn_radii", "pairwise_distances", "precision_recall"]

_BLOCK = 2048


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances (N, M) between the rows of a (N, D) and b (M, D), in float64."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.maximum(sq, 0.0))


def knn_radii(features: np.ndarray, k: int) -> np.ndarray:
    """Distance (N,) from each row to its k-th nearest other row of the same set."""
    f = np.asarray(features, np.float64)
    if not 1 <= k < len(f):
        raise ValueError(f"k must be in [1, N - 1] = [1, {len(f) - 1}], got k={k}")
    radii = np.empty(len(f))
    for start in range(0, len(f), _BLOCK):
        d = pairwise_distances(f[start:start + _BLOCK], f)
        d[np.arange(len(d)), start + np.arange(len(d))] = -np.inf  # the point itself
        radii[start:start + _BLOCK] = np.partition(d, k, axis=1)[:, k]
    return radii


def _fraction_inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> float:
    """Fraction of `points` within distance radii[j] of some centres[j]."""
    inside = np.zeros(len(points), bool)
    for start in range(0, len(points), _BLOCK):
        d = pairwise_distances(points[start:start + _BLOCK], centres)
        inside[start:start + _BLOCK] = (d <= radii[None, :]).any(axis=1)
    return float(inside.mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """(precision, recall) of generated features fake (M, D) against real features (N, D)."""
    real = np.asarray(real, np.float64)
    fake = np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, D) with equal D, got {real.shape} and "
                         f"{fake.shape}")
    precision = _fraction_inside(fake, real, knn_radii(real, k))
    recall = _fraction_inside(real, fake, knn_radii(fake, k))
    return precision, recall
