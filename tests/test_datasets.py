"""Data pipelines: the digits split, determinism for resumption, per-host slices, sources,
worker processes and the corrupt-image policy."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from score_sde import data
from tests import driver_configs


@pytest.fixture(scope="module")
def config():
    return driver_configs.tiny({"training.batch_size": 16, "eval.batch_size": 16})


def _pipeline(config, split="train", **kw):
    return data.get_dataset(config, split, process_index=kw.pop("process_index", 0),
                            process_count=kw.pop("process_count", 1), **kw)


def test_digits_split_matches_the_metrics_split(config):
    train, test = data.get_source(config, "train"), data.get_source(config, "test")
    assert (len(train), len(test)) == (1437, 360)
    from score_sde.metrics.digits_classifier import digits_split

    _, y_tr, x_te, _ = digits_split()
    assert np.array_equal(train.labels, y_tr)
    batch = _pipeline(config, "test", shuffle=False).batch(0)
    np.testing.assert_allclose(batch["image"], x_te[:16], atol=1e-6)
    assert batch["image"].shape == (16, 8, 8, 1) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32


def test_the_digits_split_is_written_once():
    """The metric's split is the data package's, and the training images are its pixels x 16."""
    from score_sde.data import digits
    from score_sde.metrics import digits_classifier

    assert digits_classifier.digits_split is digits.digits_split
    x_tr, y_tr, x_te, y_te = digits.digits_split()
    for split, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        source = data.digits_source(split)
        assert source.images.dtype == np.uint8 and source.levels == 17
        np.testing.assert_array_equal(source.images, x * 16)
        np.testing.assert_array_equal(source.labels, y)
    assert (len(y_tr), len(y_te)) == (1437, 360)
    every = np.bincount(np.concatenate([y_tr, y_te]))  # stratified: each class's 20%, +-1
    assert np.abs(np.bincount(y_te) - 0.2 * every).max() <= 1


# Every public name of score_sde/datasets.py and score_sde/data_workers.py before the move.
FORMER_DATASETS_NAMES = (
    "ArraySource Batch CORRUPT_POLICIES CorruptImageError DatasetNotFoundError Geometry "
    "IMAGE_SUFFIXES ImageFolder MAX_AUTO_WORKERS Pipeline SPLITS Source SubsetSource TfdsSource "
    "central_crop decode_image default_num_workers digits_source get_data_inverse_scaler "
    "get_data_scaler get_dataset get_geometry get_source image_folder_source in_memory_source "
    "list_images mixing_source report_skipped resize resize_small source_labels "
    "stratified_indices subset_source synthetic_source tfds_source").split()
FORMER_WORKERS_NAMES = ["Batch", "SharedArray", "SharedImages", "SharedView", "WorkerIterator"]


def test_the_former_modules_still_export_every_public_name():
    import score_sde.data.workers
    from score_sde import data_workers, datasets

    for name in FORMER_DATASETS_NAMES:
        assert getattr(datasets, name) is getattr(data, name), name
    assert sorted(datasets.__all__) == sorted(FORMER_DATASETS_NAMES)
    for name in FORMER_WORKERS_NAMES:
        assert getattr(data_workers, name) is getattr(score_sde.data.workers, name), name
    with pytest.raises(ImportError, match=r"^score_sde.datasets._TFDS moved to "
                                          r"score_sde.data.tfds_source.TFDS_DATASETS$"):
        from score_sde.datasets import _TFDS  # noqa: F401
    with pytest.raises(ImportError, match=r"moved to score_sde.data.workers._worker_main$"):
        from score_sde.data_workers import _worker_main  # noqa: F401
    assert not hasattr(datasets, "no_such_name")


def test_scaler_round_trip(config):
    x = _pipeline(config).batch(0)["image"]
    for centered in (True, False):
        config.data.centered = centered
        scaled = data.get_data_scaler(config)(x)
        assert scaled.min() >= (-1.0 if centered else 0.0) and scaled.max() <= 1.0
        np.testing.assert_allclose(data.get_data_inverse_scaler(config)(scaled), x,
                                   atol=1e-6)
    config.data.centered = True


def test_batches_depend_only_on_seed_and_step(config):
    a, b = _pipeline(config), _pipeline(config)
    it = a.iterate(start=0, stop=100)
    seq = [next(it) for _ in range(95)]  # crosses an epoch (1437 / 16 ~ 90 steps)
    for step in (0, 89, 90, 94):
        np.testing.assert_array_equal(seq[step]["image"], b.batch(step)["image"])
    resumed = next(b.iterate(start=94))
    np.testing.assert_array_equal(resumed["label"], seq[94]["label"])
    other_seed = data.get_dataset(config, "train", seed=123, process_index=0,
                                  process_count=1)
    assert not np.array_equal(other_seed.batch(0)["image"], seq[0]["image"])
    # every example appears exactly once per epoch
    first_epoch = np.concatenate([a._perms[0]])
    assert sorted(first_epoch) == list(range(1437))


def test_hosts_read_disjoint_slices_of_the_same_global_batch(config):
    config.data.uniform_dequantization = True
    config.data.random_flip = True
    try:
        whole = _pipeline(config).batch(3)
        parts = [_pipeline(config, process_index=p, process_count=4).batch(3) for p in range(4)]
    finally:
        config.data.uniform_dequantization = False
        config.data.random_flip = False
    assert all(p["image"].shape[0] == 4 for p in parts)
    np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), whole["image"])


def test_uniform_dequantization_stays_in_its_bin(config):
    config.data.uniform_dequantization = True
    try:
        noisy = _pipeline(config, "test", shuffle=False).batch(0)["image"]
    finally:
        config.data.uniform_dequantization = False
    clean = _pipeline(config, "test", shuffle=False).batch(0)["image"]
    levels = 17
    np.testing.assert_array_equal(np.floor(noisy * levels), np.rint(clean * (levels - 1)))
    assert 0.0 <= noisy.min() and noisy.max() < 1.0


def test_padded_evaluation_covers_the_split_once(config):
    ds = data.get_dataset(config, "test", batch_size=64, shuffle=False, pad_last=True,
                          process_index=0, process_count=1)
    batches = list(ds.iterate())
    assert len(batches) == 6  # 360 = 5 * 64 + 40
    assert sum(int(b["mask"].sum()) for b in batches) == 360
    assert not batches[-1]["mask"][40:].any()


def test_unknown_dataset_names_the_field_and_choices(config):
    config.data.dataset = "IMAGENET"
    try:
        with pytest.raises(ValueError, match=r"config.data.dataset='IMAGENET'.*DIGITS"):
            data.get_source(config, "train")
    finally:
        config.data.dataset = "digits"


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (20, 12, 3), dtype=np.uint8)).save(
                tmp_path / split / f"{i}.png")
    config = driver_configs.tiny({"data.dataset": "IMAGE_FOLDER", "data.num_channels": 3})
    config.data.data_dir = str(tmp_path)
    ds = data.get_dataset(config, "train", batch_size=2, process_index=0, process_count=1)
    batch = ds.batch(0)
    assert batch["image"].shape == (2, 8, 8, 3) and "label" not in batch
    config.data.data_dir = str(tmp_path / "missing")
    with pytest.raises(data.DatasetNotFoundError, match="config.data.data_dir"):
        data.get_source(config, "train")


# ----------------------------------------------------------------------------- worker processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_folder(root, n: int = 20, seed: int = 0) -> list:
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True)
    paths = [root / "train" / f"{i:02d}.png" for i in range(n)]
    for p in paths:
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(p)
    return paths


def _folder_config(root, **fields):
    config = driver_configs.tiny({"data.dataset": "IMAGE_FOLDER", "data.num_channels": 3,
                                  "data.random_flip": True, "data.uniform_dequantization": True})
    config.data.data_dir = str(root)
    for k, v in fields.items():
        config.data[k] = v
    return config


def _folder_pipeline(config, **kw):
    return data.get_dataset(config, "train", batch_size=4, process_index=0,
                            process_count=1, **kw)


def _gone(pid: int) -> bool:
    """True once a process has exited and been reaped (no zombie left)."""
    return not os.path.exists(f"/proc/{pid}")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    _write_folder(root)
    return root


def test_workers_read_the_batches_of_the_main_process(folder):
    ds = _folder_pipeline(_folder_config(folder, num_workers=0))
    reference = [ds.batch(s) for s in range(8)]  # 20 images / 4: crosses an epoch at step 5
    for workers, start in ((1, 0), (2, 0), (2, 5)):  # (2, 5): a run resumed at step 5
        ds.num_workers = workers
        it = ds.iterate(start, 8)
        got = list(it)
        assert len(got) == 8 - start and all(_gone(pid) for pid in it.pids)
        for want, have in zip(reference[start:], got, strict=True):
            np.testing.assert_array_equal(have["image"], want["image"])
    padded = data.get_dataset(_folder_config(folder, num_workers=1), "train", batch_size=8,
                              shuffle=False, pad_last=True, process_index=0,
                              process_count=1)  # evaluation: 20 images, the last padded
    got = list(padded.iterate())
    assert [int(b["mask"].sum()) for b in got] == [8, 8, 4]
    for step, batch in enumerate(got):
        for key, value in padded.batch(step).items():
            np.testing.assert_array_equal(batch[key], value)


def test_workers_hold_one_batch_each_and_import_no_jax(tmp_path):
    log = tmp_path / "decoded.txt"
    ds = data.Pipeline(source=CountingSource(str(log)), global_batch=4, seed=0,
                       shuffle=False, geometry=data.Geometry("resize", 2),
                       num_workers=2)
    it = ds.iterate(0)
    for pid in it.pids:  # the main process decides when workers stop (e.g. on pre-emption)
        os.kill(pid, signal.SIGINT)
        os.kill(pid, signal.SIGTERM)
    for _ in range(3):
        next(it)
    time.sleep(0.5)  # let the workers run ahead as far as they can
    import jax  # noqa: F401  (so that the check below can fail: this process maps jaxlib)

    assert "jaxlib" in open(f"/proc/{os.getpid()}/maps").read()
    for pid in it.pids:
        assert "jaxlib" not in open(f"/proc/{pid}/maps").read()
    # 3 batches read + one batch ahead in each of the 2 workers, 4 examples each
    assert len(log.read_text().split()) == (3 + 2) * 4
    it.close()
    assert all(_gone(pid) for pid in it.pids)


class CountingSource:
    """A picklable source that logs every example it decodes (in whichever process)."""

    levels, has_labels = 256, False

    def __init__(self, log: str):
        self.log = log

    def __len__(self) -> int:
        return 1000

    def __getitem__(self, index: int) -> dict:
        with open(self.log, "a") as f:
            f.write(f"{index} ")
        return {"image": np.full((2, 2, 1), index % 256, np.uint8)}


def test_corrupt_image_skipped_once_with_the_same_batches_in_workers(tmp_path, capfd):
    clean = _write_folder(tmp_path / "clean")
    _write_folder(tmp_path / "bad")
    bad = tmp_path / "bad" / "train" / "07.png"
    bad.write_bytes(bad.read_bytes()[:40])  # a truncated PNG
    ds_clean = _folder_pipeline(_folder_config(tmp_path / "clean", num_workers=0))
    ds = _folder_pipeline(_folder_config(tmp_path / "bad", num_workers=2,
                                         corrupt_images="skip"))
    got = list(ds.iterate(0, 15))  # three epochs: both workers meet the bad file
    err = capfd.readouterr().err
    assert err.count(str(bad)) == 1 and "warning" in err and len(err.splitlines()) == 1
    bad_index = [str(p) for p in clean].index(str(clean[7]))
    for step, batch in enumerate(got):
        np.testing.assert_array_equal(batch["image"], ds.batch(step)["image"])  # deterministic
        for i, position in enumerate(ds.positions(step)):
            if ds._index(position) != bad_index:  # every other example is untouched
                np.testing.assert_array_equal(batch["image"][i],
                                              ds_clean.example(position)["image"])
    assert capfd.readouterr().err == ""  # reported once per process, not once per read


def test_corrupt_image_stops_the_run_naming_the_file(tmp_path, capfd):
    _write_folder(tmp_path, n=4)
    bad = tmp_path / "train" / "02.png"
    bad.write_bytes(b"not an image")
    ds = _folder_pipeline(_folder_config(tmp_path, num_workers=0))
    with pytest.raises(data.CorruptImageError, match=str(bad)) as in_process:
        [ds.batch(s) for s in range(2)]
    ds.num_workers = 1
    it = ds.iterate(0, 4)
    with pytest.raises(data.CorruptImageError) as in_worker:
        list(it)
    assert str(in_worker.value) == str(in_process.value)  # one line, same as in process
    assert "\n" not in str(in_worker.value) and isinstance(in_worker.value, ValueError)
    assert all(_gone(pid) for pid in it.pids)
    assert capfd.readouterr().err == ""  # nothing else from the worker


def test_image_folder_without_a_readable_image_names_it(tmp_path):
    _write_folder(tmp_path, n=2)
    for p in (tmp_path / "train").iterdir():
        p.write_bytes(b"\x89PNG broken")
    with pytest.raises(data.DatasetNotFoundError, match=f"none of the 2 .*{tmp_path}"):
        data.get_source(_folder_config(tmp_path), "train")


def test_worker_counts_and_policies_from_the_config(folder, config):
    assert _pipeline(config).num_workers == 0  # in-memory digits: no processes
    auto = _folder_pipeline(_folder_config(folder, num_workers=-1))
    assert auto.num_workers == min(len(os.sched_getaffinity(0)), data.MAX_AUTO_WORKERS)
    with pytest.raises(ValueError, match=r"config.data.num_workers=-3"):
        _folder_pipeline(_folder_config(folder, num_workers=-3))
    with pytest.raises(ValueError, match=r"config.data.corrupt_images='ignore'.*'skip'"):
        _folder_pipeline(_folder_config(folder, corrupt_images="ignore"))


EXIT_SCRIPT = textwrap.dedent("""
    import glob, sys
    sys.path.insert(0, {root!r})
    from score_sde import data

    if __name__ == "__main__":
        source = data.ImageFolder(tuple(sorted(glob.glob({folder!r} + "/train/*.png"))), 3)
        ds = data.Pipeline(source, global_batch=4, seed=0, shuffle=True,
                           geometry=data.Geometry("crop", 8), num_workers=2)
        it = ds.iterate(0)  # endless, never closed
        next(it)
        print(*it.pids, flush=True)
        {ending}
