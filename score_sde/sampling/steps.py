"""The solver steps, written once: every sampler, the grid optimiser's costs and proxy, and the
consistency teacher take their maths from here.

Notation: x_t = alpha_t x_0 + sigma_t eps, lambda = log(alpha / sigma) (the log-SNR), m = x0_hat
the data prediction, eps_hat = -sigma score the noise prediction. EDM's variables are
x_edm = x / alpha at the noise level sigma_edm = sigma / alpha (`SDE.t_from_sigma` maps a level
back to its time), where the probability-flow ODE reads dx/dsigma = (x - D(x; sigma)) / sigma.

The coefficient functions take numpy arrays (float64, a sampler's static grid) or JAX arrays
(traced times, the grid optimiser's gradient); the steps take the state and the coefficients
of one step. An `order` that is a Python int selects the formula statically (the grid
optimiser's costs), a JAX integer selects it per scanned step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from score_sde.sde_lib import SDE, ScoreFn, batch_mul

Array = jax.Array
Denoiser = Callable[[Array, Array], Array]  # D(x_edm, sigma_edm), sigma_edm per example (B,)


def _xp(*values):
    """jax.numpy if any value is a JAX array (or tracer), else numpy."""
    return jnp if any(isinstance(v, jax.Array) for v in values) else np


def _select(order, k: int, a, b):
    """a where order == k, else b (statically for a Python int order)."""
    if isinstance(order, (int, np.integer)):
        return a if order == k else b
    return jnp.where(order == k, a, b)


# ------------------------------------------------------------------- the data prediction


def data_prediction(sde: SDE, score_fn: ScoreFn) -> ScoreFn:
    """x0_hat(x, t) = E[x_0 | x_t = x] = (x + sigma^2 score) / alpha (Tweedie's formula): the one
    route from a score to the data prediction."""

    def x0_hat(x: Array, t: Array) -> Array:
        alpha, sigma = sde.marginal_coeffs(t)
        return batch_mul(1.0 / alpha, x + batch_mul(sigma**2, score_fn(x, t)))

    return x0_hat


def denoiser_at_time(sde: SDE, x0_hat: ScoreFn) -> ScoreFn:
    """D(x_edm; t) = x0_hat(alpha_t x_edm, t): the data prediction in EDM's variables, at the
    time t (B,) whose noise level sigma_edm is meant (exact grid times stay exact)."""

    def denoise(x: Array, t: Array) -> Array:
        return x0_hat(batch_mul(sde.marginal_coeffs(t)[0], x), t)

    return denoise


def edm_denoiser(sde: SDE, x0_hat: ScoreFn) -> Denoiser:
    """D(x_edm, sigma_edm): `denoiser_at_time` at t(sigma_edm) (sigma_edm (B,); on the EDM
    SDE, alpha = 1 and t = sigma_edm)."""
    at_time = denoiser_at_time(sde, x0_hat)
    return lambda x, sigma: at_time(x, sde.t_from_sigma(sigma))


def noise_from_data(x, m, alpha, sigma):
    """eps_hat = (x - alpha m) / sigma: the noise prediction that goes with the data prediction
    m at (alpha, sigma)."""
    return (x - alpha * m) / sigma


# ----------------------------------------------- the exponential integrator (DPM-Solver++)


class ExponentialCoeffs(NamedTuple):
    """Per step i -> i + 1 of a grid (arrays (n,)): the weight of x_i, sigma_{i+1} / sigma_i;
    alpha_{i+1}; phi1 = e^{-h} - 1 with h = lambda_{i+1} - lambda_i; the weight c1 of the first
    divided difference and phi3 of the second; r0 = h_{i-1} / h, r1 = h_{i-2} / h; the order."""

    w_x: Array
    alpha_next: Array
    phi1: Array
    c1: Array
    phi3: Array
    r0: Array
    r1: Array
    order: Array


def exponential_coeffs(alpha, sigma, lam, order: int = 1,
                       lower_order_final: bool = False) -> ExponentialCoeffs:
    """The DPM-Solver++ coefficients of every step of the grid with these alpha, sigma, lambda
    ((n + 1,) each, or (n + 1, T) for T grids at once; numpy or JAX).

    Order p takes min(p, i + 1) at step i (the history it has) and, with lower_order_final,
    at most n - i (steadier last steps at few NFE). Order 1 is DDIM's deterministic step; order
    2 is DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2: c1 = -phi1 / 2); order 3 its third-order
    multistep (c1 = phi2 = phi1 / h + 1, the exact weight of the linear term, phi3 = phi2 / h -
    1/2).
    """
    xp = _xp(alpha, sigma, lam)
    h = lam[1:] - lam[:-1]
    n = h.shape[0]
    steps = xp.arange(n).reshape((n,) + (1,) * (h.ndim - 1))  # grids may be batched: (n + 1, T)
    orders = xp.minimum(order, steps + 1)
    if lower_order_final:
        orders = xp.minimum(orders, n - steps)
    phi1 = xp.expm1(-h)
    phi2 = phi1 / h + 1.0
    phi3 = phi2 / h - 0.5
    return ExponentialCoeffs(
        w_x=sigma[1:] / sigma[:-1], alpha_next=alpha[1:], phi1=phi1,
        c1=xp.where(orders == 3, phi2, -0.5 * phi1), phi3=phi3,
        r0=xp.concatenate([h[:1], h[:-1]]) / h,  # h_{i-1} / h (h_0 / h at the first step)
        r1=xp.concatenate([h[:1], h[:1], h[:-2]])[:n] / h, order=orders.reshape(-1))


def exponential_history_weights(c: ExponentialCoeffs):
    """The DPM-Solver++ steps of c as a linear multistep on the data predictions: W (n,
    MAX_ORDER) with exponential_step(x, m0, m1, m2, c) = w_x x + alpha_next sum_j W[:, j] m_j
    (m_j the prediction j steps back; columns past the order are 0). The learned solver
    (sampling/learned) starts from these weights. Numpy or JAX, as c."""
    xp = _xp(*c)
    unit = np.eye(3)
    columns = [exponential_step(0.0, *unit[j], c) / c.alpha_next for j in range(3)]
    zero = xp.zeros_like(columns[0])
    return xp.stack(columns + [zero] * (MAX_ORDER - 3), axis=-1)


def on_device(coeffs: ExponentialCoeffs) -> ExponentialCoeffs:
    """A grid's float64 numpy coefficients as float32 (orders int32) JAX arrays."""
    return jax.tree.map(lambda v: jnp.asarray(v, jnp.int32 if np.asarray(v).dtype.kind == "i"
                                              else jnp.float32), coeffs)


