"""Sampler accuracy vs NFE on Gaussian mixtures with exact perturbed scores.

For each dataset (a 2-D mixture, a 64-D mixture), SDE (VP, sub-VP, VE) and sampler, draw N
samples with the exact score and measure two distances to an independent set of N exact samples:
the Frechet distance (FD) and the sliced 2-Wasserstein distance (SW). With --seeds S each cell
is S such pairs (independent prior draws and reference sets), reported as mean ± std: one
pair's FD is as noisy as the floor itself. The floor is the same distance from fresh exact
sample sets to the same reference sets (mean and std over --floor-pairs sets): what an exact
sampler would score. Every sampler starts from the same prior draws (same rng), so the
comparisons between samplers are paired.
Also: a time-grid study (uniform / quadratic / logsnr / karras at low NFE, over the SDE's whole
noise range and over the data's, see noise_range) and the wall time of
the on-device diffrax ODE sampler against scipy's RK45 over the same score (host round trips).

    nice -n 10 python benchmarks/sampler_accuracy.py              # everything (N = 20000)
    python benchmarks/sampler_accuracy.py --transfer --data curve64,2d_x20 --candidates \
        default,karras,logsnr+range    # grid candidates against the converged ODE (issue 17)
    python benchmarks/sampler_accuracy.py --n 4000 --samplers dpm_solver++,heun --skip-grids

Writes <--out, default benchmarks/results>/<--tag>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from score_sde import analytic, sde_lib
from score_sde.sampling import get_sampler, optimize_grid
from score_sde.sampling.common import prior_sample

RESULTS = Path(__file__).resolve().parent / "results"


# --- data: exact mixtures ---------------------------------------------------------------------


class Rotated:
    """x = R y with y ~ a diagonal-covariance mixture: full covariances, O(D^2) exact score."""

    def __init__(self, base: analytic.GaussianMixture, rot: np.ndarray):
        self.base, self.rot = base, jnp.asarray(rot, jnp.float32)

    def sample(self, rng, n):
        return self.base.sample(rng, n) @ self.rot.T

    def perturbed_score_fn(self, sde):
        score = self.base.perturbed_score_fn(sde)
        return lambda x, t: score(x @ self.rot, t) @ self.rot.T


def noise_range(data) -> tuple[float, float]:
    """The noise levels (sigma / alpha) where the data changes under noise: half its smallest
    standard deviation to twice the largest distance between its modes (the grid option
    sigma_range)."""
    mix = data.base if isinstance(data, Rotated) else data  # a rotation keeps both
    std_min = float(np.sqrt(np.linalg.eigvalsh(mix.covs).min()))
    diameter = float(np.max(np.linalg.norm(mix.means[:, None] - mix.means[None], axis=-1)))
    return 0.5 * std_min, 2.0 * diameter


def data_scale(data) -> float:
    """The data's spread as the samplers' data_scale: its per-coordinate standard deviation
    sqrt(trace(Cov) / D) (1: unit-scale data; a config gives image data in [-1, 1] its bound,
    1)."""
    mix = data.base if isinstance(data, Rotated) else data  # a rotation keeps the trace
    w = np.asarray(mix.weights, np.float64) / np.sum(mix.weights)
    means = np.asarray(mix.means, np.float64)
    mean = w @ means
    second = np.einsum("k,kd->", w, (means - mean) ** 2) + np.einsum(
        "k,kdd->", w, np.asarray(mix.covs, np.float64))
    return float(np.sqrt(second / means.shape[1]))


def make_datasets() -> dict:
    """'2d': 5 full-covariance modes of unequal weight; '64d': 6 modes, rotated, varied spectra;
    'curve64': a thin tube around a closed curve in 64-D (curve_mixture); '2d_x0.05' and
    '2d_x20': the 2-D mixture shrunk / grown 20x (spread far below / above 1)."""
    rng = np.random.default_rng(0)
    angles = np.linspace(0, 2 * np.pi, 5, endpoint=False)
    means2 = 3.0 * np.stack([np.cos(angles), np.sin(angles)], 1)
    covs2 = []
    for a in angles:
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        covs2.append(rot @ np.diag([0.5, 0.05]) @ rot.T)
    two = analytic.GaussianMixture([0.3, 0.25, 0.2, 0.15, 0.1], means2, np.stack(covs2))
    d, k = 64, 6
    spectra = np.exp(rng.uniform(np.log(0.01), np.log(1.0), (k, d)))
    base = analytic.GaussianMixture(rng.dirichlet(np.full(k, 5.0)), rng.normal(size=(k, d)),
                                    np.stack([np.diag(s) for s in spectra]))
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return {"2d": two, "64d": Rotated(base, q), "curve64": curve_mixture(),
            "2d_x0.05": scaled(two, 0.05), "2d_x20": scaled(two, 20.0)}


def curve_mixture(dim: int = 64, k: int = 96, std: float = 0.03,
                  seed: int = 1) -> analytic.GaussianMixture:
    """Data on a curved 1-D manifold: k isotropic Gaussians of std `std` whose means lie, two
    stds apart, along a closed curve (three random Fourier harmonics) in R^dim: a tube of
    radius `std` around a loop of length 2 * std * k, in every direction of R^dim. Isotropic
    components keep the exact score O(k dim) per sample."""
    rng = np.random.default_rng(seed)
    coef = rng.normal(size=(3, 2, dim)) / np.arange(1, 4)[:, None, None]
    theta = np.linspace(0.0, 2 * np.pi, 4096, endpoint=False)
    harmonics = np.arange(1, 4)[:, None] * theta  # (3, T)
    curve = (np.einsum("jt,jd->td", np.cos(harmonics), coef[:, 0])
             + np.einsum("jt,jd->td", np.sin(harmonics), coef[:, 1]))
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(curve, axis=0), axis=1))])
    length = arc[-1] + np.linalg.norm(curve[0] - curve[-1])  # the closed loop's length
    idx = np.searchsorted(arc, np.linspace(0.0, length, k, endpoint=False))
    means = curve[np.minimum(idx, len(curve) - 1)] * (2 * std * k / length)
    covs = np.broadcast_to(std**2 * np.eye(dim), (k, dim, dim)).copy()
    return analytic.GaussianMixture(np.ones(k), means, covs)


def scaled(mix: analytic.GaussianMixture, s: float) -> analytic.GaussianMixture:
    """The mixture of s x: means times s, covariances times s^2 (exact score as before)."""
    return analytic.GaussianMixture(mix.weights, s * mix.means, s**2 * mix.covs,
                                    mix.event_shape)


SDES = {
    "vp": (sde_lib.VPSDE(), 1e-3),
    "subvp": (sde_lib.subVPSDE(), 1e-3),
    # sigma_max = 150: well above the data's spread (largest distance between modes 11.9 in
    # 64-D, 5.7 in 2-D) and VP's sigma / alpha at T (152). At 50 the prior N(0, 50^2) misses
    # p_T enough that the converged 64-D probability flow lands at FD 0.077 against the
    # floor's 0.045 (0.049 from the exact p_T); at 150 it is at 0.053, as VP and sub-VP.
    "ve": (sde_lib.VESDE(sigma_min=0.01, sigma_max=150.0), 1e-5),
    # The published VE configs' range of sigma_max (CIFAR-10 50, 256 px 348, CelebA-HQ 1348)
    # and EDM's SDE: the SDEs a default grid must serve (the transfer study).
    "ve50": (sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0), 1e-5),
    "ve348": (sde_lib.VESDE(sigma_min=0.01, sigma_max=348.0), 1e-5),
    "ve1348": (sde_lib.VESDE(sigma_min=0.01, sigma_max=1348.0), 1e-5),
    "edm": (sde_lib.EDMSDE(sigma_min=0.002, sigma_max=80.0), 0.002),
}
TRANSFER_SDES = ("vp", "subvp", "ve50", "ve", "ve348", "ve1348", "edm")

# Samplers at a budget of nfe score calls: name -> (get_sampler name, options(nfe, noise_range)).
SAMPLERS = {
    "euler_maruyama": lambda n, _: ("pc", dict(predictor="euler_maruyama", n_steps=n)),
    "ancestral": lambda n, _: ("pc", dict(predictor="ancestral_sampling", n_steps=n)),
    "pc_rd_langevin": lambda n, _: ("pc", dict(predictor="reverse_diffusion",
                                               corrector="langevin", n_steps=max(n // 2, 1))),
    "ode_euler": lambda n, _: ("ode", dict(solver="euler", nfe=n)),
    "ddim": lambda n, _: ("ddim", dict(nfe=n)),
    "ddim_eta1": lambda n, _: ("ddim", dict(nfe=n, eta=1.0)),
    "heun": lambda n, _: ("heun", dict(nfe=n)),
    "heun_edm": lambda n, _: ("heun", dict(nfe=n, exponential=False)),
    "dpm_solver++": lambda n, _: ("dpm_solver++", dict(nfe=n)),
    "dpm_solver++3m": lambda n, _: ("dpm_solver++", dict(nfe=n, order=3)),
    # With the data's noise range (see noise_range), on the grid measured best with it.
    "dpm_solver++_range": lambda n, r: ("dpm_solver++", dict(nfe=n, grid="logsnr",
                                                             sigma_range=r)),
}
VARIANTS = ("dpm_solver++3m", "dpm_solver++_range", "heun_edm")  # run on request: --samplers
GRIDS = ("uniform", "quadratic", "logsnr", "karras")
NFES = (5, 10, 20, 35, 50, 100, 1000)


def draw(data, sde, eps, name, options, n, seed):
    sample = get_sampler(name, sde, (n, dim_of(data)), eps=eps, **options)
    fn = jax.jit(lambda rng: sample(rng, data.perturbed_score_fn(sde)))
    x, nfe = fn(jax.random.PRNGKey(seed))
    return np.asarray(x, np.float64), int(nfe)


def seeded_distances(data, sde, eps, name, options, n, seeds, refs) -> dict:
    """FD and SW of `seeds` independent sets of n samples (one batched draw) to their refs."""
    x, nfe = draw(data, sde, eps, name, options, n * seeds, seed=11)
    vals = [distances(x[i * n:(i + 1) * n], refs[i]) for i in range(seeds)]
    out = {k: float(np.mean([v[k] for v in vals])) for k in ("fd", "sw")}
    out.update({f"{k}_std": float(np.std([v[k] for v in vals])) for k in ("fd", "sw")})
    return dict(nfe=nfe, seeds=seeds, **out)


def reference_sets(data, n, seeds) -> list[np.ndarray]:
    ref = np.asarray(data.sample(jax.random.PRNGKey(7), n * seeds), np.float64)
    return [ref[i * n:(i + 1) * n] for i in range(seeds)]


def dim_of(data) -> int:
    return data.base.dim if isinstance(data, Rotated) else data.dim


def distances(x, ref) -> dict:
    return {"fd": analytic.frechet_distance(x, ref), "sw": analytic.sliced_wasserstein(x, ref)}


def floor(data, n, pairs, refs) -> dict:
    """FD and SW (mean, std) of `pairs` fresh exact sets of n samples against the reference
    sets, in turn: what an exact sampler would score against the same references."""
    vals = [distances(np.asarray(data.sample(jax.random.PRNGKey(1000 + i), n)),
                      refs[i % len(refs)]) for i in range(pairs)]
    return {k: (float(np.mean([v[k] for v in vals])), float(np.std([v[k] for v in vals])))
            for k in ("fd", "sw")}


# --- the measurements -------------------------------------------------------------------------


def accuracy(datasets, args) -> list[dict]:
    rows = []
    for dname, data in datasets.items():
        refs = reference_sets(data, args.n, args.seeds)
        fl = floor(data, args.n, args.floor_pairs, refs)
        print(f"[{dname}] floor FD {fl['fd'][0]:.4g}±{fl['fd'][1]:.2g} "
              f"SW {fl['sw'][0]:.4g}±{fl['sw'][1]:.2g}", flush=True)
        rows.append(dict(kind="floor", data=dname, fd=fl["fd"], sw=fl["sw"]))
        for sname in args.sdes:
            sde, eps = SDES[sname]
            for sampler in args.samplers:
                nfes = [n for n in args.nfes if n <= args.max_nfe.get(sampler, 10**9)]
                for budget in (nfes if sampler != "ode" else [None]):
                    name, options = (("ode", {}) if sampler == "ode"
                                     else SAMPLERS[sampler](budget, noise_range(data)))
                    t0 = time.time()
                    d = seeded_distances(data, sde, eps, name, options, args.n, args.seeds, refs)
                    row = dict(kind="sampler", data=dname, sde=sname, sampler=sampler,
                               budget=budget, seconds=time.time() - t0, **d)
                    rows.append(row)
                    print(f"[{dname} {sname}] {sampler:15s} nfe={d['nfe']:5d} "
                          f"FD {d['fd']:.4g}±{d['fd_std']:.2g} SW {d['sw']:.4g}±{d['sw_std']:.2g}"
                          f" ({row['seconds']:.1f}s)", flush=True)
    return rows


def grid_study(datasets, args) -> list[dict]:
    rows = []
    for dname, data in datasets.items():
        refs = reference_sets(data, args.n, args.seeds)
        for sname in args.sdes:
            sde, eps = SDES[sname]
            for sampler in args.grid_samplers:
                for budget, grid, ranged in itertools.product(args.grid_nfes, GRIDS,
                                                              (False, True)):
                    name, options = SAMPLERS[sampler](budget, None)
                    options = dict(options, grid=grid,
                                   sigma_range=noise_range(data) if ranged else None)
                    d = seeded_distances(data, sde, eps, name, options, args.n, args.seeds, refs)
                    rows.append(dict(kind="grid", data=dname, sde=sname, sampler=sampler,
                                     budget=budget, grid=grid, ranged=ranged, **d))
                    print(f"[grid {dname} {sname}] {sampler} nfe={d['nfe']} {grid:9s} "
                          f"{'range' if ranged else 'full':5s} FD {d['fd']:.4g}±{d['fd_std']:.2g} "
                          f"SW {d['sw']:.4g}", flush=True)
    return rows


# --- do the default grids transfer? (issue 17, item 3) ---------------------------------------

FIXED_STEP = ("ddim", "heun", "dpm_solver++")  # the samplers whose default grid is studied
# Transfer-study samplers that are another's options: name -> (sampler, options).
TRANSFER_VARIANTS = {"heun_edm": ("heun", dict(exponential=False)),
                     "unipc3": ("unipc", dict(order=3)),
                     "dpm_solver++3m": ("dpm_solver++", dict(order=3)),
                     "ipndm3": ("ipndm", dict(order=3)),
                     "ipndm4": ("ipndm", dict(order=4)),
                     # the analytic first step (nfe score calls, nfe + 1 steps)
                     **{f"{name}_afs": (name, dict(analytic_first_step=True))
                        for name in ("dpm_solver++", "unipc", "ipndm")}}
OPTIMISE_DRAWS = 128  # prior draws the 'optimised' candidate fits its grid to (seed 0)
TRANSFER_NFES = (5, 6, 8, 10, 15, 20)


def candidate_options(candidate: str, data) -> dict:
    """Grid options of a candidate: 'default' (the sampler's own), 'GRID' (over the SDE's whole
    noise range) or 'GRID+range' (over the data's noise range, noise_range()); '@scale' after
    either: placed for the data's spread (data_scale(), the samplers' data_scale option)."""
    candidate, _, scaled = candidate.partition("@")
    extra = dict(data_scale=data_scale(data)) if scaled else {}
    if candidate == "default":
        return extra
    grid, _, ranged = candidate.partition("+")
    return dict(grid=grid, sigma_range=noise_range(data) if ranged else None, **extra)


def transfer(datasets, args) -> list[dict]:
    """Error of each fixed-step sampler and grid candidate against the converged probability
    flow from the same prior draws, on every (data, SDE, NFE) cell.

    error = FD(sampler, ref) - FD(adaptive ODE, ref), per seed (the floor cancels); also the
    paired RMS distance of the samples to the ODE's own (per coordinate), which has no
    sampling noise at all.
    """
    rows = []
    for dname, data in datasets.items():
        n, seeds = args.n, args.seeds
        refs = reference_sets(data, n, seeds)
        fl = floor(data, n, args.floor_pairs, refs)
        rows.append(dict(kind="floor", data=dname, fd=fl["fd"], sw=fl["sw"]))
        for sname in args.sdes:
            sde, eps = SDES[sname]
            x_ode, nfe_ode = draw(data, sde, eps, "ode", dict(rtol=args.ode_tol,
                                                              atol=args.ode_tol), n * seeds, 11)
            fd_ode = np.array([analytic.frechet_distance(x_ode[i * n:(i + 1) * n], refs[i])
                               for i in range(seeds)])
            rows.append(dict(kind="ode", data=dname, sde=sname, nfe=nfe_ode,
                             fd=float(fd_ode.mean()), fd_std=float(fd_ode.std())))
            print(f"[{dname} {sname}] floor {fl['fd'][0]:.4g}±{fl['fd'][1]:.2g} ode FD "
                  f"{fd_ode.mean():.4g} ({nfe_ode} nfe)", flush=True)
            for sampler, budget, cand in itertools.product(args.samplers, args.nfes,
                                                           args.candidates):
                row = _transfer_cell(data, sde, eps, sampler, budget, cand, args, refs,
                                     x_ode, fd_ode)
                if row is not None:
                    rows.append(dict(data=dname, sde=sname, **row))
            if args.partial:  # what is done so far, for long runs
                Path(args.partial).write_text(json.dumps(dict(rows=rows)))
    return rows


def _transfer_cell(data, sde, eps, sampler, budget, cand, args, refs, x_ode, fd_ode):
    n, seeds = args.n, args.seeds
    try:
        name, extra = TRANSFER_VARIANTS.get(sampler, (sampler, {}))
        if cand == "optimised":  # score_sde.sampling.optimize_grid on this problem's score
            t0 = time.time()
            grid = optimize_grid(data.perturbed_score_fn(sde), sde,
                                 (OPTIMISE_DRAWS, dim_of(data)), method=name, nfe=budget,
                                 eps=eps, rng=jax.random.PRNGKey(0), options=dict(extra))
            print(f"  optimised {sampler} {budget}: {grid.cost_before:.3g} -> "
                  f"{grid.cost_after:.3g} in {time.time() - t0:.0f}s", flush=True)
            options = dict(ts=grid.times)
        else:
            options = candidate_options(cand, data)
        x, nfe = draw(data, sde, eps, name, dict(nfe=budget, **extra, **options), n * seeds, 11)
    except ValueError as e:  # e.g. a range that leaves no step inside it at this NFE
        print(f"  skip {sampler} {budget} {cand}: {e}", flush=True)
        return None
    fd = np.array([analytic.frechet_distance(x[i * n:(i + 1) * n], refs[i])
                   for i in range(seeds)])
    err = fd - fd_ode
    rms = float(np.sqrt(np.mean((x - x_ode) ** 2))) if np.all(np.isfinite(x)) else float("inf")
    print(f"  {sampler:13s} nfe={nfe:3d} {cand:16s} err {err.mean():+.4g}±{err.std():.2g} "
          f"rms {rms:.3g}", flush=True)
    return dict(kind="transfer", sampler=sampler, budget=budget, candidate=cand, nfe=nfe,
                fd=float(fd.mean()), fd_std=float(fd.std()), err=float(err.mean()),
                err_std=float(err.std()), rms=rms)


def ode_timing(datasets, args) -> list[dict]:
    """Wall time of the jitted diffrax sampler vs scipy RK45 calling the jitted score per step.

    One row per dataset and batch size in --timing-n; each time is the median of
    --timing-repeats runs. The ratio depends on what a score call costs next to scipy's
    per-call overhead: the 2-D score is cheap, the 64-D one (two 64 x 64 rotations) is not.
    """
    sde, eps = SDES["vp"]
    rows = [dict(data=dname, **_time_ode(data, sde, eps, n, args.timing_repeats))
            for dname, data in datasets.items() for n in args.timing_n]
    for row in rows:
        print(f"[ode timing {row['data']} n={row['n']}] diffrax {row['diffrax_seconds']:.3f}s "
              f"({row['diffrax_nfe']} nfe) vs scipy RK45 {row['scipy_seconds']:.3f}s "
              f"({row['scipy_nfe']} nfe): {row['speedup']:.1f}x", flush=True)
    return rows


def _time_ode(data, sde, eps, n: int, repeats: int) -> dict:
    from scipy.integrate import solve_ivp

    d, score_fn = dim_of(data), data.perturbed_score_fn(sde)
    sampler = get_sampler("ode", sde, (n, d), eps=eps, rtol=1e-5, atol=1e-5)
    sample = jax.jit(lambda rng: sampler(rng, score_fn))
    x_T, _ = prior_sample(sde, jax.random.PRNGKey(0), (n, d))  # the sampler's own draw
    jax.block_until_ready(sample(jax.random.PRNGKey(0)))  # compile
    t_dev, (x_dev, nfe_dev) = _median_time(
        lambda: jax.block_until_ready(sample(jax.random.PRNGKey(0))), repeats)

    drift = jax.jit(lambda x, t: sde.reverse(score_fn, True).sde(x, jnp.full((n,), t))[0])
    drift(x_T, 0.5).block_until_ready()  # compile

    def ode_func(t, y):  # the published approach: numpy in, device call, numpy out
        return np.asarray(drift(jnp.asarray(y.reshape(n, d), jnp.float32), t)).reshape(-1)

    y0 = np.asarray(x_T, np.float64).reshape(-1)
    t_host, sol = _median_time(lambda: solve_ivp(ode_func, (sde.T, eps), y0, rtol=1e-5,
                                                 atol=1e-5, method="RK45"), repeats)
    x_host = sol.y[:, -1].reshape(n, d)
    return dict(n=n, d=d, sde="vp", rtol=1e-5, atol=1e-5, repeats=repeats,
                diffrax_seconds=t_dev, diffrax_nfe=int(nfe_dev), scipy_seconds=t_host,
                scipy_nfe=int(sol.nfev), speedup=t_host / t_dev,
                max_abs_diff=float(np.max(np.abs(np.asarray(x_dev) - x_host))))


def _median_time(fn, repeats: int):
    """(median wall time over `repeats` calls, the last result)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), result


