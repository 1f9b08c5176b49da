"""DAPS (Zhang et al. 2024): decoupled annealing posterior sampling.

A chain over decreasing noise levels t_0 = T > t_1 > ... > t_{L-1} = eps. At each level, from
the state x_t:
  1. x0_hat: the probability-flow ODE from t down to noise 0 in ode_steps data-prediction
     calls (DDIM's steps, Euler in EDM's variables: sampling.steps.euler_step, on a grid
     uniform in log-SNR down to eps, then the data prediction there; ode_steps = 1 is
     Tweedie's x0_hat);
  2. x0 ~ p(x0 | x_t, y) ∝ N(x0; x0_hat, r_t^2 I) exp(-||y - A(x0)||^2 / (2 sigma_y^2)) by
     langevin_steps unadjusted Langevin steps on x0, the likelihood's gradient by autodiff of
     the forward operator only (no gradient through the network, so nonlinear operators and
     large images are served);
  3. x_{t'} = alpha' x0 + sigma' z at the next level (the noise is decoupled from the path).
The sample is the last x0. If every x0 draw were exact, the chain would keep p(x_t | y) at
every level: the approximations are the Gaussian N(x0_hat, r_t^2 I) for p(x0 | x_t) and the
finite Langevin chain.

Choices, stated: r_t^2 = s^2 rho^2 / (s^2 + rho^2) (rho = sigma / alpha, s = data_scale), the
exact Var[x0 | x_t] of data N(0, s^2 I), -> rho^2 (the paper's r_t = sigma_t) at low noise.
The Langevin step is step_scale / L, with L = 1 / r_t^2 + ||J_A||^2 / sigma_y^2 the curvature
bound of the target (||J_A||: the operator's largest singular value at the first draw, by
power iteration on jax.jvp / jax.vjp of forward). The chain starts from a draw of the Gaussian
factor, x0_hat + r_t z (the null space then has its spread from the start; the paper starts at
x0_hat). NFE: levels x ode_steps score calls; Langevin steps call the operator only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from score_sde.inverse.base import Operator
from score_sde.inverse.guidance import posterior_variance
from score_sde.inverse.linalg import batch_dot
from score_sde.inverse.posterior import register_posterior
from score_sde.sampling.common import full_t, initial_state, schedule, step_times
from score_sde.sampling.steps import data_prediction, denoiser_at_time, euler_step
from score_sde.sde_lib import SDE, batch_mul

Array = jax.Array
POWER_ITERATIONS = 20


def ode_grids(sde: SDE, ts: np.ndarray, ode_steps: int, eps: float) -> np.ndarray:
    """(ode_steps, L): for each level t_l, the ODE's points from t_l to eps, spaced uniformly in
    log-SNR (a level at eps repeats it: its one call is the data prediction there)."""
    lam = np.asarray(sde.log_snr(jnp.asarray(np.append(ts, eps), jnp.float32)), np.float64)
    frac = np.linspace(0.0, 1.0, ode_steps)[:, None]
    grid = lam[None, :-1] + frac * (lam[-1] - lam[None, :-1])
    return np.asarray(sde.t_from_log_snr(jnp.asarray(grid, jnp.float32)), np.float64)


def operator_norm(operator: Operator, x: Array, rng: Array) -> Array:
    """The largest singular value of the operator's Jacobian at x, per example (B,)."""
    v = jax.random.normal(rng, x.shape, x.dtype)

    def body(_, v):
        v = v / jnp.sqrt(batch_dot(v, v)).reshape((-1,) + (1,) * (v.ndim - 1))
        _, jv = jax.jvp(operator.forward, (x,), (v,))
        return jax.vjp(operator.forward, x)[1](jv)[0]

    v = jax.lax.fori_loop(0, POWER_ITERATIONS, body, v)
    return jnp.sqrt(jnp.sqrt(batch_dot(v, v)))  # |J^T J v| for a unit v -> ||J||^2


def langevin(rng, x0, mean, r2, operator, y, sigma_y, n_steps: int, step):
    """n_steps unadjusted Langevin steps on x0 with -log target ||x0 - mean||^2 / (2 r2) +
    ||y - A(x0)||^2 / (2 sigma_y^2); step (B,) per example."""

    def log_lik(x):
        return -0.5 * jnp.sum(jnp.square(y - operator.forward(x))) / sigma_y**2

    def body(k, x):
        grad = jax.grad(log_lik)(x) + batch_mul(1.0 / r2, mean - x)
        z = jax.random.normal(jax.random.fold_in(rng, k), x.shape, x.dtype)
        return x + batch_mul(step, grad) + batch_mul(jnp.sqrt(2.0 * step), z)

    return jax.lax.fori_loop(0, n_steps, body, x0)


