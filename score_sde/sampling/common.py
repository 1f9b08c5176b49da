"""Pieces every sampler shares: the prior draw, per-example times, the data prediction, the
per-step projection hook."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

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


def data_prediction(sde: SDE, score_fn: ScoreFn) -> ScoreFn:
    """x0_hat(x, t) = E[x_0 | x_t = x] = (x + sigma^2 score) / alpha (Tweedie's formula)."""

    def x0_hat(x: Array, t: Array) -> Array:
        alpha, sigma = sde.marginal_coeffs(t)
        return batch_mul(1.0 / alpha, x + batch_mul(sigma**2, score_fn(x, t)))

    return x0_hat


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
