"""Predictors of the predictor-corrector sampler: one reverse-time step t -> t_next < t.

A predictor factory `(sde, score_fn, probability_flow) -> update` returns
`update(rng, x, t, t_next) -> (x, x_mean)`, where t, t_next are per-example times (B,) and
x_mean is the step without its fresh noise (returned by the last step when noise_removal is on).
Register new ones with `@register_predictor(name, nfe=...)`; nfe is score calls per step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from score_sde.registry import Registry
from score_sde.sampling.common import transition
from score_sde.sde_lib import SDE, VPSDE, ScoreFn, batch_mul

Array = jax.Array
Update = Callable[[Array, Array, Array, Array], tuple[Array, Array]]


@dataclasses.dataclass(frozen=True)
class Predictor:
    factory: Callable[[SDE, ScoreFn, bool], Update]
    nfe: int


_PREDICTORS: Registry[Predictor] = Registry("predictor", field="sampling.predictor")


def register_predictor(name: str, nfe: int = 1):
    """Decorator: make a predictor factory `sampling.predictor=name`; nfe: score calls per step."""
    return _PREDICTORS.register(name, lambda factory: Predictor(factory, nfe))


def get_predictor(name: str) -> Predictor:
    return _PREDICTORS.lookup(name)


def _noise(rng: Array, x: Array) -> Array:
    return jax.random.normal(rng, x.shape, x.dtype)


@register_predictor("euler_maruyama")
def euler_maruyama(sde: SDE, score_fn: ScoreFn, probability_flow: bool = False) -> Update:
    """x <- x + f_rev dt + g sqrt(|dt|) z on the reverse SDE (or the probability-flow ODE)."""
    rsde = sde.reverse(score_fn, probability_flow)

    def update(rng, x, t, t_next):
        dt = t_next - t
        drift, diffusion = rsde.sde(x, t)
        x_mean = x + batch_mul(dt, drift)
        if probability_flow:
            return x_mean, x_mean
        return x_mean + batch_mul(diffusion * jnp.sqrt(-dt), _noise(rng, x)), x_mean

    return update


@register_predictor("reverse_diffusion")
def reverse_diffusion(sde: SDE, score_fn: ScoreFn, probability_flow: bool = False) -> Update:
    """Invert the forward step x_t = a x_s + sqrt(b) z: x_s = (2 - a) x + b score + sqrt(b) z.

    On the published grid (n = N uniform steps) a, b are DDPM's / SMLD's discretisation; they
    come from the marginals, so any grid and the sub-VP SDE work too. The probability-flow
    version halves the score term and adds no noise.
    """
    weight = 0.5 if probability_flow else 1.0

    def update(rng, x, t, t_next):
        a, b = transition(sde, t, t_next)
        x_mean = batch_mul(2.0 - a, x) + batch_mul(weight * b, score_fn(x, t))
        if probability_flow:
            return x_mean, x_mean
        return x_mean + batch_mul(jnp.sqrt(b), _noise(rng, x)), x_mean

    return update


@register_predictor("ancestral_sampling")
def ancestral_sampling(sde: SDE, score_fn: ScoreFn, probability_flow: bool = False) -> Update:
    """Sample p(x_s | x_t) ~ N((x + b score) / a, v): DDPM (VP) and SMLD (VE) ancestral steps.

    The mean is E[x_s | x_t] exactly (Tweedie on the transition x_t = a x_s + sqrt(b) z). The
    variance is DDPM's v = b for VP and the posterior variance v = b sigma_s^2 / sigma_t^2 of
    q(x_s | x_t, x_0) otherwise (SMLD's choice for VE; derived the same way for sub-VP).
    """
    if probability_flow:
        raise ValueError("sampling.predictor='ancestral_sampling' has no probability-flow form; "
                         "use 'euler_maruyama' or 'reverse_diffusion' with probability_flow")
    ddpm = isinstance(sde, VPSDE)

    def update(rng, x, t, t_next):
        a, b = transition(sde, t, t_next)
        x_mean = batch_mul(1.0 / a, x + batch_mul(b, score_fn(x, t)))
        if ddpm:
            var = b
        else:
            sigma_t, sigma_s = sde.marginal_coeffs(t)[1], sde.marginal_coeffs(t_next)[1]
            var = b * sigma_s**2 / sigma_t**2
        return x_mean + batch_mul(jnp.sqrt(var), _noise(rng, x)), x_mean

    return update


@register_predictor("none", nfe=0)
def no_predictor(sde: SDE, score_fn: ScoreFn, probability_flow: bool = False) -> Update:
    """Corrector-only sampling (e.g. NCSN's annealed Langevin dynamics)."""
    return lambda rng, x, t, t_next: (x, x)
