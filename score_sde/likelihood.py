"""Exact log-likelihoods through the probability-flow ODE (Song et al. 2021, Appendix D.2).

The ODE dx/dt = v(x, t) = f(x, t) - g(t)^2 score(x, t) / 2 carries p_eps onto p_T, and along
a path log p_t(x(t)) changes by -div v dt. Integrating from eps to T:

    log p_eps(x) = log p_T(z) + int_eps^T div v(x(t), t) dt,   z = x(T),

with log p_T replaced by the prior's `sde.prior_logp` (they differ by the tiny mismatch of the
SDE's marginal at T from its prior). The divergence is exact (D Jacobian-vector products, for
small D) or Hutchinson's unbiased estimate e^T (dv/dx) e with one fixed probe e per solve.
"""

from __future__ import annotations

from collections.abc import Callable

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from score_sde.sampling.common import full_t
from score_sde.sampling.ode import get_ode_solver
from score_sde.sde_lib import SDE, ScoreFn

Array = jax.Array
LikelihoodFn = Callable[[Array, ScoreFn, Array], tuple[Array, Array, Array]]

TRACES = ("exact", "hutchinson")
NOISES = ("rademacher", "gaussian")


def _flat_sum(x: Array) -> Array:
    return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def exact_divergence(fn: Callable[[Array], Array], x: Array) -> tuple[Array, Array]:
    """fn(x) and its per-example divergence (B,), from D forward-mode products with e_d.

    fn must act per example (row b of the output depends only on row b of x).
    """
    d = int(np.prod(x.shape[1:]))
    basis = jnp.eye(d, dtype=x.dtype).reshape((d, 1) + x.shape[1:])

    def column(e):  # d-th diagonal entry of every example's Jacobian
        _, jv = jax.jvp(fn, (x,), (jnp.broadcast_to(e, x.shape),))
        return _flat_sum(jv * e)

    return fn(x), jnp.sum(jax.vmap(column)(basis), axis=0)


def hutchinson_divergence(fn: Callable[[Array], Array], x: Array,
                          probe: Array) -> tuple[Array, Array]:
    """fn(x) and the estimate e^T J e of its per-example divergence (unbiased if E[e e^T] = I)."""
    out, jv = jax.jvp(fn, (x,), (probe,))
    return out, _flat_sum(jv * probe)


def _probe(rng: Array, shape: tuple[int, ...], noise: str) -> Array:
    if noise == "gaussian":
        return jax.random.normal(rng, shape)
    return jax.random.rademacher(rng, shape, dtype=jnp.float32)


def get_likelihood_fn(sde: SDE, *, trace: str = "exact", hutchinson_noise: str = "rademacher",
                      rtol: float = 1e-5, atol: float = 1e-5, solver: str = "tsit5",
                      eps: float = 1e-5, max_steps: int = 16384) -> LikelihoodFn:
    """fn(rng, score_fn, x) -> (log p_eps(x) in nats per example (B,), z = x(T), nfe).

    x is data in the model's scale (B, ...). nfe counts evaluations of the ODE's vector field
    (each one score call with its Jacobian products). Adaptive diffrax solve on device; a
    failed solve (max_steps reached) gives NaN.
    """
    if trace not in TRACES:
        raise ValueError(f"trace={trace!r} is unknown; choose one of {list(TRACES)}")
    if hutchinson_noise not in NOISES:
        raise ValueError(f"hutchinson_noise={hutchinson_noise!r} is unknown; choose one of "
                         f"{list(NOISES)}")
    spec = get_ode_solver(solver)
    if not spec.adaptive:
        raise ValueError(f"solver={solver!r} is fixed-step; the likelihood needs an adaptive one")

    def likelihood_fn(rng, score_fn, x):
        rsde = sde.reverse(score_fn, probability_flow=True)
        probe = _probe(rng, x.shape, hutchinson_noise) if trace == "hutchinson" else None

        def vector_field(t, state, args):
            y, _ = state
            drift = lambda y: rsde.sde(y, full_t(t, y))[0]
            if probe is None:
                return exact_divergence(drift, y)
            return hutchinson_divergence(drift, y, probe)

        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(vector_field), spec.make(), eps, sde.T, dt0=None,
            y0=(x, jnp.zeros((x.shape[0],), jnp.float32)),
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            saveat=diffrax.SaveAt(t1=True), max_steps=max_steps, throw=False)
        ok = sol.result == diffrax.RESULTS.successful
        z, delta_logp = (jnp.where(ok, v[-1], jnp.nan) for v in sol.ys)
        nfe = spec.first + spec.per_step * sol.stats["num_steps"]
        return sde.prior_logp(z) + delta_logp, z, jnp.asarray(nfe, jnp.int32)

    return likelihood_fn


def get_likelihood_fn_from_config(config, sde: SDE, eps: float) -> LikelihoodFn:
    """get_likelihood_fn with optional config.eval fields likelihood_trace ('hutchinson', as
    published), hutchinson_noise, likelihood_rtol/atol (1e-5) and likelihood_solver."""
    ev = config.eval
    return get_likelihood_fn(
        sde, trace=ev.get("likelihood_trace", "hutchinson"),
        hutchinson_noise=ev.get("hutchinson_noise", "rademacher"),
        rtol=ev.get("likelihood_rtol", 1e-5), atol=ev.get("likelihood_atol", 1e-5),
        solver=ev.get("likelihood_solver", "tsit5"), eps=eps)


def bits_per_dim(logp_nats, dims, *, scale: float = 1.0, n_bins: int | None = 256):
    """Bits per dimension of discrete data from the model's log-density in nats.

    The model sees x = scale * u + offset, where u in [0, 1] is the dequantised data: with
    n_bins levels per dimension (8-bit: 256), u = (k + noise) / n_bins for the integer value k
    and uniform noise. The change of variables gives log p(u) = log p(x) + D log|scale| (the
    offset does not matter), and a bin of width 1 / n_bins in u holds probability
    p(u) / n_bins^D, so (a variational bound with uniform dequantisation)

        bpd = -log p(x) / (D ln 2) - log2|scale| + log2(n_bins).

    Data centred in [-1, 1] (scale = 2) gives the published offset of 7 bits; data in [0, 1]
    gives 8. n_bins=None reports the continuous density of u instead (no log2(n_bins) term).
    dims: D as an int, or the shape of one example (e.g. (32, 32, 3)).
    """
    d = int(np.prod(dims)) if np.ndim(dims) else int(dims)
    bpd = -jnp.asarray(logp_nats) / (d * np.log(2.0)) - np.log2(abs(scale))
    return bpd + (np.log2(n_bins) if n_bins is not None else 0.0)
