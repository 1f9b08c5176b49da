"""EDM (Karras et al. 2022): preconditioning, loss and SDE against closed forms.

Gaussian data x0 ~ N(0, s^2 I) has the exact denoiser D*(x; sigma) = s^2 / (sigma^2 + s^2) x.
A "network" F built from D* through the inverse of the preconditioning must give D* back, and
the EDM loss at D* is lambda(sigma) E|D* - x0|^2 = lambda sigma^2 s^2 / (sigma^2 + s^2) per
dimension, averaged over ln sigma ~ N(P_mean, P_std^2). With s = sigma_data that is exactly 1;
the tests use s != sigma_data so that F* != 0 and the minimum depends on sigma.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import analytic, losses, sde_lib
from score_sde.likelihood import get_likelihood_fn
from score_sde.models import parameterization as param_lib
from score_sde.models import utils as mutils
from score_sde.sampling import get_sampler, steps
from tests import test_sampling as ts

SDE = sde_lib.EDMSDE()  # sigma in [0.002, 80]
EPS = SDE.sigma_min
SIGMA_DATA = 0.5
S_TRUE = 0.8  # the test data's std, != sigma_data
PARAM = param_lib.get_parameterization(SDE, sigma_data=SIGMA_DATA)


def exact_denoiser(s: float):
    """D*(x; sigma) = E[x0 | x0 + sigma z = x] for x0 ~ N(0, s^2 I)."""
    return lambda x, t: sde_lib.batch_mul(s**2 / (SDE.sigma(t) ** 2 + s**2), x)


class ExactNetwork:
    """A stand-in for a flax module: F = (D*(x) - c_skip x) / c_out, recovering x and sigma from
    the preconditioned inputs c_in x and c_noise = ln(sigma) / 4 (the inverse preconditioning)."""

    def __init__(self, denoiser, param: param_lib.EDM):
        self.denoiser, self.param = denoiser, param

    def apply(self, variables, x_in, labels, train=False, rngs=None, **kwargs):
        sigma = jnp.exp(4.0 * labels)
        c_skip, c_out, c_in = self.param.scalings(sigma)
        x = sde_lib.batch_mul(1.0 / c_in, x_in)
        return sde_lib.batch_mul(1.0 / c_out, self.denoiser(x, sigma)
                                 - sde_lib.batch_mul(c_skip, x))


def test_scalings_are_edms():
    t = jnp.asarray([0.002, 0.5, 80.0])
    c_skip, c_out, c_in = (np.asarray(v, np.float64) for v in PARAM.scalings(t))
    s, sd = np.asarray(t, np.float64), SIGMA_DATA
    np.testing.assert_allclose(c_skip, sd**2 / (s**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(c_out, s * sd / np.sqrt(s**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(c_in, 1 / np.sqrt(s**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(PARAM.labels(t), np.log(s) / 4, rtol=1e-6)
    # The loss weight in output space is lambda c_out^2 = 1: EDM's "unit loss weight".
    np.testing.assert_allclose(PARAM.loss_weight(t, "edm"), 1.0, rtol=1e-5)


def test_preconditioning_round_trips_to_the_posterior_mean():
    """Denoiser, score and eps of the wrapped exact network equal the closed forms."""
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 4, 4, 1)) * 3.0
    t = jnp.asarray([0.002, 0.05, 0.5, 2.0, 20.0, 80.0])
    model = ExactNetwork(exact_denoiser(S_TRUE), PARAM)
    score_fn = mutils.get_score_fn(SDE, model, None, parameterization=PARAM)
    denoiser = steps.data_prediction(SDE, score_fn)  # the one route to x0_hat
    want = exact_denoiser(S_TRUE)(x, t)
    np.testing.assert_allclose(denoiser(x, t), want, rtol=1e-4, atol=1e-5)
    gauss = analytic.GaussianMixture.gaussian(np.zeros(16), S_TRUE**2 * np.eye(16), (4, 4, 1))
    # sigma^2 score = D - x: compared on that scale, since the stand-in network's own float32
    # cancellation (D* - c_skip x at sigma = 0.002) is amplified 1 / sigma^2 in the score.
    s2 = SDE.sigma(t) ** 2
    np.testing.assert_allclose(sde_lib.batch_mul(s2, score_fn(x, t)),
                               sde_lib.batch_mul(s2, gauss.perturbed_score_fn(SDE)(x, t)),
                               rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(x))))
    # A wrong sigma_data in the wrapper changes the result: the check has power.
    other = param_lib.get_parameterization(SDE, sigma_data=0.3)
    wrong = steps.data_prediction(SDE, mutils.get_score_fn(SDE, model, None,
                                                           parameterization=other))(x, t)
    assert float(jnp.max(jnp.abs(wrong - want))) > 1e-2


def test_model_config_selects_edm():
    """get_score_fn reads config.model.parameterization / sigma_data from the network's config."""
    from configs.digits_edm import get_config

    config = get_config()
    sde, eps = sde_lib.get_sde(config)
    assert isinstance(sde, sde_lib.EDMSDE) and (sde.T, eps) == (80.0, 0.002)
    param = param_lib.from_config(config, sde)
    assert isinstance(param, param_lib.EDM) and param.sigma_data == config.model.sigma_data
    config.model.embedding_type = "fourier"
    with pytest.raises(ValueError, match="embedding_type"):
        param_lib.from_config(config, sde)


