"""Cloud-storage work directories (gs://) against a local GCS emulator, and unreadable inputs.

The emulator is gcp-storage-emulator (pure Python, from PyPI), started on a free port by the
`gcs` fixture (tests/gcs_emulator.py adds the generation header that real GCS sends). Each
library is pointed at it the way it is at a real bucket, only the endpoint changes:
etils.epath -> fsspec/gcsfs (STORAGE_EMULATOR_HOST, anonymous token), orbax -> tensorstore's own
GCS client (TENSORSTORE_GCS_HTTP_URL, GOOGLE_AUTH_TOKEN_FOR_TESTING), tensorboardX ->
google-cloud-storage (STORAGE_EMULATOR_HOST). Not verified here: real credentials and IAM,
TensorFlow's tf.io.gfile backend (epath prefers it when TensorFlow is installed; it is not in
the test install), conditional writes (the emulator ignores preconditions), and the latency and
consistency of the real service.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from score_sde import editing_modes, storage
from tests import driver_configs

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "score-sde-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def emulator_env(port: int) -> dict[str, str]:
    """What points gcsfs, tensorstore and google-cloud-storage at the emulator."""
    url = f"http://127.0.0.1:{port}"
    return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "FSSPEC_GCS_TOKEN": "anon",
            "NO_GCE_CHECK": "true",
            # gcsfs would ask the (absent) storage-control gRPC service for the bucket type
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


@pytest.fixture(scope="module")
def gcs():
    """A GCS emulator with an empty bucket for this module; yields its environment."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.gcs_emulator", str(port), BUCKET],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    env = emulator_env(port)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{env['STORAGE_EMULATOR_HOST']}/storage/v1/b/{BUCKET}",
                                   timeout=1)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the GCS emulator did not start") from None
            time.sleep(0.1)
    try:
        yield env
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def in_process_gcs(gcs, monkeypatch):
    """The emulator's environment in this process too (epath/gcsfs read it per call)."""
    import fsspec

    for k, v in gcs.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setitem(fsspec.config.conf, "gcs", {**fsspec.config.conf.get("gcs", {}),
                                                    "token": "anon"})
    fsspec.filesystem("gcs").clear_instance_cache()
    return f"gs://{BUCKET}"


# ----------------------------------------------------------------------- fast: the helpers


def test_storage_helpers_round_trip_through_the_emulator(in_process_gcs):
    root = storage.path(in_process_gcs) / "helpers"
    arrays = {"a": np.arange(6, dtype=np.uint8).reshape(2, 3), "b": np.float32([0.5, -1.0])}
    storage.save_npz(root / "x.npz", **arrays)
    back = storage.load_npz(root / "x.npz")
    assert set(back) == {"a", "b"}
    np.testing.assert_array_equal(back["a"], arrays["a"])
    np.testing.assert_array_equal(back["b"], arrays["b"])

    storage.write_json(root / "m.json", {"eval/loss": 0.25})
    assert storage.read_json(root / "m.json") == {"eval/loss": 0.25}

    storage.append_text(root / "log.jsonl", "1\n")
    storage.append_text(root / "log.jsonl", "2\n")  # objects cannot grow: rewritten whole
    assert (root / "log.jsonl").read_text() == "1\n2\n"

    from PIL import Image

    storage.save_image(root / "img.png", Image.fromarray(np.full((4, 5), 7, np.uint8)))
    np.testing.assert_array_equal(storage.read_image(root / "img.png"), np.full((4, 5), 7))
    assert sorted(p.name for p in root.iterdir()) == ["img.png", "log.jsonl", "m.json",
                                                      "x.npz"]


def test_a_corrupt_image_in_a_bucket_is_one_line_naming_it(in_process_gcs):
    bad = storage.path(in_process_gcs) / "inputs" / "bad.png"
    storage.write_bytes(bad, b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(storage.UnreadableFileError, match=f"^{bad} is not a readable image"):
        storage.read_image(bad)


# ------------------------------------------------------- fast: corrupt --input / --mask files


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    good = np.zeros((8, 8), np.uint8)
    from PIL import Image

    Image.fromarray(good).save(d / "good.png")
    (d / "truncated.png").write_bytes((d / "good.png").read_bytes()[:30])
    (d / "text.png").write_text("not an image")
    folder = d / "folder"
    folder.mkdir()
    Image.fromarray(good).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"\x89PNG garbage")
    (d / "bad.npz").write_bytes(b"PK\x03\x04 not a zip")
    return d


@pytest.mark.parametrize("name", ["truncated.png", "text.png", "folder", "bad.npz"])
def test_a_corrupt_input_is_one_clear_error_naming_the_file(bad_files, name):
    """What inpaint, colorize and edit call first with --input."""
    config = driver_configs.tiny()
    with pytest.raises(ValueError, match=r"is not a readable") as e:
        editing_modes.load_images(config, str(bad_files / name))
    culprit = bad_files / ("folder/b.png" if name == "folder" else name)
    assert str(e.value).startswith(str(culprit)) and "\n" not in str(e.value)


def test_a_corrupt_mask_is_one_clear_error_naming_the_file(bad_files):
    with pytest.raises(ValueError, match=f"^{bad_files / 'truncated.png'} is not a readable"):
        editing_modes.load_mask(str(bad_files / "truncated.png"), (2, 8, 8, 1))


@pytest.mark.parametrize("mode,flag", [("inpaint", "--input"), ("colorize", "--input"),
                                       ("edit", "--input"), ("inpaint", "--mask")])
