"""SDE library: closed-form marginals, priors and discretisations checked independently."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import integrate, stats

from score_sde import sde_lib

SDES = {
    "vp": sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000),
    "subvp": sde_lib.subVPSDE(beta_min=0.1, beta_max=20.0, N=1000),
    "ve": sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=1000),
}
TIMES = np.array([1e-3, 0.05, 0.3, 0.7, 1.0], np.float32)


def _f_coeff_and_g(sde):
    """t -> the linear drift coefficient a(t) (f = a x) and g(t), read off sde.sde at x = 1
    (compiled once: the ODE solver calls it thousands of times)."""
    coeffs = jax.jit(lambda t: sde.sde(jnp.ones((1, 1)), jnp.full((1,), t, jnp.float32)))

    def at(t):
        drift, g = coeffs(t)
        return float(drift[0, 0]), float(g[0])

    return at


@pytest.mark.parametrize("name", SDES)
def test_marginal_prob_solves_moment_odes(name):
    """mean' = a(t) mean, var' = 2 a(t) var + g(t)^2, integrated from the marginal at t=0."""
    sde = SDES[name]
    _, std0 = sde.marginal_prob(jnp.ones((1, 1)), jnp.zeros((1,)))

    coeffs = _f_coeff_and_g(sde)

    def rhs(t, y):
        a, g = coeffs(t)
        return [a * y[0], 2 * a * y[1] + g**2]

    sol = integrate.solve_ivp(rhs, (0.0, 1.0), [1.0, float(std0[0]) ** 2], t_eval=TIMES,
                              rtol=1e-7, atol=1e-10, method="DOP853")
    mean, std = sde.marginal_prob(jnp.ones((len(TIMES), 1)), jnp.asarray(TIMES))
    np.testing.assert_allclose(mean[:, 0], sol.y[0], rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(std) ** 2, sol.y[1], rtol=2e-4, atol=1e-7)


@pytest.mark.parametrize("name", SDES)
def test_prior_logp_is_gaussian_density(name):
    sde = SDES[name]
    z = sde.prior_sampling(jax.random.PRNGKey(0), (4, 3, 2, 2))
    scale = sde.sigma_max if name == "ve" else 1.0
    expected = stats.multivariate_normal(np.zeros(12), scale**2 * np.eye(12)).logpdf(
        np.asarray(z, np.float64).reshape(4, -1))
    np.testing.assert_allclose(sde.prior_logp(z), expected, rtol=1e-5)


@pytest.mark.parametrize("name", SDES)
def test_prior_sampling_matches_marginal_at_T(name):
    sde = SDES[name]
    z = np.asarray(sde.prior_sampling(jax.random.PRNGKey(1), (20000, 2)))
    scale = sde.sigma_max if name == "ve" else 1.0
    np.testing.assert_allclose(z.std(0), scale, rtol=0.03)
    np.testing.assert_allclose(z.mean(0), 0.0, atol=0.03 * scale)


def test_vp_discretize_is_ddpm_chain():
    sde = SDES["vp"]
    n = sde.N
    idx = np.array([0, 1, 500, n - 1])
    betas = (sde.beta_min + idx * (sde.beta_max - sde.beta_min) / (n - 1)) / n
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)
    f, G = sde.discretize(x, jnp.asarray(idx / (n - 1), jnp.float32))
    np.testing.assert_allclose(x + f, np.sqrt(1 - betas)[:, None] * np.asarray(x), rtol=1e-5)
    np.testing.assert_allclose(G, np.sqrt(betas), rtol=1e-5)
    # N DDPM steps reach the continuous log mean coefficient at T up to O(1/N) (0.7% here).
    alpha_T, _ = sde.marginal_coeffs(jnp.ones((1,)))
    np.testing.assert_allclose(0.5 * np.log(sde.alphas_cumprod[-1]), np.log(alpha_T[0]),
                               rtol=1e-2)


def test_ve_discretize_is_smld_ladder():
    sde = SDES["ve"]
    n = sde.N
    idx = np.array([0, 1, 700, n - 1])
    sig = lambda i: sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** (i / (n - 1))
    expected_G = np.where(idx == 0, sig(0), np.sqrt(sig(idx) ** 2 - sig(idx - 1) ** 2))
    x = jnp.ones((4, 2))
    f, G = sde.discretize(x, jnp.asarray(idx / (n - 1), jnp.float32))
    np.testing.assert_array_equal(f, 0.0)
    np.testing.assert_allclose(G, expected_G, rtol=2e-4)


def test_subvp_discretize_is_euler_maruyama():
    sde = SDES["subvp"]
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 5)), jnp.float32)
    t = jnp.asarray([0.01, 0.4, 0.9])
    drift, g = sde.sde(x, t)
    f, G = sde.discretize(x, t)
    np.testing.assert_allclose(f, drift / sde.N, rtol=1e-6)
    np.testing.assert_allclose(G, g / np.sqrt(sde.N), rtol=1e-6)


def test_discrete_index_visits_every_level_on_the_published_grid():
    sde = SDES["vp"]
    t = jnp.linspace(sde.T, 1e-3, sde.N)
    np.testing.assert_array_equal(sde.discrete_index(t), np.arange(sde.N - 1, -1, -1))


@pytest.mark.parametrize("name", SDES)
@pytest.mark.parametrize("probability_flow", [False, True])
def test_reverse_drift(name, probability_flow):
    sde = SDES[name]
    score_fn = lambda x, t: -x * (1.0 + t[:, None])
    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 4)), jnp.float32)
    t = jnp.asarray([0.1, 0.5, 0.9])
    rsde = sde.reverse(score_fn, probability_flow)
    drift, g = sde.sde(x, t)
    weight = 0.5 if probability_flow else 1.0
    rdrift, rg = rsde.sde(x, t)
    np.testing.assert_allclose(rdrift, drift - weight * g[:, None] ** 2 * score_fn(x, t),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rg, 0.0 if probability_flow else g)
    f, G = sde.discretize(x, t)
    rf, rG = rsde.discretize(x, t)
    np.testing.assert_allclose(rf, f - weight * G[:, None] ** 2 * score_fn(x, t),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rG, 0.0 if probability_flow else G)


@pytest.mark.parametrize("name", SDES)
def test_t_from_log_snr_inverts_log_snr(name):
    sde = SDES[name]
    t = jnp.asarray(TIMES)
    np.testing.assert_allclose(sde.t_from_log_snr(sde.log_snr(t)), t, rtol=1e-3, atol=1e-5)


def test_sdes_are_hashable_static_jit_arguments():
    @jax.jit
    def mean_at(x, t):
        return SDES["vp"].marginal_prob(x, t)[0]

    static = jax.jit(lambda sde, x: sde.marginal_prob(x, jnp.ones(x.shape[:1]))[1],
                     static_argnums=0)
    assert mean_at(jnp.ones((2, 2)), jnp.ones((2,))).shape == (2, 2)
    np.testing.assert_allclose(static(SDES["ve"], jnp.ones((2, 2))), 50.0, rtol=1e-5)
    with pytest.raises(dataclasses_error()):
        SDES["vp"].beta_min = 1.0


def dataclasses_error():
    import dataclasses
    return dataclasses.FrozenInstanceError


def _config(sde_name):
    config = ml_collections.ConfigDict()
    config.training = ml_collections.ConfigDict({"sde": sde_name})
    config.model = ml_collections.ConfigDict(dict(beta_min=0.1, beta_max=20.0, sigma_min=0.01,
                                                  sigma_max=50.0, num_scales=1000))
    return config


def test_get_sde_from_config_and_errors():
    sde, eps = sde_lib.get_sde(_config("vesde"))
    assert isinstance(sde, sde_lib.VESDE) and eps == 1e-5
    sde, eps = sde_lib.get_sde(_config("subvpsde"))
    assert isinstance(sde, sde_lib.subVPSDE) and eps == 1e-3
    sde, eps = sde_lib.get_sde(_config("edm"))  # sigma in [model.sigma_min, model.sigma_max]
    assert sde == sde_lib.EDMSDE(0.01, 50.0, 1000) and sde.T == 50.0 and eps == 0.01
    with pytest.raises(ValueError, match=r"config\.training\.sde='flow'.*'subvpsde'"):
        sde_lib.get_sde(_config("flow"))
    with pytest.raises(ValueError, match="sigma_max"):
        sde_lib.VESDE(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="beta_min"):
        sde_lib.VPSDE(beta_min=-1.0)


# --- EDM's SDE: time is the noise level ------------------------------------------------------

EDM = sde_lib.EDMSDE(sigma_min=0.002, sigma_max=80.0, N=100)


def test_edm_marginal_solves_moment_odes_and_prior_is_marginal_at_T():
    """var' = g^2 = 2t from var(0) = 0 gives var = t^2: sigma(t) = t, mean unchanged."""
    times = np.array([0.002, 0.5, 3.0, 40.0, 80.0], np.float32)
    sol = integrate.solve_ivp(lambda t, y: [2 * t], (0.0, 80.0), [0.0], t_eval=times,
                              rtol=1e-10, atol=1e-12)
    mean, std = EDM.marginal_prob(jnp.ones((5, 1)), jnp.asarray(times))
    np.testing.assert_allclose(np.asarray(std) ** 2, sol.y[0], rtol=1e-5)
    np.testing.assert_allclose(mean, 1.0)
    assert EDM.T == 80.0 and float(EDM.sde(jnp.ones((1, 1)), jnp.ones(1))[0][0, 0]) == 0.0
    z = EDM.prior_sampling(jax.random.PRNGKey(0), (4, 3))
    expected = stats.multivariate_normal(np.zeros(3), 80.0**2 * np.eye(3)).logpdf(
        np.asarray(z, np.float64))
    np.testing.assert_allclose(EDM.prior_logp(z), expected, rtol=1e-5)
    np.testing.assert_allclose(EDM.t_from_log_snr(EDM.log_snr(jnp.asarray(times))), times,
                               rtol=1e-5)


def test_edm_discretize_adds_the_variance_of_one_step():
    """G^2 = t^2 - (t - T/N)^2: a step of T/N from t - T/N to t, drift 0; the reverse
    discretisation subtracts G^2 score as for every SDE."""
    t = jnp.asarray([0.5, 8.0, 80.0])
    x = jnp.ones((3, 2))
    f, G = EDM.discretize(x, t)
    np.testing.assert_allclose(f, 0.0)
    np.testing.assert_allclose(G**2, t**2 - jnp.maximum(t - 0.8, 0.0) ** 2, rtol=1e-5)
    np.testing.assert_allclose(EDM.discretize(x, jnp.asarray([0.3]))[1], 0.3, rtol=1e-6)
    rf, _ = EDM.reverse(lambda x, t: -x).discretize(x, t)
    np.testing.assert_allclose(rf, G[:, None] ** 2 * x, rtol=1e-5)
    with pytest.raises(ValueError, match="sigma_max"):
        sde_lib.EDMSDE(sigma_min=1.0, sigma_max=0.5)
