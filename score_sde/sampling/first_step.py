"""Whether to take the analytic first step, decided from the data's mean and spread.

The analytic first step (`common.gaussian_score`, Zhou et al. 2024) replaces the model's first
score by that of N(0, s^2 I), s = data_scale. Its error, for data of mean mu (per coordinate)
and spread s (per-coordinate standard deviation, sqrt(trace Cov / D)), at the top of the grid
where the noise level is rho_T = sigma_T / alpha_T: the perturbed data's score is that of
N(mu, (s^2 + rho_T^2) I) up to the data's departure from it, and the guess's score
-x / (alpha^2 (s^2 + rho_T^2)) (|x| / alpha ~ rho_T per coordinate) differs from it by

  the mean it leaves out:   alpha mu / (alpha^2 (s^2 + rho^2)), relative |mu| / rho_T;
  the covariance:           per eigenvalue c of Cov, (s^2 - c) / (c + rho^2), relative at most
                            (s / rho_T)^2 (and so are the higher moments' effects);

so the relative error of the guessed score is e = |mu|_rms / rho_T + (s / rho_T)^2.

The rule (`analytic_first_step_rule`): take the step when e <= MAX_RELATIVE_ERROR and the
sampler and budget are ones where the measured gain held (benchmarks/pages/
analytic_first_step.md): DPM-Solver++ and UniPC at nfe <= 10, iPNDM at nfe <= 6 (its fixed
Adams-Bashforth weights carry the guess's error into later steps: worse from 8 NFE wherever
the mean is not 0). Measured e: the 64-D and 2-D mixtures on VP 0.003 (gains), digits in
[-1, 1] on VP about 0.004 (gains at 5-6 NFE), the 2-D mixture grown 20x 0.14 (losses).

`resolve_analytic_first_step` turns a config's analytic_first_step (True, False, 'auto',
'true', 'false') into the sampler's bool; 'auto' applies the rule when the training data's
statistics are given, and is off otherwise.
"""

from __future__ import annotations

import inspect

import jax.numpy as jnp
import numpy as np

from score_sde.sampling import grid_files
from score_sde.sampling.registry import SAMPLERS
from score_sde.sde_lib import SDE

MAX_RELATIVE_ERROR = 0.01  # the guessed score's relative error e at the top of the grid
MAX_NFE = {"dpm_solver++": 10, "unipc": 10, "ipndm": 6}  # where the measured gain held
AUTO = "auto"


def guess_error(mean, spread: float, rho_T: float) -> float:
    """e = |mean|_rms / rho_T + (spread / rho_T)^2 (module docstring); mean per coordinate (any
    shape) or a number."""
    mean_rms = float(np.sqrt(np.mean(np.square(np.asarray(mean, np.float64)))))
    return mean_rms / float(rho_T) + (float(spread) / float(rho_T)) ** 2


def analytic_first_step_rule(mean, spread: float, rho_T: float, sampler: str,
                             nfe: int) -> bool:
    """Whether `sampler` at `nfe` score calls should take the analytic first step on data of
    this mean (per coordinate, or a number) and spread, under the top noise rho_T."""
    if sampler not in MAX_NFE or int(nfe) > MAX_NFE[sampler]:
        return False
    return guess_error(mean, spread, rho_T) <= MAX_RELATIVE_ERROR


def top_noise(sde: SDE) -> float:
    """rho_T = sigma / alpha at t = T (VP 152, EDM 80, VE sigma_max)."""
    alpha, sigma = sde.marginal_coeffs(jnp.asarray([sde.T], jnp.float32))
    return float(sigma[0] / alpha[0])


def resolve_analytic_first_step(options: dict, method: str, sde: SDE,
                                data_stats: tuple | None = None) -> dict:
    """options with analytic_first_step as a bool: 'auto' (any case) applies the rule to
    data_stats = (mean, spread) of the training data (off without them, or on a stored grid
    file, which calls the model at every step); 'true' / 'false' strings become bools."""
    value = options.get("analytic_first_step")
    if not isinstance(value, str):
        return options
    word = value.strip().lower()
    if word not in (AUTO, "true", "false"):
        raise ValueError(f"config.sampling.analytic_first_step must be True, False or 'auto', "
                         f"got {value!r}")
    if word != AUTO:
        return {**options, "analytic_first_step": word == "true"}
    on = data_stats is not None and not grid_files.is_grid_file(options.get("grid"))
    if on:
        nfe = options.get("nfe") or _default_nfe(method)
        on = nfe is not None and analytic_first_step_rule(*data_stats, top_noise(sde), method,
                                                          nfe)
    return {**options, "analytic_first_step": bool(on)}


def _default_nfe(method: str) -> int | None:
    param = inspect.signature(SAMPLERS.lookup(method).factory).parameters.get("nfe")
    return None if param is None else param.default
