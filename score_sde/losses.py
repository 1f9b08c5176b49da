"""Denoising score-matching losses, the optimizer, and one training/evaluation step.

Continuous-time DSM (Song et al. 2021, eq. 7) with sigma^2 ("score * std + z") or likelihood
(g^2) weighting, and the discrete SMLD (NCSN) and DDPM losses that the published VE/VP
discrete configs train with. Batches are dicts: 'image' (B, H, W, C) already scaled to the
model's range, and optionally 'label' (B,) int class labels for class-conditional models.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from score_sde import sde_lib
from score_sde.models import utils as mutils

Array = jax.Array
Batch = dict[str, Array]
LossFn = Callable[[Array, Any, Batch], Array]


@flax.struct.dataclass
class TrainState:
    step: Array
    params: Any
    opt_state: Any
    ema_params: Any
    rng: Array


def get_optimizer(config) -> optax.GradientTransformation:
    """Adam with linear warm-up to `optim.lr` over `optim.warmup` steps and global-norm clipping."""
    optim = config.optim
    if str(optim.optimizer).lower() != "adam":
        raise ValueError(f"config.optim.optimizer={optim.optimizer!r} is not supported; use 'Adam'")
    warmup = int(optim.warmup)
    if warmup > 0:
        lr = optax.linear_schedule(0.0, optim.lr, warmup)
    else:
        lr = optim.lr
    adam = optax.adamw(lr, b1=optim.beta1, b2=0.999, eps=optim.eps,
                       weight_decay=float(optim.weight_decay))
    if optim.grad_clip >= 0:
        return optax.chain(optax.clip_by_global_norm(optim.grad_clip), adam)
    return adam


def init_train_state(rng: Array, config, model=None, optimizer=None) -> TrainState:
    """Fresh parameters (EMA starts equal to them), optimizer state and training PRNG key."""
    from score_sde import models

    init_rng, state_rng = jax.random.split(rng)
    params = models.init_model(init_rng, config)
    optimizer = optimizer if optimizer is not None else get_optimizer(config)
    # The EMA gets buffers of its own, so that a jitted step may donate the whole state.
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params),
                      ema_params=jax.tree.map(jnp.copy, params), rng=state_rng)


def _reduce_op(reduce_mean: bool) -> Callable[[Array], Array]:
    op = jnp.mean if reduce_mean else jnp.sum
    return lambda x: op(x.reshape(x.shape[0], -1), axis=-1)


def _class_labels(rng: Array, batch: Batch, num_classes: int, class_dropout: float):
    """Class labels for a conditional model; a fraction is replaced by the null label (CFG)."""
    if num_classes <= 0:
        return None
    if "label" not in batch:
        raise ValueError("config.model.num_classes > 0 but the batch has no 'label' entry")
    labels = batch["label"]
    if class_dropout > 0:
        drop = jax.random.bernoulli(rng, class_dropout, labels.shape)
        labels = jnp.where(drop, num_classes, labels)
    return labels


def dsm_losses(rng: Array, score_fn, x: Array, sde: sde_lib.SDE, reduce_mean: bool = True,
               likelihood_weighting: bool = False, eps: float = 1e-5) -> Array:
    """Per-example continuous DSM losses of `score_fn(x, t)` on data x, shape (B,).

    sigma^2 weighting: |s(x_t, t) sigma_t + z|^2; likelihood weighting: g(t)^2 |s + z / sigma_t|^2,
    with t ~ U(eps, T) (eps keeps sigma_t > 0) and x_t = alpha_t x + sigma_t z.
    """
    reduce_op = _reduce_op(reduce_mean)
    t_rng, z_rng = jax.random.split(rng)
    t = jax.random.uniform(t_rng, (x.shape[0],), minval=eps, maxval=sde.T)
    z = jax.random.normal(z_rng, x.shape)
    mean, std = sde.marginal_prob(x, t)
    score = score_fn(mean + sde_lib.batch_mul(std, z), t)
    if likelihood_weighting:
        g2 = sde.sde(jnp.zeros_like(x), t)[1] ** 2
        return reduce_op(jnp.square(score + sde_lib.batch_mul(1.0 / std, z))) * g2
    return reduce_op(jnp.square(sde_lib.batch_mul(std, score) + z))


def get_sde_loss_fn(sde: sde_lib.SDE, model, train: bool, reduce_mean: bool = True,
                    continuous: bool = True, likelihood_weighting: bool = False,
                    eps: float = 1e-5, num_classes: int = 0,
                    class_dropout: float = 0.0) -> LossFn:
    """Continuous DSM loss of a score network (see `dsm_losses`), averaged over the batch."""

    def loss_fn(rng, params, batch):
        noise_rng, drop_rng, label_rng = jax.random.split(rng, 3)
        labels = _class_labels(label_rng, batch, num_classes, class_dropout)
        score_fn = mutils.get_score_fn(sde, model, params, train=train, continuous=continuous,
                                       rng=drop_rng, labels=labels)
        return jnp.mean(dsm_losses(noise_rng, score_fn, batch["image"], sde, reduce_mean,
                                   likelihood_weighting, eps))

    return loss_fn


def get_smld_loss_fn(vesde: sde_lib.VESDE, model, train: bool, reduce_mean: bool = False,
                     num_classes: int = 0, class_dropout: float = 0.0) -> LossFn:
    """SMLD (NCSN) loss: sigma_i^2-weighted DSM over the discrete noise ladder.

    The network's label is the index into the noise ladder ordered from sigma_max down, as
    in the published NCSN models.
    """
    if not isinstance(vesde, sde_lib.VESDE):
        raise ValueError("the discrete SMLD loss needs config.training.sde='vesde'")
    sigmas = jnp.asarray(vesde.discrete_sigmas[::-1].copy(), jnp.float32)
    reduce_op = _reduce_op(reduce_mean)

    def loss_fn(rng, params, batch):
        x = batch["image"]
        idx_rng, z_rng, drop_rng, label_rng = jax.random.split(rng, 4)
        y = _class_labels(label_rng, batch, num_classes, class_dropout)
        model_fn = mutils.get_model_fn(model, params, train=train, rng=drop_rng, y=y)
        idx = jax.random.randint(idx_rng, (x.shape[0],), 0, vesde.N)
        sigma = sigmas[idx]
        noise = sde_lib.batch_mul(sigma, jax.random.normal(z_rng, x.shape))
        score = model_fn(x + noise, idx)
        target = -sde_lib.batch_mul(1.0 / sigma**2, noise)
        return jnp.mean(reduce_op(jnp.square(score - target)) * sigma**2)

    return loss_fn


def get_ddpm_loss_fn(vpsde: sde_lib.VPSDE, model, train: bool, reduce_mean: bool = True,
                     num_classes: int = 0, class_dropout: float = 0.0) -> LossFn:
    """DDPM loss: the network predicts eps in x_i = sqrt(abar_i) x0 + sqrt(1 - abar_i) eps."""
    if not isinstance(vpsde, sde_lib.VPSDE):
        raise ValueError("the discrete DDPM loss needs config.training.sde='vpsde'")
    alphas_cumprod = np.asarray(vpsde.alphas_cumprod)
    sqrt_ab = jnp.asarray(np.sqrt(alphas_cumprod), jnp.float32)
    sqrt_1m_ab = jnp.asarray(np.sqrt(1.0 - alphas_cumprod), jnp.float32)
    reduce_op = _reduce_op(reduce_mean)

    def loss_fn(rng, params, batch):
        x = batch["image"]
        idx_rng, z_rng, drop_rng, label_rng = jax.random.split(rng, 4)
        y = _class_labels(label_rng, batch, num_classes, class_dropout)
        model_fn = mutils.get_model_fn(model, params, train=train, rng=drop_rng, y=y)
        idx = jax.random.randint(idx_rng, (x.shape[0],), 0, vpsde.N)
        noise = jax.random.normal(z_rng, x.shape)
        perturbed = sde_lib.batch_mul(sqrt_ab[idx], x) + sde_lib.batch_mul(sqrt_1m_ab[idx], noise)
        return jnp.mean(reduce_op(jnp.square(model_fn(perturbed, idx) - noise)))

    return loss_fn


def get_loss_fn(config, sde: sde_lib.SDE, model, train: bool) -> LossFn:
    """The loss the config trains with (continuous DSM, or SMLD/DDPM when not continuous)."""
    tr = config.training
    cond = dict(num_classes=int(config.model.get("num_classes", 0)),
                class_dropout=float(tr.get("class_dropout", 0.0)) if train else 0.0)
    if tr.continuous:
        return get_sde_loss_fn(sde, model, train, reduce_mean=tr.reduce_mean, continuous=True,
                               likelihood_weighting=tr.likelihood_weighting,
                               eps=float(tr.get("eps", 1e-5)), **cond)
    if tr.likelihood_weighting:
        raise ValueError(
            "config.training.likelihood_weighting needs config.training.continuous=True")
    if isinstance(sde, sde_lib.VESDE):
        return get_smld_loss_fn(sde, model, train, reduce_mean=tr.reduce_mean, **cond)
    if isinstance(sde, sde_lib.VPSDE):
        return get_ddpm_loss_fn(sde, model, train, reduce_mean=tr.reduce_mean, **cond)
    raise ValueError(f"config.training.continuous=False is not defined for {type(sde).__name__}; "
                     "discrete training exists for 'vesde' (SMLD) and 'vpsde' (DDPM)")


def ema_update(ema_params, params, rate: float | Array):
    return jax.tree.map(lambda e, p: rate * e + (1.0 - rate) * p, ema_params, params)


def ema_decay(rate: float, step: Array, warmup: bool = False) -> float | Array:
    """The EMA rate at optimizer step `step` (0-based): `rate`, or with warm-up
    min(rate, (1 + step) / (10 + step)).

    A constant rate keeps rate**step of the initial parameters in the average (5% after 3,000
    steps at 0.999), which a short run's samplers notice; the warm-up averages only the
    parameters that training has produced. Long runs end with the same average either way.
    """
    if not warmup:
        return rate
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(rate, (1.0 + step) / (10.0 + step))


def get_step_fn(config, sde: sde_lib.SDE, model, optimizer: optax.GradientTransformation,
                train: bool) -> Callable[[TrainState, Batch], tuple[TrainState, Array]]:
    """One pure, jittable step: `step_fn(state, batch) -> (state, loss)`.

    Training updates parameters, optimizer state and EMA (config.model.ema_rate; warm-up with
    config.model.ema_warmup, see `ema_decay`). Evaluation computes the loss of the EMA
    parameters and only advances the state's PRNG key.
    """
    loss_fn = get_loss_fn(config, sde, model, train)
    ema_rate, ema_warmup = float(config.model.ema_rate), bool(config.model.get("ema_warmup", False))

    def step_fn(state: TrainState, batch: Batch) -> tuple[TrainState, Array]:
        rng, step_rng = jax.random.split(state.rng)
        if not train:
            return state.replace(rng=rng), loss_fn(step_rng, state.ema_params, batch)
        loss, grads = jax.value_and_grad(loss_fn, argnums=1)(step_rng, state.params, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  ema_params=ema_update(state.ema_params, params,
                                                        ema_decay(ema_rate, state.step,
                                                                  ema_warmup)),
                                  rng=rng)
        return new_state, loss

    return step_fn
