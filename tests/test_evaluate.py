"""Evaluation, likelihood and conversion modes on a tiny trained workdir (--mode sample:
tests/test_generate.py)."""

import json
import os

import jax
import numpy as np
import pytest

from score_sde import checkpoints, evaluate, train
from score_sde.metrics.frame_quality import psnr, ssim
from tests import driver_configs

EVAL = {"training.n_iters": 4, "training.log_freq": 2, "training.eval_freq": 4,
        "training.snapshot_freq": 2, "training.snapshot_freq_for_preemption": 2,
        "eval.batch_size": 184, "eval.num_samples": 300, "eval.begin_ckpt": 2,
        "eval.end_ckpt": 2, "eval.enable_sampling": True, "eval.enable_bpd": True,
        "model.num_scales": 10}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    config = driver_configs.tiny(EVAL)
    config.eval.likelihood_rtol = config.eval.likelihood_atol = 1e-3
    workdir = tmp_path_factory.mktemp("trained")
    train.train(config, workdir)
    return config, workdir


def test_eval_sample_and_likelihood_modes(trained, monkeypatch):
    """One test (one trained workdir per test worker): eval, then likelihood."""
    config, workdir = trained
    seen = []
    monkeypatch.setitem(evaluate.EVAL_HOOKS, "count",
                        lambda cfg, sample_dir, step: seen.append(sample_dir) or {"n": 1.0})
    results = evaluate.evaluate(config, workdir, "eval")
    assert list(results) == [4]  # only snapshot index 2 (step 4 // 2) is chosen
    out = workdir / "eval" / "step_4"
    res = results[4]
    assert np.isfinite(res["eval/loss"]) and 0.0 < res["eval/bpd"] < 20.0
    assert len(np.load(out / "bpd_0.npz")["bpd"]) == 360  # the whole test split, padding dropped
    files = evaluate.sample_files(out)
    assert [f.name for f in files] == ["samples_0.npz", "samples_1.npz"]  # 300 in rounds of 184
    samples = np.load(files[0])["samples"]
    assert samples.shape == (184, 8, 8, 1) and samples.dtype == np.uint8
    assert seen == [out] and res["n"] == 1.0
    assert json.loads((out / "metrics.json").read_text())["eval/loss"] == res["eval/loss"]

    # a restart recomputes nothing that is on disk: the files stay untouched
    stamps = {f: os.stat(f).st_mtime_ns for f in [*files, out / "bpd_0.npz", out / "loss.json"]}
    again = evaluate.evaluate(config, workdir, "eval")
    assert again[4]["eval/loss"] == res["eval/loss"]
    assert {f: os.stat(f).st_mtime_ns for f in stamps} == stamps

    # --mode likelihood
    bpd = evaluate.likelihood(config, workdir, "eval")
    assert 0.0 < bpd < 20.0
    assert json.loads((workdir / "eval" / "bpd_step_4.json").read_text())["n"] == 360

    # a checkpoint range that matches no snapshot
    config = driver_configs.tiny({**EVAL, "eval.begin_ckpt": 7, "eval.end_ckpt": 9})
    with pytest.raises(FileNotFoundError, match=r"config.eval.begin_ckpt=7.*\[2, 4\]"):
        evaluate.evaluate(config, workdir, "eval")


@pytest.mark.slow
def test_convert_published_checkpoint(tmp_path):
    from score_sde.published import load_published
    from tests.test_published import FIXTURES, fixture_config

    config = fixture_config("vp_ddpmpp")
    folder = f"{FIXTURES}/vp_ddpmpp/checkpoint_26"
    path = evaluate.convert(config, tmp_path, folder)
    assert path == tmp_path / checkpoints.SNAPSHOT_DIR / "1300000"
    restorer = evaluate.Restorer(config, tmp_path)
    state, step = restorer.restore()
    restorer.close()
    assert step == 1300000 and int(state.step) == 1300000
    want = load_published(folder, config, use_ema=True)
    for a, b in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(FileExistsError, match="already has checkpoints"):
        evaluate.convert(config, tmp_path, folder)


def test_restorer_reads_the_ema_weights_and_never_the_optimizer_state(trained):
    """inference.Restorer restores EMA weights, step and key only: the same EMA weights as a
    full restore of the training state, from a checkpoint the training loop wrote."""
    import orbax.checkpoint as ocp

    from score_sde import losses

    config, workdir = trained
    r = evaluate.Restorer(config, workdir)
    full_target = jax.eval_shape(lambda k: losses.init_train_state(k, config, r.model,
                                                                   r.optimizer),
                                 jax.random.PRNGKey(0))
    full, step = r.ckpts.restore_latest(checkpoints.abstract_like(full_target))
    state, found = r.restore()
    r.close()
    assert found == step == 4 and state.params is None and state.opt_state is None
    assert int(state.step) == 4
    for a, b in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(full.ema_params),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(jax.tree.leaves(full.params)[0]),
                              np.asarray(jax.tree.leaves(full.ema_params)[0]))

    r = evaluate.Restorer(config, workdir)
    target = r.target()  # orbax is told to read neither the parameters nor the optimizer state
    state, found = r.restore(2)
    r.close()
    skipped = jax.tree.leaves(target.params) + jax.tree.leaves(target.opt_state)
    assert skipped and all(x is ocp.PLACEHOLDER for x in skipped)
    assert found == 2 and int(state.step) == 2 and state.opt_state is None