def exponential_step(x, m0, m1, m2, c: ExponentialCoeffs):
    """One DPM-Solver++ step with the coefficients c of that step (scalars, or arrays that
    broadcast) from the data predictions m0, m1, m2 at the current and the two previous points:

      x' = (sigma' / sigma) x - alpha' (phi1 m0 - c1 D1 + 2 phi3 D2),

    D1 ~ h x0' and D2 ~ h^2 x0'' / 2 the divided differences of the order in use (zero above
    it). Linear in (x, m0, m1, m2).
    """
    d1_0 = (m0 - m1) / c.r0
    d1_1 = (m1 - m2) / c.r1
    d1 = _select(c.order, 3, d1_0 + c.r0 / (c.r0 + c.r1) * (d1_0 - d1_1),
                 _select(c.order, 2, d1_0, 0.0))
    d2 = _select(c.order, 3, (d1_0 - d1_1) / (c.r0 + c.r1), 0.0)
    return c.w_x * x - c.alpha_next * (c.phi1 * m0 - c.c1 * d1 + 2.0 * c.phi3 * d2)


# ------------------------------------------------------ Adams-Bashforth in EDM's variables

MAX_ORDER = 4
# The fixed-step Adams-Bashforth weights of orders 1-4 (newest first).
AB_WEIGHTS = {1: [1.0], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12],
              4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}


