"""Video datasets: sources of clips `{'image': int (T, h, w, c)}` that config.data names.

  MOVING_DIGITS    the embedded default, made on the fly (score_sde.data.moving_digits)
  CLIP_NPZ         an .npz of clips: config.data.data_dir is a file with 'clips' (or
                   'videos' / 'samples') uint8 (N, T, h, w[, c]); or a folder holding
                   train.npz and test.npz
  CLIP_FOLDERS     folders of frames: data_dir/<split>/<clip>/<frame>.png (frames in name
                   order); without train/ and test/ every clip folder is in both splits
  MOVING_MNIST, BAIR, UCF101
                   tensorflow-datasets in array_record format (`tfds.data_source`, as for the
                   image datasets): moving_mnist (its one split: the first 90% train, the rest
                   test), bair_robot_pushing_small ('image_main'), ucf101
Every clip is cut to its first config.data.num_frames frames, taken every
config.data.frame_stride (default 1) frames; a shorter clip stops the run with one line.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from etils import epath

from score_sde import storage
from score_sde.data.image_folders import IMAGE_SUFFIXES, decode_image, list_images
from score_sde.data.moving_digits import moving_digits_source
from score_sde.data.sources import DatasetNotFoundError
from score_sde.data.tfds_source import open_tfds

TFDS_VIDEO = {  # config.data.dataset -> (tfds name, {split: tfds split}, frames key)
    "MOVING_MNIST": ("moving_mnist", {"train": "test[:90%]", "test": "test[90%:]"},
                     "image_sequence"),
    "BAIR": ("bair_robot_pushing_small", {"train": "train", "test": "test"}, "image_main"),
    "UCF101": ("ucf101", {"train": "train", "test": "test"}, "video"),
}
VIDEO_DATASETS = ("MOVING_DIGITS", "CLIP_NPZ", "CLIP_FOLDERS", *TFDS_VIDEO)
NPZ_KEYS = ("clips", "videos", "samples")


def is_video_dataset(config) -> bool:
    return str(config.data.dataset).upper() in VIDEO_DATASETS


@dataclasses.dataclass(frozen=True)
class FrameWindow:
    """Which frames of a stored clip make a training clip: the first `num_frames`, one every
    `stride` frames."""

    num_frames: int
    stride: int = 1

    def __call__(self, clip: np.ndarray, name: str) -> np.ndarray:
        need = (self.num_frames - 1) * self.stride + 1
        if len(clip) < need:
            raise ValueError(f"the clip {name} has {len(clip)} frames, fewer than the {need} "
                             f"that config.data.num_frames={self.num_frames} (frame_stride "
                             f"{self.stride}) takes")
        return clip[:need:self.stride]

    @classmethod
    def of(cls, config) -> FrameWindow:
        frames, stride = int(config.data.get("num_frames", 0) or 0), \
            int(config.data.get("frame_stride", 1))
        if frames < 1 or stride < 1:
            raise ValueError(f"config.data.num_frames={frames} and config.data.frame_stride="
                             f"{stride} must be positive for a video dataset")
        return cls(frames, stride)


def _as_clips(x: np.ndarray, where: str) -> np.ndarray:
    if x.ndim == 4:
        x = x[..., None]
    if x.ndim != 5 or x.dtype != np.uint8:
        raise ValueError(f"{where}: clips must be uint8 (N, T, h, w[, c]); got {x.dtype} "
                         f"{x.shape}")
    return x


def load_npz_clips(path: str) -> np.ndarray:
    """The uint8 clips (N, T, h, w, c) of an .npz under one of NPZ_KEYS."""
    arrays = storage.load_npz(path)
    key = next((k for k in NPZ_KEYS if k in arrays), None)
    if key is None:
        raise ValueError(f"{path} has no clips: expected one of the keys {NPZ_KEYS}, found "
                         f"{sorted(arrays)}")
    return _as_clips(np.asarray(arrays[key]), f"{path}['{key}']")


@dataclasses.dataclass(frozen=True)
class ClipArraySource:
    """In-memory uint8 clips (N, T, h, w, c), cut by `window`."""

    clips: np.ndarray
    window: FrameWindow
    levels: int = 256
    has_labels: bool = False
    in_memory: bool = True

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.window(self.clips[int(index)], f"#{int(index)}")}


@dataclasses.dataclass(frozen=True)
class FrameFolderSource:
    """Clips stored as folders of frame images (read when asked for), cut by `window`."""

    folders: tuple[tuple[str, ...], ...]  # per clip, its frame files in order
    names: tuple[str, ...]
    num_channels: int
    window: FrameWindow
    levels: int = 256
    has_labels: bool = False

    def __len__(self) -> int:
        return len(self.folders)

    def __getitem__(self, index: int) -> dict[str, Any]:
        files = self.window(np.asarray(self.folders[int(index)]), self.names[int(index)])
        return {"image": np.stack([decode_image(f, self.num_channels) for f in files])}


def _root(config) -> epath.Path:
    root = config.data.get("data_dir", "")
    if not root or not epath.Path(root).exists():
        raise DatasetNotFoundError(
            f"config.data.dataset={config.data.dataset!r} reads clips from "
            f"config.data.data_dir={root!r}, which does not exist; give an .npz of clips or a "
            "folder (see score_sde/data/clips.py)")
    return epath.Path(root)


def npz_source(config, split: str) -> ClipArraySource:
    root = _root(config)
    path = root / f"{split}.npz" if root.is_dir() else root
    if not path.exists():
        raise DatasetNotFoundError(f"config.data.data_dir={str(root)!r} has no {split}.npz")
    return ClipArraySource(load_npz_clips(str(path)), FrameWindow.of(config))


def frame_folder_source(config, split: str) -> FrameFolderSource:
    root = _root(config)
    base = root / split if (root / split).is_dir() else root
    frames = list_images(base, IMAGE_SUFFIXES)
    clips: dict[str, list[str]] = {}
    for f in frames:
        clips.setdefault(f.rsplit("/", 1)[0], []).append(f)
    if not clips:
        raise DatasetNotFoundError(f"config.data.data_dir={str(root)!r}: no frame images under "
                                   f"{base} (expected <clip>/<frame>.png folders)")
    names = tuple(sorted(clips))
    return FrameFolderSource(tuple(tuple(clips[n]) for n in names), names,
                             int(config.data.num_channels), FrameWindow.of(config))


@dataclasses.dataclass(frozen=True)
class TfdsClipSource:
    """A tfds video dataset read with `tfds.data_source`: the frames under `key`, cut by
    `window`."""

    data_source: Any
    key: str
    window: FrameWindow
    levels: int = 256
    has_labels: bool = False

    def __len__(self) -> int:
        return len(self.data_source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        clip = _as_clips(np.asarray(self.data_source[int(index)][self.key])[None],
                         f"tfds '{self.key}'")[0]
        return {"image": self.window(clip, f"#{int(index)}")}


def tfds_clip_source(config, split: str) -> TfdsClipSource:
    name, splits, key = TFDS_VIDEO[str(config.data.dataset).upper()]
    ds = open_tfds(config, name, splits[split])
    return TfdsClipSource(ds, key, FrameWindow.of(config))


def clip_source(config, split: str):
    """The clip source named by config.data.dataset (one of VIDEO_DATASETS)."""
    name = str(config.data.dataset).upper()
    if name == "MOVING_DIGITS":
        return moving_digits_source(config, split)
    if name == "CLIP_NPZ":
        return npz_source(config, split)
    if name == "CLIP_FOLDERS":
        return frame_folder_source(config, split)
    return tfds_clip_source(config, split)
