"""Wall time of the on-device diffrax ODE sampler against scipy's RK45 over the same score.

scipy's RK45 calls the same jitted probability-flow drift once per evaluation with numpy in and
out (the published approach: a host round trip per evaluation); the diffrax sampler runs the
whole solve in one jitted call. VP SDE, rtol = atol = 1e-5, the same prior draw; one row per
problem and batch size, each time the median of --repeats runs. Page:
benchmarks/pages/ode_timing.md.

    python -m benchmarks.ode_timing --sizes 200,1000,5000 --repeats 7 --tag ode_timing_cpu

Writes <--out>/<--tag>.{json,md}: the JSON's 'ode_timing' (its 'rows' and 'grids' are the other
studies' parts, empty here).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import sampler_core as core
from score_sde.sampling import get_sampler
from score_sde.sampling.common import prior_sample


def ode_timing(datasets: dict, *, sizes: list[int], repeats: int) -> list[dict]:
    """One row per problem and batch size in `sizes`: both solvers' median seconds and NFE,
    the speed-up and the largest difference between their solutions.

    The ratio depends on what a score call costs next to scipy's per-call overhead: the 2-D
    score is cheap, the 64-D one (two 64 x 64 rotations) is not.
    """
    sde, eps = core.SDES["vp"]
    rows = [dict(data=dname, **_time_ode(data, sde, eps, n, repeats))
            for dname, data in datasets.items() for n in sizes]
    for row in rows:
        print(f"[ode timing {row['data']} n={row['n']}] diffrax {row['diffrax_seconds']:.3f}s "
              f"({row['diffrax_nfe']} nfe) vs scipy RK45 {row['scipy_seconds']:.3f}s "
              f"({row['scipy_nfe']} nfe): {row['speedup']:.1f}x", flush=True)
    return rows


def _time_ode(data, sde, eps, n: int, repeats: int) -> dict:
    from scipy.integrate import solve_ivp

    d, score_fn = core.dim_of(data), data.perturbed_score_fn(sde)
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


def markdown_lines(timing: list[dict] | None) -> list[str]:
    """One table: a line per (problem, batch size), both solvers' seconds (NFE), speed-up."""
    if not timing:
        return []
    lines = ["## Probability-flow ODE: on-device diffrax vs scipy RK45 (host round trips)", "",
             f"VP, rtol = atol = 1e-5, median of {timing[0]['repeats']} runs each, the same "
             "prior draw:", "",
             "| data | samples | diffrax Tsit5 s (NFE) | scipy RK45 s (NFE) | speed-up "
             "| max abs diff |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {t.get('data', '64d')} | {t['n']} | {t['diffrax_seconds']:.3f} "
              f"({t['diffrax_nfe']}) | {t['scipy_seconds']:.3f} ({t['scipy_nfe']}) | "
              f"**{t['speedup']:.1f}x** | {t['max_abs_diff']:.2g} |" for t in timing]
    lines.append("")
    return lines


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="2d,64d", help="problems (make_datasets), comma-separated")
    p.add_argument("--sizes", default="200,1000,5000", help="batch sizes, comma-separated")
    p.add_argument("--repeats", type=int, default=5, help="runs per time (the median)")
    core.add_output_args(p, "ode_timing")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    timing = ode_timing(core.select_datasets(args.data), sizes=core.numbers(args.sizes),
                        repeats=args.repeats)
    results = core.accuracy_results(core.run_meta(t0), timing=timing)
    out = core.write_results(args.out, args.tag, results,
                             core.accuracy_markdown(markdown_lines(timing)))
    print(f"done in {time.time() - t0:.0f}s -> {out}/{args.tag}.*")


if __name__ == "__main__":
    main()
