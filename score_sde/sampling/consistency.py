"""Multistep consistency sampling (Song et al. 2023, Algorithm 1).

The sampler takes a consistency function f(x, t) -> x at sigma_min in place of score_fn, with
the `sample(rng, fn, project)` shape of the other fixed-step samplers: one evaluation maps the
prior draw to data; each further one re-noises that sample to an intermediate level tau and maps
it back. The per-step merge (inpainting, colorization) acts on the prior draw and on every
noisy state x_tau, as in the other samplers; SDEdit works through its start SDE (levels above
its t0 are dropped).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from score_sde.sampling.common import Project, full_t, prior_sample, projection_steps
from score_sde.sampling.registry import register_sampler
from score_sde.sde_lib import SDE


def default_sigmas(nfe: int, sigma_max: float, sigma_min: float, rho: float = 7.0) -> tuple:
    """The nfe - 1 intermediate levels: the interior of a Karras rho-grid of nfe steps from
    sigma_max to sigma_min (nfe 2 on EDM's range: 2.5)."""
    ramp = np.linspace(0.0, 1.0, nfe + 1)[1:-1]
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return tuple(float(v) for v in (hi + ramp * (lo - hi)) ** rho)


def _noise_levels(sde: SDE, t: float) -> tuple[float, float]:
    alpha, sigma = sde.marginal_coeffs(jnp.asarray([t], jnp.float32))
    return float(alpha[0]), float(sigma[0])


@register_sampler("consistency", merges=True)
def consistency_sampler(sde: SDE, shape: tuple[int, ...], *, nfe: int = 1,
                        consistency_sigmas: tuple[float, ...] | None = None,
                        eps: float = 2e-3, sharding=None):
    """Consistency sampling with `nfe` evaluations of f.

    consistency_sigmas: the nfe - 1 intermediate noise levels tau (sigma / alpha units,
    decreasing), default `default_sigmas`; levels at or above the start level are dropped (SDEdit
    from a low t0). x_tau = alpha_tau x + sqrt(sigma_tau^2 - alpha_tau^2 sigma_min^2) z re-noises
    a sample x that sits at sigma_min = sigma(eps) / alpha(eps).
    """
    if nfe < 1:
        raise ValueError(f"consistency sampler: nfe must be >= 1, got {nfe}")
    a_T, s_T = _noise_levels(sde, sde.T)
    a_eps, s_eps = _noise_levels(sde, eps)
    sigma_min = s_eps / a_eps
    sigmas = (default_sigmas(nfe, s_T / a_T, sigma_min) if consistency_sigmas is None
              else tuple(float(s) for s in consistency_sigmas))
    if len(sigmas) != nfe - 1:
        raise ValueError(f"config.sampling.consistency_sigmas has {len(sigmas)} levels; "
                         f"nfe={nfe} needs nfe - 1 = {nfe - 1}")
    if list(sigmas) != sorted(sigmas, reverse=True) or min(sigmas, default=1.0) <= sigma_min:
        raise ValueError(f"config.sampling.consistency_sigmas={sigmas} must decrease and stay "
                         f"above sigma_min={sigma_min:.4g}")
    sigmas = [s for s in sigmas if s < s_T / a_T]
    times = np.asarray(sde.t_from_log_snr(-jnp.log(jnp.asarray(sigmas, jnp.float32))),
                       np.float32) if sigmas else np.zeros((0,), np.float32)
    steps = []
    for t in times:
        alpha, sigma = _noise_levels(sde, float(t))
        steps.append((float(t), alpha, float(np.sqrt(max(sigma**2 - (alpha * sigma_min) ** 2,
                                                         0.0)))))
    used = 1 + len(steps)

    def sample(rng, fn, project: Project | None = None):
        rng, proj = projection_steps(project, rng)
        x, rng = prior_sample(sde, rng, shape, sharding)
        x, _ = proj(x, x, sde.T, 0)
        x = fn(x, full_t(sde.T, x))
        for k, (t, alpha, std) in enumerate(steps, start=1):
            z = jax.random.normal(jax.random.fold_in(rng, k), x.shape, x.dtype)
            x, _ = proj(alpha * x + std * z, x, t, k)
            x = fn(x, full_t(t, x))
        _, x = proj(x, x, eps, used)
        return x, jnp.asarray(used, jnp.int32)

    return sample
