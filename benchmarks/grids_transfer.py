"""Do the default time grids transfer? Fixed-step samplers against the converged ODE, every cell.

On every (problem, SDE, NFE) cell, each fixed-step sampler on each grid candidate is compared
with the adaptive probability-flow ODE (rtol = atol = --ode-tol) from the same prior draws:
error = FD(sampler, ref) - FD(ODE, ref) per seed (the floor cancels), and the paired RMS
distance of the samples to the ODE's own, which has no sampling noise at all. --merge tables
several runs together without running anything. Page: benchmarks/pages/grids_transfer.md.

    python -m benchmarks.grids_transfer --data curve64,2d_x20 \
        --candidates default,karras,logsnr+range --tag transfer
    python -m benchmarks.grids_transfer --merge A.json,B.json --plot-candidate default@scale \
        --tag grids_transfer

Writes <--out>/<--tag>.{json,md} and, when 'default' is a candidate (or --plot-candidate with
--merge), <--tag>.png.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import jax
import numpy as np

from benchmarks import grids_transfer_report as report
from benchmarks import sampler_core as core
from score_sde.sampling import learn_coefficients, optimize_grid

TRANSFER_SDES = ("vp", "subvp", "ve50", "ve", "ve348", "ve1348", "edm")
FIXED_STEP = ("ddim", "heun", "dpm_solver++")  # the samplers whose default grid is studied
# Transfer-study samplers that are another's options: name -> (sampler, options).
VARIANTS = {"heun_edm": ("heun", dict(exponential=False)),
            "unipc3": ("unipc", dict(order=3)),
            "dpm_solver++3m": ("dpm_solver++", dict(order=3)),
            "ipndm3": ("ipndm", dict(order=3)),
            "ipndm4": ("ipndm", dict(order=4)),
            "learned3": ("learned", dict(order=3)),  # learned from DPM-Solver++(3M)
            "learned3_afs": ("learned", dict(order=3, analytic_first_step=True)),
            # the analytic first step (nfe score calls, nfe + 1 steps)
            **{f"{name}_afs": (name, dict(analytic_first_step=True))
               for name in ("dpm_solver++", "unipc", "ipndm")}}
OPTIMISE_DRAWS = 128  # prior draws the 'optimised' candidate fits its grid to (seed 0)
LEARN_DRAWS = 512  # teacher solves the 'learned' candidates fit (3/4) and judge (1/4) on
NFES = (5, 6, 8, 10, 15, 20)


def candidate_options(candidate: str, data) -> dict:
    """Grid options of a candidate: 'default' (the sampler's own), 'GRID' (over the SDE's whole
    noise range) or 'GRID+range' (over the data's noise range, noise_range()); '@scale' after
    either: placed for the data's spread (data_scale(), the samplers' data_scale option)."""
    candidate, _, scaled = candidate.partition("@")
    extra = dict(data_scale=core.data_scale(data)) if scaled else {}
    if candidate == "default":
        return extra
    grid, _, ranged = candidate.partition("+")
    return dict(grid=grid, sigma_range=core.noise_range(data) if ranged else None, **extra)


def transfer(datasets: dict, *, sdes: list[str], samplers: list[str], nfes: list[int],
             candidates: list[str], n: int, seeds: int, floor_pairs: int, ode_tol: float,
             partial: str = "") -> list[dict]:
    """Per problem a 'floor' row; per (problem, SDE) an 'ode' row; per (problem, SDE, sampler,
    NFE, candidate) a 'transfer' row (err, err_std, rms; a candidate the sampler refuses at
    that NFE is skipped). `partial`: a JSON path rewritten after each SDE (long runs)."""
    rows = []
    for dname, data in datasets.items():
        refs = core.reference_sets(data, n, seeds)
        fl = core.floor(data, n, floor_pairs, refs)
        rows.append(dict(kind="floor", data=dname, fd=fl["fd"], sw=fl["sw"]))
        for sname in sdes:
            sde, eps = core.SDES[sname]
            x_ode, nfe_ode = core.draw(data, sde, eps, "ode", dict(rtol=ode_tol, atol=ode_tol),
                                       n * seeds, 11)
            fd_ode = core.frechet_per_seed(x_ode, refs)
            rows.append(dict(kind="ode", data=dname, sde=sname, nfe=nfe_ode,
                             fd=float(fd_ode.mean()), fd_std=float(fd_ode.std())))
            print(f"[{dname} {sname}] floor {fl['fd'][0]:.4g}±{fl['fd'][1]:.2g} ode FD "
                  f"{fd_ode.mean():.4g} ({nfe_ode} nfe)", flush=True)
            for sampler, budget, cand in itertools.product(samplers, nfes, candidates):
                row = _transfer_cell(data, sde, eps, sampler, budget, cand, refs, x_ode, fd_ode)
                if row is not None:
                    rows.append(dict(data=dname, sde=sname, **row))
            if partial:  # what is done so far, for long runs
                Path(partial).write_text(json.dumps(dict(rows=rows)))
    return rows


def _candidate_draw(data, sde, eps, sampler, budget, cand, n_total):
    """The samples and nfe of `sampler` on candidate grid `cand` at `budget` NFE."""
    name, extra = VARIANTS.get(sampler, (sampler, {}))
    if cand == "optimised":  # score_sde.sampling.optimize_grid on this problem's score
        t0 = time.time()
        grid = optimize_grid(data.perturbed_score_fn(sde), sde,
                             (OPTIMISE_DRAWS, core.dim_of(data)), method=name, nfe=budget,
                             eps=eps, rng=jax.random.PRNGKey(0), options=dict(extra))
        print(f"  optimised {sampler} {budget}: {grid.cost_before:.3g} -> "
              f"{grid.cost_after:.3g} in {time.time() - t0:.0f}s", flush=True)
        options = dict(ts=grid.times)
    elif cand in ("learned", "learned+times"):  # sampling.learn_coefficients, seed 0
        options = _learned(data, sde, eps, name, budget, extra, cand == "learned+times")
    else:
        options = candidate_options(cand, data)
    return core.draw(data, sde, eps, name, dict(nfe=budget, **extra, **options), n_total, 11)


def _learned(data, sde, eps, name, budget, extra, learn_times) -> dict:
    """The ts and weights of the learned solver fitted to this problem's exact score."""
    if name != "learned":
        raise ValueError("the learned candidates are for the 'learned' sampler")
    t0 = time.time()
    result = learn_coefficients(data.perturbed_score_fn(sde), sde,
                                (LEARN_DRAWS, core.dim_of(data)), nfe=budget, eps=eps,
                                order=extra.get("order", 2), learn_times=learn_times,
                                analytic_first_step=extra.get("analytic_first_step", False))
    print(f"  learned {budget} (times: {learn_times}): held-out rms {result.error_before:.3g} "
          f"-> {result.error_after:.3g} ({result.chosen}, {result.wins}/{result.held_out} "
          f"wins, {result.steps_taken} steps) in {time.time() - t0:.0f}s", flush=True)
    return dict(ts=result.times, weights=result.weights)


