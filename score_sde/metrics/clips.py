"""Clip arrays as the video metrics take them: (N, T, H, W, C), brought to floats in [0, 1].

The data pipeline gives frames in [0, 1], or in [-1, 1] when `config.data.centered`; every video
metric takes the same `centered` flag and maps both to [0, 1] here (uint8 is divided by 255).
Values outside the range (a sampler's overshoot) are clipped, as image samples are before FID.
"""

from __future__ import annotations

import numpy as np

__all__ = ["as_unit_clips"]


def as_unit_clips(clips: np.ndarray, *, centered: bool = False, name: str = "clips"
                  ) -> np.ndarray:
    """float32 clips (N, T, H, W, C) in [0, 1] from [0, 1] (centered=False), [-1, 1]
    (centered=True) or uint8 0..255 (either flag); one-line error naming `name` otherwise."""
    x = np.asarray(clips)
    if x.ndim != 5:
        raise ValueError(f"{name} must have shape (N, T, H, W, C), got {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must hold at least one clip of one frame, got {x.shape}")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    x = x.astype(np.float32)
    if centered:
        x = 0.5 * (x + 1.0)
    return np.clip(x, 0.0, 1.0)
