"""TDS (Wu et al. 2023): twisted sequential Monte Carlo, asymptotically exact in the particles.

Each output sample is drawn from K particles that run the ancestral sampler (DDIM with
eta = 1) on the grid t_0 = T > ... > t_n = eps, steered and reweighted by a twist
p~_t(y | x_t) that approximates the likelihood of y at time t. Here the twist is PiGDM's
Gaussian, p~_t(y | x_t) = N(y; A x0_hat(x_t), r_t^2 A A^T + sigma_y^2 I) (guidance.py; its
determinant does not depend on x and cancels among a group's particles). A step from t to t':

  proposal   q(x' | x) = the ancestral step with the twisted score s + grad log p~_t(y | x);
  weight     w *= p(x' | x) p~_t'(y | x') / (q(x' | x) p~_t(y | x)), p(x' | x) the step with
             the model's score alone (both Gaussians of the same variance);
  resample   systematically within the group when its effective sample size falls below
             ess_threshold * K.

At the end the twist is replaced by the likelihood itself, p(y | x) = N(y; A x, sigma_y^2 I)
at the last state (noise eps), and one particle per group is drawn by weight. With K -> inf the
draw follows the posterior for any twist that is positive (the twist sets how many particles
that takes). Cost: every particle evaluates the network and a vjp at n + 1 states, so
nfe = K (n + 1) (2 + checkpoint) per output sample; the budget nfe buys n + 1 =
nfe // (K (2 + checkpoint)) evaluations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from score_sde.inverse.base import Operator
from score_sde.inverse.guidance import observation_solver, posterior_variance
from score_sde.inverse.linalg import batch_dot
from score_sde.inverse.posterior import register_posterior
from score_sde.sampling.common import full_t, initial_state, schedule, step_times
from score_sde.sde_lib import SDE, batch_mul

Array = jax.Array


def systematic_resample(rng: Array, log_w: Array) -> Array:
    """Indices (B, K) into each group's K particles, drawn systematically by weight."""
    b, k = log_w.shape
    cum = jnp.cumsum(jax.nn.softmax(log_w, axis=1), axis=1)
    u = (jax.random.uniform(rng, (b, 1)) + jnp.arange(k)) / k
    idx = jax.vmap(jnp.searchsorted)(cum, u)
    return jnp.minimum(idx, k - 1)


def effective_size(log_w: Array) -> Array:
    """1 / sum w^2 of the normalised weights per group (B,)."""
    w = jax.nn.softmax(log_w, axis=1)
    return 1.0 / jnp.sum(w**2, axis=1)


def twist_fn(sde: SDE, operator: Operator, y: Array, sigma_y, data_scale, cg_iters: int,
             score_fn, checkpoint: bool):
    """evaluate(x, t) -> (score, log p~_t(y | x) (B,), its gradient): one forward and one vjp
    through the network."""
    solve = observation_solver(operator, sigma_y, cg_iters)
    network = jax.checkpoint(score_fn) if checkpoint else score_fn

    def evaluate(x, t):
        alpha, sigma = sde.marginal_coeffs(t)

        def log_twist(x):
            score = network(x, t)
            x0 = batch_mul(1.0 / alpha, x + batch_mul(sigma**2, score))
            res = y - operator.forward(x0)
            weighted = jax.lax.stop_gradient(solve(res, posterior_variance(sde, t, data_scale)))
            # grad of -res.S res / 2 with S fixed is -(d res)^T S res: that of -res.(S res)
            quad = batch_dot(res, weighted)
            return -jnp.sum(quad), (-0.5 * jax.lax.stop_gradient(quad), score)

        grad, (value, score) = jax.grad(log_twist, has_aux=True)(x)
        return score, value, grad

    return evaluate


def _regroup(x: Array, idx: Array) -> Array:
    """x (B K, ...) with each group's particles taken at idx (B, K)."""
    b, k = idx.shape
    flat = (jnp.arange(b)[:, None] * k + idx).reshape(-1)
    return x[flat]


