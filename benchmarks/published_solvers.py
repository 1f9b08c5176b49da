"""Published few-step solvers beside ours, fed the same exact score (issue 17, item 6).

Every solver starts from the same prior draws x_T as our samplers (prior_sample with the same
rng) and sees the same closed-form score of the benchmark's data (sampler_core.py's
problems), so the only difference is the solver and its time grid. Error, as in the transfer
study: FD(solver, ref) - FD(our adaptive ODE from the same x_T, ref), mean ± std over seeds.

- k-diffusion (PyPI `k-diffusion`, 0.1.1.post1): DPM-Solver++(2M), the deterministic
  DPM-Solver++(3M) (its 3M SDE sampler at eta = 0), EDM's Heun and LMS (order 4) on its
  default Karras grid (rho = 7) over the SDE's noise range, in EDM variables
  x_edm = x / alpha at sigma_edm = sigma / alpha: any SDE (the probability flow is the same
  ODE there). This release has no UniPC and no DEIS.
- diffusers (PyPI `diffusers`): UniPC (bh2, order 2), DPM-Solver++ (2M) and DEIS (order 2)
  schedulers with their defaults (1000 discrete VP steps, betas 1e-4..0.02 linear: our VP SDE
  discretised) and with use_karras_sigmas=True; VP only, the SDE these schedulers model. The
  exact eps is evaluated at the scheduler's own sigma of each step.

k_diffusion's package __init__ imports its training stack (torchvision, kornia, clip, ...);
only its `sampling` module is needed, and it is loaded on its own when the full import fails.

    pip install -e .[bench]
    nice -n 10 python benchmarks/published_solvers.py --n 2000 --seeds 3 --nfes 5,10
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, too
from benchmarks import sampler_core as sa  # noqa: E402  (the problems, SDEs and distances)
from score_sde import analytic, sde_lib  # noqa: E402
from score_sde.sampling.common import prior_sample  # noqa: E402

KDIFF = ("kd_dpmpp_2m", "kd_dpmpp_3m", "kd_heun", "kd_lms")
DIFFUSERS = ("df_unipc", "df_dpmpp_2m", "df_deis", "df_unipc_karras", "df_dpmpp_2m_karras",
             "df_deis_karras")


def k_sampling():
    """k_diffusion.sampling, without the package's training imports if those fail."""
    try:
        import k_diffusion.sampling as ks
        return ks
    except Exception:  # noqa: BLE001 - e.g. a torchvision that does not match torch
        pass
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        raise SystemExit("k-diffusion is not installed: pip install -e .[bench]")
    folder = Path(spec.submodule_search_locations[0])
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = [str(folder)]
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    pkg.utils = utils
    sys.modules.update({"k_diffusion": pkg, "k_diffusion.utils": utils})
    mod_spec = importlib.util.spec_from_file_location("k_diffusion.sampling",
                                                      folder / "sampling.py")
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def edm_denoiser(data):
    """D(x_edm, sigma) = E[x_0 | x_0 + sigma z = x_edm] of the data, jitted (numpy in/out)."""
    score = data.perturbed_score_fn(sde_lib.EDMSDE(sigma_min=1e-4, sigma_max=1e5))
    fn = jax.jit(lambda x, s: x + (s**2)[:, None] * score(x, s))
    return lambda x, s: np.asarray(fn(jnp.asarray(x, jnp.float32), jnp.asarray(s, jnp.float32)))


def sigma_edm(sde, t: float) -> float:
    alpha, sigma = sde.marginal_coeffs(jnp.asarray([t], jnp.float32))
    return float(sigma[0] / alpha[0])


def run_kdiffusion(name, data, sde, eps, x_t, nfe):
    """k-diffusion's `name` from x_T (our prior draw) on its Karras grid; returns x_0 samples."""
    import torch

    ks = k_sampling()
    den = edm_denoiser(data)
    calls = [0]

    def model(x, sigma):
        calls[0] += 1
        return torch.from_numpy(den(x.numpy(), sigma.numpy()))

    s_max, s_min = sigma_edm(sde, sde.T), sigma_edm(sde, eps)
    alpha_t = float(sde.marginal_coeffs(jnp.asarray([sde.T], jnp.float32))[0][0])
    x = torch.from_numpy(np.asarray(x_t, np.float32) / alpha_t)
    steps = (nfe + 1) // 2 if name == "kd_heun" else nfe  # Heun: 2 calls a step, 1 the last
    sigmas = ks.get_sigmas_karras(steps, s_min, s_max)
    solver = {"kd_dpmpp_2m": ks.sample_dpmpp_2m, "kd_heun": ks.sample_heun,
              "kd_lms": ks.sample_lms,
              "kd_dpmpp_3m": lambda m, x, s, disable: ks.sample_dpmpp_3m_sde(
                  m, x, s, disable=disable, eta=0.0)}[name]
    with torch.no_grad():
        out = solver(model, x, sigmas, disable=True)
    return out.numpy().astype(np.float64), calls[0]


