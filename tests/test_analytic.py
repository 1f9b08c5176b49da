"""Closed-form distributions: exact scores and densities of perturbed Gaussian mixtures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import analytic, sde_lib

SDES = {
    "vp": sde_lib.VPSDE(),
    "subvp": sde_lib.subVPSDE(),
    "ve": sde_lib.VESDE(sigma_max=20.0),
}


@pytest.fixture(scope="module")
def gmm():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 3, 3))
    covs = 0.3 * np.einsum("kij,klj->kil", a, a) + 0.1 * np.eye(3)
    return analytic.GaussianMixture([0.5, 0.3, 0.2], rng.normal(size=(3, 3)) * 2, covs)


def test_log_prob_matches_scipy(gmm):
    from scipy.stats import multivariate_normal

    x = np.random.default_rng(1).normal(size=(5, 3))
    want = np.log(sum(w * multivariate_normal(m, c).pdf(x)
                      for w, m, c in zip(gmm.weights, gmm.means, gmm.covs, strict=True)))
    np.testing.assert_allclose(gmm.log_prob(jnp.asarray(x)), want, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(SDES))
def test_perturbed_score_is_grad_of_log_prob(gmm, name):
    sde = SDES[name]
    x = jnp.asarray(np.random.default_rng(2).normal(size=(6, 3)) * 2, jnp.float32)
    t = jnp.linspace(0.01, 1.0, 6)
    score = gmm.perturbed_score_fn(sde)(x, t)
    grad = jax.grad(lambda x: gmm.perturbed_log_prob(sde, x, t).sum())(x)
    np.testing.assert_allclose(score, grad, rtol=1e-4, atol=1e-5)


def test_perturbed_marginal_matches_forward_process(gmm):
    """p_t from the formula vs pushing exact samples through x_t = alpha x_0 + sigma eps."""
    sde = SDES["vp"]
    n = 100_000
    x0 = gmm.sample(jax.random.PRNGKey(0), n)
    alpha, sigma = sde.marginal_coeffs(jnp.full((n,), 0.3))
    xt = sde_lib.batch_mul(alpha, x0) + sde_lib.batch_mul(sigma, jax.random.normal(
        jax.random.PRNGKey(1), x0.shape))
    pt = gmm.perturbed(sde, 0.3)
    # Standard error of a mean with unit-scale spread at n=1e5 is ~3e-3.
    np.testing.assert_allclose(np.mean(xt, 0), pt.mean(), atol=0.02)
    np.testing.assert_allclose(np.cov(np.asarray(xt), rowvar=False), pt.cov(), atol=0.05)
    # The perturbed density at t equals the new mixture's t=0 density.
    np.testing.assert_allclose(gmm.perturbed_log_prob(sde, xt[:8], 0.3), pt.log_prob(xt[:8]),
                               rtol=1e-5)


def test_sample_moments(gmm):
    x = np.asarray(gmm.sample(jax.random.PRNGKey(3), 200_000), np.float64)
    # Mixture spread is ~2-3 per dim; standard error of the mean ~0.006, covariance entries ~0.03.
    np.testing.assert_allclose(x.mean(0), gmm.mean(), atol=0.03)
    np.testing.assert_allclose(np.cov(x, rowvar=False), gmm.cov(), atol=0.15)
    assert analytic.frechet_distance(x[:50_000], x[50_000:100_000]) < 0.01


def test_image_shaped_and_posterior():
    sde = SDES["ve"]
    g = analytic.GaussianMixture.gaussian(np.arange(4.0), np.diag([1.0, 2.0, 0.5, 1.5]),
                                          event_shape=(2, 2, 1))
    x = g.sample(jax.random.PRNGKey(0), 3)
    assert x.shape == (3, 2, 2, 1)
    t = jnp.full((3,), 0.2)
    # Single Gaussian: score is -(x - mu) / (Sigma + sigma^2) elementwise for diagonal Sigma.
    _, sigma = sde.marginal_coeffs(t)
    var = jnp.asarray([1.0, 2.0, 0.5, 1.5])[None] + sigma[:, None] ** 2
    want = -(x.reshape(3, 4) - jnp.arange(4.0)) / var
    np.testing.assert_allclose(g.perturbed_score_fn(sde)(x, t).reshape(3, 4), want, rtol=1e-5)
    # Tweedie's posterior mean equals the conditional-Gaussian mean.
    mean, cov = g.component_posterior(sde, x, t, 0)
    np.testing.assert_allclose(g.posterior_mean(sde, x, t).reshape(3, 4), mean, rtol=1e-5,
                               atol=1e-5)
    assert cov.shape == (3, 4, 4)
    assert g.log_posterior(sde, x, t).shape == (3, 1)


def test_log_posterior_sums_to_one(gmm):
    x = gmm.sample(jax.random.PRNGKey(4), 7)
    lp = gmm.log_posterior(SDES["subvp"], x, 0.5)
    np.testing.assert_allclose(jnp.exp(lp).sum(-1), 1.0, rtol=1e-5)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="covs"):
        analytic.GaussianMixture([1.0], np.zeros((1, 2)), np.eye(3)[None])


def test_frechet_distance_closed_form():
    mu, cov = np.zeros(2), np.eye(2)
    assert analytic.gaussian_frechet_distance(mu, cov, mu + 1, cov) == pytest.approx(2.0)
    # W2^2 between N(0, 1) and N(0, 4) in 1-D is (1 - 2)^2 = 1.
    assert analytic.gaussian_frechet_distance([0.0], [[1.0]], [0.0], [[4.0]]) == pytest.approx(1)


def test_diagonal_fast_path_matches_grad():
    g = analytic.GaussianMixture([0.3, 0.7], [[1.0, -1.0, 0.5], [-2.0, 0.0, 1.0]],
                                 [np.diag([0.5, 1.0, 2.0]), np.diag([0.1, 0.3, 0.2])])
    assert g._diagonal
    sde = SDES["vp"]
    x = g.sample(jax.random.PRNGKey(5), 6)
    t = jnp.linspace(0.0, 0.9, 6)
    grad = jax.grad(lambda x: g.perturbed_log_prob(sde, x, t).sum())(x)
    np.testing.assert_allclose(g.perturbed_score_fn(sde)(x, t), grad, rtol=1e-4, atol=1e-5)
    mean, cov = g.component_posterior(sde, x, t, 1)
    assert mean.shape == (6, 3) and cov.shape == (6, 3, 3)
