"""Defaults that find the data's scale: every fixed-step sampler at its default NFE and options,
with no data_scale (the estimate of score_sde.sampling.scale) and with data_scale=1 (the old
default), against the converged adaptive ODE, on the 2-D mixture scaled to spreads 0.05 to 20,
on VP, sub-VP, VE (sigma_max = the data's largest pairwise distance, the VE recipe of Song &
Ermon 2020) and EDM. Exact scores (benchmarks/sampler_core.py); FD to one exact reference set
of n samples; the floor is an exact set's FD to it. Page: benchmarks/pages/data_scale.md.

    python -m benchmarks.data_scale --n 2000 --tag data_scale

Writes <--out>/<--tag>.{json,md}.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from benchmarks import sampler_core as core
from score_sde import sde_lib
from score_sde.sampling.scale import estimate_data_scale

SAMPLERS = ("ddim", "heun", "dpm_solver++", "unipc", "ipndm")
SPREADS = (0.05, 0.3, 1.0, 5.0, 20.0)


def sdes_for(data, n: int) -> dict:
    """VP, sub-VP, VE with the recipe's sigma_max, EDM (sigma 0.002..80): (sde, eps) each."""
    x = np.asarray(data.sample(jax.random.PRNGKey(3), min(n, 2000)), np.float64)
    diameter = float(np.sqrt(np.max(np.sum((x[:, None] - x[None]) ** 2, -1))))
    return {"vp": (sde_lib.VPSDE(), 1e-3), "subvp": (sde_lib.subVPSDE(), 1e-3),
            "ve": (sde_lib.VESDE(sigma_min=0.01, sigma_max=diameter), 1e-5),
            "edm": (sde_lib.EDMSDE(sigma_min=0.002, sigma_max=80.0), 0.002)}


def run(n: int, spreads, sdes: list[str], samplers: list[str], save=None) -> list[dict]:
    base = core.make_datasets()["2d"]
    rows = []
    for s in spreads:
        data = core.scaled(base, s / core.data_scale(base))
        ref = core.reference_sets(data, n, 1)
        floor = core.floor(data, n, 3, ref)["fd"][0]
        for sname, (sde, eps) in sdes_for(data, n).items():
            if sname not in sdes:
                continue
            est = float(estimate_data_scale(sde, data.perturbed_score_fn(sde),
                                            jax.random.PRNGKey(11), (n, 2), eps))
            ode = core.seeded_distances(data, sde, eps, "ode", {}, n, 1, ref)
            row = dict(spread=s, sde=sname, floor=floor, estimate=est, ode=ode["fd"],
                       ode_nfe=ode["nfe"], sigma_max=float(getattr(sde, "sigma_max", 0.0)))
            for name in samplers:
                for tag, opts in (("estimated", {}), ("unit", {"data_scale": 1.0})):
                    d = core.seeded_distances(data, sde, eps, name, opts, n, 1, ref)
                    row[f"{name}_{tag}"], row[f"{name}_{tag}_nfe"] = d["fd"], d["nfe"]
            rows.append(row)
            print(_line(row, samplers), flush=True)
            if save is not None:  # the rows so far, after every cell (a long run on 2 cores)
                save(rows)
    return rows


def _ratio(fd: float, row: dict) -> float:
    """FD over the larger of the converged ODE's FD and the floor."""
    return fd / max(row["ode"], row["floor"])


def _line(row: dict, samplers) -> str:
    cells = " ".join(f"{name} {_ratio(row[f'{name}_estimated'], row):.2f}"
                     f" ({_ratio(row[f'{name}_unit'], row):.2f})" for name in samplers)
    return (f"[s={row['spread']:g} {row['sde']}] est {row['estimate']:.3g} ode "
            f"{row['ode']:.3g} floor {row['floor']:.3g} | {cells}")


def markdown(rows: list[dict], samplers) -> str:
    head = ("| spread | SDE | estimate | floor | ODE FD (nfe) | "
            + " | ".join(samplers) + " |")
    lines = ["# Samplers' defaults with the estimated data scale (FD / max(ODE, floor); "
             "in brackets data_scale=1, the old default)", "", head,
             "|" + "---|" * (5 + len(samplers))]
    for r in rows:
        cells = " | ".join(f"{_ratio(r[f'{s}_estimated'], r):.2f} "
                           f"({_ratio(r[f'{s}_unit'], r):.2f})" for s in samplers)
        lines.append(f"| {r['spread']:g} | {r['sde']} | {r['estimate']:.3g} | {r['floor']:.2g}"
                     f" | {r['ode']:.2g} ({r['ode_nfe']}) | {cells} |")
    worst = max(_ratio(r[f"{s}_estimated"], r) for r in rows for s in samplers)
    worst_unit = max(_ratio(r[f"{s}_unit"], r) for r in rows for s in samplers)
    lines += ["", f"Worst ratio: {worst:.2f} estimated, {worst_unit:.2f} with data_scale=1."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--spreads", default=",".join(str(s) for s in SPREADS))
    p.add_argument("--sdes", default="vp,subvp,ve,edm")
    p.add_argument("--samplers", default=",".join(SAMPLERS))
    core.add_output_args(p, "data_scale")
    a = p.parse_args(argv)
    t0 = time.time()
    samplers = core.names(a.samplers)

    def save(rows):
        meta = core.run_meta(t0, n=a.n, spreads=a.spreads, sdes=a.sdes, samplers=a.samplers)
        core.write_results(a.out, a.tag, dict(meta=meta, rows=rows), markdown(rows, samplers))

    run(a.n, [float(s) for s in a.spreads.split(",")], core.names(a.sdes), samplers, save)


if __name__ == "__main__":
    main()
