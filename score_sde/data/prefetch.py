"""Reading a pipeline's batches ahead in this process: grain's threads, or one daemon thread.

The in-process alternatives to the worker processes of `score_sde.data.workers`: in-memory
data (digits) and `config.data.num_workers = 0` read here.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

from score_sde.data.sources import Batch


def grain_iterate(fn: Callable[[int], Batch], start: int, stop: int, threads: int,
                  prefetch: int) -> Iterator[Batch]:
    """fn(start), ..., fn(stop - 1) computed by `threads` grain threads, `prefetch` ahead."""
    import grain

    ds = grain.MapDataset.range(start, stop).map(fn)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                     prefetch_buffer_size=prefetch)))


def thread_prefetch(fn: Callable[[int], Batch], start: int, stop: int | None, depth: int
                    ) -> Iterator[Batch]:
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
