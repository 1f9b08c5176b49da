"""Training a noise-conditional classifier p_t(y | x_t) for classifier guidance.

The loss is the cross-entropy of the classifier on noisy data x_t = alpha_t x + sigma_t z with
t ~ U(eps, T), the same perturbation the score network sees, so grad_x log p_t(y | x_t) is the
guidance term at every time. The state is `losses.TrainState` (EMA included) and the optimizer
`losses.get_optimizer` on `config.optim`; the network comes from `config.classifier`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from score_sde import losses, sde_lib
from score_sde.models import classifier as cls_models

Array = jax.Array
Batch = dict[str, Array]


def noisy_classification_loss(rng: Array, classifier_fn, batch: Batch, sde: sde_lib.SDE,
                              eps: float = 1e-5) -> tuple[Array, Array]:
    """Mean cross-entropy and accuracy of `classifier_fn(x_t, t)` on batch['label'].

    batch['image'] (B, ...) in the model's range, batch['label'] (B,) ints; t ~ U(eps, T).
    """
    if "label" not in batch:
        raise ValueError("classifier training needs labelled data: the batch has no 'label'")
    x, y = batch["image"], batch["label"]
    t_rng, z_rng = jax.random.split(rng)
    t = jax.random.uniform(t_rng, (x.shape[0],), minval=eps, maxval=sde.T)
    mean, std = sde.marginal_prob(x, t)
    x_t = mean + sde_lib.batch_mul(std, jax.random.normal(z_rng, x.shape))
    logits = classifier_fn(x_t, t)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == y)


def init_classifier_state(rng: Array, config,
                          optimizer: optax.GradientTransformation | None = None
                          ) -> losses.TrainState:
    """Fresh classifier parameters (EMA = params), optimizer state and PRNG key."""
    init_rng, state_rng = jax.random.split(rng)
    params = cls_models.init_classifier(init_rng, config)
    optimizer = optimizer or losses.get_optimizer(config)
    return losses.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                             opt_state=optimizer.init(params), ema_params=params, rng=state_rng)


def get_classifier_step_fn(config, sde: sde_lib.SDE, model,
                           optimizer: optax.GradientTransformation, train: bool = True,
                           eps: float = 1e-5
                           ) -> Callable[[losses.TrainState, Batch], tuple[losses.TrainState,
                                                                           dict[str, Array]]]:
    """Pure, jittable `step(state, batch) -> (state, {'loss', 'accuracy'})`.

    Training updates params, optimizer state and EMA (rate config.classifier.ema_rate, default
    0.999); evaluation scores the EMA parameters and only advances the PRNG key.
    """
    ema_rate = float(config.classifier.get("ema_rate", 0.999))

    def loss_fn(params, rng, batch):
        noise_rng, drop_rng = jax.random.split(rng)
        fn = cls_models.get_classifier_fn(sde, model, params, train=train, rng=drop_rng)
        return noisy_classification_loss(noise_rng, fn, batch, sde, eps)

    def step(state, batch):
        rng, step_rng = jax.random.split(state.rng)
        if not train:
            loss, acc = loss_fn(state.ema_params, step_rng, batch)
            return state.replace(rng=rng), {"loss": loss, "accuracy": acc}
        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, step_rng,
                                                                       batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              ema_params=losses.ema_update(state.ema_params, params, ema_rate),
                              rng=rng)
        return state, {"loss": loss, "accuracy": acc}

    return step
