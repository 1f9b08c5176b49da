"""Denoising score-matching losses and the score model's training/evaluation step.

Continuous-time DSM (Song et al. 2021, eq. 7) with sigma^2 ("score * std + z") or likelihood
(g^2) weighting, and the discrete SMLD (NCSN) and DDPM losses that the published VE/VP
discrete configs train with. Batches are dicts: 'image' (B, H, W, C) (or clips (B, T, H, W, C))
already scaled to the model's range, and optionally 'label' (B,) int class labels for
class-conditional models.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from score_sde import sde_lib
from score_sde.models import consistency as consistency_models
from score_sde.models import parameterization as param_lib
from score_sde.models import utils as mutils
from score_sde.models.parameterization import Parameterization

# The training state and its step live in training_state; these names stay importable here.
from score_sde.training_state import (  # noqa: F401
    Batch,
    TrainState,
    build_step_fn,
    ema_decay,
    ema_update,
    get_optimizer,
    init_train_state,
    new_train_state,
)
from score_sde.video import loss as video_loss

Array = jax.Array
LossFn = Callable[[Array, Any, Batch], Array]


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


def _loss_keys(rng: Array, discrete: bool) -> tuple[Array, Array, Array, Array]:
    """(t, noise, dropout, class-label) keys. The discrete losses keep the published SMLD/DDPM
    key layout, so that a fixed key gives the same loss as before the parameterisation object."""
    if discrete:
        t_rng, z_rng, drop_rng, label_rng = jax.random.split(rng, 4)
    else:
        noise_rng, drop_rng, label_rng = jax.random.split(rng, 3)
        t_rng, z_rng = jax.random.split(noise_rng)
    return t_rng, z_rng, drop_rng, label_rng


def get_param_loss_fn(param: Parameterization, model, train: bool, reduce_mean: bool = True,
                      weighting: str | None = None, eps: float = 1e-5, num_classes: int = 0,
                      class_dropout: float = 0.0) -> LossFn:
    """Batch-mean of weight(t) |F(x_t) - target|^2, all from the parameterisation `param`.

    t ~ param.sample_t (U(eps, T); the discrete ladder for DDPM/SMLD; log-normal sigma for EDM),
    x_t = alpha x + sigma z with param.coeffs. weighting: 'sigma2' (the published DSM, SMLD and
    DDPM losses), 'likelihood' (g^2, continuous time) or 'edm'; default param's own.
    """
    weighting = weighting or param.default_weighting()
    discrete = isinstance(param, (param_lib.DDPMDiscrete, param_lib.SMLDDiscrete))
    reduce_op = _reduce_op(reduce_mean)

    def loss_fn(rng, params, batch):
        x = batch["image"]
        t_rng, z_rng, drop_rng, label_rng = _loss_keys(rng, discrete)
        y = _class_labels(label_rng, batch, num_classes, class_dropout)
        model_fn = mutils.get_model_fn(model, params, train=train, rng=drop_rng, y=y)
        t = param.sample_t(t_rng, x.shape[0], eps)
        noise = jax.random.normal(z_rng, x.shape)
        alpha, sigma = param.coeffs(t)
        x_t = sde_lib.batch_mul(alpha, x) + sde_lib.batch_mul(sigma, noise)
        error = param.network_output(model_fn, x_t, t) - param.target(x, noise, x_t, t)
        return jnp.mean(reduce_op(jnp.square(error)) * param.loss_weight(t, weighting))

    return loss_fn


def get_loss_fn(config, sde: sde_lib.SDE, model, train: bool) -> LossFn:
    """The loss the config trains with: continuous DSM (sigma^2 or likelihood weighting), SMLD/DDPM
    when not continuous, EDM's for EDM preconditioning (`parameterization.from_config`); for
    clip networks with frame masks or independent frames, video.loss's masked version."""
    consistency_models.refuse_score_use(config, "the denoising loss (config.eval.enable_loss)")
    tr = config.training
    cond = dict(num_classes=int(config.model.get("num_classes", 0)),
                class_dropout=float(tr.get("class_dropout", 0.0)) if train else 0.0)
    if not tr.continuous:
        if tr.likelihood_weighting:
            raise ValueError(
                "config.training.likelihood_weighting needs config.training.continuous=True")
        if not isinstance(sde, (sde_lib.VESDE, sde_lib.VPSDE)):
            raise ValueError(
                f"config.training.continuous=False is not defined for {type(sde).__name__}; "
                "discrete training exists for 'vesde' (SMLD) and 'vpsde' (DDPM)")
    param = param_lib.from_config(config, sde)
    weighting = "likelihood" if tr.likelihood_weighting else param.default_weighting()
    if video_loss.trains_with_masks(config):  # clips with given or independent frames
        return video_loss.get_masked_loss_fn(config, param, model, train, weighting,
                                             eps=float(tr.get("eps", 1e-5)))
    return get_param_loss_fn(param, model, train, reduce_mean=tr.reduce_mean,
                             weighting=weighting, eps=float(tr.get("eps", 1e-5)), **cond)


def get_step_fn(config, sde: sde_lib.SDE, model, optimizer: optax.GradientTransformation,
                train: bool) -> Callable[[TrainState, Batch], tuple[TrainState, Array]]:
    """One pure, jittable step: `step_fn(state, batch) -> (state, loss)`.

    Training updates parameters, optimizer state and EMA (config.model.ema_rate; warm-up with
    config.model.ema_warmup, see `ema_decay`). Evaluation computes the loss of the EMA
    parameters and only advances the state's PRNG key.
    """
    loss_fn = get_loss_fn(config, sde, model, train)

    def loss_and_aux(rng, params, batch, state):
        loss = loss_fn(rng, params, batch)
        return loss, loss

    return build_step_fn(loss_and_aux, optimizer, train, float(config.model.ema_rate),
                         bool(config.model.get("ema_warmup", False)))
