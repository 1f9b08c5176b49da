"""Multistep consistency sampling (Song et al. 2023, Algorithm 1).

The sampler takes a consistency function f(x, t) -> x at sigma_min in place of score_fn, with
the `sample(rng, fn, project)` shape of the other fixed-step samplers: one evaluation maps the
start (a prior draw, or `x_init`) to data; each further one re-noises that sample to an
intermediate level tau and maps it back. The per-step merge (inpainting, colorization) acts on
the start and on every noisy state x_tau, as in the other samplers. Its times `sample.ts` are
[T, t(tau_1), ...]; an explicit `ts` (SDEdit's [t0, levels below t0]) replaces them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from score_sde.sampling.common import (
    Project,
    full_t,
    initial_state,
    projection_steps,
    with_path,
)
from score_sde.sampling.registry import register_sampler
from score_sde.sde_lib import SDE

# iCT's two-step level (Song & Dhariwal 2023, CIFAR-10): a noise level in the units of data
# scaled to [-1, 1], the range every dataset of this framework is centred to, so it means the
# same re-noising (coarse layout kept, detail redrawn) on any of them and on any SDE (levels are
# sigma / alpha); compared with other levels on digits in benchmarks/pages/consistency_digits.md.
TWO_STEP_SIGMA = 0.821


def default_sigmas(nfe: int, sigma_max: float, sigma_min: float, rho: float = 7.0,
                   last: float = TWO_STEP_SIGMA) -> tuple:
    """The nfe - 1 intermediate levels: the points below sigma_max of a Karras rho-grid of
    nfe - 1 steps from sigma_max down to `last` (nfe 2: `last` alone; nfe 4 on EDM's range:
    23.6, 5.35, 0.821). When `last` is outside (sigma_min, sigma_max), the grid runs to
    sigma_min and its interior is used instead."""
    if nfe < 2:
        return ()
    if not sigma_min < last < sigma_max:
        ramp = np.linspace(0.0, 1.0, nfe + 1)[1:-1]
        hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
        return tuple(float(v) for v in (hi + ramp * (lo - hi)) ** rho)
    ramp = np.linspace(0.0, 1.0, nfe)[1:]
    hi, lo = sigma_max ** (1 / rho), last ** (1 / rho)
    levels = (hi + ramp * (lo - hi)) ** rho
    levels[-1] = last
    return tuple(float(v) for v in levels)


def _noise_levels(sde: SDE, t: float) -> tuple[float, float]:
    alpha, sigma = sde.marginal_coeffs(jnp.asarray([t], jnp.float32))
    return float(alpha[0]), float(sigma[0])


def _times(sde: SDE, nfe: int, sigmas, eps: float, sigma_min: float) -> np.ndarray:
    """[T, t(tau_1), ..., t(tau_{nfe-1})] from the levels (checked)."""
    a_T, s_T = _noise_levels(sde, sde.T)
    sigmas = (default_sigmas(nfe, s_T / a_T, sigma_min) if sigmas is None
              else tuple(float(s) for s in sigmas))
    if len(sigmas) != nfe - 1:
        raise ValueError(f"config.sampling.consistency_sigmas has {len(sigmas)} levels; "
                         f"nfe={nfe} needs nfe - 1 = {nfe - 1}")
    if list(sigmas) != sorted(set(sigmas), reverse=True) or min(sigmas, default=1.0) <= sigma_min \
            or max(sigmas, default=0.0) >= s_T / a_T:
        raise ValueError(f"config.sampling.consistency_sigmas={sigmas} must strictly decrease "
                         f"inside ({sigma_min:.4g}, {s_T / a_T:.4g})")
    inner = (np.asarray(sde.t_from_sigma(jnp.asarray(sigmas, jnp.float32)), np.float64)
             if sigmas else np.zeros((0,)))
    return np.concatenate([[sde.T], inner]).astype(np.float32)


@register_sampler("consistency", merges=True, fields={"ts": None})
def consistency_sampler(sde: SDE, shape: tuple[int, ...], *, nfe: int = 1,
                        consistency_sigmas: tuple[float, ...] | None = None, ts=None,
                        eps: float = 2e-3, sharding=None):
    """Consistency sampling with `nfe` evaluations of f.

    consistency_sigmas: the nfe - 1 intermediate noise levels tau (sigma / alpha units,
    strictly decreasing), default `default_sigmas`. x_tau = alpha_tau x + sqrt(sigma_tau^2 -
    alpha_tau^2 sigma_min^2) z re-noises a sample x that sits at sigma_min = sigma(eps) /
    alpha(eps). ts: explicit times (strictly decreasing, inside (eps, T]): f at ts[0], then one
    re-noised evaluation at each later time; it overrides nfe and the levels.
    """
    if nfe < 1:
        raise ValueError(f"consistency sampler: nfe must be >= 1, got {nfe}")
    a_eps, s_eps = _noise_levels(sde, eps)
    sigma_min = s_eps / a_eps
    if ts is None:
        ts = _times(sde, nfe, consistency_sigmas, eps, sigma_min)
    ts = np.asarray(ts, np.float32)
    if ts.ndim != 1 or len(ts) < 1 or np.any(np.diff(ts) >= 0) or ts[-1] <= eps \
            or ts[0] > sde.T * (1 + 1e-6):
        raise ValueError(f"consistency sampler: ts must strictly decrease inside (eps, T], got "
                         f"{ts.tolist()}")
    steps = []
    for t in ts[1:]:
        alpha, sigma = _noise_levels(sde, float(t))
        steps.append((float(t), alpha,
                      float(np.sqrt(max(sigma**2 - (alpha * sigma_min) ** 2, 0.0)))))
    used, t_start = len(ts), float(ts[0])

    def sample(rng, fn, project: Project | None = None, *, x_init=None,
               return_path: bool = False):
        """(x, nfe), or with return_path (x, nfe, path): path = the state at every time of ts
        (the start, then each re-noised x_tau) and the sample last, (len(ts) + 1, *shape)."""
        rng, proj = projection_steps(project, rng)
        x, rng = initial_state(sde, rng, shape, sharding, x_init)
        x, _ = proj(x, x, t_start, 0)
        path = [x]
        x = fn(x, full_t(t_start, x))
        for k, (t, alpha, std) in enumerate(steps, start=1):
            z = jax.random.normal(jax.random.fold_in(rng, k), x.shape, x.dtype)
            x, _ = proj(alpha * x + std * z, x, t, k)
            path.append(x)
            x = fn(x, full_t(t, x))
        _, x = proj(x, x, eps, used)
        return with_path(x, jnp.asarray(used, jnp.int32), jnp.stack([*path, x]), return_path)

    sample.ts = ts
    return sample
