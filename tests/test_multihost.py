"""Two processes x 2 CPU devices on 127.0.0.1 (jax.distributed, gloo): a short training run.

Each process records the example positions it read; together they must be the global batches,
disjoint between processes, and the final parameters must equal a one-process run's. Pre-emption:
SIGTERM to one process stops both at the same step, and the restart continues the run exactly.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from score_sde import losses, models, parallel, preemption, sde_lib, train
from score_sde.data import get_data_scaler, get_dataset
from tests import driver_configs

ROOT = Path(__file__).resolve().parents[1]
SCHEDULE = {"training.n_iters": 4, "training.log_freq": 2, "training.eval_freq": 4,
            "training.snapshot_freq": 4, "training.snapshot_freq_for_preemption": 2}

WORKER = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {root!r})
    from score_sde import parallel, train
    from score_sde.data import Pipeline
    from tests import driver_configs

    pid = int(sys.argv[1])
    parallel.initialize("127.0.0.1:{port}", num_processes=2, process_id=pid)
    read = []
    original = Pipeline.batch
    def recording(self, step):
        if self.shuffle:
            read.append(list(self.positions(step)))
        return original(self, step)
    Pipeline.batch = recording
    state = train.train(driver_configs.tiny({schedule!r}), {workdir!r})
    import jax, numpy as np
    leaves = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))]
    np.savez({out!r} + f"/params_{{pid}}.npz", *leaves)
    json.dump(read, open({out!r} + f"/read_{{pid}}.json", "w"))
""")


PREEMPT_SCHEDULE = {"training.n_iters": 8, "training.n_jitted_steps": 2, "training.log_freq": 2,
                    "training.eval_freq": 8, "training.snapshot_freq": 8,
                    "training.snapshot_freq_for_preemption": 4}

# argv: process id, workdir, and the call (1-based) before which process 1 sends itself SIGTERM
# (0: never). Records the step each process stopped at; exits with train()'s status.
PREEMPT_WORKER = textwrap.dedent("""
    import json, os, signal, sys
    sys.path.insert(0, {root!r})
    from score_sde import parallel, preemption, train
    from tests import driver_configs

    pid, workdir, signal_at = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    parallel.initialize("127.0.0.1:" + sys.argv[4], num_processes=2, process_id=pid)
    calls = []
    original = train.Trainer.stacked_batch
    def counting(self, batches):
        calls.append(1)
        if pid == 1 and len(calls) == signal_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batches)
    train.Trainer.stacked_batch = counting
    try:
        train.train(driver_configs.tiny({schedule!r}), workdir)
    except preemption.Preempted as e:
        json.dump({{"step": e.step, "signal": e.signal_name, "calls": len(calls)}},
                  open(f"{{workdir}}.stop_{{pid}}.json", "w"))
        raise
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single_process_params(n_steps: int):
    config = driver_configs.tiny(SCHEDULE)
    sde, _ = sde_lib.get_sde(config)
    model, optimizer = models.get_model(config), losses.get_optimizer(config)
    mesh = parallel.make_mesh()
    call = train.make_train_call(losses.get_step_fn(config, sde, model, optimizer, True), mesh,
                                 get_data_scaler(config))
    init = jax.jit(lambda r: losses.init_train_state(r, config, model, optimizer))(
        jax.random.PRNGKey(int(config.seed)))
    state = parallel.replicate(jax.device_get(init), mesh)
    ds = get_dataset(config, "train", process_index=0, process_count=1)
    for step in range(n_steps):
        batch = {k: v[None] for k, v in ds.batch(step).items()}
        state, _ = call(state, parallel.shard_batch(batch, mesh, leading_axes=1))
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))], ds


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    port = _free_port()
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=str(ROOT), port=port, schedule=SCHEDULE,
                                    workdir=str(tmp_path / "workdir"), out=str(tmp_path)))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, str(script), str(pid)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for pid in range(2)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    # only process 0 logs
    assert "Training done" in outputs[0] and "Training done" not in outputs[1]
    assert (tmp_path / "workdir" / "metrics.jsonl").exists()

    read = [json.loads((tmp_path / f"read_{pid}.json").read_text()) for pid in range(2)]
    expected, ds = _single_process_params(int(SCHEDULE["training.n_iters"]))
    for step in range(int(SCHEDULE["training.n_iters"])):
        mine, theirs = set(read[0][step]), set(read[1][step])
        assert mine and theirs and not mine & theirs
        assert sorted(mine | theirs) == list(ds.positions(step))

    got = np.load(tmp_path / "params_0.npz")
    for i, want in enumerate(expected):
        np.testing.assert_allclose(got[f"arr_{i}"], want, rtol=2e-5, atol=2e-6)
    other = np.load(tmp_path / "params_1.npz")
    for i in range(len(expected)):
        np.testing.assert_array_equal(other[f"arr_{i}"], got[f"arr_{i}"])


def test_incomplete_multihost_flags_are_one_clear_error():
    with pytest.raises(ValueError, match="--num_processes and --process_id"):
        parallel.initialize("127.0.0.1:1")


def _run_two(script: Path, workdir: Path, signal_at: int = 0) -> list[tuple[int, str]]:
    port = str(_free_port())
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, str(script), str(pid), str(workdir),
                               str(signal_at), port], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for pid in range(2)]
    try:
        outputs = [p.communicate(timeout=300)[0] for p in procs]
        return [(p.returncode, out) for p, out in zip(procs, outputs, strict=True)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def _losses(workdir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_step_and_the_restart_is_exact(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(PREEMPT_WORKER.format(root=str(ROOT), schedule=PREEMPT_SCHEDULE))
    n_jit = PREEMPT_SCHEDULE["training.n_jitted_steps"]
    reference, run = tmp_path / "reference", tmp_path / "run"
    for status, out in _run_two(script, reference):
        assert status == 0, out[-3000:]

    stopped = _run_two(script, run, signal_at=2)  # process 1 only, before its 2nd call
    for status, out in stopped:
        assert status == preemption.EXIT_PREEMPTED, out[-3000:]
    info = [json.loads(Path(f"{run}.stop_{pid}.json").read_text()) for pid in range(2)]
    assert info[0]["step"] == info[1]["step"]
    assert info[1]["signal"] == "SIGTERM" and info[0]["signal"] == "a signal to another process"
    saved = info[0]["step"]
    done_at_signal = n_jit  # the 1st call was dispatched; the 2nd's batch was being built
    assert done_at_signal <= saved <= done_at_signal + 2 * n_jit
    assert saved < PREEMPT_SCHEDULE["training.n_iters"]
    assert f"pre-empted at step {saved} by a signal to another process" in stopped[0][1]

    resumed = _run_two(script, run)
    for status, out in resumed:
        assert status == 0, out[-3000:]
    assert f"Resuming from the checkpoint at step {saved} " in resumed[0][1]
    want, got = _losses(reference), _losses(run)
    steps = list(range(n_jit, PREEMPT_SCHEDULE["training.n_iters"] + 1, n_jit))
    assert sorted(want) == sorted(got) == steps
    np.testing.assert_allclose([got[s] for s in steps], [want[s] for s in steps], rtol=1e-6)
