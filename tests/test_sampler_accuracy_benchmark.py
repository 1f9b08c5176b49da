"""The sampler studies (benchmarks/sampler_*.py, ode_timing.py, grids_transfer.py) run end to
end at a toy size (structure, not accuracy); the problems are what they claim; the former
all-in-one benchmarks/sampler_accuracy.py still takes its command lines."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import (
    grids_transfer,
    ode_timing,
    sampler_accuracy,
    sampler_core,
    sampler_grids,
    sampler_nfe,
)


def test_seeded_cells_report_mean_and_spread(tmp_path):
    sampler_nfe.main(["--n", "300", "--data", "2d", "--sdes", "vp", "--samplers", "dpm_solver++",
                      "--nfes", "5,10", "--seeds", "3", "--floor-pairs", "2",
                      "--out", str(tmp_path), "--tag", "toy"])
    result = json.loads((tmp_path / "toy.json").read_text())
    cells = [r for r in result["rows"] if r["kind"] == "sampler"]
    assert [r["nfe"] for r in cells] == [5, 10] and all(r["seeds"] == 3 for r in cells)
    assert all(r["fd_std"] > 0 and r["sw"] > 0 for r in cells)
    floor = next(r for r in result["rows"] if r["kind"] == "floor")
    assert len(floor["fd"]) == 2 and floor["fd"][0] > 0  # (mean, std) over the pairs
    assert result["grids"] == [] and result["ode_timing"] is None  # the other studies' parts
    assert "mean ± std over 3 seeds" in (tmp_path / "toy.md").read_text()
    assert (tmp_path / "toy.png").stat().st_size > 1000


def test_grid_study_runs_every_grid_with_and_without_the_data_range(tmp_path):
    sampler_grids.main(["--n", "300", "--data", "2d", "--sdes", "vp", "--samplers",
                        "dpm_solver++", "--nfes", "5", "--seeds", "3",
                        "--out", str(tmp_path), "--tag", "grids"])
    result = json.loads((tmp_path / "grids.json").read_text())
    grids = result["grids"]
    assert sorted((r["grid"], r["ranged"]) for r in grids) == [
        (g, ranged) for g in ("karras", "logsnr", "quadratic", "uniform") for ranged in (0, 1)]
    assert all(r["seeds"] == 3 and r["nfe"] == 5 for r in grids)
    assert result["rows"] == [] and result["ode_timing"] is None
    assert "logsnr + range" in (tmp_path / "grids.md").read_text()


def test_ode_timing_solves_the_same_flow_on_and_off_device(tmp_path):
    """One row per batch size, the same solution on and off device."""
    ode_timing.main(["--data", "64d", "--sizes", "8", "--repeats", "1",
                     "--out", str(tmp_path), "--tag", "timing"])
    (row,) = json.loads((tmp_path / "timing.json").read_text())["ode_timing"]
    assert row["n"] == 8 and row["scipy_nfe"] > 10 and row["max_abs_diff"] < 0.05
    assert "speed-up" in (tmp_path / "timing.md").read_text()


def test_new_problems_are_what_they_claim():
    """The curve: k isotropic modes two stds apart around a closed loop in 64-D; the scaled
    2-D mixtures: the same mixture times 0.05 and 20 (means x s, covariances x s^2)."""
    module = sampler_core
    data = module.make_datasets()
    curve = data["curve64"]
    steps = np.linalg.norm(np.diff(curve.means, axis=0, append=curve.means[:1]), axis=1)
    assert curve.means.shape == (96, 64) and np.all(np.abs(steps / 0.06 - 1) < 0.05)
    np.testing.assert_allclose(curve.covs, np.broadcast_to(0.03**2 * np.eye(64), (96, 64, 64)))
    for s in (0.05, 20.0):
        small = data[f"2d_x{s:g}"]
        np.testing.assert_allclose(small.means, s * data["2d"].means, rtol=1e-12)
        np.testing.assert_allclose(small.covs, s**2 * data["2d"].covs, rtol=1e-12)
        lo, hi = module.noise_range(small)
        np.testing.assert_allclose((lo, hi), s * np.asarray(module.noise_range(data["2d"])))
        np.testing.assert_allclose(module.data_scale(small), s * module.data_scale(data["2d"]),
                                   rtol=1e-12)


def test_data_scale_is_the_per_coordinate_std_of_the_mixture():
    """sqrt(trace(Cov) / D) in closed form: two equal modes at +-m with variances v have
    Cov = diag(m^2 + v); a rotation keeps the trace. The candidate 'default@scale' passes it
    as the samplers' data_scale."""
    from score_sde import analytic

    module = sampler_core

    m, v = np.array([3.0, 0.0]), np.array([0.5, 0.04])
    mix = analytic.GaussianMixture([1.0, 1.0], np.stack([m, -m]), np.stack([np.diag(v)] * 2))
    want = np.sqrt(np.mean(m**2 + v))
    np.testing.assert_allclose(module.data_scale(mix), want, rtol=1e-12)
    rot = np.array([[0.6, -0.8], [0.8, 0.6]])
    np.testing.assert_allclose(module.data_scale(module.Rotated(mix, rot)), want, rtol=1e-12)
    assert grids_transfer.candidate_options("default@scale", mix) == {
        "data_scale": module.data_scale(mix)}
    assert grids_transfer.candidate_options("karras@scale", mix)["grid"] == "karras"


