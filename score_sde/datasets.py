"""Image datasets as deterministic, random-access batch pipelines (no TensorFlow).

A dataset is a random-access *source* of integer images (plus optional labels) and a
`Pipeline` that turns (step) into this process's slice of the global batch. The batch of a
step depends only on (seed, step), never on what was read before, so a resumed run reads exactly
the batches an uninterrupted run would, and each host reads only its own examples.

Images come out as float32 (B, H, W, C) in [0, 1] (with uniform dequantisation
(x + u) / levels when `config.data.uniform_dequantization`); `get_data_scaler(config)` maps them
to the model's range ([-1, 1] when `config.data.centered`), as in the published code.

Sources (`config.data.dataset`):
  DIGITS           scikit-learn's 8x8 digits (embedded, 17 grey levels, labels), the CPU default
  CIFAR10, SVHN, MNIST, CELEBA, LSUN (config.data.category)
                   tensorflow-datasets prepared in array_record format, read via tfds.data_source
  FFHQ, CELEBAHQ, IMAGE_FOLDER
                   a folder of PNG/JPEG files, local or gs:// (config.data.data_dir; see
                   `ImageFolder`)

Image folders and tfds datasets decode and augment in `config.data.num_workers` spawned worker
processes (`score_sde.data_workers`), which import neither JAX nor grain; in-memory data
(digits) and `num_workers=0` read in this process with threads, as before.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
from etils import epath

from score_sde import storage

Batch = dict[str, np.ndarray]
SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
CORRUPT_POLICIES = ("error", "skip")
MAX_AUTO_WORKERS = 8  # data.num_workers = -1 -> min(usable cores, this)


class Source(Protocol):
    """Random-access examples: `source[i] -> {'image': int (h, w, c), 'label'?: int}`."""

    levels: int  # number of grey levels of the stored integers (256 for uint8, 17 for digits)
    has_labels: bool

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


class DatasetNotFoundError(FileNotFoundError):
    """A dataset that is not prepared on this machine; the message says how to prepare it."""


class CorruptImageError(ValueError):
    """An image file of a dataset that cannot be decoded; the message names the file."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"cannot decode the dataset image {path} ({reason}); replace or delete "
                         "it, or pass --config.data.corrupt_images=skip to read other images "
                         "of the dataset in its place")

    def __reduce__(self):  # rebuilt from (path, reason) when sent from a worker process
        return type(self), (self.path, self.reason), self.__dict__


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


# ----------------------------------------------------------------------------- sources


@dataclasses.dataclass(frozen=True)
class ArraySource:
    """In-memory integer images (N, h, w, c) and optional labels (N,)."""

    images: np.ndarray
    labels: np.ndarray | None
    levels: int

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex = {"image": self.images[index]}
        if self.labels is not None:
            ex["label"] = self.labels[index]
        return ex


