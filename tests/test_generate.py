"""--mode sample (score_sde.generate): N samples to disk, sharded, resumable, with a manifest.

The model is a tiny class-conditional U-Net at its initial weights (a step-0 snapshot: no
training to compile); 2 DDIM steps per sample. conftest gives 8 CPU devices.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from score_sde import generate, losses, parallel, sample_shards
from score_sde.inference import Restorer
from tests import driver_configs

ROOT = Path(__file__).resolve().parents[1]
GEN = {"model.num_classes": 3, "sampling.method": "ddim", "sampling.nfe": 2,
       "sampling.guidance_scale": 0.5, "sampling.num_samples": 13, "sampling.batch_size": 8,
       "sampling.output_format": "both"}


def _config(**overrides):
    return driver_configs.tiny({**GEN, **{k.replace("__", "."): v for k, v in overrides.items()}})


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A workdir whose only checkpoint is the initial state, saved as snapshot 0."""
    config, workdir = _config(), tmp_path_factory.mktemp("gen")
    r = Restorer(config, workdir)
    state = jax.jit(lambda k: losses.init_train_state(k, config, r.model, r.optimizer))(
        jax.random.PRNGKey(0))
    r.ckpts.save_snapshot(0, parallel.replicate(state, r.mesh))
    r.ckpts.wait()
    r.close()
    return workdir


@pytest.fixture(scope="module", autouse=True)
def compiled_once():
    """One compiled sampler per (batch size, mesh) for the whole module: the in-process runs
    differ only in their output folders, and compiling is most of their time."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(generate, "IndexedSampler", _cached_sampler)
        yield


_SAMPLERS = {}


def _cached_sampler(config, sde, eps, model, mesh, batch_size, data_stats=None):
    key = (batch_size, mesh.devices.size, config.seed, str(data_stats))
    if key not in _SAMPLERS:
        _SAMPLERS[key] = sample_shards.IndexedSampler(config, sde, eps, model, mesh, batch_size,
                                                      data_stats=data_stats)
    return _SAMPLERS[key]


@pytest.fixture(scope="module")
def uninterrupted(workdir, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "samples"
    assert generate.sample(_config(sampling__output_dir=str(out)), workdir) == out
    return out


def test_layout_covers_every_index_once_with_short_last_shards():
    layout = sample_shards.ShardLayout(num_samples=13, batch_size=8, process_count=2)
    shards = [layout.shard(k, p) for k in range(layout.rounds) for p in range(2)]
    assert [list(s) for s in shards] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12]]
    assert list(layout.batch_indices(1, 1)) == [12, 13, 14, 15]  # 13..15: padding, not kept
    assert layout.files(shards[3], np.array([2]), "both") == ["samples_000012.npz",
                                                              "png/2/000012.png"]


def test_n_not_a_multiple_of_batch_nor_devices(uninterrupted):
    files = sorted(uninterrupted.glob("samples_*.npz"))
    assert [f.name for f in files] == ["samples_000000.npz", "samples_000008.npz"]
    shards = [np.load(f) for f in files]
    assert [len(s["samples"]) for s in shards] == [8, 5]  # the last shard is short
    indices = np.concatenate([s["indices"] for s in shards])
    assert indices.tolist() == list(range(13))  # none lost, none twice
    labels = np.concatenate([s["labels"] for s in shards])
    assert labels.tolist() == [i % 3 for i in range(13)]  # every class in turn
    samples = np.concatenate([s["samples"] for s in shards])
    assert samples.shape == (13, 8, 8, 1) and samples.dtype == np.uint8
    assert len({s.tobytes() for s in samples}) == 13  # each sample its own noise
    pngs = sorted((uninterrupted / "png").rglob("*.png"))
    assert len(pngs) == 13 and (uninterrupted / "png" / "1" / "000004.png") in pngs
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(uninterrupted / "png/1/000004.png")),
                          samples[4, ..., 0])
    manifest = json.loads((uninterrupted / "manifest.json").read_text())
    assert manifest["checkpoint"]["step"] == 0 and manifest["num_samples"] == 13
    assert manifest["sampler"]["method"] == "ddim" and manifest["seed"] == 42
    assert manifest["config"]["sampling"]["guidance_scale"] == 0.5


def test_restart_after_a_crash_ends_with_the_same_files(workdir, uninterrupted, tmp_path,
                                                       monkeypatch):
    out = tmp_path / "samples"
    config = _config(sampling__output_dir=str(out))
    calls = []
    real = sample_shards.write_shard

    def crash_in_second_shard(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a kill in the middle of the job
        real(*args)

    monkeypatch.setattr(generate, "write_shard", crash_in_second_shard)
    with pytest.raises(KeyboardInterrupt):
        generate.sample(config, workdir)
    assert not (out / "samples_000008.npz").exists()
    monkeypatch.setattr(generate, "write_shard", real)
    stamp = os.stat(out / "samples_000000.npz").st_mtime_ns
    generate.sample(config, workdir)
    assert os.stat(out / "samples_000000.npz").st_mtime_ns == stamp  # skipped, not redone
    assert _files(out) == _files(uninterrupted)


def test_samples_do_not_depend_on_batch_size_or_device_count(workdir, uninterrupted, tmp_path):
    out = tmp_path / "samples"
    config = _config(sampling__output_dir=str(out), sampling__batch_size=16,
                     sampling__output_format="npz")
    r = Restorer(config, workdir)
    r.mesh = parallel.make_mesh(jax.devices()[:2])  # 2 devices instead of 8
    state, _ = r.restore()
    got = sample_shards.IndexedSampler(config, r.sde, r.eps, r.model, r.mesh, 16)(
        state.ema_params, np.arange(16))[0]
    r.close()
    want = np.concatenate([np.load(f)["samples"]
                           for f in sorted(uninterrupted.glob("samples_*.npz"))])
    diff = np.abs(sample_shards.local_rows(got)[:13] * 255.0 - want.astype(np.float64))
    assert diff.max() <= 0.5 + 1e-3, diff.max()  # the same floats, up to uint8 rounding


def test_another_runs_folder_and_an_unwritable_one_give_one_clear_error(workdir,
                                                                        uninterrupted,
                                                                        tmp_path):
    other = _config(sampling__output_dir=str(uninterrupted), seed=7)
    with pytest.raises(FileExistsError, match=r"holds the files of another run .*seed: 42 -> 7"):
        generate.sample(other, workdir)
    (tmp_path / "file").write_text("")
    blocked = _config(sampling__output_dir=str(tmp_path / "file" / "samples"))
    with pytest.raises(OSError, match=r"file/samples cannot be written"):
        generate.sample(blocked, workdir)
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "samples_000000.npz").write_bytes(b"")
    with pytest.raises(FileExistsError, match="holds sample files but no manifest.json"):
        generate.sample(_config(sampling__output_dir=str(stray)), workdir)
    with pytest.raises(ValueError, match="output_format='jpg'"):
        generate.sample(_config(sampling__output_format="jpg"), workdir)
    fresh = tmp_path / "fresh"
    with pytest.raises(ValueError, match=r"config.sampling.batch_size=12 must be a positive "
                                         r"multiple of the number of devices \(8"):
        generate.sample(_config(sampling__output_dir=str(fresh), sampling__batch_size=12),
                        workdir)
    assert not fresh.exists()  # nothing written: the corrected job starts afresh


# ----------------------------------------------------------------------------- slow: processes

ENV = {**os.environ, "JAX_PLATFORMS": "cpu",
       "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}


def _main_sample(workdir, out, *extra) -> subprocess.Popen:
    args = driver_configs.cli(GEN) + [f"--workdir={workdir}", "--mode=sample",
                                      f"--config.sampling.output_dir={out}", *extra]
    return subprocess.Popen([sys.executable, "-m", "score_sde.main", *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_resume_after_kill_9_gives_the_files_of_an_uninterrupted_job(workdir, tmp_path):
    many = ("--config.sampling.num_samples=400",)
    full = _main_sample(workdir, tmp_path / "full", *many)
    assert full.wait(300) == 0, full.stdout.read()[-3000:]
    out = tmp_path / "killed"
    job = _main_sample(workdir, out, *many)
    try:
        while job.poll() is None and len(list(out.glob("samples_*.npz"))) < 5:
            time.sleep(0.05)
        os.kill(job.pid, signal.SIGKILL)
    finally:
        job.wait(60)
    written = len(list(out.glob("samples_*.npz")))
    assert 5 <= written < 50, written  # killed in the middle of the job
    again = _main_sample(workdir, out, *many)
    text = again.communicate(timeout=300)[0]
    assert again.returncode == 0, text[-3000:]
    assert f"{400 - 8 * written} drawn now" in text or f"{392 - 8 * written} drawn now" in text
    assert _files(out) == _files(tmp_path / "full")


WORKER = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {root!r})
    from score_sde import generate, parallel
    from tests import driver_configs

    pid = int(sys.argv[1])
    parallel.initialize("127.0.0.1:{port}", num_processes=2, process_id=pid)
    written = []
    real = generate.write_shard
    def recording(out, layout, fmt, images, indices, labels):
        written.append([int(i) for i in indices])
        real(out, layout, fmt, images, indices, labels)
    generate.write_shard = recording
    generate.sample(driver_configs.tiny({gen!r}), {workdir!r})
    json.dump(written, open({out!r} + f"/written_{{pid}}.json", "w"))
""")


