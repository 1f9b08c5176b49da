"""A trained model for inference: the floor under the drivers (train, evaluate, editing modes).

What every consumer of a run's weights needs, built once here so the drivers share it instead
of importing each other:

  Restorer          model, SDE, mesh and checkpoints of a config and workdir; `restore()`
                    reads only the EMA parameters (and the step and PRNG key): the optimizer
                    state is neither built nor read
  model_score_fn    the (class-conditional, classifier-free guided) score function of
                    network parameters, the `score_fn(x, t)` every sampler takes, as the
                    config says (models.utils.trained_score_fn builds it; a consistency
                    model has none: refused with one line)
  model_consistency_fn  the consistency function f(x, t) of a consistency model, what
                    sampling.method='consistency' takes in place of score_fn
  ConfigSampler     the jitted sampler of config.sampling, sharded over the mesh:
                    `(params, rng) -> (images (or clips) in [0, 1], nfe)` (a sampling.Sampler
                    is the `sample(rng, score_fn)` it runs)
  make_eval_call    the jitted evaluation loss of the EMA parameters
  load_classifier_fn  the EMA classifier of workdir/classifier as `fn(x, t) -> logits`

Imports only library modules (never a driver); tests/test_layering.py checks it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils.epath import Path

from score_sde import checkpoints, losses, parallel, sde_lib, storage
from score_sde.data import get_data_inverse_scaler
from score_sde.models import consistency as consistency_models
from score_sde.models import utils as model_utils
from score_sde.sampling import class_labels_from_config, get_sampler_from_config

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def _skip_leaves(tree: Any) -> Any:
    """Every leaf of `tree` as orbax's placeholder: that part of a checkpoint is not read."""
    return jax.tree.map(lambda _: ocp.PLACEHOLDER, tree)