@register_posterior("daps")
def daps_sampler(sde: SDE, operator: Operator, shape, *, sigma_y: float, nfe: int, eps: float,
                 sharding=None, ode_steps: int = 1, langevin_steps: int = 50,
                 step_scale: float = 0.5, grid: str = "vp_uniform",
                 data_scale: float | None = None):
    """DAPS (module docstring): nfe // ode_steps levels on `grid` (data_scale places it).

    sigma_y must be > 0 (the Langevin target needs a likelihood of finite curvature).
    """
    if not isinstance(sigma_y, jax.core.Tracer) and not float(sigma_y) > 0:
        raise ValueError("daps needs sigma_y > 0 (its Langevin steps sample the likelihood); "
                         "for noise-free observations use ddrm or merge, or a small sigma_y")
    levels = nfe // int(ode_steps)
    if levels < 1:
        raise ValueError(f"daps: nfe={nfe} is below ode_steps={ode_steps} (one level's cost)")
    ts = (np.asarray([sde.T], np.float32) if levels == 1
          else step_times("daps", sde, eps, None, grid, levels - 1, data_scale=data_scale))
    inner = ode_grids(sde, ts, int(ode_steps), eps)  # (ode_steps, L)
    alpha_in, sigma_in, _ = schedule_2d(sde, inner)
    rho_in = jnp.asarray(sigma_in / alpha_in, jnp.float32)
    alpha, sigma, _ = schedule(sde, ts)
    alpha, sigma = (jnp.asarray(np.append(v, 0.0 if k else 1.0), jnp.float32)
                    for k, v in enumerate((alpha, sigma)))  # the last level renoises to nothing
    inner, t_levels = jnp.asarray(inner, jnp.float32), jnp.asarray(ts)

    def sample(rng, score_fn, y):
        x0_hat = data_prediction(sde, score_fn)
        denoise = denoiser_at_time(sde, x0_hat)
        x, rng = initial_state(sde, rng, shape, sharding)
        rng, norm_rng = jax.random.split(rng)
        norm2 = operator_norm(operator, x, norm_rng) ** 2

        def ode(x, level):  # DDIM (Euler in EDM's variables) from the level to noise 0
            def step(x_edm, j):
                d = denoise(x_edm, full_t(inner[j, level], x_edm))
                return euler_step(x_edm, rho_in[j, level], rho_in[j + 1, level], d), None

            x_edm = batch_mul(1.0 / sde.marginal_coeffs(full_t(inner[0, level], x))[0], x)
            if inner.shape[0] > 1:
                x_edm, _ = jax.lax.scan(step, x_edm, jnp.arange(inner.shape[0] - 1))
            return denoise(x_edm, full_t(inner[-1, level], x_edm))

        def level_step(carry, level):
            x, _ = carry
            key = jax.random.fold_in(rng, level)
            mean = ode(x, level)
            r2 = posterior_variance(sde, full_t(t_levels[level], x), data_scale)
            step = step_scale / (1.0 / r2 + norm2 / sigma_y**2)
            start = mean + batch_mul(jnp.sqrt(r2), jax.random.normal(key, x.shape, x.dtype))
            x0 = langevin(jax.random.fold_in(key, 1), start, mean, r2, operator, y, sigma_y,
                          langevin_steps, step)
            z = jax.random.normal(jax.random.fold_in(key, 2), x.shape, x.dtype)
            return (alpha[level + 1] * x0 + sigma[level + 1] * z, x0), None

        (_, x0), _ = jax.lax.scan(level_step, (x, x), jnp.arange(len(ts)))
        return x0, jnp.asarray(len(ts) * int(ode_steps), jnp.int32)

    sample.ts = ts
    return sample


def schedule_2d(sde: SDE, times: np.ndarray):
    """alpha, sigma, lambda (float64) at a (k, L) array of times."""
    alpha, sigma = (np.asarray(v, np.float64) for v in sde.marginal_coeffs(
        jnp.asarray(times.reshape(-1), jnp.float32)))
    alpha, sigma = alpha.reshape(times.shape), sigma.reshape(times.shape)
    return alpha, sigma, np.log(alpha / sigma)
