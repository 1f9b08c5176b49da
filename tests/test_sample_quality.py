"""The driver's sample-quality glue: fid_stats mode and the eval hook, on the embedded digits."""

import numpy as np
import pytest

from configs.tiny import get_config
from score_sde import main, sample_quality
from score_sde.metrics.digits_classifier import digits_split


@pytest.fixture(scope="module")
def config():
    return get_config()


def test_fid_stats_mode_writes_digits_reference(config, tmp_path):
    assert {"fid_stats", "inpaint", "colorize", "edit", "train_classifier"} <= set(main.MODES)
    path = sample_quality.fid_stats(config, str(tmp_path))
    ref = np.load(path)
    assert set(ref.files) >= {"mu", "sigma", "features"}
    assert ref["features"].shape[0] == len(digits_split()[0])
    assert ref["sigma"].shape == (ref["mu"].size, ref["mu"].size)


def _write_samples(sample_dir, images01):
    host = sample_dir / "host_0"
    host.mkdir(parents=True)
    np.savez(host / "samples_0.npz", samples=np.round(images01 * 255).astype(np.uint8))


def test_eval_hook_scores_digits_samples(config, tmp_path):
    test_images = digits_split()[2]
    _write_samples(tmp_path / "real", test_images)
    noise = np.random.default_rng(0).uniform(size=test_images.shape).astype(np.float32)
    _write_samples(tmp_path / "noise", noise)
    real = sample_quality.score_samples(config, tmp_path / "real", 0)
    fake = sample_quality.score_samples(config, tmp_path / "noise", 0)
    # The test split scores at the train-vs-test floor (6.7 measured); noise far above it.
    assert real["eval/digits_fd"] < 10.0 and fake["eval/digits_fd"] > 20 * real["eval/digits_fd"]
    # The matched-floor metrics (metrics.digits_quality) are added beside the old ones.
    assert fake["eval/fd_randconv"] > 10 * fake["eval/fd_randconv_floor"]
    assert fake["eval/precision_randconv"] < 0.5 * real["eval/precision_randconv"]
    assert {"eval/kid", "eval/kid_randconv_se", "eval/recall_randconv_floor_std"} <= set(real)
    assert sample_quality.score_samples(config, tmp_path / "empty", 0) == {}


def test_inception_metrics_need_weights(config):
    config = config.copy_and_resolve_references()
    config.data.dataset = "CIFAR10"
    with pytest.raises(FileNotFoundError, match="config.eval.inception_weights"):
        sample_quality._inception_weights(config)


@pytest.mark.slow
def test_fid_stats_mode_on_mock_tfds_dataset(config, tmp_path):
    """fid_stats of a tfds dataset (mock CIFAR-10, no download) through the Inception path."""
    tfds = pytest.importorskip("tensorflow_datasets")
    import jax

    from score_sde.metrics import inception as inc

    rng = np.random.default_rng(0)
    variables = jax.tree_util.tree_map(
        lambda s: (0.5 + rng.uniform(size=s) if len(s) == 1 else
                   rng.normal(size=s) * (2.0 / np.prod(s[:-1])) ** 0.5).astype(np.float32),
        inc._variable_shapes(), is_leaf=lambda s: isinstance(s, tuple))
    weights = tmp_path / "inception.msgpack"
    inc.save_inception_variables(weights, variables)
    config = config.copy_and_resolve_references()
    config.data.update(dataset="CIFAR10", num_channels=3, image_size=16, random_flip=False)
    config.eval.batch_size = 4
    config.eval.inception_weights = str(weights)
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        path = sample_quality.fid_stats(config, str(tmp_path), split="test")
    ref = np.load(path)
    assert ref["features"].shape == (6, 2048) and ref["mu"].shape == (2048,)
    assert np.all(np.isfinite(ref["sigma"]))
