"""The learned solver's weights (and optionally its times), fitted to one model.

`learn_coefficients(score_fn, sde, shape, nfe=...)` fits the data-prediction weights W of the
learned multistep solver (sampling/learned) to the grid optimiser's teacher (its adaptive
solves from shape[0] prior draws, `grid_optimizer.Teacher`; S4S, Frankel et al. 2025, and
AMED-Solver, Zhou et al. 2024, fit a few-step solver to teacher solves the same way):

1. Start: DPM-Solver++ of `order` on dpm_solver++'s default grid (or on `ts`, e.g. an
   optimised grid) written as a multistep, W0 (`learned.start_solver`); `init` may replace W0
   as the starting point (the tests start from a deliberately wrong one).
2. The draws are split: the first (1 - holdout) fitted, the rest held out for the judge.
3. Adam on W = W0 + delta (and, with learn_times, on the grid's log-SNR increments as the grid
   refinement does: `grid_optimizer.times_from_logits`, W0 then follows the times) lowers the
   mean square distance of the solver's output to the teacher's endpoint on minibatches of
   `batch` fitted draws; after each pass over them the loss on all of them is measured, the
   best parameters kept, and a pass that does not improve halves the step size and restarts
   from the best (`patience` in a row end it). path_weight > 0 adds the mean square distance of
   the solver's states at its grid times to the teacher's there (the teacher must be saved at
   those times): per-step matching, which makes the weights of every step identifiable.
4. Judge (`grid_optimizer.judge`, a sign test) on the held-out draws: the learned solver is
   kept only if it beats DPM-Solver++ of `order` on the same grid significantly; otherwise the
   result is that solver's own weights, so it is never worse on draws it was not fitted to.

Cost: the teacher (shared with the grid optimiser), at most `steps` gradients through nfe score
calls on `batch` draws, and two solver runs on the held-out draws.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from score_sde.sampling import learned, steps
from score_sde.sampling.common import step_score
from score_sde.sampling.grid_optimizer import (
    Teacher,
    _Clock,
    grid_logits,
    judge,
    solve_teacher,
    times_from_logits,
)
from score_sde.sde_lib import SDE, ScoreFn


@dataclasses.dataclass(frozen=True)
class CoefficientResult:
    """Learned solver weights and how they do.

    times (n + 1,), weights (n, MAX_ORDER): the solver kept (learned or the start's);
    start_times, start_weights: DPM-Solver++ of `order` as a multistep; errors: RMS distance
    to the teacher's endpoint of 'default' (the start) and 'learned' on the 'fitted' and the
    'held_out' draws; wins: held-out draws on which the learned solver beat the start;
    chosen: 'learned' or 'default'; steps_taken: Adam steps; seconds: per phase;
    analytic_first_step, data_scale: the first step's (the sampler's options of the same name).
    """

    times: np.ndarray
    weights: np.ndarray
    start_times: np.ndarray
    start_weights: np.ndarray
    errors: dict[str, dict[str, float]]
    wins: int
    held_out: int
    chosen: str
    nfe: int
    order: int
    teacher_nfe: int
    steps_taken: int
    seconds: dict[str, float]
    analytic_first_step: bool = False
    data_scale: float | None = None

    @property
    def error_before(self) -> float:
        return self.errors["held_out"]["default"]

    @property
    def error_after(self) -> float:
        return self.errors["held_out"][self.chosen]

    def record(self) -> dict[str, Any]:
        """What a coefficient file keeps besides times and weights."""
        return {"order": self.order, "errors": self.errors, "wins": self.wins,
                "held_out": self.held_out, "chosen": self.chosen,
                "start_times": [float(t) for t in self.start_times],
                "start_weights": np.asarray(self.start_weights).tolist(),
                "teacher_nfe": self.teacher_nfe, "steps_taken": self.steps_taken,
                "seconds": self.seconds, "analytic_first_step": self.analytic_first_step,
                "data_scale": self.data_scale}


def learn_coefficients(score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...], *, nfe: int,
                       order: int = 2, eps: float = 1e-3, ts=None, init=None,
                       teacher: Teacher | None = None, seed: int = 0,
                       learn_times: bool = False, steps: int = 300,
                       learning_rate: float = 0.01, batch: int = 64, holdout: float = 0.25,
                       patience: int = 4, path_weight: float = 0.0,
                       analytic_first_step: bool = False,
                       data_scale: float | None = None) -> CoefficientResult:
    """The learned solver at nfe score calls for score_fn (module docstring).

    analytic_first_step: its first data prediction is that of N(0, data_scale^2 I)
    (common.gaussian_score): nfe + 1 steps, and the start is DPM-Solver++ with that step.

    shape: the prior draws (B, *data_shape) of the teacher; teacher: a `solve_teacher` result
    of those draws to reuse (else one is solved from PRNGKey(seed)); ts: the start grid
    (default: dpm_solver++'s); init: starting weights (n, K) instead of DPM-Solver++'s.
    """
    clock = _Clock()
    if teacher is None:
        teacher = solve_teacher(score_fn, sde, shape, eps=eps, seed=seed)
    elif list(teacher.key["shape"]) != list(shape) or not np.isclose(teacher.key["eps"], eps):
        raise ValueError(f"learn_coefficients: the teacher was solved for draws of shape "
                         f"{teacher.key['shape']} to eps={teacher.key['eps']}, not {list(shape)} "
                         f"to eps={eps}; solve_teacher with this shape and eps")
    clock("teacher")
    first = {"analytic_first_step": bool(analytic_first_step), "data_scale": data_scale}
    start_times, start_w = learned.start_solver(sde, shape, nfe, order, eps, ts, **first)
    n_hold = int(round(shape[0] * holdout))
    if not 1 <= n_hold < shape[0]:
        raise ValueError(f"learn_coefficients: holdout={holdout} of {shape[0]} draws leaves "
                         f"{n_hold} held out; give more draws or another holdout")
    score_at = step_score(sde, score_fn, first["analytic_first_step"], data_scale)
    fit = _Fit(sde, score_at, teacher, shape, start_times, start_w, order, learn_times,
               path_weight if path_weight > 0 else 0.0)
    params = fit.initial(start_w if init is None else np.asarray(init, np.float64), start_w)
    fitted, held = np.arange(shape[0] - n_hold), np.arange(shape[0] - n_hold, shape[0])
    params, taken = fit.descend(params, fitted, steps, learning_rate, batch, patience)
    clock("fit")
    times, weights = fit.solver(params)
    per_draw = {"default": fit.per_draw(start_times, start_w),
                "learned": fit.per_draw(times, weights)}
    chosen = judge({k: v[held] for k, v in per_draw.items()})
    clock("judge")
    errors = {part: {k: float(np.sqrt(np.mean(v[idx]))) for k, v in per_draw.items()}
              for part, idx in (("fitted", fitted), ("held_out", held))}
    wins = int(np.sum(per_draw["learned"][held] < per_draw["default"][held]))
    if chosen == "default":
        times, weights = start_times, start_w
    return CoefficientResult(times, _padded(weights), start_times, _padded(start_w), errors,
                             wins, n_hold, chosen, nfe, order, teacher.nfe, taken, clock.seconds,
                             first["analytic_first_step"], data_scale)


class _Fit:
    """The learner's loss on the teacher's draws and its descent (module docstring, 3)."""

    def __init__(self, sde, score_at, teacher, shape, start_times, start_w, order, learn_times,
                 path_weight):
        self.sde, self.score_at, self.order = sde, score_at, order
        self.learn_times, self.path_weight = learn_times, path_weight
        self.start_times = np.asarray(start_times, np.float64)
        self.start_w = jnp.asarray(_padded(start_w), jnp.float32)
        self.t_end = jnp.asarray(self.start_times[-1], jnp.float32)
        as_batch = lambda v: jnp.asarray(v.reshape(shape), jnp.float32)  # noqa: E731
        self.x_T, self.target = as_batch(teacher.xs[0]), as_batch(teacher.xs[-1])
        self.path = None
        if path_weight:
            if learn_times:
                raise ValueError("learn_coefficients: path_weight needs fixed times; unset "
                                 "learn_times")
            idx = [int(np.argmin(np.abs(teacher.times - t))) for t in self.start_times[1:-1]]
            if not np.allclose(teacher.times[idx], self.start_times[1:-1], rtol=1e-5):
                raise ValueError("learn_coefficients: path_weight needs the teacher's states "
                                 "at the grid's times; solve the teacher on them")
            self.path = jnp.asarray(teacher.xs[idx].reshape((len(idx), *shape)), jnp.float32)
        self._loss = jax.jit(self.loss)
        self._endpoint = jax.jit(lambda ts, w, x_T: self._solve(ts, w, x_T)[0])
        self._loss_grad = jax.jit(jax.value_and_grad(self.loss))

    def initial(self, init_w, start_w) -> dict:
        params = {"delta": jnp.asarray(_padded(init_w) - _padded(start_w), jnp.float32)}
        if self.learn_times:
            params["logits"] = grid_logits(self.sde, self.start_times)
        return params

    def times_and_weights(self, params):
        if not self.learn_times:
            return jnp.asarray(self.start_times, jnp.float32), self.start_w + params["delta"]
        ts = times_from_logits(self.sde, params["logits"], self.t_end)
        alpha, sigma = self.sde.marginal_coeffs(ts)
        coeffs = steps.exponential_coeffs(alpha, sigma, jnp.log(alpha) - jnp.log(sigma),
                                          self.order, lower_order_final=True)
        return ts, _padded(steps.exponential_history_weights(coeffs)) + params["delta"]

    def run(self, params, x_T, with_path: bool = False):
        return self._solve(*self.times_and_weights(params), x_T, with_path)

    def _solve(self, ts, w, x_T, with_path: bool = False):
        """(endpoint, states or None) of the solver on the times ts with weights w from x_T."""
        w_x, w_m = learned.multistep_weights(*self.sde.marginal_coeffs(ts), w)
        return learned.run_multistep(self.sde, self.score_at, x_T, ts, w_x, w_m,
                                     return_path=with_path)

    def loss(self, params, x_T, target, path):
        x, states = self.run(params, x_T, with_path=path is not None)
        value = jnp.mean((x - target) ** 2)
        if path is not None:
            value = value + self.path_weight * jnp.mean((states[:-1] - path) ** 2)
        return value

    def _part(self, idx):
        path = None if self.path is None else self.path[:, idx]
        return self.x_T[idx], self.target[idx], path

    def descend(self, params, fitted, n_steps, learning_rate, batch, patience):
        """Adam with restarts from the best parameters (module docstring, 3)."""
        batch = max(1, min(batch, len(fitted)))
        parts = [self._part(fitted[s:s + batch])
                 for s in range(0, len(fitted) - batch + 1, batch)]
        everything = self._part(fitted)
        adam = optax.scale_by_adam()
        state, scale = adam.init(params), learning_rate
        best = (float(self._loss(params, *everything)), params)
        stale, taken = 0, 0
        for taken in range(1, n_steps + 1):
            _, grad = self._loss_grad(params, *parts[(taken - 1) % len(parts)])
            updates, state = adam.update(grad, state)
            params = optax.apply_updates(params, jax.tree.map(lambda u: -scale * u, updates))  # noqa: B023
            if taken % len(parts) and taken != n_steps:
                continue
            value = float(self._loss(params, *everything))
            if np.isfinite(value) and value < best[0] * (1 - 1e-4):
                best, stale = (value, params), 0
                continue
            stale += 1
            if stale >= patience:
                break
            params, scale = best[1], scale / 2
            state = adam.init(params)
        return best[1], taken

    def solver(self, params) -> tuple[np.ndarray, np.ndarray]:
        ts, w = self.times_and_weights(params)
        return np.asarray(ts, np.float64), np.asarray(w, np.float64)

    def per_draw(self, times, weights) -> np.ndarray:
        """Per draw: the mean square distance to the teacher's endpoint, (B,)."""
        x = self._endpoint(jnp.asarray(times, jnp.float32),
                           jnp.asarray(_padded(np.asarray(weights)), jnp.float32), self.x_T)
        diff = np.asarray(x, np.float64) - np.asarray(self.target, np.float64)
        return np.mean(diff.reshape(diff.shape[0], -1) ** 2, axis=1)


def _padded(w):
    """W (n, K) as (n, MAX_ORDER), zero columns added (numpy or JAX)."""
    xp = jnp if isinstance(w, jax.Array) else np
    pad = steps.MAX_ORDER - w.shape[1]
    return xp.pad(w, ((0, 0), (0, pad))) if pad else w
