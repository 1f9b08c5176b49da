"""The grid optimiser (score_sde.sampling.grid_optimizer) and stored grids (grid='file:PATH')."""

import itertools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from score_sde import sde_lib
from score_sde.analytic import GaussianMixture
from score_sde.sampling import (
    get_sampler,
    get_sampler_from_config,
    get_time_grid,
    grid_files,
    grid_optimizer,
    optimize_grid,
)

VP = sde_lib.VPSDE()
EPS = 1e-3
# Three tight 2-D clusters: the probability-flow map bends late, where default grids are coarse.
MIXTURE = GaussianMixture(np.ones(3), np.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]]),
                          np.stack([0.05 * np.eye(2)] * 3))


def _teacher_like(n_points: int, batch: int = 5, dim: int = 3, seed: int = 0):
    """Arbitrary states and data predictions on a decreasing grid (the costs' algebra holds
    for any vectors)."""
    rng = np.random.default_rng(seed)
    times = np.linspace(VP.T, EPS, n_points)
    return times, rng.normal(size=(n_points, batch, dim)), rng.normal(size=(n_points, batch, dim))


def _direct_cost(costs, xs, ms, k, i, j, order, kind="dpm"):
    """One step from the state at i to time j, its RMS error in data units, weighted as the
    optimiser does: DPM-Solver++ (order 1: DDIM; order 2: 2M with the previous point k), or
    iPNDM's Adams-Bashforth step in y = x / alpha, rho = sigma / alpha (order 1: Euler; 2: AB2)."""
    a, s, lam = costs.alpha, costs.sigma, costs.lam
    if kind == "ipndm":
        rho = s / a
        eps = lambda p: (xs[p] - a[p] * ms[p]) / s[p]
        drift = eps(i) if order == 1 else 1.5 * eps(i) - 0.5 * eps(k)
        x = a[j] * (xs[i] / a[i] + (rho[j] - rho[i]) * drift)
    else:
        h = lam[j] - lam[i]
        d = 0.0 if order == 1 else (ms[i] - ms[k]) / (2.0 * (lam[i] - lam[k]) / h)
        x = s[j] / s[i] * xs[i] - a[j] * np.expm1(-h) * (ms[i] + d)
    return np.sqrt(np.mean((x - xs[j]) ** 2) * costs.weight[j])


@pytest.mark.parametrize("kind", ["dpm", "ipndm"])
def test_local_costs_are_one_solver_step_from_the_teacher_state(kind):
    """The Gram-matrix costs against the step computed directly (iPNDM's Euler step is DDIM,
    so 'first' is checked against both)."""
    times, xs, ms = _teacher_like(9)
    costs = grid_optimizer._LocalCosts(VP, times, xs, ms, kind)
    first, second = costs.first(), costs.second()
    for i, j in itertools.combinations(range(9), 2):
        assert first[i, j] == pytest.approx(_direct_cost(costs, xs, ms, None, i, j, 1, kind),
                                            rel=1e-9)
    for k, i, j in itertools.combinations(range(9), 3):
        assert second[k, i, j] == pytest.approx(_direct_cost(costs, xs, ms, k, i, j, 2, kind),
                                                rel=1e-9)
    assert np.isinf(first[3, 2]) and np.isinf(second[2, 1, 4])  # no step back in time


@pytest.mark.parametrize("order,last_first_order", [(1, True), (2, True), (2, False)])
def test_shortest_path_is_the_cheapest_path_of_n_steps(order, last_first_order):
    """The dynamic programme against every path of 4 steps over 9 points (brute force); order 2
    takes its first step at first order, and its last too where the sampler does (DPM-Solver++,
    UniPC; not iPNDM)."""
    times, xs, ms = _teacher_like(9, seed=1)
    costs = grid_optimizer._LocalCosts(VP, times, xs, ms, "dpm" if last_first_order else "ipndm")
    first, second = costs.first(), costs.second()

    def total(path):
        if order == 1:
            return sum(first[a, b] for a, b in zip(path[:-1], path[1:], strict=True))
        n_second = len(path) - (3 if last_first_order else 2)
        steps = [second[path[m - 1], path[m], path[m + 1]] for m in range(1, 1 + n_second)]
        last = first[path[-2], path[-1]] if last_first_order else 0.0
        return first[path[0], path[1]] + sum(steps) + last

    paths = [(0, *mid, 8) for mid in itertools.combinations(range(1, 8), 3)]
    best = min(paths, key=total)
    found = grid_optimizer.shortest_path(costs, 4, order, last_first_order)
    assert tuple(found) == best
    assert total(tuple(found)) < sorted(map(total, paths))[1]  # a unique optimum: exact check