@register_posterior("tds", needs=("linear", "adjoint"))
def tds_sampler(sde: SDE, operator: Operator, shape, *, sigma_y: float, nfe: int, eps: float,
                sharding=None, particles: int = 16, ess_threshold: float = 0.5,
                checkpoint: bool = True, data_scale: float | None = None,
                grid: str = "vp_uniform", cg_iters: int = 50):
    """TDS (module docstring) with `particles` per output sample; sigma_y must be > 0."""
    if not isinstance(sigma_y, jax.core.Tracer) and not float(sigma_y) > 0:
        raise ValueError("tds needs sigma_y > 0 (its last weights are the likelihood)")
    k, cost = int(particles), 2 + int(checkpoint)
    points = nfe // (k * cost)
    if points < 2:
        raise ValueError(f"tds: nfe={nfe} buys {points} evaluation(s) of {k} particles at "
                         f"{cost} passes each; it needs 2 (nfe >= {2 * k * cost})")
    ts = step_times("tds", sde, eps, None, grid, points - 1, data_scale=data_scale)
    alpha, sigma, lam = schedule(sde, ts)
    noise = sigma[1:] * np.sqrt(-np.expm1(2.0 * (lam[:-1] - lam[1:])))  # DDIM eta = 1
    keep = np.sqrt(np.maximum(sigma[1:] ** 2 - noise**2, 0.0))
    alpha, sigma, noise, keep, t_grid = (jnp.asarray(v, jnp.float32)
                                         for v in (alpha, sigma, noise, keep, ts))
    big = (shape[0] * k,) + tuple(shape[1:])

    def ancestral_mean(x, score, i):
        x0 = (x + sigma[i] ** 2 * score) / alpha[i]
        return alpha[i + 1] * x0 - keep[i] * sigma[i] * score

    def sample(rng, score_fn, y):
        y_all = jnp.repeat(y, k, axis=0)
        evaluate = twist_fn(sde, operator, y_all, sigma_y, data_scale, cg_iters, score_fn,
                            checkpoint)
        x, rng = initial_state(sde, rng, big, sharding)
        score, tw, grad = evaluate(x, full_t(t_grid[0], x))
        log_w = tw.reshape(-1, k)

        def step(carry, i):
            x, score, tw, grad, log_w = carry
            key = jax.random.fold_in(rng, i)
            mean_p = ancestral_mean(x, score, i)
            mean_q = ancestral_mean(x, score + grad, i)
            x_new = mean_q + noise[i] * jax.random.normal(key, x.shape, x.dtype)
            score_n, tw_n, grad_n = evaluate(x_new, full_t(t_grid[i + 1], x_new))
            log_pq = (batch_dot(x_new - mean_q, x_new - mean_q)
                      - batch_dot(x_new - mean_p, x_new - mean_p)) / (2.0 * noise[i] ** 2)
            log_w = log_w + (log_pq + tw_n - tw).reshape(-1, k)
            idx = systematic_resample(jax.random.fold_in(key, 1), log_w)
            redo = effective_size(log_w) < ess_threshold * k                      # (B,)
            idx = jnp.where(redo[:, None], idx, jnp.arange(k)[None])
            log_w = jnp.where(redo[:, None], 0.0, log_w)
            state = tuple(_regroup(v, idx) for v in (x_new, score_n, tw_n, grad_n))
            return (*state, log_w), None

        (x, _, tw, _, log_w), _ = jax.lax.scan(step, (x, score, tw, grad, log_w),
                                               jnp.arange(len(ts) - 1))
        res = y_all - operator.forward(x)
        log_w = log_w + (-0.5 * batch_dot(res, res) / sigma_y**2 - tw).reshape(-1, k)
        pick = jax.random.categorical(jax.random.fold_in(rng, len(ts)), log_w, axis=1)
        out = x.reshape((shape[0], k) + tuple(shape[1:]))[jnp.arange(shape[0]), pick]
        return out, jnp.asarray(k * len(ts) * cost, jnp.int32)

    sample.ts = ts
    return sample
