"""What the sampler studies share: exact problems, exact references, distances, a sampler run.

Gaussian-mixture data whose perturbed scores are exact (`score_sde.analytic`), so every error
is the sampler's. A cell draws N samples with the exact score and measures two distances to an
independent set of N exact samples: the Frechet distance (FD) and the sliced 2-Wasserstein
distance (SW). With `seeds` S a cell is S such pairs (independent prior draws and reference
sets), reported as mean ± std: one pair's FD is as noisy as the floor itself. The floor is the
same distance from fresh exact sample sets to the same reference sets: what an exact sampler
would score. Every sampler starts from the same prior draws (same rng), so comparisons between
samplers are paired.

The studies over this core, one module each (pages: benchmarks/pages/):

    python -m benchmarks.sampler_nfe      # accuracy vs NFE          (pages/sampler_accuracy.md)
    python -m benchmarks.sampler_grids    # time grids at low NFE    (pages/sampler_accuracy.md)
    python -m benchmarks.ode_timing       # diffrax ODE vs scipy     (pages/ode_timing.md)
    python -m benchmarks.grids_transfer   # error against the ODE    (pages/grids_transfer.md)

Each writes <--out, default benchmarks/results>/<--tag>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from score_sde import analytic, sde_lib
from score_sde.sampling import get_sampler

RESULTS = Path(__file__).resolve().parent / "results"
ACCURACY_TITLE = "# Sampler accuracy vs NFE (exact Gaussian-mixture scores)"


# --- the problems: exact mixtures -------------------------------------------------------------


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


def select_datasets(names: str) -> dict:
    """The problems named in the comma-separated `names`, in make_datasets() order."""
    return {k: v for k, v in make_datasets().items() if k in names.split(",")}


def dim_of(data) -> int:
    return data.base.dim if isinstance(data, Rotated) else data.dim


SDES = {
    "vp": (sde_lib.VPSDE(), 1e-3),
    "subvp": (sde_lib.subVPSDE(), 1e-3),
    # sigma_max = 150: well above the data's spread (largest distance between modes 11.9 in
    # 64-D, 5.7 in 2-D) and VP's sigma / alpha at T (152); pages/sampler_accuracy.md says what
    # sigma_max = 50 does to the probability flow.
    "ve": (sde_lib.VESDE(sigma_min=0.01, sigma_max=150.0), 1e-5),
    # The published VE configs' range of sigma_max (CIFAR-10 50, 256 px 348, CelebA-HQ 1348)
    # and EDM's SDE: the SDEs a default grid must serve (the transfer study).
    "ve50": (sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0), 1e-5),
    "ve348": (sde_lib.VESDE(sigma_min=0.01, sigma_max=348.0), 1e-5),
    "ve1348": (sde_lib.VESDE(sigma_min=0.01, sigma_max=1348.0), 1e-5),
    "edm": (sde_lib.EDMSDE(sigma_min=0.002, sigma_max=80.0), 0.002),
}

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


# --- exact references and distances -----------------------------------------------------------


def reference_sets(data, n, seeds) -> list[np.ndarray]:
    """`seeds` independent sets of n exact samples (key 7), one per seed of a cell."""
    ref = np.asarray(data.sample(jax.random.PRNGKey(7), n * seeds), np.float64)
    return [ref[i * n:(i + 1) * n] for i in range(seeds)]


def distances(x, ref) -> dict:
    return {"fd": analytic.frechet_distance(x, ref), "sw": analytic.sliced_wasserstein(x, ref)}


def floor(data, n, pairs, refs) -> dict:
    """FD and SW (mean, std) of `pairs` fresh exact sets of n samples against the reference
    sets, in turn: what an exact sampler would score against the same references."""
    vals = [distances(np.asarray(data.sample(jax.random.PRNGKey(1000 + i), n)),
                      refs[i % len(refs)]) for i in range(pairs)]
    return {k: (float(np.mean([v[k] for v in vals])), float(np.std([v[k] for v in vals])))
            for k in ("fd", "sw")}


def frechet_per_seed(x, refs) -> np.ndarray:
    """FD of each consecutive block of len(refs[i]) samples of x to refs[i]: shape (seeds,)."""
    n = len(refs[0])
    return np.array([analytic.frechet_distance(x[i * n:(i + 1) * n], refs[i])
                     for i in range(len(refs))])


# --- running a sampler ------------------------------------------------------------------------


def draw(data, sde, eps, name, options, n, seed):
    """n samples of get_sampler(name, **options) with the exact score, from PRNGKey(seed):
    (float64 samples of shape (n, D), the sampler's nfe)."""
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


# --- command lines and writing results --------------------------------------------------------


def names(value: str) -> list[str]:
    """A comma-separated command-line list."""
    return value.split(",")


def numbers(value: str) -> list[int]:
    """A comma-separated command-line list of integers."""
    return [int(v) for v in value.split(",")]


def add_problem_args(p: argparse.ArgumentParser, with_floor: bool = True) -> None:
    """--data, --n, --seeds and (with_floor) --floor-pairs: the problems and the sample sets
    of every cell."""
    p.add_argument("--data", default="2d,64d", help="problems (make_datasets), comma-separated")
    p.add_argument("--n", type=int, default=20_000, help="samples per set")
    p.add_argument("--seeds", type=int, default=1, help="independent sample sets per cell")
    if with_floor:
        p.add_argument("--floor-pairs", type=int, default=5,
                       help="fresh exact sets the floor is averaged over")


def add_output_args(p: argparse.ArgumentParser, tag: str) -> None:
    p.add_argument("--tag", default=tag, help="output file stem")
    p.add_argument("--out", default=str(RESULTS), help="output folder")


def run_meta(t0: float, **settings) -> dict:
    """The run's settings, wall seconds since t0 and the machine, for a results JSON."""
    return dict(**settings, seconds=time.time() - t0, devices=str(jax.devices()),
                cpu_count=os.cpu_count())


def accuracy_results(meta: dict, rows=(), grids=(), timing=None) -> dict:
    """The one JSON layout of the exact-sample studies (accuracy vs NFE, time grids, ODE
    timing): a run of any of them, or the old combined run, fills its own part."""
    return dict(meta=meta, rows=list(rows), grids=list(grids), ode_timing=timing)


def accuracy_markdown(*sections: list[str]) -> str:
    """The tables of the exact-sample studies under one title, in the order given."""
    return "\n".join([ACCURACY_TITLE, ""] + [line for s in sections for line in s])


def write_results(out: str | Path, tag: str, results: dict, markdown: str,
                  plot: Callable[[Path], None] | None = None) -> Path:
    """<out>/<tag>.json (indent 1), <tag>.md and, with `plot`, plot(<out>/<tag>.png)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{tag}.json").write_text(json.dumps(results, indent=1))
    (out / f"{tag}.md").write_text(markdown)
    if plot is not None:
        plot(out / f"{tag}.png")
    return out
