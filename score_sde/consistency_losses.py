"""Consistency distillation (CD, Song et al. 2023) and consistency training (iCT, Song &
Dhariwal 2023): the losses, their training state and one training step.

Both compare the student f_theta at a noisier level sigma_{n+1} with a target at the adjacent
level sigma_n of a Karras grid (models/consistency.py), on the same trajectory:

  CD  x_{n+1} = x + sigma_{n+1} z; the teacher's probability-flow ODE takes one step (Heun, or
      Euler = DPM-Solver++ first order) to x_n; target f_{theta^-}(x_n, sigma_n) with the EMA
      target network theta^- <- mu theta^- + (1 - mu) theta (config.consistency.target_ema);
      N levels fixed; uniform level index; distance l2, pseudo-Huber or LPIPS.
  CT  x_n = x + sigma_n z with the same z (no teacher); target f_{stopgrad(theta)}(x_n, sigma_n);
      pseudo-Huber distance, weight 1 / (sigma_{n+1} - sigma_n), levels drawn from a discretised
      log-normal, and N doubling from s0 to s1 over training (the iCT curriculum).

The state of CD adds the target network and the teacher's parameters (`ConsistencyState`), so a
resumed run continues exactly; the EMA used for sampling is the state's ema_params as for score
models. Student and target share the dropout key (both papers).

config.consistency fields: num_levels (CD's N), rho, distance, lpips_weights, teacher_solver,
target_ema, weighting ('auto' | 'uniform' | 'ict'; 'auto': 'ict' with the pseudo-Huber distance,
else 'uniform', see `weighting_of`), start_levels / max_levels (CT's s0 / s1), P_mean,
P_std (CT's level distribution), init_from_teacher, teacher_config.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from score_sde import sde_lib
from score_sde.models import consistency as consistency_models
from score_sde.models import utils as mutils
from score_sde.sampling import steps
from score_sde.sampling.steps import Denoiser, edm_denoiser
from score_sde.sde_lib import batch_mul
from score_sde.training_state import (  # noqa: F401  (ConsistencyState: importable here too)
    Batch,
    ConsistencyState,
    TrainState,
    build_step_fn,
    ema_update,
)

Array = jax.Array
Distance = Callable[[Array, Array], Array]  # (a, b) -> per-example distance (B,)
DISTANCES = ("l2", "pseudo_huber", "lpips")
SOLVERS = ("heun", "euler", "dpm_solver++1")  # euler on x_edm is DPM-Solver++(1) (= DDIM)
WEIGHTINGS = ("auto", "uniform", "ict")


def _section(config):
    if "consistency" not in config:
        raise ValueError("config.training.objective is 'cd'/'ct' but the config has no "
                         "consistency section; start from configs/digits_cd.py or digits_ct.py")
    return config.consistency


# ------------------------------------------------------------------------------ distances


def pseudo_huber_c(dim: int) -> float:
    """iCT's c = 0.00054 sqrt(d) for data of dimension d (0.03 on CIFAR-10)."""
    return 0.00054 * math.sqrt(dim)


def get_distance(name: str, dim: int, lpips_weights: str = "",
                 centered: bool = True) -> Distance:
    """The per-example distance `name` on data of dimension `dim`: 'l2' (mean squared error,
    CD's published l2), 'pseudo_huber' (sqrt(|a - b|^2 + c^2) - c, c = pseudo_huber_c(dim)) or
    'lpips' (score_sde/lpips.py, images only: the user's weights file lpips_weights =
    config.consistency.lpips_weights; `centered`: data in [-1, 1], else [0, 1])."""
    name = str(name).lower()
    if name == "l2":
        return lambda a, b: jnp.mean(jnp.square(a - b).reshape(a.shape[0], -1), axis=-1)
    if name == "pseudo_huber":
        c = pseudo_huber_c(dim)
        return lambda a, b: jnp.sqrt(
            jnp.sum(jnp.square(a - b).reshape(a.shape[0], -1), axis=-1) + c**2) - c
    if name == "lpips":
        return _lpips(lpips_weights, centered)
    raise ValueError(f"config.consistency.distance={name!r} is not known; choose one of "
                     f"{DISTANCES}")


