"""Turn a network and its parameters into the `score_fn(x, t) -> score` every sampler takes.

Published conventions for the network's noise input ("labels") and output:
  VP / sub-VP, continuous   labels = 999 t,          score = -output / std(t)
  VP, discrete (DDPM)       labels = (N - 1) t,      score = -output / sqrt(1 - alpha_bar[i])
  VE, continuous            labels = sigma(t),       score = output
  VE, discrete (SMLD)       labels = round((T - t)(N - 1))  (0 = sigma_max), score = output
Sub-VP always uses the continuous convention. VE networks that divide their output by sigma do
so inside the network (config.model.scale_by_sigma), as published. EDM networks
(config.training.sde='edm' or config.model.parameterization='edm') see c_in x and
ln(sigma) / 4 and output F of D = c_skip x + c_out F. All of these live in
models/parameterization.py, which the losses use too.

`trained_score_fn` is the score of a trained network as the samplers take it: plain, class-
conditional, or with classifier-free guidance in one batched network call (the drivers reach
it through score_sde.inference.model_score_fn, which reads these choices from a config).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_sde import sde_lib
from score_sde.models import parameterization as param_lib
from score_sde.models.parameterization import Parameterization

Array = jax.Array
ModelFn = Callable[[Array, Array], Array]
ScoreFn = Callable[[Array, Array], Array]
ConditionalScoreFn = Callable[[Array, Array, Array], Array]  # (x, t, labels (B,)) -> score


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


def _parameterization(sde: sde_lib.SDE, model: nn.Module, continuous: bool,
                      parameterization: Parameterization | None) -> Parameterization:
    """The given parameterisation, else the one of the model's config (published conventions
    for the SDE unless config.model.parameterization says otherwise)."""
    if parameterization is not None:
        return parameterization
    config = getattr(model, "config", None)
    if config is not None and "model" in config and "training" in config:
        return param_lib.from_config(config, sde, continuous)
    return param_lib.get_parameterization(sde, continuous)


def _network_score(param: Parameterization, model: nn.Module, params, train: bool = False,
                   rng: Array | None = None) -> Callable[..., Array]:
    """`score(x, t, y=None)`: the network's output as a score under `param`; y (B,) class
    labels for a class-conditional network, None to call it without."""

    def score(x: Array, t: Array, y: Array | None = None) -> Array:
        model_fn = get_model_fn(model, params, train=train, rng=rng, y=y)
        return param.score(param.network_output(model_fn, x, t), x, t)

    return score


def get_score_fn(sde: sde_lib.SDE, model: nn.Module, params, train: bool = False,
                 continuous: bool = True, rng: Array | None = None,
                 labels: Array | None = None,
                 parameterization: Parameterization | None = None) -> ScoreFn:
    """`score_fn(x, t) -> score` (shape of x) for a network trained on `sde`.

    Args:
      sde: the forward SDE the network was trained with.
      model, params: the network and its parameters.
      train: apply in training mode (dropout on; needs `rng`).
      continuous: the network was trained on continuous t (else on the discrete DDPM/SMLD grid).
      rng: dropout key, used only when `train`.
      labels: optional class labels (B,) for class-conditional networks (forwarded as `y`);
        index `config.model.num_classes` is the "null" label of classifier-free guidance.
      parameterization: what the network's input and output mean; by default the one of
        `model.config` (see `parameterization.from_config`), else the SDE's published one.
    """
    param = _parameterization(sde, model, continuous, parameterization)
    score = _network_score(param, model, params, train=train, rng=rng)
    return lambda x, t: score(x, t, labels)


def model_conditional_score_fn(sde: sde_lib.SDE, model: nn.Module, params,
                               continuous: bool = True,
                               parameterization: Parameterization | None = None
                               ) -> ConditionalScoreFn:
    """`fn(x, t, y) -> score` of a class-conditional network (config.model.num_classes > 0)
    for labels y (B,); arguments as for `get_score_fn`."""
    param = _parameterization(sde, model, continuous, parameterization)
    return _network_score(param, model, params)


def _batch_labels(labels: Array | int, batch: int) -> Array:
    return jnp.broadcast_to(jnp.asarray(labels, jnp.int32), (batch,))


def cfg_combine(score_cond: Array, score_uncond: Array, w: float) -> Array:
    """Classifier-free guidance (Ho & Salimans 2022): (1 + w) s(x, t | y) - w s(x, t).

    w = 0 is the conditional score; w > 0 is the score of the sharpened p(x | y) p(y | x)^w.
    """
    return (1.0 + w) * score_cond - w * score_uncond


def cfg_from_model(conditional_score_fn: ConditionalScoreFn, labels: Array | int,
                   null_label: int, w: float) -> ScoreFn:
    """Classifier-free guidance of one network, both terms in a single batched call.

    conditional_score_fn(x, t, y) -> score for class labels y (B,); `null_label` (the model's
    num_classes) is the unconditional input. The batch is doubled (labels | null) so the network
    runs once per score evaluation, which is what a sampler's nfe counts.
    """
    if w == 0:
        return lambda x, t: conditional_score_fn(x, t, _batch_labels(labels, x.shape[0]))

    def guided(x: Array, t: Array) -> Array:
        b = x.shape[0]
        y = jnp.concatenate([_batch_labels(labels, b), jnp.full((b,), null_label, jnp.int32)])
        s = conditional_score_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), y)
        return cfg_combine(s[:b], s[b:], w)

    return guided


def trained_score_fn(sde: sde_lib.SDE, model: nn.Module, params, *, continuous: bool = True,
                     labels: Array | int | None = None, guidance_scale: float = 0.0,
                     null_label: int | None = None,
                     parameterization: Parameterization | None = None) -> ScoreFn:
    """`score_fn(x, t)` of a trained network (inference: no dropout), what the samplers take.

    labels None: the network's plain score (a class-conditional network's own null label).
    labels (an int or (B,) ints): the class-conditional score, with classifier-free guidance
    of weight `guidance_scale` when it is not 0, both terms in one batched network call
    (`cfg_from_model`); guidance needs `null_label`, the unconditional label (the model's
    config.model.num_classes). The parameterisation (see `get_score_fn`) is resolved once here.
    """
    param = _parameterization(sde, model, continuous, parameterization)
    score = _network_score(param, model, params)
    if labels is None:
        return lambda x, t: score(x, t)
    w = float(guidance_scale or 0.0)
    if w == 0:
        return lambda x, t: score(x, t, _batch_labels(labels, x.shape[0]))
    if null_label is None:
        raise ValueError(f"classifier-free guidance (guidance_scale={w}) needs null_label, the "
                         "network's unconditional label (config.model.num_classes)")
    return cfg_from_model(score, labels, int(null_label), w)


def __getattr__(name: str):
    if name == "get_denoiser_fn":
        raise ImportError("models.utils.get_denoiser_fn was removed: x0_hat has one route, "
                          "score_sde.sampling.steps.data_prediction(sde, get_score_fn(...))")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