def _sklearn_digits_split():
    """The fixed digits split: 80/20, stratified, random_state=0 (as the digits classifier)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x, y = digits.images.astype(np.uint8), digits.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return (x_tr, y_tr), (x_te, y_te)


@functools.cache
def _digits_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    try:  # the metrics engineer's split, when it exists, is the one source of truth
        from score_sde.metrics.digits_classifier import digits_split
    except ImportError:
        digits_split = None
    if digits_split is None:
        train, test = _sklearn_digits_split()
    else:
        train, test = _normalise_digits_split(digits_split())
    return {"train": train, "test": test}


def _normalise_digits_split(split) -> tuple[tuple, tuple]:
    """Accept {'train': (x, y), 'test': (x, y)} or (x_tr, y_tr, x_te, y_te) / ((x, y), (x, y))."""
    if isinstance(split, dict):
        parts = (split["train"], split["test"])
    elif len(split) == 4:
        parts = ((split[0], split[1]), (split[2], split[3]))
    else:
        parts = (split[0], split[1])
    out = []
    for x, y in parts:
        x = np.asarray(x, np.float64).reshape(-1, 8, 8)
        if x.max() <= 1.0:  # given as pixel / 16
            x = x * 16.0
        out.append((np.rint(x).astype(np.uint8), np.asarray(y, np.int32)))
    return out[0], out[1]


def digits_source(split: str) -> ArraySource:
    x, y = _digits_arrays()[split]
    return ArraySource(images=x[..., None], labels=y, levels=17)


_TFDS = {  # config.data.dataset -> (tfds name, {our split: tfds split})
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
    name, splits = _TFDS[config.data.dataset.upper()]
    name = name.format(category=config.data.get("category", "bedroom"))
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(f"config.data.dataset={config.data.dataset!r} reads "
                          "tensorflow-datasets; install it with `pip install -e '.[tfds]'` "
                          "(no TensorFlow needed)") from e
    data_dir = _data_dir(config)
    try:
        ds = tfds.data_source(name, split=splits[split], data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises several types for "not prepared / wrong format"
        where = data_dir or "the default tfds data dir (~/tensorflow_datasets)"
        raise DatasetNotFoundError(
            f"config.data.dataset={config.data.dataset!r}: the tfds dataset '{name}' "
            f"(split '{splits[split]}') is not prepared in array_record format in {where}. "
            f"Prepare it once on a machine with internet: `tfds build {name} "
            "--file_format=array_record --data_dir=DIR`, then set config.data.data_dir=DIR "
            f"(or TFDS_DATA_DIR). [{type(e).__name__}: {str(e).splitlines()[0][:200]}]") from e
    return TfdsSource(ds)


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


@dataclasses.dataclass(frozen=True)
class SubsetSource:
    """The examples `indices` of another source, in that order."""

    source: Source
    indices: np.ndarray

    @property
    def levels(self) -> int:
        return self.source.levels

    @property
    def has_labels(self) -> bool:
        return self.source.has_labels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.source[int(self.indices[int(index)])]


def source_labels(source: Source) -> np.ndarray | None:
    """Every label of a source (None without labels); in-memory sources without reading images."""
    if not source.has_labels:
        return None
    if isinstance(source, ArraySource):
        return np.asarray(source.labels)
    if isinstance(source, SubsetSource):
        labels = source_labels(source.source)
        return None if labels is None else labels[source.indices]
    return np.asarray([source[i]["label"] for i in range(len(source))])


def stratified_indices(labels: np.ndarray | None, n: int, fraction: float, seed: int
                       ) -> np.ndarray:
    """Sorted indices of a `fraction` of n examples, fixed by `seed`: per class, round(fraction x
    its count) (at least one) examples; without labels, round(fraction x n) of all."""
    rng = np.random.default_rng([seed, 5])
    if labels is None:
        return np.sort(rng.permutation(n)[:max(1, round(fraction * n))])
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        chosen.append(rng.permutation(members)[:max(1, round(fraction * len(members)))])
    return np.sort(np.concatenate(chosen))


def subset_source(source: Source, fraction: float, seed: int) -> Source:
    """A class-stratified `fraction` of a source (config.data.subset_fraction); 1: all of it."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"config.data.subset_fraction={fraction}; give a fraction in (0, 1]")
    if fraction == 1.0:
        return source
    return SubsetSource(source, stratified_indices(source_labels(source), len(source),
                                                   fraction, seed))


