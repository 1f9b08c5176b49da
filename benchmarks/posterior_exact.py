"""Posterior samplers against exact posteriors (issue 25): error vs NFE on linear inverse problems.

Two priors whose posterior given y = A x0 + sigma_y n is known in closed form
(score_sde.inverse.exact), each with its exact perturbed score:

  gaussian  N(mu, Q diag(lam) Q^T), lam log-uniform on [0.01, 1] (std 0.1 to 1), mu ~ N(0,
            0.5^2 I), d in --dims-gaussian, d_y = d / 4, sigma_y = 0.1. Metric: the Frechet
            distance of the samples' Gaussian fit to the exact posterior
            (analytic.gaussian_frechet_distance); floor: the same for exact posterior samples
            of the same size (mean over 5 sets).
  mixture   the MCGdiff setting (Cardoso et al. 2024): 25 unit-covariance components with
            means (8i, 8j, 8i, 8j, ...), i, j in -2..2, weights ~ normalised squared normals,
            A = U diag(s) V^T with U, V the singular vectors of a Gaussian (d_y, d) matrix and
            s sorted uniform on [0, 1], sigma_y = u max(s) with u ~ U(0, 1), y = A x* +
            sigma_y n with x* from the prior. Metric: sliced Wasserstein with --slices
            directions (analytic.sliced_wasserstein) to a set of exact posterior samples;
            floor: the same for a second exact set of the same size.

Every method gets the prior's spread as data_scale (sqrt(trace(Cov) / d): grids, PiGDM's and
DAPS's r_t) and runs at budgets --nfes (network passes, score_sde.inverse.posterior's
convention). VP and sub-VP are the published SDEs; VE (sigma_min 0.01) and EDM have
sigma_max = the data's largest distance between modes (1.5 x for the mixture) as the VE
recipe asks, at least 50 (VE) and 80 (EDM's own). Problem data are jit arguments,
so each (method, SDE, d, d_y, NFE) cell compiles once.

    python benchmarks/posterior_exact.py --part gaussian            # Gaussian prior
    python benchmarks/posterior_exact.py --part mixture             # the MCGdiff setting
    python benchmarks/posterior_exact.py --part mixture --study "mmps:solver=ddim"  # extra cells
    python benchmarks/posterior_exact.py --part mixture --dims-mixture 8 --problems 3 --sdes vp \
        --methods mmps --nfes 100 --study "tds:particles=16,nfe=9648;tds:particles=4,nfe=9612" \
        --tag tds                                                 # the particle method
    python benchmarks/posterior_exact.py --summarize benchmarks/results/posterior_exact_*.json

Writes benchmarks/results/posterior_exact_<part>.json (one record per cell and problem) and
prints the summary tables (mean metric over problems / mean floor).
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from score_sde import analytic, sde_lib
from score_sde.inverse import exact, get_posterior_sampler
from score_sde.inverse.base import SVDOperator

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("mmps", "pigdm", "dps", "ddrm", "daps")
FLOOR_SETS = 5


# --------------------------------------------------------------------------- the problems


class DenseOperator(SVDOperator):
    """y = A x on flat vectors, from A and its full SVD given as (possibly traced) arrays: the
    problem's matrix is a jit argument, so one compiled sampler serves every problem."""

    def __init__(self, a, u, s, vt):
        self._a, self._u, self._s, self._vt = a, u, s, vt
        self.input_shape, self.observation_shape = (a.shape[1],), (a.shape[0],)

    def _forward(self, x):
        return x @ self._a.T

    def _adjoint(self, y):
        return y @ self._a

    def _Vt(self, x):
        return x @ self._vt.T

    def _V(self, z):
        return z @ self._vt

    def _Ut(self, y):
        return y @ self._u

    def _U(self, z):
        return z @ self._u.T

    def _singular_values(self):
        return self._s


