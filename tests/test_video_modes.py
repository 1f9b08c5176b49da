"""Clips through the drivers: --mode train on moving digits (checkpoints, masked loss), --mode
sample (clip shards), --mode predict with a roll-out longer than the network, and --mode
interpolate; a tiny space-time network trained for two steps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from score_sde import checkpoints, generate, sample_quality, train, video_modes
from score_sde.configs.video.moving_digits import get_config

FRAMES = 3


def tiny_video_config():
    config = get_config()
    d, m, tr = config.data, config.model, config.training
    d.num_frames, d.train_clips, d.test_clips = FRAMES, 32, 8
    m.nf, m.ch_mult, m.num_res_blocks, m.attn_resolutions = 8, (1,), 1, ()
    m.temporal_resolutions = (16,)
    tr.batch_size, tr.n_iters, tr.snapshot_freq = 8, 2, 2  # 8 test devices
    tr.log_freq = tr.snapshot_freq_for_preemption = 2
    tr.eval_freq = 1000  # no evaluation loss to compile
    tr.snapshot_sampling, tr.n_jitted_steps = False, 1
    config.eval.batch_size = 8
    config.sampling.method, config.sampling.nfe = "ddim", 2
    config.sampling.num_samples = config.sampling.batch_size = 8
    config.video.num_clips = 2
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    config, workdir = tiny_video_config(), tmp_path_factory.mktemp("video")
    train.train(config, workdir)
    return config, workdir


def test_train_then_sample_clips(trained):
    config, workdir = trained
    assert (workdir / checkpoints.SNAPSHOT_DIR / "2").is_dir()
    out = generate.sample(config, workdir)
    samples = np.concatenate([np.load(f)["samples"] for f in sorted(out.glob("*.npz"))])
    assert samples.shape == (8, FRAMES, 16, 16, 1) and samples.dtype == np.uint8
    scores = sample_quality.moving_digits_quality(config, samples)  # --mode eval's hook
    assert scores["digits_fd"] > 0 and scores["identity_data"] == 1.0
    assert 0 < scores["motion_energy"] and np.isfinite(scores["motion_ratio"])


def test_predict_rolls_out_past_the_network_and_keeps_the_given_frames(trained):
    config, workdir = trained
    config = config.copy_and_resolve_references()
    config.video.predict_mask, config.video.rollout_frames = "past:1", 6
    config.video.rollout_context = 1
    out = video_modes.predict(config, workdir)
    result = np.load(out / "predict.npz")
    clips, truth = result["clips"], result["truth"]
    assert clips.shape == (2, 6, 16, 16, 1) and truth.shape == clips.shape
    np.testing.assert_array_equal(clips[:, 0], truth[:, 0])  # the given frame, exactly
    assert not np.array_equal(clips[:, 1:], truth[:, 1:])
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"psnr", "psnr_copy_last_given"}
    assert all((out / f"{name}.{kind}").exists() for name in ("predict", "truth")
               for kind in ("npz", "png", "gif"))


def test_interpolate_keeps_both_ends(trained):
    config, workdir = trained
    config = config.copy_and_resolve_references()
    config.video.interpolate_mask = "past_future:1,1"
    out = video_modes.interpolate(config, workdir)
    clips = np.load(out / "interpolate.npz")
    np.testing.assert_array_equal(clips["clips"][:, [0, -1]], clips["truth"][:, [0, -1]])
    np.testing.assert_array_equal(clips["mask"][0], [True, False, True])


def test_a_rollout_shorter_than_the_network_is_refused(trained):
    config, workdir = trained
    config = config.copy_and_resolve_references()
    config.video.rollout_frames = 2
    with pytest.raises(ValueError, match=r"config.video.rollout_frames=2 is shorter than the "
                                         r"network's clip \(config.data.num_frames=3\)"):
        video_modes.predict(config, workdir)
