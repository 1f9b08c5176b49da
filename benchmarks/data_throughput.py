"""Image-folder loading throughput: today's thread loader against worker processes.

Generates an image folder of PNGs with random content (smooth random colour fields plus pixel
noise, so they compress about as much as photographs) at 32, 256 and 1024 px and reads
training batches (random flip, the published crop/resize geometry) with

  threads      data.num_workers = 0: the in-process loader as on main (grain's thread pool of
               data.num_threads = 8 computing whole batches, 2 batches prefetched, which
               lets only 2 threads work at once, as grain warns)
  workers=N    data.num_workers = N spawned worker processes, one batch ahead each
  grain_mp=N   for comparison: the same batches through grain's own process prefetch
               (MapDataset.map(pipeline.batch).mp_prefetch, N workers, per-worker buffer 1),
               which this package does not use: its workers import JAX (through grain) and
               each buffers up to 4 batches on the way (worker, queue, thread, thread buffer)

reporting images/s over the batches after the first (the first batch, whose time includes
starting the workers, is reported apart), the CPU time spent per image (main process and
workers together: what the loader costs, whatever else runs on the machine; in brackets the
main process's share, which no number of workers takes off it), the peak
resident memory of each worker process (VmHWM) and the machine's load averages before and
after (images/s are only as good as the machine was quiet).
Results: benchmarks/results/<tag>.json and .md.

    python benchmarks/data_throughput.py --repeats 2            # about 3 minutes on 2 cores
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

from score_sde.data import Geometry, ImageFolder, Pipeline  # noqa: E402

# per size: (batch size, images in the folder, batches timed after the first). 20 batches:
# the CPU time of the batches prefetched before and after the timed span stays a small error.
PLAN = {32: (128, 1024, 20), 256: (32, 128, 20), 1024: (4, 24, 20)}


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


def grain_mp(ds: Pipeline, stop: int, workers: int):
    """pipeline.batch(0..stop-1) through grain's mp_prefetch (the comparison row)."""
    import grain
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain's workers read an absl flag
        flags.FLAGS.mark_as_parsed()
    it = iter(grain.MapDataset.range(0, stop).map(ds.batch)
              .to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
              .mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                        per_worker_buffer_size=1)))
    return it


def spawned_children() -> list[int]:
    import psutil

    return [c.pid for c in psutil.Process().children()
            if "spawn_main" in " ".join(c.cmdline())]


def measure(files: list[str], size: int, batch: int, steps: int, workers: int,
            grain: bool = False) -> dict:
    source = ImageFolder(tuple(files), 3)
    ds = Pipeline(source, global_batch=batch, seed=0, shuffle=True,
                  geometry=Geometry("crop", size), random_flip=True,
                  num_threads=8, num_workers=0 if grain else workers)
    t0 = time.perf_counter()
    it = grain_mp(ds, steps + 1, workers) if grain else ds.iterate(0, steps + 1)
    first = next(it)
    pids = [os.getpid(), *(spawned_children() if grain else it.pids if workers else [])]
    t1, cpu1, main1 = time.perf_counter(), [cpu_seconds(p) for p in pids], time.process_time()
    for _ in range(steps):
        assert next(it)["image"].shape == first["image"].shape
    t2, cpu2, main2 = time.perf_counter(), [cpu_seconds(p) for p in pids], time.process_time()
    rss = [peak_rss_mb(p) for p in pids[1:]]
    if workers:
        it.close()
    images = steps * batch
    name = f"grain_mp={workers}" if grain else f"workers={workers}" if workers else "threads"
    out = {"loader": name, "size": size,
           "batch": batch, "images_per_s": round(images / (t2 - t1), 1),
           "cpu_ms_per_image": round(1000 * (sum(cpu2) - sum(cpu1)) / images, 2),
           "main_ms_per_image": round(1000 * (main2 - main1) / images, 2),
           "first_batch_s": round(t1 - t0, 2)}
    if workers:
        out["worker_peak_rss_mb"] = round(max(r for r in rss if r is not None), 1)
        out["batch_mb"] = round(first["image"].nbytes / 2**20, 1)
    return out


def combine(tries: list[dict]) -> dict:
    """One row from repeated runs: best images/s, median CPU and start-up times, max RSS."""
    row = dict(tries[0], runs=len(tries))
    row["images_per_s"] = max(t["images_per_s"] for t in tries)
    for key in ("cpu_ms_per_image", "main_ms_per_image", "first_batch_s"):
        row[key] = round(float(np.median([t[key] for t in tries])), 2)
    if "worker_peak_rss_mb" in row:
        row["worker_peak_rss_mb"] = max(t["worker_peak_rss_mb"] for t in tries)
    row["images_per_s_runs"] = [t["images_per_s"] for t in tries]
    return row


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"Image-folder loading (cores: {meta['cores']}; load averages before "
             f"{meta['load_before']}, after {meta['load_after']}; best images/s and median "
             f"times of {meta['repeats']} interleaved runs)", "",
             "| px | batch | loader | images/s | CPU ms / image (main process) "
             "| first batch (s) | peak RSS per worker (MB) | one batch (MB) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['batch']} | {r['loader']} | {r['images_per_s']} | "
                     f"{r['cpu_ms_per_image']} ({r['main_ms_per_image']}) | "
                     f"{r['first_batch_s']} | "
                     f"{r.get('worker_peak_rss_mb', '')} | "
                     f"{r.get('batch_mb', '')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32,256,1024")
    parser.add_argument("--workers", default=None,
                        help="worker counts (default: 1, 2, 4, ... up to the usable cores)")
    parser.add_argument("--grain", default="2",
                        help="worker counts of the grain mp_prefetch comparison ('' for none)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each loader, interleaved; the table keeps the best "
                             "images/s and the median CPU time and first-batch time")
    parser.add_argument("--tag", default="data_throughput")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    counts = ([int(w) for w in args.workers.split(",")] if args.workers else
              [w for w in (1, 2, 4, 8, 16, 32) if w <= max(cores, 2)])
    meta = {"cores": cores, "load_before": loadavg(), "worker_counts": counts,
            "repeats": args.repeats, "plan": {str(k): v for k, v in PLAN.items()}}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in [int(s) for s in args.sizes.split(",")]:
            batch, n, steps = PLAN[size]
            files = make_folder(Path(tmp), size, n)
            runs = [(w, False) for w in [0, *counts]]
            runs += [(int(w), True) for w in args.grain.split(",") if w]
            tries = {run: [] for run in runs}
            for _ in range(args.repeats):  # interleaved: a load change hits every loader
                for workers, grain in runs:
                    tries[(workers, grain)].append(measure(files, size, batch, steps, workers,
                                                           grain))
                    print(json.dumps(tries[(workers, grain)][-1]), flush=True)
            rows += [combine(t) for t in tries.values()]
    meta["load_after"] = loadavg()
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (out / f"{args.tag}.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
