"""The training loop (the reference's run_lib.train) over a device mesh.

One jitted call runs `config.training.n_jitted_steps` optimiser steps (`lax.scan` over a
stacked batch) with the state replicated and the batch sharded on the mesh's 'data' axis; the
state buffers are donated. The host keeps one call queued ahead of the device (it reads each
call's stop vote, below, one call late); a NaN/Inf loss, checked every `training.log_freq`
steps and before a checkpoint is written, stops the run before anything non-finite is saved.

Around the loop: the run holds its workdir (run_lease: one training run per workdir), records
its config there (run_config), and turns SIGTERM/SIGINT into a checkpoint and exit status 75
(preemption). Every process must stop at the same step, also the ones that got no signal: each
call carries this process's "stop" flag into the jitted step and returns the OR over all
processes, and the loop reads that result one call late, when the device has finished that call
anyway, so the check costs no collective of its own and never stalls the pipeline (at most one
call stays queued behind the host). The stop comes at most two calls after the signal.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from score_sde import (
    checkpoints,
    consistency_losses,
    data_stats,
    distillation,
    losses,
    parallel,
    preemption,
    run_config,
    run_lease,
    sde_lib,
    training_state,
)
from score_sde import data as datasets
from score_sde import logging_utils as log
from score_sde.inference import ConfigSampler, make_eval_call
from score_sde.models import consistency as consistency_models

# Donation is a no-op on the CPU backend; the warning says so on every compile.
warnings.filterwarnings("ignore", message="Some donated buffers were not usable")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf."""


def _training_field(config, name: str, default=None):
    return config.training.get(name, default)


def check_config(config, mesh) -> int:
    """Validate the fields the loop depends on; returns n_jitted_steps."""
    tr = config.training
    n_jit = int(_training_field(config, "n_jitted_steps", 1))
    if n_jit < 1:
        raise ValueError(f"config.training.n_jitted_steps={n_jit} must be >= 1")
    for name in ("n_iters", "log_freq", "eval_freq", "snapshot_freq",
                 "snapshot_freq_for_preemption"):
        value = int(tr[name])
        if value <= 0 or value % n_jit:
            raise ValueError(f"config.training.{name}={value} must be a positive multiple of "
                             f"config.training.n_jitted_steps={n_jit}")
    parallel.check_batch_size(int(tr.batch_size), "config.training.batch_size", mesh)
    parallel.check_batch_size(int(config.eval.batch_size), "config.eval.batch_size", mesh)
    return n_jit


def _unrolled(step_fn, state, batches):
    """The steps one after another in the program (no loop), as lax.scan returns them."""
    n = jax.tree.leaves(batches)[0].shape[0]
    step_losses = []
    for i in range(n):
        state, loss = step_fn(state, jax.tree.map(lambda x, i=i: x[i], batches))
        step_losses.append(loss)
    return state, jnp.stack(step_losses)


def make_train_call(step_fn, mesh, scaler, use_scan: bool | None = None,
                    stop_vote: bool = False):
    """jit(state, stacked_batch) -> (state, losses (n,)): n steps of `step_fn`.

    The steps run as a lax.scan on accelerators; on the CPU backend (where XLA runs the
    convolutions inside a loop body many times slower) and for a single step they are unrolled.
    With `stop_vote` the call is jit(state, stacked_batch, votes) -> (state, losses, stop):
    `votes` holds one bool per device (see `stop_votes`) and `stop`, replicated, is their OR.
    """
    rep = parallel.replicated(mesh)
    if use_scan is None:
        use_scan = mesh.devices.flat[0].platform != "cpu"

    def steps(state, batches):
        batches = dict(batches, image=scaler(batches["image"]))
        if use_scan and batches["image"].shape[0] > 1:
            return jax.lax.scan(step_fn, state, batches)
        return _unrolled(step_fn, state, batches)

    def voting(state, batches, votes):
        return (*steps(state, batches), jnp.any(votes))

    data = parallel.data_sharding(mesh, 1)
    if stop_vote:
        return jax.jit(voting, in_shardings=(rep, data, parallel.data_sharding(mesh)),
                       out_shardings=(rep, rep, rep), donate_argnums=(0,))
    return jax.jit(steps, in_shardings=(rep, data), out_shardings=(rep, rep),
                   donate_argnums=(0,))


