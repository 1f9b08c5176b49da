"""Samplers of score-based models: `get_sampler(name, sde, shape, **options)`.

Every sampler is built once (static grids, solver choice) and returns
`sample(rng, score_fn) -> (x, nfe)`: jit-compatible, loops on device, nfe = the true number of
score calls. The fixed-step ones also take `sample(rng, score_fn, project)`, a hook
`project(rng, x, x_mean, t) -> (x, x_mean)` applied after the prior draw and every update
(inpainting and colorization merge their observation with it: score_sde.controllable).
Methods: 'pc' (predictor-corrector), 'ode' (probability flow, diffrax), 'ddim', 'heun' (EDM),
'dpm_solver++'. Pass `sharding=` (e.g. NamedSharding(mesh, P('data'))) to lay the
batch out over devices.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import jax
import ml_collections

from score_sde.sampling.correctors import register_corrector
from score_sde.sampling.fast import ddim_sampler, dpm_solver_pp_sampler, heun_sampler
from score_sde.sampling.grids import get_time_grid, register_grid
from score_sde.sampling.ode import ode_sampler
from score_sde.sampling.pc import pc_sampler
from score_sde.sampling.predictors import register_predictor
from score_sde.sde_lib import SDE, ScoreFn

Sampler = Callable[[jax.Array, ScoreFn], tuple[jax.Array, jax.Array]]

SAMPLERS: dict[str, Callable[..., Sampler]] = {
    "pc": pc_sampler,
    "ode": ode_sampler,
    "ddim": ddim_sampler,
    "heun": heun_sampler,
    "dpm_solver++": dpm_solver_pp_sampler,
}

__all__ = ["SAMPLERS", "add_config_fields", "get_sampler", "get_sampler_from_config",
           "get_time_grid", "register_corrector", "register_grid", "register_predictor",
           "sampler_options_from_config"]


def get_sampler(name: str, sde: SDE, shape: tuple[int, ...], **options) -> Sampler:
    """The sampler `name` for batches of `shape` (batch first); options are its keywords."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler {name!r} is unknown; choose one of {sorted(SAMPLERS)}")
    factory = SAMPLERS[name]
    allowed = [p for p in inspect.signature(factory).parameters if p not in ("sde", "shape")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"sampler {name!r} has no option(s) {unknown}; its options: {allowed}")
    return factory(sde, tuple(shape), **options)


# Config fields read per method: (option name, config.sampling field, default).
_CONFIG_FIELDS = {
    "pc": [("predictor", "predictor", "euler_maruyama"), ("corrector", "corrector", "none"),
           ("snr", "snr", 0.16), ("n_steps_each", "n_steps_each", 1),
           ("probability_flow", "probability_flow", False),
           ("noise_removal", "noise_removal", True), ("n_steps", "n_steps", None),
           ("grid", "grid", "uniform")],
    "ode": [("solver", "ode_solver", "tsit5"), ("rtol", "rtol", 1e-5), ("atol", "atol", 1e-5),
            ("noise_removal", "noise_removal", False), ("nfe", "nfe", None)],
    "ddim": [("nfe", "nfe", 50), ("eta", "eta", 0.0), ("grid", "grid", "uniform")],
    "heun": [("nfe", "nfe", 35), ("grid", "grid", "uniform"), ("S_churn", "S_churn", 0.0),
             ("S_tmin", "S_tmin", 0.0), ("S_tmax", "S_tmax", float("inf")),
             ("S_noise", "S_noise", 1.0)],
    "dpm_solver++": [("nfe", "nfe", 20), ("grid", "grid", "quadratic"), ("order", "order", 2)],
}


# config.sampling fields beyond the published ones, with their types. `add_config_fields`
# declares them unset (None: the sampler's own default) so that the command line can set them,
# e.g. --config.sampling.nfe=20.
NEW_CONFIG_FIELDS = {"nfe": int, "grid": str, "eta": float, "ode_solver": str, "rtol": float,
                     "atol": float, "n_steps": int, "S_churn": float, "S_tmin": float,
                     "S_tmax": float, "S_noise": float, "order": int,
                     "guidance_scale": float, "class_labels": tuple}


def add_config_fields(sampling: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Declare NEW_CONFIG_FIELDS on a config's sampling section (those it does not set)."""
    for name, kind in NEW_CONFIG_FIELDS.items():
        if name not in sampling:
            sampling[name] = ml_collections.config_dict.placeholder(kind)
    return sampling


def sampler_options_from_config(config, method: str | None = None) -> tuple[str, dict]:
    """(method, options) of config.sampling (method: config.sampling.method unless given).

    Published fields: method, predictor, corrector, snr, n_steps_each, noise_removal,
    probability_flow. New ones (NEW_CONFIG_FIELDS; defaults used when absent or None): nfe,
    grid, eta, ode_solver, rtol, atol, n_steps, S_churn, S_tmin, S_tmax, S_noise, order.
    """
    method = str(method or config.sampling.method).lower()
    if method not in _CONFIG_FIELDS:
        raise ValueError(f"config.sampling.method={method!r} is not a known "
                         f"sampler; choose one of {sorted(_CONFIG_FIELDS)}")
    s = config.sampling
    options = {opt: s.get(field, default) for opt, field, default in _CONFIG_FIELDS[method]}
    if method == "pc":
        options["predictor"] = str(options["predictor"]).lower()
        options["corrector"] = str(options["corrector"]).lower()
    return method, {k: v for k, v in options.items() if v is not None}


def get_sampler_from_config(config, sde: SDE, shape: tuple[int, ...], eps: float,
                            sharding=None) -> Sampler:
    """The sampler named by config.sampling.method, with its options from config.sampling."""
    method, options = sampler_options_from_config(config)
    return get_sampler(method, sde, shape, eps=eps, sharding=sharding, **options)
