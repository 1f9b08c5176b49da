"""`Pipeline`: a source's examples as deterministic batches, one slice per host.

The batch of a step depends only on (seed, step), never on what was read before, so a resumed
run reads exactly the batches an uninterrupted run would, and each host reads only its own
examples.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from score_sde.data.prefetch import grain_iterate, thread_prefetch
from score_sde.data.sources import Batch, CorruptImageError, Source
from score_sde.data.transforms import augment

CORRUPT_POLICIES = ("error", "skip")


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
        self._check_fields()
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

    def _check_fields(self) -> None:
        if self.global_batch % self.process_count:
            raise ValueError(f"batch size {self.global_batch} must divide by the number of "
                             f"processes ({self.process_count})")
        if self.corrupt not in CORRUPT_POLICIES:
            raise ValueError(f"config.data.corrupt_images={self.corrupt!r}; choose one of "
                             f"{CORRUPT_POLICIES}")

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

    # ------------------------------------------------------------------------- example order

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

    def positions(self, step: int) -> range:
        """The positions of the example sequence in this process's slice of batch `step`."""
        start = step * self.global_batch + self.process_index * self.local_batch
        return range(start, start + self.local_batch)

    # ------------------------------------------------------------------------- examples

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
        return self._substitute(position, skipped)

    def _substitute(self, position: int, skipped: list[str]) -> tuple[dict[str, Any], int]:
        """A readable example of the real source in place of a corrupt one, drawn from (seed,
        position): a few random draws, then the image known to decode."""
        draws = np.random.default_rng([self.seed, 2, position]).integers(len(self.source),
                                                                         size=16)
        for index in draws:
            try:
                return self.source[int(index)], self.source.levels
            except CorruptImageError as e:
                skipped.append(e.path)
        return self.source[getattr(self.source, "readable", 0)], self.source.levels

    def _example(self, position: int, skipped: list[str]) -> dict[str, Any]:
        ex, levels = self._read(position, skipped)
        x = self.geometry(np.asarray(ex["image"], np.float32) / (levels - 1))
        x = augment(x, levels, np.random.default_rng([self.seed, 1, position]),
                    random_flip=self.random_flip, dequantize=self.dequantize)
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

    # ------------------------------------------------------------------------- batches

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
        """This process's slice of global batch `step`: 'image' float32 (B, H, W, C) in [0, 1],
        'label' int32 (B,) if the source has labels, 'mask' bool (B,) with pad_last."""
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
            from score_sde.data.workers import WorkerIterator

            return WorkerIterator(self.compute_batch, start, stop, self.num_workers,
                                  report=report_skipped)
        if self.num_threads > 0 and stop is not None:
            return grain_iterate(self.batch, start, stop, self.num_threads, prefetch)
        return thread_prefetch(self.batch, start, stop, prefetch)


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
