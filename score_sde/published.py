"""Load checkpoints released with the published score_sde JAX code.

Those checkpoints are msgpack files written by `flax.training.checkpoints` (flax 0.3): a dict
with `step`, `optimizer` (`target`: the parameters, `state`: Adam moments), `lr`, `model_state`,
`ema_rate`, `params_ema` and `rng`. Our networks use the published module and parameter names,
so the parameter trees map one to one; this module reads them without `flax.optim` (gone from
flax) and checks them against the network that `config` builds.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from score_sde import storage
from score_sde.models import get_model, input_shape

_MAX_LISTED = 5


def _checkpoint_file(path: str) -> str:
    """`path` itself, or the highest-numbered `checkpoint_<n>` file in directory `path`
    (local or gs://)."""
    p = storage.path(path)
    if not p.is_dir():
        if not p.exists():
            raise FileNotFoundError(f"no published checkpoint at {path!r}")
        return str(path)
    numbered = [(int(m.group(1)), q.name) for q in p.iterdir()
                if (m := re.fullmatch(r"checkpoint_(\d+)", q.name))]
    if not numbered:
        raise FileNotFoundError(f"no checkpoint_<n> file in directory {path!r}")
    return str(p / max(numbered)[1])


def load_published_state(path: str) -> dict:
    """The raw training-state dict of a published checkpoint (file, or directory of them)."""
    filename = _checkpoint_file(path)
    data = storage.path(filename).read_bytes()
    try:
        state = serialization.msgpack_restore(data)
    except Exception as e:  # msgpack raises several unrelated exception types
        raise ValueError(f"{filename!r} is not a flax msgpack checkpoint: {e}") from e
    if not isinstance(state, dict):
        raise ValueError(f"{filename!r} does not hold a training-state dict")
    return state


def _flatten(tree) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(np.shape(v))
            for path, v in leaves}


def expected_param_shapes(config) -> dict[str, tuple[int, ...]]:
    """'Module_0/Sub_1/param' -> shape for the network `config` builds (traced, not run)."""
    model = get_model(config)
    x = jnp.zeros(input_shape(config))
    t = jnp.ones((x.shape[0],))
    rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)}
    shapes = jax.eval_shape(lambda: model.init(rngs, x, t, train=False))["params"]
    return _flatten(shapes)


def _listed(paths) -> str:
    paths = sorted(paths)
    more = f" (+{len(paths) - _MAX_LISTED} more)" if len(paths) > _MAX_LISTED else ""
    return ", ".join(paths[:_MAX_LISTED]) + more


def check_params(params, config, source: str = "checkpoint") -> None:
    """One ValueError listing missing, unexpected and mis-shaped parameters, if any."""
    want, have = expected_param_shapes(config), _flatten(params)
    problems = []
    if missing := set(want) - set(have):
        problems.append(f"missing: {_listed(missing)}")
    if extra := set(have) - set(want):
        problems.append(f"unexpected: {_listed(extra)}")
    wrong = [f"{k} {have[k]} != {want[k]}" for k in sorted(set(want) & set(have))
             if have[k] != want[k]]
    if wrong:
        problems.append(f"wrong shape (checkpoint != model): {_listed(wrong)}")
    if problems:
        raise ValueError(
            f"{source} does not match the network of config.model (name={config.model.name!r}, "
            f"nf={config.model.get('nf')}, ch_mult={tuple(config.model.get('ch_mult', ()))}); "
            + "; ".join(problems))


def params_from_state(state: dict, config, use_ema: bool = True,
                      source: str = "checkpoint") -> dict:
    """The EMA (`params_ema`) or raw (`optimizer.target`) parameters of a published state."""
    if use_ema:
        if "params_ema" not in state:
            raise ValueError(f"{source} has no 'params_ema' (keys: {sorted(state)})")
        params = state["params_ema"]
    else:
        if "target" not in state.get("optimizer", {}):
            raise ValueError(f"{source} has no 'optimizer/target' (keys: {sorted(state)})")
        params = state["optimizer"]["target"]
    if state.get("model_state"):
        raise ValueError(f"{source} has a non-empty model_state (batch statistics?); "
                         "only stateless score networks are supported")
    check_params(params, config, source)
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)


def load_published(path: str, config, use_ema: bool = True) -> dict:
    """Parameters for `get_model(config)` from a published score_sde checkpoint.

    Args:
      path: a `checkpoint_<n>` msgpack file, or a directory (its highest-numbered one is used).
      config: the config of the checkpoint's network (e.g. configs/ve/cifar10_ncsnpp_continuous).
      use_ema: the EMA parameters (`params_ema`, what the paper evaluates) or, if False, the
        raw training parameters (`optimizer.target`).

    Raises:
      ValueError naming the first offending parameter paths if the checkpoint does not fit the
      network `config` describes.
    """
    filename = _checkpoint_file(path)
    return params_from_state(load_published_state(filename), config, use_ema, source=filename)


def published_step(path: str) -> int:
    """The training step a published checkpoint was saved at."""
    return int(np.asarray(load_published_state(path)["step"]))
