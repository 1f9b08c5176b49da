"""Samplers of score-based models: `get_sampler(name, sde, shape, **options)`.

Every sampler is built once (static grids, solver choice) and returns
`sample(rng, score_fn) -> (x, nfe)`: jit-compatible, loops on device, nfe = the true number of
score calls. The fixed-step ones also take `sample(rng, score_fn, project)`, a hook
`project(rng, x, x_mean, t) -> (x, x_mean)` applied after the prior draw and every update
(inpainting and colorization merge their observation with it: score_sde.controllable).
Methods: 'pc' (predictor-corrector), 'ode' (probability flow, diffrax), 'ddim', 'heun' (EDM),
'dpm_solver++', 'unipc' (UniPC, orders 1-3), 'ipndm' (iPNDM, orders 1-4), 'learned' (a
multistep with per-model weights) and 'consistency'
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
`learn_coefficients` fits the weights (and optionally the times) of the 'learned' multistep
solver to a model (score_sde.sampling.coefficient_optimizer); 'learned' with
coefficients='file:PATH' samples with them (score_sde.sampling.learned).
`analytic_first_step_rule` decides the analytic first step from the data's mean and spread
(score_sde.sampling.first_step; config.sampling.analytic_first_step='auto').

From a config: `get_sampler_from_config(config, sde, shape, eps)` and the config.sampling
fields of every sampler (score_sde.sampling.from_config, re-exported here).
"""

from __future__ import annotations

# The sampler modules register their samplers when imported (register_sampler).
from score_sde.sampling import consistency, fast, ipndm, learned, ode, pc, unipc  # noqa: F401
from score_sde.sampling.coefficient_optimizer import CoefficientResult, learn_coefficients
from score_sde.sampling.correctors import register_corrector
from score_sde.sampling.first_step import analytic_first_step_rule
from score_sde.sampling.from_config import (
    DATA_RANGE_GRID,
    DATA_RANGE_SAMPLERS,
    DRIVER_FIELDS,
    NEW_CONFIG_FIELDS,
    PUBLISHED_FIELDS,
    add_config_fields,
    class_labels_from_config,
    config_data_scale,
    config_noise_range,
    data_range_fits,
    get_sampler_from_config,
    new_config_fields,
    sampler_options_from_config,
    with_config_data_scale,
)
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

__all__ = [
    # building a sampler, adding one
    "MERGE_SAMPLERS", "SAMPLERS", "Sampler", "SamplerSpec", "get_sampler", "get_time_grid",
    "image_noise_range", "register_corrector", "register_grid", "register_predictor",
    "register_sampler",
    # the grid optimiser, the learned solver, the analytic first step's rule
    "CoefficientResult", "GridResult", "analytic_first_step_rule", "learn_coefficients",
    "optimize_grid",
    # from a config (score_sde.sampling.from_config)
    "DATA_RANGE_GRID", "DATA_RANGE_SAMPLERS", "DRIVER_FIELDS", "NEW_CONFIG_FIELDS",
    "PUBLISHED_FIELDS", "add_config_fields", "class_labels_from_config", "config_data_scale",
    "config_noise_range", "data_range_fits", "get_sampler_from_config", "new_config_fields",
    "sampler_options_from_config", "with_config_data_scale",
]
