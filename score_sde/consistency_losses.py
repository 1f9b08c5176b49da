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
target_ema, weighting ('uniform' | 'ict'), start_levels / max_levels (CT's s0 / s1), P_mean,
P_std (CT's level distribution), init_from_teacher, teacher_config.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from score_sde import sde_lib
from score_sde.losses import Batch, TrainState, ema_decay, ema_update
from score_sde.models import consistency as cm
from score_sde.models import utils as mutils
from score_sde.sde_lib import batch_mul

Array = jax.Array
Distance = Callable[[Array, Array], Array]  # (a, b) -> per-example distance (B,)
Denoiser = Callable[[Array, Array], Array]  # D(x, sigma) in EDM variables (alpha = 1)
DISTANCES = ("l2", "pseudo_huber", "lpips")
SOLVERS = ("heun", "euler", "dpm_solver++1")  # euler on x_edm is DPM-Solver++(1) (= DDIM)
WEIGHTINGS = ("uniform", "ict")


@flax.struct.dataclass
class ConsistencyState(TrainState):
    """A CD run's state: the TrainState plus the target network and the teacher's weights."""

    target_params: Any
    teacher_params: Any


def with_cd_fields(state: TrainState) -> ConsistencyState:
    """A fresh CD state: target and teacher start as copies of the parameters (the distill
    mode then puts the teacher's weights into params, EMA, target and teacher)."""
    fields = {f: getattr(state, f) for f in ("step", "params", "opt_state", "ema_params", "rng")}
    return ConsistencyState(**fields, target_params=jax.tree.map(jnp.copy, state.params),
                            teacher_params=jax.tree.map(jnp.copy, state.params))


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


def edm_denoiser(sde: sde_lib.SDE, x0_hat: Callable[[Array, Array], Array]) -> Denoiser:
    """D(x_edm, sigma) = x0_hat(alpha x_edm, t(sigma)) of a model on any SDE: EDM's variables
    x_edm = x / alpha at sigma = sigma(t) / alpha(t) (sigma (B,)), in which the probability-flow
    ODE is dx/dsigma = (x - D) / sigma."""

    def denoise(x: Array, sigma: Array) -> Array:
        if isinstance(sde, sde_lib.EDMSDE):
            return x0_hat(x, sigma)
        t = sde.t_from_log_snr(-jnp.log(sigma))
        alpha = sde.marginal_coeffs(t)[0]
        return x0_hat(batch_mul(alpha, x), t)

    return denoise


def ode_step(denoiser: Denoiser, x: Array, s_from: Array, s_to: Array,
             solver: str = "heun") -> Array:
    """One step of dx/dsigma = (x - D(x, sigma)) / sigma from s_from to s_to (both (B,), > 0).

    'heun': EDM's second-order step (2 evaluations); 'euler' / 'dpm_solver++1':
    x (s_to / s_from) + (1 - s_to / s_from) D, which is also DPM-Solver++'s first-order step.
    """
    d = batch_mul(1.0 / s_from, x - denoiser(x, s_from))
    x_euler = x + batch_mul(s_to - s_from, d)
    if solver in ("euler", "dpm_solver++1"):
        return x_euler
    if solver != "heun":
        raise ValueError(f"config.consistency.teacher_solver={solver!r} is not known; choose "
                         f"one of {SOLVERS}")
    d_next = batch_mul(1.0 / s_to, x_euler - denoiser(x_euler, s_to))
    return x + batch_mul(s_to - s_from, 0.5 * (d + d_next))


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
    param = cm.from_config(config, _student_sde(config))
    sig = jnp.asarray(cm.karras_sigmas(int(c.num_levels), param.sigma_min,
                                       float(config.model.sigma_max), float(c.rho)), jnp.float32)
    distance = _distance(config)
    solver = str(c.get("teacher_solver", "heun")).lower()
    if solver not in SOLVERS:
        raise ValueError(f"config.consistency.teacher_solver={solver!r} is not known; choose "
                         f"one of {SOLVERS}")
    weighting = str(c.get("weighting", "uniform")).lower()
    _weight(weighting, sig[:1], sig[1:2])  # checks the name now
    num_classes = int(config.model.get("num_classes", 0) or 0)
    teacher_continuous = bool(teacher_config.training.get("continuous", True))

    def loss_fn(rng, params, state, batch):
        x = batch["image"]
        n_rng, z_rng, drop_rng = jax.random.split(rng, 3)
        y = _labels(batch, num_classes)
        n = jax.random.randint(n_rng, (x.shape[0],), 0, sig.shape[0] - 1)
        x0_hat = mutils.get_denoiser_fn(teacher_sde, teacher_model, state.teacher_params,
                                        continuous=teacher_continuous, labels=y)
        denoiser = edm_denoiser(teacher_sde, x0_hat)
        student, target = cd_outputs(
            cm.get_consistency_fn(param, model, params, True, drop_rng, y),
            cm.get_consistency_fn(param, model, state.target_params, True, drop_rng, y),
            lambda v, a, b: ode_step(denoiser, v, a, b, solver),
            x, jax.random.normal(z_rng, x.shape), sig[n], sig[n + 1])
        return jnp.mean(_weight(weighting, sig[n], sig[n + 1]) * distance(student, target))

    return loss_fn


def get_ct_loss_fn(config, model) -> LossFn:
    """`loss(rng, params, state, batch)` of improved consistency training (module doc)."""
    c = _section(config)
    param = cm.from_config(config, _student_sde(config))
    s0, s1 = int(c.start_levels), int(c.max_levels)
    if not 2 <= s0 <= s1:
        raise ValueError(f"config.consistency.start_levels={s0} and max_levels={s1} must satisfy "
                         "2 <= start_levels <= max_levels")
    total, rho = int(config.training.n_iters), float(c.rho)
    s_min, s_max = param.sigma_min, float(config.model.sigma_max)
    distance = _distance(config)
    weighting = str(c.get("weighting", "ict")).lower()
    _weight(weighting, jnp.zeros(1), jnp.ones(1))  # checks the name now
    P_mean, P_std = float(c.P_mean), float(c.P_std)
    num_classes = int(config.model.get("num_classes", 0) or 0)

    def loss_fn(rng, params, state, batch):
        x = batch["image"]
        n_rng, z_rng, drop_rng = jax.random.split(rng, 3)
        y = _labels(batch, num_classes)
        levels = ct_num_levels(state.step, total, s0, s1)
        sig = cm.karras_sigmas_traced(levels, s1 + 1, s_min, s_max, rho)
        logits = lognormal_level_logits(sig, levels, P_mean, P_std)
        n = jax.random.categorical(n_rng, logits, shape=(x.shape[0],))
        s_cur, s_next = sig[n], sig[n + 1]
        z = jax.random.normal(z_rng, x.shape)
        f = cm.get_consistency_fn(param, model, params, True, drop_rng, y)
        target = jax.lax.stop_gradient(f(x + batch_mul(s_cur, z), s_cur))
        d = distance(f(x + batch_mul(s_next, z), s_next), target)
        return jnp.mean(_weight(weighting, s_cur, s_next) * d)

    return loss_fn


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
                teacher: tuple | None = None
                ) -> Callable[[TrainState, Batch], tuple[TrainState, Array]]:
    """One training step of a consistency model: `step(state, batch) -> (state, loss)`.

    teacher: (teacher_config, teacher_sde, teacher_model) for CD (its weights are
    state.teacher_params); None for CT. Updates the parameters (optax), the sampling EMA
    (config.model.ema_rate / ema_warmup) and, for CD, the target network (target_ema).
    """
    kind = cm.objective(config)
    if kind == "cd":
        if teacher is None:
            raise ValueError("consistency distillation (config.training.objective='cd') needs a "
                             "teacher: run --mode distill --teacher_workdir=DIR")
        loss_fn = get_cd_loss_fn(config, model, *teacher)
        mu = float(_section(config).target_ema)
    elif kind == "ct":
        loss_fn, mu = get_ct_loss_fn(config, model), None
    else:
        raise ValueError(f"config.training.objective={kind!r} is not a consistency objective")
    rate, warmup = float(config.model.ema_rate), bool(config.model.get("ema_warmup", False))

    def step_fn(state, batch):
        rng, step_rng = jax.random.split(state.rng)
        loss, grads = jax.value_and_grad(loss_fn, argnums=1)(step_rng, state.params, state,
                                                              batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng,
                            ema_params=ema_update(state.ema_params, params,
                                                  ema_decay(rate, state.step, warmup)))
        if mu is not None:
            new = new.replace(target_params=ema_update(state.target_params, params, mu))
        return new, loss

    return step_fn


def levels_of(config) -> np.ndarray:
    """The CD discretisation of a config (ascending sigmas), for reports and tests."""
    c = _section(config)
    return cm.karras_sigmas(int(c.num_levels), float(config.model.sigma_min),
                            float(config.model.sigma_max), float(c.rho))
