"""Noise-conditional classifiers p_t(y | x_t) for classifier guidance (Song et al. 2021, App. I).

Two networks, registered with the model registry and built from the `config.classifier` block
by `get_classifier(config)` (so one config holds both the score model and its classifier):

  'wrn_classifier'  a Wide-ResNet-style encoder for NHWC images: DDPM++ residual blocks with the
                    noise embedding added, x2 downsampling per level, global mean pool, logits.
  'mlp_classifier'  a residual MLP for vectors (B, D), D = config.data.dim.

Both take the score networks' noise input (999 t for VP / sub-VP, sigma(t) for VE) and return
logits (B, num_classes). They use GroupNorm only, so examples never interact, which is what
`classifier_guidance` needs for per-example gradients. `get_classifier_fn` turns one into the
`classifier_fn(x, t) -> logits` that guidance takes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from score_sde import sde_lib
from score_sde.models import layerspp
from score_sde.models.layers import (
    check_choice,
    conv3x3,
    default_init,
    get_act,
    get_timestep_embedding,
    group_norm,
)
from score_sde.models.registry import get_model, init_model, register_model

Array = jax.Array
ClassifierFn = Callable[[Array, Array], Array]


def _noise_embedding(config, time_cond: Array, act) -> Array:
    """Sinusoidal ('positional') or Fourier-of-log-sigma ('fourier') embedding, 4 nf wide."""
    m = config.model
    if check_choice(config, "embedding_type", ("positional", "fourier")) == "fourier":
        emb = layerspp.GaussianFourierProjection(
            embedding_size=m.nf, scale=m.get("fourier_scale", 16.0))(jnp.log(time_cond))
    else:
        emb = get_timestep_embedding(time_cond, m.nf)
    emb = nn.Dense(4 * m.nf, kernel_init=default_init())(emb)
    return nn.Dense(4 * m.nf, kernel_init=default_init())(act(emb))


def _num_classes(config) -> int:
    k = int(config.model.get("num_classes", 0) or 0)
    if k < 2:
        raise ValueError(f"config.classifier.num_classes={k}: a classifier needs at least 2")
    return k


@register_model("wrn_classifier")
class WideResNetClassifier(nn.Module):
    """Noise-conditional Wide-ResNet encoder for NHWC images -> logits (B, num_classes).

    config.model fields (the `config.classifier` block): nf, ch_mult, num_res_blocks, dropout,
    nonlinearity, embedding_type ('positional' | 'fourier'), fourier_scale, num_classes.
    """

    config: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, x: Array, time_cond: Array, train: bool = False) -> Array:
        m = self.config.model
        act = get_act(self.config)
        block = functools.partial(layerspp.ResnetBlockDDPMpp, act=act, dropout=m.dropout,
                                  skip_rescale=True)
        temb = _noise_embedding(self.config, time_cond, act)
        h = conv3x3(x, m.nf)
        for level, mult in enumerate(m.ch_mult):
            for _ in range(m.num_res_blocks):
                h = block(out_ch=m.nf * mult)(h, temb, train)
            if level != len(m.ch_mult) - 1 and h.shape[1] > 1:
                h = layerspp.Downsample(with_conv=True)(h)
        h = jnp.mean(act(group_norm(h.shape[-1])(h)), axis=(1, 2))
        return nn.Dense(_num_classes(self.config), kernel_init=default_init())(h)


@register_model("mlp_classifier")
class MLPClassifier(nn.Module):
    """Noise-conditional residual MLP for vectors (B, D) -> logits (B, num_classes).

    config.model fields: nf, num_res_blocks, dropout, nonlinearity, embedding_type, num_classes.
    """

    config: ml_collections.ConfigDict

    @staticmethod
    def input_shape(config, batch: int = 1) -> tuple[int, ...]:
        return (batch, config.data.dim)

    @nn.compact
    def __call__(self, x: Array, time_cond: Array, train: bool = False) -> Array:
        if x.ndim != 2:
            raise ValueError(f"mlp_classifier expects inputs of shape (B, D), got {x.shape}")
        m = self.config.model
        act = get_act(self.config)
        temb = _noise_embedding(self.config, time_cond, act)
        h = nn.Dense(m.nf, kernel_init=default_init())(x)
        for _ in range(m.num_res_blocks):
            r = nn.Dense(m.nf, kernel_init=default_init())(act(h))
            r = r + nn.Dense(m.nf, kernel_init=default_init())(act(temb))
            r = nn.Dropout(m.dropout)(act(r), deterministic=not train)
            h = h + nn.Dense(m.nf, kernel_init=default_init())(r)
        return nn.Dense(_num_classes(self.config), kernel_init=default_init())(act(h))


def classifier_config(config) -> ml_collections.ConfigDict:
    """A view of `config` whose `model` block is `config.classifier` (for the model registry)."""
    if "classifier" not in config:
        raise ValueError("the config has no `classifier` block (config.classifier.name, nf, ...); "
                         "see configs/digits_classifier.py")
    view = ml_collections.ConfigDict({"model": config.classifier, "data": config.data})
    if "optim" in config:
        view.optim = config.optim
    return view


def get_classifier(config) -> nn.Module:
    """The (unbound) classifier network named by `config.classifier.name`."""
    return get_model(classifier_config(config))


def init_classifier(rng: Array, config) -> dict:
    """Fresh classifier parameters."""
    return init_model(rng, classifier_config(config))


def noise_input(sde: sde_lib.SDE, t: Array) -> Array:
    """The networks' noise input for time t (B,): sigma(t) for VE and EDM, 999 t otherwise
    (on the EDM SDE t itself runs to 80, so 999 t would leave the embedding's scale)."""
    if isinstance(sde, (sde_lib.VESDE, sde_lib.EDMSDE)):
        return sde.marginal_coeffs(t)[1]
    return t * 999.0


def get_classifier_fn(sde: sde_lib.SDE, model: nn.Module, params, train: bool = False,
                      rng: Array | None = None) -> ClassifierFn:
    """`classifier_fn(x, t) -> logits (B, K)` of a noise-conditional classifier."""
    if train and rng is None:
        raise ValueError("get_classifier_fn: train=True needs an rng for dropout")

    def classifier_fn(x: Array, t: Array) -> Array:
        rngs = {"dropout": rng} if train else None
        return model.apply({"params": params}, x, noise_input(sde, t), train=train, rngs=rngs)

    return classifier_fn
