"""Guided denoisers: posterior sampling as a transform of the data prediction, on any solver.

With x_t = alpha x0 + sigma eps, Tweedie's formula holds for the posterior given y as well:
E[x0 | x_t = x, y] = (x + sigma^2 grad log p_t(x | y)) / alpha. So a method that maps the
data prediction x0_hat(x, t) = E[x0 | x_t = x] to an estimate x0_hat_y(x, t) of E[x0 | x_t, y]
gives the posterior's score by inverting Tweedie, score_y = (alpha x0_hat_y - x) / sigma^2
(`guided_score`), and every fixed-step sampler (ddim, dpm_solver++, unipc, heun, ipndm, pc)
runs it unchanged. Equivalently, x0_hat_y = x0_hat + (sigma^2 / alpha) g with g an estimate of
the likelihood's score grad_x log p_t(y | x_t = x). The transforms here:

  dps    Chung et al. 2023: p(y | x_t) ~ p(y | x0 = x0_hat), its weight 1 / (2 sigma_y^2)
         replaced by the published step size zeta / ||y - A(x0_hat)|| (dps_weight: how the
         published per-step update maps to this form); the gradient goes through the network.
  pigdm  Song et al. 2023 (PiGDM): p(x0 | x_t) ~ N(x0_hat, r_t^2 I), so p(y | x_t) ~
         N(A x0_hat, r_t^2 A A^T + sigma_y^2 I); g = J^T A^T (r_t^2 A A^T + sigma_y^2 I)^{-1}
         (y - A x0_hat), J = d x0_hat / dx (a vjp through the network). r_t^2 =
         s^2 rho^2 / (s^2 + rho^2), rho = sigma / alpha, s = data_scale: the posterior variance
         of x0 given x_t for data N(0, s^2 I), on which PiGDM is exact (VP with s = 1:
         r_t^2 = sigma^2 / (alpha^2 + sigma^2), the paper's value).
  mmps   the covariance-aware update (TMPD, Boys et al. 2023; MMPS, Rozet et al. 2024):
         p(x0 | x_t) ~ N(x0_hat, C) with Tweedie's covariance C = Cov[x0 | x_t] =
         (sigma^2 / alpha) J (products by jax.linearize: forward-mode tangents), and
         x0_hat_y = x0_hat + C A^T (sigma_y^2 I + A C A^T)^{-1} (y - A x0_hat), the system
         solved by min(cg_iters, dim(y)) conjugate-gradient steps: the exact E[x0 | x_t, y]
         on Gaussian data (once CG has converged; at most dim(y) steps).

NFE per score call (score_sde.inverse.posterior's convention): dps and pigdm 2 (forward and
vjp) + 1 with checkpoint (jax.checkpoint on the network recomputes its forward in the vjp and
keeps the memory of one call); mmps 2 + min(cg_iters, dim(y)) (forward, one tangent per CG
step and one for the update; jax.linearize keeps one call's activations). The budget nfe
buys nfe // cost solver calls.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from score_sde.inverse.base import Operator
from score_sde.inverse.linalg import batch_dot, conjugate_gradients
from score_sde.inverse.posterior import check_value_range, register_posterior
from score_sde.sampling import MERGE_SAMPLERS, SAMPLERS, get_sampler
from score_sde.sampling.grids import check_data_scale
from score_sde.sampling.steps import data_prediction
from score_sde.sde_lib import SDE, VPSDE, ScoreFn, batch_mul

Array = jax.Array
# transform(x0_hat, x, t) -> x0_hat_y: x0_hat(x, t) is Tweedie's data prediction (a function,
# so a method may differentiate through it), t per example (B,).
DenoiserTransform = Callable[[ScoreFn, Array, Array], Array]

# The published DPS sampler: DDPM's ancestral steps on the VP SDE, 1000 of them.
DPS_PUBLISHED_STEPS = 1000
_VP = VPSDE()


def score_from_denoiser(sde: SDE, denoise: ScoreFn) -> ScoreFn:
    """score(x, t) = (alpha denoise(x, t) - x) / sigma^2: Tweedie's formula inverted, so that
    data_prediction(sde, score) returns denoise (up to rounding)."""

    def score(x: Array, t: Array) -> Array:
        alpha, sigma = sde.marginal_coeffs(t)
        return batch_mul(1.0 / sigma**2, batch_mul(alpha, denoise(x, t)) - x)

    return score


def guided_score(sde: SDE, score_fn: ScoreFn, transform: DenoiserTransform,
                 checkpoint: bool = False) -> ScoreFn:
    """The score of the posterior given y implied by `transform` of the data prediction;
    checkpoint wraps the network (score_fn) in jax.checkpoint (gradients through it keep one
    call's memory and recompute its forward)."""
    x0_hat = data_prediction(sde, jax.checkpoint(score_fn) if checkpoint else score_fn)
    return score_from_denoiser(sde, lambda x, t: transform(x0_hat, x, t))


def posterior_variance(sde: SDE, t: Array, data_scale: float | None) -> Array:
    """r_t^2 (B,): Var[x0 | x_t] per coordinate for data N(0, s^2 I), s = data_scale (None: 1),
    s^2 rho^2 / (s^2 + rho^2) with rho = sigma / alpha."""
    alpha, sigma = sde.marginal_coeffs(t)
    s2, rho2 = check_data_scale(data_scale) ** 2, (sigma / alpha) ** 2
    return s2 * rho2 / (s2 + rho2)


def dps_weight(sde: SDE, t: Array, zeta: float) -> Array:
    """DPS's weight w(rho) (B,) in x0_hat_y = x0_hat - w alpha grad_x ||r||^2 / ||r||.

    The published step subtracts zeta grad ||r||^2 / ||r|| from x at each of N = 1000 ancestral
    steps of the VP SDE; an ancestral step moves x by (alpha' / alpha) b g for a likelihood
    score g (b the step's transition variance, ~ beta(t) / N), so the published update is
    g = -(zeta N / beta(t)) grad ||r||^2 / ||r||: a drift per unit time that any solver can
    integrate. Carried to other SDEs through the noise level rho = sigma / alpha (VP's clock,
    as the 'vp_*' grids are): w = zeta N rho^2 / beta_VP(t_VP(rho)).
    """
    alpha, sigma = sde.marginal_coeffs(t)
    rho = sigma / alpha
    beta = _VP.beta(_VP.t_from_log_snr(-jnp.log(rho)))
    return zeta * DPS_PUBLISHED_STEPS * rho**2 / beta


# ------------------------------------------------------------------------- the transforms


def dps_transform(sde: SDE, operator: Operator, y: Array, zeta: float) -> DenoiserTransform:
    """DPS (module docstring): forward operator only, so nonlinear operators too."""

    def transform(x0_hat, x, t):
        def loss(x):
            m = x0_hat(x, t)
            sq = jnp.sum(jnp.square(y - operator.forward(m)).reshape(x.shape[0], -1), axis=1)
            norm = jax.lax.stop_gradient(jnp.maximum(jnp.sqrt(sq), 1e-12))
            return jnp.sum(sq / norm), m

        grad, m = jax.grad(loss, has_aux=True)(x)
        alpha, _ = sde.marginal_coeffs(t)
        return m - batch_mul(dps_weight(sde, t, zeta) * alpha, grad)

    return transform


def observation_solver(operator: Operator, sigma_y: float, cg_iters: int):
    """solve(res, r2) = (r2 A A^T + sigma_y^2 I)^{-1} res per example (r2 (B,)): through the
    SVD where the operator has one (zero on directions with a zero denominator), else
    cg_iters conjugate-gradient steps (operator products only)."""
    if operator.has_svd:
        s = jnp.asarray(operator.singular_values, jnp.float32)
        r = s.shape[0]

        def solve(res, r2):
            z = operator.Ut(res)
            denom = r2[:, None] * s**2 + sigma_y**2
            head = jnp.where(denom > 0, z[:, :r] / jnp.where(denom > 0, denom, 1.0), 0.0)
            var = jnp.asarray(sigma_y, jnp.float32) ** 2  # A^T is zero on the tail anyway
            tail = jnp.where(var > 0, z[:, r:] / jnp.where(var > 0, var, 1.0), 0.0)
            return operator.U(jnp.concatenate([head, tail], axis=1))

        return solve

    def solve_cg(res, r2):
        matvec = lambda u: (batch_mul(r2, operator.forward(operator.adjoint(u)))
                            + sigma_y**2 * u)
        return conjugate_gradients(matvec, res, cg_iters, tol=None)

    return solve_cg


def pigdm_transform(sde: SDE, operator: Operator, y: Array, sigma_y: float,
                    data_scale: float | None, cg_iters: int) -> DenoiserTransform:
    """PiGDM (module docstring): a vjp through the network, the operator's adjoint."""
    solve = observation_solver(operator, sigma_y, cg_iters)

    def transform(x0_hat, x, t):
        m, vjp = jax.vjp(lambda v: x0_hat(v, t), x)
        r2 = posterior_variance(sde, t, data_scale)
        (g,) = vjp(operator.adjoint(solve(y - operator.forward(m), r2)))
        alpha, sigma = sde.marginal_coeffs(t)
        return m + batch_mul(sigma**2 / alpha, g)

    return transform


def mmps_transform(sde: SDE, operator: Operator, y: Array, sigma_y: float,
                   cg_iters: int) -> DenoiserTransform:
    """The covariance-aware update (module docstring): cg_iters + 1 tangents through the net."""

    def transform(x0_hat, x, t):
        alpha, sigma = sde.marginal_coeffs(t)
        m, tangent = jax.linearize(lambda v: x0_hat(v, t), x)
        cov = lambda v: batch_mul(sigma**2 / alpha, tangent(v))  # Cov[x0 | x_t] v
        matvec = lambda u: sigma_y**2 * u + operator.forward(cov(operator.adjoint(u)))
        u = conjugate_gradients(matvec, y - operator.forward(m), cg_iters, tol=None)
        return m + cov(operator.adjoint(u))

    return transform


def residual_norm(operator: Operator, x: Array, y: Array) -> Array:
    """||y - A(x)|| per example (B,)."""
    r = y - operator.forward(x)
    return jnp.sqrt(batch_dot(r, r))


# ---------------------------------------------------------------- the registered methods


def _solver(method: str, sde: SDE, shape, calls: int, eps: float, sharding, solver: str,
            own: dict, defaults: dict, options: dict):
    """get_sampler(solver, ...) for `calls` score calls, or one line naming a bad option."""
    if solver not in MERGE_SAMPLERS:
        raise ValueError(f"{method}: solver={solver!r} is not a fixed-step sampler; choose one "
                         f"of {list(MERGE_SAMPLERS)}")
    solver_options = SAMPLERS.lookup(solver).options
    unknown = sorted(set(options) - set(solver_options))
    if unknown:
        raise ValueError(f"{method}: no option(s) {unknown}; the method's options: "
                         f"{sorted(own)}; solver {solver!r}'s: {list(solver_options)}")
    options = {**defaults.get(solver, {}), **options}
    if "data_scale" in solver_options:  # the method's (None: 1), not the solver's estimate
        options.setdefault("data_scale", check_data_scale(own.get("data_scale")))
    return get_sampler(solver, sde, shape, nfe=calls, eps=eps, sharding=sharding, **options)


def clipped(transform: DenoiserTransform, bounds: tuple[float, float] | None
            ) -> DenoiserTransform:
    """transform with its estimate of E[x0 | x_t, y] clipped to bounds = (lo, hi), the data's
    value range (None: unchanged). The guidance term is (sigma^2 / alpha) times a product with
    the network's Jacobian: at high noise a trained network's Jacobian error is multiplied by
    (sigma / alpha)^2, and without a bound the solver's steps carry it (DDPM's published
    sampler, which DPS runs on, clips its data prediction likewise)."""
    if bounds is None:
        return transform
    lo, hi = bounds
    return lambda x0_hat, x, t: jnp.clip(transform(x0_hat, x, t), lo, hi)


def guided_sampler(method: str, sde: SDE, shape, nfe: int, eps: float, sharding,
                   make_transform: Callable[[Array], DenoiserTransform], cost: int,
                   checkpoint: bool, solver: str, own: dict, defaults: dict, options: dict):
    """sample(rng, score_fn, y): `solver` on guided_score with make_transform(y) (clipped to
    own['value_range']); nfe // cost solver calls of `cost` network passes each."""
    calls = nfe // cost
    if calls < 1:
        raise ValueError(f"{method}: nfe={nfe} is below the cost of one score call ({cost} "
                         "network passes); raise nfe")
    sample = _solver(method, sde, shape, calls, eps, sharding, solver, own, defaults, options)
    value_range = own.get("value_range")
    bounds = None if value_range is None else check_value_range(value_range)

    def run(rng, score_fn, y):
        transform = clipped(make_transform(y), bounds)
        x, n = sample(rng, guided_score(sde, score_fn, transform, checkpoint))
        return x, n * cost

    run.ts = sample.ts
    return run


# The solvers' defaults per method (applied when that solver is used). DPS: the published
# ancestral sampler (DDIM with eta = 1); its weight is derived for that sampler (dps_weight).
DPS_DEFAULTS = {"ddim": {"eta": 1.0}}
PIGDM_DEFAULTS = {"ddim": {"eta": 1.0}}
MMPS_DEFAULTS = {"ddim": {"eta": 1.0}}


@register_posterior("dps", forwards_options=True)
def dps_sampler(sde: SDE, operator: Operator, shape, *, sigma_y: float, nfe: int, eps: float,
                sharding=None, zeta: float = 1.0, checkpoint: bool = True,
                solver: str = "ddim", data_scale: float | None = None, value_range=None,
                **options):
    """DPS (Chung et al. 2023) on `solver`: zeta is the paper's zeta' (step size zeta' /
    ||y - A(x0_hat)|| on the gradient of the squared residual; the published code's `scale`
    is 2 zeta'). sigma_y is not used (the step size replaces 1 / (2 sigma_y^2)); value_range
    (lo, hi) clips the guided data prediction (`clipped`; None: not clipped)."""
    own = {"zeta": zeta, "checkpoint": checkpoint, "data_scale": data_scale,
           "value_range": value_range}
    return guided_sampler("dps", sde, shape, nfe, eps, sharding,
                          lambda y: dps_transform(sde, operator, y, zeta),
                          2 + int(checkpoint), checkpoint, solver, own, DPS_DEFAULTS, options)


@register_posterior("pigdm", needs=("linear", "adjoint"), forwards_options=True)
def pigdm_sampler(sde: SDE, operator: Operator, shape, *, sigma_y: float, nfe: int, eps: float,
                  sharding=None, data_scale: float | None = None, checkpoint: bool = True,
                  cg_iters: int = 50, solver: str = "ddim", value_range=None, **options):
    """PiGDM (Song et al. 2023) on `solver`; data_scale (None: 1) sets r_t and the solver's
    grid; cg_iters: CG steps of the observation-space solve for operators without an SVD;
    value_range (lo, hi) clips the guided data prediction (`clipped`; None: not clipped)."""
    own = {"data_scale": data_scale, "checkpoint": checkpoint, "cg_iters": cg_iters,
           "value_range": value_range}
    return guided_sampler("pigdm", sde, shape, nfe, eps, sharding,
                          lambda y: pigdm_transform(sde, operator, y, sigma_y, data_scale,
                                                    cg_iters),
                          2 + int(checkpoint), checkpoint, solver, own, PIGDM_DEFAULTS, options)


@register_posterior("mmps", needs=("linear", "adjoint"), forwards_options=True)
def mmps_sampler(sde: SDE, operator: Operator, shape, *, sigma_y: float, nfe: int, eps: float,
                 sharding=None, cg_iters: int = 6, data_scale: float | None = None,
                 solver: str = "dpm_solver++", value_range=None, **options):
    """The covariance-aware update (TMPD / MMPS) on `solver`: min(cg_iters, dim(y)) CG steps
    per call (CG is exact after dim(y) steps), 2 + that many network passes; data_scale
    (None: 1) places the solver's grid; value_range (lo, hi) clips the guided data prediction
    (`clipped`; None: not clipped, exact on Gaussian data).

    Defaults, measured (benchmarks/pages/posterior_exact.md): DPM-Solver++ because the update
    is exact on Gaussian data, where only the solver's discretisation is left and the
    second-order solver's is far smaller than DDIM's; 6 CG steps because at 100 passes they
    halve 3 steps' excess error over the sampling floor on the Gaussian benchmark (d_y = 4
    and 16), while 12 leave too few solver steps at 50.
    """
    if int(cg_iters) < 1:
        raise ValueError(f"mmps: cg_iters must be >= 1, got {cg_iters}")
    iters = min(int(cg_iters), operator.observation_size)
    own = {"cg_iters": cg_iters, "data_scale": data_scale, "value_range": value_range}
    return guided_sampler("mmps", sde, shape, nfe, eps, sharding,
                          lambda y: mmps_transform(sde, operator, y, sigma_y, iters),
                          2 + iters, False, solver, own, MMPS_DEFAULTS, options)
