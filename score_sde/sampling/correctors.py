"""Correctors of the predictor-corrector sampler: score-based MCMC at a fixed time t.

A corrector factory `(sde, score_fn, snr, n_steps) -> update` returns
`update(rng, x, t, t_next) -> (x, x_mean)` running n_steps Langevin steps at time t (t_next
only fixes the step's alpha). Register new ones with `@register_corrector(name, nfe=...)`;
nfe is score calls per Langevin step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from score_sde.registry import Registry
from score_sde.sampling.common import transition
from score_sde.sde_lib import SDE, ScoreFn, batch_mul

Array = jax.Array
Update = Callable[[Array, Array, Array, Array], tuple[Array, Array]]
StepSize = Callable[[Array, Array, Array, Array, Array], Array]


@dataclasses.dataclass(frozen=True)
class Corrector:
    factory: Callable[[SDE, ScoreFn, float, int], Update]
    nfe: int


_CORRECTORS: Registry[Corrector] = Registry("corrector", field="sampling.corrector")


def register_corrector(name: str, nfe: int = 1):
    """Decorator: make a corrector factory `sampling.corrector=name`; nfe: calls per step."""
    return _CORRECTORS.register(name, lambda factory: Corrector(factory, nfe))


def get_corrector(name: str) -> Corrector:
    return _CORRECTORS.lookup(name)


def _langevin(sde: SDE, score_fn: ScoreFn, n_steps: int, step_size: StepSize) -> Update:
    """n_steps of x <- x + e score + sqrt(2 e) z, with e = step_size(grad, noise, t, alpha)."""

    def update(rng, x, t, t_next):
        # alpha = 1 - beta_i: the squared mean ratio of the step, a^2 (VP: DDPM's alpha_i;
        # sub-VP: its own ratio, not 1; VE: 1).
        alpha = transition(sde, t, t_next)[0] ** 2

        def step(i, carry):
            x, _ = carry
            grad = score_fn(x, t)
            noise = jax.random.normal(jax.random.fold_in(rng, i), x.shape, x.dtype)
            e = step_size(grad, noise, x, t, alpha)
            x_mean = x + batch_mul(e, grad)
            return x_mean + batch_mul(jnp.sqrt(2.0 * e), noise), x_mean

        return jax.lax.fori_loop(0, n_steps, step, (x, x))

    return update


def _batch_norm(v: Array) -> Array:
    return jnp.mean(jnp.linalg.norm(v.reshape(v.shape[0], -1), axis=-1))


@register_corrector("langevin")
def langevin(sde: SDE, score_fn: ScoreFn, snr: float, n_steps: int) -> Update:
    """Langevin MCMC with the published step size 2 alpha (snr ||z|| / ||score||)^2.

    The norms are averaged over the whole batch (as published; under a sharded jit the mean is
    global, so results do not depend on the device count).
    """

    def step_size(grad, noise, x, t, alpha):
        ratio = snr * _batch_norm(noise) / _batch_norm(grad)
        return 2.0 * alpha * ratio**2

    return _langevin(sde, score_fn, n_steps, step_size)


@register_corrector("ald")
def annealed_langevin(sde: SDE, score_fn: ScoreFn, snr: float, n_steps: int) -> Update:
    """NCSN's annealed Langevin dynamics: step size 2 alpha (snr sigma_t)^2."""

    def step_size(grad, noise, x, t, alpha):
        return 2.0 * alpha * (snr * sde.marginal_coeffs(t)[1]) ** 2

    return _langevin(sde, score_fn, n_steps, step_size)


@register_corrector("none", nfe=0)
def no_corrector(sde: SDE, score_fn: ScoreFn, snr: float, n_steps: int) -> Update:
    return lambda rng, x, t, t_next: (x, x)
