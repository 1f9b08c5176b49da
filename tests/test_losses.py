"""DSM losses against their closed-form minimum on Gaussian data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from score_sde import losses, sde_lib

SDES = {
    "vp": sde_lib.VPSDE(0.1, 20.0, 1000),
    "subvp": sde_lib.subVPSDE(0.1, 20.0, 1000),
    "ve": sde_lib.VESDE(0.01, 50.0, 1000),
}
MU = np.array([1.0, -2.0, 0.5])
_A = np.array([[1.0, 0.3, 0.0], [0.2, 0.5, 0.1], [0.0, -0.4, 0.8]])
SIGMA = _A @ _A.T + 0.1 * np.eye(3)
EPS = 1e-5
N_SAMPLES = 20000


def _gaussian_score_fn(sde, mu, cov):
    """Exact score of p_t = N(alpha mu, alpha^2 cov + sigma^2 I)."""
    mu, cov = jnp.asarray(mu, jnp.float32), jnp.asarray(cov, jnp.float32)

    def score_fn(x, t):
        alpha, sigma = sde.marginal_coeffs(t)
        cov_t = alpha[:, None, None] ** 2 * cov + sigma[:, None, None] ** 2 * jnp.eye(len(mu))
        return -jnp.linalg.solve(cov_t, (x - alpha[:, None] * mu)[..., None])[..., 0]

    return score_fn


def _closed_form_minimum(sde, likelihood_weighting, reduce_mean):
    """E_t[d - sigma_t^2 tr(C_t^-1)] (times g^2 / sigma^2 with likelihood weighting).

    E|sigma s*(x_t) + z|^2 = d - sigma^2 E|s*|^2 because E[z | x_t] = -sigma s*(x_t), and for
    Gaussian p_t, E|s*|^2 = tr(C_t^-1) = sum_i 1 / (alpha^2 lambda_i + sigma^2).
    """
    lam = np.linalg.eigvalsh(SIGMA)

    def per_time(t):
        tt = jnp.asarray([t], jnp.float32)
        alpha, sigma = (float(v[0]) for v in sde.marginal_coeffs(tt))
        j = np.sum(alpha**2 * lam / (alpha**2 * lam + sigma**2))
        if likelihood_weighting:
            g = float(sde.sde(jnp.zeros((1, 1)), tt)[1][0])
            j *= g**2 / sigma**2
        return j / (len(lam) if reduce_mean else 1.0)

    value, _ = integrate.quad(per_time, EPS, sde.T, limit=500, epsabs=1e-5, epsrel=1e-7)
    return value / (sde.T - EPS)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.multivariate_normal(MU, SIGMA, size=N_SAMPLES), jnp.float32)


@pytest.mark.parametrize("name", SDES)
@pytest.mark.parametrize("likelihood_weighting,reduce_mean", [(False, False), (False, True),
                                                               (True, False)])
def test_dsm_loss_of_exact_score_is_closed_form_minimum(name, likelihood_weighting,
                                                        reduce_mean):
    sde = SDES[name]
    per_example = losses.dsm_losses(jax.random.PRNGKey(3), _gaussian_score_fn(sde, MU, SIGMA),
                                    _data(), sde, reduce_mean, likelihood_weighting, EPS)
    per_example = np.asarray(per_example, np.float64)
    mean, se = per_example.mean(), per_example.std() / np.sqrt(N_SAMPLES)
    expected = _closed_form_minimum(sde, likelihood_weighting, reduce_mean)
    # Monte-Carlo error only: 4 standard errors (false alarm rate ~6e-5).
    assert abs(mean - expected) < 4 * se, (mean, expected, se)

    # The check has power: with the same noise, a wrongly centred Gaussian's score is worse
    # (paired differences, whose Monte-Carlo error is far smaller than the losses' own).
    wrong = losses.dsm_losses(jax.random.PRNGKey(3), _gaussian_score_fn(sde, 0 * MU, SIGMA),
                              _data(), sde, reduce_mean, likelihood_weighting, EPS)
    diff = np.asarray(wrong, np.float64) - per_example
    assert diff.mean() > 10 * diff.std() / np.sqrt(N_SAMPLES)


def _optim_config(warmup=10, grad_clip=1.0, lr=0.1):
    import ml_collections
    return ml_collections.ConfigDict({"optim": dict(optimizer="Adam", lr=lr, beta1=0.9, eps=1e-8,
                                                    warmup=warmup, grad_clip=grad_clip,
                                                    weight_decay=0.0)})


def test_optimizer_warmup_and_clipping():
    """Adam's first step moves each coordinate by ~lr(step); clipping bounds the gradient norm."""
    params = {"w": jnp.zeros(4)}
    grads = {"w": jnp.array([3.0, -4.0, 0.0, 0.0])}  # global norm 5
    opt = losses.get_optimizer(_optim_config(warmup=10, lr=0.1))
    state = opt.init(params)
    for step in range(6):
        updates, state = opt.update(grads, state, params)
        # Adam's update is ~sign(g) * lr for a constant gradient; lr ramps linearly from 0.
        np.testing.assert_allclose(updates["w"][:2], [-0.1 * step / 10, 0.1 * step / 10],
                                   atol=1e-6)
    clip = losses.get_optimizer(_optim_config(warmup=0, grad_clip=1.0))
    sgd_like = clip.init(params)
    # The clipped gradient (norm 1) enters Adam's first moment: mu = (1 - b1) * g / 5.
    _, sgd_like = clip.update(grads, sgd_like, params)
    adam_state = sgd_like[1][0]
    np.testing.assert_allclose(adam_state.mu["w"][:2], [0.1 * 3 / 5, -0.1 * 4 / 5], rtol=1e-6)
    with pytest.raises(ValueError, match="config.optim.optimizer"):
        losses.get_optimizer(_bad_optimizer_config())