""")


@pytest.mark.parametrize("ending", ["pass", "raise SystemExit(3)"])
def test_workers_end_with_the_main_process(folder, tmp_path, ending):
    script = tmp_path / "run.py"
    script.write_text(EXIT_SCRIPT.format(root=ROOT, folder=str(folder), ending=ending))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert done.returncode == (3 if "3" in ending else 0), done.stderr
    pids = [int(p) for p in done.stdout.split()]
    assert len(pids) == 2 and all(_gone(pid) for pid in pids)
    assert "Traceback" not in done.stderr and "leaked" not in done.stderr


def test_bucket_listing_keeps_the_scheme():
    """fsspec's walk drops 'gs://' from the folders it yields; the file paths keep it."""

    class Bucket:
        def __fspath__(self):
            return "gs://bucket/data/train"

        def walk(self):
            yield "bucket/data/train", ["a"], ["1.png", "notes.txt"]
            yield "bucket/data/train/a", [], ["0.JPG"]

    assert data.list_images(Bucket()) == ("gs://bucket/data/train/1.png",
                                          "gs://bucket/data/train/a/0.JPG")


@pytest.fixture
def tfds():  # imported by the tests that need it (worker processes import this module too)
    return pytest.importorskip("tensorflow_datasets", reason="the [tfds] extra is not installed")


