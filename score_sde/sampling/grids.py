"""Time grids T = t_0 > t_1 > ... > t_n = eps for the fixed-step samplers.

A grid is named by where it puts its points: uniform in t ('uniform', the published PC grid),
denser near the data ('quadratic', DDIM's), uniform in log-SNR lambda = log(alpha / sigma)
('logsnr', DPM-Solver's), or EDM's sigma^(1/rho) spacing of sigma_edm = sigma / alpha
('karras', rho = 7). Grids are static numpy arrays computed when a sampler is built.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from score_sde.sde_lib import SDE

GridFn = Callable[[SDE, int, float], np.ndarray]
_GRIDS: dict[str, GridFn] = {}


def register_grid(name: str) -> Callable[[GridFn], GridFn]:
    def add(fn: GridFn) -> GridFn:
        _GRIDS[name] = fn
        return fn
    return add


def grid_names() -> list[str]:
    return sorted(_GRIDS)


def get_time_grid(name: str, sde: SDE, n_steps: int, eps: float) -> np.ndarray:
    """n_steps + 1 decreasing times from sde.T to eps (float32 numpy)."""
    if name not in _GRIDS:
        raise ValueError(f"grid={name!r} is not a known time grid; choose one of {grid_names()}")
    if n_steps < 1:
        raise ValueError(f"a time grid needs n_steps >= 1, got {n_steps}")
    ts = np.asarray(_GRIDS[name](sde, n_steps, eps), np.float64)
    ts[0], ts[-1] = sde.T, eps
    return ts.astype(np.float32)


def _log_snr(sde: SDE, t: float) -> float:
    return float(sde.log_snr(jnp.asarray([t], jnp.float32))[0])


def _t_from_log_snr(sde: SDE, lam: np.ndarray) -> np.ndarray:
    return np.asarray(sde.t_from_log_snr(jnp.asarray(lam, jnp.float32)), np.float64)


@register_grid("uniform")
def uniform(sde: SDE, n: int, eps: float) -> np.ndarray:
    return np.linspace(sde.T, eps, n + 1)


@register_grid("quadratic")
def quadratic(sde: SDE, n: int, eps: float) -> np.ndarray:
    return eps + (sde.T - eps) * np.linspace(1.0, 0.0, n + 1) ** 2


@register_grid("logsnr")
def logsnr(sde: SDE, n: int, eps: float) -> np.ndarray:
    lam = np.linspace(_log_snr(sde, sde.T), _log_snr(sde, eps), n + 1)
    return _t_from_log_snr(sde, lam)


@register_grid("karras")
def karras(sde: SDE, n: int, eps: float, rho: float = 7.0) -> np.ndarray:
    s_max, s_min = np.exp(-_log_snr(sde, sde.T)), np.exp(-_log_snr(sde, eps))
    ramp = np.linspace(0.0, 1.0, n + 1)
    sig = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    return _t_from_log_snr(sde, -np.log(sig))
