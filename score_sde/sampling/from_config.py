"""config.sampling -> a sampler: the config adapter of the samplers (score_sde.sampling).

A sampler's keyword options are its config fields (register_sampler): `new_config_fields` lists
those beyond the published score_sde ones and `add_config_fields` declares them on a config, so
the command line can set them (--config.sampling.nfe=20). `get_sampler_from_config` builds the
sampler of config.sampling.method with those options, adding what the config's data says: the
data's spread (data_scale) and, with config.sampling.data_noise_range, its noise range.
`class_labels_from_config` gives the labels a class-conditional model samples.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

# The sampler modules register their samplers when imported: the fields below are theirs.
from score_sde.sampling import consistency, fast, ipndm, learned, ode, pc, unipc  # noqa: F401
from score_sde.sampling.first_step import resolve_analytic_first_step
from score_sde.sampling.grid_files import PREFIX as GRID_FILE_PREFIX
from score_sde.sampling.grid_files import check_sampler as check_grid_file_sampler
from score_sde.sampling.grids import image_noise_range
from score_sde.sampling.registry import SAMPLERS, Sampler, get_sampler
from score_sde.sde_lib import SDE

__all__ = ["DATA_RANGE_GRID", "DATA_RANGE_SAMPLERS", "DRIVER_FIELDS", "NEW_CONFIG_FIELDS",
           "PUBLISHED_FIELDS", "add_config_fields", "class_labels_from_config",
           "config_data_scale", "config_noise_range", "data_range_fits",
           "get_sampler_from_config", "new_config_fields", "sampler_options_from_config",
           "with_config_data_scale"]

# config.sampling fields of the published score_sde configs (set by every shipped config).
PUBLISHED_FIELDS = ("method", "predictor", "corrector", "snr", "n_steps_each", "noise_removal",
                    "probability_flow")
# Fields read by the drivers rather than by a sampler.
DRIVER_FIELDS = {"guidance_scale": float, "class_labels": tuple, "data_noise_range": bool,
                 "learn_steps": int, "learn_times": bool}  # the last two: optimize_grid's


def new_config_fields() -> dict[str, type]:
    """config.sampling fields beyond the published ones, with their types.

    Every registered sampler's config fields (its keyword options, see register_sampler) plus
    the drivers' guidance_scale, class_labels and data_noise_range. `add_config_fields`
    declares them unset (None: the sampler's own default) so that the command line can set
    them, e.g. --config.sampling.nfe=20.
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


# --------------------------------------------------------------------------- the data's scale


def config_noise_range(config) -> tuple[float, float] | None:
    """grids.image_noise_range of config.data (centered, image_size, num_channels), or None
    when the config does not describe image data."""
    data = config.get("data")
    fields = ("centered", "image_size", "num_channels")
    if data is None or any(data.get(f) is None for f in fields):
        return None
    return image_noise_range(bool(data.centered), int(data.image_size), int(data.num_channels))


def config_data_scale(config, data_stats: dict | None = None) -> float | None:
    """The data's spread for the samplers' data_scale (grids.check_data_scale): 1 for image
    data in [-1, 1] (config.data.centered; the scale VP's published grids were tuned on), 0.5
    for [0, 1]; else the spread a run measured on its training data (data_stats,
    score_sde.data_stats) if given; else None (the samplers then estimate it from the score:
    sampling.scale). The config's range comes first: on the trained digits model (pixels far
    from isotropic) the unit grid beats the measured spread (0.54) for DPM-Solver++ and UniPC
    at 5-20 NFE, UniPC's 6.5-6.7 digits FD the best of all (benchmarks/pages/data_scale.md)."""
    data = config.get("data")
    if data is not None and data.get("centered") is not None:
        return 1.0 if bool(data.centered) else 0.5
    if data_stats is not None and data_stats.get("spread") is not None:
        return float(data_stats["spread"])
    return None


def with_config_data_scale(config, method: str, options: dict,
                           data_stats: dict | None = None) -> dict:
    """options with data_scale = config_data_scale(config, data_stats) where the sampler takes
    one and neither options nor ts give it (the default grid placed for the config's data)."""
    if ("data_scale" in SAMPLERS.lookup(method).options and options.get("data_scale") is None
            and options.get("ts") is None):
        options = {**options, "data_scale": config_data_scale(config, data_stats)}
    return options


# With config.sampling.data_noise_range = True (off by default), these samplers take the noise
# range of the config's image data when config.sampling.sigma_range is unset, spaced in log-SNR
# unless config.sampling.grid is set: the best choice with a known range on Gaussian mixtures,
# not on the trained digits model (benchmarks/pages/digits_default_grids.md).
DATA_RANGE_SAMPLERS = ("dpm_solver++", "ipndm")
DATA_RANGE_GRID = "logsnr"


def data_range_fits(sde: SDE, sigma_range: tuple[float, float], eps: float,
                    n_steps: int) -> bool:
    """Whether a grid of n_steps steps over the SDE's [eps, T] can cover sigma_range.

    A grid over a noise range (grids.get_time_grid) spends one step on each end of the SDE's
    noise levels that lies beyond the range (T -> hi, lo -> eps) and needs at least one inside.
    Noise levels are sigma / alpha. A range outside the SDE's levels is a ValueError.
    """
    lam_T, lam_eps = (float(sde.log_snr(jnp.asarray([t], jnp.float32))[0])
                      for t in (sde.T, eps))
    lo, hi = (float(v) for v in sigma_range)
    lam_hi, lam_lo = np.clip(-np.log([hi, lo]), lam_T, lam_eps)
    if lam_hi >= lam_lo:
        raise ValueError(f"config.sampling.data_noise_range: the data's noise range "
                         f"{(lo, hi)} lies outside the SDE's noise levels "
                         f"[{np.exp(-lam_eps):.3g}, {np.exp(-lam_T):.3g}]; unset it")
    ends = int(lam_hi > lam_T) + int(lam_lo < lam_eps)
    return n_steps >= ends + 1


def _data_range(config, method: str, options: dict, overrides: dict) -> tuple | None:
    """The data's noise range when config.sampling.data_noise_range asks for it and nothing
    chose the grid already (sigma_range, ts, a grid file or a grid override), else None."""
    if not config.sampling.get("data_noise_range") or method not in DATA_RANGE_SAMPLERS:
        return None
    if str(options.get("grid", "")).startswith(GRID_FILE_PREFIX):
        return None
    if options.get("sigma_range") is not None or {"ts", "grid", "sigma_range"} & set(overrides):
        return None
    return config_noise_range(config)


def get_sampler_from_config(config, sde: SDE, shape: tuple[int, ...], eps: float,
                            sharding=None, data_stats: dict | None = None,
                            **overrides) -> Sampler:
    """The sampler named by config.sampling.method, with its options from config.sampling.

    overrides: options that win over the config's (e.g. ts= from SDEdit). Without a
    config.sampling.data_scale, the fixed-step samplers get config_data_scale (the spread in
    data_stats, a run's stored statistics, when given). With
    config.sampling.data_noise_range, the samplers of DATA_RANGE_SAMPLERS (unless
    config.sampling.sigma_range, a grid file, or a ts / grid / sigma_range override chose the
    grid) sample over the data's noise range (config_noise_range), on the 'logsnr' grid unless
    config.sampling.grid names one. One case keeps their default grid over the SDE's whole
    range: a budget too small for the range's end steps (data_range_fits is False).
    config.sampling.analytic_first_step = 'auto' decides it from data_stats (the run's stored
    statistics, score_sde.data_stats) by first_step.analytic_first_step_rule (off without
    them).
    """
    method, options = sampler_options_from_config(config)
    options = with_config_data_scale(config, method, {**options, **overrides}, data_stats)
    moments = None if data_stats is None else (data_stats["mean"], data_stats["spread"])
    options = resolve_analytic_first_step(options, method, sde, moments)
    if str(options.get("grid", "")).startswith(GRID_FILE_PREFIX) and options.get("ts") is None:
        check_grid_file_sampler(options["grid"][len(GRID_FILE_PREFIX):], method)  # one sampler's
    sample = get_sampler(method, sde, shape, eps=eps, sharding=sharding, **options)
    derived = _data_range(config, method, options, overrides)
    if derived is None or not data_range_fits(sde, derived, eps, len(sample.ts) - 1):
        return sample
    ranged = {"grid": DATA_RANGE_GRID, **options, "sigma_range": derived}
    return get_sampler(method, sde, shape, eps=eps, sharding=sharding, **ranged)
