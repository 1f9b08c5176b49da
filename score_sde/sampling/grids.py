"""Time grids T = t_0 > t_1 > ... > t_n = eps for the fixed-step samplers.

A grid is named by where it puts its points: uniform in t ('uniform', the published PC grid),
denser near the data ('quadratic', DDIM's), uniform in log-SNR lambda = log(alpha / sigma)
('logsnr', DPM-Solver's), or EDM's sigma^(1/rho) spacing of sigma_edm = sigma / alpha
('karras', rho = 7). Grids are static numpy arrays computed when a sampler is built.
'vp_uniform' / 'vp_quadratic' are VP's 'uniform' / 'quadratic' carried to any SDE through the
noise level sigma / alpha, and, with `data_scale=s` (the data's per-coordinate spread, 1 for
unit-scale data), through the noise relative to the data, sigma / (alpha s): a grid placed for
data s times wider has every point at s times the noise (where the SDE reaches it).

`sigma_range=(lo, hi)` (noise levels sigma / alpha) spends the steps where the data changes:
the named spacing covers [lo, hi], and one step each spans T -> hi and lo -> eps (those ends
that the SDE reaches). A good range is about half the data's smallest standard deviation to
twice its diameter; DPM-Solver++ gains most from it at low NFE
(benchmarks/pages/sampler_accuracy.md).

'file:PATH' reads a grid written by `--mode optimize_grid` (score_sde.sampling.grid_files):
it must have been made for this SDE, eps and number of steps.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from score_sde.registry import Registry
from score_sde.sampling import grid_files
from score_sde.sde_lib import SDE, VPSDE

GridFn = Callable[..., np.ndarray]  # (sde, n, t_start, t_end) or also scale= (SCALED_GRIDS)
_GRIDS: Registry[GridFn] = Registry("time grid", field="grid")


def register_grid(name: str) -> Callable[[GridFn], GridFn]:
    """Decorator: make `fn(sde, n, t_start, t_end) -> n + 1 times` the grid `name`."""
    return _GRIDS.register(name)


def grid_names() -> list[str]:
    return _GRIDS.names()


# EDM's noise range for CIFAR-10 in [-1, 1] (32 x 32 x 3 values): Karras et al. 2022, Table 1.
EDM_RANGE, EDM_WIDTH, EDM_DIM = (0.002, 80.0), 2.0, 32 * 32 * 3


def image_noise_range(centered: bool, image_size: int, num_channels: int) -> tuple[float, float]:
    """The noise range (sigma / alpha) of image data, from its value range and size.

    EDM's (0.002, 80) for CIFAR-10 in [-1, 1], scaled to the data: both ends with the width of
    the value range (2 if centered in [-1, 1], 1 for [0, 1]: 0.001 is a quarter of a 8-bit
    level), the top also with sqrt(number of values) (distances between images grow as
    sqrt(D)). E.g. [-1, 1]: 32 x 32 x 3 (0.002, 80), 8 x 8 x 1 (0.002, 11.5), 256 x 256 x 3
    (0.002, 640); [0, 1]: 32 x 32 x 3 (0.001, 40). get_time_grid clips it to the SDE's range.
    """
    width = 2.0 if centered else 1.0
    dim = int(image_size) ** 2 * int(num_channels)
    lo = EDM_RANGE[0] * width / EDM_WIDTH
    hi = EDM_RANGE[1] * width / EDM_WIDTH * float(np.sqrt(dim / EDM_DIM))
    return lo, hi


def get_time_grid(name: str, sde: SDE, n_steps: int, eps: float,
                  sigma_range: tuple[float, float] | None = None,
                  data_scale: float | None = None) -> np.ndarray:
    """n_steps + 1 decreasing times from sde.T to eps (float32 numpy), see sigma_range above.

    data_scale (the data's spread, 1 for unit-scale data, see check_data_scale) moves the
    'vp_*' grids' points to the same noise levels relative to the data; the other grids span
    their end points in a way that does not depend on it.
    """
    if grid_files.is_grid_file(name):
        if sigma_range is not None:
            raise ValueError(f"grid={name!r} is a stored grid: sigma_range does not apply; "
                             "leave config.sampling.sigma_range unset")
        return grid_files.load_grid(name[len(grid_files.PREFIX):], sde, n_steps, eps)
    grid_fn = _GRIDS.lookup(name)
    if n_steps < 1:
        raise ValueError(f"a time grid needs n_steps >= 1, got {n_steps}")
    t_start, t_end = sde.T, eps
    if sigma_range is not None:
        t_start, t_end = _range_times(sde, sigma_range, eps)
    head, tail = [sde.T] * (t_start < sde.T), [eps] * (t_end > eps)
    n_inner = n_steps - len(head) - len(tail)
    if n_inner < 1:
        raise ValueError(f"sigma_range={tuple(sigma_range)} leaves {n_inner} of {n_steps} steps "
                         "inside the range; give more steps or a range that covers an end")
    scale = check_data_scale(data_scale)
    extra = {"scale": scale} if name in SCALED_GRIDS and scale != 1.0 else {}
    inner = np.asarray(grid_fn(sde, n_inner, t_start, t_end, **extra), np.float64)
    inner[0], inner[-1] = t_start, t_end
    return np.concatenate([head, inner, tail]).astype(np.float32)


def _range_times(sde: SDE, sigma_range, eps: float) -> tuple[float, float]:
    """The times at noise levels sigma / alpha = hi and lo, clipped to [eps, T]."""
    lo, hi = (float(v) for v in sigma_range)
    if not 0.0 < lo < hi:
        raise ValueError(f"sigma_range must be (lo, hi) with 0 < lo < hi, got {sigma_range}")
    lam_T, lam_eps = _log_snr(sde, sde.T), _log_snr(sde, eps)
    lam = np.clip(-np.log([hi, lo]), lam_T, lam_eps)
    if lam[0] >= lam[1]:
        raise ValueError(f"sigma_range={tuple(sigma_range)} lies outside the SDE's noise levels "
                         f"[{np.exp(-lam_eps):.3g}, {np.exp(-lam_T):.3g}]")
    t_start = sde.T if lam[0] <= lam_T else float(_t_from_log_snr(sde, lam[:1])[0])
    t_end = eps if lam[1] >= lam_eps else float(_t_from_log_snr(sde, lam[1:])[0])
    return t_start, t_end


def _log_snr(sde: SDE, t: float) -> float:
    return float(sde.log_snr(jnp.asarray([t], jnp.float32))[0])


def _t_from_log_snr(sde: SDE, lam: np.ndarray) -> np.ndarray:
    return np.asarray(sde.t_from_log_snr(jnp.asarray(lam, jnp.float32)), np.float64)


@register_grid("uniform")
def uniform(sde: SDE, n: int, t_start: float, t_end: float) -> np.ndarray:
    return np.linspace(t_start, t_end, n + 1)


@register_grid("quadratic")
def quadratic(sde: SDE, n: int, t_start: float, t_end: float) -> np.ndarray:
    return t_end + (t_start - t_end) * np.linspace(1.0, 0.0, n + 1) ** 2


@register_grid("logsnr")
def logsnr(sde: SDE, n: int, t_start: float, t_end: float) -> np.ndarray:
    lam = np.linspace(_log_snr(sde, t_start), _log_snr(sde, t_end), n + 1)
    return _t_from_log_snr(sde, lam)


@register_grid("karras")
def karras(sde: SDE, n: int, t_start: float, t_end: float, rho: float = 7.0) -> np.ndarray:
    s_max, s_min = np.exp(-_log_snr(sde, t_start)), np.exp(-_log_snr(sde, t_end))
    ramp = np.linspace(0.0, 1.0, n + 1)
    sig = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    return _t_from_log_snr(sde, -np.log(sig))


# The reference clock of the 'vp_*' grids: the published VP SDE (beta 0.1..20, unit-scale data).
_VP = VPSDE()


def _vp_clock(sde: SDE, n: int, t_start: float, t_end: float, power: float,
              scale: float = 1.0) -> np.ndarray:
    """Points spaced as t^power of the VP SDE's time between the VP times of the noise levels
    at t_start and t_end, carried to `sde` through the noise level sigma / alpha. With a data
    scale s, VP's clock runs on the noise relative to the data, sigma / (alpha s): data s
    times wider get every step at an s times higher noise level."""
    shift = float(np.log(scale))  # log-SNR of the noise relative to the data: lambda + log s
    lam = np.array([_log_snr(sde, t_start), _log_snr(sde, t_end)]) + shift
    t_vp = _t_from_log_snr(_VP, lam)  # beyond VP's top (e.g. VE 1348) this is t > 1
    t_grid = t_vp[1] + (t_vp[0] - t_vp[1]) * np.linspace(1.0, 0.0, n + 1) ** power
    lam_grid = np.asarray(_VP.log_snr(jnp.asarray(t_grid, jnp.float32)), np.float64)
    return _t_from_log_snr(sde, lam_grid - shift)


@register_grid("vp_uniform")
def vp_uniform(sde: SDE, n: int, t_start: float, t_end: float, scale: float = 1.0) -> np.ndarray:
    """The VP SDE's 'uniform' grid on any SDE (the same noise levels, relative to the data)."""
    return _vp_clock(sde, n, t_start, t_end, 1.0, scale)


@register_grid("vp_quadratic")
def vp_quadratic(sde: SDE, n: int, t_start: float, t_end: float,
                 scale: float = 1.0) -> np.ndarray:
    """The VP SDE's 'quadratic' grid on any SDE (the same noise levels, relative to the data)."""
    return _vp_clock(sde, n, t_start, t_end, 2.0, scale)


# The grids whose points depend on the data's scale (get_time_grid's data_scale).
SCALED_GRIDS = ("vp_uniform", "vp_quadratic")


def check_data_scale(data_scale: float | None) -> float:
    """data_scale as a float (None: 1, unit-scale data), or one clear error."""
    if data_scale is None:
        return 1.0
    scale = float(data_scale)
    if not (np.isfinite(scale) and scale > 0.0):
        raise ValueError(f"data_scale must be a finite number > 0 (the data's spread, 1 for "
                         f"unit-scale data), got {data_scale!r}")
    return scale