def get_source(config, split: str) -> Source:
    """The random-access source named by config.data.dataset for split 'train' or 'test'."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; choose one of {SPLITS}")
    name = str(config.data.dataset).upper()
    if name == "DIGITS":
        return digits_source(split)
    if name in _TFDS:
        return tfds_source(config, split)
    if name in ("FFHQ", "CELEBAHQ", "IMAGE_FOLDER"):
        return image_folder_source(config, split)
    raise ValueError(f"config.data.dataset={config.data.dataset!r} is not known; choose one of "
                     f"{['DIGITS', *_TFDS, 'FFHQ', 'CELEBAHQ', 'IMAGE_FOLDER']}")


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


# ----------------------------------------------------------------------------- transforms


def central_crop(x: np.ndarray, size: int) -> np.ndarray:
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
    """The per-dataset crop/resize of a float (h, w, c) image to (size, size, c), as published.

    A dataclass rather than a closure so that a pipeline pickles into its worker processes.
    """

    kind: str  # 'celeba' (central crop 140, resize), 'crop' (resize shorter side, crop), 'resize'
    size: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
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


# ----------------------------------------------------------------------------- pipeline


@dataclasses.dataclass
class Pipeline:
    """Deterministic batches of a source: `batch(step)` is this process's slice of global batch.

    Training (shuffle=True) walks an endless sequence of per-epoch permutations seeded by
    (seed, epoch); evaluation (shuffle=False) reads the split once in order and drops the last
    partial batch, or with `pad_last` completes it with repeated examples and adds a boolean
    'mask' entry (False on the padding). The random flip and dequantisation noise of an example
    depend only on (seed, its position in that sequence), so every process count gives the same
    global batch.

    A corrupt image (CorruptImageError from the source) stops the run (`corrupt='error'`) or,
    with `corrupt='skip'`, is replaced by another image of the source drawn from (seed,
    position): batch shapes and every other example stay as they were, and a resumed run reads
    the same substitutes. Each skipped file is reported once per process on stderr.

    `iterate` computes the batches in `num_workers` worker processes (a pipeline pickles into
    them), or in this process with `num_threads` threads when num_workers is 0.
    """

    source: Source
    global_batch: int
    seed: int
    shuffle: bool
    geometry: Callable[[np.ndarray], np.ndarray]
    random_flip: bool = False
    dequantize: bool = False
    process_index: int = 0
    process_count: int = 1
    num_threads: int = 0
    pad_last: bool = False
    num_workers: int = 0
    corrupt: str = "error"
    synthetic: Source | None = None
    synthetic_ratio: float = 0.0

    def __post_init__(self):
        if self.global_batch % self.process_count:
            raise ValueError(f"batch size {self.global_batch} must divide by the number of "
                             f"processes ({self.process_count})")
        if self.corrupt not in CORRUPT_POLICIES:
            raise ValueError(f"config.data.corrupt_images={self.corrupt!r}; choose one of "
                             f"{CORRUPT_POLICIES}")
        self.local_batch = self.global_batch // self.process_count
        if not self.shuffle and not self.pad_last and len(self.source) < self.global_batch:
            raise ValueError(f"the split has {len(self.source)} examples, fewer than one batch "
                             f"of {self.global_batch}; lower the batch size")
        self._perms: dict[int | tuple[int, int], np.ndarray] = {}
        self.num_synthetic = 0  # synthetic examples in each global batch (training only)
        if self.synthetic is not None and self.shuffle:
            if not 0.0 < self.synthetic_ratio <= 1.0:
                raise ValueError(f"config.data.synthetic_ratio={self.synthetic_ratio}; give the "
                                 "fraction of each training batch drawn from config.data"
                                 ".synthetic, in (0, 1]")
            self.num_synthetic = round(self.synthetic_ratio * self.global_batch)

    def __getstate__(self) -> dict:  # sent to worker processes without the permutation cache
        return {**self.__dict__, "_perms": {}}

    @property
    def num_batches(self) -> int | None:
        """Batches in one pass (evaluation), None for the endless training stream."""
        if self.shuffle:
            return None
        if self.pad_last:
            return -(-len(self.source) // self.global_batch)
        return len(self.source) // self.global_batch

    def _walk(self, ordinal: int, n: int, stream: tuple[int, ...] = ()) -> int:
        """Example `ordinal` of an endless walk through per-epoch permutations of n examples
        (one walk per `stream`: the real data's is (), the synthetic data's (4,))."""
        epoch = ordinal // n
        key = (*stream, epoch) if stream else epoch
        if key not in self._perms:
            if len(self._perms) > 4:
                self._perms.pop(next(iter(self._perms)))
            self._perms[key] = np.random.default_rng([self.seed, *stream, epoch]).permutation(n)
        return int(self._perms[key][ordinal % n])

    def synthetic_slots(self, step: int) -> np.ndarray:
        """The sorted places in global batch `step` that hold synthetic examples, drawn from
        (seed, step): data.synthetic_ratio of the batch, wherever each host's slice is."""
        rng = np.random.default_rng([self.seed, 3, step])
        return np.sort(rng.permutation(self.global_batch)[:self.num_synthetic])

    def _locate(self, position: int) -> tuple[Source, int]:
        """The source and the index in it of the example at a position of the sequence."""
        if not self.shuffle:
            return self.source, position % len(self.source)
        if not self.num_synthetic:
            return self.source, self._walk(position, len(self.source))
        step, place = divmod(position, self.global_batch)
        slots = self.synthetic_slots(step)
        before = int(np.searchsorted(slots, place))  # synthetic places before this one
        if before < len(slots) and slots[before] == place:
            ordinal = step * self.num_synthetic + before
            return self.synthetic, self._walk(ordinal, len(self.synthetic), (4,))
        ordinal = step * (self.global_batch - self.num_synthetic) + place - before
        return self.source, self._walk(ordinal, len(self.source))

    def _index(self, position: int) -> int:
        """The index of a position's example in its source (`_locate`)."""
        return self._locate(position)[1]

    def _read(self, position: int, skipped: list[str]) -> tuple[dict[str, Any], int]:
        """The example of a position (or under 'skip' a substitute for a corrupt one) and the
        number of grey levels of its source."""
        source, index = self._locate(position)
        try:
            return source[index], source.levels
        except CorruptImageError as e:
            if self.corrupt != "skip":
                raise
            skipped.append(e.path)
        draws = np.random.default_rng([self.seed, 2, position]).integers(len(self.source),
                                                                         size=16)
        for index in draws:  # a few random draws, then the image known to decode
            try:
                return self.source[int(index)], self.source.levels
            except CorruptImageError as e:
                skipped.append(e.path)
        return self.source[getattr(self.source, "readable", 0)], self.source.levels

    def _example(self, position: int, skipped: list[str]) -> dict[str, Any]:
        ex, levels = self._read(position, skipped)
        x = self.geometry(np.asarray(ex["image"], np.float32) / (levels - 1))
        rng = np.random.default_rng([self.seed, 1, position])
        if self.random_flip and rng.random() < 0.5:
            x = x[:, ::-1]
        if self.dequantize:
            x = (x * (levels - 1) + rng.random(x.shape, dtype=np.float32)) / levels
        out = {"image": np.ascontiguousarray(x, dtype=np.float32)}
        if "label" in ex:
            out["label"] = np.int32(ex["label"])
        return out

    def example(self, position: int) -> dict[str, Any]:
        """The transformed example at a position of the (global) example sequence."""
        skipped: list[str] = []
        out = self._example(position, skipped)
        report_skipped(skipped)
        return out

    def positions(self, step: int) -> range:
        start = step * self.global_batch + self.process_index * self.local_batch
        return range(start, start + self.local_batch)

    def compute_batch(self, step: int, out: Callable[[tuple, np.dtype], np.ndarray] | None = None
                      ) -> tuple[Batch, list[str]]:
        """`batch(step)` and the corrupt files skipped on the way (reported by the caller).

        `out(shape, dtype)`, if given, supplies the array the images are written into (a worker
        process's shared memory). Examples are written into the batch one by one, so building
        it holds one batch and one example, not a list of examples besides.
        """
        if self.num_batches is not None and not 0 <= step < self.num_batches:
            raise IndexError(f"step {step} is outside the {self.num_batches} evaluation batches")
        positions = self.positions(step)
        skipped: list[str] = []
        first = self._example(positions[0], skipped)
        batch = {k: np.empty((len(positions), *np.shape(v)), np.asarray(v).dtype)
                 for k, v in first.items() if not (out and k == "image")}
        if out:
            batch["image"] = out((len(positions), *first["image"].shape), first["image"].dtype)
        for i, p in enumerate(positions):  # written in place: no list of examples held
            for k, v in (first if i == 0 else self._example(p, skipped)).items():
                batch[k][i] = v
        if self.pad_last:
            batch["mask"] = np.asarray([p < len(self.source) for p in positions])
        return batch, skipped

    def batch(self, step: int) -> Batch:
        batch, skipped = self.compute_batch(step)
        report_skipped(skipped)
        return batch

    def iterate(self, start: int = 0, stop: int | None = None, prefetch: int = 2
                ) -> Iterator[Batch]:
        """Batches start, start+1, ... (stop: exclusive; default: end of split / endless).

        With workers, `prefetch` is ignored: each worker holds one batch ahead.
        """
        stop = self.num_batches if stop is None else stop
        if self.num_workers > 0:
            from score_sde.data_workers import WorkerIterator

            return WorkerIterator(self.compute_batch, start, stop, self.num_workers,
                                  report=report_skipped)
        if self.num_threads > 0 and stop is not None:
            return _grain_iterate(self.batch, start, stop, self.num_threads, prefetch)
        return _thread_prefetch(self.batch, start, stop, prefetch)


