"""The teacher of consistency distillation: a trained score model of this framework.

`load_teacher(config, teacher_workdir, published)` reads the teacher's config (the file named
by config.consistency.teacher_config, else teacher_workdir/config.json that its training run
wrote) and its EMA weights (the newest checkpoint of teacher_workdir, or a checkpoint of the
published score_sde code converted on the fly). The student has the teacher's network (the
published CD starts from the teacher's weights), so both parameter trees must match; any SDE
and parameterisation of the teacher works (its ODE is solved in EDM's variables), class-
conditional teachers too. Library module: the train driver's distill mode uses it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any

import jax
import jax.numpy as jnp

from score_sde import checkpoints, inference, run_config, sde_lib, storage
from score_sde.models import consistency as consistency_models


@dataclasses.dataclass
class TeacherModel:
    """A loaded teacher: its config, SDE, network and EMA parameters (host arrays)."""

    config: Any
    sde: sde_lib.SDE
    model: Any
    params: Any
    source: str

    def spec(self) -> tuple:
        """(config, sde, model): what consistency_losses.get_step_fn needs besides the weights."""
        return self.config, self.sde, self.model

    def start(self, state, init_student: bool = True):
        """A fresh CD state with the teacher's weights (and, as published, the student's,
        its EMA and the target network starting from them)."""
        copy = lambda: jax.tree.map(jnp.asarray, self.params)  # noqa: E731
        state = state.replace(teacher_params=copy())
        if init_student:
            state = state.replace(params=copy(), ema_params=copy(), target_params=copy())
        return state


def teacher_config(config, teacher_workdir: str | None) -> tuple[Any, str]:
    """(the teacher's config, where it came from)."""
    path = str(config.consistency.get("teacher_config", "") or "")
    if path:
        if not storage.path(path).exists():
            raise FileNotFoundError(f"config.consistency.teacher_config={path}: no such file")
        spec = importlib.util.spec_from_file_location("teacher_config", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_config(), path
    if not teacher_workdir:
        raise ValueError("--mode distill needs a teacher: --teacher_workdir=DIR (a trained score "
                         "model), or --init_from_published=PATH with "
                         "config.consistency.teacher_config=CONFIG_FILE")
    try:
        tconfig = run_config.load(teacher_workdir)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}: name the teacher's config file in "
                                "config.consistency.teacher_config") from e
    return tconfig, str(storage.path(teacher_workdir) / run_config.CONFIG_FILE)


def _check_network(config, tconfig, source: str) -> None:
    from score_sde import models

    shapes = [jax.eval_shape(lambda r, c=c: models.init_model(r, c), jax.random.PRNGKey(0))
              for c in (config, tconfig)]
    if jax.tree.map(lambda x: x.shape, shapes[0]) != jax.tree.map(lambda x: x.shape, shapes[1]):
        raise ValueError(f"the student's network (config.model) differs from the teacher's "
                         f"({source}): consistency distillation starts from the teacher's "
                         "weights, so give the student the teacher's config.model")


def load_teacher(config, teacher_workdir: str | None = None,
                 published: str | None = None) -> TeacherModel:
    """The teacher of a CD config (see the module doc); one clear error for a teacher that is
    itself a consistency model, whose network differs from the student's, or whose config
    does not match its checkpoint."""
    tconfig, source = teacher_config(config, teacher_workdir)
    if consistency_models.is_consistency_model(tconfig):
        raise ValueError(f"the teacher ({source}) is a consistency model; distill from a score "
                         "model")
    _check_network(config, tconfig, source)
    if published:
        return _from_published(tconfig, published, source)
    r = inference.Restorer(tconfig, teacher_workdir)
    try:
        state, step = r.restore()
    except checkpoints.CheckpointError as e:
        raise checkpoints.CheckpointError(
            f"the teacher's config ({source}) does not match its checkpoint in "
            f"{teacher_workdir} ({r.ckpts.last_read_error or e}); give "
            "config.consistency.teacher_config the config it was trained with") from e
    finally:
        r.close()
    return TeacherModel(tconfig, r.sde, r.model, jax.device_get(state.ema_params),
                   f"{teacher_workdir} (step {step})")


def _from_published(tconfig, path: str, source: str) -> TeacherModel:
    from score_sde import losses, models

    sde, _ = sde_lib.get_sde(tconfig)
    model = models.get_model(tconfig)
    state = jax.jit(lambda k: losses.init_train_state(k, tconfig, model))(jax.random.PRNGKey(0))
    state = checkpoints.state_from_published(jax.device_get(state), path, tconfig)
    return TeacherModel(tconfig, sde, model, jax.device_get(state.ema_params),
                   f"{path} (published, config {source})")


def __getattr__(name: str):
    """A removed name fails with one line naming its replacement."""
    if name == "Teacher":
        raise ImportError("score_sde.distillation.Teacher was renamed TeacherModel "
                          "(score_sde.distillation.TeacherModel)")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
