"""UniPC (Zhao et al. 2023): multistep data-prediction predictor UniP plus the UniC corrector.

In lambda = log(alpha / sigma) with h = lambda_{i+1} - lambda_i, a step from t_i to t_{i+1}
starts from the exponential-integrator (DDIM) part
    x_base = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (e^{-h} - 1) m_i
(m_i: the data prediction at step i) and adds -alpha_{i+1} B(h) sum_k rho_k D_k, where
D_k = (m_{i-k} - m_i) / r_k are divided differences at r_k = (lambda_{i-k} - lambda_i) / h.
UniP-p uses the p - 1 past differences; UniC-p adds D = m_{i+1} - m_i of the model output
at the predicted point. That output is the next step's m_{i+1}, so the corrector costs no
score call: one call per step, none after the last (which takes no corrector). The rho solve
R rho = b with R_{kj} = r_j^(k-1) and b_k = k! g_k(-h) / B(h) (g_1(z) = (e^z - 1) / z - 1,
g_{k+1}(z) = g_k(z) / z - 1 / (k+1)!) is done once per grid in float64; B(h) = -h ('bh1') or
e^{-h} - 1 ('bh2'). UniP-2 and UniC-1 take rho = 1/2 as the paper does. The first steps use
the history they have (orders 1, 2, ...); lower_order_final lowers the last steps likewise.

Every step is linear in (x_i, m_i, m_{i-1}, m_{i-2}, m_{i+1}), so the grid's weights are
precomputed and the on-device loop is a few fused multiply-adds (VP, sub-VP, VE and EDM alike).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from score_sde.sampling.common import (
    Project,
    free_steps,
    full_t,
    gaussian_score,
    initial_state,
    projection_steps,
    schedule,
    step_times,
    with_path,
)
from score_sde.sampling.registry import register_sampler
from score_sde.sampling.scale import PILOT_CALLS, ScaledTables, as_tables, estimates
from score_sde.sampling.steps import data_prediction, exponential_coeffs
from score_sde.sde_lib import SDE

VARIANTS = ("bh1", "bh2")
HISTORY = 3  # data predictions kept: m_i, m_{i-1}, m_{i-2}


def step_orders(n_steps: int, order: int, lower_order_final: bool) -> np.ndarray:
    """The order of each step: warm start 1, 2, ..., order; optionally lowered at the end."""
    steps = np.arange(n_steps)
    orders = np.minimum(order, steps + 1)
    return np.minimum(orders, n_steps - steps) if lower_order_final else orders


def _rhos(r: np.ndarray, h: float, variant: str) -> tuple[np.ndarray, np.ndarray, float]:
    """(predictor rhos over the past differences, corrector rhos (past..., new), B(h))."""
    p = len(r) + 1
    z = -h
    b_h = z if variant == "bh1" else math.expm1(z)
    g, b = math.expm1(z) / z - 1.0, []
    for k in range(1, p + 1):
        b.append(g * math.factorial(k) / b_h)
        g = g / z - 1.0 / math.factorial(k + 1)
    rks = np.append(r, 1.0)
    mat = np.stack([rks**k for k in range(p)])
    rho_c = np.array([0.5]) if p == 1 else np.linalg.solve(mat, np.asarray(b))
    if p == 1:
        rho_p = np.zeros(0)
    elif p == 2:
        rho_p = np.array([0.5])
    else:
        rho_p = np.linalg.solve(mat[:-1, :-1], np.asarray(b[:-1]))
    return rho_p, rho_c, b_h


def unipc_weights(alpha: np.ndarray, sigma: np.ndarray, lam: np.ndarray, orders: np.ndarray,
                  variant: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per step: the weight of x_i, the predictor's weights of (m_i, m_{i-1}, m_{i-2}) and the
    corrector's of (m_i, m_{i-1}, m_{i-2}, m_{i+1}); arrays (n,), (n, 3), (n, 4)."""
    n = len(orders)
    ddim = exponential_coeffs(alpha, sigma, lam)  # the first-order (DDIM) part of every step
    w_p, w_c = np.zeros((n, HISTORY)), np.zeros((n, HISTORY + 1))
    for i, p in enumerate(orders):
        h = lam[i + 1] - lam[i]
        r = (lam[i - np.arange(1, p)] - lam[i]) / h
        rho_p, rho_c, b_h = _rhos(r, h, variant)
        a = alpha[i + 1]
        base = -a * ddim.phi1[i]
        # -a B sum_k rho_k (m_k - m_0) / r_k: weight -a B rho_k / r_k on m_k, minus that on m_0
        past_p, past_c = -a * b_h * rho_p / r, -a * b_h * rho_c[:-1] / r
        new = -a * b_h * rho_c[-1]
        w_p[i, 1:p] = past_p
        w_p[i, 0] = base - past_p.sum()
        w_c[i, 1:p] = past_c
        w_c[i, HISTORY] = new
        w_c[i, 0] = base - past_c.sum() - new
    return ddim.w_x, w_p, w_c


