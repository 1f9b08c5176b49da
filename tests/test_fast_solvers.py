"""UniPC and iPNDM against the exact probability-flow map of Gaussian data; the `ts`, `x_init`
and `return_path` API of the fixed-step samplers.

On Gaussian data N(mu, diag s^2) the probability-flow ODE maps x_a at time a to
x_b = alpha_b mu + sqrt(alpha_b^2 s^2 + sigma_b^2) (x_a - alpha_a mu) / sqrt(alpha_a^2 s^2 +
sigma_a^2) (an affine map), so a solver's own error is measured exactly and its order of
convergence is the slope of log error against log NFE.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import analytic, controllable, sde_lib
from score_sde.sampling import get_sampler, get_time_grid
from score_sde.sampling.common import prior_sample
from tests.counting import counting

MU, S = np.array([0.7, -0.4]), np.array([0.5, 1.0])
N = 256
VP, EPS = sde_lib.VPSDE(), 1e-3


def gaussian_flow(sde, t_start: float, eps: float):
    """(score_fn, x at t_start, the exact flow of it at eps) for 2-D data N(MU, diag S^2)."""
    score_fn = analytic.GaussianMixture.gaussian(MU, np.diag(S**2)).perturbed_score_fn(sde)
    (a_s, s_s), (a_e, s_e) = ((float(v[0]) for v in sde.marginal_coeffs(jnp.full(1, t)))
                              for t in (t_start, eps))
    z = np.random.default_rng(0).normal(size=(N, 2))
    x_start = a_s * MU + np.sqrt(a_s**2 * S**2 + s_s**2) * z
    exact = a_e * MU + np.sqrt(a_e**2 * S**2 + s_e**2) * z
    return score_fn, jnp.asarray(x_start, jnp.float32), exact


def times_uniform_in(sde, variable: str, t_start: float, eps: float, n: int) -> np.ndarray:
    """n + 1 times from t_start to eps, equally spaced in lambda (log-SNR) or rho = sigma/alpha."""
    lam = np.asarray(sde.log_snr(jnp.asarray([t_start, eps])), np.float64)
    if variable == "lambda":
        pts = np.linspace(lam[0], lam[1], n + 1)
    else:
        pts = -np.log(np.linspace(np.exp(-lam[0]), np.exp(-lam[1]), n + 1))
    ts = np.asarray(sde.t_from_log_snr(jnp.asarray(pts, jnp.float32)), np.float64)
    ts[0], ts[-1] = t_start, eps
    return ts


def errors(name, nfes, variable, t_start, **options) -> np.ndarray:
    """RMS error of `name` at each NFE on the grid uniform in `variable`, from t_start.

    Each run also checks that the reported nfe is the number of steps and the number of score
    calls (counted on the host): UniC reuses the model output at the predicted point as the
    next step's, and the last step takes no corrector, so UniPC costs one call per step.
    """
    exact_score_fn, x_start, exact = gaussian_flow(VP, t_start, EPS)
    out = []
    for nfe in nfes:
        score_fn, calls = counting(exact_score_fn)
        ts = times_uniform_in(VP, variable, t_start, EPS, nfe)
        sample = get_sampler(name, VP, x_start.shape, eps=EPS, ts=ts, **options)
        x, n = jax.jit(lambda r, x0, s=sample, f=score_fn: s(r, f, x_init=x0))(
            jax.random.PRNGKey(0), x_start)
        jax.effects_barrier()
        assert int(n) == nfe == calls[0]
        out.append(float(np.sqrt(np.mean((np.asarray(x) - exact) ** 2))))
    return np.asarray(out)


def slopes(errs, nfes) -> np.ndarray:
    return np.log(errs[:-1] / errs[1:]) / np.log(np.asarray(nfes[1:]) / np.asarray(nfes[:-1]))


# --- UniPC: UniP-p + UniC is of order p + 1 ---------------------------------------------------

# From T on a grid uniform in lambda, without lower_order_final (its last first-order step would
# cap the order at 2). Measured RMS errors (VP, 256 samples) and slopes:
#   p=1 bh1 @16/32/64: 2.5e-2 5.4e-3 1.2e-3 (2.2, 2.1)   bh2: 4.9e-2 1.3e-2 3.3e-3 (1.9, 2.0)
#   p=2 bh1 @16/32/64: 3.1e-2 3.5e-3 4.2e-4 (3.1, 3.1)   bh2: 1.2e-2 1.7e-3 2.2e-4 (2.8, 3.0)
#   p=3 bh1 = bh2 @8/16/32: 6.3e-2 2.0e-3 8.9e-5 (5.0, 4.5) (beyond 32 the float32 floor, ~1e-5)
# B(h) only enters through the fixed rho = 1/2 of UniP-2 and UniC-1, so at p = 3 the variants
# differ in the warm-start steps only. Tolerance: each slope >= p + 1 - 0.4.
UNIPC_NFES = {1: (16, 32, 64), 2: (16, 32, 64), 3: (8, 16, 32)}


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_converges_at_order_p_plus_one(order, variant):
    nfes = UNIPC_NFES[order]
    errs = errors("unipc", nfes, "lambda", VP.T, order=order, variant=variant,
                  lower_order_final=False)
    assert np.all(slopes(errs, nfes) >= order + 1 - 0.4), errs


def test_unipc3_converges_at_order_four_with_one_score_call_per_step():
    # The fast member of the test above (measured slope 5.0 at 8 -> 16).
    nfes = (8, 16)
    errs = errors("unipc", nfes, "lambda", VP.T, order=3, lower_order_final=False)
    assert slopes(errs, nfes)[0] >= 3.6, errs


# --- iPNDM: Adams-Bashforth steps of order p in rho = sigma / alpha ---------------------------

# The published weights are those of equal steps, so the order shows on a grid uniform in rho
# (on a non-uniform grid they are of order 2: measured slope 2.0 for p = 2, 3, 4 on 'quadratic').
# From rho = 10 (x_init: the data perturbed there; a uniform rho grid from VP's rho_T = 156 would
# need hundreds of steps to resolve the data's scale), to eps. Measured RMS errors @10/20/40/80,
# step slopes and the slope fitted over 20 -> 80:
#   p=1: 3.1e-1 1.7e-1 9.1e-2 4.7e-2 (0.8, 0.9, 1.0) fitted 0.94
#   p=2: 2.2e-1 9.0e-2 2.8e-2 7.7e-3 (1.3, 1.7, 1.9) fitted 1.78
#   p=3: 1.8e-1 5.6e-2 9.7e-3 9.0e-4 (1.7, 2.5, 3.4) fitted 2.97
#   p=4: 1.5e-1 3.8e-2 2.6e-3 4.6e-4 (2.0, 3.9, 2.5) fitted 3.19
# At these NFE the orders are not yet in their asymptotic range (float64 numpy gives the same
# numbers: the error terms of the first-order warm start and of AB-p partly cancel), so the
# test checks the fitted slope against 0.75 p (well above 2 for p = 3, 4: a wrong weight
# would leave them at 1 or 2).
IPNDM_NFES = (20, 40, 80)


def rho_start_time(rho: float) -> float:
    return float(VP.t_from_log_snr(jnp.asarray([-np.log(rho)]))[0])


@pytest.mark.slow
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_ipndm_converges_at_its_order_on_a_uniform_rho_grid(order):
    errs = errors("ipndm", IPNDM_NFES, "rho", rho_start_time(10.0), order=order)
    fitted = np.polyfit(np.log(IPNDM_NFES), -np.log(errs), 1)[0]
    assert fitted >= 0.75 * order, (errs, fitted)


def test_ipndm4_converges_faster_than_second_order_with_one_score_call_per_step():
    nfes = (20, 80)
    errs = errors("ipndm", nfes, "rho", rho_start_time(10.0), order=4)
    assert slopes(errs, nfes)[0] >= 3.0, errs  # measured 3.19


# --- ts, x_init, return_path ------------------------------------------------------------------

SMALL = (4, 2)
FIXED_STEP = [("pc", dict(n_steps=4)), ("ddim", dict(nfe=4, eta=0.5)), ("heun", dict(nfe=7)),
              ("dpm_solver++", dict(nfe=4)), ("unipc", dict(nfe=4)), ("ipndm", dict(nfe=4)),
              ("ode", dict(solver="heun", nfe=9))]


def _path_call(name, options, x_init, **extra):
    score_fn = analytic.GaussianMixture.gaussian(MU, np.diag(S**2)).perturbed_score_fn(VP)
    sample = get_sampler(name, VP, SMALL, **options, **extra)
    run = jax.jit(lambda rng, x0: sample(rng, score_fn, x_init=x0, return_path=True))
    return sample, run(jax.random.PRNGKey(2), x_init)


def test_ts_x_init_and_path_reproduce_the_default_call():
    """The default call of UniPC equals the call on its grid's times (ts), started from the
    prior draw it makes itself (x_init); the path runs from x_init to the sample."""
    score_fn = analytic.GaussianMixture.gaussian(MU, np.diag(S**2)).perturbed_score_fn(VP)
    default = get_sampler("unipc", VP, SMALL, nfe=4, order=2, data_scale=1.0)
    x, nfe = jax.jit(lambda rng: default(rng, score_fn))(jax.random.PRNGKey(2))
    ts = get_time_grid("vp_quadratic", VP, 4, 1e-3)
    np.testing.assert_array_equal(default.ts, ts)
    x_T = prior_sample(VP, jax.random.PRNGKey(2), SMALL)[0]
    explicit, (x2, nfe2, path) = _path_call("unipc", dict(order=2), x_T, ts=ts)
    np.testing.assert_array_equal(np.asarray(x2), np.asarray(x))
    assert int(nfe2) == int(nfe) == 4 and path.shape == (5, *SMALL)
    np.testing.assert_array_equal(np.asarray(path[0]), np.asarray(x_T))
    np.testing.assert_array_equal(np.asarray(path[-1]), np.asarray(x))
    assert np.all(np.abs(np.diff(np.asarray(path), axis=0)).max(axis=(1, 2)) > 0)


@pytest.mark.slow
@pytest.mark.parametrize("name,options", FIXED_STEP, ids=lambda v: str(v))
def test_every_sampler_returns_its_path_from_x_init(name, options):
    x_init = jnp.asarray(np.random.default_rng(1).normal(size=SMALL), jnp.float32)
    ts = np.asarray([1.0, 0.6, 0.3, 0.1, 1e-3])
    for extra in ({}, {"ts": ts}):
        sample, (x, nfe, path) = _path_call(name, options, x_init, **extra)
        if extra:
            np.testing.assert_array_equal(sample.ts, ts.astype(np.float32))
        assert path.shape == (len(sample.ts) + (name == "heun"), *SMALL)
        np.testing.assert_allclose(np.asarray(path[0]), np.asarray(x_init), atol=1e-6)
        np.testing.assert_array_equal(np.asarray(path[-1]), np.asarray(x))
        assert int(nfe) > 0


def test_sdedit_starts_at_t0_on_the_samplers_own_times():
    full = get_time_grid("uniform", VP, 10, 1e-3)  # 1.0, 0.9001, ..., 0.1009, 0.001
    np.testing.assert_allclose(controllable.sdedit_times(full, 0.58), [0.58, *full[5:]])
    # 0.905 is closer to 0.9001 than half a step: that point is dropped, not a tiny step taken
    np.testing.assert_allclose(controllable.sdedit_times(full, 0.905), [0.905, *full[2:]])
    np.testing.assert_allclose(controllable.sdedit_times(full, 1.0), full)


# --- the analytic first step -----------------------------------------------------------------

MULTISTEP = ["dpm_solver++", "unipc", "ipndm"]


@pytest.mark.parametrize("name", MULTISTEP)
def test_analytic_first_step_is_exact_on_gaussian_data_and_saves_a_score_call(name):
    """On data N(0, s^2 I) the analytic first step's guess is the exact score, so the sampler
    with it gives the same samples as without it on the same times, with one score call fewer
    (counted); by nfe it takes nfe + 1 steps. From rho = 2 (not VP's T, where any guess of the
    data's spread is right to (s / 152)^2), so that a wrong guess shows."""
    scale = 0.5
    exact = analytic.GaussianMixture.gaussian(np.zeros(2), scale**2 * np.eye(2))
    ts = times_uniform_in(VP, "lambda", rho_start_time(2.0), EPS, 5)
    alpha, sigma = (float(v[0]) for v in VP.marginal_coeffs(jnp.full(1, ts[0])))
    x_start = np.sqrt(alpha**2 * scale**2 + sigma**2) * jax.random.normal(
        jax.random.PRNGKey(3), SMALL)
    out = {}
    for first, guess in ((False, scale), (True, scale), (True, 2.0 * scale)):
        score_fn, calls = counting(exact.perturbed_score_fn(VP))
        sample = get_sampler(name, VP, SMALL, ts=ts, eps=EPS, data_scale=guess,
                             analytic_first_step=first)
        x, nfe = jax.jit(lambda r, x0, s=sample, f=score_fn: s(r, f, x_init=x0))(
            jax.random.PRNGKey(0), x_start)
        jax.effects_barrier()
        assert int(nfe) == calls[0] == 5 - first
        out[first, guess] = np.asarray(x)
    np.testing.assert_allclose(out[True, scale], out[False, scale], rtol=1e-5, atol=1e-5)
    # a guess of twice the spread: measured 0.016 (UniPC), 0.028 (DPM-Solver++) away
    assert np.abs(out[True, 2.0 * scale] - out[False, scale]).max() > 5e-3
    assert len(get_sampler(name, VP, SMALL, nfe=5, analytic_first_step=True,
                           data_scale=1.0).ts) == 7


# --- bad options: one clear error each --------------------------------------------------------


@pytest.mark.parametrize("name,options,match", [
    ("unipc", dict(order=4), r"unipc: order must be 1, 2 or 3, got 4"),
    ("ipndm", dict(order=5), r"ipndm: order must be 1, 2, 3 or 4, got 5"),
    ("dpm_solver++", dict(order=0), r"dpm_solver\+\+: order must be 1, 2 or 3"),
    ("unipc", dict(variant="bh3"), r"variant must be one of \['bh1', 'bh2'\], got 'bh3'"),
    ("unipc", dict(nfe=2, order=3, data_scale=1.0),
     r"unipc: 2 steps are too few; it needs at least 3"),
    ("ipndm", dict(ts=[1.0, 0.5, 0.1], order=3), r"ipndm: ts must be a 1-D array of at least 4"),
    ("ddim", dict(ts=[1.0, 0.5, 0.5, 0.1]), r"ddim: ts must be strictly decreasing, but "
     r"ts\[1\]=0.5 <= ts\[2\]=0.5"),
    ("pc", dict(ts=[0.1, 0.5, 1.0]), r"pc: ts must be strictly decreasing"),
    ("heun", dict(ts=[1.5, 0.5, 0.1]), r"heun: ts must lie inside \[eps, T\] = \[0.001, 1\]"),
    ("dpm_solver++", dict(ts=[1.0, 0.5, 1e-4]), r"ts must lie inside \[eps, T\]"),
    ("unipc", dict(ts=[[1.0, 0.5], [0.2, 0.1]], order=1), r"ts must be a 1-D array"),
    ("ode", dict(ts=[1.0, np.nan, 0.1]), r"ode: ts holds a non-finite time"),
    ("dpm_solver++", dict(ts=[1.0, 0.1], order=1, analytic_first_step=True),
     r"dpm_solver\+\+: ts must be a 1-D array of at least 3 times"),
], ids=lambda v: str(v))
def test_bad_options_give_one_clear_error(name, options, match):
    with pytest.raises(ValueError, match=match):
        get_sampler(name, VP, SMALL, eps=1e-3, **options)


def test_bad_calls_give_one_clear_error():
    score_fn = analytic.GaussianMixture.gaussian(MU, np.diag(S**2)).perturbed_score_fn(VP)
    with pytest.raises(ValueError, match=r"x_init has shape \(3, 2\), the sampler was built "
                                         r"for \(4, 2\)"):
        get_sampler("ipndm", VP, SMALL)(jax.random.PRNGKey(0), score_fn, x_init=jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"SDEdit from t0=0.01: unipc keeps 1 of its 10 steps "
                                         r"below t0, too few"):
        controllable.get_editor(VP, SMALL, 0.01, "unipc", order=3)
    with pytest.raises(ValueError, match=r"SDEdit: analytic_first_step guesses the score of "
                                         r"pure noise"):
        controllable.get_editor(VP, SMALL, 0.5, "unipc", analytic_first_step=True)


def _heun_error(n_points: int, exponential: bool) -> float:
    """RMS error at noise 0 of Heun on n_points times uniform in log-SNR from T (VP)."""
    score_fn, x_start, _ = gaussian_flow(VP, 1.0, EPS)
    exact = MU + S * np.random.default_rng(0).normal(size=(N, 2))  # the flow's end at sigma 0
    ts = times_uniform_in(VP, "lambda", 1.0, EPS, n_points - 1)
    sample = get_sampler("heun", VP, x_start.shape, eps=EPS, ts=ts, exponential=exponential)
    x, _ = sample(jax.random.PRNGKey(0), score_fn, x_init=x_start)
    return float(np.sqrt(np.mean((np.asarray(x) - exact) ** 2)))


def test_heun_on_few_points_is_stable_in_its_exponential_form():
    """3 points (5 NFE) from VP's sigma 152: each step divides the noise by ~120. The default
    trapezoid on D stays on the data (measured RMS error 0.36); EDM's trapezoid on dx/dsigma
    overshoots (14.7, test below)."""
    assert _heun_error(3, exponential=True) < 0.5


@pytest.mark.slow
def test_heun_edm_form_overshoots_and_the_default_takes_it_only_on_small_steps():
    """EDM's form at 3 points: 14.7. RMS errors at 5 / 9 / 17 / 33 points (uniform in log-SNR,
    each step keeps r = 0.09 / 0.30 / 0.55 / 0.74 of the noise): EDM's 1.14, 0.199, 0.042,
    0.0096 (second order: slopes 2.25, 2.13 per doubling from 9); the default 0.249, 0.098 (the
    trapezoid on D, r < 1/3), then EDM's step and its figures (r >= 1/3)."""
    assert _heun_error(3, exponential=False) > 5.0
    edm = np.array([_heun_error(n, exponential=False) for n in (5, 9, 17, 33)])
    default = np.array([_heun_error(n, exponential=True) for n in (5, 9, 17, 33)])
    assert np.all(np.log2(edm[1:-1] / edm[2:]) > 1.5), edm
    assert np.all(default[:2] < 0.6 * edm[:2]), (default, edm)
    np.testing.assert_allclose(default[2:], edm[2:], rtol=1e-6)
