"""A fixed random convolutional feature map: a feature space that nothing was trained in.

Two 3x3 convolutions with ReLU (the second with stride 2), weights drawn He-normal from NumPy's
legacy `RandomState(seed)` stream (frozen by NumPy's compatibility policy, so the features are
the same on every machine and version), no biases, then the spatial mean of the last layer:
one value per channel, the frequency of a random local stroke pattern. A classifier learns to
ignore exactly such local statistics (stroke texture, residual noise, blur, grey levels), so
this space sees what a classifier's features miss; being untrained, it cannot have overfitted
the images it is measured on. Images are NHWC floats in [0, 1], padded with 0 (black, the
digits' background) and mapped to [-1, 1] before the first convolution.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["DEFAULT_WIDTHS", "random_conv_features", "random_conv_weights"]

DEFAULT_WIDTHS = (64, 128)
_BATCH = 1024


@functools.lru_cache(maxsize=8)
def random_conv_weights(
    in_channels: int, widths: tuple[int, int] = DEFAULT_WIDTHS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The two kernels as im2col matrices (9 * c_in, c_out), float32, He-normal scaled."""
    rs = np.random.RandomState(seed)
    kernels = []
    for c_in, c_out in zip((in_channels, widths[0]), widths, strict=True):
        fan_in = 9 * c_in
        kernels.append((rs.standard_normal((fan_in, c_out)) * np.sqrt(2.0 / fan_in))
                       .astype(np.float32))
    return kernels[0], kernels[1]


def _conv3x3(x: np.ndarray, kernel: np.ndarray, stride: int, pad_value: float) -> np.ndarray:
    """'Same' 3x3 convolution of NHWC x by an im2col kernel (9 * C, C_out), then ReLU."""
    n, h, w, _ = x.shape
    p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=pad_value)
    cols = np.concatenate([p[:, i:i + h:stride, j:j + w:stride]
                           for i in range(3) for j in range(3)], axis=-1)
    return np.maximum(cols @ kernel, 0.0)


def random_conv_features(
    images: np.ndarray, widths: tuple[int, int] = DEFAULT_WIDTHS, seed: int = 0
) -> np.ndarray:
    """Features (N, widths[1]) float64 of images (N, H, W, C) in [0, 1] (see the module doc)."""
    x = np.asarray(images, np.float32)
    if x.ndim != 4:
        raise ValueError(f"images must have shape (N, H, W, C), got {x.shape}")
    k1, k2 = random_conv_weights(x.shape[-1], tuple(widths), seed)
    out = []
    for start in range(0, len(x), _BATCH):
        a = _conv3x3(2.0 * x[start:start + _BATCH] - 1.0, k1, 1, -1.0)
        b = _conv3x3(a, k2, 2, 0.0)
        out.append(b.mean(axis=(1, 2)))
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, widths[1]))