def run_diffusers(name, data, x_t, nfe):
    """diffusers' scheduler `name` on the VP SDE from x_T; the exact eps at its sigmas."""
    import torch
    from diffusers import (
        DEISMultistepScheduler,
        DPMSolverMultistepScheduler,
        UniPCMultistepScheduler,
    )

    kind, karras = name.removeprefix("df_").removesuffix("_karras"), name.endswith("_karras")
    cls = {"unipc": UniPCMultistepScheduler, "dpmpp_2m": DPMSolverMultistepScheduler,
           "deis": DEISMultistepScheduler}[kind]
    sched = cls(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                beta_schedule="linear", use_karras_sigmas=karras)
    sched.set_timesteps(nfe)
    den = edm_denoiser(data)
    sigmas = np.asarray(sched.sigmas, np.float64)
    x = torch.from_numpy(np.asarray(x_t, np.float32)) * sched.init_noise_sigma
    for i, t in enumerate(sched.timesteps):
        s = sigmas[i]
        x_edm = x.numpy() * math.sqrt(1.0 + s**2)  # the scheduler's x is alpha x_edm
        d = den(x_edm, np.full(len(x_edm), s, np.float32))
        eps = torch.from_numpy(((x_edm - d) / s).astype(np.float32))
        x = sched.step(eps, t, x).prev_sample
    return x.numpy().astype(np.float64), len(sched.timesteps)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=2000, help="samples per set")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--floor-pairs", type=int, default=3)
    p.add_argument("--data", default="2d,64d,curve64,2d_x0.05,2d_x20")
    p.add_argument("--sdes", default="vp,ve50,ve1348,edm")
    p.add_argument("--nfes", default="5,10")
    p.add_argument("--ours", default="dpm_solver++,unipc,ipndm,dpm_solver++@scale,unipc@scale,"
                   "ipndm@scale", help="our samplers on their default grids; NAME@scale: "
                   "placed for the data's scale (data_scale, what a config that knows it "
                   "gives); NAME@range: 'logsnr' over the data's noise range")
    p.add_argument("--solvers", default=",".join(KDIFF + DIFFUSERS))
    p.add_argument("--update", default="",
                   help="a results JSON of this script (same --n, --seeds, draws): keep its "
                        "rows and replace those of the solvers run now (e.g. after a change "
                        "of one sampler's defaults: --ours ipndm,ipndm@scale --solvers '')")
    p.add_argument("--tag", default="published_solvers")
    p.add_argument("--out", default=str(sa.RESULTS))
    args = p.parse_args(argv)
    nfes = [int(v) for v in args.nfes.split(",")]
    datasets = {k: v for k, v in sa.make_datasets().items() if k in args.data.split(",")}
    rows, t0 = [], time.time()
    for dname, data in datasets.items():
        n, seeds = args.n, args.seeds
        refs = sa.reference_sets(data, n, seeds)
        fl = sa.floor(data, n, args.floor_pairs, refs)
        rows.append(dict(kind="floor", data=dname, fd=fl["fd"]))
        fd_of = lambda x, n=n, refs=refs: np.array(  # noqa: E731
            [analytic.frechet_distance(x[i * n:(i + 1) * n], r) for i, r in enumerate(refs)])
        for sname in args.sdes.split(","):
            sde, eps = sa.SDES[sname]
            x_ode, nfe_ode = sa.draw(data, sde, eps, "ode", {}, n * seeds, 11)
            fd_ode = fd_of(x_ode)
            x_t, _ = prior_sample(sde, jax.random.PRNGKey(11), (n * seeds, sa.dim_of(data)))
            rows.append(dict(kind="ode", data=dname, sde=sname, nfe=nfe_ode,
                             fd=float(fd_ode.mean())))
            for solver in filter(None, args.ours.split(",") + args.solvers.split(",")):
                if solver.startswith("df_") and sname != "vp":
                    continue
                for budget in nfes:
                    if solver.startswith("kd_"):
                        x, used = run_kdiffusion(solver, data, sde, eps, x_t, budget)
                    elif solver.startswith("df_"):
                        x, used = run_diffusers(solver, data, x_t, budget)
                    else:  # ours, on its default grid ('@scale', '@range': see --ours)
                        name, _, known = solver.partition("@")
                        options = dict(nfe=budget)
                        if known == "range":
                            options.update(grid="logsnr", sigma_range=sa.noise_range(data))
                        elif known == "scale":
                            options.update(data_scale=sa.data_scale(data))
                        x, used = sa.draw(data, sde, eps, name, options, n * seeds, 11)
                    err = fd_of(x) - fd_ode
                    rows.append(dict(kind="solver", data=dname, sde=sname, solver=solver,
                                     budget=budget, nfe=used, err=float(err.mean()),
                                     err_std=float(err.std())))
                    print(f"[{dname} {sname}] {solver:20s} nfe={used:3d} err "
                          f"{err.mean():+.4g}±{err.std():.2g}", flush=True)
    meta = dict(n=args.n, seeds=args.seeds, seconds=time.time() - t0)
    if args.update:
        rows, meta = updated_rows(args.update, rows), dict(meta, updated=args.update)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.tag}.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    (out / f"{args.tag}.md").write_text(markdown(rows, nfes))
    print(f"done in {time.time() - t0:.0f}s -> {out}/{args.tag}.*")


