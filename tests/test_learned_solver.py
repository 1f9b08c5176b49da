"""The learned multistep solver: its coefficient files, its start (DPM-Solver++), learning on
Gaussian data where the exact solver is known in closed form, and the analytic first step's
rule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from score_sde import sde_lib
from score_sde.sampling import get_sampler, get_sampler_from_config, grid_files
from score_sde.sampling.coefficient_optimizer import learn_coefficients
from score_sde.sampling.common import gaussian_score, prior_sample, schedule
from score_sde.sampling.first_step import (
    analytic_first_step_rule,
    guess_error,
    resolve_analytic_first_step,
    top_noise,
)
from score_sde.sampling.grid_optimizer import Teacher
from score_sde.sampling.learned import start_solver

VP = sde_lib.VPSDE()
EPS = 1e-3
SHAPE = (48, 3)
SPREAD = 0.5  # the Gaussian data N(0, SPREAD^2 I)


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------- coefficient files


def test_a_coefficient_file_round_trips_and_is_refused_elsewhere_in_one_line(tmp_path):
    times, weights = start_solver(VP, SHAPE, 4, 2, EPS)
    path = str(tmp_path / "learned.json")
    grid_files.write_coefficient_file(path, times, weights, nfe=4, sde=VP, eps=EPS,
                                      data_shape=SHAPE[1:], checkpoint_step=7)
    got_t, got_w, _ = grid_files.load_coefficients(path, VP, EPS, SHAPE[1:], nfe=4)
    np.testing.assert_allclose(got_t, times, rtol=1e-6)
    np.testing.assert_allclose(got_w, weights, rtol=1e-6, atol=1e-7)
    sample = get_sampler("learned", VP, SHAPE, coefficients="file:" + path, nfe=4, eps=EPS)
    np.testing.assert_allclose(sample.ts, times, rtol=1e-6)
    assert sample.analytic_first_step is False
    grid_files.write_coefficient_file(path, times, weights, nfe=3, sde=VP, eps=EPS,
                                      data_shape=SHAPE[1:], analytic_first_step=True)
    assert get_sampler("learned", VP, SHAPE, coefficients="file:" + path, nfe=3,
                       eps=EPS).analytic_first_step is True
    grid_files.write_coefficient_file(path, times, weights, nfe=4, sde=VP, eps=EPS,
                                      data_shape=SHAPE[1:])
    refusals = {
        "another model (SDE)": lambda: get_sampler("learned", sde_lib.subVPSDE(), SHAPE,
                                                   coefficients="file:" + path, eps=EPS),
        "another model (shape)": lambda: get_sampler("learned", VP, (2, 5),
                                                     coefficients="file:" + path, eps=EPS),
        "another nfe": lambda: get_sampler("learned", VP, SHAPE, coefficients="file:" + path,
                                           nfe=5, eps=EPS),
        "another sampler": lambda: get_sampler("dpm_solver++", VP, SHAPE, nfe=4, eps=EPS,
                                               grid="file:" + path),
    }
    for what, build in refusals.items():
        with pytest.raises(ValueError) as excinfo:
            build()
        message = _one_line(excinfo)
        assert path in message and "nfe=4" in message, what
        assert "optimize_grid" in message or "method='learned'" in message, what
    with pytest.raises(ValueError, match="set config.sampling.nfe=4"):
        get_sampler("learned", VP, SHAPE, coefficients="file:" + path, nfe=5, eps=EPS)
    grid = str(tmp_path / "grid.json")
    grid_files.write_grid_file(grid, times, sampler="dpm_solver++", nfe=4, sde=VP, eps=EPS)
    with pytest.raises(ValueError, match=r"holds a time grid for dpm_solver\+\+ at nfe=4, not "
                                         r"learned solver coefficients") as excinfo:
        get_sampler("learned", VP, SHAPE, coefficients="file:" + grid, eps=EPS)
    _one_line(excinfo)


def test_without_a_file_the_learned_sampler_is_dpm_solver_pp():
    shape, score = (4, 3), gaussian_score(VP, SPREAD)
    for order, first in ((2, False), (3, False), (2, True)):
        options = dict(nfe=5, order=order, eps=EPS, analytic_first_step=first, data_scale=SPREAD)
        ours = get_sampler("learned", VP, shape, **options)
        theirs = get_sampler("dpm_solver++", VP, shape, **options)
        np.testing.assert_allclose(ours.ts, theirs.ts)
        rng = jax.random.PRNGKey(order)
        x, nfe, path = ours(rng, score, return_path=True)
        np.testing.assert_allclose(x, theirs(rng, score)[0], atol=2e-5)
        assert int(nfe) == 5 and path.shape == (6 + first, *shape)


# ------------------------------------------------------------ learning on Gaussian data


def _gaussian_teacher(times: np.ndarray, shape=SHAPE) -> tuple[Teacher, np.ndarray]:
    """The exact probability flow of N(0, s^2 I) data from prior draws, at `times`:
    x_t = g_t / g_T x_T with g = sqrt(alpha^2 s^2 + sigma^2); and the exact step factors
    g_{i+1} / g_i."""
    x_T, _ = prior_sample(VP, jax.random.PRNGKey(0), shape)
    alpha, sigma, _ = schedule(VP, times)
    g = np.sqrt(alpha**2 * SPREAD**2 + sigma**2)
    xs = (g / g[0])[:, None, None] * np.asarray(x_T, np.float64).reshape(1, shape[0], -1)
    ms = (alpha * SPREAD**2 / g**2)[:, None, None] * xs
    key = dict(shape=list(shape), eps=EPS)
    return Teacher(np.asarray(times, np.float64), xs, ms, 0, key), g[1:] / g[:-1]


def _step_factors(times, weights) -> np.ndarray:
    """On N(0, s^2 I) data m_k = c_k x_k, and on the exact path x_k = g_k / g_i x_i, so the
    step from x_i is x_{i+1} = f_i x_i with
    f_i = sigma_{i+1} / sigma_i + alpha_{i+1} sum_j W_ij c_{i-j} g_{i-j} / g_i."""
    alpha, sigma, _ = schedule(VP, times)
    g2 = alpha**2 * SPREAD**2 + sigma**2
    c, g = alpha * SPREAD**2 / g2, np.sqrt(g2)
    w = np.asarray(weights)
    f = sigma[1:] / sigma[:-1]
    for i in range(len(f)):
        f[i] += alpha[i + 1] * sum(w[i, j] * c[i - j] * g[i - j] / g[i]
                                   for j in range(min(i + 1, w.shape[1])))
    return f


@pytest.fixture(scope="module")
def gaussian():
    times, _ = start_solver(VP, SHAPE, 4, 1, EPS)
    teacher, exact = _gaussian_teacher(times)
    return times, teacher, exact


@pytest.mark.slow
def test_learning_recovers_the_exact_solver_of_gaussian_data_from_a_wrong_start(gaussian):
    """First-order weights, started 1.5x DDIM's, matched to the exact flow at every grid time
    (path_weight): each step's map comes back to the exact one, x_{i+1} = g_{i+1} / g_i x_i,
    within 2% relative (from over 15% off), and the held-out endpoint error falls below 1e-3
    of DDIM's."""
    times, teacher, exact = gaussian
    _, ddim = start_solver(VP, SHAPE, 4, 1, EPS)
    result = learn_coefficients(gaussian_score(VP, SPREAD), VP, SHAPE, nfe=4, order=1,
                                eps=EPS, teacher=teacher, init=1.5 * ddim, path_weight=1.0,
                                steps=600, learning_rate=0.05, patience=30)
    assert result.chosen == "learned"
    np.testing.assert_allclose(_step_factors(times, result.weights), exact, rtol=0.02)
    assert np.abs(_step_factors(times, 1.5 * ddim) / exact - 1).max() > 0.15  # the start
    assert result.error_after < 1e-3 * result.error_before
    assert result.wins == result.held_out == 12