@pytest.mark.parametrize("method,kind,order", [("ipndm", "ipndm", 4),
                                               ("dpm_solver++", "dpm", 2)])
def test_the_refinement_runs_the_sampler_itself(method, kind, order):
    """The differentiable copy that the refinement descends is the sampler: same output from
    the same x_T on the same (non-uniform) grid (Gaussian data of spread 0.3: a cheap score)."""

    def score_fn(x, t):
        alpha, sigma = VP.marginal_coeffs(t)
        return -x / (0.09 * alpha[:, None] ** 2 + sigma[:, None] ** 2)

    ts = get_time_grid("quadratic", VP, 6, EPS)
    x_T = jax.random.normal(jax.random.PRNGKey(3), (16, 2))
    proxy = grid_optimizer._ProxyLoss(VP, score_fn, x_T, x_T, kind, order)
    run_copy = proxy._ipndm if kind == "ipndm" else proxy._dpm
    copy = jax.jit(run_copy)(jnp.asarray(ts), x_T)
    sample = get_sampler(method, VP, (16, 2), eps=EPS, ts=ts, order=order)
    x = jax.jit(lambda x: sample(jax.random.PRNGKey(0), score_fn, x_init=x)[0])(x_T)
    assert float(jnp.max(jnp.abs(x - x_T))) > 0.5  # it moved
    np.testing.assert_allclose(np.asarray(copy), np.asarray(x), rtol=1e-4, atol=1e-4)


def test_the_judge_keeps_the_default_unless_the_gain_is_significant():
    """A lower mean error wins only with significantly more than half of the draws improved
    (128 draws, z = 2: more than 64 + 2 sqrt(128) / 2 = 75.3)."""
    rng = np.random.default_rng(0)
    default = 1.0 + rng.random(128)
    steady = default - 0.05  # every draw a little better
    few = default.copy()
    few[:10] -= 0.5  # a much lower mean, from 10 draws
    mostly = default - np.where(np.arange(128) < 76, 0.01, -0.001)  # 76 draws better
    barely = default - np.where(np.arange(128) < 75, 0.01, -0.001)  # 75: not significant
    assert grid_optimizer.judge({"default": default, "dp": few, "refined": steady}) == "refined"
    assert grid_optimizer.judge({"default": default, "refined": few}) == "default"
    assert grid_optimizer.judge({"default": default, "refined": steady}) == "refined"
    assert grid_optimizer.judge({"default": default, "refined": mostly}) == "refined"
    assert grid_optimizer.judge({"default": default, "refined": barely}) == "default"
    assert grid_optimizer.judge({"default": steady, "refined": default}) == "default"


def test_a_stored_teacher_is_reused_only_for_its_inputs(tmp_path):
    times, xs, ms = _teacher_like(5)
    key = grid_optimizer.teacher_key(VP, (5, 3), EPS, seed=0, checkpoint_step=7)
    teacher = grid_optimizer.Teacher(times, xs, ms, 99, key)
    path = str(tmp_path / "teacher.npz")
    assert grid_optimizer.Teacher.load(path, key) is None  # nothing stored yet
    teacher.save(path)
    loaded = grid_optimizer.Teacher.load(path, key)
    np.testing.assert_array_equal(loaded.xs, xs)
    assert loaded.nfe == 99 and loaded.key == key
    other = grid_optimizer.teacher_key(VP, (5, 3), EPS, seed=0, checkpoint_step=8)
    assert grid_optimizer.Teacher.load(path, other) is None  # another checkpoint: solve again


def _write(tmp_path, times, name="grid.json", sampler="dpm_solver++", sde=VP, eps=EPS):
    path = tmp_path / name
    grid_files.write_grid_file(str(path), times, sampler=sampler, nfe=len(times) - 1, sde=sde,
                               eps=eps, checkpoint_step=7)
    return f"file:{path}"