def stop_votes(mesh, flag: bool) -> jax.Array:
    """A global bool array, one entry per device of `mesh`, this process's devices set to flag."""
    local = np.full((len(mesh.local_devices),), bool(flag))
    return parallel.shard_batch({"votes": local}, mesh)["votes"]


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


class Trainer:
    """Everything `train` builds once: mesh, SDE, model, optimiser, jitted calls, data.

    A consistency model (config.training.objective 'cd' / 'ct') trains with
    consistency_losses' step (CD: with `teacher`, a distillation.TeacherModel) and has no
    evaluation loss (eval_call None).
    """

    def __init__(self, config, workdir: str | os.PathLike,
                 teacher: distillation.TeacherModel | None = None):
        self.config, self.workdir = config, epath.Path(workdir)
        self.mesh = parallel.make_mesh()
        self.n_jit = check_config(config, self.mesh)
        self.sde, self.eps = sde_lib.get_sde(config)
        from score_sde import models

        self.model = models.get_model(config)
        self.optimizer = training_state.get_optimizer(config)
        self.scaler = datasets.get_data_scaler(config)
        self.inverse_scaler = datasets.get_data_inverse_scaler(config)
        self.eval_call = None
        self.kind = consistency_models.objective(config)  # 'dsm', 'cd' or 'ct', decided once
        if self.kind != "dsm":
            step_fn = consistency_losses.get_step_fn(
                config, self.model, self.optimizer, teacher.spec() if teacher else None,
                kind=self.kind)
        else:
            step_fn = losses.get_step_fn(config, self.sde, self.model, self.optimizer, True)
            self.eval_call = make_eval_call(
                losses.get_step_fn(config, self.sde, self.model, self.optimizer, train=False),
                self.mesh, self.scaler)
        self.train_call = make_train_call(step_fn, self.mesh, self.scaler, stop_vote=True)
        self._votes = {flag: stop_votes(self.mesh, flag) for flag in (False, True)}
        self.train_ds = datasets.get_dataset(config, "train")
        self.eval_ds = datasets.get_dataset(config, "test")

    def _init(self, rng: jax.Array) -> training_state.TrainState:
        return training_state.init_train_state(rng, self.config, self.model, self.optimizer,
                                               kind=self.kind)

    def abstract_state(self) -> training_state.TrainState:
        """Shapes and (replicated) shardings of the state: the restore target. A resumed run
        needs no initialisation, so a requeued job skips compiling it."""
        shapes = jax.eval_shape(self._init, jax.random.PRNGKey(0))
        return checkpoints.abstract_like(shapes, parallel.replicated(self.mesh))

    def init_state(self) -> training_state.TrainState:
        rng = jax.random.PRNGKey(int(self.config.seed))
        state = jax.jit(self._init)(rng)
        return parallel.replicate(jax.device_get(state), self.mesh)

    def votes(self, stop: bool) -> jax.Array:
        """This process's stop flag as the `votes` input of train_call."""
        return self._votes[bool(stop)]

    def stacked_batch(self, batches) -> dict[str, jax.Array]:
        stacked = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
        return parallel.shard_batch(stacked, self.mesh, leading_axes=1)

    def eval_loss(self, state, step: int) -> jax.Array:
        """Loss of one test batch (cycling through the split), with its own PRNG key."""
        ds = self.eval_ds
        index = (step // int(self.config.training.eval_freq)) % ds.num_batches
        batch = parallel.shard_batch(ds.batch(index), self.mesh)
        key = jax.random.fold_in(jax.random.PRNGKey(int(self.config.seed) + 1), step)
        return self.eval_call(state.replace(rng=parallel.replicate(key, self.mesh)), batch)


def _crossed(step: int, freq: int) -> bool:
    return step % freq == 0


def distill(config, workdir: str | os.PathLike, teacher_workdir: str | None = None,
            init_from_published: str | None = None) -> training_state.TrainState:
    """Consistency distillation (--mode distill): train the student of a CD config
    (config.training.objective='cd') from the teacher in teacher_workdir, or from a published
    score_sde checkpoint (init_from_published, with config.consistency.teacher_config).
    Checkpoints, resume and snapshots as for `train`."""
    if consistency_models.objective(config) != "cd":
        raise ValueError("--mode distill trains a consistency-distillation config: set "
                         "config.training.objective='cd' (e.g. configs/digits_cd.py)")
    teacher = distillation.load_teacher(config, teacher_workdir, init_from_published)
    log.say(f"Distilling the teacher {teacher.source}")
    return train(config, workdir, teacher=teacher)


def train(config, workdir: str | os.PathLike, init_from_published: str | None = None,
          teacher: distillation.TeacherModel | None = None) -> training_state.TrainState:
    """Train from scratch, from the newest checkpoint in workdir, or from published weights.

    Writes workdir/checkpoints, workdir/checkpoints-meta, workdir/tensorboard,
    workdir/metrics.jsonl, workdir/samples/iter_<step>/ (snapshot sampling), workdir/loss.png,
    workdir/config.json and, while it runs, workdir/train.lease. Raises
    run_lease.WorkdirBusyError if another live run trains in workdir, and
    preemption.Preempted (SystemExit, status 75) after saving a checkpoint on SIGTERM/SIGINT.
    """
    workdir = epath.Path(workdir)
    with _hold_workdir(workdir), preemption.PreemptionGuard() as guard:
        if log.is_main():
            run_config.record(config, workdir)
        try:
            return _train(config, workdir, init_from_published, guard, teacher)
        except preemption.Preempted as e:
            log.say(f"score_sde: {e}")
            raise


def _record_data_stats(config, workdir: epath.Path) -> None:
    """workdir/data_stats.json (score_sde.data_stats) of the training data, once per
    workdir (a resumed run keeps the file)."""
    if data_stats.load(workdir) is not None:
        return
    stats = data_stats.measure_dataset(datasets.get_dataset(config, "train"),
                                       datasets.get_data_scaler(config))
    data_stats.record(workdir, stats)
    log.say(f"Training data: mean {stats['mean']:.4g}, spread {stats['spread']:.4g} "
            f"({stats['examples']} examples; {workdir / data_stats.FILE})")


def _snapshot_stats(workdir: epath.Path) -> dict | None:
    """The stored data statistics for the snapshot sampler; on several processes none (each
    would read the file at its own time, and every process must build the same sampler)."""
    return data_stats.load(workdir) if jax.process_count() == 1 else None


@contextlib.contextmanager
def _hold_workdir(workdir: epath.Path) -> Iterator[None]:
    """Process 0 holds the workdir's lease for the run; every process stops if it cannot."""
    lease = run_lease.WorkdirLease(workdir) if log.is_main() else None
    failed = None
    try:
        if lease is not None:
            lease.acquire()
    except Exception as e:  # noqa: BLE001  (re-raised below, after the other processes know)
        failed = e
    if not parallel.all_true(failed is None):
        raise failed or run_lease.WorkdirBusyError(
            f"process 0 could not hold {workdir} (see its message)")
    try:
        yield
    finally:
        if lease is not None:
            lease.release()


def _train(config, workdir: epath.Path, init_from_published: str | None,
           guard: preemption.PreemptionGuard,
           teacher: distillation.TeacherModel | None = None) -> training_state.TrainState:
    t = Trainer(config, workdir, teacher)  # checks the config first
    if log.is_main():
        _record_data_stats(config, workdir)
    ckpts = checkpoints.Checkpoints(workdir)
    writer = log.MetricWriter(workdir)
    state, resumed = _starting_state(t, ckpts, init_from_published, teacher)
    log.say(f"Training {config.model.name} on {config.data.dataset} "
            f"({config.data.image_size}x{config.data.image_size}x{config.data.num_channels}) "
            f"for {int(config.training.n_iters)} steps, global batch "
            f"{config.training.batch_size} on {jax.device_count()} device(s) / "
            f"{jax.process_count()} process(es), {t.n_jit} step(s) per call")
    try:
        state, step = _loop(t, state, _CheckedSaves(ckpts, workdir, resumed), writer, guard)
    finally:
        ckpts.wait()
        ckpts.close()
        writer.close()
    figure = log.plot_losses(workdir)
    log.say(f"Training done at step {step}; checkpoints in {workdir / checkpoints.SNAPSHOT_DIR}"
            + (f"; loss curve {figure}" if figure else ""))
    return state


def _starting_state(t: Trainer, ckpts: checkpoints.Checkpoints,
                    init_from_published: str | None, teacher: distillation.TeacherModel | None):
    """(state, the step it resumes from or None): the newest checkpoint of the workdir, else a
    new state started from the teacher (CD), from published weights, or from scratch."""
    state, resumed = ckpts.restore_latest(t.abstract_state())
    workdir = t.workdir
    if resumed is not None:
        log.say(f"Resuming from the checkpoint at step {resumed} in {workdir}"
                + (" (--init_from_published is ignored)" if init_from_published else ""))
        return state, resumed
    state = t.init_state()
    if teacher is not None:
        init = bool(t.config.consistency.get("init_from_teacher", True))
        state = parallel.replicate(teacher.start(jax.device_get(state), init), t.mesh)
        log.say(f"Starting a new run in {workdir}"
                + (" from the teacher's weights" if init else ""))
    elif init_from_published:
        state = parallel.replicate(checkpoints.state_from_published(
            jax.device_get(state), init_from_published, t.config), t.mesh)
        log.say(f"Starting from the published checkpoint {init_from_published}")
    else:
        log.say(f"Starting a new run in {workdir}")
    return state, None


class _CheckedSaves:
    """Checkpoints that are written only when the losses since the last check and the
    parameters are finite; `last_good` is the step of the newest one written."""

    def __init__(self, ckpts: checkpoints.Checkpoints, workdir: epath.Path,
                 last_good: int | None):
        self.ckpts, self.workdir, self.last_good = ckpts, workdir, last_good

    def check_losses(self, bad: jax.Array, step: int) -> None:
        if bool(bad):
            self._raise(step, "loss")

    def save(self, step: int, state, bad: jax.Array, snapshot: bool) -> None:
        """A snapshot (kept) or a pre-emption checkpoint (replaced by the next one)."""
        self.check_losses(bad, step)
        if not bool(_all_finite(state.params)):
            self._raise(step, "parameters")
        (self.ckpts.save_snapshot if snapshot else self.ckpts.save_preemption)(step, state)
        self.last_good = step

    def _raise(self, step: int, what: str):
        kept = (f"the last good checkpoint (step {self.last_good}) is kept in {self.workdir}"
                if self.last_good is not None else "no checkpoint was written")
        raise NonFiniteLossError(
            f"the training {what} became NaN/Inf at or before step {step}; stopping without "
            f"saving it; {kept}. Try a lower config.optim.lr or config.optim.grad_clip >= 0.")


def _loop(t: Trainer, state, saves: _CheckedSaves, writer, guard: preemption.PreemptionGuard):
    """The optimiser steps to config.training.n_iters with logging, evaluation, checkpoints,
    snapshot samples and the pre-emption stop (module docstring); returns (state, step)."""
    config, tr = t.config, t.config.training
    step = int(jax.device_get(state.step))
    n_iters = int(tr.n_iters)
    bad = jnp.bool_(False)
    data = t.train_ds.iterate(start=step, stop=n_iters)
    bar = log.progress(total=n_iters, initial=step, desc="train", unit="step")
    rate = _StepRate(step)
    sampler = None
    stop = None  # the last call's "some process was asked to stop", read after the next call
    try:
        while step < n_iters:
            saves.ckpts.check()  # a failed background save stops the run before another step
            batch = t.stacked_batch([next(data) for _ in range(t.n_jit)])
            stop_before = stop
            state, step_losses, stop = t.train_call(state, batch, t.votes(guard.requested))
            bad = bad | ~jnp.all(jnp.isfinite(step_losses))
            step += t.n_jit
            bar.update(t.n_jit)
            if _crossed(step, int(tr.log_freq)):
                saves.check_losses(bad, step)
                writer.scalars(step, {"train/loss": float(step_losses[-1]),
                                      "train/steps_per_sec": rate(step)})
            if _crossed(step, int(tr.eval_freq)) and t.eval_call is not None:
                writer.scalars(step, {"eval/loss": float(t.eval_loss(state, step))})
            snapshot = _crossed(step, int(tr.snapshot_freq)) or step == n_iters
            if snapshot or _crossed(step, int(tr.snapshot_freq_for_preemption)):
                saves.save(step, state, bad, snapshot)
            if snapshot and tr.get("snapshot_sampling", False):
                sampler = sampler or ConfigSampler(config, t.sde, t.eps, t.model, t.mesh,
                                                   n=int(tr.batch_size),
                                                   data_stats=_snapshot_stats(t.workdir))
                _snapshot_samples(sampler, state, step, t.workdir, writer, config)
            if stop_before is not None and bool(stop_before):  # every process, same step
                _stop_preempted(saves, state, step, bad, snapshot, guard)
    finally:
        bar.close()
    return state, step


class _StepRate:
    """Steps per second since the last call."""

    def __init__(self, step: int):
        self.time, self.step = time.perf_counter(), step

    def __call__(self, step: int) -> float:
        now = time.perf_counter()
        rate = (step - self.step) / max(now - self.time, 1e-9)
        self.time, self.step = now, step
        return rate


def _stop_preempted(saves: _CheckedSaves, state, step: int, bad: jax.Array, snapshot: bool,
                    guard: preemption.PreemptionGuard):
    """Save the step (unless just saved), wait for the write, and raise Preempted."""
    kind = checkpoints.SNAPSHOT_DIR if snapshot else checkpoints.META_DIR
    if saves.last_good != step:
        saves.save(step, state, bad, snapshot=False)
        kind = checkpoints.META_DIR
    saves.ckpts.wait()  # committed before the exit status says "resume me"
    if jax.process_count() > 1:  # no process exits before all have waited
        multihost_utils.sync_global_devices("score_sde: pre-empted")
    raise preemption.Preempted(step, guard.signal_name or "a signal to another process",
                               str(saves.workdir / kind / str(step)))


def _snapshot_samples(sampler: ConfigSampler, state, step: int, workdir: epath.Path, writer,
                      config) -> None:
    rng = jax.random.fold_in(jax.random.PRNGKey(int(config.seed) + 2), step)
    images, nfe = sampler(state.ema_params, rng)
    images = parallel.to_host(images)
    if log.is_main():
        out = workdir / "samples" / f"iter_{step}"
        out.mkdir(parents=True, exist_ok=True)
        with (out / "sample.npz").open("wb") as f:
            np.savez_compressed(f, samples=log.to_uint8(images))
        path = log.save_image_grid(out / "sample.png", images)
        writer.image(step, "samples", log.image_grid(images))
        log.say(f"Wrote {len(images)} samples ({nfe} network evaluations each) to {path}")



def __getattr__(name: str):
    if name == "Sampler":
        raise ImportError("train.Sampler is now score_sde.inference.ConfigSampler")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