@pytest.mark.slow
def test_two_hosts_write_disjoint_shards_of_the_same_samples(workdir, uninterrupted, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "two_hosts"
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=str(ROOT), port=port, workdir=str(workdir),
                                    out=str(tmp_path),
                                    gen={**driver_configs.FAST, **GEN,
                                         "sampling.output_dir": str(out)}))
    env = {**ENV, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    procs = [subprocess.Popen([sys.executable, str(script), str(pid)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for pid in range(2)]
    try:
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, text in zip(procs, outputs, strict=True):
        assert p.returncode == 0, text[-3000:]
    written = [json.loads((tmp_path / f"written_{pid}.json").read_text()) for pid in range(2)]
    assert written == [[[0, 1, 2, 3], [8, 9, 10, 11]], [[4, 5, 6, 7], [12]]]
    names = sorted(p.name for p in out.glob("samples_*.npz"))
    assert names == [f"samples_{i:06d}.npz" for i in (0, 4, 8, 12)]
    got = np.concatenate([np.load(out / n)["samples"] for n in names]).astype(int)
    want = np.concatenate([np.load(f)["samples"]
                           for f in sorted(uninterrupted.glob("samples_*.npz"))]).astype(int)
    assert np.abs(got - want).max() <= 1  # 2 x 2 devices draw the 8-device samples
    assert len(list((out / "png").rglob("*.png"))) == 13
    assert json.loads((out / "manifest.json").read_text())["processes"] == 2
