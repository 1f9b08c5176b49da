"""The training data's statistics, stored beside a run's checkpoints: workdir/data_stats.json.

A training run measures, when it starts, the mean and the spread of its training data as the
network sees them (after config.data's scaler: [-1, 1] when centered), and writes them in one
atomic write (score_sde.storage), like the grid files beside checkpoints:

  format   "score_sde data statistics", version 1
  mean     the mean over every coordinate of the scaled data
  spread   sqrt(mean per-coordinate variance) of the scaled data: the samplers' data_scale
  examples, dim   how many training examples were measured, and their size

Samplers built from a run's config take `spread` as their data_scale when the config gives
no data range (sampling.from_config.config_data_scale); an image config's range (1 for
[-1, 1], 0.5 for [0, 1]) comes first, as it measured better on the trained digits model. The
analytic first step's 'auto' rule reads mean and spread (sampling.first_step).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from score_sde import storage

FILE = "data_stats.json"
FORMAT, VERSION = "score_sde data statistics", 1
EXAMPLES = 2048  # training examples measured (at least one batch)


def measure(images, scaler) -> dict[str, Any]:
    """The statistics of a stack of training examples (N, ...) in [0, 1], after `scaler`."""
    x = np.asarray(scaler(np.asarray(images, np.float32)), np.float64)
    x = x.reshape(x.shape[0], -1)
    if x.shape[0] < 2:
        raise ValueError(f"data statistics need at least 2 examples, got {x.shape[0]}")
    return {"format": FORMAT, "version": VERSION, "mean": float(x.mean()),
            "spread": float(np.sqrt(x.var(axis=0, ddof=1).mean())),
            "examples": int(x.shape[0]), "dim": int(x.shape[1])}


def measure_dataset(dataset, scaler, examples: int = EXAMPLES) -> dict[str, Any]:
    """`measure` of the first batches of a training pipeline (`dataset.batch(step)`, 'image'
    in [0, 1]) until `examples` examples (at least one batch)."""
    images, n, step = [], 0, 0
    while n < examples:
        batch = np.asarray(dataset.batch(step)["image"])
        images.append(batch)
        n, step = n + len(batch), step + 1
        if dataset.num_batches is not None and step >= dataset.num_batches:
            break
    return measure(np.concatenate(images)[:max(examples, len(images[0]))], scaler)


def record(workdir: str | os.PathLike, stats: dict[str, Any]) -> None:
    """Write workdir/data_stats.json in one atomic write."""
    storage.write_json(storage.path(workdir) / FILE, stats)


def load(workdir: str | os.PathLike | None) -> dict[str, Any] | None:
    """workdir/data_stats.json, or None where there is none (a run from before it existed);
    a file of another format is a ValueError."""
    if workdir is None:
        return None
    p = storage.path(workdir) / FILE
    if not p.exists():
        return None
    stats = storage.read_json(p)
    if stats.get("format") != FORMAT or stats.get("version") != VERSION:
        raise ValueError(f"{p} is not a {FORMAT!r} file of version {VERSION}: "
                         f"format={stats.get('format')!r}, version={stats.get('version')!r}")
    return stats
