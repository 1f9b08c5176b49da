"""Blur kernels (numpy, built once): odd-sized, non-negative, summing to 1, centre at
(size // 2, size // 2); score_sde.inverse.operators_fft convolves with them."""

from __future__ import annotations

import numpy as np


def _check_size(size: int) -> int:
    if int(size) != size or size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be an odd integer >= 1, got {size}")
    return int(size)


def gaussian_kernel(size: int = 61, std: float = 3.0) -> np.ndarray:
    """The (size, size) isotropic Gaussian of standard deviation `std` pixels, normalised to
    sum 1 on the grid (the tails beyond the grid are dropped)."""
    size = _check_size(size)
    if std <= 0:
        raise ValueError(f"gaussian_kernel: std must be > 0, got {std}")
    d = np.arange(size) - size // 2
    g = np.exp(-0.5 * (d / std) ** 2)
    k = np.outer(g, g)
    return k / k.sum()


def _trajectory(size: int, intensity: float, rng: np.random.Generator) -> np.ndarray:
    """(T, 2) points of a camera path: unit speed, heading a Gaussian random walk."""
    ds = 0.25  # path step, in pixels
    steps = 4 * (size - 1)
    turn = rng.normal(0.0, intensity * np.pi / 8 * np.sqrt(ds), steps)
    heading = rng.uniform(0, 2 * np.pi) + np.concatenate([[0.0], np.cumsum(turn[:-1])])
    moves = ds * np.stack([np.sin(heading), np.cos(heading)], axis=1)
    path = np.concatenate([np.zeros((1, 2)), np.cumsum(moves, axis=0)])
    path -= path.mean(axis=0)
    radius = np.max(np.linalg.norm(path, axis=1))
    limit = (size - 1) / 2 - 1  # keep the bilinear footprint inside the grid
    return path * min(1.0, limit / radius) if radius > 0 else path


def motion_kernel(size: int = 61, intensity: float = 0.5, seed: int = 0) -> np.ndarray:
    """A (size, size) random-trajectory motion-blur kernel, deterministic by `seed`.

    The camera moves at constant speed along a path of length ~size - 1 pixels (4 samples per
    pixel) whose heading does a Gaussian random walk: per unit of path length it turns by
    N(0, (intensity * pi / 8)^2) radians (intensity in [0, 1]: 0 is a straight line across the
    kernel in a random direction; larger values give curved, hooked, more compact paths). The
    path is centred on its mean, shrunk (never stretched) to fit inside the grid, splatted
    bilinearly onto the grid (equal exposure per sample) and normalised to sum 1.
    """
    size = _check_size(size)
    if not 0.0 <= intensity <= 1.0:
        raise ValueError(f"motion_kernel: intensity must be in [0, 1], got {intensity}")
    if size < 3:
        return np.ones((size, size))
    path = _trajectory(size, float(intensity), np.random.default_rng(seed)) + size // 2
    k = np.zeros((size, size))
    base = np.floor(path).astype(int)
    frac = path - base
    for dr in (0, 1):
        for dc in (0, 1):
            w = (frac[:, 0] if dr else 1 - frac[:, 0]) * (frac[:, 1] if dc else 1 - frac[:, 1])
            np.add.at(k, (base[:, 0] + dr, base[:, 1] + dc), w)
    return k / k.sum()
