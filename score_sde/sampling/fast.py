"""Few-step samplers that use the data prediction x0_hat = (x + sigma^2 score) / alpha.

All work in the (alpha, sigma) parameterisation x_t = alpha x_0 + sigma eps, so one code path
serves VP, sub-VP and VE: DDIM (Song, Meng & Ermon 2021), EDM's Heun sampler (Karras et al.
2022, Algorithm 2) and DPM-Solver++(2M) (Lu et al. 2022). `nfe` is the budget of score calls.
An optional `project(rng, x, x_mean, t)` acts on the prior draw and after every step; the
sample is then the noise-free x_mean of the last projection.

Default time grids transfer across SDEs and data scales (benchmarks/pages/grids_transfer.md:
VP, sub-VP, VE with sigma_max 50 to 1348, EDM; five problems of spread 0.08 to 43;
NFE 5-20): VP's tuned grids carried to every SDE through the noise level relative to the
data's spread, sigma / (alpha data_scale), DDIM and Heun 'vp_uniform', DPM-Solver++
'vp_quadratic'. data_scale (1: unit-scale data) comes from the caller, or from an image
config's value range through get_sampler_from_config.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from score_sde.sampling.common import (
    Project,
    data_prediction,
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
from score_sde.sde_lib import SDE, batch_mul


@register_sampler("ddim", merges=True, fields={"ts": None})
def ddim_sampler(sde: SDE, shape: tuple[int, ...], *, nfe: int = 50, eta: float = 0.0,
                 grid: str = "vp_uniform", sigma_range: tuple[float, float] | None = None,
                 data_scale: float | None = None, ts=None, eps: float = 1e-3, sharding=None):
    """DDIM: x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z, one score call per step.

    c = eta sigma_s sqrt(1 - exp(2 (lambda_t - lambda_s))) is the posterior std of
    q(x_s | x_t, x_0) scaled by eta: eta = 0 is the deterministic DDIM (the probability-flow
    ODE's first-order exponential integrator), eta = 1 is ancestral sampling. `ts` (decreasing
    times in [eps, T]) overrides grid and nfe: nfe = len(ts) - 1.
    """
    ts = step_times("ddim", sde, eps, ts, grid, nfe, sigma_range, data_scale=data_scale)
    nfe = len(ts) - 1
    alpha, sigma, lam = schedule(sde, ts)
    c = eta * sigma[1:] * np.sqrt(-np.expm1(2.0 * (lam[:-1] - lam[1:])))
    keep = np.sqrt(np.maximum(sigma[1:] ** 2 - c**2, 0.0))  # the part of eps_hat kept
    alpha, sigma, c, keep, t_grid = (jnp.asarray(v, jnp.float32)
                                     for v in (alpha, sigma, c, keep, ts))

    def sample(rng, score_fn, project: Project | None = None, *, x_init=None,
               return_path: bool = False):
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
        return with_path(x_out, jnp.asarray(nfe, jnp.int32), _stack(x_first, path), return_path)

    sample.ts = ts
    return sample


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
    others. On exact mixtures this beat both pure forms at 9-19 NFE (2-D VP, 19 NFE: FD error
    0.0005 against 0.032 and 0.009; benchmarks/pages/heun_step.md).
    `ts` (decreasing times in [eps, T]) overrides grid and nfe: its len(ts) = n points are the
    grid (nfe = 2 n - 1), and the path has n + 1 states (the last at sigma_edm = 0).
    """
    if ts is None:
        n = max((nfe + 1) // 2, 1)
        ts = (step_times("heun", sde, eps, None, grid, n - 1, sigma_range,
                         data_scale=data_scale) if n > 1
              else np.asarray([sde.T], np.float32))
    else:
        ts = step_times("heun", sde, eps, ts, grid, 0)
        n = len(ts)
    alpha, sigma, _ = schedule(sde, ts)
    sig = np.append(np.asarray(sigma / alpha, np.float64), 0.0)
    gamma = np.where((sig[:-1] >= S_tmin) & (sig[:-1] <= S_tmax),
                     min(S_churn / n, np.sqrt(2.0) - 1.0), 0.0)
    sig_hat = sig[:-1] * (1.0 + gamma)
    t_hat = np.asarray(sde.t_from_log_snr(jnp.asarray(-np.log(sig_hat), jnp.float32)))
    t_hat = np.where(gamma > 0, t_hat, ts)  # exact grid times where there is no churn
    churn_std = S_noise * np.sqrt(sig_hat**2 - sig[:-1] ** 2)
    ratio = sig[1:] / sig_hat  # sigma_{i+1} / sigma_hat_i: the exact decay of x - D
    edm_step = jnp.asarray(ratio >= (EDM_MIN_RATIO if exponential else 0.0))
    sig, sig_hat, t_hat, t_grid, churn_std, ratio = (
        jnp.asarray(v, jnp.float32) for v in (sig, sig_hat, t_hat, ts, churn_std, ratio))

    def sample(rng, score_fn, project: Project | None = None, *, x_init=None,
               return_path: bool = False):
        x0_hat = data_prediction(sde, score_fn)
        rng, proj = projection_steps(project, rng)
        x_T, rng = initial_state(sde, rng, shape, sharding, x_init)

        def to_sde(x, t):  # alpha_t x_edm: the SDE's state (for the path)
            return batch_mul(sde.marginal_coeffs(full_t(t, x))[0], x)

        def denoise(x, t):  # D(x_edm; sigma_edm(t)) through the SDE's own variables
            alpha_t = sde.marginal_coeffs(full_t(t, x))[0]
            return x0_hat(batch_mul(alpha_t, x), full_t(t, x))

        def project_edm(x, t, k):  # project x_edm as the SDE state alpha_t x_edm, then back
            if project is None:
                return x
            alpha_t = sde.marginal_coeffs(full_t(t, x))[0]
            x_sde = batch_mul(alpha_t, x)
            return batch_mul(1.0 / alpha_t, proj(x_sde, x_sde, t, k)[0])

        def churn(x, i):
            z = jax.random.normal(jax.random.fold_in(rng, i), x.shape, x.dtype)
            return x + churn_std[i] * z

        def step(x, i):
            x_hat = churn(x, i)
            d0 = denoise(x_hat, t_hat[i])
            x_next = ratio[i] * x_hat + (1.0 - ratio[i]) * d0  # Euler: x_hat + (s' - s) d
            d1 = denoise(x_next, t_grid[i + 1])
            # the trapezoid on D: x_hat's part decays exactly
            x_exp = ratio[i] * x_hat + (1.0 - ratio[i]) * (0.5 * d0 + 0.5 * d1)
            # EDM's trapezoid on dx/dsigma = (x - D) / sigma
            d = (x_hat - d0) / sig_hat[i]
            d_next = (x_next - d1) / sig[i + 1]
            x_edm = x_hat + (sig[i + 1] - sig_hat[i]) * (0.5 * d + 0.5 * d_next)
            x = jnp.where(edm_step[i], x_edm, x_exp)
            x = project_edm(x, t_grid[i + 1], i + 1)
            return x, to_sde(x, t_grid[i + 1]) if return_path else None

        alpha_T = sde.marginal_coeffs(full_t(t_grid[0], x_T))[0]
        x = project_edm(batch_mul(1.0 / alpha_T, x_T), t_grid[0], 0)
        x_first = to_sde(x, t_grid[0])
        x, path = jax.lax.scan(step, x, jnp.arange(n - 1))
        x_hat = churn(x, n - 1)  # last step: Euler to sigma_edm = 0, i.e. x = D(x_hat)
        x = denoise(x_hat, t_hat[n - 1])
        _, x = proj(x, x, 0.0, n)
        if return_path:
            path = jnp.concatenate([x_first[None], path, x[None]])
        return with_path(x, jnp.asarray(2 * n - 1, jnp.int32), path, return_path)

    sample.ts = ts
    return sample


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
    with x0 expanded around lambda_i from the last `order` data predictions m0, m1, m2:
      x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (phi1 m0 - c1 D1 + 2 phi3 D2),
    phi1 = e^{-h} - 1, phi2 = phi1 / h + 1, phi3 = phi2 / h - 1/2; D1 ~ h x0' and
    D2 ~ h^2 x0'' / 2 are divided differences over r0 = h_{i-1} / h, r1 = h_{i-2} / h.
    order=2 is DPM-Solver++(2M) as in its Algorithm 2 (D1 = (m0 - m1) / r0, c1 = -phi1 / 2,
    D2 = 0); order=3 is the third-order multistep (c1 = phi2, the exact weight of the linear
    term). The first steps use the history they have; lower_order_final takes the last steps at
    lower order (steadier at few NFE). analytic_first_step: the first data prediction is that
    of Gaussian data N(0, data_scale^2 I) (common.gaussian_score), so nfe score calls take
    nfe + 1 steps (benchmarks/pages/analytic_first_step.md: a large gain at 5 NFE). `ts`
    (decreasing times in [eps, T]) overrides grid and nfe; order p needs p steps.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"dpm_solver++: order must be 1, 2 or 3, got {order}")
    free = free_steps("dpm_solver++", analytic_first_step, grid, ts)
    ts = step_times("dpm_solver++", sde, eps, ts, grid, nfe + free, sigma_range,
                    min_steps=max(order, 1 + free), data_scale=data_scale)
    nfe = len(ts) - 1  # steps
    alpha, sigma, lam = schedule(sde, ts)
    h = lam[1:] - lam[:-1]
    steps = np.arange(nfe)
    orders = np.minimum(order, steps + 1)
    if lower_order_final:
        orders = np.minimum(orders, nfe - steps)
    r0 = h[np.maximum(steps - 1, 0)] / h
    r1 = h[np.maximum(steps - 2, 0)] / h
    phi1 = np.expm1(-h)
    phi2 = phi1 / h + 1.0
    phi3 = phi2 / h - 0.5
    c1 = np.where(orders == 3, phi2, -0.5 * phi1)
    t_grid = jnp.asarray(ts)
    alpha, sigma, r0, r1, phi1, c1, phi3 = (
        jnp.asarray(v, jnp.float32) for v in (alpha, sigma, r0, r1, phi1, c1, phi3))
    orders = jnp.asarray(orders)

    def sample(rng, score_fn, project: Project | None = None, *, x_init=None,
               return_path: bool = False):
        score_at = step_score(sde, score_fn, analytic_first_step, data_scale)
        rng, proj = projection_steps(project, rng)
        x, _ = initial_state(sde, rng, shape, sharding, x_init)
        x, x_first = proj(x, x, t_grid[0], 0)

        def step(carry, i):
            x, _, m1, m2 = carry
            m0 = data_prediction(sde, lambda x, t: score_at(x, t, i))(x, full_t(t_grid[i], x))
            d1_0 = (m0 - m1) / r0[i]
            d1_1 = (m1 - m2) / r1[i]
            d1 = jnp.where(orders[i] == 3, d1_0 + r0[i] / (r0[i] + r1[i]) * (d1_0 - d1_1),
                           jnp.where(orders[i] == 2, d1_0, 0.0))
            d2 = jnp.where(orders[i] == 3, (d1_0 - d1_1) / (r0[i] + r1[i]), 0.0)
            x = (sigma[i + 1] / sigma[i]) * x - alpha[i + 1] * (
                phi1[i] * m0 - c1[i] * d1 + 2.0 * phi3[i] * d2)
            x, x_out = proj(x, x, t_grid[i + 1], i + 1)
            return (x, x_out, m0, m1), x_out if return_path else None

        zeros = jnp.zeros_like(x)
        (_, x_out, _, _), path = jax.lax.scan(step, (x, x_first, zeros, zeros), jnp.arange(nfe))
        return with_path(x_out, jnp.asarray(nfe - free, jnp.int32), _stack(x_first, path),
                         return_path)

    sample.ts = ts
    return sample


def _stack(first: jax.Array, rest: jax.Array | None) -> jax.Array | None:
    """The path [first, *rest] (None when the path was not kept)."""
    return None if rest is None else jnp.concatenate([first[None], rest])
