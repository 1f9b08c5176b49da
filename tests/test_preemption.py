"""Pre-emption signals (no JAX): the guard, the exit status and launch/slurm.sbatch's requeue."""

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from score_sde import preemption

ROOT = Path(__file__).resolve().parents[1]


def _kill_self(sig):
    os.kill(os.getpid(), sig)


@pytest.fixture(params=["default", "ignored"])
def sigint_before(request):
    """SIGINT's handler before a guard: Python's default, or SIG_IGN, what a process started in
    the background by a shell without job control has (`nohup bash tests/run.sh &`, a CI
    runner). Both are set here, so the tests pass whichever way the suite was started."""
    handler = {"default": signal.default_int_handler, "ignored": signal.SIG_IGN}[request.param]
    outside = signal.signal(signal.SIGINT, handler)
    try:
        yield handler
    finally:
        signal.signal(signal.SIGINT, outside)


def test_first_signal_is_recorded_and_the_old_handlers_come_back(sigint_before):
    def mine(signum, frame):
        raise AssertionError("the guard should have handled this signal")

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with preemption.PreemptionGuard() as guard:
            assert not guard.requested
            _kill_self(signal.SIGTERM)
            _kill_self(signal.SIGTERM)  # a second SIGTERM changes nothing
            assert guard.signal_name == "SIGTERM"
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) is sigint_before
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_second_sigint_aborts_at_once(sigint_before):
    """Inside the guard SIGINT is the guard's even where it was ignored before (a background
    training process still stops at a checkpoint on SIGINT, and aborts on a second one);
    afterwards it is what it was (ignored stays ignored)."""
    with preemption.PreemptionGuard() as guard:
        _kill_self(signal.SIGINT)
        assert guard.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt, match="second SIGINT"):
            _kill_self(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is sigint_before
    if sigint_before is signal.SIG_IGN:
        _kill_self(signal.SIGINT)  # ignored again: nothing happens


def test_sigint_after_sigterm_aborts_too():
    with preemption.PreemptionGuard() as guard:
        _kill_self(signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):
            _kill_self(signal.SIGINT)
        assert guard.signal_name == "SIGTERM"


def test_off_the_main_thread_no_handler_is_installed():
    seen = {}

    def run():
        with preemption.PreemptionGuard() as guard:
            seen["handler"] = signal.getsignal(signal.SIGTERM)
            guard.request("test")
            seen["name"] = guard.signal_name

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == {"handler": before, "name": "test"}


def test_preempted_is_a_system_exit_with_the_resume_status():
    e = preemption.Preempted(12, "SIGTERM", "/w/checkpoints-meta/12")
    assert isinstance(e, SystemExit) and e.code == preemption.EXIT_PREEMPTED == 75
    assert str(e) == ("pre-empted at step 12 by SIGTERM; checkpoint saved in "
                      "/w/checkpoints-meta/12; exit 75 = resume me")


# ------------------------------------------------------------------- launch/slurm.sbatch


def _sbatch(tmp_path, srun_status: int, restart_count: int) -> tuple[int, str]:
    """Run the batch script with stub srun/scontrol; returns (status, what scontrol was told)."""
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    log = tmp_path / "scontrol.log"
    (stubs / "srun").write_text(f"#!/bin/sh\nexit {srun_status}\n")
    (stubs / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
           "SLURM_RESTART_COUNT": str(restart_count), "SLURM_SUBMIT_DIR": str(ROOT)}
    done = subprocess.run(["bash", str(ROOT / "launch" / "slurm.sbatch"), "cfg.py", "wd"],
                          env=env, capture_output=True, text=True, timeout=30)
    return done.returncode, log.read_text() if log.exists() else ""


def test_slurm_script_asks_for_the_signal_ahead_of_the_time_limit():
    text = (ROOT / "launch" / "slurm.sbatch").read_text()
    assert "#SBATCH --signal=TERM@" in text  # to every task, not only the batch shell
    assert "#SBATCH --requeue" in text


@pytest.mark.parametrize("srun_status,restarts,requeued,status", [
    (75, 0, True, 0),      # pre-empted: requeue; the job itself ends cleanly
    (75, 99, False, 75),   # pre-empted too often: no requeue, the status says why
    (0, 0, False, 0),      # finished
    (1, 0, False, 1),      # failed: never requeued
])
def test_slurm_script_requeues_only_a_preempted_run(tmp_path, srun_status, restarts, requeued,
                                                    status):
    got_status, told = _sbatch(tmp_path, srun_status, restarts)
    assert got_status == status
    assert told == ("requeue 4242\n" if requeued else "")


def test_multi_gpu_script_passes_sigterm_to_every_process_and_exits_75(tmp_path):
    stubs, log = tmp_path / "bin", tmp_path / "python.log"
    stubs.mkdir()
    (stubs / "python").write_text(  # a training process: exits 75 on SIGTERM
        f"#!/bin/bash\necho started >> {log}\ntrap 'echo term >> {log}; exit 75' TERM\n"
        "while true; do sleep 0.05; done\n")
    (stubs / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "NUM_PROCESSES": "2",
           "PORT": "1"}
    proc = subprocess.Popen(["bash", str(ROOT / "launch" / "multi_gpu.sh"), "cfg.py", "wd"],
                            env=env)
    try:
        deadline = time.time() + 20
        while time.time() < deadline and (
                not log.exists() or log.read_text().count("started") < 2):
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == preemption.EXIT_PREEMPTED
    finally:
        if proc.poll() is None:
            proc.kill()
    assert sorted(log.read_text().split()) == ["started", "started", "term", "term"]
