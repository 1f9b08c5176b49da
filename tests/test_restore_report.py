"""The restoration report (score_sde.inverse.report): which baselines apply to which operator,
what they are, and the metrics of a set of images against the truth."""

import numpy as np
import pytest

from score_sde import inverse
from score_sde.inverse import report
from score_sde.metrics.frame_quality import psnr, ssim

SHAPE = (8, 8, 1)


@pytest.mark.parametrize("task, expected", [
    ("sr2_avgpool", {"pinv", "bicubic"}), ("sr4_bicubic", {"pinv", "bicubic"}),
    ("gaussian_blur", {"pinv", "observation"}), ("denoise", {"observation"}),
    ("random_inpaint", {"pinv"}), ("mri_x4", {"pinv"}), ("phase_retrieval", set()),
])
def test_baselines_that_apply_to_each_operator(task, expected):
    op = inverse.get_operator(task, SHAPE)
    x = np.random.default_rng(0).uniform(-1, 1, (3, *SHAPE)).astype(np.float32)
    y = op.forward(x)
    out = report.baselines(op, y)
    assert set(out) == expected
    for v in out.values():
        assert v.shape == (3, *SHAPE)
    if "observation" in out:
        np.testing.assert_array_equal(out["observation"], y)
    if "pinv" in out:
        np.testing.assert_allclose(out["pinv"], op.pinv(y), rtol=1e-6)


def test_bicubic_baseline_keeps_constants_and_interpolates_between_samples():
    op = inverse.get_operator("sr2_avgpool", SHAPE)
    flat = report.baselines(op, np.full((1, 4, 4, 1), 0.3, np.float32))["bicubic"]
    np.testing.assert_allclose(flat, 0.3, atol=1e-6)
    ramp = np.tile(np.arange(4, dtype=np.float32)[None, :, None, None], (1, 1, 4, 1))
    up = np.asarray(report.baselines(op, ramp)["bicubic"])[0, :, 0, 0]
    # half-pixel centres: output row r sits at input coordinate (r - 1/2) / 2; the cubic
    # reproduces a ramp where all 4 taps are inside (rows 3, 4), not where an edge cuts them
    np.testing.assert_allclose(up[3:5], (np.arange(3, 5) - 0.5) / 2, atol=1e-5)
    assert abs(up[2] - 0.75) > 1e-2
    with pytest.raises(ValueError, match="y"):
        report.baselines(op, np.zeros((1, 8, 8, 1)))


def test_restore_metrics_per_image_means_and_errors():
    rng = np.random.default_rng(1)
    truth = rng.uniform(size=(5, *SHAPE))
    noisy = truth + 0.1 * rng.normal(size=truth.shape)  # clipped to [0, 1] by the report
    out = report.restore_metrics({"result": truth * 0.9, "observation": noisy}, truth,
                                 lpips_fn=lambda a, b: np.abs(a - b).mean(axis=(1, 2, 3)))
    assert list(out) == ["result", "observation"]
    clipped = np.clip(noisy, 0, 1)
    np.testing.assert_allclose(out["observation"]["per_image"]["psnr"], psnr(clipped, truth),
                               atol=1e-6)
    np.testing.assert_allclose(out["observation"]["ssim"],
                               ssim(clipped, truth, window="auto").mean())
    np.testing.assert_allclose(out["result"]["lpips"], np.abs(0.1 * truth).mean(), rtol=1e-9)
    assert out["result"]["psnr"] == pytest.approx(np.mean(out["result"]["per_image"]["psnr"]),
                                                  abs=1e-5)
    assert "digits_fd" not in out["result"]
    lines = report.format_report(out)
    assert "PSNR dB" in lines[0] and "LPIPS" in lines[0] and lines[2].startswith("y (as is)")
    with pytest.raises(ValueError, match="observation has shape"):
        report.restore_metrics({"observation": noisy[:2]}, truth)
    with pytest.raises(ValueError, match="non-finite"):
        report.restore_metrics({"result": truth * np.nan}, truth)


def test_digits_fd_of_every_set_with_its_floor():
    from score_sde.metrics.digits_classifier import digits_split

    truth = digits_split()[2][:16]
    blurred = (truth + np.roll(truth, 1, axis=1) + np.roll(truth, 1, axis=2)) / 3
    out = report.restore_metrics({"result": truth, "blur": blurred}, truth, digits=True)
    assert out["result"]["digits_fd"] == pytest.approx(out["result"]["digits_fd_truth"])
    assert out["blur"]["digits_fd"] > out["result"]["digits_fd"]
    assert out["blur"]["digits_fd_floor"] == out["result"]["digits_fd_floor"] > 0
    assert "digits FD floor (16 real digits)" in report.format_report(out)[-1]
    few = report.restore_metrics({"result": truth[:3]}, truth[:3], digits=True)
    assert "digits_fd" not in few["result"]  # under digits_quality's 4 images


@pytest.mark.slow
def test_lpips_distance_from_a_weights_file(tmp_path):
    from score_sde import lpips

    path = str(tmp_path / "w.npz")
    lpips.save_weights(path, lpips.random_params(0))
    a = np.random.default_rng(2).uniform(size=(2, *SHAPE)).astype(np.float32)
    b = np.clip(a + 0.2, 0, 1)
    got = report.lpips_distance(path)(a, b)
    ref = lpips.get_lpips_fn(lpips.random_params(0), centered=False)(a, b)
    np.testing.assert_allclose(got, ref, rtol=1e-4)
    assert got.shape == (2,) and np.all(got > 0)
