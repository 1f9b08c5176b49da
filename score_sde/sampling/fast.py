"""Few-step samplers that use the data prediction x0_hat = (x + sigma^2 score) / alpha.

All work in the (alpha, sigma) parameterisation x_t = alpha x_0 + sigma eps, so one code path
serves VP, sub-VP and VE: DDIM (Song, Meng & Ermon 2021), EDM's Heun sampler (Karras et al.
2022, Algorithm 2) and DPM-Solver++(2M) (Lu et al. 2022). `nfe` is the budget of score calls.
An optional `project(rng, x, x_mean, t)` acts on the prior draw and after every step; the
sample is then the noise-free x_mean of the last projection.

Default time grids transfer across SDEs and data scales (benchmarks/pages/grids_transfer.md):
VP's tuned grids carried to every SDE through the noise level relative to the data's spread,
sigma / (alpha data_scale), DDIM and Heun 'vp_uniform', DPM-Solver++ 'vp_quadratic'.
data_scale (1: unit-scale data) comes from the caller, or from an image config's value range
through get_sampler_from_config.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from score_sde.sampling.common import (
    Project,
    free_steps,
    full_t,
    initial_state,
    projection_steps,
    schedule,
    step_score,
    step_times,
    with_path,
)
from score_sde.sampling.registry import register_sampler
from score_sde.sampling.scale import PILOT_CALLS, ScaledTables, as_tables, estimates
from score_sde.sampling.steps import (
    data_prediction,
    denoiser_at_time,
    exponential_coeffs,
    exponential_step,
    heun_step,
)
from score_sde.sde_lib import SDE, batch_mul


@register_sampler("ddim", merges=True, fields={"ts": None})
def ddim_sampler(sde: SDE, shape: tuple[int, ...], *, nfe: int = 50, eta: float = 0.0,
                 grid: str = "vp_uniform", sigma_range: tuple[float, float] | None = None,
                 data_scale: float | None = None, ts=None, eps: float = 1e-3, sharding=None):
    """DDIM: x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z, one score call per step.

    c = eta sigma_s sqrt(1 - exp(2 (lambda_t - lambda_s))) is the posterior std of
    q(x_s | x_t, x_0) scaled by eta: eta = 0 is the deterministic DDIM (the probability-flow
    ODE's first-order exponential integrator), eta = 1 is ancestral sampling. `ts` (decreasing
    times in [eps, T]) overrides grid and nfe: nfe = len(ts) - 1. Without data_scale (and
    ts), the data's scale is estimated from score_fn with one of the nfe score calls
    (sampling.scale).
    """
    pilot = PILOT_CALLS * estimates(data_scale, grid, ts)
    scaled = ScaledTables(lambda scale: _ddim_tables(sde, eps, ts, grid, nfe - pilot, sigma_range,
                                                     scale, eta),
                          sde, eps, shape, data_scale, pilot > 0, sharding)
    nfe = len(scaled.nominal["t"]) - 1

    def sample(rng, score_fn, project: Project | None = None, *, x_init=None,
               return_path: bool = False):
        tab, _ = scaled.select(rng, score_fn)
        alpha, sigma, c, keep, t_grid = (tab[k] for k in ("alpha", "sigma", "c", "keep", "t"))
        x0_hat = data_prediction(sde, score_fn)
        rng, proj = projection_steps(project, rng)
        x, rng = initial_state(sde, rng, shape, sharding, x_init)
        x, x_first = proj(x, x, t_grid[0], 0)

        def step(carry, i):
            x, _ = carry
            x0 = x0_hat(x, full_t(t_grid[i], x))
            eps_hat = (x - alpha[i] * x0) / sigma[i]
            z = jax.random.normal(jax.random.fold_in(rng, i), x.shape, x.dtype)
            x = alpha[i + 1] * x0 + keep[i] * eps_hat + c[i] * z
            x, x_out = proj(x, x, t_grid[i + 1], i + 1)
            return (x, x_out), x_out if return_path else None

        (x, x_out), path = jax.lax.scan(step, (x, x_first), jnp.arange(nfe))
        return with_path(x_out, jnp.asarray(nfe + pilot, jnp.int32), _stack(x_first, path),
                         return_path)

    sample.ts = scaled.nominal["t"]
    return sample


def _ddim_tables(sde: SDE, eps: float, ts, grid: str, n: int, sigma_range, data_scale,
                 eta: float) -> dict:
    """DDIM's grid and per-step weights (float32 numpy) for one data scale."""
    ts = step_times("ddim", sde, eps, ts, grid, n, sigma_range, data_scale=data_scale)
    alpha, sigma, lam = schedule(sde, ts)
    c = eta * sigma[1:] * np.sqrt(-np.expm1(2.0 * (lam[:-1] - lam[1:])))
    keep = np.sqrt(np.maximum(sigma[1:] ** 2 - c**2, 0.0))  # the part of eps_hat kept
    return {k: np.asarray(v, np.float32) for k, v in
            dict(alpha=alpha, sigma=sigma, c=c, keep=keep, t=ts).items()}



