"""Worker processes that compute a pipeline's batches: spawned, bounded, in order.

`WorkerIterator(compute, start, stop, num_workers)` is what `Pipeline.iterate` returns when
config.data.num_workers > 0. Workers are spawned rather than forked, so none inherits JAX's
threads, locks or devices, and none imports JAX (grain's own process prefetch would: grain
imports JAX). Each worker holds at most one batch. The images come back through one reused
shared-memory block per worker, which costs the main process one copy. Workers ignore
SIGINT/SIGTERM, so the main process decides when to stop, e.g. after a pre-emption checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import multiprocessing.util
import os
import signal
import traceback
from collections.abc import Callable, Iterator

import numpy as np

from score_sde.data.sources import Batch


class WorkerIterator(Iterator[Batch]):
    """`compute(s)[0]` for s = start, start+1, ..., computed in `num_workers` worker processes.

    `compute(step, out) -> (batch, notes)` must pickle (e.g. `Pipeline.compute_batch`): each
    worker receives it once. `out(shape, dtype)` gives it the array to stack the batch's
    images into; `notes` (e.g. skipped files) are handed to `report` in this process.

    Workers are *spawned* (fresh interpreters: nothing of JAX's threads, locks or devices is
    inherited) and import what `compute` needs (numpy, Pillow, etils and score_sde.data for
    a pipeline), never JAX. Step s goes to worker (s - start) % num_workers and each
    worker holds at most one batch (the one it is computing or has finished), so host memory
    is bounded by one batch per worker while the batches come back in order.

    Workers ignore SIGINT/SIGTERM (the main process decides when to stop, e.g. after a
    pre-emption checkpoint) and exit when `close()` is called, when this iterator is garbage
    collected or the interpreter exits, or when the main process dies (their pipe closes).
    An error in a worker (a corrupt image under the 'error' policy) is re-raised here with its
    own type and message.
    """

    def __init__(self, compute: Callable, start: int, stop: int | None, num_workers: int,
                 report: Callable[[list], None] = lambda notes: None):
        self._start, self._next, self._stop, self._report = start, start, stop, report
        ctx = multiprocessing.get_context("spawn")
        self._conns, self._procs = [], []
        self._views = [SharedView() for _ in range(num_workers)]
        # multiprocessing.util.Finalize (not weakref.finalize): at interpreter exit it runs
        # before multiprocessing terminates daemon children, whom SIGTERM does not stop.
        self._finalizer = multiprocessing.util.Finalize(
            self, _shut_down, args=(self._conns, self._procs, self._views), exitpriority=10)
        for w in range(num_workers):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(compute, theirs), daemon=True,
                               name=f"score_sde-data-{w}")
            try:
                with _stop_signals_blocked():  # the worker starts deaf to them: see _worker_main
                    proc.start()
            except Exception as e:  # e.g. a source that cannot be pickled
                self.close()
                raise ValueError(f"config.data.num_workers={num_workers}: the dataset cannot be "
                                 f"sent to worker processes ({type(e).__name__}: {e}); set "
                                 "--config.data.num_workers=0") from e
            theirs.close()
            self._conns.append(ours)
            self._procs.append(proc)
        for w in range(num_workers):
            self._submit(w, start + w)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def _submit(self, worker: int, step: int) -> None:
        if self._stop is None or step < self._stop:
            self._conns[worker].send(step)

    def __next__(self) -> Batch:
        step = self._next
        if not self._finalizer.still_active() or (self._stop is not None
                                                   and step >= self._stop):
            self.close()
            raise StopIteration
        worker = (step - self._start) % len(self._conns)
        try:
            kind, payload, notes = self._conns[worker].recv()
        except (EOFError, OSError):
            proc = self._procs[worker]
            proc.join(5)
            self.close()
            raise RuntimeError(
                f"data worker {worker} (pid {proc.pid}) stopped with exit code {proc.exitcode}; "
                "its error, if any, is printed above. A script that reads with workers needs "
                "`if __name__ == '__main__':` around its main code; a worker killed for memory "
                "(exit code -9) needs a lower config.data.num_workers") from None
        self._report(notes)
        if kind == "error":
            self.close()
            raise payload
        shared = payload["image"]  # copied out before the worker may overwrite it
        payload["image"] = self._views[worker].view(shared).copy()
        self._next = step + 1
        self._submit(worker, step + len(self._conns))
        return payload

    def close(self) -> None:
        """Stop the workers and reap them (idempotent)."""
        self._finalizer()


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _stop_signals_blocked():
    """Block SIGINT/SIGTERM in this thread meanwhile; a process started here inherits it."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX
        yield
        return
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()  # its first start would unblock them on its way out
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _shut_down(conns: list, procs: list, views: list) -> None:
    for view in views:
        view.close()
    for conn in conns:  # a worker waiting on its pipe (or writing to it) sees it close
        conn.close()
    for proc in procs:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join()


