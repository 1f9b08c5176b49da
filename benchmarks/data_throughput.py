"""Image-folder loading throughput: today's thread loader against worker processes.

Generates an image folder of PNGs with random content (smooth random colour fields plus pixel
noise, so they compress about as much as photographs) at 32, 256 and 1024 px and reads
training batches (random flip, the published crop/resize geometry) with

  threads      data.num_workers = 0: the in-process loader as on main (grain's thread pool of
               data.num_threads = 8, 2 batches prefetched)
  workers=N    data.num_workers = N spawned worker processes, one batch ahead each

reporting images/s over the batches after the first (the first batch, whose time includes
starting the workers, is reported apart), the CPU time spent per image (main process and
workers together: what the loader costs, whatever else runs on the machine), the peak
resident memory of each worker process (VmHWM) and the machine's load averages before and
after (images/s are only as good as the machine was quiet).
Results: benchmarks/results/<tag>.json and .md.

    python benchmarks/data_throughput.py                       # about 2 minutes on 2 cores
    python benchmarks/data_throughput.py --sizes 32 --workers 1,2,4,8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from score_sde import datasets  # noqa: E402

# per size: (batch size, images in the folder, batches timed after the first)
PLAN = {32: (128, 1024, 30), 256: (32, 192, 12), 1024: (4, 24, 8)}


def make_folder(root: Path, size: int, n: int, seed: int = 0) -> list[str]:
    """n PNGs of size x size RGB: a smooth random colour field plus pixel noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = root / f"px{size}"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        x = np.asarray(coarse.resize((size, size), Image.BICUBIC), np.int16)
        x = np.clip(x + rng.integers(-12, 13, x.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.png"
        Image.fromarray(x).save(path)
        files.append(str(path))
    return files


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(files: list[str], size: int, batch: int, steps: int, workers: int) -> dict:
    source = datasets.ImageFolder(tuple(files), 3)
    ds = datasets.Pipeline(source, global_batch=batch, seed=0, shuffle=True,
                           geometry=datasets.Geometry("crop", size), random_flip=True,
                           num_threads=8, num_workers=workers)
    t0 = time.perf_counter()
    it = ds.iterate(0, steps + 1)
    first = next(it)
    pids = [os.getpid(), *(it.pids if workers else [])]
    t1, cpu1 = time.perf_counter(), sum(cpu_seconds(p) for p in pids)
    for _ in range(steps):
        assert next(it)["image"].shape == first["image"].shape
    t2, cpu2 = time.perf_counter(), sum(cpu_seconds(p) for p in pids)
    rss = [peak_rss_mb(p) for p in pids[1:]]
    if workers:
        it.close()
    images = steps * batch
    out = {"loader": f"workers={workers}" if workers else "threads", "size": size,
           "batch": batch, "images_per_s": round(images / (t2 - t1), 1),
           "cpu_ms_per_image": round(1000 * (cpu2 - cpu1) / images, 2),
           "first_batch_s": round(t1 - t0, 2)}
    if workers:
        out["worker_peak_rss_mb"] = round(max(r for r in rss if r is not None), 1)
        out["batch_mb"] = round(first["image"].nbytes / 2**20, 1)
    return out


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"Image-folder loading, images/s (cores: {meta['cores']}; load averages before "
             f"{meta['load_before']}, after {meta['load_after']})", "",
             "| px | batch | loader | images/s | CPU ms / image | first batch (s) "
             "| peak RSS per worker (MB) | one batch (MB) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['batch']} | {r['loader']} | {r['images_per_s']} | "
                     f"{r['cpu_ms_per_image']} | {r['first_batch_s']} | "
                     f"{r.get('worker_peak_rss_mb', '')} | "
                     f"{r.get('batch_mb', '')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32,256,1024")
    parser.add_argument("--workers", default=None,
                        help="worker counts (default: 1, 2, 4, ... up to the usable cores)")
    parser.add_argument("--tag", default="data_throughput")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    counts = ([int(w) for w in args.workers.split(",")] if args.workers else
              [w for w in (1, 2, 4, 8, 16, 32) if w <= max(cores, 2)])
    meta = {"cores": cores, "load_before": loadavg(), "worker_counts": counts}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in [int(s) for s in args.sizes.split(",")]:
            batch, n, steps = PLAN[size]
            files = make_folder(Path(tmp), size, n)
            for workers in [0, *counts]:
                rows.append(measure(files, size, batch, steps, workers))
                print(json.dumps(rows[-1]), flush=True)
    meta["load_after"] = loadavg()
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (out / f"{args.tag}.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