# Heun's default step (exponential=True) takes EDM's trapezoid where the step keeps at least
# this share of the noise, r = sigma' / sigma >= 1/3: there EDM's weight on D', (1 - r) / (2 r),
# is at most 1 (no extrapolation past D').
EDM_MIN_RATIO = 1.0 / 3.0


@register_sampler("heun", merges=True, fields={"ts": None})
def heun_sampler(sde: SDE, shape: tuple[int, ...], *, nfe: int = 35,
                 grid: str = "vp_uniform",
                 sigma_range: tuple[float, float] | None = None,
                 data_scale: float | None = None, S_churn: float = 0.0,
                 S_tmin: float = 0.0, S_tmax: float = float("inf"),
                 S_noise: float = 1.0, exponential: bool = True, ts=None, eps: float = 1e-3,
                 sharding=None):
    """EDM's stochastic Heun sampler (Karras et al. 2022, Algorithm 2) for any SDE.

    EDM's variables are x_edm = x / alpha at noise level sigma_edm = sigma / alpha, with the
    denoiser D(x_edm; sigma_edm) = x0_hat(alpha x_edm, t(sigma_edm)). The grid's n points run
    from T to eps, then a last Euler step goes to sigma_edm = 0: nfe used = 2n - 1 <= nfe.
    S_churn, S_tmin, S_tmax (in sigma_edm units) and S_noise are EDM's churn parameters.
    exponential=False is EDM's trapezoid on dx/dsigma = (x - D) / sigma. Its correction is
    x' = r x + (1 - r) D + w (D' - D) with r = sigma' / sigma and w = (1 - r) / (2 r): on a
    step that divides the noise by 100s (few NFE) w is in the 100s and throws the sample far
    off. exponential=True (default) takes, on the steps with r < EDM_MIN_RATIO = 1/3 (where
    EDM's w would exceed 1, an extrapolation past D'), the trapezoid on D, w = (1 - r) / 2
    (second order, DPM-Solver-2 with its midpoint at the step's end), and EDM's step on the
    others (steps.heun_step; measured against both pure forms in
    benchmarks/pages/heun_step.md).
    `ts` (decreasing times in [eps, T]) overrides grid and nfe: its len(ts) = n points are the
    grid (nfe = 2 n - 1), and the path has n + 1 states (the last at sigma_edm = 0). Without
    data_scale (and ts), the data's scale is estimated from score_fn with one of the nfe
    score calls (sampling.scale): n = nfe // 2 points then.
    """
    pilot = PILOT_CALLS * estimates(data_scale, grid, ts)

    churn = (S_churn, S_tmin, S_tmax, S_noise)
    scaled = ScaledTables(lambda scale: as_tables(_heun_tables(
        sde, eps, _heun_times(sde, nfe - pilot, grid, sigma_range, scale, ts, eps), churn,
        exponential)), sde, eps, shape, data_scale, pilot > 0, sharding)
    n = len(scaled.nominal["t"])

    def sample(rng, score_fn, project: Project | None = None, *, x_init=None,
               return_path: bool = False):
        tab, _ = scaled.select(rng, score_fn)
        sig, sig_hat, t_hat, t_grid, churn_std, edm_step = (
            tab[k] for k in ("sig", "sig_hat", "t_hat", "t", "std", "edm"))
        at_time = denoiser_at_time(sde, data_prediction(sde, score_fn))
        rng, proj = projection_steps(project, rng)
        x_T, rng = initial_state(sde, rng, shape, sharding, x_init)

        def alpha_at(t, x):
            return sde.marginal_coeffs(full_t(t, x))[0]

        def denoise(x, t):  # D(x_edm; sigma_edm(t)) at the grid's scalar time t
            return at_time(x, full_t(t, x))

        def project_edm(x, t, k):  # project x_edm as the SDE state alpha_t x_edm, then back
            if project is None:
                return x
            x_sde = batch_mul(alpha_at(t, x), x)
            return batch_mul(1.0 / alpha_at(t, x), proj(x_sde, x_sde, t, k)[0])

        def raise_noise(x, i):
            z = jax.random.normal(jax.random.fold_in(rng, i), x.shape, x.dtype)
            return x + churn_std[i] * z

        def step(x, i):
            x = heun_step(raise_noise(x, i), sig_hat[i], sig[i + 1],
                          lambda v: denoise(v, t_hat[i]), lambda v: denoise(v, t_grid[i + 1]),
                          edm_rule=edm_step[i])
            x = project_edm(x, t_grid[i + 1], i + 1)
            return x, batch_mul(alpha_at(t_grid[i + 1], x), x) if return_path else None

        x = project_edm(batch_mul(1.0 / alpha_at(t_grid[0], x_T), x_T), t_grid[0], 0)
        x_first = batch_mul(alpha_at(t_grid[0], x), x)
        x, path = jax.lax.scan(step, x, jnp.arange(n - 1))
        x = denoise(raise_noise(x, n - 1), t_hat[n - 1])  # last: Euler to sigma_edm 0, D(x_hat)
        _, x = proj(x, x, 0.0, n)
        if return_path:
            path = jnp.concatenate([x_first[None], path, x[None]])
        return with_path(x, jnp.asarray(2 * n - 1 + pilot, jnp.int32), path, return_path)

    sample.ts = scaled.nominal["t"]
    return sample