def test_transfer_study_measures_error_against_the_ode(tmp_path):
    """Per cell, err = FD(sampler) - FD(adaptive ODE from the same draws), and the verdict
    table compares each grid candidate to the cell's best."""
    grids_transfer.main(["--n", "200", "--seeds", "2", "--floor-pairs", "2",
                         "--data", "2d_x0.05", "--sdes", "edm", "--nfes", "4",
                         "--samplers", "dpm_solver++", "--candidates", "default,logsnr+range",
                         "--out", str(tmp_path), "--tag", "transfer"])
    rows = json.loads((tmp_path / "transfer.json").read_text())["rows"]
    ode = next(r for r in rows if r["kind"] == "ode")
    cells = [r for r in rows if r["kind"] == "transfer"]
    assert [(r["candidate"], r["nfe"]) for r in cells] == [("default", 4), ("logsnr+range", 4)]
    for r in cells:
        assert abs(r["err"] - (r["fd"] - ode["fd"])) < 1e-9 and r["rms"] > 0
    md = (tmp_path / "transfer.md").read_text()
    assert "| dpm_solver++ | logsnr+range | " in md and "2d_x0.05: floor FD" in md


def test_merge_makes_a_variant_a_candidate_and_tables_its_rms_ratio(tmp_path):
    """--rename I:VARIANT=BASE/CAND files a variant's rows as BASE's candidate CAND; the merged
    table gives the afs@scale / default@scale rms ratio, median [max] over the SDEs."""

    def cell(sampler, sde, cand, rms):
        return dict(kind="transfer", data="2d", sde=sde, sampler=sampler, budget=5,
                    candidate=cand, nfe=5, fd=0.1, fd_std=0.0, err=rms, err_std=0.0, rms=rms)

    common = [dict(kind="floor", data="2d", fd=[0.01, 0.001], sw=[0.0, 0.0])] + [
        dict(kind="ode", data="2d", sde=s, nfe=100, fd=0.01, fd_std=0.0) for s in ("vp", "ve")]
    base = common + [cell("unipc", "vp", "default@scale", 0.2),
                     cell("unipc", "ve", "default@scale", 0.4)]
    variant = common + [cell("unipc_afs", "vp", "default@scale", 0.1),
                        cell("unipc_afs", "ve", "default@scale", 0.6)]
    paths = []
    for i, rows in enumerate((base, variant)):
        paths.append(tmp_path / f"run{i}.json")
        paths[-1].write_text(json.dumps(dict(rows=rows)))
    grids_transfer.main(["--merge", ",".join(map(str, paths)), "--rename",
                         "1:unipc_afs=unipc/afs@scale", "--out", str(tmp_path), "--tag",
                         "merged"])
    rows = json.loads((tmp_path / "merged.json").read_text())["rows"]
    assert {(r["sampler"], r["sde"], r["candidate"]) for r in rows if r["kind"] == "transfer"} \
        == {("unipc", s, c) for s in ("vp", "ve") for c in ("default@scale", "afs@scale")}
    md = (tmp_path / "merged.md").read_text()
    assert "## afs@scale against default@scale" in md
    assert "| unipc | 2d | 1.00 [1.50] |" in md  # ratios 0.5 and 1.5