def test_corrupt_png_on_the_command_line_ends_in_one_line(bad_files, tmp_path, mode, flag,
                                                          monkeypatch):
    """The modes themselves (in process): the error comes before any model is restored."""
    config = driver_configs.tiny({"data.num_channels": 3} if mode == "colorize" else {})
    bad = str(bad_files / "truncated.png")
    kwargs = {"input": bad} if flag == "--input" else {"input": str(bad_files / "good.png"),
                                                       "mask": bad}
    with pytest.raises(ValueError, match=f"^{bad} is not a readable image"):
        getattr(editing_modes, mode)(config, tmp_path, **kwargs)


def test_main_prints_one_line_and_exits_1_for_a_corrupt_input(bad_files, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "score_sde.main", "--config=configs/tiny.py",
         f"--workdir={tmp_path}", "--mode=inpaint", f"--input={bad_files / 'truncated.png'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, done.stderr[-3000:]
    assert errors[0].startswith(f"score_sde: error: {bad_files / 'truncated.png'} is not a "
                                "readable image ("), errors
    assert "Traceback" not in done.stderr


# ------------------------------------------------------------- slow: a whole run in a bucket


def _tfrecords(data: bytes) -> list[bytes]:
    """The records of a TFRecord (TensorBoard event) file: length, crc, payload, crc."""
    out, i = [], 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        out.append(data[i + 12:i + 12 + n])
        i += 12 + n + 4
    return out


def _scalars(event_files) -> dict[str, list[tuple[int, float]]]:
    from tensorboardX.proto import event_pb2

    found: dict[str, list[tuple[int, float]]] = {}
    for f in event_files:
        for rec in _tfrecords(f.read_bytes()):
            ev = event_pb2.Event.FromString(rec)
            for v in ev.summary.value:
                found.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return found


E2E = {"training.n_iters": 4, "training.log_freq": 1, "training.eval_freq": 2,
       "training.snapshot_freq": 2, "training.snapshot_freq_for_preemption": 1,
       "training.snapshot_sampling": True, "model.num_scales": 10, "eval.begin_ckpt": 1,
       "eval.end_ckpt": 2, "eval.batch_size": 8, "eval.num_samples": 8,
       "eval.enable_sampling": True}


def _run_main(env, workdir, *args, n_iters=4, status=0):
    done = subprocess.run(
        [sys.executable, "-m", "score_sde.main", *driver_configs.cli(E2E),
         f"--config.training.n_iters={n_iters}", f"--workdir={workdir}", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "JAX_PLATFORMS": "cpu", **env})
    assert done.returncode == status, done.stdout[-3000:] + done.stderr[-5000:]
    return done


@pytest.mark.slow
def test_train_resume_evaluate_and_sample_in_a_bucket(gcs, in_process_gcs):
    """`--workdir gs://...` end to end: a live run's lease refuses a second run; train 2 steps,
    resume to 4, eval, sample, fid_stats; then every kind of file is checked in the bucket (not
    on the local disk)."""
    workdir = f"{in_process_gcs}/run"
    root = storage.path(workdir)
    now = time.time()
    storage.write_json(root / "train.lease", {"id": "other", "host": "elsewhere", "pid": 1,
                                              "start": now, "expires": now + 600})
    refused = _run_main(gcs, workdir, "--mode=train", n_iters=2, status=1)
    assert refused.stderr.strip().splitlines()[-1].startswith(
        f"score_sde: error: {workdir} is held by another training run (host elsewhere"), \
        refused.stderr[-2000:]
    (root / "train.lease").unlink()

    first = _run_main(gcs, workdir, "--mode=train", n_iters=2)
    assert "Starting a new run" in first.stdout
    resumed = _run_main(gcs, workdir, "--mode=train")
    assert "Resuming from the checkpoint at step 2" in resumed.stdout
    _run_main(gcs, workdir, "--mode=eval")
    sampled = _run_main(gcs, workdir, "--mode=sample")
    assert f"{workdir}/eval/samples_step_4" in sampled.stdout
    _run_main(gcs, workdir, "--mode=fid_stats", "--split=test")

    # orbax (tensorstore) checkpoints: both snapshots, the newest pre-emption checkpoint
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["2", "4"]
    assert [p.name for p in (root / "checkpoints-meta").iterdir()] == ["3"]
    assert not (root / "train.lease").exists()  # released at the end of each run
    assert "training" in storage.read_json(root / "config.json")
    for step_dir in (root / "checkpoints" / "2", root / "checkpoints" / "4"):
        assert (step_dir / "_CHECKPOINT_METADATA").exists()
    # metrics.jsonl holds the lines of both runs (the object is rewritten, never truncated)
    records = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "train/loss" in r]
    assert steps == [1, 2, 3, 4]
    # TensorBoard events from both runs, read back from the bucket
    events = list((root / "tensorboard").iterdir())
    assert len(events) == 2
    assert [s for s, _ in sorted(_scalars(events)["train/loss"])] == [1, 2, 3, 4]
    # images and arrays
    assert storage.read_image(root / "samples" / "iter_4" / "sample.png").ndim >= 2
    assert storage.read_image(root / "eval" / "samples_step_4" / "grid.png").ndim >= 2
    shard = storage.load_npz(root / "eval" / "samples_step_4" / "samples_000000.npz")
    assert shard["samples"].shape == (64, 8, 8, 1)
    stats = storage.load_npz(root / "eval" / "fid_stats_digits_test.npz")
    assert stats["mu"].shape == (stats["sigma"].shape[0],)
    for step in (2, 4):
        out = root / "eval" / f"step_{step}"
        assert "eval/loss" in storage.read_json(out / "metrics.json")
        assert storage.load_npz(out / "host_0" / "samples_0.npz")["samples"].dtype == np.uint8
    assert not Path(workdir).exists() and not Path("gs:").exists()  # nothing went to local disk
