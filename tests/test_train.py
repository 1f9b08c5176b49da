"""The training loop on 8 CPU devices: outputs, exact resumption after kill -9 and after
SIGTERM (pre-emption), NaN stop, errors, the config written to the workdir."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from score_sde import checkpoints, losses, preemption, run_config, run_lease, train
from score_sde import logging_utils as log
from tests import driver_configs

ROOT = Path(__file__).resolve().parents[1]
# 16 steps, a pre-emption checkpoint every 4, snapshots at 8 and 16, a log line every step.
N = 16
SCHEDULE = {"training.n_iters": N, "training.log_freq": 1, "training.eval_freq": 8,
            "training.snapshot_freq": 8, "training.snapshot_freq_for_preemption": 4}


@pytest.fixture(scope="module", autouse=True)
def _fast_runs(tmp_path_factory):
    """Runs here start alone in their workdir: no lease race-settling pause. JAX's persistent
    compilation cache (what --compilation_cache turns on) lets every later train() of this
    module load the reference run's compiled programs: compiling is ~85% of a tiny run's time."""
    from jax.experimental.compilation_cache import compilation_cache as cc

    options = {"jax_compilation_cache_dir": str(tmp_path_factory.mktemp("jit_cache")),
               "jax_persistent_cache_min_compile_time_secs": 0.0,
               "jax_persistent_cache_min_entry_size_bytes": 0}
    before = {k: getattr(jax.config, k) for k in options}
    with pytest.MonkeyPatch.context() as m:
        m.setattr(run_lease, "SETTLE_S", 0.0)
        for k, v in options.items():
            jax.config.update(k, v)
        cc.reset_cache()
        try:
            yield
        finally:
            for k, v in before.items():
                jax.config.update(k, v)
            cc.reset_cache()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, _fast_runs):
    """An uninterrupted run (in this process, 8 devices)."""
    workdir = tmp_path_factory.mktemp("reference")
    state = train.train(driver_configs.tiny(SCHEDULE), workdir)
    return workdir, state


def _losses(workdir) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in log.read_metrics(workdir) if "train/loss" in r}


def test_run_writes_checkpoints_logs_and_figure(reference):
    workdir, state = reference
    assert int(state.step) == N
    assert sorted(int(p.name) for p in (workdir / checkpoints.SNAPSHOT_DIR).iterdir()) == [8, 16]
    assert [p.name for p in (workdir / checkpoints.META_DIR).iterdir()] == ["12"]
    assert sorted(_losses(workdir)) == list(range(1, N + 1))
    assert all(np.isfinite(v) for v in _losses(workdir).values())
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert (workdir / "loss.png").stat().st_size > 1000
    evals = [r for r in log.read_metrics(workdir) if "eval/loss" in r]
    assert [r["step"] for r in evals] == [8, 16]
    lines = (workdir / log.METRICS_FILE).read_text().splitlines()
    assert all(isinstance(json.loads(line)["step"], int) for line in lines)
    recorded = json.loads((workdir / run_config.CONFIG_FILE).read_text())
    assert recorded["training"]["n_iters"] == N and recorded["model"]["ch_mult"] == [1]
    assert not (workdir / run_lease.LEASE_FILE).exists()  # released at the end


def test_sigterm_saves_where_all_agree_and_the_restart_continues_the_run(
        reference, tmp_path, monkeypatch, capsys):
    """In-process: SIGTERM arrives while step 5 is logged; the run saves, raises Preempted
    (exit 75); the restart resumes there and logs the uninterrupted run's losses."""
    ref_dir, _ = reference
    real = log.MetricWriter.scalars
    sent = {}

    def scalars(self, step, values):
        real(self, step, values)
        if step == 5 and not sent:
            sent["at"] = step
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(log.MetricWriter, "scalars", scalars)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(preemption.Preempted) as e:
        train.train(driver_configs.tiny(SCHEDULE), tmp_path)
    assert e.value.code == preemption.EXIT_PREEMPTED
    saved = e.value.step
    # no step that was done when the signal came is lost; the vote is read one call late
    assert sent["at"] <= saved <= sent["at"] + 2 * driver_configs.FAST["training.n_jitted_steps"]
    assert checkpoints.is_complete(tmp_path / checkpoints.META_DIR / str(saved))
    assert f"pre-empted at step {saved} by SIGTERM" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) is handler
    assert not (tmp_path / run_lease.LEASE_FILE).exists()

    monkeypatch.setattr(log.MetricWriter, "scalars", real)
    train.train(driver_configs.tiny(SCHEDULE), tmp_path)
    assert f"Resuming from the checkpoint at step {saved} " in capsys.readouterr().out
    got, want = _losses(tmp_path), _losses(ref_dir)
    assert sorted(got) == list(range(1, N + 1))
    np.testing.assert_allclose([got[s] for s in range(1, N + 1)],
                               [want[s] for s in range(1, N + 1)], rtol=1e-6)


