"""Samples on disk: per-sample noise, the shard layout of N samples, and the shard files.

The library floor under the drivers that write samples (generate: `--mode sample`; evaluate:
eval mode's sample rounds), so neither imports the other.

  IndexedSampler  jitted `(params, indices) -> images` where sample i's noise is drawn from
                  fold_in(key, i) alone: the samples do not depend on the batch size, the
                  device count or the number of hosts (up to float rounding)
  ShardLayout     N samples in global batches of B over P hosts: round r, host p writes the
                  indices [rB + pB/P, rB + (p+1)B/P) that are < N (the last shards are short)
  write_shard     one shard as an .npz ('samples' uint8 NHWC, or (N, T, H, W, C) for clips,
                  'indices', 'labels') and/or one PNG per sample (a clip: its frame strip),
                  each file written whole (score_sde.storage) with fixed bytes
  local_rows      this process's rows of an array sharded on its leading axis
"""

from __future__ import annotations

import dataclasses
import io
import zipfile
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
from etils.epath import Path

from score_sde import parallel, storage
from score_sde.data import get_data_inverse_scaler
from score_sde.inference import guidance_scale, sampling_fn
from score_sde.sampling import class_labels_from_config, get_sampler_from_config

FORMATS = ("npz", "png", "both")
NOISE_STREAM = 6  # sample i's key: fold_in(PRNGKey(config.seed + NOISE_STREAM), i)


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of an array sharded on its leading axis, in global order."""
    shards = {s.index[0].start or 0: np.asarray(s.data) for s in x.addressable_shards}
    return np.concatenate([shards[k] for k in sorted(shards)])


def label_table(config) -> np.ndarray | None:
    """Sample i's class is table[i % len(table)]: config.sampling.class_labels, or every class
    in turn (balanced); None for an unconditional model."""
    num_classes = int(config.model.get("num_classes", 0) or 0)
    if num_classes <= 0:
        return None
    period = len(tuple(config.sampling.get("class_labels", ()) or ())) or num_classes
    return np.asarray(class_labels_from_config(config, period))


class IndexedSampler:
    """`(params, local indices) -> (images in [0, 1] sharded on the mesh, nfe)`.

    Sample i is drawn by config.sampling's sampler (and guidance) as a batch of one, with the
    key fold_in(PRNGKey(seed + 6), i) and class label_table[i % len]; a vmap over the batch
    runs them together. `indices` are this process's rows of the global batch. data_stats:
    the run's stored data statistics (score_sde.data_stats), whose spread places the grid.
    """

    def __init__(self, config, sde, eps: float, model, mesh, batch_size: int,
                 data_stats: dict | None = None):
        self.batch_size, self.mesh = int(batch_size), mesh
        parallel.check_batch_size(self.batch_size, "config.sampling.batch_size", mesh)
        from score_sde import models

        sample = get_sampler_from_config(config, sde, models.input_shape(config, 1), eps,
                                         data_stats=data_stats)
        table = label_table(config)
        scale, inverse = guidance_scale(config), get_data_inverse_scaler(config)
        key = jax.random.PRNGKey(int(config.seed) + NOISE_STREAM)

        def one(params, index):
            labels = None if table is None else jnp.asarray(table)[index % len(table)][None]
            x, nfe = sample(jax.random.fold_in(key, index),
                            sampling_fn(config, sde, model, params, labels, scale))
            return jnp.clip(inverse(x[0]), 0.0, 1.0), nfe

        def run(params, indices):
            images, nfe = jax.vmap(one, in_axes=(None, 0))(params, indices)
            return images, jnp.max(nfe)

        rep, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
        self._run = jax.jit(run, in_shardings=(rep, data), out_shardings=(data, rep))

    def __call__(self, params, indices: np.ndarray) -> tuple[jax.Array, int]:
        sharded = parallel.shard_batch({"i": np.asarray(indices, np.int32)}, self.mesh)["i"]
        images, nfe = self._run(params, sharded)
        return images, int(jax.device_get(nfe))


@dataclasses.dataclass(frozen=True)
class ShardLayout:
    """Which samples each host writes in each round, and the files that hold them."""

    num_samples: int
    batch_size: int  # global, all hosts together
    process_count: int = 1

    def __post_init__(self):
        if self.num_samples <= 0:
            raise ValueError(f"config.sampling.num_samples={self.num_samples}; give a positive "
                             "number of samples")
        if self.batch_size <= 0 or self.batch_size % self.process_count:
            raise ValueError(f"config.sampling.batch_size={self.batch_size} must be a positive "
                             f"multiple of the number of processes ({self.process_count})")

    @property
    def rounds(self) -> int:
        return -(-self.num_samples // self.batch_size)

    @property
    def local_batch(self) -> int:
        return self.batch_size // self.process_count

    @property
    def width(self) -> int:
        """Digits of the zero-padded sample numbers in file names."""
        return max(6, len(str(self.num_samples - 1)))

    def batch_indices(self, round_: int, process: int) -> np.ndarray:
        """The `local_batch` indices a host computes in a round (past N: padding, not kept)."""
        start = round_ * self.batch_size + process * self.local_batch
        return np.arange(start, start + self.local_batch)

    def shard(self, round_: int, process: int) -> np.ndarray:
        """The indices a host writes in a round: its batch indices below N (maybe none)."""
        indices = self.batch_indices(round_, process)
        return indices[indices < self.num_samples]

    def npz_name(self, first: int) -> str:
        return f"samples_{first:0{self.width}d}.npz"

    def png_name(self, index: int, label: int | None) -> str:
        name = f"{index:0{self.width}d}.png"
        return f"png/{name}" if label is None else f"png/{label}/{name}"

    def files(self, indices: np.ndarray, labels: np.ndarray | None, fmt: str) -> list[str]:
        """The files (relative to the output folder) of the shard holding `indices`."""
        out = [self.npz_name(int(indices[0]))] if fmt in ("npz", "both") else []
        if fmt in ("png", "both"):
            out += [self.png_name(int(i), None if labels is None else int(labels[k]))
                    for k, i in enumerate(indices)]
        return out


def labels_of(table: np.ndarray | None, indices: np.ndarray) -> np.ndarray | None:
    return None if table is None else table[np.asarray(indices) % len(table)]


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """An .npz (deflated) whose bytes depend only on the arrays: no timestamps, so a shard
    written again after a restart is the identical file."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(value), allow_pickle=False)
    return buf.getvalue()


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 (H, W, C) image as PNG bytes (grey for C = 1); a clip (T, H, W, C) as the strip
    of its frames side by side."""
    from PIL import Image

    if image.ndim == 4:
        image = np.concatenate(list(image), axis=1)
    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    return buf.getvalue()


def write_shard(out: Path, layout: ShardLayout, fmt: str, images: np.ndarray,
                indices: np.ndarray, labels: np.ndarray | None) -> None:
    """Write one shard's files; each appears whole or not at all (PNGs in parallel threads,
    which matters for buckets). The .npz, when asked for, is written last."""
    if fmt in ("png", "both"):
        names = layout.files(indices, labels, "png")
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k: storage.write_bytes(out / names[k], png_bytes(images[k])),
                          range(len(names))))
    if fmt in ("npz", "both"):
        arrays = {"samples": images, "indices": np.asarray(indices, np.int64)}
        if labels is not None:
            arrays["labels"] = np.asarray(labels, np.int32)
        storage.write_bytes(out / layout.npz_name(int(indices[0])), npz_bytes(**arrays))


def existing_files(out: Path) -> set[str]:
    """The shard files already in an output folder (one listing, also on buckets)."""
    found = {p.name for p in out.glob("samples_*.npz")}
    png = out / "png"
    if png.is_dir():
        found |= {str(p.relative_to(out)) for pattern in ("*.png", "*/*.png")
                  for p in png.glob(pattern)}
    return found