def test_tfds_source_with_mock_data(tfds):
    config = driver_configs.tiny({"data.dataset": "CIFAR10", "data.num_channels": 3,
                                  "data.image_size": 16})
    config.data.num_workers = 1
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.get_dataset(config, "train", batch_size=4, process_index=0,
                              process_count=1)
        batches = list(ds.iterate(0, 3))  # decoded in a worker process
        again = ds.batch(2)
    assert batches[0]["image"].shape == (4, 16, 16, 3)  # 32x32 resized to image_size
    assert batches[0]["label"].shape == (4,)
    np.testing.assert_array_equal(batches[2]["image"], again["image"])


def test_tfds_missing_dataset_says_how_to_prepare_it(tfds, tmp_path):
    config = driver_configs.tiny({"data.dataset": "CIFAR10"})
    config.data.data_dir = str(tmp_path)
    with pytest.raises(data.DatasetNotFoundError, match=r"tfds build cifar10"):
        data.get_source(config, "train")


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["error", "skip"])
def test_training_on_a_folder_with_a_corrupt_image(tmp_path, policy):
    """`--mode train` with 2 data workers: one line and exit 1, or one warning and a full run."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        (tmp_path / "data" / split).mkdir(parents=True)
        for i in range(16):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(
                tmp_path / "data" / split / f"{i:02d}.png")
    bad = tmp_path / "data" / "train" / "05.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    overrides = {"data.dataset": "IMAGE_FOLDER", "data.num_workers": 2,
                 "data.corrupt_images": policy, "training.n_iters": 6}
    args = [*driver_configs.cli(overrides), f"--config.data.data_dir={tmp_path / 'data'}",
            f"--workdir={tmp_path / 'run'}", "--mode=train"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    done = subprocess.run([sys.executable, "-m", "score_sde.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stderr.splitlines() if str(bad) in line]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(lines) == 1, done.stderr[-3000:]
    if policy == "error":
        assert done.returncode == 1
        assert lines[0].startswith("score_sde: error: cannot decode the dataset image")
        assert done.stderr.strip().splitlines()[-1] == lines[0]
    else:
        assert done.returncode == 0, done.stderr[-3000:]
        assert lines[0].startswith("score_sde: warning: skipped the corrupt dataset image")


# ----------------------------------------------------------------------------- subset, synthetic


def test_stratified_subset_keeps_each_class_share_and_depends_only_on_its_seed(config):
    labels = data.get_source(config, "train").labels
    cfg = driver_configs.tiny({"data.subset_fraction": 0.1})
    sub = _pipeline(cfg).source
    counts = np.bincount(data.source_labels(sub), minlength=10)
    assert counts.tolist() == [round(0.1 * c) for c in np.bincount(labels)]  # 142 of 1437
    again = _pipeline(cfg, seed=5).source  # the training seed does not move the subset
    assert np.array_equal(sub.indices, again.indices)
    other = _pipeline(driver_configs.tiny({"data.subset_fraction": 0.1, "data.subset_seed": 1}))
    assert not np.array_equal(sub.indices, other.source.indices)
    assert len(_pipeline(cfg, "test", shuffle=False).source) == 360  # the test split stays whole
    with pytest.raises(ValueError, match=r"config.data.subset_fraction=1.5"):
        _pipeline(driver_configs.tiny({"data.subset_fraction": 1.5}))


def _mixed(ratio, process_index=0, process_count=1):
    """Real examples labelled 0..29, synthetic ones 1000..1011: labels tell them apart."""
    real = data.ArraySource(np.zeros((30, 8, 8, 1), np.uint8), np.arange(30), levels=17)
    synthetic = data.ArraySource(np.full((12, 8, 8, 1), 255, np.uint8),
                                 np.arange(1000, 1012), levels=256)
    return data.Pipeline(real, global_batch=8, seed=3, shuffle=True, geometry=lambda x: x,
                         process_index=process_index, process_count=process_count,
                         synthetic=synthetic, synthetic_ratio=ratio)


def test_synthetic_examples_make_up_the_ratio_of_every_batch_deterministically():
    pipe = _mixed(0.25)
    batches = [pipe.batch(s)["label"] for s in range(15)]
    assert all((b >= 1000).sum() == 2 for b in batches)  # round(0.25 x 8) in every batch
    real = np.concatenate([b[b < 1000] for b in batches])  # 6 real per batch: 90 = 3 epochs
    for epoch in range(3):  # the real data is walked epoch by epoch, nothing skipped
        assert sorted(real[30 * epoch:30 * (epoch + 1)]) == list(range(30))
    synth = np.concatenate([b[b >= 1000] for b in batches])
    assert sorted(synth[:12]) == list(range(1000, 1012))
    image = pipe.batch(4)["image"]
    assert np.array_equal(image.max(axis=(1, 2, 3)) == 1.0, batches[4] >= 1000)  # /255 vs /16
    hosts = [_mixed(0.25, p, 2).batch(7)["label"] for p in range(2)]  # two hosts' slices
    assert np.array_equal(np.concatenate(hosts), _mixed(0.25).batch(7)["label"])
    assert not np.array_equal(batches[0], _mixed(0.5).batch(0)["label"])


def test_synthetic_data_from_sample_shards_or_class_folders(tmp_path):
    from score_sde import sample_shards, storage

    x = np.arange(5 * 64, dtype=np.uint8).reshape(5, 8, 8, 1)
    for first, stop in ((0, 3), (3, 5)):
        storage.write_bytes(tmp_path / "npz" / f"samples_00000{first}.npz", sample_shards.npz_bytes(
            samples=x[first:stop], indices=np.arange(first, stop), labels=np.arange(first, stop)))
    src = data.synthetic_source(str(tmp_path / "npz"), 1)
    assert np.array_equal(src.images, x) and src.labels.tolist() == [0, 1, 2, 3, 4]
    for i, label in enumerate((2, 0, 2)):
        storage.write_bytes(tmp_path / "png" / str(label) / f"{i}.png",
                            sample_shards.png_bytes(x[i]))
    src = data.synthetic_source(str(tmp_path / "png"), 1)
    assert src.labels.tolist() == [0, 2, 2] and np.array_equal(src.images[0], x[1])
    cfg = driver_configs.tiny({"data.synthetic": str(tmp_path / "nowhere"),
                               "data.synthetic_ratio": 0.5})
    with pytest.raises(data.DatasetNotFoundError, match="nowhere': no such file"):
        _pipeline(cfg)
    with pytest.raises(ValueError, match=r"synthetic='' with config.data.synthetic_ratio=0.5"):
        _pipeline(driver_configs.tiny({"data.synthetic_ratio": 0.5}))
    storage.write_bytes(tmp_path / "unlabelled" / "a.png", sample_shards.png_bytes(x[0]))
    cfg = driver_configs.tiny({"data.synthetic": str(tmp_path / "unlabelled"),
                               "data.synthetic_ratio": 0.5})
    with pytest.raises(ValueError, match="has no labels but"):
        _pipeline(cfg)