def test_the_old_command_lines_run_the_same_studies(tmp_path, monkeypatch):
    """benchmarks/sampler_accuracy.py: the old flags reach each study's function with the same
    settings, the combined run writes all three parts into one file, and the old names are the
    new modules' objects (or say where they went)."""
    calls = {}

    def record(name, result):
        def study(datasets, **settings):
            calls[name] = (list(datasets), settings)
            return result
        return study

    monkeypatch.setattr(sampler_nfe, "accuracy", record("accuracy", [
        dict(kind="floor", data="2d", fd=(0.1, 0.01), sw=(0.2, 0.02)),
        dict(kind="sampler", data="2d", sde="vp", sampler="ode", budget=None, nfe=100, seeds=1,
             fd=0.1, sw=0.2, fd_std=0.0, sw_std=0.0)]))
    monkeypatch.setattr(sampler_grids, "grid_study", record("grids", [dict(
        kind="grid", data="2d", sde="vp", sampler="ddim", budget=5, grid="karras",
        ranged=False, nfe=5, seeds=1, fd=0.5, sw=0.1, fd_std=0.0, sw_std=0.0)]))
    monkeypatch.setattr(ode_timing, "ode_timing", record("timing", [dict(
        data="2d", n=8, repeats=1, diffrax_seconds=1.0, diffrax_nfe=100, scipy_seconds=2.0,
        scipy_nfe=90, speedup=2.0, max_abs_diff=1e-3)]))
    monkeypatch.setattr(grids_transfer, "transfer", record("transfer", []))
    sampler_accuracy.main(["--n", "300", "--data", "2d", "--sdes", "vp", "--samplers", "ode",
                           "--nfes", "5", "--grid-samplers", "ddim", "--grid-nfes", "5",
                           "--timing-n", "8", "--timing-repeats", "1", "--out", str(tmp_path),
                           "--tag", "all"])
    assert calls["accuracy"] == (["2d"], dict(sdes=["vp"], samplers=["ode"], nfes=[5], n=300,
                                              seeds=1, floor_pairs=5))
    assert calls["grids"] == (["2d"], dict(sdes=["vp"], samplers=["ddim"], nfes=[5], n=300,
                                           seeds=1))
    assert calls["timing"] == (["2d"], dict(sizes=[8], repeats=1))
    result = json.loads((tmp_path / "all.json").read_text())
    assert [len(result[k]) for k in ("rows", "grids", "ode_timing")] == [2, 1, 1]
    md = (tmp_path / "all.md").read_text()
    assert md.index("## 2d: floor") < md.index("## Time grids") < md.index("## Probability-flow")
    sampler_accuracy.main(["--transfer", "--data", "2d_x20", "--transfer-sdes", "edm",
                           "--transfer-nfes", "4", "--transfer-samplers", "ipndm3",
                           "--candidates", "default@scale", "--out", str(tmp_path)])
    assert calls["transfer"] == (["2d_x20"], dict(
        sdes=["edm"], samplers=["ipndm3"], nfes=[4], candidates=["default@scale"], n=20_000,
        seeds=1, floor_pairs=5, ode_tol=1e-5, partial=""))
    assert sampler_accuracy.make_datasets is sampler_core.make_datasets
    assert sampler_accuracy.TRANSFER_VARIANTS is grids_transfer.VARIANTS
    with pytest.raises(ImportError, match="moved to benchmarks.grids_transfer.transfer"):
        from benchmarks.sampler_accuracy import transfer  # noqa: F401
