"""The training loop on 8 CPU devices: outputs, exact resumption after kill -9, NaN stop, errors."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from score_sde import checkpoints, losses, train
from score_sde import logging_utils as log
from tests import driver_configs

ROOT = Path(__file__).resolve().parents[1]
# 16 steps, a pre-emption checkpoint every 4, snapshots at 8 and 16, a log line every step.
N = 16
SCHEDULE = {"training.n_iters": N, "training.log_freq": 1, "training.eval_freq": 8,
            "training.snapshot_freq": 8, "training.snapshot_freq_for_preemption": 4}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
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
