"""The offline digits metric (shipped classifier) and the statistics helpers on digits."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from score_sde.metrics import digits_classifier as dc
from score_sde.metrics import frechet, stats


@pytest.fixture(scope="module")
def split():
    return dc.digits_split()


def test_split_is_fixed_stratified_and_scaled(split):
    x_tr, y_tr, x_te, y_te = split
    assert x_tr.shape == (1437, 8, 8, 1) and x_te.shape == (360, 8, 8, 1)
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int32
    assert x_tr.min() == 0.0 and x_tr.max() == 1.0
    # Stratified: every class has 20% (+-1) of its images in the test split.
    total = np.bincount(load_digits().target)
    assert np.all(np.abs(np.bincount(y_te) - 0.2 * total) <= 1)
    # Deterministic, and made of the raw pixels / 16.
    again = dc.digits_split()
    for a, b in zip(split, again, strict=True):
        np.testing.assert_array_equal(a, b)
    raw = {img.tobytes() for img in load_digits().images.astype(np.float32) / 16}
    assert all(img[..., 0].tobytes() in raw for img in x_te[:20])


def test_shipped_weights_are_small_and_load():
    assert dc.DEFAULT_WEIGHTS.exists()
    assert dc.DEFAULT_WEIGHTS.stat().st_size < 1_000_000
    params = dc.load_digits_params()
    assert set(params) == {"conv1", "conv2", "conv3", "dense1", "logits"}


def test_shipped_classifier_test_accuracy_at_least_97_percent(split):
    _, _, x_te, y_te = split
    acc = dc.digits_accuracy(x_te, y_te)
    print(f"digits classifier test accuracy {acc:.4f}")
    assert acc >= 0.97


def test_digits_fd_floor_small_and_noise_far_above(split):
    _, _, x_te, _ = split
    floor = dc.digits_fd(x_te)
    rng = np.random.default_rng(0)
    noise = dc.digits_fd(rng.uniform(size=(360, 8, 8, 1)))
    slightly_noisy = dc.digits_fd(np.clip(x_te + 0.1 * rng.normal(size=x_te.shape), 0, 1))
    print(f"digits FD floor (train vs test) {floor:.3f}; uniform noise {noise:.1f}")
    assert np.isfinite(floor) and 0 < floor < 15
    assert noise > 20 * floor
    assert floor < slightly_noisy < noise


def test_features_shape_and_feature_fn_contract(split):
    out = dc.digits_feature_fn()(split[2][:5])
    assert out["features"].shape == (5, 128) and out["logits"].shape == (5, 10)
    with pytest.raises(ValueError, match=r"\(N, 8, 8, 1\)"):
        dc.digits_feature_fn()(np.zeros((2, 16, 16, 1), np.float32))


def test_dataset_statistics_batched_equals_direct_and_roundtrips(split, tmp_path):
    x_tr = split[0]
    batches = (x_tr[i : i + 100] for i in range(0, len(x_tr), 100))
    path = tmp_path / "digits_train_stats.npz"
    s = stats.dataset_statistics(batches, kind="digits", out_path=path)
    ref = dc.digits_reference_statistics("train")
    np.testing.assert_allclose(s["mu"], ref["mu"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s["sigma"], ref["sigma"], rtol=1e-4, atol=1e-5)
    assert s["features"].shape == (1437, 128)
    loaded = stats.load_statistics(path)
    assert set(loaded) == {"mu", "sigma", "features"}
    for k in loaded:
        np.testing.assert_array_equal(loaded[k], s[k])
    # Dict batches (tfds style), uint8 images, and max_examples.
    dict_batches = [{"image": (x_tr[:50] * 255).round().astype(np.uint8)}] * 3
    s2 = stats.dataset_statistics(dict_batches, kind="digits", max_examples=120)
    assert s2["features"].shape == (120, 128)


def test_evaluate_samples_digits(split):
    _, _, x_te, _ = split
    res = stats.evaluate_samples(x_te, None, "digits", kid_subsets=10, kid_subset_size=200)
    assert set(res) == {"digits_fd", "kid", "kid_std", "is", "is_std", "num_samples"}
    np.testing.assert_allclose(res["digits_fd"], dc.digits_fd(x_te), rtol=1e-6)
    assert abs(res["kid"]) < 3 * res["kid_std"] and res["num_samples"] == 360  # unbiased: ~0
    assert 8.0 < res["is"] <= 10.0  # confident, balanced predictions on real digits
    noise = np.random.default_rng(1).uniform(-0.5, 1.5, size=(200, 8, 8, 1))  # clipped
    bad = stats.evaluate_samples(noise, None, "digits", kid_subsets=10, kid_subset_size=200)
    assert bad["digits_fd"] > 20 * res["digits_fd"]
    assert bad["kid"] > 10 * (abs(res["kid"]) + res["kid_std"])


def test_compute_statistics_with_any_feature_fn():
    rng = np.random.default_rng(0)
    imgs = rng.uniform(size=(40, 4, 4, 3)).astype(np.float32)
    flat = lambda x: x.reshape(len(x), -1)
    s = stats.compute_statistics(flat, [imgs[:15], imgs[15:]])
    np.testing.assert_allclose(s["mu"], flat(imgs).mean(0), rtol=1e-6)
    np.testing.assert_allclose(s["sigma"], np.cov(flat(imgs), rowvar=False), rtol=1e-5)
    assert frechet.frechet_distance_from_stats(s, s) < 1e-9


def test_errors_are_clear(tmp_path):
    centred = np.full((4, 8, 8, 1), -1.0, np.float32)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        stats.dataset_statistics([centred], kind="digits")
    with pytest.raises(ValueError, match="allowed: inception, digits"):
        stats.get_feature_fn("clip")
    with pytest.raises(ValueError, match="inception_weights"):
        stats.get_feature_fn("inception")
    with pytest.raises(FileNotFoundError, match="fid_stats"):
        stats.load_statistics(tmp_path / "nope.npz")
    with pytest.raises(ValueError, match="split"):
        dc.digits_reference_statistics("validation")
    ref = {"mu": np.zeros(3), "sigma": np.eye(3)}
    with pytest.raises(ValueError, match="dimension"):
        stats.evaluate_samples(np.zeros((4, 8, 8, 1)), ref, "digits")
