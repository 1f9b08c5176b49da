"""Pieces every sampler shares: its times (a named grid or an explicit `ts`), the first state
(a prior draw or `x_init`), per-example times, the data prediction, the analytic first step,
the per-step projection hook, the optional returned path."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from score_sde.sampling import grid_files
from score_sde.sampling.grids import check_data_scale, get_time_grid
from score_sde.sde_lib import SDE, ScoreFn, batch_mul

Array = jax.Array
# project(rng, x, x_mean, t) -> (x, x_mean): puts a constraint into a sampler's state at time t
# (t per example, (B,)); inpainting / colorization merge the observation perturbed to t.
Project = Callable[[Array, Array, Array, Array], tuple[Array, Array]]
# apply(x, x_mean, t, k): the project step number k of a sampler at scalar time t.
ProjectStep = Callable[[Array, Array, Array, int | Array], tuple[Array, Array]]


def prior_sample(sde: SDE, rng: Array, shape: tuple[int, ...],
                 sharding=None) -> tuple[Array, Array]:
    """(x_T ~ p_T, the rng left for the sampler's own noise).

    Every sampler draws its prior this way, so samplers called with the same rng start from the
    same x_T (paired comparisons). x_T is laid out with `sharding` (e.g. the batch on a mesh
    axis 'data') if given.
    """
    rng, prior_rng = jax.random.split(rng)
    x = sde.prior_sampling(prior_rng, shape)
    return (x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)), rng


def full_t(t: Array, x: Array) -> Array:
    """A scalar time as the per-example vector (B,) the SDE contract asks for."""
    return jnp.full((x.shape[0],), t, dtype=jnp.float32)


def gaussian_score(sde: SDE, data_scale: float | None) -> ScoreFn:
    """The exact score of data N(0, s^2 I) at time t: -x / (alpha^2 s^2 + sigma^2), s = data_scale
    (None: 1, unit-scale data; grids.check_data_scale).

    The multistep samplers' analytic first step (Zhou et al. 2024, "analytical first step")
    takes it for the model's score at the top of the grid, where the data look Gaussian: there
    it differs from the true score by the data's mean and the departure of its covariance from
    s^2 I, relative (mean / rho_T, (s / rho_T)^2) with rho_T = sigma / alpha at T (VP: 152),
    and the flow shrinks that error further down the grid. data_scale may be a traced scalar
    (the estimate of sampling.scale).
    """
    s2 = (data_scale if isinstance(data_scale, jax.Array) else check_data_scale(data_scale)) ** 2

    def score(x: Array, t: Array) -> Array:
        alpha, sigma = sde.marginal_coeffs(t)
        return batch_mul(-1.0 / (alpha**2 * s2 + sigma**2), x)

    return score


def step_score(sde: SDE, score_fn: ScoreFn, analytic_first_step: bool,
               data_scale: float | None) -> Callable[[Array, Array, Array | int], Array]:
    """score(x, t, i) at step i: gaussian_score at step 0 when analytic_first_step (no model
    call: lax.cond runs one branch), else the model's."""
    if not analytic_first_step:
        return lambda x, t, i: score_fn(x, t)
    guess = gaussian_score(sde, data_scale)
    return lambda x, t, i: jax.lax.cond(i == 0, guess, score_fn, x, t)


def free_steps(sampler: str, analytic_first_step: bool, grid: str, ts) -> int:
    """1 with analytic_first_step (its first step calls no model: nfe calls take nfe + 1
    steps), else 0; a stored grid file (made for model calls at every step) is refused."""
    if not analytic_first_step:
        return 0
    if ts is None and grid_files.is_grid_file(grid):
        raise ValueError(f"{sampler}: analytic_first_step does not apply to the stored grid "
                         f"{grid!r} (optimize_grid calls the model at every step); unset "
                         "config.sampling.analytic_first_step or config.sampling.grid")
    return 1


def transition(sde: SDE, t: Array, s: Array) -> tuple[Array, Array]:
    """(a, b) of the exact forward step x_t = a x_s + sqrt(b) z from time s < t.

    a = alpha_t / alpha_s and b = sigma_t^2 - a^2 sigma_s^2 for every linear SDE, so predictors
    and correctors built on it are right for VP, sub-VP and VE on any time grid (VP: b = 1 - a^2,
    DDPM's beta; VE: b = sigma_t^2 - sigma_s^2, SMLD's step). b is computed as
    sigma_t^2 (1 - e^{2 (lambda_t - lambda_s)}) with lambda the log-SNR, free of the float32
    cancellation of the difference form at small noise.
    """
    alpha_t, sigma_t = sde.marginal_coeffs(t)
    alpha_s, _ = sde.marginal_coeffs(s)
    b = sigma_t**2 * -jnp.expm1(2.0 * (sde.log_snr(t) - sde.log_snr(s)))
    return alpha_t / alpha_s, jnp.maximum(b, 0.0)


def projection_steps(project: Project | None, rng: Array) -> tuple[Array, ProjectStep]:
    """(rng for the sampler, apply): `apply(x, x_mean, t, k)` projects with key fold_in(., k).

    Without a project the rng is returned unchanged and apply is the identity, so a sampler
    draws the same numbers with and without the hook; with one, the projection gets its own key
    stream split off first.
    """
    if project is None:
        return rng, lambda x, x_mean, t, k: (x, x_mean)
    rng, project_rng = jax.random.split(rng)

    def apply(x, x_mean, t, k):
        return project(jax.random.fold_in(project_rng, k), x, x_mean, full_t(t, x))

    return rng, apply


def step_times(sampler: str, sde: SDE, eps: float, ts, grid: str, n_steps: int,
               sigma_range: tuple[float, float] | None = None,
               min_steps: int = 1, data_scale: float | None = None) -> np.ndarray:
    """The decreasing times a fixed-step sampler visits (float32 numpy, static).

    An explicit `ts` wins over grid / n_steps: it must be 1-D, strictly decreasing, inside
    [eps, T], with at least min_steps + 1 points (min_steps: what the sampler's order needs).
    Without it: the named grid of n_steps steps from T to eps (score_sde.sampling.grids),
    placed for data of spread data_scale (None: unit-scale data).
    """
    if ts is None:
        if n_steps < min_steps:
            raise ValueError(f"{sampler}: {n_steps} steps are too few; it needs at least "
                             f"{min_steps} (raise nfe or lower order)")
        return get_time_grid(grid, sde, n_steps, eps, sigma_range, data_scale)
    ts = np.asarray(ts, np.float64)
    if ts.ndim != 1 or len(ts) < min_steps + 1:
        raise ValueError(f"{sampler}: ts must be a 1-D array of at least {min_steps + 1} times "
                         f"(its order needs {min_steps} steps), got shape {ts.shape}")
    if not np.all(np.isfinite(ts)):
        raise ValueError(f"{sampler}: ts holds a non-finite time: {ts.tolist()}")
    bad = np.flatnonzero(np.diff(ts) >= 0)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{sampler}: ts must be strictly decreasing, but ts[{i}]={ts[i]:.6g} "
                         f"<= ts[{i + 1}]={ts[i + 1]:.6g}")
    tol = 1e-6 * max(abs(sde.T), 1.0)
    if ts[0] > sde.T + tol or ts[-1] < eps - tol:
        raise ValueError(f"{sampler}: ts must lie inside [eps, T] = [{eps:.6g}, {sde.T:.6g}], "
                         f"got [{ts[-1]:.6g}, {ts[0]:.6g}]")
    return ts.astype(np.float32)


