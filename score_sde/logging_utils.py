"""What a run writes for people: console lines, TensorBoard events (tensorboardX, no
TensorFlow), a metrics.jsonl log, progress reports, PNG image grids and a loss figure.

Everything here is a no-op off process 0, so callers need not check the process index.
In a terminal (or a notebook) progress is a tqdm bar and lines are printed through it; when
stderr is a file (SLURM .out, nohup) progress is one plain line every PROGRESS_EVERY_SECS
seconds (env SCORE_SDE_PROGRESS_SECS, flag --progress_every_secs), so no carriage return ever
tears a metric line.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from etils import epath

from score_sde import storage

METRICS_FILE = "metrics.jsonl"
PROGRESS_EVERY_SECS = float(os.environ.get("SCORE_SDE_PROGRESS_SECS", 60))


def is_main() -> bool:
    return jax.process_index() == 0


def interactive() -> bool:
    """Whether progress can be redrawn in place: stderr is a terminal, or a notebook runs us."""
    if sys.stderr.isatty():
        return True
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _bars_open() -> bool:
    from tqdm import tqdm

    return bool(getattr(tqdm, "_instances", None))


def say(message: str) -> None:
    """Print a line on process 0 (through the progress bar when one is drawn)."""
    if not is_main():
        return
    if _bars_open():
        from tqdm import tqdm

        tqdm.write(message, file=sys.stdout)
        sys.stdout.flush()
    else:
        print(message, flush=True)


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "",
             **kwargs) -> Any:
    """A tqdm progress bar on process 0 in a terminal, plain lines in a file; the bare
    iterable elsewhere. Both take `update(n)`, `close()` and iteration."""
    if is_main() and not interactive():
        return PlainProgress(iterable, total=total, desc=desc, initial=kwargs.get("initial", 0),
                             unit=kwargs.get("unit", "it"))
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not is_main(), dynamic_ncols=True,
                **kwargs)


class PlainProgress:
    """Progress for log files: one line every `every` seconds, e.g.
    `train: 1200/5000 step (24%), 3.51 step/s, ETA 18m03s`, on stderr."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None,
                 desc: str = "", initial: int = 0, unit: str = "it", every: float | None = None):
        self.iterable, self.desc, self.unit = iterable, desc, unit
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n = total, int(initial)
        self.every = PROGRESS_EVERY_SECS if every is None else float(every)
        self._last_time, self._last_n = time.monotonic(), self.n

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last_time >= self.every:
            rate = (self.n - self._last_n) / (now - self._last_time)
            self._last_time, self._last_n = now, self.n
            print(self.line(rate), file=sys.stderr, flush=True)

    def line(self, rate: float) -> str:
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        eta = ""
        if self.total and rate > 0:
            eta = f", ETA {_duration((self.total - self.n) / rate)}"
        return f"{self.desc}: {done} {self.unit}{pct}, {rate:.3g} {self.unit}/s{eta}"

    def close(self) -> None:
        pass


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class _DropLibraryRecords(logging.Filter):
    """Keeps absl log records except those of the given packages (their errors are reported
    once, as one line, by the code that calls them)."""

    def __init__(self, packages: tuple[str, ...]):
        super().__init__()
        self.packages = packages
        self.marks = tuple(f"{os.sep}{p}{os.sep}" for p in packages)

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(m in record.pathname for m in self.marks)


class _DropLibraryTasks(_DropLibraryRecords):
    """Drops asyncio's "Task/Future exception was never retrieved" when the task, its code or
    its error names one of the given packages (tensorstore's errors carry their spec)."""

    def filter(self, record: logging.LogRecord) -> bool:
        import traceback

        where = record.getMessage()
        if record.exc_info and record.exc_info[2] is not None:
            where += " ".join(f.filename for f in traceback.extract_tb(record.exc_info[2]))
        if record.exc_info and record.exc_info[1] is not None:
            where += str(record.exc_info[1])
        return not any(p in where for p in self.packages)


def quiet_library_logs(packages: tuple[str, ...] = ("orbax", "tensorstore")) -> None:
    """Silence what `packages` log about their own failures: orbax logs a failed background
    save or restore with hundreds of lines of tracebacks from several threads, and leaves
    asyncio tasks whose errors nobody retrieved. The caller reports the failure in one line.
    Idempotent."""
    import warnings

    from absl import logging as absl_logging

    for logger, kind in ((absl_logging.get_absl_logger(), _DropLibraryRecords),
                         (logging.getLogger("asyncio"), _DropLibraryTasks)):
        if not any(type(f) is kind for f in logger.filters):
            logger.addFilter(kind(packages))
    # the writes of a failed save that orbax abandoned, garbage-collected at exit
    warnings.filterwarnings("ignore", message=r"coroutine '.*' was never awaited",
                            category=RuntimeWarning)


