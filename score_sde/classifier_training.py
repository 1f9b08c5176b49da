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
    """Fresh classifier parameters (EMA = a copy of them), optimizer state and PRNG key."""
    init_rng, state_rng = jax.random.split(rng)
    params = cls_models.init_classifier(init_rng, config)
    return losses.new_train_state(params, optimizer or losses.get_optimizer(config), state_rng)


def get_classifier_step_fn(config, sde: sde_lib.SDE, model,
                           optimizer: optax.GradientTransformation, train: bool = True,
                           eps: float = 1e-5
                           ) -> Callable[[losses.TrainState, Batch], tuple[losses.TrainState,
                                                                           dict[str, Array]]]:
    """Pure, jittable `step(state, batch) -> (state, {'loss', 'accuracy'})`, built by
    `losses.build_step_fn` (EMA rate config.classifier.ema_rate, default 0.999)."""

    def loss_fn(rng, params, batch, state):
        noise_rng, drop_rng = jax.random.split(rng)
        fn = cls_models.get_classifier_fn(sde, model, params, train=train, rng=drop_rng)
        loss, acc = noisy_classification_loss(noise_rng, fn, batch, sde, eps)
        return loss, {"loss": loss, "accuracy": acc}

    return losses.build_step_fn(loss_fn, optimizer, train,
                                float(config.classifier.get("ema_rate", 0.999)))