@pytest.mark.slow
def test_the_judge_keeps_the_default_unless_the_learned_solver_wins_held_out(gaussian):
    """Endpoint-only learning at order 2 from DPM-Solver++ wins on every held-out draw; a
    'learned' solver that is worse (a wrong start, no steps) is not kept."""
    times, teacher, _ = gaussian
    score = gaussian_score(VP, SPREAD)
    result = learn_coefficients(score, VP, SHAPE, nfe=4, order=2, eps=EPS, teacher=teacher,
                                steps=200, learning_rate=0.05)
    assert result.chosen == "learned" and result.wins == result.held_out
    assert result.error_after < 0.05 * result.error_before
    _, start = start_solver(VP, SHAPE, 4, 2, EPS)
    worse = learn_coefficients(score, VP, SHAPE, nfe=4, order=2, eps=EPS, teacher=teacher,
                               init=3.0 * start, steps=0)
    assert worse.chosen == "default" and worse.error_after == worse.error_before
    np.testing.assert_allclose(worse.weights[:, :3], start[:, :3], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(worse.times, times)


# ------------------------------------------------------------ the analytic first step's rule


def test_the_rule_takes_the_analytic_step_on_gaussian_data_and_not_far_from_zero():
    rho = top_noise(VP)
    assert 150 < rho < 155
    # N(0, s^2 I): the guess is the exact score; e = (s / rho_T)^2 only
    assert guess_error(0.0, 1.0, rho) == pytest.approx(1.0 / rho**2)
    for sampler in ("dpm_solver++", "unipc", "ipndm"):
        assert analytic_first_step_rule(0.0, 1.0, rho, sampler, 5)
    # a mean far from 0 relative to rho_T (the 2-D mixture grown 20x: mean ~8, spread 43)
    assert not analytic_first_step_rule(8.0, 1.0, rho, "dpm_solver++", 5)
    assert not analytic_first_step_rule(0.0, 43.0, rho, "unipc", 5)
    assert not analytic_first_step_rule(np.full(64, 0.2 * rho), 1.0, rho, "unipc", 5)
    # budgets and samplers where the measured gain did not hold
    assert not analytic_first_step_rule(0.0, 1.0, rho, "ipndm", 8)
    assert not analytic_first_step_rule(0.0, 1.0, rho, "dpm_solver++", 20)
    assert not analytic_first_step_rule(0.0, 1.0, rho, "heun", 5)


def test_auto_in_a_config_uses_the_rule_when_statistics_are_given():
    options = {"nfe": 5, "analytic_first_step": "auto"}
    on = resolve_analytic_first_step(options, "unipc", VP, (0.0, 1.0))
    assert on["analytic_first_step"] is True
    assert resolve_analytic_first_step(options, "unipc", VP, None)["analytic_first_step"] is False
    assert resolve_analytic_first_step(options, "unipc", VP,
                                       (30.0, 1.0))["analytic_first_step"] is False
    assert resolve_analytic_first_step({"analytic_first_step": "True"}, "unipc", VP,
                                       None)["analytic_first_step"] is True
    with pytest.raises(ValueError, match="True, False or 'auto'"):
        resolve_analytic_first_step({"analytic_first_step": "maybe"}, "unipc", VP, None)
    config = ml_collections.ConfigDict({"sampling": {
        "method": "dpm_solver++", "nfe": 5, "analytic_first_step": "auto"}})
    steps = lambda stats: len(get_sampler_from_config(  # noqa: E731
        config, VP, (2, 3), EPS, data_stats=stats).ts) - 1
    stats = lambda mean: {"mean": mean, "spread": 1.0}  # noqa: E731 (data_stats.json's keys)
    assert steps(stats(jnp.zeros(3))) == 6 and steps(stats(50.0)) == 5
    assert steps(None) == 4  # no statistics, no config.data: one call estimates the scale
