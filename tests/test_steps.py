"""The solver steps (score_sde.sampling.steps): exact where the maths is, shared by the samplers,
the grid optimiser and the consistency teacher, and enough to write a new sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import consistency_losses, sde_lib
from score_sde.sampling import SAMPLERS, get_sampler, register_sampler, steps
from score_sde.sampling.common import (
    full_t,
    initial_state,
    projection_steps,
    schedule,
    step_times,
    with_path,
)

SHAPE = (4, 3)
VP = sde_lib.VPSDE()
MU = jnp.asarray([0.5, -1.0, 2.0])


def point_mass_score(sde):
    """The exact score of data at the single point MU: (alpha MU - x) / sigma^2."""

    def score(x, t):
        alpha, sigma = sde.marginal_coeffs(t)
        return sde_lib.batch_mul(1.0 / sigma**2, sde_lib.batch_mul(alpha, MU[None]) - x)

    return score


def gaussian_score(s):
    """The exact score of N(0, s^2 I) on the VP SDE."""
    return lambda x, t: -x / (VP.marginal_coeffs(t)[0][:, None] ** 2 * s**2
                              + VP.marginal_coeffs(t)[1][:, None] ** 2)


def test_data_prediction_is_tweedie_exact_on_a_point_mass():
    x = jax.random.normal(jax.random.PRNGKey(0), SHAPE)
    t = jnp.full((SHAPE[0],), 0.4)
    np.testing.assert_allclose(steps.data_prediction(VP, point_mass_score(VP))(x, t),
                               np.broadcast_to(MU, SHAPE), rtol=1e-5)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_exponential_step_is_exact_for_a_constant_data_prediction(order):
    """With x0_hat = MU everywhere (point-mass data) the flow is x_s = alpha_s MU +
    (sigma_s / sigma_t)(x_t - alpha_t MU): every order integrates it exactly."""
    ts = np.asarray([0.9, 0.5, 0.3, 0.1])
    alpha, sigma, lam = schedule(VP, ts)
    c = steps.exponential_coeffs(alpha, sigma, lam, order)
    x, mu = np.asarray([1.0, -2.0, 0.3]), np.asarray(MU, np.float64)
    for i in range(len(ts) - 1):
        exact = alpha[i + 1] * mu + sigma[i + 1] / sigma[i] * (x - alpha[i] * mu)
        x = steps.exponential_step(x, mu, mu, mu, steps.ExponentialCoeffs(*(v[i] for v in c)))
        np.testing.assert_allclose(x, exact, rtol=1e-12)


def test_adams_bashforth_weights_are_consistent():
    """Each order's weights sum to one: a constant noise prediction is integrated exactly."""
    ts = np.linspace(0.9, 0.1, 6)
    alpha, sigma, _ = schedule(VP, ts)
    for order in (1, 2, 3, 4):
        w_x, w_eps = steps.adams_bashforth_weights(alpha, sigma, order)
        rho = sigma / alpha
        np.testing.assert_allclose(w_eps.sum(axis=1), alpha[1:] * np.diff(rho), rtol=1e-12)
        np.testing.assert_allclose(w_x, alpha[1:] / alpha[:-1], rtol=1e-12)


def test_heun_step_is_exact_for_a_constant_denoiser_under_both_rules():
    x, s, s_next = jnp.asarray([2.0, -1.0, 0.0]), 3.0, 1.2
    exact = MU + (s_next / s) * (x - MU)
    for rule in (True, False, jnp.asarray(True), jnp.asarray(False)):
        out = steps.heun_step(x, s, s_next, lambda v: MU, lambda v: MU, edm_rule=rule)
        np.testing.assert_allclose(out, exact, rtol=1e-6)


def test_the_heun_sampler_and_the_consistency_teacher_take_the_same_step():
    """EDM's Heun sampler (exponential=False) on a grid = the CD teacher's 'heun' ode_step
    repeated over the same noise levels, with the same denoiser."""
    sde, n = sde_lib.EDMSDE(0.002, 80.0), 5
    score = lambda x, t: -x / (0.25 + sde_lib.batch_mul(t**2, jnp.ones_like(x)))  # noqa: E731
    sample = get_sampler("heun", sde, SHAPE, nfe=2 * n - 1, exponential=False, eps=0.002,
                         data_scale=1.0)
    x_T = jax.random.normal(jax.random.PRNGKey(1), SHAPE) * 80.0
    out, _, path = sample(jax.random.PRNGKey(2), score, x_init=x_T, return_path=True)
    denoiser = steps.edm_denoiser(sde, steps.data_prediction(sde, score))
    sig, x = np.asarray(sample.ts), x_T
    for i in range(n - 1):
        x = consistency_losses.ode_step(denoiser, x, jnp.full(SHAPE[:1], sig[i]),
                                        jnp.full(SHAPE[:1], sig[i + 1]), "heun")
        np.testing.assert_allclose(path[i + 1], x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, denoiser(x, jnp.full(SHAPE[:1], sig[-1])), rtol=1e-5)


@pytest.fixture
def plain_dpm():
    """A new sampler written from the steps alone: DPM-Solver++ at a fixed order, every step
    at that order once it has the history (no lower order at the end)."""

    @register_sampler("plain_dpm", merges=False, fields={"ts": None})
    def plain_dpm_sampler(sde, shape, *, nfe: int = 8, order: int = 2, ts=None,
                          eps: float = 1e-3, sharding=None):
        times = step_times("plain_dpm", sde, eps, ts, "vp_quadratic", nfe, min_steps=order)
        coeffs = steps.on_device(steps.exponential_coeffs(*schedule(sde, times), order))
        t_grid = jnp.asarray(times)

        def sample(rng, score_fn, project=None, *, x_init=None, return_path=False):
            x0_hat = steps.data_prediction(sde, score_fn)
            rng, _ = projection_steps(project, rng)
            x, _ = initial_state(sde, rng, shape, sharding, x_init)

            def step(carry, i):
                x, m1, m2 = carry
                m0 = x0_hat(x, full_t(t_grid[i], x))
                c = jax.tree.map(lambda v: v[i], coeffs)
                return (steps.exponential_step(x, m0, m1, m2, c), m0, m1), None

            zeros = jnp.zeros_like(x)
            (x, _, _), _ = jax.lax.scan(step, (x, zeros, zeros), jnp.arange(len(times) - 1))
            return with_path(x, jnp.asarray(len(times) - 1, jnp.int32), None, return_path)

        return sample

    yield plain_dpm_sampler
    del SAMPLERS["plain_dpm"]


@pytest.mark.parametrize("order", [2, 3])
def test_a_sampler_from_the_steps_matches_the_built_in_one(plain_dpm, order):
    score, rng = gaussian_score(0.7), jax.random.PRNGKey(3)
    new, _ = get_sampler("plain_dpm", VP, SHAPE, nfe=8, order=order)(rng, score)
    ref, _ = get_sampler("dpm_solver++", VP, SHAPE, nfe=8, order=order, data_scale=1.0,
                         lower_order_final=False)(rng, score)
    np.testing.assert_allclose(new, ref, rtol=1e-6, atol=1e-6)
