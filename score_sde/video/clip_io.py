"""Clips on disk: animated GIFs (Pillow), PNG strips and .npz.

Clips are (N, T, H, W, C) floats in [0, 1] or uint8. A strip is one clip's frames side by
side; a sheet is one strip per clip; a tiled GIF shows N clips in a grid, playing together.
Tiny frames are scaled up (nearest neighbour) to about `size` pixels so they can be seen.
"""

from __future__ import annotations

import io

import numpy as np
from etils.epath import Path

from score_sde import storage
from score_sde.logging_utils import image_grid, to_uint8


def as_uint8(clips: np.ndarray) -> np.ndarray:
    clips = np.asarray(clips)
    return clips if clips.dtype == np.uint8 else to_uint8(clips)


def _pil(image: np.ndarray, size: int):
    from PIL import Image

    img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    scale = max(1, size // max(image.shape[:2]))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img


def gif_bytes(clips: np.ndarray, size: int = 256, frame_ms: int = 150,
              columns: int | None = None) -> bytes:
    """An endlessly looping GIF of clips (N, T, H, W, C) tiled in a grid (one clip: (T, H, W,
    C) also works), frame t showing every clip's frame t."""
    clips = as_uint8(clips)
    clips = clips[None] if clips.ndim == 4 else clips
    tiles = [image_grid(clips[:, t], nrow=columns) for t in range(clips.shape[1])]
    frames = [_pil(tile, size) for tile in tiles]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:],
                   duration=frame_ms, loop=0)
    return buf.getvalue()


def sheet_png_bytes(clips: np.ndarray, size: int = 512) -> bytes:
    """A PNG with one row per clip, its frames left to right."""
    img = _pil(image_grid(as_uint8(clips)), size)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_clips(out: str | Path, name: str, clips: np.ndarray, **extra: np.ndarray) -> dict:
    """out/name.npz ('clips' uint8 and `extra` arrays), out/name.png (a sheet of strips) and
    out/name.gif (the clips tiled and playing); returns {kind: path}."""
    out = storage.path(out)
    clips = as_uint8(clips)
    paths = {"npz": out / f"{name}.npz", "png": out / f"{name}.png", "gif": out / f"{name}.gif"}
    storage.save_npz(paths["npz"], clips=clips, **extra)
    storage.write_bytes(paths["png"], sheet_png_bytes(clips))
    storage.write_bytes(paths["gif"], gif_bytes(clips))
    return paths
