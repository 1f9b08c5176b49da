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
    real = sample_quality.score_samples(config, tmp_path / "real", 0)["eval/digits_fd"]
    fake = sample_quality.score_samples(config, tmp_path / "noise", 0)["eval/digits_fd"]
    # The test split scores at the train-vs-test floor (6.7 measured); noise far above it.
    assert real < 10.0 and fake > 20 * real
    assert sample_quality.score_samples(config, tmp_path / "empty", 0) == {}


def test_inception_metrics_need_weights(config):
    config = config.copy_and_resolve_references()
    config.data.dataset = "CIFAR10"
    with pytest.raises(FileNotFoundError, match="config.eval.inception_weights"):
        sample_quality._inception_weights(config)
