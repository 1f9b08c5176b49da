"""DDRM (Kawar et al. 2022): denoising diffusion restoration in the operator's spectral space.

With A = U diag(s) V^T, the observation in V's coordinates is y_bar = diag(s)^{-1} U^T y =
V^T x0 + (sigma_y / s) n on every coordinate with s > 0: each is x0's coordinate seen at its
own noise level sigma_y / s. DDRM samples in EDM's variables (x_edm = x / alpha at the noise
level rho = sigma / alpha, which puts every SDE on one footing; the paper's sigma_t is rho), in
V's coordinates x_bar = V^T x_edm, from the data prediction m = V^T x0_hat of every step; a
step from rho to rho' < rho draws each coordinate (the paper's Eq. 7-8, eta and eta_b its
parameters):

  s = 0 (null space)          m + sqrt(1 - eta^2) rho' (x_bar - m) / rho + eta rho' z
  s > 0, rho' < sigma_y / s   m + sqrt(1 - eta^2) rho' (y_bar - m) / (sigma_y / s) + eta rho' z
  s > 0, rho' >= sigma_y / s  (1 - eta_b) m + eta_b y_bar + sqrt(rho'^2 - eta_b^2 (sigma_y/s)^2) z

from x_bar ~ N(y_bar, rho_T^2 - (sigma_y / s)^2) on observed coordinates (where rho_T is above
their noise; N(0, rho_T^2) on the others). The last step goes to rho' = 0 (the sample is m, or
y_bar on noise-free observed coordinates). Noise-free observations are the case sigma_y = 0.
Singular values at or below the operator's rcond * max(s) count as zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from score_sde.inverse.base import PINV_RCOND, Operator
from score_sde.inverse.posterior import register_posterior
from score_sde.sampling.common import full_t, schedule, step_times
from score_sde.sampling.steps import data_prediction, denoiser_at_time
from score_sde.sde_lib import SDE

Array = jax.Array


class Spectrum:
    """The operator's SVD as DDRM uses it: per V coordinate (n,), observed or not, and the
    observation's coordinates y_bar (B, n) and noise levels sigma_y / s (n,), inf where not
    observed (jnp throughout, so that sigma_y and the singular values may be traced)."""

    def __init__(self, operator: Operator, sigma_y):
        values = jnp.asarray(operator.singular_values, jnp.float32)
        self.rank, self.operator = values.shape[0], operator
        s = jnp.pad(values, (0, operator.input_size - self.rank))
        rcond = getattr(operator, "rcond", PINV_RCOND)
        self.observed = s > rcond * (jnp.max(s) if self.rank else 0.0)
        self.s = jnp.where(self.observed, s, 1.0)
        self.noise = jnp.where(self.observed, jnp.asarray(sigma_y, jnp.float32) / self.s, jnp.inf)

    def y_bar(self, y: Array) -> Array:
        z = self.operator.Ut(y)[:, : self.rank]
        z = jnp.pad(z, ((0, 0), (0, self.operator.input_size - self.rank)))
        return jnp.where(self.observed, z / self.s, 0.0)


def ddrm_step(x_bar, m, y_bar, rho, rho_next, noise, observed, z, eta: float, eta_b: float):
    """One DDRM step from rho to rho_next (scalars) in V's coordinates (module docstring)."""
    keep = jnp.sqrt(1.0 - eta**2)
    null = m + keep * rho_next * (x_bar - m) / rho + eta * rho_next * z
    safe_noise = jnp.where(jnp.isfinite(noise) & (noise > 0), noise, 1.0)
    quiet = m + keep * rho_next * (y_bar - m) / safe_noise + eta * rho_next * z
    loud = ((1.0 - eta_b) * m + eta_b * y_bar
            + jnp.sqrt(jnp.maximum(rho_next**2 - (eta_b * noise) ** 2, 0.0)) * z)
    below = observed & (rho_next < noise)
    return jnp.where(observed, jnp.where(below, quiet, loud), null)


def ddrm_init(y_bar, rho_T, noise, observed, z):
    """x_bar at the top of the grid: N(y_bar, rho_T^2 - noise^2) where rho_T >= noise on
    observed coordinates, N(0, rho_T^2) elsewhere."""
    seen = observed & (rho_T >= noise)
    return jnp.where(seen, y_bar + jnp.sqrt(jnp.maximum(rho_T**2 - noise**2, 0.0)) * z,
                     rho_T * z)


@register_posterior("ddrm", needs=("svd",))
def ddrm_sampler(sde: SDE, operator: Operator, shape, *, sigma_y: float, nfe: int, eps: float,
                 sharding=None, eta: float = 0.85, eta_b: float = 1.0, grid: str = "vp_uniform",
                 data_scale: float | None = None):
    """DDRM (module docstring): nfe steps of one score call each, on `grid` (VP's uniform
    grid, the published DDPM skip, carried to every SDE; data_scale places it) from T to
    eps, then to noise 0. eta = 0.85, eta_b = 1: the paper's values."""
    ts = (np.asarray([sde.T], np.float32) if nfe == 1
          else step_times("ddrm", sde, eps, None, grid, nfe - 1, data_scale=data_scale))
    alpha, sigma, _ = schedule(sde, ts)
    rho = jnp.asarray(np.append(sigma / alpha, 0.0), jnp.float32)
    t_grid = jnp.asarray(ts)
    spec = Spectrum(operator, sigma_y)
    constrain = (lambda v: v) if sharding is None else (
        lambda v: jax.lax.with_sharding_constraint(v, sharding))

    def sample(rng, score_fn, y):
        denoise = denoiser_at_time(sde, data_prediction(sde, score_fn))
        y_bar = spec.y_bar(y)
        x_bar = ddrm_init(y_bar, rho[0], spec.noise, spec.observed,
                          jax.random.normal(jax.random.fold_in(rng, nfe), y_bar.shape))

        def step(x_bar, i):
            x_edm = constrain(operator.V(x_bar))
            m = operator.Vt(denoise(x_edm, full_t(t_grid[i], x_edm)))
            z = jax.random.normal(jax.random.fold_in(rng, i), x_bar.shape)
            return ddrm_step(x_bar, m, y_bar, rho[i], rho[i + 1], spec.noise, spec.observed,
                             z, eta, eta_b), None

        x_bar, _ = jax.lax.scan(step, x_bar, jnp.arange(len(ts)))
        return constrain(operator.V(x_bar)), jnp.asarray(len(ts), jnp.int32)

    sample.ts = ts
    return sample