def test_a_grid_file_round_trip(tmp_path):
    quadratic = get_time_grid("quadratic", VP, 6, EPS)
    grid = _write(tmp_path, quadratic)
    np.testing.assert_array_equal(get_time_grid(grid, VP, 6, EPS), quadratic)
    record = json.loads((tmp_path / "grid.json").read_text())
    assert (record["sampler"], record["nfe"], record["checkpoint_step"]) == ("dpm_solver++", 6, 7)
    # (sampling on a stored grid: test_the_optimised_grid_lowers_the_error_on_fresh_draws)


def _config(method, nfe, grid, sigma_range=None):
    config = ml_collections.ConfigDict()
    config.sampling = dict(method=method, nfe=nfe, grid=grid, sigma_range=sigma_range)
    config.model = dict(num_classes=0)
    return config


def test_a_grid_file_for_another_nfe_sampler_sde_or_eps_is_one_clear_error(tmp_path):
    grid = _write(tmp_path, get_time_grid("quadratic", VP, 6, EPS))
    with pytest.raises(ValueError, match=r"dpm_solver\+\+ at nfe=6 \(6 steps\); this sampler "
                                         r"takes 8 steps: set config.sampling.nfe=6"):
        get_sampler("dpm_solver++", VP, (4, 2), nfe=8, grid=grid, eps=EPS)
    with pytest.raises(ValueError, match=r"holds a grid for dpm_solver\+\+ at nfe=6, not for "
                                         r"config.sampling.method='ddim'"):
        get_sampler_from_config(_config("ddim", 6, grid), VP, (4, 2), EPS)
    with pytest.raises(ValueError, match=r"on the SDE \{'name': 'VPSDE'.*not on this config's "
                                         r"\{'name': 'VESDE'"):
        get_sampler("dpm_solver++", sde_lib.VESDE(), (4, 2), nfe=6, grid=grid, eps=EPS)
    with pytest.raises(ValueError, match=r"ending at eps=0.001; this sampler ends at eps=0.01"):
        get_sampler("dpm_solver++", VP, (4, 2), nfe=6, grid=grid, eps=1e-2)
    with pytest.raises(ValueError, match=r"sigma_range does not apply"):
        get_sampler("dpm_solver++", VP, (4, 2), nfe=6, grid=grid, sigma_range=(0.1, 1.0),
                    eps=EPS)
    with pytest.raises(FileNotFoundError, match=r"nowhere.json does not exist; make one with "
                                                r"--mode optimize_grid"):
        get_time_grid(f"file:{tmp_path}/nowhere.json", VP, 6, EPS)
    (tmp_path / "other.json").write_text('{"times": [1.0, 0.001]}')
    with pytest.raises(ValueError, match=r"other.json is not a score_sde grid file"):
        get_time_grid(f"file:{tmp_path}/other.json", VP, 1, EPS)
    with pytest.raises(ValueError, match=r"times must be strictly decreasing"):
        _write(tmp_path, [1.0, 0.5, 0.5, EPS])
    with pytest.raises(ValueError, match=r"'heun' is not supported; choose one of \['ddim', "):
        optimize_grid(MIXTURE.perturbed_score_fn(VP), VP, (4, 2), method="heun", nfe=5)
    with pytest.raises(ValueError, match=r"unipc: analytic_first_step does not apply to the "
                                         r"stored grid"):
        get_sampler("unipc", VP, (4, 2), nfe=5, grid=grid, eps=EPS, analytic_first_step=True)
    with pytest.raises(ValueError, match=r"optimize_grid: analytic_first_step is not modelled"):
        optimize_grid(MIXTURE.perturbed_score_fn(VP), VP, (4, 2), method="unipc", nfe=5,
                      options=dict(analytic_first_step=True))


