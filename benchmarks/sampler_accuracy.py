"""The former all-in-one sampler study: its command lines, over the per-study modules.

The four studies are modules of their own over benchmarks/sampler_core.py (the problems,
references, distances, a sampler run, writing results):

    python -m benchmarks.sampler_nfe      # accuracy vs NFE
    python -m benchmarks.sampler_grids    # time grids at low NFE
    python -m benchmarks.ode_timing       # diffrax ODE vs scipy RK45
    python -m benchmarks.grids_transfer   # error against the converged ODE; --merge

This script keeps the old command lines working and writing the same files: without --transfer
or --merge it runs accuracy, grids and timing (each skippable) into one <--tag>.{json,md,png};
--transfer and --merge are grids_transfer's (--transfer-samplers, --transfer-nfes and
--transfer-sdes are its --samplers, --nfes and --sdes). Pages: benchmarks/README.md.

    python benchmarks/sampler_accuracy.py --data 64d --seeds 3 --floor-pairs 10 --skip-grids \
        --timing-n 200,1000,5000 --timing-repeats 7 --tag sampler_accuracy_64d
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import grids_transfer, ode_timing, sampler_grids, sampler_nfe  # noqa: E402
from benchmarks import grids_transfer_report as report  # noqa: E402
from benchmarks import sampler_core as core  # noqa: E402

# Old names -> (module, name) of their new home; the same objects.
_MOVED = {
    **{name: (core, name) for name in (
        "RESULTS", "Rotated", "noise_range", "data_scale", "make_datasets", "curve_mixture",
        "scaled", "SDES", "SAMPLERS", "VARIANTS", "draw", "seeded_distances", "reference_sets",
        "dim_of", "distances", "floor")},
    "NFES": (sampler_nfe, "NFES"), "cell": (sampler_nfe, "cell"), "plot": (sampler_nfe, "plot"),
    "GRIDS": (sampler_grids, "GRIDS"), "grid_cell": (sampler_grids, "grid_cell"),
    "TRANSFER_SDES": (grids_transfer, "TRANSFER_SDES"),
    "FIXED_STEP": (grids_transfer, "FIXED_STEP"),
    "TRANSFER_VARIANTS": (grids_transfer, "VARIANTS"),
    "OPTIMISE_DRAWS": (grids_transfer, "OPTIMISE_DRAWS"),
    "TRANSFER_NFES": (grids_transfer, "NFES"),
    "candidate_options": (grids_transfer, "candidate_options"),
    **{name: (report, name) for name in (
        "transfer_errors", "transfer_verdicts", "transfer_markdown", "variant_markdown",
        "transfer_plot", "VP_ALIASES", "merge_transfer")},
}
# Old functions that took the parsed command line: their new homes take keyword arguments.
_REWRITTEN = {"accuracy": "benchmarks.sampler_nfe.accuracy",
              "grid_study": "benchmarks.sampler_grids.grid_study",
              "ode_timing": "benchmarks.ode_timing.ode_timing",
              "transfer": "benchmarks.grids_transfer.transfer",
              "run_transfer": "benchmarks.grids_transfer.run"}


def __getattr__(name: str):
    if name in _MOVED:
        module, new = _MOVED[name]
        return getattr(module, new)
    if name in _REWRITTEN:
        raise ImportError(f"sampler_accuracy.{name} moved to {_REWRITTEN[name]} "
                          "(keyword arguments instead of the parsed command line)")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def markdown(rows, grids, timing) -> str:
    """The combined run's tables: accuracy vs NFE, then time grids, then ODE timing."""
    return core.accuracy_markdown(sampler_nfe.markdown_lines(rows),
                                  sampler_grids.markdown_lines(grids),
                                  ode_timing.markdown_lines(timing))


