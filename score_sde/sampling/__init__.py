"""Samplers of score-based models: `get_sampler(name, sde, shape, **options)`.

Every sampler is built once (static grids, solver choice) and returns
`sample(rng, score_fn) -> (x, nfe)`: jit-compatible, loops on device, nfe = the true number of
score calls. The fixed-step ones also take `sample(rng, score_fn, project)`, a hook
`project(rng, x, x_mean, t) -> (x, x_mean)` applied after the prior draw and every update
(inpainting and colorization merge their observation with it: score_sde.controllable).
Methods: 'pc' (predictor-corrector), 'ode' (probability flow, diffrax), 'ddim', 'heun' (EDM),
'dpm_solver++', 'unipc' (UniPC, orders 1-3), 'ipndm' (iPNDM, orders 1-4) and 'consistency'
(a consistency model's f(x, t) in place of score_fn: score_sde.sampling.consistency). Pass
`sharding=` (e.g. NamedSharding(mesh, P('data'))) to lay the batch out over devices. A new
sampler is one function decorated with `@register_sampler(name, merges=...)`: its keyword
options become config.sampling fields (score_sde.sampling.registry).

For other JAX code (every fixed-step sampler: pc, ddim, heun, dpm_solver++, unipc, ipndm):
  * `ts=` at build time: an explicit strictly decreasing array of times inside [eps, T]; it
    overrides grid / nfe / n_steps (the sampler takes len(ts) - 1 steps; heun takes the len(ts)
    points as its grid plus the last step to noise 0). Too short for the order, not strictly
    decreasing or outside [eps, T]: a ValueError. The built sampler's times are `sample.ts`.
  * `sample(rng, score_fn, x_init=x)`: start from the given state x at ts[0] (shape = the
    sampler's shape) instead of a prior draw; the sampler's own noise is the same either way.
  * `sample(rng, score_fn, return_path=True) -> (x, nfe, path)`: path[k] is the state at ts[k]
    (the noise-free x_mean where the sampler returns that, e.g. PC with noise_removal), shape
    (len(ts), *shape) with path[0] the start and path[-1] == x; heun's is (len(ts) + 1, *shape),
    its last state at noise 0.
The adaptive 'ode' sampler takes all three too: it solves from ts[0] to ts[-1] (a fixed-step
solve, nfe given, steps to each time of ts) and its path is the solution at ts (default
ts = [T, eps]).

`optimize_grid` fits a sampler's time grid to a model (score_sde.sampling.grid_optimizer);
grid='file:PATH' samples on such a stored grid (score_sde.sampling.grid_files).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

# The sampler modules register their samplers when imported (register_sampler).
from score_sde.sampling import consistency, fast, ipndm, ode, pc, unipc  # noqa: F401
from score_sde.sampling.correctors import register_corrector
from score_sde.sampling.grid_files import PREFIX as GRID_FILE_PREFIX
from score_sde.sampling.grid_files import check_sampler as check_grid_file_sampler
from score_sde.sampling.grid_optimizer import GridResult, optimize_grid
from score_sde.sampling.grids import get_time_grid, image_noise_range, register_grid
from score_sde.sampling.predictors import register_predictor
from score_sde.sampling.registry import (
    MERGE_SAMPLERS,
    SAMPLERS,
    Sampler,
    SamplerSpec,
    get_sampler,
    register_sampler,
)
from score_sde.sde_lib import SDE

__all__ = ["MERGE_SAMPLERS", "NEW_CONFIG_FIELDS", "SAMPLERS", "Sampler", "SamplerSpec",
           "add_config_fields", "class_labels_from_config", "get_sampler",
           "get_sampler_from_config", "get_time_grid", "new_config_fields", "register_corrector",
           "register_grid", "register_predictor", "register_sampler",
           "sampler_options_from_config", "with_config_data_scale"]
__all__ += ["GridResult", "optimize_grid"]  # the grid optimiser

# config.sampling fields of the published score_sde configs (set by every shipped config).
PUBLISHED_FIELDS = ("method", "predictor", "corrector", "snr", "n_steps_each", "noise_removal",
                    "probability_flow")
# Fields read by the drivers rather than by a sampler.
DRIVER_FIELDS = {"guidance_scale": float, "class_labels": tuple, "data_noise_range": bool}


def new_config_fields() -> dict[str, type]:
    """config.sampling fields beyond the published ones, with their types.

    Every registered sampler's config fields (its keyword options, see register_sampler) plus
    the drivers' guidance_scale and class_labels. `add_config_fields` declares them unset (None:
    the sampler's own default) so that the command line can set them, e.g.
    --config.sampling.nfe=20.
    """
    fields: dict[str, type] = {}
    for name, spec in SAMPLERS.items():
        for field, kind in spec.field_types.items():
            if fields.setdefault(field, kind) is not kind:
                raise ValueError(f"config.sampling.{field} holds a {fields[field].__name__} for "
                                 f"one sampler and a {kind.__name__} for {name!r}: rename one")
    return {f: k for f, k in {**fields, **DRIVER_FIELDS}.items() if f not in PUBLISHED_FIELDS}


# The fields of the built-in samplers (add_config_fields also declares later registrations').
NEW_CONFIG_FIELDS = new_config_fields()


def add_config_fields(sampling: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Declare `new_config_fields()` on a config's sampling section (those it does not set)."""
    for name, kind in new_config_fields().items():
        if name not in sampling:
            sampling[name] = ml_collections.config_dict.placeholder(kind)
    return sampling


