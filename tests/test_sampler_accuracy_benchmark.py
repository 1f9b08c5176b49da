"""benchmarks/sampler_accuracy.py runs end to end at a toy size (structure, not accuracy)."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np

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


def _module():
    spec = importlib.util.spec_from_file_location(
        "sampler_accuracy", os.path.join(ROOT, "benchmarks", "sampler_accuracy.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_new_problems_are_what_they_claim():
    """The curve: k isotropic modes two stds apart around a closed loop in 64-D; the scaled
    2-D mixtures: the same mixture times 0.05 and 20 (means x s, covariances x s^2)."""
    module = _module()
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
    module = _module()
    from score_sde import analytic

    m, v = np.array([3.0, 0.0]), np.array([0.5, 0.04])
    mix = analytic.GaussianMixture([1.0, 1.0], np.stack([m, -m]), np.stack([np.diag(v)] * 2))
    want = np.sqrt(np.mean(m**2 + v))
    np.testing.assert_allclose(module.data_scale(mix), want, rtol=1e-12)
    rot = np.array([[0.6, -0.8], [0.8, 0.6]])
    np.testing.assert_allclose(module.data_scale(module.Rotated(mix, rot)), want, rtol=1e-12)
    assert module.candidate_options("default@scale", mix) == {"data_scale": module.data_scale(mix)}
    assert module.candidate_options("karras@scale", mix)["grid"] == "karras"


def test_transfer_study_measures_error_against_the_ode(tmp_path):
    """--transfer: per cell, err = FD(sampler) - FD(adaptive ODE from the same draws), and
    the verdict table compares each grid candidate to the cell's best."""
    module = _module()
    module.main(["--transfer", "--n", "200", "--seeds", "2", "--floor-pairs", "2",
                 "--data", "2d_x0.05", "--transfer-sdes", "edm", "--transfer-nfes", "4",
                 "--transfer-samplers", "dpm_solver++", "--candidates", "default,logsnr+range",
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
    module = _module()

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
    module.main(["--merge", ",".join(map(str, paths)), "--rename",
                 "1:unipc_afs=unipc/afs@scale", "--out", str(tmp_path), "--tag", "merged"])
    rows = json.loads((tmp_path / "merged.json").read_text())["rows"]
    assert {(r["sampler"], r["sde"], r["candidate"]) for r in rows if r["kind"] == "transfer"} \
        == {("unipc", s, c) for s in ("vp", "ve") for c in ("default@scale", "afs@scale")}
    md = (tmp_path / "merged.md").read_text()
    assert "## afs@scale against default@scale" in md
    assert "| unipc | 2d | 1.00 [1.50] |" in md  # ratios 0.5 and 1.5
