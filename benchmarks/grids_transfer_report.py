"""Tables and plots of the grid-transfer study (benchmarks/grids_transfer.py), and --merge.

The verdict table holds each grid candidate to the rule "no default worse than 2x the cell's
best grid" (by FD error, where anything below the floor's std counts as on the floor, and by
the noise-free rms to the ODE's samples); per-cell tables give the error vs NFE. Page:
benchmarks/pages/grids_transfer.md.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from benchmarks import sampler_core as core


def transfer_errors(rows) -> dict:
    """{(sampler, data, sde, budget): {candidate: row}} of the transfer rows."""
    cells: dict = {}
    for r in rows:
        if r["kind"] == "transfer":
            cells.setdefault((r["sampler"], r["data"], r["sde"], r["budget"]), {})[
                r["candidate"]] = r
    return cells


def transfer_verdicts(rows, metric: str = "err") -> dict:
    """{(sampler, candidate): (cells within 2x the best candidate, cells, worst ratio, where)}.

    A candidate passes a cell when its error is at most twice the cell's best, or at most the
    floor's std (metric 'err': FD differences below it are on the floor, so a negative error
    counts as 0 and every candidate within the floor's std of 0 passes); 'rms' uses 2x only.
    Cells with one candidate are not counted.
    The best of an SDE-only grid's cell is the best SDE-only grid; of a '+range' or '@scale'
    one (it knows the data), the best of all.
    """
    floors = {r["data"]: r["fd"][1] for r in rows if r["kind"] == "floor"}
    out: dict = {}
    for key, by in transfer_errors(rows).items():
        if len(by) < 2:  # a cell with one candidate decides nothing
            continue
        tol = floors.get(key[1], 0.0) if metric == "err" else 0.0
        vals = {c: max(r[metric], 0.0) if np.isfinite(r[metric]) else np.inf
                for c, r in by.items()}
        # Without the data's range or scale a sampler can only use the SDE-only grids: those
        # compete among themselves; a '+range' or '@scale' candidate competes with every grid.
        best_sde_only = min((v for c, v in vals.items() if not _knows_data(c)),
                            default=np.inf)
        best_all = min(vals.values())
        for c, v in vals.items():
            best = best_all if _knows_data(c) else best_sde_only
            ok, n, worst, where = out.get((key[0], c), (0, 0, 0.0, None))
            ratio = v / max(best, tol, 1e-12)
            out[(key[0], c)] = (ok + (v <= max(2 * best, tol)), n + 1,
                                *((ratio, key[1:]) if ratio > worst else (worst, where)))
    return out


def _knows_data(candidate: str) -> bool:
    """A candidate placed with the data's noise range ('+range') or scale ('@scale')."""
    return "+range" in candidate or "@scale" in candidate


def transfer_markdown(rows) -> str:
    lines = ["# Do the default grids transfer? Error vs NFE against the converged flow", "",
             "error = FD(sampler) - FD(adaptive ODE, rtol = atol = 1e-5), both from the same "
             "prior draws and against the same reference sets, mean ± std over the seeds "
             "(the floor cancels); rms = RMS distance of the samples to the ODE's own.", ""]
    verdicts = {m: transfer_verdicts(rows, m) for m in ("err", "rms")}
    lines += ["## Candidates: cells within 2x the best candidate (FD error, or on the floor: "
              "below the floor's std) | the same by rms; worst ratio (data, SDE, NFE). "
              "SDE-only grids are compared with the best SDE-only grid, '+range' ones "
              "(the data's noise range) and '@scale' ones (placed for the data's scale) with "
              "the best of all; cells with one candidate are not counted.", "",
              "| sampler | candidate | FD error: cells ok | worst | rms: cells ok | worst |",
              "|---|---|---|---|---|---|"]
    for (sampler, cand), (ok, n, worst, where) in sorted(verdicts["err"].items()):
        rok, rn, rworst, rwhere = verdicts["rms"][(sampler, cand)]
        lines.append(f"| {sampler} | {cand} | {ok}/{n} | {worst:.3g} {where} | {rok}/{rn} | "
                     f"{rworst:.3g} {rwhere} |")
    lines += variant_markdown(rows)
    floors = {r["data"]: r for r in rows if r["kind"] == "floor"}
    odes = {(r["data"], r["sde"]): r for r in rows if r["kind"] == "ode"}
    cells = transfer_errors(rows)
    cands = list(dict.fromkeys(r["candidate"] for r in rows if r["kind"] == "transfer"))
    budgets = sorted({k[3] for k in cells})
    for dname, f in floors.items():
        lines += ["", f"## {dname}: floor FD {f['fd'][0]:.4g} ± {f['fd'][1]:.2g}", "",
                  "| SDE (ODE FD, NFE) | sampler | grid | " + " | ".join(map(str, budgets))
                  + " |", "|---|---|---|" + "---|" * len(budgets)]
        for (sampler, d, sname), cand in itertools.product(
                dict.fromkeys((k[0], k[1], k[2]) for k in cells if k[1] == dname), cands):
            o = odes[(dname, sname)]
            vals = [cells.get((sampler, d, sname, b), {}).get(cand) for b in budgets]
            if not any(vals):
                continue
            lines.append(f"| {sname} ({o['fd']:.3g}, {o['nfe']}) | {sampler} | {cand} | "
                         + " | ".join("" if v is None else
                                      f"{v['err']:.2g} ± {v['err_std']:.1g}"
                                      + ("" if v["nfe"] == v["budget"] else f" ({v['nfe']})")
                                      for v in vals) + " |")
    return "\n".join(lines) + "\n"