def sampler_options_from_config(config, method: str | None = None) -> tuple[str, dict]:
    """(method, options) of config.sampling (method: config.sampling.method unless given).

    Each option of the sampler is read from its config field (register_sampler): the published
    method, predictor, corrector, snr, n_steps_each, noise_removal, probability_flow and the
    new ones (NEW_CONFIG_FIELDS: nfe, grid, eta, ode_solver, ...). Absent or None: the
    sampler's default.
    """
    method = str(method or config.sampling.method).lower()
    spec = SAMPLERS.lookup(method, field="config.sampling.method")
    s = config.sampling
    options = {opt: s.get(field) for opt, field in spec.config_fields.items()}
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


# With config.sampling.data_noise_range = True, the samplers that, when
# config.sampling.sigma_range is unset, take the noise range of the config's image data
# (grids.image_noise_range), spaced in log-SNR unless config.sampling.grid is set: the best
# measured with a known range on Gaussian mixtures (benchmarks/pages/grids_transfer.md).
# Off by default: on the trained digits VP model it was worse at every NFE
# (DPM-Solver++ 10 NFE digits FD 8.49 against 6.80 on its default grid; adaptive ODE 6.45;
# benchmarks/results/digits_grids_vp_defaults.json).
DATA_RANGE_SAMPLERS = ("dpm_solver++", "ipndm")
DATA_RANGE_GRID = "logsnr"


def config_noise_range(config) -> tuple[float, float] | None:
    """grids.image_noise_range of config.data (centered, image_size, num_channels), or None
    when the config does not describe image data."""
    data = config.get("data")
    fields = ("centered", "image_size", "num_channels")
    if data is None or any(data.get(f) is None for f in fields):
        return None
    return image_noise_range(bool(data.centered), int(data.image_size), int(data.num_channels))


def config_data_scale(config) -> float | None:
    """The data's spread for the samplers' data_scale (grids.check_data_scale): 1 for image
    data in [-1, 1] (config.data.centered; the scale VP's published grids were tuned on), 0.5
    for [0, 1]; None when the config does not say."""
    data = config.get("data")
    if data is None or data.get("centered") is None:
        return None
    return 1.0 if bool(data.centered) else 0.5


def with_config_data_scale(config, method: str, options: dict) -> dict:
    """options with data_scale = config_data_scale(config) where the sampler takes one and
    neither options nor ts give it (the default grid placed for the config's data)."""
    if ("data_scale" in SAMPLERS.lookup(method).options and options.get("data_scale") is None
            and options.get("ts") is None):
        options = {**options, "data_scale": config_data_scale(config)}
    return options


def get_sampler_from_config(config, sde: SDE, shape: tuple[int, ...], eps: float,
                            sharding=None, **overrides) -> Sampler:
    """The sampler named by config.sampling.method, with its options from config.sampling.

    overrides: options that win over the config's (e.g. ts= from SDEdit). Without a
    config.sampling.data_scale, the fixed-step samplers get config_data_scale. With
    config.sampling.data_noise_range, the samplers of DATA_RANGE_SAMPLERS without a
    config.sampling.sigma_range (and no ts, grid or sigma_range override) get the data's noise
    range (config_noise_range) and, without a config.sampling.grid, the 'logsnr' grid over it,
    unless the budget is too small to spend steps outside the range; then, as in Python, their
    default grid over the SDE's range.
    """
    method, options = sampler_options_from_config(config)
    options = with_config_data_scale(config, method, {**options, **overrides})
    from_file = str(options.get("grid", "")).startswith(GRID_FILE_PREFIX)
    if from_file and options.get("ts") is None:
        check_grid_file_sampler(options["grid"][len(GRID_FILE_PREFIX):], method)  # one sampler's
    wanted = bool(config.sampling.get("data_noise_range") or False)
    derived = (config_noise_range(config)
               if wanted and method in DATA_RANGE_SAMPLERS and not from_file else None)
    if (derived is not None and options.get("sigma_range") is None
            and not {"ts", "grid", "sigma_range"} & set(overrides)):
        ranged = {"grid": DATA_RANGE_GRID, **options, "sigma_range": derived}
        try:
            return get_sampler(method, sde, shape, eps=eps, sharding=sharding, **ranged)
        except ValueError:  # e.g. too few steps for the range's own end steps
            pass
    return get_sampler(method, sde, shape, eps=eps, sharding=sharding, **options)
