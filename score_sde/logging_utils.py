"""What a run writes for people: console lines, TensorBoard events (tensorboardX, no
TensorFlow), a metrics.jsonl log, progress bars, PNG image grids and a loss figure.

Everything here is a no-op off process 0, so callers need not check the process index.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"


def is_main() -> bool:
    return jax.process_index() == 0


def say(message: str) -> None:
    """Print a line on process 0."""
    if is_main():
        print(message, flush=True)


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "",
             **kwargs) -> Any:
    """A tqdm progress bar on process 0; the bare iterable elsewhere."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not is_main(), dynamic_ncols=True,
                **kwargs)


class MetricWriter:
    """Scalars to TensorBoard (workdir/tensorboard), workdir/metrics.jsonl and the console."""

    def __init__(self, workdir: str | Path, console: bool = True):
        self.workdir = Path(workdir)
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
        with open(self.workdir / METRICS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": int(step), **values}) + "\n")
        if self.console:
            print(f"step {step}: " + ", ".join(f"{k}={v:.5g}" for k, v in values.items()),
                  flush=True)

    def image(self, step: int, tag: str, grid: np.ndarray) -> None:
        if is_main():
            self._tb.add_image(tag, grid, step, dataformats="HWC")

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] -> uint8, rounded and clipped."""
    return np.clip(np.asarray(images, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, padding: int = 2, nrow: int | None = None) -> np.ndarray:
    """(N, H, W, C) uint8 or [0, 1] floats -> one (rows*H', cols*W', C) uint8 grid."""
    images = np.asarray(images)
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


def save_image_grid(path: str | Path, images: np.ndarray, scale: int | None = None) -> Path:
    """Write a PNG grid of images (upscaled with nearest neighbour for tiny images)."""
    from PIL import Image

    grid = image_grid(images)
    scale = scale or max(1, 256 // max(grid.shape[:2]))
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    img.save(tmp)
    os.replace(tmp, path)
    return path


def read_metrics(workdir: str | Path) -> list[dict[str, float]]:
    """The metrics.jsonl records; a later record for the same step (after a restart) wins."""
    path = Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    by_step: dict[tuple[int, tuple[str, ...]], dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            by_step[(rec["step"], tuple(sorted(rec)))] = rec
    return sorted(by_step.values(), key=lambda r: r["step"])


def plot_losses(workdir: str | Path, path: str | Path | None = None) -> Path | None:
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
    path = Path(path or Path(workdir) / "loss.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
