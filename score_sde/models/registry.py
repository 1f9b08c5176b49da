"""Model registry: config.model.name -> flax module class, and parameter initialisation."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_sde.registry import Registry

_MODELS: Registry[type[nn.Module]] = Registry("model", field="config.model.name")


def register_model(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a module buildable as `config.model.name == name`."""
    return _MODELS.register(name)


def list_models() -> list[str]:
    """Names accepted by `config.model.name`."""
    return _MODELS.names()


def _model_class(config) -> type[nn.Module]:
    return _MODELS.lookup(config.model.name)


def get_model(config) -> nn.Module:
    """The (unbound) score network for `config`; checks the config before anything is traced."""
    from score_sde.models.layers import get_dtype

    cls = _model_class(config)
    get_dtype(config)  # config.model.dtype, checked for every network
    check = getattr(cls, "check_config", None)
    if check is not None:
        check(config)
    return cls(config=config)


def input_shape(config, batch: int = 1) -> tuple[int, ...]:
    """Shape of a network input batch: NHWC images, or (B, D) for vector models."""
    cls = _model_class(config)
    if hasattr(cls, "input_shape"):
        return cls.input_shape(config, batch)
    d = config.data
    return (batch, d.image_size, d.image_size, d.num_channels)


def init_model(rng: jax.Array, config) -> dict:
    """Fresh parameters of `get_model(config)`, initialised on a zero batch of size 1."""
    model = get_model(config)
    x = jnp.zeros(input_shape(config), jnp.float32)
    t = jnp.ones((x.shape[0],), jnp.float32)
    params_rng, dropout_rng = jax.random.split(rng)
    variables = model.init({"params": params_rng, "dropout": dropout_rng}, x, t, train=False)
    return variables["params"]


def count_params(params) -> int:
    """Total number of scalars in a parameter tree (works on ShapeDtypeStructs too)."""
    return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