def random_matrix(rng: np.random.Generator, d_y: int, d: int) -> np.ndarray:
    """A = U diag(s) V^T: the singular vectors of a Gaussian matrix, s sorted uniform [0, 1]."""
    u, _, vt = np.linalg.svd(rng.normal(size=(d_y, d)), full_matrices=False)
    s = np.sort(rng.uniform(size=d_y))[::-1]
    return (u * s) @ vt


def svd_arrays(a: np.ndarray) -> dict:
    u, s, vt = np.linalg.svd(a, full_matrices=True)
    return {"a": a, "u": u, "s": s, "vt": vt}


def gaussian_problem(d: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    lam = np.exp(rng.uniform(np.log(0.01), 0.0, size=d))
    mean = 0.5 * rng.normal(size=d)
    cov = (q * lam) @ q.T
    a = random_matrix(rng, d // 4, d)
    sigma_y = 0.1
    x_star = rng.multivariate_normal(mean, cov)
    y = a @ x_star + sigma_y * rng.normal(size=d // 4)
    post_mean, post_cov = exact.gaussian_posterior(mean, cov, a, y, sigma_y)
    return {"kind": "gaussian", "prior": {"mean": mean, "q": q, "lam": lam}, "y": y,
            "sigma_y": sigma_y, "op": svd_arrays(a), "post": (post_mean, post_cov),
            "scale": float(np.sqrt(lam.mean())), "diameter": float(2 * np.sqrt(lam.max()))}


def mcgdiff_means(d: int) -> np.ndarray:
    grid = [(i, j) for i in range(-2, 3) for j in range(-2, 3)]
    return np.asarray([[8.0 * i, 8.0 * j] * (d // 2) for i, j in grid])


def mixture_problem(d: int, d_y: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    means = mcgdiff_means(d)
    weights = rng.normal(size=len(means)) ** 2
    weights /= weights.sum()
    prior = analytic.GaussianMixture(weights, means, np.broadcast_to(np.eye(d), (25, d, d)))
    a = random_matrix(rng, d_y, d)
    s_max = np.linalg.svd(a, compute_uv=False).max()
    sigma_y = float(rng.uniform() * s_max)
    k = rng.choice(len(weights), p=weights)
    x_star = means[k] + rng.normal(size=d)
    y = a @ x_star + sigma_y * rng.normal(size=d_y)
    post = exact.mixture_posterior(prior, a, y, sigma_y)
    diameter = float(np.max(np.linalg.norm(means[:, None] - means[None], axis=-1)))
    return {"kind": "mixture", "prior": {"means": means, "log_w": np.log(weights)}, "y": y,
            "sigma_y": sigma_y, "op": svd_arrays(a), "post": post,
            "scale": float(np.sqrt(np.trace(prior.cov()) / d)), "diameter": 1.5 * diameter}


# ----------------------------------------------------------------------- the exact scores


def score_fn(kind: str, sde, prior: dict):
    """The exact perturbed score of the prior, its parameters jnp arrays (traced)."""
    if kind == "gaussian":
        def score(x, t):
            alpha, sigma = (v[:, None] for v in sde.marginal_coeffs(t))
            z = (x - alpha * prior["mean"]) @ prior["q"]
            return -(z / (alpha**2 * prior["lam"] + sigma**2)) @ prior["q"].T
        return score

    def score(x, t):  # unit-covariance components
        alpha, sigma = (v[:, None] for v in sde.marginal_coeffs(t))
        var = alpha**2 + sigma**2
        diff = alpha[:, :, None] * prior["means"].T[None] - x[:, :, None]      # (B, d, K)
        logits = prior["log_w"][None] + jnp.sum(diff**2, axis=1) * (-0.5 / var)
        return jnp.einsum("bdk,bk->bd", diff, jax.nn.softmax(logits, axis=-1)) / var
    return score


def check_scores(sde):
    """The traced scores agree with analytic.GaussianMixture's on one problem of each kind."""
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 8)) * 3
    t = jnp.asarray([0.01, 0.1, 0.5, 0.9]) * sde.T
    g = gaussian_problem(8, 0)
    cov = (g["prior"]["q"] * g["prior"]["lam"]) @ g["prior"]["q"].T
    ref = analytic.GaussianMixture.gaussian(g["prior"]["mean"], cov).perturbed_score_fn(sde)
    mine = score_fn("gaussian", sde, jax.tree.map(jnp.asarray, g["prior"]))
    np.testing.assert_allclose(mine(x, t), ref(x, t), rtol=2e-3, atol=2e-3)
    m = mixture_problem(8, 2, 0)
    w = np.exp(m["prior"]["log_w"])
    ref = analytic.GaussianMixture(w, m["prior"]["means"], np.broadcast_to(np.eye(8), (25, 8, 8)))
    mine = score_fn("mixture", sde, jax.tree.map(jnp.asarray, m["prior"]))
    np.testing.assert_allclose(mine(x * 10, t), ref.perturbed_score_fn(sde)(x * 10, t),
                               rtol=2e-3, atol=2e-3)


# --------------------------------------------------------------------------- the samplers


def make_sde(name: str, diameter: float):
    """(SDE, eps): 'vp', 'subvp' (the published ones), 've' and 'edm' with their top noise
    at least the data's diameter (the VE recipe)."""
    top = float(np.ceil(diameter))
    if name == "vp":
        return sde_lib.VPSDE(), 1e-3
    if name == "subvp":
        return sde_lib.subVPSDE(), 1e-3
    if name == "edm":
        return sde_lib.EDMSDE(sigma_max=max(80.0, top)), 2e-3
    if name == "ve":
        return sde_lib.VESDE(sigma_min=0.01, sigma_max=max(50.0, top)), 1e-5
    raise ValueError(f"--sdes: unknown SDE {name!r}; choose from vp, subvp, ve, edm")


@functools.cache
def runner(kind, sde, eps, method, nfe, n, d, d_y, options: tuple):
    """A jitted run(rng, prior, op, y, sigma_y, scale) -> (x, nfe) for one cell."""
    opts = dict(options)

    @jax.jit
    def run(rng, prior, op, y, sigma_y):
        operator = DenseOperator(op["a"], op["u"], op["s"], op["vt"])
        with jax.ensure_compile_time_eval():  # the static grids are built eagerly
            sample = get_posterior_sampler(method, sde, operator, (n, d), sigma_y=sigma_y,
                                           nfe=nfe, eps=eps, **opts)
        return sample(rng, score_fn(kind, sde, prior), jnp.broadcast_to(y, (n, d_y)))

    return run


def exact_sets(problem: dict, n: int, count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    if problem["kind"] == "gaussian":
        mean, cov = problem["post"]
        return [rng.multivariate_normal(mean, cov, size=n) for _ in range(count)]
    post = problem["post"]
    return [np.asarray(post.sample(jax.random.PRNGKey(seed * 100 + i), n), np.float64)
            for i in range(count)]


class SlicedReference:
    """analytic.sliced_wasserstein(x, ref, slices, seed=1) with ref's sorted projections kept
    (the same directions and formula; one sort per evaluated set instead of two)."""

    def __init__(self, ref: np.ndarray, slices: int):
        dirs = np.random.default_rng(1).normal(size=(ref.shape[1], slices))
        self.dirs = dirs / np.linalg.norm(dirs, axis=0, keepdims=True)
        self.sorted = np.sort((ref @ self.dirs).T, axis=1)

    def __call__(self, x: np.ndarray) -> float:
        return float(np.sqrt(np.mean((np.sort((x @ self.dirs).T, axis=1) - self.sorted) ** 2)))


def metric(problem: dict, x: np.ndarray, ref: SlicedReference | None) -> float:
    if problem["kind"] == "gaussian":
        mean, cov = problem["post"]
        return analytic.gaussian_frechet_distance(x.mean(0), np.cov(x.T), mean, cov)
    return ref(x)


def floor(problem: dict, n: int, slices: int, seed: int) -> tuple[float, SlicedReference | None]:
    """(the floor, the reference (mixture) or None)."""
    sets = exact_sets(problem, n, FLOOR_SETS if problem["kind"] == "gaussian" else 2, seed)
    if problem["kind"] == "gaussian":
        return float(np.mean([metric(problem, s, None) for s in sets])), None
    ref = SlicedReference(sets[0], slices)
    return metric(problem, sets[1], ref), ref


def run_cell(problem, sde_name, method, nfe, n, options, seed, ref) -> dict:
    sde, eps = make_sde(sde_name, problem["diameter"])
    d, d_y = problem["op"]["a"].shape[1], problem["op"]["a"].shape[0]
    options = {"data_scale": problem["scale"], **options}
    run = runner(problem["kind"], sde, eps, method, nfe, n, d, d_y, tuple(sorted(options.items())))
    args = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32),
                        (problem["prior"], problem["op"], problem["y"], problem["sigma_y"]))
    start = time.time()
    try:
        x, used = run(jax.random.PRNGKey(seed), *args)
        x = np.asarray(x, np.float64)
        value = metric(problem, x, ref) if np.all(np.isfinite(x)) else float("inf")
        used = int(used)
    except ValueError as e:  # a budget below one step's cost
        value, used = None, str(e)
    return {"method": method, "options": {k: v for k, v in options.items() if k != "data_scale"},
            "nfe": nfe, "nfe_used": used, "value": value, "seconds": round(time.time() - start, 2)}


# ------------------------------------------------------------------------------- the parts


def configs(args) -> list[tuple[str, dict]]:
    """(method, options) pairs: each method at its defaults, DPS at --dps-zeta."""
    out = []
    for m in args.methods.split(","):
        out.append((m, {"zeta": args.dps_zeta} if m == "dps" else {}))
    return out


def run_problems(part, problems, args, extra_configs=()) -> list[dict]:
    records = []
    for p_index, problem in problems:
        fl, ref = floor(problem, args.n, args.slices, seed=1000 + p_index)
        for sde_name in args.sdes.split(","):
            for method, options in list(configs(args)) + list(extra_configs):
                options = dict(options)
                nfes = [options.pop("nfe")] if "nfe" in options else args.nfes.split(",")
                for nfe in (int(v) for v in nfes):
                    rec = run_cell(problem, sde_name, method, nfe, args.n, options,
                                   seed=p_index, ref=ref)
                    rec.update(part=part, sde=sde_name, problem=p_index, floor=fl,
                               d=int(problem["op"]["a"].shape[1]),
                               d_y=int(problem["op"]["a"].shape[0]))
                    records.append(rec)
                    print(json.dumps(rec), flush=True)
    return records


def gaussian_part(args) -> list[dict]:
    dims = [int(v) for v in args.dims_gaussian.split(",")]
    problems = [(i, gaussian_problem(d, seed=i)) for i, d in enumerate(dims)]
    return run_problems("gaussian", problems, args, study_configs(args))


def mixture_part(args) -> list[dict]:
    problems = []
    for d in (int(v) for v in args.dims_mixture.split(",")):
        count = args.problems if d <= 8 else max(1, args.problems // args.large_divisor)
        for d_y in (int(v) for v in args.dys.split(",")):
            for i in range(count):
                problems.append((len(problems), mixture_problem(d, d_y, 100 * d + 10 * d_y + i)))
    return run_problems("mixture", problems, args, study_configs(args))


def study_configs(args) -> list[tuple[str, dict]]:
    """Extra (method, options) cells from --study, e.g. 'mmps:solver=ddim;pigdm:solver=unipc';
    an nfe=N option runs that cell at N only instead of --nfes (e.g. 'tds:particles=4,nfe=9612':
    the particle method's budget)."""
    out = []
    for item in filter(None, (args.study or "").split(";")):
        method, _, rest = item.partition(":")
        options = {}
        for kv in filter(None, rest.split(",")):
            key, _, value = kv.partition("=")
            options[key] = _parse(value)
        out.append((method, options))
    return out


def _parse(value: str):
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


# ------------------------------------------------------------------------------ summaries


def summary(records: list[dict]) -> str:
    """Markdown: per (part, SDE, d, d_y) and config, mean metric / mean floor at each NFE."""
    keys = sorted({(r["part"], r["sde"], r["d"], r["d_y"]) for r in records})
    nfes = sorted({r["nfe"] for r in records})
    lines = []
    for part, sde, d, d_y in keys:
        rows = [r for r in records
                if (r["part"], r["sde"], r["d"], r["d_y"]) == (part, sde, d, d_y)]
        fl = np.mean(sorted({(r["problem"], r["floor"]) for r in rows}), axis=0)[1]
        count = len({r["problem"] for r in rows})
        lines += [f"\n{part} {sde.upper()} d={d} d_y={d_y} ({count} problem(s)); floor "
                  f"{fl:.4g}; cells: mean metric / mean floor",
                  "| method | " + " | ".join(f"{n} NFE" for n in nfes) + " |",
                  "|---|" + "---|" * len(nfes)]
        labels = sorted({_label(r) for r in rows})
        for label in labels:
            cells = []
            for n in nfes:
                vals = [r["value"] for r in rows if _label(r) == label and r["nfe"] == n]
                if not vals or any(v is None for v in vals):
                    cells.append("-")
                else:
                    cells.append(f"{np.mean(vals) / fl:.2f}")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _label(r: dict) -> str:
    opts = ",".join(f"{k}={v}" for k, v in sorted(r["options"].items()))
    return r["method"] + (f" ({opts})" if opts else "")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", default="gaussian", choices=["gaussian", "mixture"])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--sdes", default="vp,ve", help="of vp, subvp, ve, edm")
    parser.add_argument("--nfes", default="10,20,50,100")
    parser.add_argument("--n", type=int, default=2000, help="samples per problem")
    parser.add_argument("--dims-gaussian", default="16,64,256")
    parser.add_argument("--dims-mixture", default="8,80")
    parser.add_argument("--dys", default="1,2,4")
    parser.add_argument("--problems", type=int, default=20, help="problems per (d, d_y) at d=8")
    parser.add_argument("--large-divisor", type=int, default=4,
                        help="d > 8 runs problems // this many problems per (d, d_y)")
    parser.add_argument("--slices", type=int, default=10_000)
    parser.add_argument("--dps-zeta", type=float, default=1.0)
    parser.add_argument("--study", default="", help="extra cells: 'method:k=v,k=v;method:...'")
    parser.add_argument("--tag", default="")
    parser.add_argument("--cache", default="/tmp/posterior_exact_jax_cache",
                        help="JAX's persistent compilation cache ('' for none)")
    parser.add_argument("--summarize", nargs="*", default=None,
                        help="print the tables of these result files and exit")
    args = parser.parse_args()
    if args.summarize is not None:
        records = [r for f in args.summarize for r in json.loads(Path(f).read_text())["records"]]
        print(summary(records))
        return
    if args.cache:  # compiled cells are reused across runs (problem data are arguments)
        jax.config.update("jax_compilation_cache_dir", args.cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    check_scores(sde_lib.VPSDE())
    start = time.time()
    records = gaussian_part(args) if args.part == "gaussian" else mixture_part(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"posterior_exact_{args.part}{'_' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps({"args": vars(args), "seconds": round(time.time() - start, 1),
                               "records": records}, indent=1))
    print(summary(records))
    print(f"wrote {out} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