def variant_markdown(rows, variant: str = "afs@scale", base: str = "default@scale") -> list:
    """Lines of a table: the `variant` candidate's rms to the ODE over the `base` one's, per
    (sampler, data, NFE), median [max] over the SDEs (below 1: the variant is closer to the
    converged flow); none without both candidates."""
    ratios: dict = {}
    for (sampler, data, _, budget), by in transfer_errors(rows).items():
        if variant in by and base in by:
            ratios.setdefault((sampler, data), {}).setdefault(budget, []).append(
                by[variant]["rms"] / max(by[base]["rms"], 1e-30))
    if not ratios:
        return []
    budgets = sorted({b for by in ratios.values() for b in by})
    lines = ["", f"## {variant} against {base}: rms to the ODE, ratio, median [max] over "
             "the SDEs", "", "| sampler | data | " + " | ".join(map(str, budgets)) + " |",
             "|---|---|" + "---|" * len(budgets)]
    for (sampler, data), by in sorted(ratios.items()):
        lines.append(f"| {sampler} | {data} | " + " | ".join(
            f"{np.median(by[b]):.2f} [{max(by[b]):.2f}]" if b in by else "" for b in budgets)
            + " |")
    return lines


def transfer_plot(rows, path, candidate: str = "default"):
    """Error vs NFE of each sampler's `candidate` grid, one panel per (data, SDE), with the
    floor's std as the band around 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floors = {r["data"]: r["fd"][1] for r in rows if r["kind"] == "floor"}
    sub = [r for r in rows if r["kind"] == "transfer" and r["candidate"] == candidate]
    datas = list(floors)
    sdes = list(dict.fromkeys(r["sde"] for r in sub))
    fig, axes = plt.subplots(len(datas), len(sdes), figsize=(3.2 * len(sdes), 2.8 * len(datas)),
                             squeeze=False)
    for (i, dname), (j, sname) in itertools.product(enumerate(datas), enumerate(sdes)):
        ax = axes[i, j]
        for sampler in dict.fromkeys(r["sampler"] for r in sub):
            pts = sorted((r["nfe"], r["err"], r["err_std"]) for r in sub
                         if (r["data"], r["sde"], r["sampler"]) == (dname, sname, sampler))
            if pts:
                nfe, err, std = (np.asarray(v) for v in zip(*pts, strict=True))
                ax.errorbar(nfe, err, yerr=std, fmt=".-", label=sampler, ms=5, capsize=2)
        ax.axhspan(-floors[dname], floors[dname], color="gray", alpha=0.3, label="floor std")
        ax.set_yscale("symlog", linthresh=max(floors[dname], 1e-6))
        ax.set_title(f"{dname} / {sname}", fontsize=8)
        ax.tick_params(labelsize=6)
    axes[0, -1].legend(fontsize=6)
    fig.supxlabel("NFE")
    fig.supylabel("FD - FD(adaptive ODE)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# On the VP SDE the 'vp_*' grids are VP's own 'uniform' / 'quadratic' (tests/test_grids.py).
VP_ALIASES = {"uniform": "vp_uniform", "quadratic": "vp_quadratic"}


def merge_transfer(paths: list[str], out: Path, tag: str, default_was: dict | None = None,
                   plot_candidate: str = "", renames: dict | None = None):
    """One table from several transfer runs (the first row of each floor / ODE / cell wins:
    runs with the same --n, --seeds and prior draws agree on them). default_was renames each
    sampler's 'default' rows to the grid that default was (runs before a change of defaults);
    VP rows of 'uniform' / 'quadratic' also count as 'vp_uniform' / 'vp_quadratic'. renames:
    {'PATH_INDEX:SAMPLER': NEW} renames a sampler's rows of the i-th path (NEW '' drops them;
    'BASE/CANDIDATE' makes them a candidate of BASE), e.g. a run made before a sampler's
    default changed, or a variant compared with the base sampler's grids."""
    rows = merged_rows(paths, default_was or {}, renames or {})
    plot = None
    if plot_candidate:
        plot = lambda path: transfer_plot(rows, path, plot_candidate)  # noqa: E731
    core.write_results(out, tag, dict(meta=dict(merged=paths), rows=rows),
                       transfer_markdown(rows), plot=plot)
    print(f"{len(rows)} rows -> {out}/{tag}.*")


def merged_rows(paths: list[str], default_was: dict, renames: dict) -> list[dict]:
    """The rows of the results JSONs at `paths`, renamed and deduplicated (merge_transfer)."""
    rows, seen = [], set()

    def add(r):
        key = (r["kind"], r["data"], r.get("sde"), r.get("sampler"), r.get("budget"),
               r.get("candidate"))
        if key not in seen:
            seen.add(key)
            rows.append(r)

    for i, path in enumerate(paths):
        for r in json.loads(Path(path).read_text())["rows"]:
            new = renames.get(f"{i}:{r.get('sampler')}")
            if new is not None:
                if not new:
                    continue
                sampler, _, candidate = new.partition("/")
                r = dict(r, sampler=sampler, **({"candidate": candidate} if candidate else {}))
            if r.get("candidate") == "default" and r["sampler"] in default_was:
                r = dict(r, candidate=default_was[r["sampler"]])
            add(r)
            if r.get("sde") == "vp" and r.get("candidate") in VP_ALIASES:
                add(dict(r, candidate=VP_ALIASES[r["candidate"]]))
    return rows