def _bad_optimizer_config():
    config = _optim_config()
    config.optim.optimizer = "SGD"
    return config


def test_ema_update():
    ema = losses.ema_update({"a": jnp.ones(2)}, {"a": jnp.zeros(2)}, 0.9)
    np.testing.assert_allclose(ema["a"], 0.9)


def test_ema_warmup_weighs_out_the_initialisation():
    # Constant rate r: after n steps toward a fixed target the initial value keeps weight r**n.
    # Warm-up rate min(r, (1 + k) / (10 + k)) at step k: the initial weight is the product
    # prod_k (1 + k) / (10 + k) = 9! n! / (n + 9)!, ~1e-24 after 3,000 steps instead of 0.05.
    assert losses.ema_decay(0.999, jnp.asarray(5)) == 0.999
    rates = [float(losses.ema_decay(0.999, jnp.asarray(k), warmup=True)) for k in range(3000)]
    np.testing.assert_allclose(rates[:3], [0.1, 2 / 11, 3 / 12], rtol=1e-6)
    assert max(rates) <= 0.999 and rates[-1] == pytest.approx(3000 / 3009, rel=1e-6)
    ema, weight_constant = {"a": jnp.ones(1)}, 0.999**3000
    for r in rates:
        ema = losses.ema_update(ema, {"a": jnp.zeros(1)}, r)
    assert float(ema["a"][0]) < 1e-20 and weight_constant > 0.04


def test_published_loss_values_unchanged():
    """DSM (sigma^2 and likelihood weighting), SMLD and DDPM losses equal the values recorded at
    main's code before the parameterisation object (tests/fixtures/record_loss_values.py)."""
    import json

    from tests.fixtures import record_loss_values as record

    expected = json.loads(record.FIXTURE.read_text())
    assert sorted(expected) == sorted(record.CASES)
    got = record.loss_values()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-6), name


def test_classifier_state_ema_has_its_own_buffers_and_the_shared_step():
    """The classifier's state comes from losses.new_train_state (EMA copied, so a jitted step
    may donate the state) and its step from losses.build_step_fn (EMA moves toward params)."""
    from configs.digits_classifier import get_config
    from score_sde import classifier_training as ct
    from score_sde.models import classifier as cls_models

    config = get_config()
    config.classifier.name, config.classifier.nf, config.classifier.num_classes = (
        "mlp_classifier", 8, 3)
    config.data.dim = 2
    config.classifier.ema_rate = 0.5
    config.optim.warmup = 0  # a first step that moves the parameters
    optimizer = losses.get_optimizer(config)
    state = ct.init_classifier_state(jax.random.PRNGKey(0), config, optimizer)
    for p, e in zip(jax.tree.leaves(state.params), jax.tree.leaves(state.ema_params),
                    strict=True):
        assert p is not e and p.unsafe_buffer_pointer() != e.unsafe_buffer_pointer()
    sde = sde_lib.VPSDE()
    step = jax.jit(ct.get_classifier_step_fn(config, sde, cls_models.get_classifier(config),
                                             optimizer), donate_argnums=0)
    batch = {"image": jnp.ones((4, 2)), "label": jnp.asarray([0, 1, 2, 0])}
    before = jax.tree.map(np.asarray, state)
    new, metrics = step(state, batch)
    assert set(metrics) == {"loss", "accuracy"} and int(new.step) == 1
    # EMA at rate 0.5: halfway between the old EMA (= old params) and the new params.
    for e0, e1, p1 in zip(jax.tree.leaves(before.ema_params), jax.tree.leaves(new.ema_params),
                          jax.tree.leaves(new.params), strict=True):
        np.testing.assert_allclose(e1, 0.5 * e0 + 0.5 * np.asarray(p1), rtol=1e-5, atol=1e-7)
    assert any(np.any(np.asarray(p) != b) for p, b in
               zip(jax.tree.leaves(new.params), jax.tree.leaves(before.params), strict=True))