def test_a_changed_config_is_printed_field_by_field_and_recorded(tmp_path, capsys):
    first = driver_configs.tiny()
    assert run_config.record(first, tmp_path) == []
    changed = driver_configs.tiny({"optim.lr": 1e-3, "model.ch_mult": (1, 2)})
    lines = run_config.record(changed, tmp_path)
    assert lines == ["config.model.ch_mult: [1] -> [1, 2]",
                     f"config.optim.lr: {first.optim.lr} -> 0.001"]
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("The config differs from the one in ")
    assert out[1:] == [f"  {line}" for line in lines]
    assert json.loads((tmp_path / run_config.CONFIG_FILE).read_text())["optim"]["lr"] == 1e-3
    assert run_config.record(changed, tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [run_config.CONFIG_FILE]


@pytest.mark.slow
def test_kill_9_then_resume_reproduces_the_uninterrupted_run(reference, tmp_path):
    ref_dir, ref_state = reference
    cmd = [sys.executable, "-m", "score_sde.main", f"--workdir={tmp_path}",
           *driver_configs.cli(SCHEDULE)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:  # kill as soon as a checkpoint is complete and training went on past it
        while time.time() < deadline and proc.poll() is None:
            saved = [int(d.name) for d in (tmp_path / checkpoints.META_DIR).glob("*")
                     if d.name.isdigit() and checkpoints.is_complete(d)]
            steps = _losses(tmp_path) if (tmp_path / log.METRICS_FILE).exists() else {}
            if saved and max(steps, default=0) > max(saved):
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = max(_losses(tmp_path))
    assert killed_at < N, "the run finished before it could be killed"
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = [line for line in done.stdout.splitlines() if "Resuming from" in line]
    assert resumed, done.stdout[-2000:]
    resumed_step = int(resumed[0].split("step ")[1].split()[0])
    assert 4 <= resumed_step <= killed_at and resumed_step % 4 == 0
    ref_losses, got = _losses(ref_dir), _losses(tmp_path)
    after = list(range(resumed_step + 1, N + 1))
    np.testing.assert_allclose([got[s] for s in after], [ref_losses[s] for s in after],
                               rtol=1e-6)
    restored, _ = checkpoints.Checkpoints(tmp_path).restore_latest(
        jax.device_get(ref_state))
    for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(ref_state.params),
                    strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real = losses.get_step_fn

    def poisoned(config, sde, model, optimizer, train):
        step_fn = real(config, sde, model, optimizer, train)

        def step(state, batch):  # the loss (and the update) turn NaN from step 7 on
            new, loss = step_fn(state, batch)
            nan = jax.numpy.where(state.step >= 6, jax.numpy.nan, 1.0)
            return new.replace(params=jax.tree.map(lambda p: p * nan, new.params)), loss * nan

        return step

    monkeypatch.setattr(losses, "get_step_fn", poisoned)
    config = driver_configs.tiny({**SCHEDULE, "training.n_iters": 12, "training.log_freq": 4})
    with pytest.raises(train.NonFiniteLossError, match=r"NaN/Inf.*step 8.*step 4"):
        train.train(config, tmp_path)
    assert [p.name for p in (tmp_path / checkpoints.META_DIR).iterdir()] == ["4"]
    assert not (tmp_path / checkpoints.SNAPSHOT_DIR).exists() or not list(
        (tmp_path / checkpoints.SNAPSHOT_DIR).iterdir())


@pytest.mark.parametrize("field,value,message", [
    ("training.batch_size", 12, r"config.training.batch_size=12 must be a positive multiple "
                                r"of the number of devices \(8"),
    ("eval.batch_size", 4, r"config.eval.batch_size=4"),
    ("training.n_jitted_steps", 3, r"config.training.n_iters=16 must be a positive multiple of "
                                   r"config.training.n_jitted_steps=3"),
])
def test_bad_schedule_or_batch_is_one_clear_error(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        train.train(driver_configs.tiny({**SCHEDULE, field: value}), tmp_path)


@pytest.mark.slow
def test_cli_second_train_is_refused_and_sigterm_exits_75(tmp_path):
    """Through score_sde.main: a second `train` on a held workdir ends in one line naming the
    holder (exit 1); SIGTERM to the first saves a checkpoint and exits 75 with one line."""
    long = {**SCHEDULE, "training.n_iters": 400, "training.eval_freq": 400,
            "training.snapshot_freq": 400, "training.snapshot_freq_for_preemption": 400}
    cmd = [sys.executable, "-m", "score_sde.main", f"--workdir={tmp_path / 'w'}",
           *driver_configs.cli(long)]
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not (
                (tmp_path / "w" / log.METRICS_FILE).exists() and _losses(tmp_path / "w")):
            time.sleep(0.2)
        second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert second.returncode == 1, second.stderr[-2000:]
    errors = [line for line in second.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and f"pid {proc.pid}, since " in errors[0], second.stderr[-2000:]
    assert proc.returncode == preemption.EXIT_PREEMPTED, (tmp_path / "err").read_text()[-2000:]
    stops = [line for line in (tmp_path / "out").read_text().splitlines() if "pre-empted" in line]
    assert len(stops) == 1 and stops[0].endswith("exit 75 = resume me"), stops
    saved = int(stops[0].split("at step ")[1].split()[0])
    assert checkpoints.is_complete(tmp_path / "w" / checkpoints.META_DIR / str(saved))
    assert max(_losses(tmp_path / "w")) <= saved < long["training.n_iters"]
    assert "got SIGTERM" in (tmp_path / "err").read_text()
    assert not (tmp_path / "w" / run_lease.LEASE_FILE).exists()