def updated_rows(path: str, new_rows: list) -> list:
    """The rows of the results JSON at `path`, with the solver rows of the solvers in
    new_rows replaced by those (floors and ODE rows: the old ones, the same computation)."""
    old = json.loads(Path(path).read_text())["rows"]
    rerun = {r["solver"] for r in new_rows if r["kind"] == "solver"}
    new = {(r["data"], r["sde"], r["solver"], r["budget"]): r for r in new_rows
           if r["kind"] == "solver"}
    rows = [new.get((r["data"], r["sde"], r["solver"], r["budget"]), r)
            if r["kind"] == "solver" and r["solver"] in rerun else r for r in old]
    missing = set(new) - {(r["data"], r.get("sde"), r.get("solver"), r.get("budget"))
                          for r in rows}
    if missing:
        raise ValueError(f"--update {path}: it has no rows for {sorted(missing)[:3]} ...; "
                         "run the same --data, --sdes and --nfes")
    return rows


def markdown(rows, nfes) -> str:
    """Per (data, SDE, NFE): each solver's error; 'ahead' = our best below every published."""
    solvers = list(dict.fromkeys(r["solver"] for r in rows if r["kind"] == "solver"))
    floors = {r["data"]: r["fd"][1] for r in rows if r["kind"] == "floor"}
    lines = ["# Published solvers beside ours (same exact score, same prior draws)", "",
             "FD error over our adaptive ODE from the same x_T (mean over seeds); 'ahead': "
             "our best |error| is below every published solver's ('yes'), or both are within "
             "the floor's std ('tie (floor)').", "",
             "| data | SDE | NFE | " + " | ".join(solvers) + " | ahead |",
             "|---|---|---|" + "---|" * (len(solvers) + 1)]
    keys = dict.fromkeys((r["data"], r["sde"], r["budget"]) for r in rows
                         if r["kind"] == "solver")
    for key in keys:
        by = {r["solver"]: r for r in rows if r["kind"] == "solver"
              and (r["data"], r["sde"], r["budget"]) == key}
        ours = min((abs(by[s]["err"]) for s in by if not s.startswith(("kd_", "df_"))),
                   default=np.inf)
        theirs = min((abs(by[s]["err"]) for s in by if s.startswith(("kd_", "df_"))),
                     default=np.inf)
        tie = max(ours, theirs) <= floors[key[0]]
        verdict = "tie (floor)" if tie else "yes" if ours < theirs else "NO"
        lines.append("| " + " | ".join(map(str, key)) + " | " + " | ".join(
            f"{by[s]['err']:.2g}" if s in by else "" for s in solvers) + f" | {verdict} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
