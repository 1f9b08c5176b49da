"""iPNDM: Adams-Bashforth steps on the probability-flow ODE in EDM's variables.

PNDM (Liu et al. 2022) as improved in DEIS (Zhang & Chen 2023): the ODE is written in
y = x / alpha and rho = sigma / alpha (EDM's x and sigma, Karras et al. 2022), where it reads
dy / drho = eps_hat(x, t) = -sigma score(x, t), and is stepped with the fixed-step
Adams-Bashforth weights of order p over the last p noise predictions:
    y_{i+1} = y_i + (rho_{i+1} - rho_i) sum_j c_pj eps_{i-j},
    c_1 = (1), c_2 = (3, -1) / 2, c_3 = (23, -16, 5) / 12, c_4 = (55, -59, 37, -9) / 24.
The first steps use the history they have (orders 1, 2, ...) instead of PNDM's Runge-Kutta
warm start: one score call per step. The weights are those of equal steps, as published (they
are applied as-is on any grid); on a grid uniform in rho the order is p.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from score_sde.sampling.common import (
    Project,
    free_steps,
    full_t,
    initial_state,
    projection_steps,
    schedule,
    step_score,
    step_times,
    with_path,
)
from score_sde.sampling.registry import register_sampler
from score_sde.sampling.scale import PILOT_CALLS, ScaledTables, as_tables, estimates
from score_sde.sampling.steps import (
    AB_WEIGHTS,
    MAX_ORDER,
    adams_bashforth_step,
    adams_bashforth_weights,
)
from score_sde.sde_lib import SDE


@register_sampler("ipndm", merges=True, fields={"ts": None})
def ipndm_sampler(sde: SDE, shape: tuple[int, ...], *, nfe: int = 10, order: int = 3,
                  grid: str = "vp_quadratic", sigma_range: tuple[float, float] | None = None,
                  data_scale: float | None = None, analytic_first_step: bool = False,
                  ts=None, eps: float = 1e-3, sharding=None):
    """iPNDM (module docstring): nfe steps of order up to `order` (1-4), one score call each.

    order 3 by default: the default grid is not uniform in rho, and there the equal-step
    weights of order 4 are the less accurate at few NFE (benchmarks/pages/ipndm_order.md).

    analytic_first_step: the first noise prediction is that of Gaussian data
    N(0, data_scale^2 I) (common.gaussian_score), so nfe score calls take nfe + 1 steps.
    `ts` (decreasing times in [eps, T]) overrides grid and nfe: nfe = len(ts) - 1 (- 1 with
    analytic_first_step). Without data_scale (and ts), the data's scale is estimated from
    score_fn with one of the nfe score calls (sampling.scale).
    """
    if order not in AB_WEIGHTS:
        raise ValueError(f"ipndm: order must be 1, 2, 3 or 4, got {order}")
    free = free_steps("ipndm", analytic_first_step, grid, ts)
    pilot = PILOT_CALLS * estimates(data_scale, grid, ts, analytic_first_step)

    def tables(scale):
        times = step_times("ipndm", sde, eps, ts, grid, nfe - pilot + free, sigma_range,
                           min_steps=max(order, 1 + free), data_scale=scale)
        alpha, sigma, _ = schedule(sde, times)
        w_x, w_eps = adams_bashforth_weights(alpha, sigma, order)
        return dict(t=times, sigma=sigma, w_x=w_x, w_eps=w_eps)

    scaled = ScaledTables(lambda scale: as_tables(tables(scale)), sde, eps, shape, data_scale,
                          pilot > 0, sharding)
    n = len(scaled.nominal["t"]) - 1

    def sample(rng, score_fn, project: Project | None = None, *, x_init=None,
               return_path: bool = False):
        tab, scale = scaled.select(rng, score_fn)
        t_grid, sigma, w_x, w_eps = (tab[k] for k in ("t", "sigma", "w_x", "w_eps"))
        score_at = step_score(sde, score_fn, analytic_first_step, scale)
        rng, proj = projection_steps(project, rng)
        x, _ = initial_state(sde, rng, shape, sharding, x_init)
        x, x_first = proj(x, x, t_grid[0], 0)

        def step(carry, i):
            x, _, history = carry
            eps_hat = -sigma[i] * score_at(x, full_t(t_grid[i], x), i)
            x, history = adams_bashforth_step(x, eps_hat, history, w_x[i], w_eps[i])
            x, x_out = proj(x, x, t_grid[i + 1], i + 1)
            return (x, x_out, history), x_out if return_path else None

        history = jnp.zeros((MAX_ORDER, *x.shape), x.dtype)
        (_, x_out, _), path = jax.lax.scan(step, (x, x_first, history), jnp.arange(n))
        if return_path:
            path = jnp.concatenate([x_first[None], path])
        return with_path(x_out, jnp.asarray(n - free + pilot, jnp.int32), path, return_path)

    sample.ts = scaled.nominal["t"]
    return sample
