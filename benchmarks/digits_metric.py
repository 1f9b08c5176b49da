"""Figures of the digits metric (score_sde.metrics.digits_quality): its floors, whether they
are unbiased, whether its second feature space discriminates, and the stored model samples.

  floors       every metric's floor (test split vs train-split draws) at N = 64, 512, 2048
  held_out     real held-out images against floors from the other half of the train split
               (a fresh random half per repeat): mean value / mean floor
  worse        known-worse sets (noised, blurred, a Gaussian fitted to the pixels, mode-
               dropped, quantised) against their floors; FD also in raw pixels (a linear space)
               and in the random space at other seeds
  grids        the 64 samples held losslessly by each PNG grid in benchmarks/results (8x8
               tiles, 2-pixel padding, upscaled 3x by nearest neighbour)

    python benchmarks/digits_metric.py --out benchmarks/results/digits_metric.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's package

from score_sde.metrics import digits_quality as dq  # noqa: E402
from score_sde.metrics.digits_classifier import digits_split  # noqa: E402
from score_sde.metrics.frechet import frechet_distance_from_features  # noqa: E402
from score_sde.metrics.random_features import random_conv_features  # noqa: E402


def _row(report: dq.DigitsQuality) -> dict:
    out = {"n": report.num_samples, "matched_size": report.matched_size, "sets": report.sets}
    for name, s in report.scores.items():
        out[name] = {"value": s.value, "floor": s.floor, "floor_std": s.floor_std,
                     "ratio": s.ratio, "z": (s.value - s.floor) / s.floor_std}
        if s.se is not None:
            out[name]["se"] = s.se
    return out


def floors(draws: int) -> list[dict]:
    """Each metric's floor at N = 64, 512, 2048 (the floors of digits_quality's defaults)."""
    rows = []
    for n in (64, 512, 2048):
        size, sets = dq.matched_size(n, len(digits_split()[0]))
        start = time.perf_counter()
        values = dq._one_blas_thread(dq._split_floors)(size, draws, 3, 0)
        rows.append({"n": n, "matched_size": size, "sets": sets, "draws": draws,
                     "seconds": round(time.perf_counter() - start, 2),
                     **{name: {"floor": m, "floor_std": s} for name, (m, s) in values.items()}})
    return rows


def held_out(n: int, repeats: int, draws: int) -> dict:
    """Mean value / mean floor (KID: mean value - mean floor) of real held-out draws."""
    ref, pool = dq._split_features()
    rng = np.random.default_rng(n)
    reports = []
    for i in range(repeats):
        perm = rng.permutation(len(pool["randconv"]))
        half = len(perm) // 2
        rows = rng.choice(perm[half:], n, replace=False)
        reports.append(dq.matched_quality({s: f[rows] for s, f in pool.items()}, ref.features,
                                          {s: f[perm[:half]] for s, f in pool.items()},
                                          floor_draws=draws, seed=i))
    out = {"n": n, "repeats": repeats, "matched_size": reports[0].matched_size,
           "sets": reports[0].sets}
    for name in dq.METRICS:
        values = np.array([r.scores[name].value for r in reports])
        fl = np.array([r.scores[name].floor for r in reports])
        kid = name.startswith("kid")
        excess = values - fl if kid else values / fl
        out[name] = {"bias": float(np.mean(values) - np.mean(fl)) if kid
                     else float(np.mean(values) / np.mean(fl) - 1),
                     "sd": float(np.std(excess)),
                     "se_of_mean": float(np.std(excess) / np.sqrt(repeats))}
    return out


def worse_sets(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    from scipy import ndimage

    x_tr, y_tr, _, _ = digits_split()
    real = x_tr[rng.choice(len(x_tr), n, replace=False)]
    flat = x_tr.reshape(len(x_tr), -1)
    gauss = rng.multivariate_normal(flat.mean(0), np.cov(flat, rowvar=False), n)

    def classes(k):
        pool = x_tr[y_tr < k]
        return pool[rng.choice(len(pool), n, replace=False)]

    return {"real (train draw)": real,
            "noise sigma 0.05": np.clip(real + 0.05 * rng.normal(size=real.shape), 0, 1),
            "noise sigma 0.1": np.clip(real + 0.1 * rng.normal(size=real.shape), 0, 1),
            "blur sigma 0.5 px": ndimage.gaussian_filter(real, (0, 0.5, 0.5, 0)),
            "Gaussian fit to pixels": np.clip(gauss, 0, 1).reshape(n, 8, 8, 1),
            "classes 0-4 only": classes(5),
            "classes 0-7 only": classes(8),
            "4 grey levels": np.round(real * 3) / 3}


def _other_spaces(images: np.ndarray, size: int, draws: int, seed: int) -> dict:
    """FD / floor in raw pixels and in the random space at seeds 1 and 2 (same draws)."""
    x_tr, _, x_te, _ = digits_split()
    spaces = {"pixels": lambda x: x.reshape(len(x), -1).astype(np.float64)}
    for s in (1, 2):
        spaces[f"randconv seed {s}"] = lambda x, s=s: random_conv_features(x, seed=s)
    rng = np.random.default_rng(seed)
    rows = [rng.choice(len(x_tr), size, replace=False) for _ in range(draws)]
    out = {}
    for name, fn in spaces.items():
        ref, pool = fn(x_te), fn(x_tr)
        floor = np.mean([frechet_distance_from_features(pool[r], ref) for r in rows])
        out[name] = frechet_distance_from_features(fn(images), ref) / floor
    return out


def worse(n: int, draws: int) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for name, images in worse_sets(n, rng).items():
        report = dq.digits_quality(images, floor_draws=draws)
        row = {"set": name, **_row(report), "summary": report.summary()}
        row["fd_ratio_other_spaces"] = dq._one_blas_thread(_other_spaces)(images, n, 8, 0)
        out.append(row)
    return out


def grid_samples(path: Path, scale: int = 3, tile: int = 8, pad: int = 2) -> np.ndarray:
    """The uint8 samples (N, 8, 8, 1) of a PNG grid written by logging_utils.save_image_grid."""
    from PIL import Image

    grid = np.asarray(Image.open(path))[::scale, ::scale]
    step = tile + pad
    rows, cols = (grid.shape[0] - pad) // step, (grid.shape[1] - pad) // step
    tiles = [grid[pad + r * step: pad + r * step + tile, pad + c * step: pad + c * step + tile]
             for r in range(rows) for c in range(cols)]
    return np.stack(tiles)[..., None]


def grids(results: Path, draws: int) -> dict:
    """Each grid's 64 samples scored, beside the digits FD of the run's 2,048 samples (against
    the train split) that consistency_digits.jsonl recorded for the same grid; and Spearman's
    rank correlation of each metric at N = 64 with that FD at N = 2,048."""
    from scipy.stats import spearmanr

    recorded = {}
    for line in (results / "consistency_digits.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("grid") and rec.get("n") == 2048:
            recorded[Path(rec["grid"]).name] = rec["digits_fd"]
    rows = []
    for path in sorted(results.glob("consistency_digits_*.png")):
        report = dq.digits_quality(grid_samples(path), floor_draws=draws)
        rows.append({"grid": path.name, **_row(report), "summary": report.summary(),
                     "digits_fd_2048": recorded.get(path.name)})
    sign = {"precision_randconv": -1, "recall_randconv": -1}  # higher is better

    def rank(paired):
        return {name: float(spearmanr([sign.get(name, 1) * r[name]["value"] for r in paired],
                                      [r["digits_fd_2048"] for r in paired]).statistic)
                for name in dq.METRICS}

    paired = [r for r in rows if r["digits_fd_2048"] is not None]
    usable = [r for r in paired if r["digits_fd_2048"] < 100]  # without the broken 2-step DPM
    return {"rows": rows, "paired": len(paired), "spearman_with_digits_fd_2048": rank(paired),
            "spearman_without_fd_over_100": rank(usable)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/digits_metric.json"))
    parser.add_argument("--draws", type=int, default=25, help="floor draws")
    parser.add_argument("--repeats", type=int, default=60, help="held-out repeats")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = {"floors": floors(args.draws),
              "held_out": [held_out(n, args.repeats, 10) for n in (64, 400)],
              "worse": worse(512, args.draws),
              "grids": grids(ROOT / "benchmarks/results", args.draws)}
    result["seconds"] = round(time.perf_counter() - start, 1)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out} in {result['seconds']} s")


if __name__ == "__main__":
    main()
