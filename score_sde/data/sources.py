"""Random-access sources of integer images: the protocol, in-memory arrays and subsets of them.

A source maps an index to one example `{'image': int (h, w, c), 'label'?: int}`; what turns
examples into batches is `score_sde.data.pipeline.Pipeline`. The errors a source raises for a
missing dataset or an undecodable image live here, beside the protocol they belong to.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np

Batch = dict[str, np.ndarray]
SPLITS = ("train", "test")


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


def in_memory_source(source: Source) -> bool:
    """True for arrays in memory (digits, generated samples), sources that say so with an
    `in_memory` attribute (clips made on the fly), and subsets of them."""
    if isinstance(source, SubsetSource):
        return in_memory_source(source.source)
    return isinstance(source, ArraySource) or bool(getattr(source, "in_memory", False))


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