def _worker_main(compute: Callable, conn) -> None:
    """Worker loop: receive a step, send ('ok', batch, notes) or ('error', exception, []).

    The batch's images travel through the worker's shared-memory block (`SharedImages`), the
    rest (labels, mask, the notes) through the pipe.
    """
    for sig in _STOP_SIGNALS:  # ignored, then unblocked: one sent at start-up is dropped too
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    images = SharedImages()
    try:
        while True:
            step = conn.recv()
            try:
                batch, notes = compute(step, out=images.array)
                message = ("ok", {**batch, "image": images.describe()}, notes)
                del batch  # no view of the block may outlive its reuse
            except Exception as e:  # noqa: BLE001  (re-raised in the main process)
                e.add_note(f"(in data worker process {os.getpid()}, step {step}:)\n"
                           + "".join(traceback.format_exception(e)))
                message = ("error", _portable(e.with_traceback(None)), [])
            conn.send(message)
            del message
    except (EOFError, OSError):  # the main process closed the pipe or died
        return
    finally:
        images.release()


@dataclasses.dataclass(frozen=True)
class SharedArray:
    """Where a worker left an array: shared-memory block name, shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str


class SharedImages:
    """A worker's shared-memory block for the images of its one finished batch.

    The worker writes batch s into it only after the main process has asked for the next
    step, i.e. after it has copied batch s - num_workers out, so one block per worker serves
    the whole run (created on the first batch, unlinked when the worker exits). Images
    through shared memory cost the main process one copy, instead of reading and unpickling
    them from a pipe.
    """

    def __init__(self):
        self._shm = None
        self._last: SharedArray | None = None

    def array(self, shape: tuple, dtype: np.dtype) -> np.ndarray:
        from multiprocessing import shared_memory

        nbytes = max(int(np.prod(shape)) * np.dtype(dtype).itemsize, 1)
        if self._shm is None or self._shm.size < nbytes:
            self.release()
            self._shm = shared_memory.SharedMemory(create=True, size=nbytes)
        self._last = SharedArray(self._shm.name, tuple(shape), np.dtype(dtype).str)
        return np.ndarray(shape, dtype, buffer=self._shm.buf)

    def describe(self) -> SharedArray:
        return self._last

    def release(self) -> None:
        if self._shm is not None:
            try:
                self._shm.close()
            except BufferError:  # a view is still alive: the mapping goes with the process
                pass
            self._shm.unlink()
            self._shm = None


class SharedView:
    """The main process's attachment to one worker's block (re-attached if it changes)."""

    def __init__(self):
        self._shm = None

    def view(self, ref: SharedArray) -> np.ndarray:
        from multiprocessing import shared_memory

        if self._shm is None or self._shm.name != ref.name:
            self.close()
            self._shm = shared_memory.SharedMemory(name=ref.name)
        return np.ndarray(ref.shape, np.dtype(ref.dtype), buffer=self._shm.buf)

    def close(self) -> None:
        if self._shm is not None:
            self._shm.close()
            self._shm = None


def _portable(e: Exception) -> Exception:
    """The exception itself if it pickles, else a RuntimeError with its type, text and notes."""
    import pickle

    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001
        out = RuntimeError(f"in a data worker: {type(e).__name__}: {e}")
        for note in getattr(e, "__notes__", []):
            out.add_note(note)
        return out