class MetricWriter:
    """Scalars to TensorBoard (workdir/tensorboard), workdir/metrics.jsonl and the console."""

    def __init__(self, workdir: str | os.PathLike, console: bool = True):
        self.workdir = epath.Path(workdir)
        self.console = console
        self._tb = None
        if is_main():
            self.workdir.mkdir(parents=True, exist_ok=True)
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.workdir / "tensorboard"))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not is_main():
            return
        values = {k: float(v) for k, v in values.items()}
        for k, v in values.items():
            self._tb.add_scalar(k, v, step)
        path = self.workdir / METRICS_FILE
        try:  # gs:// objects cannot be appended to: storage rewrites them whole
            storage.append_text(path, json.dumps({"step": int(step), **values}) + "\n")
        except OSError as e:  # a full disk: name the file
            raise _naming(e, path) from e
        if self.console:
            say(f"step {step}: " + ", ".join(f"{k}={v:.5g}" for k, v in values.items()))

    def image(self, step: int, tag: str, grid: np.ndarray) -> None:
        if is_main():
            self._tb.add_image(tag, grid, step, dataformats="HWC")

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Flush and close; a failure (a full disk) raises, unless an error that stops the run
        is already on its way (called from a `finally`): that one is the message."""
        if self._tb is None:
            return
        tb, self._tb, already = self._tb, None, sys.exc_info()[1]
        try:
            tb.close()
        except OSError as e:  # stop tensorboardX retrying (and failing) at exit
            events = getattr(getattr(tb, "file_writer", None), "event_writer", None)
            worker = getattr(events, "_worker", None)
            if worker is not None:
                worker.stop()
            if events is not None:
                events._closed = True
            if already is None:
                raise _naming(e, self.workdir / "tensorboard") from e


def _naming(error: OSError, path: epath.Path) -> OSError:
    """The OSError with the path it concerns (a failed write on a full disk names none)."""
    if error.filename or not error.strerror:
        return error
    return type(error)(error.errno, error.strerror, str(path))


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] -> uint8, rounded and clipped."""
    return np.clip(np.asarray(images, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, padding: int = 2, nrow: int | None = None) -> np.ndarray:
    """(N, H, W, C) uint8 or [0, 1] floats -> one (rows*H', cols*W', C) uint8 grid; clips
    (N, T, H, W, C) -> one row per clip, its frames left to right."""
    images = np.asarray(images)
    if images.ndim == 5:
        n, frames = images.shape[:2]
        return image_grid(images.reshape(n * frames, *images.shape[2:]), padding, frames)
    if images.dtype != np.uint8:
        images = to_uint8(images)
    n, h, w, c = images.shape
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + padding) + padding, cols * (w + padding) + padding, c), np.uint8)
    for i, img in enumerate(images):
        r, k = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + k * (w + padding)
        grid[top:top + h, left:left + w] = img
    return grid


def save_image_grid(path: str | os.PathLike, images: np.ndarray,
                    scale: int | None = None) -> Path | epath.Path:
    """Write a PNG grid of images (upscaled with nearest neighbour for tiny images)."""
    from PIL import Image

    grid = image_grid(images)
    scale = scale or max(1, 256 // max(grid.shape[:2]))
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return _write_atomically(epath.Path(path), buffer.getvalue())


def _write_atomically(path: epath.Path, data: bytes) -> Path | epath.Path:
    """Write a whole file so a reader never sees half of it (local: temporary name + rename;
    gs://: one upload). Returns a pathlib.Path for a local file (what callers stat and
    compare), else the URI."""
    storage.write_bytes(path, data)
    return path if "://" in str(path) else Path(path)


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, float]]:
    """The metrics.jsonl records; a later record for the same step (after a restart) wins."""
    path = epath.Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    by_step: dict[tuple[int, tuple[str, ...]], dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            by_step[(rec["step"], tuple(sorted(rec)))] = rec
    return sorted(by_step.values(), key=lambda r: r["step"])


def plot_losses(workdir: str | os.PathLike, path: str | os.PathLike | None = None
                ) -> Path | epath.Path | None:
    """A PNG of training (and evaluation) loss against step, from metrics.jsonl."""
    records = read_metrics(workdir)
    keys = [k for k in ("train/loss", "eval/loss") if any(k in r for r in records)]
    if not keys or not is_main():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for k in keys:
        pts = [(r["step"], r[k]) for r in records if k in r]
        ax.plot(*zip(*pts, strict=True), label=k, marker="." if len(pts) < 50 else None)
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return _write_atomically(epath.Path(path or epath.Path(workdir) / "loss.png"),
                             buffer.getvalue())
