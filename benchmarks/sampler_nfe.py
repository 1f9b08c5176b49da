"""Sampler accuracy vs NFE on the exact mixtures: FD and SW of every sampler at every budget.

For each problem, SDE and sampler, draws --seeds sets of N samples with the exact score and
reports FD / SW to independent exact sets (mean ± std over the seeds) beside the floor
(benchmarks/sampler_core.py). 'ode' is the adaptive probability-flow solver (one cell, its own
NFE). Page: benchmarks/pages/sampler_accuracy.md.

    nice -n 10 python -m benchmarks.sampler_nfe --data 2d --seeds 5 --tag sampler_accuracy_2d
    python -m benchmarks.sampler_nfe --n 4000 --samplers dpm_solver++,heun --tag quick

Writes <--out>/<--tag>.{json,md,png}: the JSON's 'rows' (its 'grids' and 'ode_timing' are the
other studies' parts, empty here).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks import sampler_core as core

NFES = (5, 10, 20, 35, 50, 100, 1000)
# 1000-NFE runs only for the SDE samplers the targets name (keeps the run < 15 min).
MAX_NFE = {s: 100 for s in core.SAMPLERS if s not in ("euler_maruyama", "dpm_solver++")}
DEFAULT_SAMPLERS = [s for s in core.SAMPLERS if s not in core.VARIANTS] + ["ode"]


def accuracy(datasets: dict, *, sdes: list[str], samplers: list[str], nfes: list[int], n: int,
             seeds: int, floor_pairs: int) -> list[dict]:
    """One 'floor' row per problem, then one 'sampler' row per (problem, SDE, sampler, NFE)."""
    rows = []
    for dname, data in datasets.items():
        refs = core.reference_sets(data, n, seeds)
        fl = core.floor(data, n, floor_pairs, refs)
        print(f"[{dname}] floor FD {fl['fd'][0]:.4g}±{fl['fd'][1]:.2g} "
              f"SW {fl['sw'][0]:.4g}±{fl['sw'][1]:.2g}", flush=True)
        rows.append(dict(kind="floor", data=dname, fd=fl["fd"], sw=fl["sw"]))
        for sname in sdes:
            sde, eps = core.SDES[sname]
            for sampler in samplers:
                budgets = [b for b in nfes if b <= MAX_NFE.get(sampler, 10**9)]
                for budget in (budgets if sampler != "ode" else [None]):
                    name, options = (("ode", {}) if sampler == "ode"
                                     else core.SAMPLERS[sampler](budget, core.noise_range(data)))
                    t0 = time.time()
                    d = core.seeded_distances(data, sde, eps, name, options, n, seeds, refs)
                    row = dict(kind="sampler", data=dname, sde=sname, sampler=sampler,
                               budget=budget, seconds=time.time() - t0, **d)
                    rows.append(row)
                    print(f"[{dname} {sname}] {sampler:15s} nfe={d['nfe']:5d} "
                          f"FD {d['fd']:.4g}±{d['fd_std']:.2g} SW {d['sw']:.4g}±{d['sw_std']:.2g}"
                          f" ({row['seconds']:.1f}s)", flush=True)
    return rows


# --- reporting --------------------------------------------------------------------------------


def cell(r: dict) -> str:
    """'FD / SW', each as mean ± std when the row has several seeds."""
    if r.get("seeds", 1) > 1:
        return f"{r['fd']:.3g} ± {r['fd_std']:.2g} / {r['sw']:.3g} ± {r['sw_std']:.2g}"
    return f"{r['fd']:.3g} / {r['sw']:.3g}"


def markdown_lines(rows: list[dict]) -> list[str]:
    """Per problem: its floor, then one FD / SW table per SDE (samplers x budgets)."""
    lines = []
    floors = {r["data"]: r for r in rows if r["kind"] == "floor"}
    samp = [r for r in rows if r["kind"] == "sampler"]
    for dname, f in floors.items():
        lines += [f"## {dname}: floor FD {f['fd'][0]:.4g} ± {f['fd'][1]:.2g}, "
                  f"SW {f['sw'][0]:.4g} ± {f['sw'][1]:.2g}", ""]
        for sname in core.SDES:
            sub = [r for r in samp if r["data"] == dname and r["sde"] == sname]
            if sub:
                lines += _sde_table(dname, sname, sub)
    return lines


def _sde_table(dname: str, sname: str, sub: list[dict]) -> list[str]:
    budgets = sorted({r["budget"] for r in sub if r["budget"] is not None})
    seeds = max(r.get("seeds", 1) for r in sub)
    title = f"{dname} / {sname} — FD / SW" + (f" (mean ± std over {seeds} seeds)"
                                               if seeds > 1 else "")
    lines = [f"### {title}", "",
             "| sampler | " + " | ".join(str(b) for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    for sampler in dict.fromkeys(r["sampler"] for r in sub):
        cells = []
        for b in budgets:
            r = next((r for r in sub if r["sampler"] == sampler and r["budget"] == b), None)
            cells.append("" if r is None else cell(r)
                         + ("" if r["nfe"] == b else f" ({r['nfe']})"))
        ode = next((r for r in sub if r["sampler"] == sampler and r["budget"] is None), None)
        if ode is not None:
            cells = [f"adaptive: {cell(ode)} at {ode['nfe']} NFE"]
            cells += [""] * (len(budgets) - 1)
        lines.append(f"| {sampler} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def plot(rows: list[dict], path) -> None:
    """FD vs NFE, one panel per (problem, SDE), the seeds' std as error bars, the floor band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floors = {r["data"]: r for r in rows if r["kind"] == "floor"}
    samp = [r for r in rows if r["kind"] == "sampler"]
    datas, sdes = list(floors), [s for s in core.SDES if any(r["sde"] == s for r in samp)]
    fig, axes = plt.subplots(len(datas), len(sdes), figsize=(4.5 * len(sdes), 3.6 * len(datas)),
                             squeeze=False)
    for i, dname in enumerate(datas):
        for j, sname in enumerate(sdes):
            ax = axes[i, j]
            sub = [r for r in samp if r["data"] == dname and r["sde"] == sname]
            for sampler in dict.fromkeys(r["sampler"] for r in sub):
                pts = sorted((r["nfe"], r["fd"], r.get("fd_std", 0.0)) for r in sub
                             if r["sampler"] == sampler)
                nfe, fd, std = (np.asarray(v) for v in zip(*pts, strict=True))
                style = "*" if sampler == "ode" else ".-"
                ax.errorbar(nfe, fd, yerr=np.minimum(std, 0.9 * fd), fmt=style, label=sampler,
                            ms=8, capsize=2)
            mean, std = floors[dname]["fd"]
            ax.axhspan(max(mean - std, 1e-6), mean + std, color="gray", alpha=0.3, label="floor")
            ax.set(xscale="log", yscale="log", title=f"{dname} / {sname}", xlabel="NFE",
                   ylabel="Frechet distance")
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    core.add_problem_args(p)
    p.add_argument("--sdes", default="vp,subvp,ve")
    p.add_argument("--samplers", default=",".join(DEFAULT_SAMPLERS),
                   help=f"of {', '.join(core.SAMPLERS)}, ode")
    p.add_argument("--nfes", default=",".join(map(str, NFES)))
    core.add_output_args(p, "sampler_accuracy")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    rows = accuracy(core.select_datasets(args.data), sdes=core.names(args.sdes),
                    samplers=core.names(args.samplers), nfes=core.numbers(args.nfes), n=args.n,
                    seeds=args.seeds, floor_pairs=args.floor_pairs)
    results = core.accuracy_results(core.run_meta(t0, n=args.n, seeds=args.seeds), rows=rows)
    out = core.write_results(args.out, args.tag, results, core.accuracy_markdown(
        markdown_lines(rows)), plot=(lambda path: plot(rows, path)) if rows else None)
    print(f"done in {time.time() - t0:.0f}s -> {out}/{args.tag}.*")


if __name__ == "__main__":
    main()
