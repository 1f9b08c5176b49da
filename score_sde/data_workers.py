"""Compatibility module: the data worker processes moved to `score_sde.data.workers`.

Its public names are re-exported here, so `from score_sde.data_workers import WorkerIterator`
keeps working; the former private helpers raise an ImportError that names their new place.
"""

from score_sde.data.workers import Batch, SharedArray, SharedImages, SharedView, WorkerIterator

__all__ = ["Batch", "SharedArray", "SharedImages", "SharedView", "WorkerIterator"]

_PRIVATE = ("_STOP_SIGNALS", "_stop_signals_blocked", "_shut_down", "_worker_main", "_portable")


def __getattr__(name: str):
    if name in _PRIVATE:
        raise ImportError(f"score_sde.data_workers.{name} moved to score_sde.data.workers.{name}")
    raise AttributeError(f"module 'score_sde.data_workers' has no attribute {name!r}")
