"""Orbax checkpoints: round trip, atomic writes, pre-emption retention, skipping bad ones."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import checkpoints


def _state(value: float):
    return {"params": {"w": jnp.full((3, 2), value)}, "step": jnp.int32(value),
            "rng": jax.random.PRNGKey(int(value))}


@pytest.fixture
def saved(tmp_path):
    ck = checkpoints.Checkpoints(tmp_path, async_save=True)
    ck.save_snapshot(4, _state(4.0))
    ck.save_preemption(6, _state(6.0))
    ck.save_preemption(8, _state(8.0))
    ck.wait()
    yield tmp_path, ck
    ck.close()


def test_round_trip_and_retention(saved):
    workdir, ck = saved
    assert ck.snapshot_steps() == [4]
    assert sorted(p.name for p in (workdir / checkpoints.META_DIR).iterdir()) == ["8"]
    state, step = ck.restore_latest(_state(0.0))
    assert step == 8
    np.testing.assert_array_equal(state["params"]["w"], np.full((3, 2), 8.0))
    np.testing.assert_array_equal(state["rng"], jax.random.PRNGKey(8))
    snap = ck.restore_snapshot(_state(0.0), 4)
    assert int(snap["step"]) == 4


def test_writes_leave_no_temporary_directories(saved):
    workdir, _ = saved
    names = [p.name for p in workdir.rglob("*")]
    assert not [n for n in names if "tmp" in n]


def test_incomplete_and_corrupt_checkpoints_are_skipped(saved, capsys):
    workdir, ck = saved
    meta = workdir / checkpoints.META_DIR
    # an interrupted write: orbax's temporary directory is never listed
    (meta / "20.orbax-checkpoint-tmp-1").mkdir()
    # a directory that lost its metadata
    shutil.copytree(meta / "8", meta / "12")
    (meta / "12" / "_CHECKPOINT_METADATA").unlink()
    # a checkpoint whose array data is garbage
    shutil.copytree(meta / "8", meta / "10")
    for f in (meta / "10" / checkpoints.ITEM).rglob("*"):
        if f.is_file() and "d" in f.parent.name:
            f.write_bytes(b"garbage")
    fresh = checkpoints.Checkpoints(workdir)
    state, step = fresh.restore_latest(_state(0.0))
    fresh.close()
    out = capsys.readouterr().out
    assert "Skipping incomplete checkpoint" in out and "12" in out
    assert "Skipping unreadable checkpoint" in out and "10" in out
    assert step == 8 and float(state["params"]["w"][0, 0]) == 8.0


def test_missing_snapshot_names_the_available_steps(saved):
    _, ck = saved
    with pytest.raises(FileNotFoundError, match=r"step 5.*\[4\]"):
        ck.restore_snapshot(_state(0.0), 5)


def test_nothing_to_restore(tmp_path):
    target = _state(1.0)
    state, step = checkpoints.Checkpoints(tmp_path).restore_latest(target)
    assert step is None and state is target
