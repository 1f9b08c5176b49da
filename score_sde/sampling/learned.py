"""The learned solver: a multistep solver whose weights were fitted to one model.

A step of the data-prediction multistep family (DPM-Solver++ and its relatives, S4S / DLMS /
AMED-style learned solvers: Frankel et al. 2025, Zhou et al. 2024) reads

    x_{i+1} = (sigma_{i+1} / sigma_i) x_i + alpha_{i+1} sum_j W[i, j] m_{i-j},

m_k = x0_hat(x_k, t_k) the data predictions of the last MAX_ORDER steps (newest first), one
score call per step. DPM-Solver++ of order p is one choice of W
(steps.exponential_history_weights: the weights of each step sum to 1 - e^{-h}, the exact
weight of a constant data prediction); `learn_coefficients`
(sampling/coefficient_optimizer) fits W, and optionally the times, to a model's teacher
solves, and `--mode optimize_grid --config.sampling.method=learned` stores them beside the
checkpoint as a coefficient file (sampling/grid_files), read with
coefficients='file:PATH'. Without a file the sampler runs its starting point, DPM-Solver++ of
`order` on dpm_solver++'s default grid, and gives DPM-Solver++'s samples.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from score_sde.sampling import fast, grid_files  # noqa: F401 (fast: START_SAMPLER)
from score_sde.sampling.common import (
    Project,
    full_t,
    initial_state,
    projection_steps,
    schedule,
    step_score,
    step_times,
    with_path,
)
from score_sde.sampling.registry import get_sampler, register_sampler
from score_sde.sampling.steps import (
    MAX_ORDER,
    adams_bashforth_step,
    data_prediction,
    exponential_coeffs,
    exponential_history_weights,
)
from score_sde.sde_lib import SDE

START_SAMPLER = "dpm_solver++"  # the solver the learned weights start from (and fall back to)


@register_sampler("learned", merges=True, fields={"ts": None, "weights": None})
def learned_sampler(sde: SDE, shape: tuple[int, ...], *, coefficients: str | None = None,
                    nfe: int | None = None, order: int = 2,
                    analytic_first_step: bool = False, data_scale: float | None = None,
                    weights=None, ts=None, eps: float = 1e-3, sharding=None):
    """The learned multistep solver (module docstring), one score call per step.

    coefficients: 'file:PATH', a coefficient file made for this SDE, eps and sample shape
    (shape[1:]) and, when nfe is given, this nfe (one clear error otherwise); the file also
    says whether its first step is analytic (and the guess's data_scale). Without it:
    `weights` (n, K <= MAX_ORDER) on the times `ts` (n + 1) if given (the learner's output,
    for library use), else DPM-Solver++ of `order` (lower order at the last step) on
    dpm_solver++'s default grid at nfe (default 10) or on `ts`. analytic_first_step: the
    first data prediction is that of N(0, data_scale^2 I) (common.gaussian_score), so nfe
    score calls take nfe + 1 steps. data_scale places the start's grid; unlike dpm_solver++,
    None means unit-scale data here, not an estimate from the score (a coefficient file holds
    its own times).
    """
    times, w, first = _solver(sde, shape, coefficients, nfe, order, weights, ts, eps,
                              {"analytic_first_step": bool(analytic_first_step),
                               "data_scale": data_scale})
    n = len(times) - 1
    free = int(first["analytic_first_step"])
    alpha, sigma, _ = schedule(sde, times)
    w_x, w_m = (jnp.asarray(v, jnp.float32) for v in multistep_weights(alpha, sigma, w))
    t_grid = jnp.asarray(times, jnp.float32)

    def sample(rng, score_fn, project: Project | None = None, *, x_init=None,
               return_path: bool = False):
        rng, proj = projection_steps(project, rng)
        x, _ = initial_state(sde, rng, shape, sharding, x_init)
        x, x_first = proj(x, x, t_grid[0], 0)
        score_at = step_score(sde, score_fn, first["analytic_first_step"], first["data_scale"])
        x_out, path = run_multistep(sde, score_at, x, t_grid, w_x, w_m, proj, x_first,
                                    return_path)
        if return_path:
            path = jnp.concatenate([x_first[None], path])
        return with_path(x_out, jnp.asarray(n - free, jnp.int32), path, return_path)

    sample.ts = times
    sample.weights = w
    sample.analytic_first_step = first["analytic_first_step"]
    return sample


def multistep_weights(alpha, sigma, weights):
    """(w_x (n,), w_m (n, MAX_ORDER)) of adams_bashforth_step from the schedule ((n + 1,) alpha,
    sigma; numpy or JAX) and the data-prediction weights W (n, K <= MAX_ORDER)."""
    xp = jnp if isinstance(weights, jax.Array) or isinstance(alpha, jax.Array) else np
    pad = MAX_ORDER - weights.shape[1]
    weights = xp.pad(weights, ((0, 0), (0, pad))) if pad else weights
    return sigma[1:] / sigma[:-1], alpha[1:, None] * weights


def run_multistep(sde: SDE, score_at, x, t_grid, w_x, w_m, proj=None, x_first=None,
                  return_path: bool = False):
    """(x at t_grid[-1], the states after each step (n, ...) or None): the multistep from x at
    t_grid[0] with the weights of multistep_weights and the score score_at(x, t, i) of step i
    (common.step_score); proj(x, x_mean, t, k) after each step (common.projection_steps;
    None: none). The sampler and the learner's loss both run this."""
    proj = proj or (lambda x, x_mean, t, k: (x, x_mean))

    def step(carry, i):
        x, _, history = carry
        m = data_prediction(sde, lambda x, t: score_at(x, t, i))(x, full_t(t_grid[i], x))
        x, history = adams_bashforth_step(x, m, history, w_x[i], w_m[i])
        x, x_out = proj(x, x, t_grid[i + 1], i + 1)
        return (x, x_out, history), x_out if return_path else None

    history = jnp.zeros((MAX_ORDER, *x.shape), x.dtype)
    first = x if x_first is None else x_first
    (_, x_out, _), path = jax.lax.scan(step, (x, first, history),
                                       jnp.arange(t_grid.shape[0] - 1))
    return x_out, path


def start_solver(sde: SDE, shape: tuple[int, ...], nfe: int, order: int, eps: float,
                 ts=None, analytic_first_step: bool = False,
                 data_scale: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(times, W): DPM-Solver++ of `order` with its lower-order last step as the learned
    solver's weights, on START_SAMPLER's default grid at nfe (its own, so the two agree, with
    the analytic first step's extra step) or on ts: where the learner starts and what its
    judge compares against. data_scale None: unit-scale data (no estimate from a score)."""
    scale = 1.0 if data_scale is None else data_scale
    times = get_sampler(START_SAMPLER, sde, shape, nfe=nfe, order=order, eps=eps, ts=ts,
                        analytic_first_step=analytic_first_step, data_scale=scale).ts
    times = np.asarray(times, np.float64)
    coeffs = exponential_coeffs(*schedule(sde, times), order, lower_order_final=True)
    return times, np.asarray(exponential_history_weights(coeffs), np.float64)


def _solver(sde, shape, coefficients, nfe, order, weights, ts, eps, first):
    """(times float64 (n + 1,), W float64 (n, K), the first step's options) of the sampler's
    options; a coefficient file gives its own first step."""
    if coefficients is not None:
        if not grid_files.is_grid_file(coefficients):
            raise ValueError(f"learned: coefficients must be 'file:PATH', got {coefficients!r}")
        if weights is not None or ts is not None:
            raise ValueError("learned: give coefficients='file:PATH' or weights and ts, not both")
        times, w, first = grid_files.load_coefficients(coefficients[len(grid_files.PREFIX):],
                                                       sde, eps, tuple(shape[1:]), nfe)
        return np.asarray(times, np.float64), np.asarray(w, np.float64), first
    if weights is None:
        nfe = 10 if nfe is None else nfe
        return (*start_solver(sde, shape, nfe, order, eps, ts, **first), first)
    if ts is None:
        raise ValueError("learned: weights need their times ts (n + 1 decreasing times)")
    times = np.asarray(step_times("learned", sde, eps, ts, "", 0), np.float64)
    w = np.asarray(weights, np.float64)
    if w.ndim != 2 or w.shape[0] != len(times) - 1 or w.shape[1] > MAX_ORDER:
        raise ValueError(f"learned: weights must be (len(ts) - 1, K <= {MAX_ORDER}) = "
                         f"({len(times) - 1}, K), got {w.shape}")
    return times, w, first