@pytest.mark.slow
def test_the_optimised_grid_lowers_the_error_on_fresh_draws(tmp_path):
    """DPM-Solver++ at 5 NFE on the mixture (exact score): the grid fitted on 128 draws beats
    the default grid on 512 other draws, measured against the adaptive probability-flow solve
    (rtol = atol = 1e-6). Measured: 0.21 -> ~0.12 RMS in-sample, similar out of sample."""
    score_fn = MIXTURE.perturbed_score_fn(VP)
    result = optimize_grid(score_fn, VP, (128, 2), method="dpm_solver++", nfe=5, eps=EPS,
                           rng=jax.random.PRNGKey(0), n_fine=40, refine_steps=30)
    assert result.times.shape == (6,) and result.times[0] == VP.T
    assert result.times[-1] == pytest.approx(EPS) and np.all(np.diff(result.times) < 0)
    assert result.cost_after in result.candidates.values()
    assert result.cost_after <= result.cost_before
    grid = _write(tmp_path, result.times)
    rng = jax.random.PRNGKey(1)  # other draws than the optimiser's
    exact = get_sampler("ode", VP, (512, 2), rtol=1e-6, atol=1e-6, eps=EPS)(rng, score_fn)[0]

    def error(grid_name):
        x = get_sampler("dpm_solver++", VP, (512, 2), nfe=5, grid=grid_name, eps=EPS)(
            rng, score_fn)[0]
        return float(jnp.sqrt(jnp.mean((x - exact) ** 2)))

    before, after = error("quadratic"), error(grid)
    assert after < 0.8 * before, (before, after)


@pytest.mark.slow
def test_optimize_grid_mode_writes_a_grid_that_samples(tmp_path, capsys):
    """--mode optimize_grid on a tiny trained run: the grid file beside the checkpoints, the
    printed override, and sampling on it through the config (inference.ConfigSampler)."""
    from score_sde import inference, main, train
    from tests import driver_configs

    config = driver_configs.tiny({"training.n_iters": 2, "training.snapshot_freq": 2,
                                  "training.snapshot_freq_for_preemption": 2,
                                  "training.eval_freq": 2, "model.num_scales": 10,
                                  "eval.batch_size": 16})
    train.train(config, tmp_path)
    config.sampling.method, config.sampling.nfe = "dpm_solver++", 4
    path = main.run("optimize_grid", config, str(tmp_path))
    assert path == tmp_path / "grids" / "dpm_solverpp_nfe4_step2.json"
    record = json.loads(path.read_text())
    assert (record["sampler"], record["nfe"], record["checkpoint_step"]) == ("dpm_solver++", 4, 2)
    assert len(record["times"]) == 5 and record["cost_after"] <= record["cost_before"]
    assert f"--config.sampling.grid=file:{path}" in capsys.readouterr().out
    # the teacher solve is kept beside the grids and reused for another sampler and NFE
    assert len(list((tmp_path / "grids").glob("teacher_step2_draws16_seed*.npz"))) == 1
    config.sampling.method, config.sampling.nfe = "ddim", 3
    assert main.run("optimize_grid", config, str(tmp_path)).name == "ddim_nfe3_step2.json"
    assert "Reusing the teacher solve" in capsys.readouterr().out
    config.sampling.method, config.sampling.nfe = "dpm_solver++", 4

    config.sampling.grid = f"file:{path}"
    r = inference.Restorer(config, tmp_path)
    state, _ = r.restore()
    r.close()
    images, nfe = inference.ConfigSampler(config, r.sde, r.eps, r.model, r.mesh, n=8)(
        state.ema_params, jax.random.PRNGKey(0))
    assert images.shape == (8, 8, 8, 1) and nfe == 4
    config.sampling.nfe = 5  # a grid file made for another NFE
    with pytest.raises(ValueError, match=r"nfe=4 \(4 steps\); this sampler takes 5 steps"):
        inference.ConfigSampler(config, r.sde, r.eps, r.model, r.mesh, n=8)


def test_the_start_grid_is_placed_for_the_configs_data_scale():
    """For data in [0, 1] the sampler's default grid sits at half the noise (data_scale 0.5);
    the optimiser's 'default' candidate must be that grid, not the unit-scale one."""
    from score_sde.sampling import with_config_data_scale
    from score_sde.sampling.grid_optimizer import _start_grid
    from score_sde.sampling.grids import get_time_grid
    config = ml_collections.ConfigDict({"data": {"centered": False}})
    options = with_config_data_scale(config, "dpm_solver++", {})
    assert options == {"data_scale": 0.5}
    sde = sde_lib.VPSDE()
    start = _start_grid("dpm_solver++", sde, 10, 1e-3, dict(options))
    scaled = get_time_grid("vp_quadratic", sde, 10, 1e-3, data_scale=0.5)
    assert np.allclose(start, scaled)
    assert not np.allclose(start, get_time_grid("vp_quadratic", sde, 10, 1e-3))
