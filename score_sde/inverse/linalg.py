"""Batched linear algebra of restoration: per-example inner products and conjugate gradients.

Every function acts on batches (B, ...) of independent problems: inner products, step sizes
and stopping are per example, never over the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def batch_dot(a: Array, b: Array) -> Array:
    """<a_i, b_i> per example: (B, ...) x (B, ...) -> (B,)."""
    return jnp.sum((a * b).reshape(a.shape[0], -1), axis=1)


def conjugate_gradients(matvec: Callable[[Array], Array], rhs: Array, maxiter: int,
                        tol: float | None) -> Array:
    """Solve matvec(x) = rhs for a batch (B, ...) of symmetric positive semi-definite systems
    (one per example), from x = 0.

    With a tolerance an example stops once its residual is <= tol * |rhs| (a while loop that
    ends when every example has stopped, at most maxiter products); tol=None takes exactly
    maxiter products (a fixed count, for callers that count the cost of each product). An
    example whose residual is exactly 0, or whose search direction meets a curvature
    <p, A p> <= 0 (an indefinite system, e.g. a Jacobian-based covariance rounded in float32),
    takes no further step either way.
    """
    col = lambda v: v.reshape(v.shape + (1,) * (rhs.ndim - 1))
    stop = 0.0 if tol is None else (tol * jnp.sqrt(batch_dot(rhs, rhs))) ** 2

    def step(state):
        i, x, r, p, rr = state
        ap = matvec(p)
        curvature = batch_dot(p, ap)
        active = (rr > stop) & (curvature > 0)
        alpha = jnp.where(active, rr / jnp.where(active, curvature, 1.0), 0.0)
        x, r = x + col(alpha) * p, r - col(alpha) * ap
        rr_new = batch_dot(r, r)
        beta = jnp.where(active, rr_new / jnp.where(active, rr, 1.0), 0.0)
        return i + 1, x, r, r + col(beta) * p, jnp.where(active, rr_new, rr)

    def more(state):
        return (state[0] < maxiter) & jnp.any(state[4] > stop)

    init = (0, jnp.zeros_like(rhs), rhs, rhs, batch_dot(rhs, rhs))
    if tol is None:
        return jax.lax.fori_loop(0, maxiter, lambda _, s: step(s), init)[1]
    return jax.lax.while_loop(more, step, init)[1]