@pytest.mark.parametrize("method", ["pc", "dpm_solver++"])
def test_inpaint_mode_keeps_the_known_pixels(trained, method):
    from score_sde import editing_modes

    config, workdir = trained
    config = driver_configs.tiny({**EVAL, "sampling.method": method, "sampling.nfe": 6,
                                  "model.num_scales": 6})
    path = editing_modes.inpaint(config, workdir, mask="right_half", n=4, folder=method)
    assert path.suffix == ".png" and path.stat().st_size > 100
    saved = np.load(path.with_suffix(".npz"))
    known = saved["masks"] > 0
    assert saved["results"].shape == (4, 8, 8, 1) and known.any() and not known.all()
    np.testing.assert_allclose(saved["results"][known], saved["inputs"][known], atol=1e-3)


def test_restore_mode_keeps_the_observed_pixels_and_reports_psnr(trained):
    """--mode restore with the published merge on a noise-free box: the kept pixels are the
    observation's; with a noisy super-resolution task MMPS writes its grid, npz and PSNR."""
    from score_sde import editing_modes

    config, workdir = trained
    config = driver_configs.tiny({**EVAL, "sampling.nfe": 6, "model.num_scales": 6})
    path = editing_modes.restore(config, workdir, task="box_inpaint", method="merge", nfe=6,
                                 sigma_y=0.0, n=4, folder="restore")
    saved = np.load(path.with_suffix(".npz"))
    assert saved["results"].shape == (4, 8, 8, 1)
    box = np.zeros((8, 8), bool)
    box[2:6, 2:6] = True  # the preset's box: half of each side, centred
    np.testing.assert_allclose(saved["results"][:, ~box], saved["truth"][:, ~box], atol=1e-3)
    path = editing_modes.restore(config, workdir, task="sr2_avgpool", method="mmps", nfe=16,
                                 n=4, folder="restore")
    report = json.loads(path.with_suffix(".json").read_text())
    assert report["method"] == "mmps" and np.isfinite(report["psnr"])
    # the report's metrics are those of the written arrays, beside the SR baselines
    saved = np.load(path.with_suffix(".npz"))
    assert set(report["baselines"]) == {"pinv", "bicubic"}
    for name, key, metrics in [("results", "results", report),
                               *((b, f"baseline_{b}", report["baselines"][b])
                                 for b in ("pinv", "bicubic"))]:
        x = saved[key]
        assert x.shape == (4, 8, 8, 1), name
        np.testing.assert_allclose(metrics["per_image"]["psnr"], psnr(x, saved["truth"]),
                                   atol=1e-5)
        np.testing.assert_allclose(metrics["ssim"], ssim(x, saved["truth"], window="auto").mean(),
                                   atol=1e-6)
        assert metrics["digits_fd_floor"] > 0 and np.isfinite(metrics["digits_fd"])
    pooled = saved["observation"].repeat(2, axis=1).repeat(2, axis=2)  # A^+ y of avg pooling
    np.testing.assert_allclose(saved["baseline_pinv"], np.clip((pooled + 1) / 2, 0, 1), atol=1e-6)
    assert report["psnr"] != report["baselines"]["pinv"]["psnr"]
    # denoising: the baseline is no restoration, y itself; 3 samples per image: the result is
    # their mean, scored beside one of them
    path = editing_modes.restore(config, workdir, task="denoise", method="ddrm", nfe=4,
                                 sigma_y=0.2, n=4, folder="restore", samples=3)
    report = json.loads(path.with_suffix(".json").read_text())
    saved = np.load(path.with_suffix(".npz"))
    assert list(report["baselines"]) == ["observation"] and report["samples"] == 3
    np.testing.assert_allclose(saved["baseline_observation"],
                               np.clip((saved["observation"] + 1) / 2, 0, 1), atol=1e-6)
    draws = saved["posterior_samples"]
    assert draws.shape == (3, 4, 8, 8, 1) and np.ptp(draws, axis=0).max() > 1e-3
    np.testing.assert_allclose(saved["results"], draws.mean(0), atol=1e-6)
    np.testing.assert_allclose(saved["posterior_std"], draws.std(0), atol=1e-6)
    np.testing.assert_allclose(report["one_sample"]["per_image"]["psnr"],
                               psnr(draws[0], saved["truth"]), atol=1e-5)
    with pytest.raises(ValueError, match="samples must be >= 1"):
        editing_modes.restore(config, workdir, task="denoise", n=4, samples=-2)
    with pytest.raises(ValueError, match="unknown operator preset 'sr3'"):
        editing_modes.restore(config, workdir, task="sr3", n=4)
