"""Digits FD vs NFE of the fast samplers on their default and optimised grids (issue 17 item 7).

One process restores a trained digits model's EMA weights (read only), then for every sampler
and NFE: samples --num_samples digits on the sampler's default grid, fits the grid with
`score_sde.sampling.optimize_grid` (--draws prior draws, seed 0; one teacher solve for every
sampler and NFE, kept beside the checkpoint as --mode optimize_grid keeps it) and samples again
on it, with the same prior draws for every row (paired). The adaptive probability-flow ODE (Tsit5,
rtol = atol = 1e-5) is the reference row. Writes a JSON (rows: sampler, nfe, grid, digits_fd,
the optimiser's error before / after and its wall time) and the optimised grid files.

    python benchmarks/digits_grids.py --config=configs/digits.py --workdir=/work/runs/digits \
        --methods=dpm_solver++,unipc,ipndm --nfes=5,10,20 \
        --out=benchmarks/results/digits_grids_vp.json
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from score_sde import grid_search, inference, logging_utils, sampling  # noqa: E402
from score_sde.metrics import stats  # noqa: E402
from score_sde.sampling import grid_files  # noqa: E402


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def digits_fd(config, restorer, params, overrides: dict, num_samples: int, batch: int) -> tuple:
    """(digits FD of num_samples samples, NFE per sample) with config.sampling overridden."""
    config = config.copy_and_resolve_references()
    for key, value in overrides.items():
        config.sampling[key] = value
    sampler = inference.ConfigSampler(config, restorer.sde, restorer.eps, restorer.model,
                                      restorer.mesh, n=batch)
    images, nfe = [], 0
    for r in range(num_samples // batch):
        x, nfe = sampler(params, jax.random.PRNGKey(1000 + r))  # the same draws for every row
        images.append(logging_utils.to_uint8(np.asarray(x)))
    samples = np.concatenate(images).astype(np.float32) / 255.0
    return float(stats.evaluate_samples(samples, None, "digits")["digits_fd"]), nfe


def rejudge(path: str, config, restorer, score_fn, teacher, shape, record) -> None:
    """The judge's decision, default grid against the stored grid, for each optimised row of
    the results JSON at `path` (same teacher draws as the optimiser's)."""
    from score_sde.sampling import grid_optimizer

    x_T = teacher.xs[0].reshape(shape).astype(np.float32)
    grid_dir = os.path.splitext(path)[0] + "_grids"
    for row in json.load(open(path))["rows"]:
        if row["grid"] != "optimised":
            continue
        method, nfe = row["sampler"], row["nfe"]
        stored = grid_files.read_grid_file(
            os.path.join(grid_dir, f"{method.replace('+', 'p')}_nfe{nfe}.json"))
        _, options = sampling.sampler_options_from_config(config, method)
        for key in ("nfe", "grid", "sigma_range"):
            options.pop(key, None)
        per_draw = {name: grid_optimizer._sampler_error(
            method, restorer.sde, shape, restorer.eps, np.asarray(times, np.float64), options,
            score_fn, x_T, teacher.xs[-1])
            for name, times in (("default", stored["start_times"]), (row["chosen"],
                                                                     stored["times"]))}
        record({"sampler": method, "nfe": nfe, "was": row["chosen"],
                "kept": grid_optimizer.judge(per_draw),
                "rms": {k: float(np.sqrt(np.mean(v))) for k, v in per_draw.items()},
                "wins": int(np.sum(per_draw[row["chosen"]] < per_draw["default"])),
                "draws": len(x_T)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--methods", default="dpm_solver++,unipc,ipndm")
    p.add_argument("--nfes", default="5,10,20")
    p.add_argument("--num_samples", type=int, default=2048)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--draws", type=int, default=128)
    p.add_argument("--ode", action="store_true", help="add the adaptive ODE reference row")
    p.add_argument("--default_only", action="store_true",
                   help="only the default-grid rows (the config's grids), no optimisation")
    p.add_argument("--optimised_only", action="store_true",
                   help="skip the default-grid rows (measured before)")
    p.add_argument("--refine_steps", type=int, default=40)
    p.add_argument("--refine_batch", type=int, default=32)
    p.add_argument("--rejudge", default="",
                   help="comma-separated results JSONs of this script: rerun only the judge "
                        "(grid_optimizer.judge) on each optimised row's grid against its default, "
                        "on the stored teacher, and write the decisions to --out")
    p.add_argument("--sampling", default="",
                   help="config.sampling overrides KEY=VALUE,... (Python literals), e.g. "
                        "analytic_first_step=True")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    config = load_config(args.config)
    sampling.add_config_fields(config.sampling)
    overrides = dict(kv.split("=", 1) for kv in args.sampling.split(",") if kv)
    for key, value in overrides.items():
        config.sampling[key] = ast.literal_eval(value)
    restorer = inference.Restorer(config, args.workdir)
    state, step = restorer.restore()
    restorer.close()
    params = state.ema_params
    score_fn = inference.model_score_fn(config, restorer.sde, restorer.model, params)
    d = config.data
    shape = (args.draws, d.image_size, d.image_size, d.num_channels)
    grid_dir = os.path.splitext(args.out)[0] + "_grids"
    rows = []
    teacher, teacher_s = None, 0.0  # solved (or loaded) once, for the first optimised row

    def record(row):
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(args.out, "w") as f:
            json.dump({"config": args.config, "sampling": overrides, "checkpoint_step": step,
                       "num_samples": args.num_samples, "draws": args.draws, "rows": rows},
                      f, indent=1)

    if args.rejudge:
        teacher = grid_search.cached_teacher(score_fn, restorer.sde, shape, restorer.eps, 0,
                                             step, args.workdir)
        for path in args.rejudge.split(","):
            rejudge(path, config, restorer, score_fn, teacher, shape, record)
        return
    if args.ode:
        t = time.time()
        fd, nfe = digits_fd(config, restorer, params, {"method": "ode"}, args.num_samples,
                            args.batch)
        record({"sampler": "ode", "grid": "adaptive", "nfe": nfe, "digits_fd": fd,
                "sample_s": time.time() - t})
    for method in args.methods.split(","):
        for nfe in (int(n) for n in args.nfes.split(",")):
            base = {"method": method, "nfe": nfe}
            _, options = sampling.sampler_options_from_config(config, method)
            options.pop("nfe", None)
            if not args.optimised_only:
                fd, _ = digits_fd(config, restorer, params, base, args.num_samples, args.batch)
                record({"sampler": method, "nfe": nfe, "grid": "default", "digits_fd": fd})
            if args.default_only:
                continue
            if teacher is None:
                t = time.time()
                teacher = grid_search.cached_teacher(score_fn, restorer.sde, shape, restorer.eps,
                                                     0, step, args.workdir)
                teacher_s = time.time() - t
            t = time.time()
            result = sampling.optimize_grid(score_fn, restorer.sde, shape, method=method,
                                            nfe=nfe, eps=restorer.eps, teacher=teacher,
                                            refine_steps=args.refine_steps,
                                            refine_batch=args.refine_batch, options=options)
            opt_s = time.time() - t
            path = os.path.join(grid_dir, f"{method.replace('+', 'p')}_nfe{nfe}.json")
            grid_files.write_grid_file(path, result.times, sampler=method, nfe=nfe,
                                       sde=restorer.sde, eps=restorer.eps,
                                       checkpoint_step=step, **result.record())
            fd, _ = digits_fd(config, restorer, params, {**base, "grid": f"file:{path}"},
                              args.num_samples, args.batch)
            record({"sampler": method, "nfe": nfe, "grid": "optimised", "digits_fd": fd,
                    "error_before": result.cost_before, "error_after": result.cost_after,
                    "chosen": result.chosen,
                    "optimise_s": opt_s, "phases_s": result.seconds,
                    "refine_steps": result.refine_steps, "teacher_s": teacher_s,
                    "teacher_nfe": result.teacher_nfe,
                    "times": [float(v) for v in result.times]})
            teacher_s = 0.0  # paid once


if __name__ == "__main__":
    main()