def _lpips(path: str, centered: bool) -> Distance:
    from score_sde import lpips

    if not path:
        raise ValueError("config.consistency.distance='lpips' needs config.consistency."
                         "lpips_weights: an .npz made by scripts/convert_lpips_weights.py "
                         "(README, Consistency models); or use distance 'pseudo_huber'")
    return lpips.get_lpips_fn(lpips.load_weights(path, "config.consistency.lpips_weights"),
                              centered)


# --------------------------------------------------------------------- the teacher's ODE step


def ode_step(denoiser: Denoiser, x: Array, s_from: Array, s_to: Array,
             solver: str = "heun") -> Array:
    """One step of dx/dsigma = (x - D(x, sigma)) / sigma from s_from to s_to (both (B,), > 0).

    'heun': EDM's second-order step (2 evaluations, steps.heun_step with EDM's rule);
    'euler' / 'dpm_solver++1': x (s_to / s_from) + (1 - s_to / s_from) D, which is also
    DPM-Solver++'s first-order step.
    """
    if solver in ("euler", "dpm_solver++1"):
        return steps.euler_step(x, s_from, s_to, denoiser(x, s_from))
    if solver != "heun":
        raise ValueError(f"config.consistency.teacher_solver={solver!r} is not known; choose "
                         f"one of {SOLVERS}")
    return steps.heun_step(x, s_from, s_to, lambda v: denoiser(v, s_from),
                           lambda v: denoiser(v, s_to), edm_rule=True)


# ---------------------------------------------------------------------------- the levels