def _transfer_cell(data, sde, eps, sampler, budget, cand, refs, x_ode, fd_ode):
    try:
        x, nfe = _candidate_draw(data, sde, eps, sampler, budget, cand, len(x_ode))
    except ValueError as e:  # e.g. a range that leaves no step inside it at this NFE
        print(f"  skip {sampler} {budget} {cand}: {e}", flush=True)
        return None
    fd = core.frechet_per_seed(x, refs)
    err = fd - fd_ode
    rms = float(np.sqrt(np.mean((x - x_ode) ** 2))) if np.all(np.isfinite(x)) else float("inf")
    print(f"  {sampler:13s} nfe={nfe:3d} {cand:16s} err {err.mean():+.4g}±{err.std():.2g} "
          f"rms {rms:.3g}", flush=True)
    return dict(kind="transfer", sampler=sampler, budget=budget, candidate=cand, nfe=nfe,
                fd=float(fd.mean()), fd_std=float(fd.std()), err=float(err.mean()),
                err_std=float(err.std()), rms=rms)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    core.add_problem_args(p)
    p.add_argument("--sdes", default=",".join(TRANSFER_SDES))
    p.add_argument("--samplers", default=",".join(FIXED_STEP),
                   help=f"get_sampler names or variants ({', '.join(VARIANTS)})")
    p.add_argument("--nfes", default=",".join(map(str, NFES)))
    p.add_argument("--candidates", default="default",
                   help="grid candidates: default, GRID, GRID+range, either with @scale, or "
                        "optimised, learned, learned+times (the 'learned' sampler's) "
                        "(comma-separated)")
    p.add_argument("--ode-tol", type=float, default=1e-5, help="the reference ODE's rtol, atol")
    p.add_argument("--partial", default="", help="rewrite this JSON after each SDE")
    p.add_argument("--merge", default="",
                   help="no run; the tables of these JSON results (comma-separated)")
    p.add_argument("--plot-candidate", default="", help="merge: plot this candidate's error")
    p.add_argument("--rename", default="", help="merge: I:SAMPLER=NEW renames SAMPLER's rows "
                   "of the I-th (0-based) merged file, NEW empty drops them; NEW=BASE/CAND "
                   "makes them BASE's candidate CAND (e.g. 1:ipndm_afs=ipndm/afs@scale)")
    p.add_argument("--default-was", default="",
                   help="merge: the named grid each sampler's 'default' was in those runs, "
                        "e.g. ddim=uniform,dpm_solver++=quadratic")
    core.add_output_args(p, "grids_transfer")
    return p.parse_args(argv)


def pairs(value: str) -> dict:
    """'A=B,C=D' -> {'A': 'B', 'C': 'D'} (empty: {})."""
    return dict(kv.split("=") for kv in value.split(",") if kv)


def run(datasets: dict, *, out, tag: str, **settings) -> None:
    """transfer(datasets, **settings), written as <out>/<tag>.{json,md} (and .png of the
    'default' candidate when it ran)."""
    t0 = time.time()
    rows = transfer(datasets, **settings)
    meta = core.run_meta(t0, n=settings["n"], seeds=settings["seeds"],
                         ode_tol=settings["ode_tol"])
    plot = None
    if "default" in settings["candidates"]:
        plot = lambda path: report.transfer_plot(rows, path)  # noqa: E731
    out = core.write_results(out, tag, dict(meta=meta, rows=rows), report.transfer_markdown(rows),
                             plot=plot)
    print(f"done in {time.time() - t0:.0f}s -> {out}/{tag}.*")


def main(argv=None):
    args = parse_args(argv)
    if args.merge:
        return report.merge_transfer(core.names(args.merge), Path(args.out), args.tag,
                                     pairs(args.default_was), args.plot_candidate,
                                     pairs(args.rename))
    run(core.select_datasets(args.data), out=args.out, tag=args.tag, sdes=core.names(args.sdes),
        samplers=core.names(args.samplers), nfes=core.numbers(args.nfes),
        candidates=core.names(args.candidates), n=args.n, seeds=args.seeds,
        floor_pairs=args.floor_pairs, ode_tol=args.ode_tol, partial=args.partial)


if __name__ == "__main__":
    main()
