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
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax

from score_sde import sde_lib
from score_sde.models import parameterization as param_lib
from score_sde.models.parameterization import Parameterization

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
    model_fn = get_model_fn(model, params, train=train, rng=rng, y=labels)

    def score_fn(x: Array, t: Array) -> Array:
        return param.score(param.network_output(model_fn, x, t), x, t)

    return score_fn


def get_denoiser_fn(sde: sde_lib.SDE, model: nn.Module, params, train: bool = False,
                    continuous: bool = True, rng: Array | None = None,
                    labels: Array | None = None,
                    parameterization: Parameterization | None = None) -> ScoreFn:
    """`denoiser(x, t) -> x0_hat = E[x_0 | x_t = x]` for data-prediction solvers; arguments as
    for `get_score_fn`. For EDM this is D(x; sigma) itself, without a detour through the score."""
    param = _parameterization(sde, model, continuous, parameterization)
    model_fn = get_model_fn(model, params, train=train, rng=rng, y=labels)

    def denoiser(x: Array, t: Array) -> Array:
        return param.x0(param.network_output(model_fn, x, t), x, t)

    return denoiser