def ct_num_levels(step: Array, total_steps: int, s0: int, s1: int) -> Array:
    """iCT's curriculum N(k) = min(s0 2^floor(k / K'), s1) + 1, K' = floor(K / (log2(s1 / s0)
    + 1)) for K = total_steps (int32, traced step)."""
    k_prime = max(int(total_steps // (math.floor(math.log2(s1 / s0)) + 1)), 1)
    doublings = jnp.asarray(step, jnp.int32) // k_prime
    n = jnp.minimum(s0 * 2 ** jnp.minimum(doublings, 30), s1)
    return (n + 1).astype(jnp.int32)


def lognormal_level_logits(sigmas: Array, n: Array, P_mean: float, P_std: float) -> Array:
    """Log-probabilities of the level index i (pairs sigma_i, sigma_{i+1}, i < n - 1):
    p(i) ~ erf((ln sigma_{i+1} - P_mean) / (sqrt 2 P_std)) - erf((ln sigma_i - P_mean) /
    (sqrt 2 P_std)) (iCT); -inf beyond the n - 1 pairs."""
    cdf = jax.scipy.special.erf((jnp.log(sigmas) - P_mean) / (math.sqrt(2.0) * P_std))
    p = cdf[1:] - cdf[:-1]
    valid = jnp.arange(p.shape[0]) < n - 1
    return jnp.where(valid & (p > 0), jnp.log(jnp.maximum(p, 1e-30)), -jnp.inf)


# ------------------------------------------------------------------------------ the losses


def _labels(batch: Batch, num_classes: int) -> Array | None:
    if num_classes <= 0:
        return None
    if "label" not in batch:
        raise ValueError("config.model.num_classes > 0 but the batch has no 'label' entry")
    return batch["label"]


LossFn = Callable[[Array, Any, TrainState, Batch], Array]


def cd_outputs(student: Callable, target: Callable, teacher_step: Callable, x: Array,
               z: Array, s_cur: Array, s_next: Array) -> tuple[Array, Array]:
    """(f_theta(x_{n+1}, s_next), f_target(x_n, s_cur)) of consistency distillation, the target
    without gradient: x_{n+1} = x + s_next z and x_n = teacher_step(x_{n+1}, s_next, s_cur)
    (one ODE step of the teacher, `ode_step`). Levels are per example (B,); on the EDM SDE
    the time is the level."""
    x_next = x + batch_mul(s_next, z)
    x_cur = jax.lax.stop_gradient(teacher_step(x_next, s_next, s_cur))
    return student(x_next, s_next), jax.lax.stop_gradient(target(x_cur, s_cur))


def get_cd_loss_fn(config, model, teacher_config, teacher_sde: sde_lib.SDE,
                   teacher_model) -> LossFn:
    """`loss(rng, params, state, batch)` of consistency distillation (module doc)."""
    c = _section(config)
    param = consistency_models.from_config(config, _student_sde(config))
    sig = jnp.asarray(consistency_models.karras_sigmas(int(c.num_levels), param.sigma_min,
                                       float(config.model.sigma_max), float(c.rho)), jnp.float32)
    distance = _distance(config)
    solver = str(c.get("teacher_solver", "heun")).lower()
    if solver not in SOLVERS:
        raise ValueError(f"config.consistency.teacher_solver={solver!r} is not known; choose "
                         f"one of {SOLVERS}")
    weighting = weighting_of(config)
    num_classes = int(config.model.get("num_classes", 0) or 0)
    teacher_continuous = bool(teacher_config.training.get("continuous", True))

    def loss_fn(rng, params, state, batch):
        x = batch["image"]
        n_rng, z_rng, drop_rng = jax.random.split(rng, 3)
        y = _labels(batch, num_classes)
        n = jax.random.randint(n_rng, (x.shape[0],), 0, sig.shape[0] - 1)
        teacher_score = mutils.get_score_fn(teacher_sde, teacher_model, state.teacher_params,
                                            continuous=teacher_continuous, labels=y)
        denoiser = edm_denoiser(teacher_sde, steps.data_prediction(teacher_sde, teacher_score))
        consistency_fn = consistency_models.get_consistency_fn
        student, target = cd_outputs(
            consistency_fn(param, model, params, True, drop_rng, y),
            consistency_fn(param, model, state.target_params, True, drop_rng, y),
            lambda v, a, b: ode_step(denoiser, v, a, b, solver),
            x, jax.random.normal(z_rng, x.shape), sig[n], sig[n + 1])
        return jnp.mean(_weight(weighting, sig[n], sig[n + 1]) * distance(student, target))

    return loss_fn


def get_ct_loss_fn(config, model) -> LossFn:
    """`loss(rng, params, state, batch)` of improved consistency training (module doc)."""
    c = _section(config)
    param = consistency_models.from_config(config, _student_sde(config))
    s0, s1 = int(c.start_levels), int(c.max_levels)
    if not 2 <= s0 <= s1:
        raise ValueError(f"config.consistency.start_levels={s0} and max_levels={s1} must satisfy "
                         "2 <= start_levels <= max_levels")
    total, rho = int(config.training.n_iters), float(c.rho)
    s_min, s_max = param.sigma_min, float(config.model.sigma_max)
    distance = _distance(config)
    weighting = weighting_of(config)
    P_mean, P_std = float(c.P_mean), float(c.P_std)
    num_classes = int(config.model.get("num_classes", 0) or 0)

    def loss_fn(rng, params, state, batch):
        x = batch["image"]
        n_rng, z_rng, drop_rng = jax.random.split(rng, 3)
        y = _labels(batch, num_classes)
        levels = ct_num_levels(state.step, total, s0, s1)
        sig = consistency_models.karras_sigmas_traced(levels, s1 + 1, s_min, s_max, rho)
        logits = lognormal_level_logits(sig, levels, P_mean, P_std)
        n = jax.random.categorical(n_rng, logits, shape=(x.shape[0],))
        s_cur, s_next = sig[n], sig[n + 1]
        z = jax.random.normal(z_rng, x.shape)
        f = consistency_models.get_consistency_fn(param, model, params, True, drop_rng, y)
        target = jax.lax.stop_gradient(f(x + batch_mul(s_cur, z), s_cur))
        d = distance(f(x + batch_mul(s_next, z), s_next), target)
        return jnp.mean(_weight(weighting, s_cur, s_next) * d)

    return loss_fn


def weighting_of(config) -> str:
    """config.consistency.weighting, checked, with 'auto' resolved: iCT's 1 / (sigma_{n+1} -
    sigma_n) ('ict') for the pseudo-Huber distance, 'uniform' (CD's published l2 / LPIPS) else.

    Why the pair: with c = 0.00054 sqrt(d) far below the distance of adjacent CD levels, the
    pseudo-Huber loss is the unsquared norm, whose per-example gradient has unit size however
    small the difference. Uniformly weighted, the sigma_max pair, where the student starting from
    the teacher is already most consistent, then gives the largest parameter gradient and its
    noise wrecks the one-step map; iCT's weight restores l2's profile (the gradient norms and
    the quality they give are measured in benchmarks/consistency_digits.py)."""
    c = _section(config)
    name = str(c.get("weighting", "auto") or "auto").lower()
    if name not in WEIGHTINGS:
        raise ValueError(f"config.consistency.weighting={name!r} is not known; choose one of "
                         f"{WEIGHTINGS}")
    if name == "auto":
        return "ict" if str(c.distance).lower() == "pseudo_huber" else "uniform"
    return name


def _weight(weighting: str, s_cur: Array, s_next: Array) -> Array:
    if weighting == "uniform":
        return jnp.ones_like(s_cur)
    if weighting == "ict":
        return 1.0 / (s_next - s_cur)
    raise ValueError(f"config.consistency.weighting={weighting!r} is not known; choose one of "
                     f"{WEIGHTINGS}")


def _distance(config) -> Distance:
    d = config.data
    dim = int(d.image_size) ** 2 * int(d.num_channels)
    c = config.consistency
    return get_distance(c.distance, dim, str(c.get("lpips_weights", "") or ""),
                        bool(d.centered))


def _student_sde(config) -> sde_lib.SDE:
    return sde_lib.get_sde(config)[0]


# ------------------------------------------------------------------------------- the step


def get_step_fn(config, model, optimizer: optax.GradientTransformation,
                teacher: tuple | None = None, kind: str | None = None
                ) -> Callable[[TrainState, Batch], tuple[TrainState, Array]]:
    """One training step of a consistency model: `step(state, batch) -> (state, loss)`.

    teacher: (teacher_config, teacher_sde, teacher_model) for CD (its weights are
    state.teacher_params); None for CT. kind: 'cd' or 'ct' (config.training.objective unless
    the caller decided it). Updates the parameters (optax), the sampling EMA
    (config.model.ema_rate / ema_warmup) and, for CD, the target network (target_ema).
    """
    kind = kind or consistency_models.objective(config)
    after_update = None
    if kind == "cd":
        if teacher is None:
            raise ValueError("consistency distillation (config.training.objective='cd') needs a "
                             "teacher: run --mode distill --teacher_workdir=DIR")
        loss_fn = get_cd_loss_fn(config, model, *teacher)
        mu = float(_section(config).target_ema)
        after_update = lambda old, new: new.replace(  # noqa: E731
            target_params=ema_update(old.target_params, new.params, mu))
    elif kind == "ct":
        loss_fn = get_ct_loss_fn(config, model)
    else:
        raise ValueError(f"config.training.objective={kind!r} is not a consistency objective")

    def loss_and_aux(rng, params, batch, state):
        loss = loss_fn(rng, params, state, batch)
        return loss, loss

    return build_step_fn(loss_and_aux, optimizer, True, float(config.model.ema_rate),
                         bool(config.model.get("ema_warmup", False)), after_update)


def __getattr__(name: str):
    if name == "with_cd_fields":
        raise ImportError("consistency_losses.with_cd_fields moved to "
                          "score_sde.training_state.consistency_state")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def levels_of(config) -> np.ndarray:
    """The CD discretisation of a config (ascending sigmas), for reports and tests."""
    c = _section(config)
    return consistency_models.karras_sigmas(int(c.num_levels), float(config.model.sigma_min),
                            float(config.model.sigma_max), float(c.rho))
