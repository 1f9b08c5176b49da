"""The command line: the README's demo command end to end, and one clear message per mistake."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import driver_configs

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu",
       "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}


def _main(*args, timeout=300, env=None):
    return subprocess.run([sys.executable, "-m", "score_sde.main", *args], cwd=ROOT,
                          env={**ENV, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def test_readme_demo_runs_end_to_end(tmp_path):
    """`bash launch/demo.sh` (the README's main command) at a reduced step count."""
    fast = [f"--config.{k}={driver_configs._literal(v)}" for k, v in driver_configs.FAST.items()
            if k != "training.snapshot_sampling"]
    args = ["--config.training.n_iters=20", "--config.training.snapshot_freq=10",
            "--config.training.snapshot_freq_for_preemption=10", "--config.training.log_freq=5",
            "--config.training.eval_freq=10", "--config.model.num_scales=20",
            "--config.eval.batch_size=16", f"--compilation_cache={tmp_path / 'xla'}", *fast]
    done = subprocess.run(["bash", "launch/demo.sh", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**ENV, "WORKDIR": str(tmp_path)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert (tmp_path / "samples" / "iter_20" / "sample.png").exists()
    grid = tmp_path / "eval" / "samples_step_20" / "grid.png"
    assert grid.exists() and str(grid) in done.stdout
    assert (tmp_path / "eval" / "samples_step_20" / "samples_000000.npz").exists()


@pytest.mark.parametrize("args,message", [
    (["--config.training.n_iterz=5"], "n_iterz"),
    (["--config.data.dataset=CIFAR10"], "config.data.dataset='CIFAR10': the tfds dataset"),
    (["--config.training.batch_size=0"], "config.training.batch_size=0 must be a positive"),
    (["--mode=dance"], "--mode='dance' is not a mode; choose one of"),
    (["--mode=sample"], "no checkpoint in"),
])
def test_mistakes_give_one_clear_message(tmp_path, args, message):
    done = _main("--config=configs/tiny.py", f"--workdir={tmp_path}", *args, timeout=120,
                 env={"TFDS_DATA_DIR": str(tmp_path / "no_data")})
    assert done.returncode != 0
    assert message in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