def _study_args(p: argparse.ArgumentParser) -> None:
    """The combined run's flags (accuracy, grids, timing)."""
    p.add_argument("--samplers", default=",".join(sampler_nfe.DEFAULT_SAMPLERS))
    p.add_argument("--nfes", default=",".join(map(str, sampler_nfe.NFES)))
    p.add_argument("--sdes", default="vp,subvp,ve")
    p.add_argument("--grid-nfes", default="5,10,20")
    p.add_argument("--grid-samplers", default="ddim,heun,dpm_solver++")
    p.add_argument("--skip-grids", action="store_true")
    p.add_argument("--skip-timing", action="store_true")
    p.add_argument("--timing-n", default="200,1000,5000", help="batch sizes of the ODE timing")
    p.add_argument("--timing-repeats", type=int, default=5)
    p.add_argument("--skip-accuracy", action="store_true")


def _transfer_args(p: argparse.ArgumentParser) -> None:
    """--transfer and --merge: benchmarks.grids_transfer's flags under their old names."""
    p.add_argument("--transfer", action="store_true", help="only the transfer study")
    p.add_argument("--transfer-samplers", default=",".join(grids_transfer.FIXED_STEP))
    p.add_argument("--transfer-nfes", default=",".join(map(str, grids_transfer.NFES)))
    p.add_argument("--transfer-sdes", default=",".join(grids_transfer.TRANSFER_SDES))
    p.add_argument("--candidates", default="default")
    p.add_argument("--ode-tol", type=float, default=1e-5)
    p.add_argument("--partial", default="")
    p.add_argument("--merge", default="")
    p.add_argument("--plot-candidate", default="")
    p.add_argument("--rename", default="")
    p.add_argument("--default-was", default="")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    core.add_problem_args(p)
    _study_args(p)
    _transfer_args(p)
    core.add_output_args(p, "sampler_accuracy")
    return p.parse_args(argv)


def combined(datasets: dict, args: argparse.Namespace) -> None:
    """Accuracy vs NFE, time grids and ODE timing (each unless skipped) into one file."""
    t0 = time.time()
    sdes, n, seeds = core.names(args.sdes), args.n, args.seeds
    rows = [] if args.skip_accuracy else sampler_nfe.accuracy(
        datasets, sdes=sdes, samplers=core.names(args.samplers), nfes=core.numbers(args.nfes),
        n=n, seeds=seeds, floor_pairs=args.floor_pairs)
    grids = [] if args.skip_grids else sampler_grids.grid_study(
        datasets, sdes=sdes, samplers=core.names(args.grid_samplers),
        nfes=core.numbers(args.grid_nfes), n=n, seeds=seeds)
    timing = None if args.skip_timing else ode_timing.ode_timing(
        datasets, sizes=core.numbers(args.timing_n), repeats=args.timing_repeats)
    results = core.accuracy_results(core.run_meta(t0, n=n, seeds=seeds), rows, grids, timing)
    plot = (lambda path: sampler_nfe.plot(rows, path)) if rows else None
    out = core.write_results(args.out, args.tag, results, markdown(rows, grids, timing), plot)
    print(f"done in {time.time() - t0:.0f}s -> {out}/{args.tag}.*")


def main(argv=None):
    args = parse_args(argv)
    if args.merge:
        return report.merge_transfer(
            core.names(args.merge), Path(args.out), args.tag,
            grids_transfer.pairs(args.default_was), args.plot_candidate,
            grids_transfer.pairs(args.rename))
    datasets = core.select_datasets(args.data)
    if args.transfer:
        return grids_transfer.run(
            datasets, out=args.out, tag=args.tag, sdes=core.names(args.transfer_sdes),
            samplers=core.names(args.transfer_samplers),
            nfes=core.numbers(args.transfer_nfes), candidates=core.names(args.candidates),
            n=args.n, seeds=args.seeds, floor_pairs=args.floor_pairs, ode_tol=args.ode_tol,
            partial=args.partial)
    return combined(datasets, args)


if __name__ == "__main__":
    main()
