"""Image datasets as deterministic, random-access batch pipelines (no TensorFlow).

A dataset is a random-access *source* of integer images (plus optional labels) and a
`Pipeline` that turns (step) into this process's slice of the global batch. The batch of a
step depends only on (seed, step), never on what was read before, so a resumed run reads exactly
the batches an uninterrupted run would, and each host reads only its own examples.

Images come out as float32 (B, H, W, C) in [0, 1] (with uniform dequantisation
(x + u) / levels when `config.data.uniform_dequantization`); `get_data_scaler(config)` maps them
to the model's range ([-1, 1] when `config.data.centered`), as in the published code.

Modules, one idea each (this package sits on the bottom floor: it imports only
score_sde.storage, so the metrics and every driver can import it):
  sources        the Source protocol, in-memory arrays, subsets, the dataset errors
  digits         scikit-learn's digits and its one fixed train/test split
  tfds_source    tensorflow-datasets in array_record format (`tfds.data_source`)
  image_folders  folders of PNG/JPEG files, local or gs://
  moving_digits  the embedded video data: sklearn's digits moving on a canvas, made on the fly
  clips          video datasets (T, h, w, c): moving digits, .npz / frame folders, tfds video
  generated      generated samples read back as training data (config.data.synthetic)
  transforms     crop/resize, flip and dequantisation, the data scalers
  pipeline       `Pipeline`: deterministic per-host batches, the corrupt-image policy
  prefetch       in-process readers (grain threads, a prefetch thread)
  workers        spawned worker processes that compute batches (no JAX in them)
  catalog        `get_source` / `get_dataset`: what config.data names

Image folders and tfds datasets decode and augment in `config.data.num_workers` spawned worker
processes (`score_sde.data.workers`), which import neither JAX nor grain; in-memory data
(digits) and `num_workers=0` read in this process with threads.
"""

from score_sde.data.catalog import (
    MAX_AUTO_WORKERS,
    default_num_workers,
    get_dataset,
    get_source,
)
from score_sde.data.clips import VIDEO_DATASETS, clip_source, is_video_dataset, load_npz_clips
from score_sde.data.digits import digits_source, digits_split
from score_sde.data.generated import mixing_source, synthetic_source
from score_sde.data.image_folders import (
    IMAGE_SUFFIXES,
    ImageFolder,
    decode_image,
    image_folder_source,
    list_images,
)
from score_sde.data.moving_digits import MovingDigitsSource, moving_digits_source
from score_sde.data.pipeline import CORRUPT_POLICIES, Pipeline, report_skipped
from score_sde.data.sources import (
    SPLITS,
    ArraySource,
    Batch,
    CorruptImageError,
    DatasetNotFoundError,
    Source,
    SubsetSource,
    in_memory_source,
    source_labels,
    stratified_indices,
    subset_source,
)
from score_sde.data.tfds_source import TfdsSource, tfds_source
from score_sde.data.transforms import (
    Geometry,
    central_crop,
    get_data_inverse_scaler,
    get_data_scaler,
    get_data_value_range,
    get_geometry,
    resize,
    resize_small,
)

__all__ = [
    "CORRUPT_POLICIES",
    "VIDEO_DATASETS",
    "MovingDigitsSource",
    "clip_source",
    "is_video_dataset",
    "load_npz_clips",
    "moving_digits_source",
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
    "digits_split",
    "get_data_inverse_scaler",
    "get_data_scaler",
    "get_data_value_range",
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
