"""Turn a network and its parameters into the `score_fn(x, t) -> score` every sampler takes.

Published conventions for the network's noise input ("labels") and output:
  VP / sub-VP, continuous   labels = 999 t,          score = -output / std(t)
  VP, discrete (DDPM)       labels = (N - 1) t,      score = -output / sqrt(1 - alpha_bar[i])
  VE, continuous            labels = sigma(t),       score = output
  VE, discrete (SMLD)       labels = round((T - t)(N - 1))  (0 = sigma_max), score = output
Sub-VP always uses the continuous convention. VE networks that divide their output by sigma do
so inside the network (config.model.scale_by_sigma), as published.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_sde import sde_lib
from score_sde.sde_lib import batch_mul

Array = jax.Array
ModelFn = Callable[[Array, Array], Array]
ScoreFn = Callable[[Array, Array], Array]


def get_model_fn(model: nn.Module, params, train: bool = False, rng: Array | None = None,
                 y: Array | None = None) -> ModelFn:
    """`model_fn(x, labels) -> output`: the raw network; `rng` drives dropout when training.

    `y` (class labels, shape (B,)) is passed to class-conditional networks.
    """
    if train and rng is None:
        raise ValueError("get_model_fn: train=True needs an rng for dropout")
    kwargs = {} if y is None else {"y": y}

    def model_fn(x: Array, labels: Array) -> Array:
        rngs = {"dropout": rng} if train else None
        return model.apply({"params": params}, x, labels, train=train, rngs=rngs, **kwargs)

    return model_fn


def get_score_fn(sde: sde_lib.SDE, model: nn.Module, params, train: bool = False,
                 continuous: bool = True, rng: Array | None = None,
                 labels: Array | None = None) -> ScoreFn:
    """`score_fn(x, t) -> score` (shape of x) for a network trained on `sde`.

    Args:
      sde: the forward SDE the network was trained with.
      model, params: the network and its parameters.
      train: apply in training mode (dropout on; needs `rng`).
      continuous: the network was trained on continuous t (else on the discrete DDPM/SMLD grid).
      rng: dropout key, used only when `train`.
      labels: optional class labels (B,) for class-conditional networks (forwarded as `y`);
        index `config.model.num_classes` is the "null" label of classifier-free guidance.
    """
    model_fn = get_model_fn(model, params, train=train, rng=rng, y=labels)

    if isinstance(sde, (sde_lib.VPSDE, sde_lib.subVPSDE)):
        use_continuous = continuous or isinstance(sde, sde_lib.subVPSDE)
        if use_continuous:
            def score_fn(x: Array, t: Array) -> Array:
                std = sde.marginal_prob(jnp.zeros_like(x), t)[1]
                return batch_mul(-1.0 / std, model_fn(x, t * 999))
        else:
            sqrt_1m_alphas_cumprod = jnp.sqrt(1.0 - jnp.asarray(sde.alphas_cumprod, jnp.float32))

            def score_fn(x: Array, t: Array) -> Array:
                # Same (tolerant) truncation as sde.discretize, so both use one noise level.
                std = sqrt_1m_alphas_cumprod[sde.discrete_index(t)]
                return batch_mul(-1.0 / std, model_fn(x, t * (sde.N - 1)))
        return score_fn

    if isinstance(sde, sde_lib.VESDE):
        if continuous:
            def score_fn(x: Array, t: Array) -> Array:
                return model_fn(x, sde.marginal_prob(jnp.zeros_like(x), t)[1])
        else:
            def score_fn(x: Array, t: Array) -> Array:
                # SMLD networks index sigmas from the largest: label 0 = sigma_max.
                idx = jnp.round((sde.T - t) * (sde.N - 1)).astype(jnp.int32)
                return model_fn(x, idx)
        return score_fn

    raise ValueError(f"get_score_fn: SDE {type(sde).__name__} is not supported; "
                     "use VPSDE, subVPSDE or VESDE")
