"""One training run per workdir: the lease file (short leases, no JAX except the last test)."""

import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from score_sde import run_lease

FAST = {"settle_s": 0.0}


def _write_holder(workdir, **fields):
    now = time.time()
    holder = {"id": "other", "host": "node-7", "pid": 4321, "start": now - 60,
              "expires": now + 60, **fields}
    (workdir / run_lease.LEASE_FILE).write_text(json.dumps(holder))
    return holder


def test_a_live_holder_is_refused_with_one_line_naming_it(tmp_path):
    _write_holder(tmp_path)
    with pytest.raises(run_lease.WorkdirBusyError) as e:
        run_lease.WorkdirLease(tmp_path, **FAST).acquire()
    message = str(e.value)
    assert isinstance(e.value, FileExistsError) and "\n" not in message
    assert str(tmp_path) in message and "host node-7, pid 4321, since " in message
    assert "lease expires " in message
    assert json.loads((tmp_path / run_lease.LEASE_FILE).read_text())["id"] == "other"


def test_an_expired_lease_is_taken_over_with_a_message(tmp_path, capsys):
    _write_holder(tmp_path, expires=time.time() - 1)
    with run_lease.WorkdirLease(tmp_path, **FAST) as lease:
        assert run_lease.WorkdirLease(tmp_path).read().id == lease.me.id
    assert "Taking over the stale lease" in capsys.readouterr().out


def test_a_dead_process_of_this_host_does_not_block(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_holder(tmp_path, host=socket.gethostname(), pid=dead.pid)
    with run_lease.WorkdirLease(tmp_path, **FAST):
        pass
    assert f"pid {dead.pid}" in capsys.readouterr().out


def test_the_lease_is_renewed_while_held_and_deleted_at_exit(tmp_path):
    path = tmp_path / run_lease.LEASE_FILE
    with pytest.raises(RuntimeError, match="boom"):
        with run_lease.WorkdirLease(tmp_path, duration_s=0.6, renew_s=0.1, **FAST) as lease:
            first = json.loads(path.read_text())
            assert first["id"] == lease.me.id and first["pid"] == lease.me.pid
            time.sleep(0.45)
            later = json.loads(path.read_text())
            assert later["expires"] >= first["expires"] + 0.2
            # still held after more than one lease duration from the start
            assert later["expires"] > first["start"] + 0.6
            raise RuntimeError("boom")  # an error in the run still releases the workdir
    assert not path.exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary file left


def test_a_lease_taken_over_by_another_run_is_not_deleted(tmp_path):
    lease = run_lease.WorkdirLease(tmp_path, **FAST)
    lease.acquire()
    _write_holder(tmp_path)
    lease.release()
    assert json.loads((tmp_path / run_lease.LEASE_FILE).read_text())["id"] == "other"


def test_two_runs_starting_at_once_one_wins(tmp_path):
    results = {}

    def start(name):
        lease = run_lease.WorkdirLease(tmp_path, settle_s=0.3)
        try:
            lease.acquire()
            results[name] = lease
        except run_lease.WorkdirBusyError as e:
            results[name] = e

    threads = [threading.Thread(target=start, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [r for r in results.values() if isinstance(r, run_lease.WorkdirLease)]
    lost = [r for r in results.values() if isinstance(r, run_lease.WorkdirBusyError)]
    assert len(won) == 1 and len(lost) == 1, results
    assert run_lease.WorkdirLease(tmp_path).read().id == won[0].me.id
    won[0].release()


def test_renewal_must_be_shorter_than_the_lease(tmp_path):
    with pytest.raises(ValueError, match="shorter than the lease"):
        run_lease.WorkdirLease(tmp_path, duration_s=1.0, renew_s=1.0)


def test_train_refuses_a_held_workdir_before_building_anything(tmp_path):
    from score_sde import train
    from tests import driver_configs

    with run_lease.WorkdirLease(tmp_path, **FAST) as lease:
        with pytest.raises(run_lease.WorkdirBusyError,
                           match=f"pid {lease.me.pid}, since .*eval and sample modes"):
            train.train(driver_configs.tiny(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