_reported: set[str] = set()  # corrupt files already reported by this process


def report_skipped(paths: list[str]) -> None:
    """One line on stderr per corrupt file skipped, the first time this process meets it.

    Written with tqdm.write, which moves a progress bar out of the way instead of tearing it.
    """
    from tqdm import tqdm

    for path in dict.fromkeys(paths):
        if path not in _reported:
            _reported.add(path)
            tqdm.write(f"score_sde: warning: skipped the corrupt dataset image {path}; other "
                       "images of the dataset are read in its place "
                       "(config.data.corrupt_images='skip')", file=sys.stderr)


# ----------------------------------------------------------------------------- in-process readers


def _grain_iterate(fn, start: int, stop: int, threads: int, prefetch: int) -> Iterator[Batch]:
    import grain

    ds = grain.MapDataset.range(start, stop).map(fn)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                     prefetch_buffer_size=prefetch)))


def _thread_prefetch(fn, start: int, stop: int | None, depth: int) -> Iterator[Batch]:
    """fn(start), fn(start + 1), ... computed `depth` ahead in a daemon thread."""
    q: queue.Queue = queue.Queue(maxsize=max(depth, 1))
    done = threading.Event()

    def work():
        step = start
        try:
            while (stop is None or step < stop) and not done.is_set():
                q.put(("ok", fn(step)))
                step += 1
            q.put(("end", None))
        except Exception as e:  # surfaced in the consumer
            q.put(("error", e))

    threading.Thread(target=work, daemon=True).start()

    def gen():
        try:
            while True:
                kind, item = q.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise item
                yield item
        finally:
            done.set()
            while not q.empty():
                q.get_nowait()

    return gen()