def _edm_minimum(s: float, reduce_dims: int) -> float:
    """E over ln sigma ~ N(P_mean, P_std^2) of lambda sigma^2 s^2 / (sigma^2 + s^2), by
    Gauss-Hermite quadrature (times the dims summed over)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    sigma = np.exp(PARAM.P_mean + PARAM.P_std * nodes)
    sd = SIGMA_DATA
    per_dim = (sigma**2 + sd**2) / (sigma * sd) ** 2 * sigma**2 * s**2 / (sigma**2 + s**2)
    return float(np.sum(weights * per_dim) / np.sqrt(2 * np.pi)) * reduce_dims


@pytest.mark.parametrize("reduce_mean", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_edm_loss_at_exact_denoiser_is_closed_form_minimum(reduce_mean):
    n, d = 4000, 8
    x0 = jax.random.normal(jax.random.PRNGKey(1), (n, d)) * S_TRUE
    per_example = []
    for s in (S_TRUE, 0.6 * S_TRUE):  # the exact denoiser and a wrong one (same noise)
        loss_fn = losses.get_param_loss_fn(PARAM, ExactNetwork(exact_denoiser(s), PARAM),
                                           train=False, reduce_mean=reduce_mean)
        # Per-example losses: one key, one example per call, vmapped.
        one = lambda k, x, f=loss_fn: f(k, None, {"image": x[None]})
        keys = jax.random.split(jax.random.PRNGKey(2), n)
        per_example.append(np.asarray(jax.jit(jax.vmap(one))(keys, x0), np.float64))
    exact, wrong = per_example
    want = _edm_minimum(S_TRUE, 1 if reduce_mean else d)
    se = exact.std() / np.sqrt(n)
    assert abs(exact.mean() - want) < 4 * se, (exact.mean(), want, se)
    diff = wrong - exact
    assert diff.mean() > 10 * diff.std() / np.sqrt(n)


# --- the EDM SDE under every sampler and the likelihood ---------------------------------------

# The published PC grid is uniform in t = sigma, which puts one step between sigma = T / N and
# eps; EDM samples on its rho = 7 grid, as configs/edm/*.py do.
GRID = {"grid": "karras"}
FAST = ("heun", "dpm_solver++", "em")  # the rest (ode included) run with -m slow
# ALD alone is biased (test_sampling.py: it mixes poorly at high noise), more so from EDM's
# sigma_max = 80 than from the VE test's 40: mode-weight error measured 0.049 and 0.037 (seeds
# 0, 1; karras grid), 0.036-0.045 on the log-SNR grid; FD 0.14 (bound 0.5).
WEIGHT_TOL = {"ald": 0.07}


@functools.cache
def run(case: str):
    name, options = ts.CASES[case]
    options = {**options, **(GRID if name != "ode" else {})}
    sample = get_sampler(name, SDE, (ts.N, 2), eps=EPS, **options)
    x, nfe = jax.jit(lambda rng: sample(rng, ts.GMM.perturbed_score_fn(SDE)))(
        jax.random.PRNGKey(0))
    return np.asarray(x), int(nfe)


@pytest.mark.parametrize("case", [pytest.param(c, marks=[] if c in FAST else [pytest.mark.slow])
                                  for c in sorted(ts.CASES)])
def test_sampler_on_edm_sde_matches_exact_distribution(case):
    x, _ = run(case)
    assert np.all(np.isfinite(x))
    assert ts.exact_fd(x) < ts.FD_BOUND[case]
    assert abs(ts.mode_weight(x, SDE) - ts.GMM.weights[0]) < WEIGHT_TOL.get(case, ts.WEIGHT_TOL)


def test_ode_likelihood_on_edm_sde():
    from tests import test_likelihood as tl

    x = tl.DATA.sample(jax.random.PRNGKey(0), 8)
    fn = get_likelihood_fn(SDE, trace="exact", eps=EPS)
    score_fn = tl.DATA.perturbed_score_fn(SDE)
    logp, z, nfe = jax.jit(lambda x: fn(jax.random.PRNGKey(1), score_fn, x))(x)
    t_end, t_eps = jnp.full((8,), SDE.T), jnp.full((8,), EPS)
    got = logp - SDE.prior_logp(z) + tl.DATA.perturbed_log_prob(SDE, z, t_end)
    want = tl.DATA.perturbed_log_prob(SDE, x, t_eps)
    assert int(nfe) > 0
    assert np.max(np.abs(got - want)) / tl.D < 1e-3


def test_parameterization_per_sde_and_errors():
    """The published convention of each SDE; EDM only where it is defined."""
    get = param_lib.get_parameterization
    vp, ve = sde_lib.VPSDE(N=50), sde_lib.VESDE(N=50)
    assert type(get(vp)) is param_lib.EpsilonPrediction
    assert type(get(vp, continuous=False)) is param_lib.DDPMDiscrete
    assert type(get(sde_lib.subVPSDE(), continuous=False)) is param_lib.EpsilonPrediction
    assert type(get(ve)) is param_lib.ScorePrediction
    assert type(get(ve, continuous=False)) is param_lib.SMLDDiscrete
    assert type(get(ve, kind="edm")) is param_lib.EDM and type(get(SDE)) is param_lib.EDM
    # Discrete training times land on the ladder: the level index is exactly the drawn one and
    # the label is it up to float32 rounding; SMLD labels are exact indices.
    for param in (param_lib.DDPMDiscrete(vp), param_lib.SMLDDiscrete(ve)):
        t = param.sample_t(jax.random.PRNGKey(0), 500, 0.0)
        labels = np.asarray(param.labels(t), np.float64)
        np.testing.assert_allclose(labels, np.round(labels), rtol=0, atol=1e-5)
        idx = np.round(labels).astype(int)
        want = idx if isinstance(param, param_lib.DDPMDiscrete) else 49 - idx
        np.testing.assert_array_equal(vp.discrete_index(t), want)
        assert len(set(idx.tolist())) == 50  # every level is drawn
    with pytest.raises(ValueError, match="alpha"):
        get(vp, kind="edm")
    with pytest.raises(ValueError, match="continuous"):
        get(SDE, continuous=False)
    with pytest.raises(ValueError, match="parameterization"):
        get(vp, kind="v")


def test_noise_conditional_classifier_sees_sigma_on_the_edm_sde():
    """On the EDM SDE t runs to 80: the classifier is fed sigma(t) = t, as on VE, not 999 t."""
    from score_sde.models.classifier import noise_input

    t = jnp.asarray([0.002, 1.0, 80.0])
    np.testing.assert_allclose(noise_input(sde_lib.EDMSDE(), t), t, rtol=1e-6)
    np.testing.assert_allclose(noise_input(sde_lib.VPSDE(), t), 999.0 * t, rtol=1e-6)
