"""Restoration on the digits (issue 25, item 4): every posterior method against the baselines.

The first --n test digits (data on [-1, 1]) are degraded by each task with a fixed seed (one
observation per image, the same for every method); each posterior method restores them at
each budget of network passes (NFE, score_sde.inverse's convention). Reported per cell: mean
PSNR and SSIM against the clean images (SSIM's 7x7 window on 8x8 images), the set's digits FD
against the 360-image test split with the matched floor of as many real train digits, NFE
spent, seconds (after compilation) and compile seconds; the same metrics for the baselines of
score_sde.inverse.report (A^+ y; bicubic upsampling for SR; y itself for denoising and blur);
and the digits FD of as many unconditional samples (config.sampling's sampler), the yardstick
of the target "FD within 1.5x of the unconditional samples' at sigma_y = 0.05".

Tasks are operator presets, optionally with overrides and a sigma_y (in [-1, 1] units,
default 0.05): 'name[:key=value,...][@sigma_y]', e.g. 'gaussian_blur:std=1.0', 'denoise@0.1';
methods likewise with their options, ';'-separated: 'mmps;dps:zeta=0.1'; the option samples=k
scores the mean of k posterior samples per image (as --mode restore --restore_samples k).
The guided methods get value_range = the data's range (as --mode restore) unless
--no_value_range.

    python benchmarks/restore_digits.py --workdir /work/runs/digits_default
    python benchmarks/restore_digits.py --summarize benchmarks/results/restore_digits.json
    python benchmarks/restore_digits.py --quick --out /tmp/r.json   # random weights, tiny

Writes --out (default benchmarks/results/restore_digits.json) after every cell.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's package

from score_sde import inference, inverse, models, parallel, run_config, sde_lib  # noqa: E402
from score_sde.data import (  # noqa: E402
    get_data_inverse_scaler,
    get_data_scaler,
    get_data_value_range,
)
from score_sde.inverse import report  # noqa: E402
from score_sde.metrics.digits_classifier import digits_split  # noqa: E402
from score_sde.metrics.digits_quality import digits_quality  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TASKS = ("sr2_avgpool,gaussian_blur,gaussian_blur:std=1.0,random_inpaint,denoise@0.05,"
         "denoise@0.1,denoise@0.2,mri_x4")
METHODS = "mmps;pigdm;dps;ddrm;daps"
QUICK = {"tasks": "sr2_avgpool,denoise@0.1", "methods": "ddrm;pigdm", "nfes": "4,8", "n": 8}


def parse_task(spec: str) -> tuple[str, dict, float]:
    """'name[:k=v,...][@sigma_y]' -> (preset, overrides, sigma_y)."""
    spec, _, sigma = spec.partition("@")
    name, _, rest = spec.partition(":")
    overrides = {k: ast.literal_eval(v) for k, v in (kv.split("=", 1) for kv in
                                                      filter(None, rest.split(",")))}
    return name, overrides, float(sigma) if sigma else inverse.DEFAULT_SIGMA_Y


def load_model(args):
    """(config, sde, eps, model, params, step): a trained workdir's EMA weights, or (without
    --workdir) the config's network at random weights, N(0, 0.1^2) (not its initialiser)."""
    if args.workdir:
        config = run_config.load(args.workdir)
        r = inference.Restorer(config, args.workdir)
        state, step = r.restore()
        r.close()
        return config, r.sde, r.eps, r.model, state.ema_params, step
    import importlib.util

    spec = importlib.util.spec_from_file_location("cfg", ROOT / args.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    sde, eps = sde_lib.get_sde(config)
    # random weights of the network's shapes (traced, not compiled: a smoke run starts fast)
    shapes = jax.eval_shape(lambda rng: models.init_model(rng, config), jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.normal(size=s.shape), s.dtype), shapes)
    return config, sde, eps, models.get_model(config), params, None


