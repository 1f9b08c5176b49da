"""What happens to an image between its source and the model: geometry, augmentation, scaling.

Images are float32 (h, w, c) in [0, 1] after the source's integers are divided by levels - 1.
`Geometry` crops/resizes them to config.data.image_size as the published pipelines did,
`augment` applies the random flip and the uniform dequantisation, and the data scalers map
[0, 1] to the model's range ([-1, 1] when config.data.centered) and back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------- scalers


def get_data_scaler(config) -> Callable[[Any], Any]:
    """Data in [0, 1] -> the model's range: [-1, 1] when config.data.centered, else unchanged."""
    if config.data.centered:
        return lambda x: x * 2.0 - 1.0
    return lambda x: x


def get_data_inverse_scaler(config) -> Callable[[Any], Any]:
    """Inverse of `get_data_scaler`: model range -> [0, 1]."""
    if config.data.centered:
        return lambda x: (x + 1.0) / 2.0
    return lambda x: x


def get_data_value_range(config) -> tuple[float, float]:
    """The model's data range: the image of [0, 1] under `get_data_scaler`."""
    return (-1.0, 1.0) if config.data.centered else (0.0, 1.0)


# ----------------------------------------------------------------------------- geometry


def central_crop(x: np.ndarray, size: int) -> np.ndarray:
    """The central (size, size) window of an (h, w, c) image."""
    top, left = (x.shape[0] - size) // 2, (x.shape[1] - size) // 2
    return x[top:top + size, left:left + size]


def resize(x: np.ndarray, size: int) -> np.ndarray:
    """Resize float (h, w, c) to (size, size, c), antialiased bilinear (as tf.image.resize)."""
    if x.shape[0] == size and x.shape[1] == size:
        return x
    from PIL import Image

    chans = [np.asarray(Image.fromarray(x[..., c].astype(np.float32), mode="F")
                        .resize((size, size), Image.BILINEAR)) for c in range(x.shape[-1])]
    return np.stack(chans, axis=-1)


def resize_small(x: np.ndarray, size: int) -> np.ndarray:
    """Resize so that the shorter side is `size`, keeping the aspect ratio."""
    from PIL import Image

    h, w = x.shape[:2]
    if min(h, w) == size:  # what Pillow returns for a resize to the same size: a copy
        return x
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    chans = [np.asarray(Image.fromarray(x[..., c].astype(np.float32), mode="F")
                        .resize((nw, nh), Image.BILINEAR)) for c in range(x.shape[-1])]
    return np.stack(chans, axis=-1)


@dataclasses.dataclass(frozen=True)
class Geometry:
    """The per-dataset crop/resize of a float (h, w, c) image to (size, size, c), as published
    (a clip (T, h, w, c) frame by frame).

    A dataclass rather than a closure so that a pipeline pickles into its worker processes.
    """

    kind: str  # 'celeba' (central crop 140, resize), 'crop' (resize shorter side, crop), 'resize'
    size: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.ndim == 4:  # a clip (T, h, w, c): frame by frame
            return np.stack([self(frame) for frame in x])
        if self.kind == "celeba":
            return resize(central_crop(x, 140), self.size)
        if self.kind == "crop":
            return central_crop(resize_small(x, self.size), self.size)
        return resize(x, self.size)


def get_geometry(config) -> Callable[[np.ndarray], np.ndarray]:
    """The per-dataset crop/resize of config.data.dataset to config.data.image_size."""
    size, name = int(config.data.image_size), str(config.data.dataset).upper()
    if name == "CELEBA":
        return Geometry("celeba", size)
    if name in ("LSUN", "FFHQ", "CELEBAHQ", "IMAGE_FOLDER"):
        return Geometry("crop", size)
    return Geometry("resize", size)


# ----------------------------------------------------------------------------- augmentation


def augment(x: np.ndarray, levels: int, rng: np.random.Generator, *, random_flip: bool,
            dequantize: bool) -> np.ndarray:
    """A float (h, w, c) image (or (T, h, w, c) clip, every frame alike) in [0, 1] of `levels`
    grey levels, flipped left-right with probability 1/2 (random_flip) and dequantised to
    (x * (levels - 1) + u) / levels with u ~ U[0, 1) per pixel (dequantize), both drawn from
    `rng` in that order."""
    if random_flip and rng.random() < 0.5:
        x = x[..., ::-1, :]
    if dequantize:
        x = (x * (levels - 1) + rng.random(x.shape, dtype=np.float32)) / levels
    return x
