"""The datasets that config.data names: `get_source` and `get_dataset` (source + pipeline).

Sources by config.data.dataset:
  DIGITS           scikit-learn's 8x8 digits (embedded, 17 grey levels, labels), the CPU default
  CIFAR10, SVHN, MNIST, CELEBA, LSUN (config.data.category)
                   tensorflow-datasets prepared in array_record format (`tfds_source`)
  FFHQ, CELEBAHQ, IMAGE_FOLDER
                   a folder of PNG/JPEG files, local or gs:// (`image_folders`)
  MOVING_DIGITS, CLIP_NPZ, CLIP_FOLDERS, MOVING_MNIST, BAIR, UCF101
                   clips (T, h, w, c) for the video networks (`clips`)
Training reads config.data.subset_fraction of the train split and mixes in generated samples
(config.data.synthetic); the test split stays whole and real.
"""

from __future__ import annotations

import os

from score_sde.data.clips import VIDEO_DATASETS, clip_source
from score_sde.data.digits import digits_source
from score_sde.data.generated import mixing_source
from score_sde.data.image_folders import FOLDER_DATASETS, image_folder_source
from score_sde.data.pipeline import Pipeline
from score_sde.data.sources import SPLITS, Source, in_memory_source, subset_source
from score_sde.data.tfds_source import TFDS_DATASETS, tfds_source
from score_sde.data.transforms import get_geometry

MAX_AUTO_WORKERS = 8  # data.num_workers = -1 -> min(usable cores, this)


def get_source(config, split: str) -> Source:
    """The random-access source named by config.data.dataset for split 'train' or 'test'."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; choose one of {SPLITS}")
    name = str(config.data.dataset).upper()
    if name == "DIGITS":
        return digits_source(split)
    if name in TFDS_DATASETS:
        return tfds_source(config, split)
    if name in FOLDER_DATASETS:
        return image_folder_source(config, split)
    if name in VIDEO_DATASETS:
        return clip_source(config, split)
    raise ValueError(f"config.data.dataset={config.data.dataset!r} is not known; choose one of "
                     f"{['DIGITS', *TFDS_DATASETS, *FOLDER_DATASETS, *VIDEO_DATASETS]}")


def default_num_workers(source: Source) -> int:
    """Workers of `data.num_workers = -1`: none for in-memory data, else min(cores, 8)."""
    if in_memory_source(source):
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(cores, MAX_AUTO_WORKERS)


def _training_sources(config, source: Source) -> tuple[Source, Source | None, float]:
    """(real subset, synthetic source or None, synthetic ratio) of the train split."""
    source = subset_source(source, float(config.data.get("subset_fraction", 1.0) or 1.0),
                           int(config.data.get("subset_seed", 0)))
    synthetic, ratio = mixing_source(config, source)
    return source, synthetic, ratio


def _num_workers(config, source: Source) -> int:
    """config.data.num_workers, with -1 resolved by `default_num_workers`."""
    workers = int(config.data.get("num_workers", -1))
    if workers < -1:
        raise ValueError(f"config.data.num_workers={workers}; use -1 (automatic), 0 (read in "
                         "this process) or a number of worker processes")
    return default_num_workers(source) if workers == -1 else workers


def get_dataset(config, split: str, batch_size: int | None = None, *, seed: int | None = None,
                shuffle: bool | None = None, pad_last: bool = False,
                process_index: int | None = None, process_count: int | None = None
                ) -> Pipeline:
    """The pipeline of config.data for a split; batch size defaults to training/eval.batch_size.

    Per-host sharding defaults to jax.process_index() / jax.process_count().
    """
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    train = split == "train"
    if batch_size is None:
        batch_size = config.training.batch_size if train else config.eval.batch_size
    source = get_source(config, split)
    synthetic, ratio = None, 0.0
    if train:  # the test split stays whole and real
        source, synthetic, ratio = _training_sources(config, source)
    return Pipeline(
        source=source, global_batch=int(batch_size),
        seed=int(config.seed if seed is None else seed),
        shuffle=train if shuffle is None else shuffle,
        geometry=get_geometry(config),
        random_flip=bool(config.data.random_flip) and train,
        dequantize=bool(config.data.uniform_dequantization),
        process_index=process_index, process_count=process_count,
        num_threads=0 if in_memory_source(source) else int(config.data.get("num_threads", 8)),
        pad_last=pad_last,
        num_workers=_num_workers(config, source),
        corrupt=str(config.data.get("corrupt_images", "error")),
        synthetic=synthetic, synthetic_ratio=ratio)