# --- reporting --------------------------------------------------------------------------------


def cell(r: dict) -> str:
    """'FD / SW', each as mean ± std when the row has several seeds."""
    if r.get("seeds", 1) > 1:
        return f"{r['fd']:.3g} ± {r['fd_std']:.2g} / {r['sw']:.3g} ± {r['sw_std']:.2g}"
    return f"{r['fd']:.3g} / {r['sw']:.3g}"


def grid_cell(r: dict) -> str:
    return f"{r['fd']:.3g}" + (f" ± {r['fd_std']:.2g}" if r.get("seeds", 1) > 1 else "")


def markdown(rows, grids, timing) -> str:
    lines = ["# Sampler accuracy vs NFE (exact Gaussian-mixture scores)", ""]
    floors = {r["data"]: r for r in rows if r["kind"] == "floor"}
    samp = [r for r in rows if r["kind"] == "sampler"]
    for dname in floors:
        f = floors[dname]
        lines += [f"## {dname}: floor FD {f['fd'][0]:.4g} ± {f['fd'][1]:.2g}, "
                  f"SW {f['sw'][0]:.4g} ± {f['sw'][1]:.2g}", ""]
        for sname in SDES:
            sub = [r for r in samp if r["data"] == dname and r["sde"] == sname]
            if not sub:
                continue
            budgets = sorted({r["budget"] for r in sub if r["budget"] is not None})
            seeds = max(r.get("seeds", 1) for r in sub)
            title = f"{dname} / {sname} — FD / SW" + (f" (mean ± std over {seeds} seeds)"
                                                       if seeds > 1 else "")
            lines += [f"### {title}", "",
                      "| sampler | " + " | ".join(str(b) for b in budgets) + " |",
                      "|---|" + "---|" * len(budgets)]
            for sampler in dict.fromkeys(r["sampler"] for r in sub):
                cells = []
                for b in budgets:
                    r = next((r for r in sub if r["sampler"] == sampler and r["budget"] == b),
                             None)
                    cells.append("" if r is None else cell(r)
                                 + ("" if r["nfe"] == b else f" ({r['nfe']})"))
                ode = next((r for r in sub if r["sampler"] == sampler and r["budget"] is None),
                           None)
                if ode is not None:
                    cells = [f"adaptive: {cell(ode)} at {ode['nfe']} NFE"]
                    cells += [""] * (len(budgets) - 1)
                lines.append(f"| {sampler} | " + " | ".join(cells) + " |")
            lines.append("")
    if grids:
        columns = [(g, ranged) for ranged in (False, True) for g in GRIDS]
        names = [g + (" + range" if ranged else "") for g, ranged in columns]
        lines += ["## Time grids (FD)", "",
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
    if timing:
        lines += ["## Probability-flow ODE: on-device diffrax vs scipy RK45 (host round trips)", "",
                  f"VP, rtol = atol = 1e-5, median of {timing[0]['repeats']} runs each, the same "
                  "prior draw:", "",
                  "| data | samples | diffrax Tsit5 s (NFE) | scipy RK45 s (NFE) | speed-up "
                  "| max abs diff |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {t.get('data', '64d')} | {t['n']} | {t['diffrax_seconds']:.3f} "
                  f"({t['diffrax_nfe']}) | {t['scipy_seconds']:.3f} ({t['scipy_nfe']}) | "
                  f"**{t['speedup']:.1f}x** | {t['max_abs_diff']:.2g} |" for t in timing]
        lines.append("")
    return "\n".join(lines)


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


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floors = {r["data"]: r for r in rows if r["kind"] == "floor"}
    samp = [r for r in rows if r["kind"] == "sampler"]
    datas, sdes = list(floors), [s for s in SDES if any(r["sde"] == s for r in samp)]
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=20_000, help="samples per set")
    p.add_argument("--samplers", default=",".join(
        [s for s in SAMPLERS if s not in VARIANTS] + ["ode"]))
    p.add_argument("--nfes", default=",".join(map(str, NFES)))
    p.add_argument("--sdes", default="vp,subvp,ve")
    p.add_argument("--data", default="2d,64d")
    p.add_argument("--floor-pairs", type=int, default=5)
    p.add_argument("--seeds", type=int, default=1, help="independent sample sets per cell")
    p.add_argument("--grid-nfes", default="5,10,20")
    p.add_argument("--grid-samplers", default="ddim,heun,dpm_solver++")
    p.add_argument("--skip-grids", action="store_true")
    p.add_argument("--skip-timing", action="store_true")
    p.add_argument("--timing-n", default="200,1000,5000", help="batch sizes of the ODE timing")
    p.add_argument("--timing-repeats", type=int, default=5)
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--transfer", action="store_true",
                   help="only the transfer study: every fixed-step sampler and grid candidate "
                        "against the converged ODE, on every data set and SDE")
    p.add_argument("--transfer-samplers", default=",".join(FIXED_STEP))
    p.add_argument("--transfer-nfes", default=",".join(map(str, TRANSFER_NFES)))
    p.add_argument("--transfer-sdes", default=",".join(TRANSFER_SDES))
    p.add_argument("--candidates", default="default",
                   help="grid candidates: default, GRID or GRID+range (comma-separated)")
    p.add_argument("--ode-tol", type=float, default=1e-5, help="the reference ODE's rtol, atol")
    p.add_argument("--partial", default="", help="transfer: rewrite this JSON after each SDE")
    p.add_argument("--merge", default="",
                   help="transfer: no run; the tables of these JSON results (comma-separated)")
    p.add_argument("--plot-candidate", default="", help="merge: plot this candidate's error")
    p.add_argument("--rename", default="", help="merge: I:SAMPLER=NEW renames SAMPLER's rows "
                   "of the I-th (0-based) merged file, NEW empty drops them; NEW=BASE/CAND "
                   "makes them BASE's candidate CAND (e.g. 1:ipndm_afs=ipndm/afs@scale)")
    p.add_argument("--default-was", default="",
                   help="merge: the named grid each sampler's 'default' was in those runs, "
                        "e.g. ddim=uniform,dpm_solver++=quadratic")
    p.add_argument("--tag", default="sampler_accuracy", help="output file stem")
    p.add_argument("--out", default=str(RESULTS), help="output folder")
    args = p.parse_args(argv)
    args.samplers = args.samplers.split(",")
    args.nfes = [int(v) for v in args.nfes.split(",")]
    args.grid_nfes = [int(v) for v in args.grid_nfes.split(",")]
    args.timing_n = [int(v) for v in args.timing_n.split(",")]
    args.grid_samplers = args.grid_samplers.split(",")
    args.sdes = args.sdes.split(",")
    # 1000-NFE runs only for the SDE samplers the targets name (keeps the run < 15 min).
    args.max_nfe = {s: 100 for s in SAMPLERS if s not in ("euler_maruyama", "dpm_solver++")}
    datasets = {k: v for k, v in make_datasets().items() if k in args.data.split(",")}
    if args.merge:
        was = dict(kv.split("=") for kv in args.default_was.split(",") if kv)
        renames = dict(kv.split("=") for kv in args.rename.split(",") if kv)
        return merge_transfer(args.merge.split(","), Path(args.out), args.tag, was,
                              args.plot_candidate, renames)
    if args.transfer:
        return run_transfer(datasets, args)

    t0 = time.time()
    rows = [] if args.skip_accuracy else accuracy(datasets, args)
    grids = [] if args.skip_grids else grid_study(datasets, args)
    timing = None if args.skip_timing else ode_timing(datasets, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(n=args.n, seeds=args.seeds, seconds=time.time() - t0,
                devices=str(jax.devices()), cpu_count=os.cpu_count())
    (out / f"{args.tag}.json").write_text(json.dumps(
        dict(meta=meta, rows=rows, grids=grids, ode_timing=timing), indent=1))
    (out / f"{args.tag}.md").write_text(markdown(rows, grids, timing))
    if rows:
        plot(rows, out / f"{args.tag}.png")
    print(f"done in {time.time() - t0:.0f}s -> {out}/{args.tag}.*")


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
    rows, seen = [], set()

    def add(r):
        key = (r["kind"], r["data"], r.get("sde"), r.get("sampler"), r.get("budget"),
               r.get("candidate"))
        if key not in seen:
            seen.add(key)
            rows.append(r)

    for i, path in enumerate(paths):
        for r in json.loads(Path(path).read_text())["rows"]:
            new = (renames or {}).get(f"{i}:{r.get('sampler')}")
            if new is not None:
                if not new:
                    continue
                sampler, _, candidate = new.partition("/")
                r = dict(r, sampler=sampler, **({"candidate": candidate} if candidate else {}))
            if r.get("candidate") == "default" and r["sampler"] in (default_was or {}):
                r = dict(r, candidate=default_was[r["sampler"]])
            add(r)
            if r.get("sde") == "vp" and r.get("candidate") in VP_ALIASES:
                add(dict(r, candidate=VP_ALIASES[r["candidate"]]))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{tag}.json").write_text(json.dumps(dict(meta=dict(merged=paths), rows=rows),
                                                indent=1))
    (out / f"{tag}.md").write_text(transfer_markdown(rows))
    if plot_candidate:
        transfer_plot(rows, out / f"{tag}.png", plot_candidate)
    print(f"{len(rows)} rows -> {out}/{tag}.*")


def run_transfer(datasets, args):
    args.samplers = args.transfer_samplers.split(",")
    args.nfes = [int(v) for v in args.transfer_nfes.split(",")]
    args.sdes = args.transfer_sdes.split(",")
    args.candidates = args.candidates.split(",")
    t0 = time.time()
    rows = transfer(datasets, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(n=args.n, seeds=args.seeds, ode_tol=args.ode_tol, seconds=time.time() - t0,
                devices=str(jax.devices()), cpu_count=os.cpu_count())
    (out / f"{args.tag}.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    (out / f"{args.tag}.md").write_text(transfer_markdown(rows))
    if "default" in args.candidates:
        transfer_plot(rows, out / f"{args.tag}.png")
    print(f"done in {time.time() - t0:.0f}s -> {out}/{args.tag}.*")


if __name__ == "__main__":
    main()