def _heun_tables(sde: SDE, eps: float, times: np.ndarray, churn: tuple,
                 exponential: bool) -> dict:
    """Heun's levels, churn and step rule (numpy) on the grid `times`."""
    c = _Churn.of(sde, times, *churn)
    # the share of the noise each step keeps, sigma_{i+1} / sigma_hat_i, picks EDM's rule
    edm = c.sig[1:] / c.sig_hat >= (EDM_MIN_RATIO if exponential else 0.0)
    return dict(sig=c.sig, sig_hat=c.sig_hat, t_hat=c.t_hat, t=times, std=c.std, edm=edm)


def _heun_times(sde: SDE, nfe: int, grid: str, sigma_range, data_scale, ts,
                eps: float) -> np.ndarray:
    """The n = (nfe + 1) // 2 grid points of Heun's sampler (T to eps), or the given ts."""
    if ts is not None:
        return step_times("heun", sde, eps, ts, grid, 0)
    n = max((nfe + 1) // 2, 1)
    if n == 1:
        return np.asarray([sde.T], np.float32)
    return step_times("heun", sde, eps, None, grid, n - 1, sigma_range, data_scale=data_scale)


class _Churn(NamedTuple):
    """EDM's churn on Heun's grid (float64 numpy): the levels sigma_edm of the grid and 0 (sig),
    the raised level of each step (sig_hat), its time (t_hat) and the noise std that raises it."""

    sig: np.ndarray
    sig_hat: np.ndarray
    t_hat: np.ndarray
    std: np.ndarray

    @classmethod
    def of(cls, sde: SDE, ts: np.ndarray, S_churn: float, S_tmin: float, S_tmax: float,
           S_noise: float) -> _Churn:
        alpha, sigma, _ = schedule(sde, ts)
        sig = np.append(np.asarray(sigma / alpha, np.float64), 0.0)
        gamma = np.where((sig[:-1] >= S_tmin) & (sig[:-1] <= S_tmax),
                         min(S_churn / len(ts), np.sqrt(2.0) - 1.0), 0.0)
        sig_hat = sig[:-1] * (1.0 + gamma)
        t_hat = np.asarray(sde.t_from_sigma(jnp.asarray(sig_hat, jnp.float32)))
        t_hat = np.where(gamma > 0, t_hat, ts)  # exact grid times where there is no churn
        return cls(sig, sig_hat, t_hat, S_noise * np.sqrt(sig_hat**2 - sig[:-1] ** 2))


@register_sampler("dpm_solver++", merges=True, fields={"ts": None})
def dpm_solver_pp_sampler(sde: SDE, shape: tuple[int, ...], *, nfe: int = 20,
                          grid: str = "vp_quadratic",
                          sigma_range: tuple[float, float] | None = None,
                          data_scale: float | None = None, order: int = 2,
                          lower_order_final: bool = True, analytic_first_step: bool = False,
                          ts=None, eps: float = 1e-3, sharding=None):
    """DPM-Solver++ (Lu et al. 2022): multistep, data prediction, one score call per step.

    Step i from lambda_i to lambda_{i+1} (h = lambda_{i+1} - lambda_i, lambda = log alpha/sigma)
    integrates x_{i+1} = (sigma_{i+1} / sigma_i) x_i + sigma_{i+1} int e^lambda x0(lambda)
    with x0 expanded around lambda_i from the last `order` data predictions (steps.
    exponential_step: order 2 is DPM-Solver++(2M), order 3 the third-order multistep).
    The first steps use the history they have; lower_order_final takes the last steps at
    lower order (steadier at few NFE). analytic_first_step: the first data prediction is that
    of Gaussian data N(0, data_scale^2 I) (common.gaussian_score), so nfe score calls take
    nfe + 1 steps (benchmarks/pages/analytic_first_step.md). `ts` (decreasing times in
    [eps, T]) overrides grid and nfe; order p needs p steps. Without data_scale (and ts),
    the data's scale is estimated from score_fn with one of the nfe score calls
    (sampling.scale).
    """
    if order not in (1, 2, 3):
        raise ValueError(f"dpm_solver++: order must be 1, 2 or 3, got {order}")
    free = free_steps("dpm_solver++", analytic_first_step, grid, ts)
    pilot = PILOT_CALLS * estimates(data_scale, grid, ts, analytic_first_step)

    def tables(scale):
        times = step_times("dpm_solver++", sde, eps, ts, grid, nfe - pilot + free, sigma_range,
                           min_steps=max(order, 1 + free), data_scale=scale)
        return dict(t=times, coeffs=exponential_coeffs(*schedule(sde, times), order,
                                                       lower_order_final))

    scaled = ScaledTables(lambda scale: as_tables(tables(scale)), sde, eps, shape, data_scale,
                          pilot > 0, sharding)
    nfe = len(scaled.nominal["t"]) - 1  # steps

    def sample(rng, score_fn, project: Project | None = None, *, x_init=None,
               return_path: bool = False):
        tab, scale = scaled.select(rng, score_fn)
        t_grid, coeffs = tab["t"], tab["coeffs"]
        score_at = step_score(sde, score_fn, analytic_first_step, scale)
        rng, proj = projection_steps(project, rng)
        x, _ = initial_state(sde, rng, shape, sharding, x_init)
        x, x_first = proj(x, x, t_grid[0], 0)

        def step(carry, i):
            x, _, m1, m2 = carry
            m0 = data_prediction(sde, lambda x, t: score_at(x, t, i))(x, full_t(t_grid[i], x))
            x = exponential_step(x, m0, m1, m2, jax.tree.map(lambda c: c[i], coeffs))
            x, x_out = proj(x, x, t_grid[i + 1], i + 1)
            return (x, x_out, m0, m1), x_out if return_path else None

        zeros = jnp.zeros_like(x)
        (_, x_out, _, _), path = jax.lax.scan(step, (x, x_first, zeros, zeros), jnp.arange(nfe))
        return with_path(x_out, jnp.asarray(nfe - free + pilot, jnp.int32),
                         _stack(x_first, path), return_path)

    sample.ts = scaled.nominal["t"]
    return sample


def _stack(first: jax.Array, rest: jax.Array | None) -> jax.Array | None:
    """The path [first, *rest] (None when the path was not kept)."""
    return None if rest is None else jnp.concatenate([first[None], rest])
