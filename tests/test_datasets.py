"""Data pipelines: the digits split, determinism for resumption, per-host slices, sources."""

import numpy as np
import pytest

from score_sde import datasets
from tests import driver_configs


@pytest.fixture(scope="module")
def config():
    return driver_configs.tiny({"training.batch_size": 16, "eval.batch_size": 16})


def _pipeline(config, split="train", **kw):
    return datasets.get_dataset(config, split, process_index=kw.pop("process_index", 0),
                                process_count=kw.pop("process_count", 1), **kw)


def test_digits_split_matches_the_metrics_split(config):
    train, test = datasets.get_source(config, "train"), datasets.get_source(config, "test")
    assert (len(train), len(test)) == (1437, 360)
    from score_sde.metrics.digits_classifier import digits_split

    _, y_tr, x_te, _ = digits_split()
    assert np.array_equal(train.labels, y_tr)
    batch = _pipeline(config, "test", shuffle=False).batch(0)
    np.testing.assert_allclose(batch["image"], x_te[:16], atol=1e-6)
    assert batch["image"].shape == (16, 8, 8, 1) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32


def test_scaler_round_trip(config):
    x = _pipeline(config).batch(0)["image"]
    for centered in (True, False):
        config.data.centered = centered
        scaled = datasets.get_data_scaler(config)(x)
        assert scaled.min() >= (-1.0 if centered else 0.0) and scaled.max() <= 1.0
        np.testing.assert_allclose(datasets.get_data_inverse_scaler(config)(scaled), x,
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
    other_seed = datasets.get_dataset(config, "train", seed=123, process_index=0,
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
    ds = datasets.get_dataset(config, "test", batch_size=64, shuffle=False, pad_last=True,
                              process_index=0, process_count=1)
    batches = list(ds.iterate())
    assert len(batches) == 6  # 360 = 5 * 64 + 40
    assert sum(int(b["mask"].sum()) for b in batches) == 360
    assert not batches[-1]["mask"][40:].any()


def test_unknown_dataset_names_the_field_and_choices(config):
    config.data.dataset = "IMAGENET"
    try:
        with pytest.raises(ValueError, match=r"config.data.dataset='IMAGENET'.*DIGITS"):
            datasets.get_source(config, "train")
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
    ds = datasets.get_dataset(config, "train", batch_size=2, process_index=0, process_count=1)
    batch = ds.batch(0)
    assert batch["image"].shape == (2, 8, 8, 3) and "label" not in batch
    config.data.data_dir = str(tmp_path / "missing")
    with pytest.raises(datasets.DatasetNotFoundError, match="config.data.data_dir"):
        datasets.get_source(config, "train")


tfds = pytest.importorskip("tensorflow_datasets", reason="the [tfds] extra is not installed")


def test_tfds_source_with_mock_data():
    config = driver_configs.tiny({"data.dataset": "CIFAR10", "data.num_channels": 3,
                                  "data.image_size": 16})
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = datasets.get_dataset(config, "train", batch_size=4, process_index=0,
                                  process_count=1)
        batches = list(ds.iterate(0, 3))
        again = ds.batch(2)
    assert batches[0]["image"].shape == (4, 16, 16, 3)  # 32x32 resized to image_size
    assert batches[0]["label"].shape == (4,)
    np.testing.assert_array_equal(batches[2]["image"], again["image"])


def test_tfds_missing_dataset_says_how_to_prepare_it(tmp_path):
    config = driver_configs.tiny({"data.dataset": "CIFAR10"})
    config.data.data_dir = str(tmp_path)
    with pytest.raises(datasets.DatasetNotFoundError, match=r"tfds build cifar10"):
        datasets.get_source(config, "train")
