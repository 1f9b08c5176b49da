"""Reference statistics files: this framework's layout (mu, sigma, features) and the layout of
the statistics published with score_sde (TF-GAN Inception features under 'pool_3')."""

import numpy as np
import pytest

from score_sde.metrics import stats


@pytest.fixture(scope="module")
def pool_3():
    # Correlated features with a non-zero mean, as stored in the published files (float32).
    rng = np.random.default_rng(0)
    return (rng.normal(size=(40, 6)) @ rng.normal(size=(6, 6)) + 3.0).astype(np.float32)


def test_published_layout_mean_and_covariance_are_numpys(tmp_path, pool_3, capsys):
    path = tmp_path / "cifar10_stats.npz"
    np.savez(path, pool_3=pool_3)
    loaded = stats.load_statistics(str(path))

    f64 = pool_3.astype(np.float64)
    np.testing.assert_array_equal(loaded["mu"], f64.mean(axis=0))
    np.testing.assert_array_equal(loaded["sigma"], np.cov(f64, rowvar=False))
    np.testing.assert_array_equal(loaded["features"], pool_3)
    centred = f64 - f64.mean(axis=0)  # unbiased, as TF-GAN's FID: divided by N - 1
    np.testing.assert_allclose(loaded["sigma"], centred.T @ centred / (len(f64) - 1), rtol=1e-12)

    line = capsys.readouterr().out.strip()
    assert "\n" not in line
    assert str(path) in line and "published score_sde layout" in line
    assert "TF-GAN" in line and "not directly comparable" in line


def test_framework_layout_round_trip_says_so(tmp_path, pool_3, capsys):
    path = tmp_path / "ours"  # no suffix: nothing is appended
    stats.save_statistics(path, {"mu": pool_3.mean(0), "sigma": np.eye(6), "features": pool_3})
    loaded = stats.load_statistics(path)
    assert sorted(loaded) == ["features", "mu", "sigma"]
    np.testing.assert_array_equal(loaded["features"], pool_3)
    assert "this framework's layout (mu, sigma, features)" in capsys.readouterr().out


def test_statistics_files_may_live_in_a_bucket(tmp_path, pool_3, capsys):
    # gs:// goes through etils.epath: here its file system is mocked onto tmp_path.
    from etils.epath import testing as epath_testing

    (tmp_path / "bucket").mkdir()
    local = lambda fn, path, *args, **kwargs: fn(
        str(tmp_path / str(path).removeprefix("gs://")), *args, **kwargs)
    with epath_testing.mock_epath(open=local, exists=local):
        stats.save_statistics("gs://bucket/ours.npz", {"mu": pool_3.mean(0), "sigma": np.eye(6)})
        loaded = stats.load_statistics("gs://bucket/ours.npz")
        with pytest.raises(FileNotFoundError, match="gs://bucket/missing.npz"):
            stats.load_statistics("gs://bucket/missing.npz")
    np.testing.assert_array_equal(loaded["mu"], pool_3.mean(0))
    assert (tmp_path / "bucket" / "ours.npz").is_file()
    assert "gs://bucket/ours.npz: this framework's layout" in capsys.readouterr().out


def test_eval_scores_the_same_against_either_layout(tmp_path):
    # The same features, stored in both layouts, give the same FD and KID in evaluate_samples.
    rng = np.random.default_rng(1)
    reference = rng.uniform(size=(48, 8, 8, 1)).astype(np.float32)
    samples = rng.uniform(size=(24, 8, 8, 1)).astype(np.float32)
    ours = tmp_path / "ours.npz"
    stats.dataset_statistics([reference], kind="digits", out_path=ours)
    published = tmp_path / "published.npz"
    np.savez(published, pool_3=stats.load_statistics(ours)["features"])

    options = dict(kid_subsets=4, kid_subset_size=16)
    a = stats.evaluate_samples(samples, ours, "digits", **options)
    b = stats.evaluate_samples(samples, published, "digits", **options)
    assert a["digits_fd"] > 0
    assert a == pytest.approx(b, rel=1e-9)


def test_neither_layout_names_the_path_and_keys(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, mean=np.zeros(3), cov=np.eye(3))
    with pytest.raises(ValueError) as err:
        stats.load_statistics(path)
    message = str(err.value)
    assert str(path) in message and "['cov', 'mean']" in message
    assert "'pool_3'" in message and "'mu'" in message
