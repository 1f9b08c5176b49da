"""Files of a run, local or in a bucket (`gs://bucket/run`), through etils.epath.

Every file the framework reads or writes outside orbax (which reaches buckets itself through
tensorstore) goes through these helpers, so a work directory may be a local folder or a cloud
bucket. epath reaches gs:// through TensorFlow's tf.io.gfile when TensorFlow is importable and
through fsspec + gcsfs otherwise (`pip install 'score_sde[gcs]'`).

Writes are whole files: a local file is written to a temporary name and renamed, so a reader never
sees half a file; a bucket object becomes visible only when its upload completes, which is the
same guarantee without a rename (objects cannot be renamed in place on GCS).
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import uuid
from typing import Any

import numpy as np
from etils import epath

PathLike = str | os.PathLike
REMOTE_PREFIXES = ("gs://", "s3://")


def _fresh_listings() -> None:
    """gcsfs caches every directory listing for the life of the process, so a file that
    another process wrote later (the lease of another run, a new checkpoint) would stay unseen
    and a deleted one would linger; list the bucket afresh each time instead."""
    try:
        import fsspec
    except ImportError:
        return
    for protocol in ("gcs", "gs"):
        fsspec.config.conf.setdefault(protocol, {}).setdefault("use_listings_cache", False)


_fresh_listings()


def is_remote(path: PathLike) -> bool:
    """True for a bucket path (gs://, s3://), False for a local one."""
    return str(path).startswith(REMOTE_PREFIXES)


def path(p: PathLike) -> epath.Path:
    """An epath.Path for a local or gs:// path; one clear error when gs:// has no backend."""
    if str(p).startswith("gs://") and not _gcs_backend():
        raise ImportError(f"{p}: a gs:// path needs gcsfs (pip install 'score_sde[gcs]') or "
                          "TensorFlow")
    return epath.Path(p)


def _gcs_backend() -> bool:
    return any(importlib.util.find_spec(m) is not None for m in ("gcsfs", "tensorflow"))


def write_bytes(p: PathLike, data: bytes) -> epath.Path:
    """Write a whole file at once (creating its folder), never leaving half a file behind."""
    p = path(p)
    if is_remote(p):
        p.write_bytes(data)  # an object appears only once its upload is complete
        return p
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{uuid.uuid4().hex}")  # unique per writer, also per thread
    try:
        tmp.write_bytes(data)
        os.replace(tmp, p)
    except BaseException:  # a full disk: leave no partial temporary file behind
        tmp.unlink(missing_ok=True)
        raise
    return p


def write_text(p: PathLike, text: str) -> epath.Path:
    return write_bytes(p, text.encode("utf-8"))


def append_text(p: PathLike, text: str) -> None:
    """Append to a text file. Bucket objects cannot grow: there the file is rewritten whole,
    which is fine for logs of a few thousand lines (metrics.jsonl)."""
    p = path(p)
    if not is_remote(p):
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "a", encoding="utf-8") as f:
            f.write(text)
        return
    old = p.read_bytes() if p.exists() else b""
    p.write_bytes(old + text.encode("utf-8"))


def write_json(p: PathLike, values: Any) -> epath.Path:
    return write_text(p, json.dumps(values, indent=1))


def read_json(p: PathLike) -> Any:
    return json.loads(path(p).read_text(encoding="utf-8"))


def save_npz(p: PathLike, **arrays: np.ndarray) -> epath.Path:
    """np.savez_compressed into one atomic write."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return write_bytes(p, buf.getvalue())


def load_npz(p: PathLike) -> dict[str, np.ndarray]:
    """Every array of an .npz file, read in one request."""
    with np.load(io.BytesIO(path(p).read_bytes())) as f:
        return {k: f[k] for k in f.files}


def save_image(p: PathLike, image, format: str = "PNG") -> epath.Path:
    """Write a PIL image (PNG by default) in one atomic write."""
    buf = io.BytesIO()
    image.save(buf, format=format)
    return write_bytes(p, buf.getvalue())


class UnreadableFileError(ValueError):
    """A file that exists but cannot be decoded (corrupt or not of the expected kind);
    `reason` is the decoder's part of the message."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


def read_image(p: PathLike, mode: str | None = None) -> np.ndarray:
    """A PNG/JPEG as a uint8 array (H, W) or (H, W, C), converted to PIL `mode` ('L', 'RGB')
    when given; one line naming the file if it is missing or cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    p = path(p)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"image {p} does not exist") from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert(mode) if mode else img.copy())
    except UnidentifiedImageError:
        reason = "not a format PIL knows"
    except Exception as e:  # noqa: BLE001  Pillow raises OSError, SyntaxError, ValueError, ...
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise UnreadableFileError(f"{p} is not a readable image ({reason})", reason)
