"""tensorflow-datasets prepared in array_record format, read with `tfds.data_source`.

Reading and decoding need no TensorFlow; the [tfds] extra (tensorflow-datasets, array_record)
is imported only when such a dataset is asked for.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from score_sde.data.sources import DatasetNotFoundError

TFDS_DATASETS = {  # config.data.dataset -> (tfds name, {our split: tfds split})
    "CIFAR10": ("cifar10", {"train": "train", "test": "test"}),
    "SVHN": ("svhn_cropped", {"train": "train", "test": "test"}),
    "MNIST": ("mnist", {"train": "train", "test": "test"}),
    "CELEBA": ("celeb_a", {"train": "train", "test": "validation"}),
    "LSUN": ("lsun/{category}", {"train": "train", "test": "validation"}),
}


@dataclasses.dataclass(frozen=True)
class TfdsSource:
    """A tfds random-access data source (array_record); decoding needs no TensorFlow."""

    data_source: Any
    levels: int = 256

    @property
    def has_labels(self) -> bool:
        return "label" in self.data_source.dataset_info.features

    def __len__(self) -> int:
        return len(self.data_source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex = self.data_source[int(index)]
        out = {"image": np.asarray(ex["image"])}
        if "label" in ex:
            out["label"] = np.int32(ex["label"])
        return out


def _data_dir(config) -> str | None:
    return config.data.get("data_dir", None) or os.environ.get("TFDS_DATA_DIR") or None


def tfds_source(config, split: str) -> TfdsSource:
    """The prepared tfds dataset of config.data.dataset (one of TFDS_DATASETS) for a split."""
    name, splits = TFDS_DATASETS[config.data.dataset.upper()]
    name = name.format(category=config.data.get("category", "bedroom"))
    return TfdsSource(open_tfds(config, name, splits[split]))


def open_tfds(config, name: str, split: str) -> Any:
    """`tfds.data_source(name, split)` from config.data.data_dir (or TFDS_DATA_DIR), never
    downloading; one line that says how to prepare a dataset that is not there."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(f"config.data.dataset={config.data.dataset!r} reads "
                          "tensorflow-datasets; install it with `pip install -e '.[tfds]'` "
                          "(no TensorFlow needed)") from e
    data_dir = _data_dir(config)
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises several types for "not prepared / wrong format"
        where = data_dir or "the default tfds data dir (~/tensorflow_datasets)"
        raise DatasetNotFoundError(
            f"config.data.dataset={config.data.dataset!r}: the tfds dataset '{name}' "
            f"(split '{split}') is not prepared in array_record format in {where}. "
            f"Prepare it once on a machine with internet: `tfds build {name} "
            "--file_format=array_record --data_dir=DIR`, then set config.data.data_dir=DIR "
            f"(or TFDS_DATA_DIR). [{type(e).__name__}: {str(e).splitlines()[0][:200]}]") from e
