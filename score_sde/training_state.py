"""The state of a trained network and its one optimiser step, shared by every objective.

`TrainState` (step, params, opt_state, ema_params, rng) serves score models and classifiers;
`ConsistencyState` adds consistency distillation's target network and teacher weights.
`build_step_fn` is the one train / eval step: the objectives (losses.py, consistency_losses.py)
give it a loss and, where they keep more state than the EMA, an `after_update` hook.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from score_sde.models import consistency as consistency_models

Array = jax.Array
Batch = dict[str, Array]
# loss(rng, params, batch, state) -> (loss, aux): the state gives e.g. a teacher's weights.
StepLoss = Callable[[Array, Any, Batch, Any], tuple[Array, Any]]
# after_update(old_state, new_state) -> new_state: what an objective updates besides the EMA.
AfterUpdate = Callable[[Any, Any], Any]


@flax.struct.dataclass
class TrainState:
    step: Array
    params: Any
    opt_state: Any
    ema_params: Any
    rng: Array


@flax.struct.dataclass
class ConsistencyState(TrainState):
    """A CD run's state: the TrainState plus the target network and the teacher's weights."""

    target_params: Any
    teacher_params: Any


def get_optimizer(config) -> optax.GradientTransformation:
    """Adam (or RAdam) with linear warm-up to `optim.lr` over `optim.warmup` steps and global-norm
    clipping (none when optim.grad_clip < 0)."""
    optim = config.optim
    name = str(optim.optimizer).lower()
    if name not in ("adam", "radam"):
        raise ValueError(f"config.optim.optimizer={optim.optimizer!r} is not supported; use "
                         "'Adam' or 'RAdam' (the consistency models' published optimizer)")
    warmup = int(optim.warmup)
    lr = optax.linear_schedule(0.0, optim.lr, warmup) if warmup > 0 else optim.lr
    if name == "radam":
        core = optax.chain(optax.radam(lr, b1=optim.beta1, b2=0.999, eps=optim.eps),
                           optax.add_decayed_weights(-float(optim.weight_decay) * optim.lr))
    else:
        core = optax.adamw(lr, b1=optim.beta1, b2=0.999, eps=optim.eps,
                           weight_decay=float(optim.weight_decay))
    if optim.grad_clip >= 0:
        return optax.chain(optax.clip_by_global_norm(optim.grad_clip), core)
    return core


def new_train_state(params, optimizer: optax.GradientTransformation, rng: Array) -> TrainState:
    """Step 0 of `params` (score model or classifier): optimizer state, EMA = params, key.

    The EMA gets buffers of its own, so that a jitted step may donate the whole state.
    """
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params),
                      ema_params=jax.tree.map(jnp.copy, params), rng=rng)


def consistency_state(state: TrainState) -> ConsistencyState:
    """A fresh CD state: target and teacher start as copies of the parameters (the distill
    mode then puts the teacher's weights into params, EMA, target and teacher)."""
    fields = {f: getattr(state, f) for f in ("step", "params", "opt_state", "ema_params", "rng")}
    return ConsistencyState(**fields, target_params=jax.tree.map(jnp.copy, state.params),
                            teacher_params=jax.tree.map(jnp.copy, state.params))


def init_train_state(rng: Array, config, model=None, optimizer=None,
                     kind: str | None = None) -> TrainState:
    """Fresh parameters (EMA starts equal to them), optimizer state and training PRNG key; a
    ConsistencyState for consistency distillation (kind: config.training.objective, 'dsm',
    'cd' or 'ct', unless the caller decided it)."""
    from score_sde import models

    init_rng, state_rng = jax.random.split(rng)
    params = models.init_model(init_rng, config)
    optimizer = optimizer if optimizer is not None else get_optimizer(config)
    state = new_train_state(params, optimizer, state_rng)
    return consistency_state(state) if (kind or consistency_models.objective(config)) == "cd" \
        else state


def ema_update(ema_params, params, rate: float | Array):
    return jax.tree.map(lambda e, p: rate * e + (1.0 - rate) * p, ema_params, params)


def ema_decay(rate: float, step: Array, warmup: bool = False) -> float | Array:
    """The EMA rate at optimizer step `step` (0-based): `rate`, or with warm-up
    min(rate, (1 + step) / (10 + step)).

    A constant rate keeps rate**step of the initial parameters in the average, which a short
    run's samplers notice; the warm-up averages only the parameters that training has produced.
    Long runs end with the same average either way.
    """
    if not warmup:
        return rate
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(rate, (1.0 + step) / (10.0 + step))


def build_step_fn(loss_fn: StepLoss, optimizer: optax.GradientTransformation, train: bool,
                  ema_rate: float, ema_warmup: bool = False,
                  after_update: AfterUpdate | None = None
                  ) -> Callable[[TrainState, Batch], tuple[TrainState, Any]]:
    """The one train/eval step of every trained network (score model, consistency model,
    classifier): `step(state, batch) -> (state, aux)`.

    Training differentiates `loss_fn(rng, params, batch, state) -> (loss, aux)`, applies the
    optimizer, updates the EMA (see `ema_decay`) and then `after_update(old, new)` (e.g. CD's
    target network); evaluation evaluates the EMA parameters and only advances the state's key.
    """

    def step_fn(state: TrainState, batch: Batch) -> tuple[TrainState, Any]:
        rng, step_rng = jax.random.split(state.rng)
        if not train:
            return state.replace(rng=rng), loss_fn(step_rng, state.ema_params, batch, state)[1]
        (_, aux), grads = jax.value_and_grad(loss_fn, argnums=1, has_aux=True)(
            step_rng, state.params, batch, state)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = ema_update(state.ema_params, params, ema_decay(ema_rate, state.step, ema_warmup))
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            ema_params=ema, rng=rng)
        return (new if after_update is None else after_update(state, new)), aux

    return step_fn
