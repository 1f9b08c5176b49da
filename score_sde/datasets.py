"""Compatibility module: the datasets moved to the package `score_sde.data`.

Every public name of the former score_sde/datasets.py is re-exported from its new module
(`score_sde.data.catalog`, `.sources`, `.digits`, `.tfds_source`, `.image_folders`,
`.generated`, `.transforms`, `.pipeline`), so `from score_sde.datasets import get_dataset` and
`datasets.get_data_scaler(config)` keep working; new code imports `score_sde.data`. The former
private helpers raise an ImportError that names their new place.
"""

from score_sde.data import (
    CORRUPT_POLICIES,
    IMAGE_SUFFIXES,
    MAX_AUTO_WORKERS,
    SPLITS,
    ArraySource,
    Batch,
    CorruptImageError,
    DatasetNotFoundError,
    Geometry,
    ImageFolder,
    Pipeline,
    Source,
    SubsetSource,
    TfdsSource,
    central_crop,
    decode_image,
    default_num_workers,
    digits_source,
    get_data_inverse_scaler,
    get_data_scaler,
    get_dataset,
    get_geometry,
    get_source,
    image_folder_source,
    in_memory_source,
    list_images,
    mixing_source,
    report_skipped,
    resize,
    resize_small,
    source_labels,
    stratified_indices,
    subset_source,
    synthetic_source,
    tfds_source,
)

__all__ = [
    "CORRUPT_POLICIES",
    "IMAGE_SUFFIXES",
    "MAX_AUTO_WORKERS",
    "SPLITS",
    "ArraySource",
    "Batch",
    "CorruptImageError",
    "DatasetNotFoundError",
    "Geometry",
    "ImageFolder",
    "Pipeline",
    "Source",
    "SubsetSource",
    "TfdsSource",
    "central_crop",
    "decode_image",
    "default_num_workers",
    "digits_source",
    "get_data_inverse_scaler",
    "get_data_scaler",
    "get_dataset",
    "get_geometry",
    "get_source",
    "image_folder_source",
    "in_memory_source",
    "list_images",
    "mixing_source",
    "report_skipped",
    "resize",
    "resize_small",
    "source_labels",
    "stratified_indices",
    "subset_source",
    "synthetic_source",
    "tfds_source",
]

_MOVED = {  # former private name -> its new place
    "_TFDS": "score_sde.data.tfds_source.TFDS_DATASETS",
    "_data_dir": "score_sde.data.tfds_source._data_dir",
    "_first_readable": "score_sde.data.image_folders._first_readable",
    "_npz_samples": "score_sde.data.generated._npz_samples",
    "_digits_arrays": "score_sde.data.digits.digits_integer_split",
    "_sklearn_digits_split": "score_sde.data.digits.digits_integer_split",
    "_normalise_digits_split": "score_sde.data.digits.digits_integer_split",
    "_grain_iterate": "score_sde.data.prefetch.grain_iterate",
    "_thread_prefetch": "score_sde.data.prefetch.thread_prefetch",
    "_reported": "score_sde.data.pipeline._reported",
}


def __getattr__(name: str):
    if name in _MOVED:
        raise ImportError(f"score_sde.datasets.{name} moved to {_MOVED[name]}")
    raise AttributeError(f"module 'score_sde.datasets' has no attribute {name!r}")