# ----------------------------------------------------------------------------- config


def in_memory_source(source: Source) -> bool:
    """True for arrays in memory (digits, generated samples) and subsets of them."""
    if isinstance(source, SubsetSource):
        return in_memory_source(source.source)
    return isinstance(source, ArraySource)


def default_num_workers(source: Source) -> int:
    """Workers of `data.num_workers = -1`: none for in-memory data, else min(cores, 8)."""
    if in_memory_source(source):
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(cores, MAX_AUTO_WORKERS)


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
        source = subset_source(source, float(config.data.get("subset_fraction", 1.0) or 1.0),
                               int(config.data.get("subset_seed", 0)))
        synthetic, ratio = mixing_source(config, source)
    in_memory = in_memory_source(source)
    workers = int(config.data.get("num_workers", -1))
    if workers < -1:
        raise ValueError(f"config.data.num_workers={workers}; use -1 (automatic), 0 (read in "
                         "this process) or a number of worker processes")
    return Pipeline(
        source=source, global_batch=int(batch_size),
        seed=int(config.seed if seed is None else seed),
        shuffle=train if shuffle is None else shuffle,
        geometry=get_geometry(config),
        random_flip=bool(config.data.random_flip) and train,
        dequantize=bool(config.data.uniform_dequantization),
        process_index=process_index, process_count=process_count,
        num_threads=0 if in_memory else int(config.data.get("num_threads", 8)),
        pad_last=pad_last,
        num_workers=default_num_workers(source) if workers == -1 else workers,
        corrupt=str(config.data.get("corrupt_images", "error")),
        synthetic=synthetic, synthetic_ratio=ratio)