class Restorer:
    """Model, SDE and mesh of a config, and its checkpoints in a workdir.

    `restore()` returns a `losses.TrainState` whose `params` and `opt_state` are None: only
    `ema_params`, `step` and `rng` are read from the checkpoint (about a quarter of the bytes
    of an Adam run), into a target built with `jax.eval_shape`, so nothing of the optimizer is
    allocated.
    Checkpoints of every kind written by training load this way.
    """

    def __init__(self, config, workdir: str | Path):
        from score_sde import models

        self.config, self.workdir = config, storage.path(workdir)
        self.mesh = parallel.make_mesh()
        self.sde, self.eps = sde_lib.get_sde(config)
        self.model = models.get_model(config)
        self.optimizer = losses.get_optimizer(config)  # only the checkpoint's tree structure
        self.ckpts = checkpoints.Checkpoints(self.workdir, async_save=False)

    def target(self) -> losses.TrainState:
        """The restore target: shapes of the EMA parameters, step and key; placeholders for
        the parameters and optimizer state (not read)."""
        shapes = jax.eval_shape(lambda r: losses.init_train_state(
            r, self.config, self.model, self.optimizer), jax.random.PRNGKey(0))
        shapes = shapes.replace(params=_skip_leaves(shapes.params),
                                opt_state=_skip_leaves(shapes.opt_state))
        return checkpoints.abstract_like(shapes, parallel.replicated(self.mesh))

    def restore(self, step: int | None = None) -> tuple[losses.TrainState, int]:
        """The snapshot at `step`, or the newest checkpoint of either kind (EMA weights only)."""
        if step is not None:
            state = self.ckpts.restore_snapshot(self.target(), step)
            return state.replace(params=None, opt_state=None), step
        state, found = self.ckpts.restore_latest(self.target())
        if found is None and self.ckpts.skipped:
            raise checkpoints.CheckpointError(
                f"no usable checkpoint in {self.workdir}: {self.ckpts.unusable()}; "
                "train (--mode train) to write a new one")
        if found is None:
            raise FileNotFoundError(f"no checkpoint in {self.workdir / checkpoints.SNAPSHOT_DIR} "
                                    f"or {self.workdir / checkpoints.META_DIR}; train first "
                                    "(--mode train) or convert a published one (--mode convert)")
        return state.replace(params=None, opt_state=None), found

    def chosen_step(self) -> int | None:
        """config.eval.ckpt (a snapshot index, as published: step = ckpt * snapshot_freq)."""
        ckpt = self.config.eval.get("ckpt", None)
        if ckpt is None or int(ckpt) < 0:
            return None
        return int(ckpt) * int(self.config.training.snapshot_freq)

    def eval_steps(self) -> list[int]:
        """Snapshots with eval.begin_ckpt <= step // training.snapshot_freq <= eval.end_ckpt."""
        ev, freq = self.config.eval, int(self.config.training.snapshot_freq)
        available = self.ckpts.snapshot_steps()
        chosen = [s for s in available if ev.begin_ckpt <= s // freq <= ev.end_ckpt]
        if not chosen:
            raise FileNotFoundError(
                f"no snapshot in {self.workdir / checkpoints.SNAPSHOT_DIR} with "
                f"config.eval.begin_ckpt={ev.begin_ckpt} <= step // {freq} <= "
                f"config.eval.end_ckpt={ev.end_ckpt}; snapshot steps there: "
                f"{available or 'none (train first)'}")
        return chosen

    def close(self) -> None:
        self.ckpts.close()


def model_score_fn(config, sde: sde_lib.SDE, model, params, labels: jax.Array | None = None,
                   guidance_scale: float = 0.0) -> ScoreFn:
    """`score_fn(x, t)` of a network's parameters.

    An unconditional model (config.model.num_classes = 0) ignores `labels`. A class-conditional
    one samples `labels` (one per example) with classifier-free guidance of weight
    `guidance_scale` (0: the conditional score), or its unconditional score (the null label)
    when `labels` is None.
    """
    consistency_models.refuse_score_use(config, "score-based sampling "
                                        "(config.sampling.method), likelihood and the "
                                        "denoising loss")
    num_classes = int(config.model.get("num_classes", 0) or 0)
    return model_utils.trained_score_fn(
        sde, model, params, continuous=bool(config.training.continuous),
        labels=labels if num_classes > 0 else None, guidance_scale=float(guidance_scale),
        null_label=num_classes)


def model_consistency_fn(config, sde: sde_lib.SDE, model, params,
                         labels: jax.Array | None = None) -> ScoreFn:
    """`f(x, t)` of a consistency model's parameters (class-conditional: `labels`, one per
    example; without them the network's null label)."""
    if not consistency_models.is_consistency_model(config):
        raise ValueError("config.sampling.method='consistency' needs a consistency model "
                         "(config.training.objective 'cd' or 'ct'); this config trains a score "
                         "model: choose another config.sampling.method")
    num_classes = int(config.model.get("num_classes", 0) or 0)
    param = consistency_models.from_config(config, sde)

    def fn(x, t):
        y = None
        if num_classes > 0:
            y = labels if labels is not None else jnp.full((x.shape[0],), num_classes, jnp.int32)
        return consistency_models.get_consistency_fn(param, model, params, labels=y)(x, t)

    return fn


def sampling_fn(config, sde: sde_lib.SDE, model, params, labels: jax.Array | None = None,
                scale: float = 0.0) -> ScoreFn:
    """What config.sampling.method takes: the consistency function for 'consistency', else
    the score function (`model_score_fn`)."""
    if str(config.sampling.method).lower() == "consistency":
        return model_consistency_fn(config, sde, model, params, labels)
    return model_score_fn(config, sde, model, params, labels, scale)


def guidance_scale(config) -> float:
    """config.sampling.guidance_scale (0 when unset)."""
    return float(config.sampling.get("guidance_scale", 0.0) or 0.0)


class ConfigSampler:
    """A jitted sampler of `n` images (default eval.batch_size) sharded over the mesh:
    `(params, rng) -> (images in [0, 1], nfe)`, with config.sampling's method and options.

    A class-conditional model draws config.sampling.class_labels (default: every class in
    turn) with classifier-free guidance of weight sampling.guidance_scale. data_stats: the
    run's stored data statistics (score_sde.data_stats), whose spread places the grid.
    """

    def __init__(self, config, sde: sde_lib.SDE, eps: float, model, mesh, n: int | None = None,
                 data_stats: dict | None = None):
        self.n = int(n or config.eval.batch_size)
        parallel.check_batch_size(self.n, "config.eval.batch_size", mesh)
        from score_sde import models

        shape = models.input_shape(config, self.n)  # images (N, H, W, C), clips (N, T, ...)
        sample = get_sampler_from_config(config, sde, shape, eps, data_stats=data_stats,
                                         sharding=parallel.data_sharding(mesh))
        labels = class_labels_from_config(config, self.n)
        scale = guidance_scale(config)
        inverse = get_data_inverse_scaler(config)

        def run(params, rng):
            x, nfe = sample(rng, sampling_fn(config, sde, model, params, labels, scale))
            return jnp.clip(inverse(x), 0.0, 1.0), nfe

        rep = parallel.replicated(mesh)
        self.mesh = mesh
        self._run = jax.jit(run, in_shardings=(rep, rep),
                            out_shardings=(parallel.data_sharding(mesh), rep))

    def __call__(self, params, rng) -> tuple[jax.Array, int]:
        images, nfe = self._run(params, parallel.replicate(rng, self.mesh))
        return images, int(jax.device_get(nfe))


def make_eval_call(eval_step_fn, mesh, scaler) -> Callable:
    """jit(state, batch) -> loss, the evaluation loss of the EMA parameters (`eval_step_fn`
    from losses.get_step_fn(..., train=False) reads only state.ema_params and state.rng)."""
    rep = parallel.replicated(mesh)

    def call(state, batch):
        return eval_step_fn(state, dict(batch, image=scaler(batch["image"])))[1]

    return jax.jit(call, in_shardings=(rep, parallel.data_sharding(mesh)), out_shardings=rep)


def load_classifier_fn(config, workdir: str | Path, sde: sde_lib.SDE) -> Callable:
    """`classifier_fn(x, t) -> logits` of the newest classifier in workdir/classifier (EMA)."""
    from score_sde import classifier_training
    from score_sde.models import classifier as cls_models

    target = jax.eval_shape(lambda r: classifier_training.init_classifier_state(r, config),
                            jax.random.PRNGKey(0))
    folder = storage.path(workdir) / "classifier"
    ckpts = checkpoints.Checkpoints(folder, async_save=False)
    try:
        state, found = ckpts.restore_latest(checkpoints.abstract_like(target))
    finally:
        ckpts.close()
    if found is None:
        raise FileNotFoundError(f"no classifier checkpoint in {folder}; "
                                "run --mode train_classifier first")
    return cls_models.get_classifier_fn(sde, cls_models.get_classifier(config), state.ema_params)


def __getattr__(name: str):
    """A renamed name fails with one line naming its replacement."""
    if name == "Sampler":
        raise ImportError("score_sde.inference.Sampler was renamed ConfigSampler "
                          "(score_sde.inference.ConfigSampler); score_sde.sampling.Sampler is "
                          "the type of a sample(rng, score_fn) function")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
