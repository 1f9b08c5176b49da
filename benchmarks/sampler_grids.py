"""Time grids at low NFE on the exact mixtures, over the SDE's and over the data's noise range.

For each problem, SDE, fixed-step sampler and NFE: FD / SW (mean ± std over --seeds) on the
grids 'uniform', 'quadratic', 'logsnr' and 'karras', each once over the SDE's whole noise range
and once with sigma_range = the data's noise range (sampler_core.noise_range). Page:
benchmarks/pages/sampler_accuracy.md ("Time grids").

    python -m benchmarks.sampler_grids --seeds 3 --samplers dpm_solver++,heun,ddim \
        --nfes 10,20 --tag grid_study_range

Writes <--out>/<--tag>.{json,md}: the JSON's 'grids' (its 'rows' and 'ode_timing' are the other
studies' parts, empty here).
"""

from __future__ import annotations

import argparse
import itertools
import time

from benchmarks import sampler_core as core

GRIDS = ("uniform", "quadratic", "logsnr", "karras")


def grid_study(datasets: dict, *, sdes: list[str], samplers: list[str], nfes: list[int], n: int,
               seeds: int) -> list[dict]:
    """One 'grid' row per (problem, SDE, sampler, NFE, grid, ranged)."""
    rows = []
    for dname, data in datasets.items():
        refs = core.reference_sets(data, n, seeds)
        for sname in sdes:
            sde, eps = core.SDES[sname]
            for sampler in samplers:
                for budget, grid, ranged in itertools.product(nfes, GRIDS, (False, True)):
                    name, options = core.SAMPLERS[sampler](budget, None)
                    options = dict(options, grid=grid,
                                   sigma_range=core.noise_range(data) if ranged else None)
                    d = core.seeded_distances(data, sde, eps, name, options, n, seeds, refs)
                    rows.append(dict(kind="grid", data=dname, sde=sname, sampler=sampler,
                                     budget=budget, grid=grid, ranged=ranged, **d))
                    print(f"[grid {dname} {sname}] {sampler} nfe={d['nfe']} {grid:9s} "
                          f"{'range' if ranged else 'full':5s} FD {d['fd']:.4g}±{d['fd_std']:.2g} "
                          f"SW {d['sw']:.4g}", flush=True)
    return rows


def grid_cell(r: dict) -> str:
    return f"{r['fd']:.3g}" + (f" ± {r['fd_std']:.2g}" if r.get("seeds", 1) > 1 else "")


def markdown_lines(grids: list[dict]) -> list[str]:
    """One FD table: a line per (problem, SDE, sampler, NFE), a column per grid; the best bold."""
    if not grids:
        return []
    columns = [(g, ranged) for ranged in (False, True) for g in GRIDS]
    names = [g + (" + range" if ranged else "") for g, ranged in columns]
    lines = ["## Time grids (FD)", "",
             "Over the SDE's whole noise range, and with sigma_range = the data's noise "
             "range (noise_range()).", "",
             "| data | sde | sampler | nfe | " + " | ".join(names) + " |",
             "|---|---|---|---|" + "---|" * len(columns)]
    keys = dict.fromkeys((r["data"], r["sde"], r["sampler"], r["budget"]) for r in grids)
    for key in keys:
        by = {(r["grid"], r.get("ranged", False)): r for r in grids
              if (r["data"], r["sde"], r["sampler"], r["budget"]) == key}
        best = min(by, key=lambda c: by[c]["fd"])
        cells = [("" if c not in by else f"**{grid_cell(by[c])}**" if c == best
                  else grid_cell(by[c])) for c in columns]
        lines.append("| " + " | ".join(map(str, key)) + " | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    core.add_problem_args(p, with_floor=False)
    p.add_argument("--sdes", default="vp,subvp,ve")
    p.add_argument("--samplers", default="ddim,heun,dpm_solver++",
                   help=f"fixed-step samplers of {', '.join(core.SAMPLERS)}")
    p.add_argument("--nfes", default="5,10,20")
    core.add_output_args(p, "grid_study")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    grids = grid_study(core.select_datasets(args.data), sdes=core.names(args.sdes),
                       samplers=core.names(args.samplers), nfes=core.numbers(args.nfes),
                       n=args.n, seeds=args.seeds)
    results = core.accuracy_results(core.run_meta(t0, n=args.n, seeds=args.seeds), grids=grids)
    out = core.write_results(args.out, args.tag, results,
                             core.accuracy_markdown(markdown_lines(grids)))
    print(f"done in {time.time() - t0:.0f}s -> {out}/{args.tag}.*")


if __name__ == "__main__":
    main()
