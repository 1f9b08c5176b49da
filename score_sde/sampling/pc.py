"""Predictor-corrector sampling (Song et al. 2021, Algorithms 2-3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from score_sde.sampling.common import (
    Project,
    full_t,
    initial_state,
    projection_steps,
    step_times,
    with_path,
)
from score_sde.sampling.correctors import get_corrector
from score_sde.sampling.predictors import get_predictor
from score_sde.sampling.registry import register_sampler
from score_sde.sde_lib import SDE


# The published PC sampler takes its steps from the SDE's N (config.model.num_scales) or
# sampling.n_steps; the shared sampling.nfe budget of the few-step samplers is not read.
@register_sampler("pc", merges=True, fields={"nfe": None, "ts": None})
def pc_sampler(sde: SDE, shape: tuple[int, ...], *, predictor: str = "euler_maruyama",
               corrector: str = "none", snr: float = 0.16, n_steps_each: int = 1,
               probability_flow: bool = False, noise_removal: bool = True,
               n_steps: int | None = None, nfe: int | None = None, eps: float = 1e-3,
               grid: str = "uniform", sigma_range: tuple[float, float] | None = None,
               ts=None, sharding=None):
    """x_T ~ prior; for each t_i of the grid: n_steps_each corrector steps, then a predictor step.

    n_steps defaults to sde.N (the published sampler); `nfe` instead sets the number of steps
    from a budget of score calls. With noise_removal the last predictor step adds no noise.
    nfe returned = steps * (predictor calls + n_steps_each * corrector calls), the true count.
    `project` (optional) acts on the prior draw and after every corrector and predictor update,
    at the time the new state is at. `ts` (decreasing times in [eps, T]) overrides grid,
    n_steps and nfe: n_steps = len(ts) - 1.
    """
    pred, corr = get_predictor(predictor), get_corrector(corrector)
    per_step = pred.nfe + n_steps_each * corr.nfe
    if per_step == 0:
        raise ValueError("sampling.predictor and sampling.corrector are both 'none': nothing "
                         "would be sampled")
    if nfe is not None:
        n_steps = max(nfe // per_step, 1)
    n_steps = sde.N if n_steps is None else int(n_steps)
    grid_ts = step_times("pc", sde, eps, ts, grid, n_steps, sigma_range)
    n_steps = len(grid_ts) - 1
    ts = jnp.asarray(grid_ts)
    total_nfe = n_steps * per_step

    def sample(rng, score_fn, project: Project | None = None, *, x_init=None,
               return_path: bool = False):
        p_update = pred.factory(sde, score_fn, probability_flow)
        c_update = corr.factory(sde, score_fn, snr, n_steps_each)
        rng, proj = projection_steps(project, rng)
        x, rng = initial_state(sde, rng, shape, sharding, x_init)
        x, x_mean = proj(x, x, ts[0], 0)
        x_first = x_mean if noise_removal else x

        def step(carry, i):
            x, _ = carry
            t, t_next = full_t(ts[i], x), full_t(ts[i + 1], x)
            c_rng, p_rng = jax.random.split(jax.random.fold_in(rng, i))
            x, x_mean = proj(*c_update(c_rng, x, t, t_next), ts[i], 2 * i + 1)
            x, x_mean = proj(*p_update(p_rng, x, t, t_next), ts[i + 1], 2 * i + 2)
            return (x, x_mean), (x_mean if noise_removal else x) if return_path else None

        (x, x_mean), path = jax.lax.scan(step, (x, x_mean), jnp.arange(n_steps))
        if return_path:
            path = jnp.concatenate([x_first[None], path])
        return with_path(x_mean if noise_removal else x, jnp.asarray(total_nfe, jnp.int32), path,
                         return_path)

    sample.ts = grid_ts
    return sample