def initial_state(sde: SDE, rng: Array, shape: tuple[int, ...], sharding=None,
                  x_init: Array | None = None) -> tuple[Array, Array]:
    """(the state at the first time, the rng left): x_init if given, else a prior draw.

    The rng is split as for a prior draw either way, so a sampler's own noise does not depend
    on whether x_init was given.
    """
    x, rng = prior_sample(sde, rng, shape, sharding)
    if x_init is None:
        return x, rng
    if tuple(x_init.shape) != tuple(shape):
        raise ValueError(f"x_init has shape {tuple(x_init.shape)}, the sampler was built for "
                         f"{tuple(shape)}")
    x = jnp.asarray(x_init, x.dtype)
    return (x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)), rng


def with_path(x: Array, nfe: Array, path: Array | None, return_path: bool):
    """(x, nfe), or (x, nfe, path) when return_path (path: the states stacked, (len, *shape))."""
    return (x, nfe, path) if return_path else (x, nfe)


def schedule(sde: SDE, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """alpha, sigma and lambda = log(alpha / sigma) at the times ts (float64 numpy, static)."""
    alpha, sigma = (np.asarray(v, np.float64) for v in sde.marginal_coeffs(jnp.asarray(ts)))
    return alpha, sigma, np.log(alpha / sigma)