def adams_bashforth_weights(alpha, sigma, order: int):
    """Per step of the grid ((n + 1,) alpha, sigma, or (n + 1, T) for T grids; numpy or JAX):
    the weight of x_i, alpha_{i+1} / alpha_i, and of the noise predictions (eps_i, ...,
    eps_{i-3}), alpha_{i+1} (rho_{i+1} - rho_i) c_pj at order p = min(order, i + 1),
    rho = sigma / alpha; shapes (n,), (n, MAX_ORDER) (or (n, T), (n, T, MAX_ORDER)).

    This is iPNDM (DEIS's improved PNDM): y = x / alpha stepped in rho along
    dy / drho = eps_hat with the equal-step weights (of order p on a grid uniform in rho).
    """
    xp = _xp(alpha, sigma)
    rho = sigma / alpha
    n = rho.shape[0] - 1
    table = np.zeros((n, MAX_ORDER))
    for i in range(n):
        c = AB_WEIGHTS[min(order, i + 1)]
        table[i, :len(c)] = c
    scale = alpha[1:] * (rho[1:] - rho[:-1])
    table = table.reshape((n,) + (1,) * (scale.ndim - 1) + (MAX_ORDER,))
    return alpha[1:] / alpha[:-1], scale[..., None] * xp.asarray(table)


def adams_bashforth_step(x, eps_new, history, w_x, w_eps):
    """(x', history'): eps_new joins the history (MAX_ORDER, *x.shape), newest first, and
    x' = w_x x + sum_j w_eps[j] history'[j] (weights of one step, adams_bashforth_weights).
    The one linear multistep step: the learned solver runs it on data predictions, with
    w_eps = alpha_next W (exponential_history_weights and learned weights)."""
    xp = _xp(x, eps_new, history, w_x, w_eps)
    history = xp.concatenate([eps_new[None], history[:-1]])
    return w_x * x + xp.tensordot(w_eps, history, axes=1), history


# ------------------------------------------------------------------ Heun in EDM's variables


def heun_step(x, sigma, sigma_next, denoise_at: Callable, denoise_next: Callable,
              edm_rule=True):
    """One second-order step of dx/dsigma = (x - D) / sigma from sigma to sigma_next > 0.

    The Euler predictor x_e = r x + (1 - r) D(x) (r = sigma_next / sigma: x - D decays exactly)
    is corrected either by EDM's trapezoid on (x - D) / sigma (Karras et al. 2022, Algorithm 2;
    edm_rule True), which weighs D(x_e) - D(x) by (1 - r) / (2 r), or by the trapezoid on D,
    r x + (1 - r) (D(x) + D(x_e)) / 2 (edm_rule False: the weight stays <= 1/2 on the large steps
    of few NFE). denoise_at / denoise_next: D at sigma and at sigma_next, as functions of x.
    sigma, sigma_next: scalars or per example (B,); edm_rule: a bool or a traced bool.
    """
    d0 = denoise_at(x)
    x_euler = euler_step(x, sigma, sigma_next, d0)
    d1 = denoise_next(x_euler)
    x_trap_d = euler_step(x, sigma, sigma_next, 0.5 * d0 + 0.5 * d1)
    if edm_rule is False:
        return x_trap_d
    slope = batch_mul(1.0 / sigma, x - d0)
    slope_next = batch_mul(1.0 / sigma_next, x_euler - d1)
    x_edm = x + batch_mul(sigma_next - sigma, 0.5 * slope + 0.5 * slope_next)
    return x_edm if edm_rule is True else jnp.where(edm_rule, x_edm, x_trap_d)


def euler_step(x, sigma, sigma_next, d0):
    """The first-order step r x + (1 - r) d0, r = sigma_next / sigma, with d0 = D(x; sigma):
    Euler on dx/dsigma = (x - D) / sigma, which is also DDIM's step in EDM's variables."""
    r = sigma_next / sigma
    return batch_mul(r, x) + batch_mul(1.0 - r, d0)
