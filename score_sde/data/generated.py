"""Generated samples read back as training data (config.data.synthetic / synthetic_ratio).

Reads what `--mode sample` writes (.npz shards of uint8 'samples' and optional 'labels') or a
folder of images, into memory; the pipeline mixes them into each training batch.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from score_sde import storage
from score_sde.data.image_folders import decode_image, list_images
from score_sde.data.sources import ArraySource, DatasetNotFoundError, Source


def synthetic_source(path: str, num_channels: int) -> ArraySource:
    """Generated samples to mix into training (config.data.synthetic), read into memory.

    `path` is an .npz file, or a folder holding .npz shards (as `--mode sample` writes them:
    'samples' uint8 NHWC and, for a class-conditional model, 'labels'), or else a folder of
    PNG/JPEG images, labelled by the name of their folder when every folder name is a class
    number (`png/3/000017.png`), unlabelled otherwise.
    """
    field = f"config.data.synthetic={path!r}"
    root = storage.path(path)
    if not root.exists():
        raise DatasetNotFoundError(f"{field}: no such file or folder; give an .npz file or a "
                                   "folder of .npz shards or images (e.g. what --mode sample "
                                   "wrote)")
    shards = [str(root)] if root.is_file() else list_images(root, (".npz",))
    if shards:
        return _npz_samples(shards, field)
    files = list_images(root)
    if not files:
        raise DatasetNotFoundError(f"{field}: neither .npz shards nor images under it")
    images = np.stack([decode_image(f, num_channels) for f in files])
    folders = [os.path.basename(os.path.dirname(f)) for f in files]
    labels = (np.asarray([int(d) for d in folders], np.int32)
              if all(d.isdigit() for d in folders) else None)
    return ArraySource(images=images, labels=labels, levels=256)


def _npz_samples(shards: list, field: str) -> ArraySource:
    """The concatenated 'samples' (and 'labels', if every shard has them) of .npz shards."""
    images, labels = [], []
    for shard in shards:
        arrays = storage.load_npz(shard)
        if "samples" not in arrays:
            raise ValueError(f"{field}: {shard} has no 'samples' array (it has "
                             f"{sorted(arrays)}); give shards written by --mode sample")
        images.append(arrays["samples"])
        labels.append(arrays.get("labels"))
    x = np.concatenate(images)
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"{field}: 'samples' must be uint8 (N, H, W, C), got {x.dtype} "
                         f"{x.shape}")
    y = None if any(v is None for v in labels) else np.concatenate(labels).astype(np.int32)
    return ArraySource(images=x, labels=y, levels=256)


def mixing_source(config, real: Source) -> tuple[Source | None, float]:
    """(synthetic source, ratio) of config.data.synthetic / synthetic_ratio, (None, 0) if unset."""
    path, ratio = config.data.get("synthetic", "") or "", float(
        config.data.get("synthetic_ratio", 0.0) or 0.0)
    if not path and not ratio:
        return None, 0.0
    if not path or not 0.0 < ratio <= 1.0:
        raise ValueError(f"config.data.synthetic={path!r} with config.data.synthetic_ratio="
                         f"{ratio}: give both a path of generated samples and the fraction "
                         "in (0, 1] of each training batch to draw from it")
    synthetic = synthetic_source(path, int(config.data.num_channels))
    if real.has_labels and not synthetic.has_labels:
        raise ValueError(f"config.data.synthetic={path!r} has no labels but "
                         f"config.data.dataset={config.data.dataset!r} has: generate them "
                         "from a class-conditional model, or as PNGs in class folders")
    if not real.has_labels and synthetic.has_labels:
        synthetic = dataclasses.replace(synthetic, labels=None)
    return synthetic, ratio
