"""Sampling masks (numpy bool, built once; True = observed): pixel masks for inpainting and
k-space masks for MRI. Random masks are deterministic by `seed` and keep an exact count."""

from __future__ import annotations

import numpy as np


def _hw(shape) -> tuple[int, int]:
    shape = tuple(int(d) for d in shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"a mask needs a spatial shape (H, W), got {shape}")
    return shape


def box_mask(shape: tuple[int, int], size: tuple[int, int] | None = None,
             top_left: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W) mask that hides a box: False inside it, True elsewhere.

    size (h, w) defaults to half of each side (rounded down: 128 x 128 on 256 x 256, the
    standard benchmark's box scaled to the image); top_left defaults to centring the box.
    """
    height, width = _hw(shape)
    bh, bw = size if size is not None else (height // 2, width // 2)
    top, left = top_left if top_left is not None else ((height - bh) // 2, (width - bw) // 2)
    if not (0 <= top and 0 <= left and bh >= 0 and bw >= 0 and top + bh <= height
            and left + bw <= width):
        raise ValueError(f"box_mask: box of size {(bh, bw)} at top_left {(top, left)} does not "
                         f"fit in {(height, width)}")
    mask = np.ones((height, width), bool)
    mask[top: top + bh, left: left + bw] = False
    return mask


def random_mask(shape: tuple[int, int], missing: float = 0.7, seed: int = 0) -> np.ndarray:
    """(H, W) mask hiding round(missing * H * W) pixels drawn uniformly without replacement."""
    height, width = _hw(shape)
    if not 0.0 <= missing <= 1.0:
        raise ValueError(f"random_mask: missing must be in [0, 1], got {missing}")
    hidden = np.random.default_rng(seed).permutation(height * width)[
        : round(missing * height * width)]
    mask = np.ones(height * width, bool)
    mask[hidden] = False
    return mask.reshape(height, width)


def _centred_to_fft(mask: np.ndarray) -> np.ndarray:
    return np.fft.ifftshift(mask)


def _check_kspace(acceleration: float, center_fraction: float) -> None:
    if acceleration < 1:
        raise ValueError(f"acceleration must be >= 1, got {acceleration}")
    if not 0.0 <= center_fraction <= 1.0:
        raise ValueError(f"center_fraction must be in [0, 1], got {center_fraction}")


def kspace_line_mask(shape: tuple[int, int], acceleration: float = 4.0,
                     center_fraction: float = 0.08, seed: int = 0) -> np.ndarray:
    """(H, W) Cartesian k-space mask of whole columns (all k_y of a chosen k_x, as fastMRI).

    round(W / acceleration) columns in all: the round(center_fraction * W) lowest frequencies
    (a centred band) and the rest drawn uniformly without replacement. Returned in the numpy
    FFT order (DC at [0, 0]); np.fft.fftshift(mask) shows it centred.
    """
    height, width = _hw(shape)
    _check_kspace(acceleration, center_fraction)
    total, low = round(width / acceleration), round(center_fraction * width)
    first = width // 2 - low // 2
    columns = np.zeros(width, bool)
    columns[first: first + low] = True
    rest = np.flatnonzero(~columns)
    extra = np.random.default_rng(seed).permutation(rest)[: max(total - low, 0)]
    columns[extra] = True
    return _centred_to_fft(np.broadcast_to(columns, (height, width)).copy())


def kspace_point_mask(shape: tuple[int, int], acceleration: float = 4.0,
                      center_fraction: float = 0.08, seed: int = 0) -> np.ndarray:
    """(H, W) k-space mask of random points: a centred box of round(center_fraction * H) x
    round(center_fraction * W) lowest frequencies plus uniform points up to
    round(H * W / acceleration) in all. Numpy FFT order (DC at [0, 0])."""
    height, width = _hw(shape)
    _check_kspace(acceleration, center_fraction)
    lh, lw = round(center_fraction * height), round(center_fraction * width)
    mask = np.zeros((height, width), bool)
    mask[height // 2 - lh // 2: height // 2 - lh // 2 + lh,
         width // 2 - lw // 2: width // 2 - lw // 2 + lw] = True
    rest = np.flatnonzero(~mask)
    extra = round(height * width / acceleration) - int(mask.sum())
    mask.reshape(-1)[np.random.default_rng(seed).permutation(rest)[: max(extra, 0)]] = True
    return _centred_to_fft(mask)
