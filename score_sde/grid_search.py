"""`--mode optimize_grid`: a sampler's time grid fitted to a trained model, beside its weights.

Restores the EMA weights of the newest checkpoint (or config.eval.ckpt), runs
`score_sde.sampling.optimize_grid` for config.sampling.method at config.sampling.nfe (its other
sampling options as set) on config.eval.batch_size prior draws (seed config.seed), and writes
workdir/grids/<method>_nfe<nfe>_step<step>.json (times, sampler, nfe, SDE, checkpoint step, the
sampler's error against the teacher solve before and after). The last line printed is the
override that samples on it: --config.sampling.grid=file:PATH.

With config.sampling.method = 'learned' it fits the learned solver's weights instead
(`score_sde.sampling.learn_coefficients`: DPM-Solver++ of config.sampling.order as the start,
config.sampling.learn_steps Adam steps, and the times too with config.sampling.learn_times; a
quarter of the draws held out for the judge) and writes workdir/grids/learned_nfe<nfe>_step
<step>.json, a coefficient file; the last line's override is then
--config.sampling.coefficients=file:PATH.

The teacher solve (the slow part, and the same for every sampler and NFE) is kept beside the
grids as workdir/grids/teacher_step<step>_draws<B>_seed<seed>.npz and reused by later runs
with the same checkpoint, draws, seed and solver tolerances.
"""

from __future__ import annotations

from etils.epath import Path

from score_sde import inference, models, storage
from score_sde import logging_utils as log
from score_sde.sampling import (
    grid_files,
    learn_coefficients,
    optimize_grid,
    sampler_options_from_config,
    with_config_data_scale,
)
from score_sde.sampling.grid_optimizer import Teacher, solve_teacher, teacher_key

GRID_DIR = "grids"


def grid_path(workdir: str | Path, method: str, nfe: int, step: int) -> Path:
    """Where the grid of `method` at `nfe` for the checkpoint at `step` is written."""
    name = method.replace("+", "p")
    return storage.path(workdir) / GRID_DIR / f"{name}_nfe{nfe}_step{step}.json"


def teacher_path(workdir: str | Path, step: int, draws: int, seed: int) -> Path:
    """Where the teacher solve of `draws` prior draws of `seed` for the checkpoint is kept."""
    return storage.path(workdir) / GRID_DIR / f"teacher_step{step}_draws{draws}_seed{seed}.npz"


def cached_teacher(score_fn, sde, shape, eps: float, seed: int, step: int,
                   workdir: str | Path) -> Teacher:
    """The stored teacher of these draws and checkpoint, or a new solve (then stored)."""
    path = teacher_path(workdir, step, shape[0], seed)
    teacher = Teacher.load(path, teacher_key(sde, shape, eps, seed, checkpoint_step=step))
    if teacher is not None:
        log.say(f"Reusing the teacher solve {path}")
        return teacher
    teacher = solve_teacher(score_fn, sde, shape, eps=eps, seed=seed, checkpoint_step=step)
    if log.is_main():
        teacher.save(path)
    log.say(f"Teacher solve ({teacher.nfe} score calls) kept in {path}")
    return teacher


def optimize(config, workdir: str | Path) -> Path:
    """Fit the grid of config.sampling's sampler to the checkpoint; returns the file's path."""
    restorer = inference.Restorer(config, workdir)
    try:
        state, step = restorer.restore(restorer.chosen_step())
    finally:
        restorer.close()
    method, options = sampler_options_from_config(config)
    options = with_config_data_scale(config, method, options)
    nfe = options.pop("nfe", None)
    shape = models.input_shape(config, int(config.eval.batch_size))
    score_fn = inference.model_score_fn(config, restorer.sde, restorer.model, state.ema_params)
    log.say(f"Optimising the {method} grid at nfe={nfe or 'default'} for step {step} on "
            f"{shape[0]} prior draws")
    teacher = cached_teacher(score_fn, restorer.sde, shape, restorer.eps, int(config.seed),
                             step, workdir)
    if method == "learned":
        return _learn(config, workdir, restorer, score_fn, shape, teacher, step, options, nfe)
    result = optimize_grid(score_fn, restorer.sde, shape, method=method, nfe=nfe,
                           eps=restorer.eps, teacher=teacher, options=options)
    out = grid_path(workdir, method, result.nfe, step)
    if log.is_main():
        grid_files.write_grid_file(out, result.times, sampler=method, nfe=result.nfe,
                                   sde=restorer.sde, eps=restorer.eps, checkpoint_step=step,
                                   **result.record())
    log.say(f"{method} at nfe={result.nfe}: error against the teacher solve "
            f"{result.cost_before:.4g} on the default grid -> {result.cost_after:.4g} "
            f"({result.chosen}); sample with "
            f"--config.sampling.method={method} --config.sampling.nfe={result.nfe} "
            f"--config.sampling.grid=file:{out}")
    return out


def _learn(config, workdir, restorer, score_fn, shape, teacher, step, options, nfe) -> Path:
    """The learned solver's coefficient file for the checkpoint (module docstring)."""
    nfe = int(nfe or 10)
    extra = {k: v for k, v in (("steps", config.sampling.get("learn_steps")),
                               ("learn_times", config.sampling.get("learn_times")))
             if v is not None}
    result = learn_coefficients(score_fn, restorer.sde, shape, nfe=nfe,
                                order=int(options.get("order", 2)), eps=restorer.eps,
                                teacher=teacher,
                                analytic_first_step=options.get("analytic_first_step") is True,
                                data_scale=options.get("data_scale"), **extra)
    out = grid_path(workdir, "learned", nfe, step)
    if log.is_main():
        grid_files.write_coefficient_file(out, result.times, result.weights, nfe=nfe,
                                          sde=restorer.sde, eps=restorer.eps,
                                          data_shape=shape[1:], checkpoint_step=step,
                                          **result.record())
    log.say(f"learned at nfe={nfe}: held-out error against the teacher solve "
            f"{result.error_before:.4g} with DPM-Solver++ -> {result.error_after:.4g} "
            f"({result.chosen}, better on {result.wins} of {result.held_out} held-out draws); "
            f"sample with --config.sampling.method=learned --config.sampling.nfe={nfe} "
            f"--config.sampling.coefficients=file:{out}")
    return out
