"""Datasets that are folders of PNG/JPEG files, local or gs:// (FFHQ, CELEBAHQ, IMAGE_FOLDER).

Also the two helpers every file-based reader shares: `list_images` (a sorted listing that keeps
the gs:// scheme) and `decode_image` (uint8 pixels, or `CorruptImageError` naming the file).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
from etils import epath

from score_sde import storage
from score_sde.data.sources import CorruptImageError, DatasetNotFoundError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
FOLDER_DATASETS = ("FFHQ", "CELEBAHQ", "IMAGE_FOLDER")  # config.data.dataset names of folders


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """PNG/JPEG files under a folder (local or gs://), sorted by path; 8-bit, no labels.

    Layout: `root/train/**.png` and `root/test/**.png`; without those sub-folders every image
    under `root` belongs to both splits. Images are decoded with Pillow as 'L' (1 channel) or
    'RGB' (3 channels); a file that does not decode raises `CorruptImageError` (the pipeline's
    corrupt-image policy decides what follows). `readable` is the index of a file known to
    decode: the last resort of the 'skip' policy.
    """

    files: tuple[str, ...]
    num_channels: int
    readable: int = 0
    levels: int = 256
    has_labels: bool = False

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": decode_image(self.files[int(index)], self.num_channels)}


def decode_image(path: str, num_channels: int) -> np.ndarray:
    """The uint8 (h, w, num_channels) pixels of an image file; CorruptImageError if undecodable.

    A file that cannot be read at all (missing, no permission) raises the reader's own error:
    only the bytes' content is the corrupt-image policy's business.
    """
    try:
        x = storage.read_image(path, mode="L" if num_channels == 1 else "RGB")
    except storage.UnreadableFileError as e:
        raise CorruptImageError(path, e.reason) from None
    return x[..., None] if x.ndim == 2 else x


def _first_readable(files: tuple[str, ...], num_channels: int) -> int | None:
    """Index of the first file that decodes (usually 0: one decode), None if none does."""
    for i, f in enumerate(files):
        try:
            decode_image(f, num_channels)
            return i
        except CorruptImageError:
            continue
    return None


def list_images(base, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> tuple[str, ...]:
    """The image files (or others, by `suffixes`) under an epath folder (any depth), sorted,
    as path strings.

    fsspec's walk (etils' gs:// backend without TensorFlow) yields its folders without the
    'gs://' prefix, which is put back so that the files are read from the bucket.
    """
    top = os.fspath(base)
    scheme = top[:top.index("://") + 3] if "://" in top else ""
    files = []
    for folder, _, names in base.walk():
        folder = os.fspath(folder)
        if scheme and not folder.startswith(scheme):
            folder = scheme + folder.lstrip("/")
        files += [f"{folder.rstrip('/')}/{name}" for name in names
                  if name.lower().endswith(suffixes)]
    return tuple(sorted(files))


def image_folder_source(config, split: str) -> ImageFolder:
    """The images of config.data.data_dir (or the reference's tfrecords_path) for a split."""
    field = "config.data.data_dir"
    root = config.data.get("data_dir", None)
    if not root and config.data.get("tfrecords_path", None):  # the reference's field name
        root, field = config.data.tfrecords_path, "config.data.tfrecords_path"
    if not root or not epath.Path(root).is_dir():
        raise DatasetNotFoundError(
            f"config.data.dataset={config.data.dataset!r} reads images from a folder, but "
            f"{field}={root!r} is not a directory. Put PNG/JPEG files in DIR/train/ and "
            f"DIR/test/ (or directly in DIR) and pass --config.data.data_dir=DIR")
    base = epath.Path(root) / split
    base = base if base.is_dir() else epath.Path(root)
    files = list_images(base)
    if not files:
        raise DatasetNotFoundError(f"{field}={root!r}: no {'/'.join(IMAGE_SUFFIXES)} images "
                                   f"under {base}")
    channels = int(config.data.num_channels)
    readable = _first_readable(files, channels)
    if readable is None:
        raise DatasetNotFoundError(f"{field}={root!r}: none of the {len(files)} image files "
                                   f"under {base} can be decoded (e.g. {files[0]})")
    return ImageFolder(files, channels, readable)