def timed_call(fn, *args) -> tuple[tuple, float, float]:
    """(outputs, compile seconds, run seconds) of jax.jit(fn)(*args)."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    return out, compile_s, time.perf_counter() - start


def _scores(m: dict) -> dict:
    keys = ("psnr", "ssim", "digits_fd", "digits_fd_floor", "digits_fd_floor_std",
            "digits_fd_truth")
    return {k: round(float(m[k]), 4) for k in keys if k in m}


class Bench:
    """One model, the clean images and the records, written to args.out after every cell."""

    def __init__(self, args):
        self.args = args
        (self.config, self.sde, self.eps, self.model, self.params,
         self.step) = load_model(args)
        self.truth = digits_split()[2][: args.n].astype(np.float32)
        self.scaler = get_data_scaler(self.config)
        self.inverse = get_data_inverse_scaler(self.config)
        self.records: dict = {"baselines": [], "cells": [], "unconditional": None}

    def score_fn(self, params):
        return inference.model_score_fn(self.config, self.sde, self.model, params)

    def write(self):
        out = {"args": vars(self.args), "checkpoint_step": self.step, "n": len(self.truth),
               "backend": jax.default_backend(), **self.records}
        Path(self.args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(self.args.out).write_text(json.dumps(out, indent=1))

    def to_unit(self, x) -> np.ndarray:
        return np.clip(np.asarray(self.inverse(x), np.float32), 0.0, 1.0)

    def task(self, spec: str, seed: int):
        """Degrade, score the baselines, then every (method, NFE) cell of the task."""
        name, overrides, sigma_y = parse_task(spec)
        operator = inverse.get_operator(name, self.truth.shape[1:], **overrides)
        x = self.scaler(jnp.asarray(self.truth))
        y = operator.degrade(jax.random.PRNGKey(1000 + seed), x, sigma_y)
        base = {k: self.to_unit(v) for k, v in report.baselines(operator, y).items()}
        for k, m in report.restore_metrics(base, self.truth, digits=True).items():
            row = {"task": spec, "baseline": k, **_scores(m)}
            self.records["baselines"].append(row)
            print(json.dumps(row), flush=True)
        for method in self.args.methods.split(";"):
            for nfe in (int(v) for v in self.args.nfes.split(",")):
                self.cell(spec, operator, y, sigma_y, method, nfe)
        self.write()

    def cell(self, spec, operator, y, sigma_y, method, nfe):
        row = {"task": spec, "method": method, "nfe": nfe}
        name, options, _ = parse_task(method)  # 'method[:option=value,...]'
        samples = int(options.pop("samples", 1))  # > 1: the mean of that many, as --mode restore
        if not self.args.no_value_range:  # as --mode restore: the data's range, [-1, 1]
            options = inverse.with_value_range(name, options, get_data_value_range(self.config))
        n = len(self.truth)
        try:
            sample = inverse.get_posterior_sampler(name, self.sde, operator,
                                                   (samples * n,) + self.truth.shape[1:],
                                                   sigma_y=sigma_y, nfe=nfe, eps=self.eps,
                                                   **options)
        except ValueError as e:  # no SVD, a budget below one step, ...
            row["skipped"] = str(e)
        else:
            (x, used), compile_s, run_s = timed_call(
                lambda p, rng, obs: sample(rng, self.score_fn(p), obs),
                self.params, jax.random.PRNGKey(0), jnp.concatenate([y] * samples))
            x = x.reshape((samples, n) + x.shape[1:]).mean(axis=0)
            row.update(nfe_used=int(used), seconds=round(run_s, 2),
                       compile_seconds=round(compile_s, 1))
            bad = float(np.mean(~np.isfinite(np.asarray(x))))
            if bad:  # a diverged run: no metrics, the fraction of non-finite pixels
                row["non_finite"] = round(bad, 4)
            else:
                m = report.restore_metrics({"r": self.to_unit(x)}, self.truth, digits=True)
                row.update(_scores(m["r"]))
        self.records["cells"].append(row)
        print(json.dumps(row), flush=True)
        self.write()

    def unconditional(self):
        """The digits FD of --n unconditional samples (config.sampling's sampler)."""
        sampler = inference.ConfigSampler(self.config, self.sde, self.eps, self.model,
                                          parallel.make_mesh(), n=len(self.truth))
        start = time.perf_counter()
        images, nfe = sampler(self.params, jax.random.PRNGKey(7))
        s = digits_quality(np.asarray(images)).scores["fd_classifier"]
        self.records["unconditional"] = {
            "sampler": str(self.config.sampling.method), "nfe": int(nfe),
            "digits_fd": round(s.value, 4), "digits_fd_floor": round(s.floor, 4),
            "digits_fd_floor_std": round(s.floor_std, 4),
            "seconds_with_compile": round(time.perf_counter() - start, 1)}
        print(json.dumps(self.records["unconditional"]), flush=True)
        self.write()


# ------------------------------------------------------------------------------ summaries


def _cell(rows: list[dict], key: str, fmt: str) -> str:
    """The value; 'NaN' for a diverged run, 'n/a' for a refused one, '-' for none."""
    for r in rows:
        if key in r:
            return fmt.format(r[key])
        if "non_finite" in r and key != "seconds":
            return "NaN"
        if "skipped" in r:
            return "n/a"
    return "-"


def metric_table(results: dict, key: str, fmt: str) -> list[str]:
    """Markdown: rows = baselines, then method @ NFE; columns = tasks; cells = key."""
    tasks = list(dict.fromkeys(r["task"] for r in results["cells"] + results["baselines"]))
    lines = ["| | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    names = list(dict.fromkeys(r["baseline"] for r in results["baselines"]))
    for b in names:
        cells = [_cell([r for r in results["baselines"] if r["task"] == t and r["baseline"] == b],
                       key, fmt) for t in tasks]
        lines.append(f"| {report.BASELINES.get(b, b)} | " + " | ".join(cells) + " |")
    combos = list(dict.fromkeys((r["method"], r["nfe"]) for r in results["cells"]))
    for method, nfe in combos:
        cells = [_cell([r for r in results["cells"] if r["task"] == t and r["method"] == method
                        and r["nfe"] == nfe], key, fmt) for t in tasks]
        lines.append(f"| {method} {nfe} | " + " | ".join(cells) + " |")
    return lines


def single_draw(method: str) -> str:
    """The method's label without its samples=k option: its one-sample cells."""
    name, _, rest = method.partition(":")
    rest = ",".join(kv for kv in rest.split(",") if kv and not kv.startswith("samples="))
    return f"{name}:{rest}" if rest else name


def target_table(results: dict) -> list[str]:
    """Per task: the best cell's PSNR (a single draw or the mean of k) against the best
    baseline's; the digits FD of that method's single draws at that NFE (a mean of k draws
    is an estimate, not a sample) against the unconditional samples' (the target is at
    sigma_y = 0.05)."""
    uncond = (results.get("unconditional") or {}).get("digits_fd")
    lines = ["| task | best baseline PSNR | best method (PSNR) | ahead by dB | digits FD of its "
             "single draws | / unconditional FD |", "|---|---|---|---|---|---|"]
    for task in dict.fromkeys(r["task"] for r in results["baselines"]):
        base = max((r for r in results["baselines"] if r["task"] == task),
                   key=lambda r: r["psnr"])
        cells = [r for r in results["cells"] if r["task"] == task and "psnr" in r]
        if not cells:
            continue
        best = max(cells, key=lambda r: r["psnr"])
        draws = [r for r in cells if r["method"] == single_draw(best["method"])
                 and r["nfe"] == best["nfe"] and "digits_fd" in r]
        fd = draws[0]["digits_fd"] if draws else None
        ratio = f"{fd / uncond:.2f}" if uncond and fd is not None else "-"
        lines.append(f"| {task} | {base['psnr']:.2f} ({report.BASELINES[base['baseline']]}) "
                     f"| {best['psnr']:.2f} ({best['method']} {best['nfe']}) "
                     f"| {best['psnr'] - base['psnr']:+.2f} "
                     f"| {'-' if fd is None else f'{fd:.1f}'} | {ratio} |")
    return lines


def merge(runs: list[dict]) -> dict:
    """One results dict from several runs: every (task, method, NFE) cell from the last run
    that has it (a later run supersedes, e.g. the guided methods clipped from run 5 on),
    baselines once per (task, baseline), the first run's unconditional samples."""
    cells = {(c["task"], c["method"], c["nfe"]): c for r in runs for c in r["cells"]}
    out = {"cells": list(cells.values()), "baselines": [],
           "unconditional": next((r["unconditional"] for r in runs if r["unconditional"]),
                                 None)}
    seen = set()
    for b in (b for r in runs for b in r["baselines"]):
        if (b["task"], b["baseline"]) not in seen:
            seen.add((b["task"], b["baseline"]))
            out["baselines"].append(b)
    return out


def summary(results: dict) -> str:
    out = []
    for title, key, fmt in (("PSNR (dB)", "psnr", "{:.2f}"), ("SSIM (7x7)", "ssim", "{:.3f}"),
                            ("digits FD", "digits_fd", "{:.1f}"),
                            ("seconds per set (after compile)", "seconds", "{:.1f}")):
        table = metric_table(results, key, fmt)  # rows without a value left out
        out += [f"\n{title}", *table[:2], *(line for line in table[2:] if any(
            c.strip() != "-" for c in line.strip("| ").split(" | ")[1:]))]
    u = results.get("unconditional")
    if u:
        out.append(f"\nunconditional ({u['sampler']}, {u['nfe']} NFE): digits FD "
                   f"{u['digits_fd']:.1f} (floor {u['digits_fd_floor']:.1f} +- "
                   f"{u['digits_fd_floor_std']:.1f})")
    out += ["\ntargets", *target_table(results)]
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="", help="a trained digits run (else random weights)")
    p.add_argument("--config", default="configs/digits.py",
                   help="without --workdir: the config whose network is used at random weights")
    p.add_argument("--tasks", default=TASKS)
    p.add_argument("--methods", default=METHODS,
                   help="';'-separated 'method[:option=value,...]', e.g. 'dps:zeta=0.1;ddrm'")
    p.add_argument("--nfes", default="20,50,100")
    p.add_argument("--n", type=int, default=360, help="test images (the first n)")
    p.add_argument("--quick", action="store_true",
                   help=f"a smoke run: {QUICK}, no unconditional samples")
    p.add_argument("--out", default=str(RESULTS / "restore_digits.json"))
    p.add_argument("--no_value_range", action="store_true",
                   help="the guided methods unclipped (no value_range; runs 1-4 of the page)")
    p.add_argument("--skip_unconditional", action="store_true",
                   help="no unconditional samples (a run that adds cells to another)")
    p.add_argument("--summarize", nargs="*", default=None,
                   help="print the tables of results files (cells of later files added)")
    args = p.parse_args(argv)
    if args.summarize:
        print(summary(merge([json.loads(Path(f).read_text()) for f in args.summarize])))
        return
    if args.quick:  # QUICK's values where no flag was given
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    if not args.workdir and not args.quick:
        p.error("--workdir (a trained digits run) is needed unless --quick")
    bench = Bench(args)
    start = time.time()
    if not (args.quick or args.skip_unconditional):
        bench.unconditional()
    for i, spec in enumerate(args.tasks.split(",")):
        bench.task(spec, seed=i)
    bench.write()
    print(summary(json.loads(Path(args.out).read_text())))
    print(f"wrote {args.out} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