@register_sampler("unipc", merges=True, fields={"ts": None})
def unipc_sampler(sde: SDE, shape: tuple[int, ...], *, nfe: int = 10, order: int = 2,
                  variant: str = "bh2", grid: str = "vp_quadratic",
                  sigma_range: tuple[float, float] | None = None,
                  data_scale: float | None = None, lower_order_final: bool = True,
                  analytic_first_step: bool = False, ts=None, eps: float = 1e-3, sharding=None):
    """UniPC-p (module docstring): nfe steps, exactly one score call each.

    order 1-3 (UniP-p with UniC-p; the corrector raises the order by one), variant 'bh1' or
    'bh2'. analytic_first_step: the first data prediction is that of Gaussian data
    N(0, data_scale^2 I) (common.gaussian_score), so nfe score calls take nfe + 1 steps.
    `ts` (decreasing times in [eps, T]) overrides grid and nfe: nfe = len(ts) - 1 (- 1 with
    analytic_first_step). Without data_scale (and ts), the data's scale is estimated from
    score_fn with one of the nfe score calls (sampling.scale).
    Defaults: order 2 with bh2, the most accurate at 5-8 NFE across the SDEs (bh1 overshoots
    on the large log-SNR steps of so few NFE; benchmarks/pages/grids_transfer.md).
    """
    if order not in (1, 2, 3):
        raise ValueError(f"unipc: order must be 1, 2 or 3, got {order}")
    if variant not in VARIANTS:
        raise ValueError(f"unipc: variant must be one of {list(VARIANTS)}, got {variant!r}")
    free = free_steps("unipc", analytic_first_step, grid, ts)
    pilot = PILOT_CALLS * estimates(data_scale, grid, ts, analytic_first_step)

    def tables(scale):
        times = step_times("unipc", sde, eps, ts, grid, nfe - pilot + free, sigma_range,
                           min_steps=max(order, 1 + free), data_scale=scale)
        w_x, w_p, w_c = unipc_weights(*schedule(sde, times), step_orders(
            len(times) - 1, order, lower_order_final), variant)
        return dict(t=times, w_x=w_x, w_p=w_p, w_c=w_c)

    scaled = ScaledTables(lambda scale: as_tables(tables(scale)), sde, eps, shape, data_scale,
                          pilot > 0, sharding)
    n = len(scaled.nominal["t"]) - 1

    def sample(rng, score_fn, project: Project | None = None, *, x_init=None,
               return_path: bool = False):
        tab, scale = scaled.select(rng, score_fn)
        t_grid, w_x, w_p, w_c = (tab[k] for k in ("t", "w_x", "w_p", "w_c"))
        x0_hat = data_prediction(sde, score_fn)
        rng, proj = projection_steps(project, rng)
        x, _ = initial_state(sde, rng, shape, sharding, x_init)
        x, x_first = proj(x, x, t_grid[0], 0)
        first = data_prediction(sde, gaussian_score(sde, scale)
                                if analytic_first_step else score_fn)
        m = jnp.zeros((HISTORY, *x.shape), x.dtype).at[0].set(first(x, full_t(t_grid[0], x)))

        def predict(x, m, i):
            return w_x[i] * x + jnp.tensordot(w_p[i], m, axes=1)

        def step(carry, i):
            x, m = carry
            x_pred = predict(x, m, i)
            x_pred, _ = proj(x_pred, x_pred, t_grid[i + 1], 2 * i + 1)
            m_new = x0_hat(x_pred, full_t(t_grid[i + 1], x))
            x = w_x[i] * x + jnp.tensordot(w_c[i, :HISTORY], m, axes=1) + w_c[i, HISTORY] * m_new
            x, x_out = proj(x, x, t_grid[i + 1], 2 * i + 2)
            return (x, jnp.concatenate([m_new[None], m[:-1]])), x_out if return_path else None

        (x, m), path = jax.lax.scan(step, (x, m), jnp.arange(n - 1))
        x = predict(x, m, n - 1)  # the last step takes no corrector (no score call)
        _, x_out = proj(x, x, t_grid[n], 2 * n)
        if return_path:
            path = jnp.concatenate([x_first[None], path, x_out[None]])
        return with_path(x_out, jnp.asarray(n - free + pilot, jnp.int32), path, return_path)

    sample.ts = scaled.nominal["t"]
    return sample
