"""PF-ODE likelihood against the closed form of Gaussian data (mu != 0, Sigma != I).

The flow carries p_eps exactly onto the SDE's marginal p_T, which differs slightly from the
prior (VP, beta_max = 20: alpha(T) ~ 0.0066). So the closed form is
log p_eps(x) = log p_T_exact(z) + int div, and we swap the prior term for the exact one
instead of loosening the tolerance.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import analytic, sde_lib
from score_sde.likelihood import bits_per_dim, get_likelihood_fn

D = 3
_A = np.array([[1.0, 0.3, -0.2], [0.0, 0.7, 0.4], [0.1, 0.0, 0.5]])
DATA = analytic.GaussianMixture.gaussian([1.0, -0.5, 2.0], _A @ _A.T + 0.05 * np.eye(D))
SDES = {"vp": sde_lib.VPSDE(), "subvp": sde_lib.subVPSDE(), "ve": sde_lib.VESDE(sigma_max=20.0)}
EPS = 1e-5


def closed_form_check(sde, logp, z, x):
    """(logp corrected to the exact p_T, closed-form log p_eps(x))."""
    t_end = jnp.full((x.shape[0],), sde.T)
    corrected = logp - sde.prior_logp(z) + DATA.perturbed_log_prob(sde, z, t_end)
    return corrected, DATA.perturbed_log_prob(sde, x, jnp.full((x.shape[0],), EPS))


@pytest.mark.parametrize("name", sorted(SDES))
def test_exact_trace_matches_closed_form(name):
    sde = SDES[name]
    x = DATA.sample(jax.random.PRNGKey(0), 8)
    fn = get_likelihood_fn(sde, trace="exact", eps=EPS)
    logp, z, nfe = jax.jit(lambda x: fn(jax.random.PRNGKey(1), DATA.perturbed_score_fn(sde), x))(x)
    got, want = closed_form_check(sde, logp, z, x)
    # Measured max |error| / D: 1.8e-5 (vp), 2.7e-5 (subvp), 1.7e-5 (ve) nats/dim.
    assert np.max(np.abs(got - want)) / D < 1e-3
    assert int(nfe) > 0
    # Without the correction, the prior's mismatch with p_T would break the tolerance
    # (measured 0.034 nats for vp/subvp, 0.25 for ve with sigma_max = 20).
    assert np.max(np.abs(logp - want)) / D > 1e-3


def test_hutchinson_is_unbiased():
    sde = SDES["vp"]
    m = 512
    x = jnp.repeat(DATA.sample(jax.random.PRNGKey(2), 1), m, axis=0)  # one point, m probes
    score_fn = DATA.perturbed_score_fn(sde)
    for noise in ("rademacher", "gaussian"):
        fn = get_likelihood_fn(sde, trace="hutchinson", hutchinson_noise=noise, eps=EPS,
                               rtol=1e-4, atol=1e-4)
        logp, z, _ = jax.jit(lambda x, fn=fn: fn(jax.random.PRNGKey(3), score_fn, x))(x)
        got, want = closed_form_check(sde, logp, z, x)
        # Measured: mean - exact = -0.004 (rademacher, stderr 0.020), -0.024 (gaussian, 0.047).
        stderr = np.std(got) / np.sqrt(m)
        assert np.std(got) > 0  # the probes really differ
        assert abs(np.mean(got) - want[0]) < 3.5 * stderr + 1e-3 * D


def test_nfe_counts_vector_field_calls():
    sde = SDES["subvp"]
    calls = [0]

    def score_fn(x, t):
        jax.debug.callback(lambda: calls.__setitem__(0, calls[0] + 1))
        return DATA.perturbed_score_fn(sde)(x, t)

    fn = get_likelihood_fn(sde, trace="hutchinson", rtol=1e-3, atol=1e-3)
    _, _, nfe = jax.jit(lambda x: fn(jax.random.PRNGKey(0), score_fn, x))(jnp.zeros((4, D)))
    jax.effects_barrier()
    # One run of score_fn (with its jvp) per vector-field evaluation.
    assert int(nfe) == calls[0] > 0


def test_bits_per_dim_formula():
    # Centred data ([-1, 1], scale 2): the published offset of 7 bits over -logp / (D ln 2).
    np.testing.assert_allclose(bits_per_dim(0.0, (4, 4, 3), scale=2.0), 7.0)
    np.testing.assert_allclose(bits_per_dim(0.0, 48, scale=1.0), 8.0)
    # Uniform data on [-1, 1]^D has log p = -D log 2: a uniform 8-bit model, exactly 8 bits.
    np.testing.assert_allclose(bits_per_dim(-48 * np.log(2.0), 48, scale=2.0), 8.0, rtol=1e-6)
    np.testing.assert_allclose(bits_per_dim(-48 * np.log(2.0), 48, scale=2.0, n_bins=None), 0.0,
                               atol=1e-6)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="trace='sketch'"):
        get_likelihood_fn(SDES["vp"], trace="sketch")
    with pytest.raises(ValueError, match="hutchinson_noise='uniform'"):
        get_likelihood_fn(SDES["vp"], hutchinson_noise="uniform")
