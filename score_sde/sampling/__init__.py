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
import jax.numpy as jnp
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
           "sampler_options_from_config", "class_labels_from_config"]


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


# Config fields read per method: (sampler option, config.sampling field). A field that is
# absent or None leaves the sampler's own default.
_CONFIG_FIELDS = {
    "pc": [("predictor", "predictor"), ("corrector", "corrector"), ("snr", "snr"),
           ("n_steps_each", "n_steps_each"), ("probability_flow", "probability_flow"),
           ("noise_removal", "noise_removal"), ("n_steps", "n_steps"), ("grid", "grid"),
           ("sigma_range", "sigma_range")],
    "ode": [("solver", "ode_solver"), ("rtol", "rtol"), ("atol", "atol"),
            ("noise_removal", "noise_removal"), ("nfe", "nfe")],
    "ddim": [("nfe", "nfe"), ("eta", "eta"), ("grid", "grid"), ("sigma_range", "sigma_range")],
    "heun": [("nfe", "nfe"), ("grid", "grid"), ("sigma_range", "sigma_range"),
             ("S_churn", "S_churn"), ("S_tmin", "S_tmin"), ("S_tmax", "S_tmax"),
             ("S_noise", "S_noise")],
    "dpm_solver++": [("nfe", "nfe"), ("grid", "grid"), ("sigma_range", "sigma_range"),
                     ("order", "order")],
}


# config.sampling fields beyond the published ones, with their types. `add_config_fields`
# declares them unset (None: the sampler's own default) so that the command line can set them,
# e.g. --config.sampling.nfe=20.
NEW_CONFIG_FIELDS = {"nfe": int, "grid": str, "eta": float, "ode_solver": str, "rtol": float,
                     "atol": float, "n_steps": int, "S_churn": float, "S_tmin": float,
                     "S_tmax": float, "S_noise": float, "order": int,
                     "sigma_range": tuple, "guidance_scale": float, "class_labels": tuple}


def add_config_fields(sampling: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Declare NEW_CONFIG_FIELDS on a config's sampling section (those it does not set)."""
    for name, kind in NEW_CONFIG_FIELDS.items():
        if name not in sampling:
            sampling[name] = ml_collections.config_dict.placeholder(kind)
    return sampling


def sampler_options_from_config(config, method: str | None = None) -> tuple[str, dict]:
    """(method, options) of config.sampling (method: config.sampling.method unless given).

    Published fields: method, predictor, corrector, snr, n_steps_each, noise_removal,
    probability_flow. New ones (NEW_CONFIG_FIELDS): nfe, grid, eta, ode_solver, rtol, atol,
    n_steps, S_churn, S_tmin, S_tmax, S_noise, order, sigma_range. Absent or None: the
    sampler's default.
    """
    method = str(method or config.sampling.method).lower()
    if method not in _CONFIG_FIELDS:
        raise ValueError(f"config.sampling.method={method!r} is not a known "
                         f"sampler; choose one of {sorted(_CONFIG_FIELDS)}")
    s = config.sampling
    options = {opt: s.get(field) for opt, field in _CONFIG_FIELDS[method]}
    options = {k: v for k, v in options.items() if v is not None}
    for name in ("predictor", "corrector"):  # the published configs spell them in any case
        if name in options:
            options[name] = str(options[name]).lower()
    return method, options


def class_labels_from_config(config, n: int,
                             every_class_by_default: bool = True) -> jax.Array | None:
    """Labels of n samples of a class-conditional model: config.sampling.class_labels, cycled.

    Without class_labels: every class in turn, or None (the null label: unconditional) when
    every_class_by_default is False. None for an unconditional model.
    """
    num_classes = int(config.model.get("num_classes", 0) or 0)
    if num_classes <= 0:
        return None
    chosen = tuple(config.sampling.get("class_labels", ()) or ())
    if not chosen and not every_class_by_default:
        return None
    chosen = chosen or tuple(range(num_classes))
    bad = [c for c in chosen if not 0 <= int(c) < num_classes]
    if bad:
        raise ValueError(f"config.sampling.class_labels has {bad}, outside 0..{num_classes - 1}")
    return jnp.asarray(chosen, jnp.int32)[jnp.arange(n) % len(chosen)]


def get_sampler_from_config(config, sde: SDE, shape: tuple[int, ...], eps: float,
                            sharding=None) -> Sampler:
    """The sampler named by config.sampling.method, with its options from config.sampling."""
    method, options = sampler_options_from_config(config)
    return get_sampler(method, sde, shape, eps=eps, sharding=sharding, **options)
