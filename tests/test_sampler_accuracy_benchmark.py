"""benchmarks/sampler_accuracy.py runs end to end at a toy size (structure, not accuracy)."""

from __future__ import annotations

import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_seeded_cells_report_mean_and_spread(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "sampler_accuracy", os.path.join(ROOT, "benchmarks", "sampler_accuracy.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--n", "300", "--data", "2d", "--sdes", "vp", "--samplers", "dpm_solver++",
                 "--nfes", "5,10", "--seeds", "3", "--floor-pairs", "2",
                 "--grid-samplers", "dpm_solver++", "--grid-nfes", "5", "--skip-timing",
                 "--out", str(tmp_path), "--tag", "toy"])
    result = json.loads((tmp_path / "toy.json").read_text())
    cells = [r for r in result["rows"] if r["kind"] == "sampler"]
    assert [r["nfe"] for r in cells] == [5, 10] and all(r["seeds"] == 3 for r in cells)
    assert all(r["fd_std"] > 0 and r["sw"] > 0 for r in cells)
    floor = next(r for r in result["rows"] if r["kind"] == "floor")
    assert len(floor["fd"]) == 2 and floor["fd"][0] > 0  # (mean, std) over the pairs
    grids = result["grids"]
    assert sorted((r["grid"], r["ranged"]) for r in grids) == [
        (g, ranged) for g in ("karras", "logsnr", "quadratic", "uniform") for ranged in (0, 1)]
    assert all(r["seeds"] == 3 and r["nfe"] == 5 for r in grids)
    assert "mean ± std over 3 seeds" in (tmp_path / "toy.md").read_text()
    assert "logsnr + range" in (tmp_path / "toy.md").read_text()
    assert (tmp_path / "toy.png").stat().st_size > 1000
    # The ODE timing alone: one row per batch size, the same solution on and off device.
    module.main(["--data", "64d", "--skip-accuracy", "--skip-grids", "--timing-n", "8",
                 "--timing-repeats", "1", "--out", str(tmp_path), "--tag", "timing"])
    (row,) = json.loads((tmp_path / "timing.json").read_text())["ode_timing"]
    assert row["n"] == 8 and row["scipy_nfe"] > 10 and row["max_abs_diff"] < 0.05
    assert "speed-up" in (tmp_path / "timing.md").read_text()
