"""Controllable generation checked in closed form (score_sde.controllable).

Gaussian and Gaussian-mixture data have exact perturbed scores and an exact noisy classifier
p(k | x_t) (score_sde.analytic), so guidance, inpainting, colorization and SDEdit are compared
with the exact conditional distributions. Bounds are ~4-5 standard errors of the sample size
(n = 4000: the standard error of a mean is sqrt(var / n) ~ 0.01 for var 0.3-0.5, of a covariance
entry ~ var sqrt(2 / n) ~ 0.01), plus the measured bias of the method where it has one. Measured
figures (CPU, seeds as written) are in the comments.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import controllable as C
from score_sde import losses, sde_lib
from score_sde.analytic import GaussianMixture
from score_sde.sampling import get_sampler

N_SAMPLES = 4000
SDE = sde_lib.VPSDE(N=500)


def _sample(sampler, score_fn, seed: int = 0) -> np.ndarray:
    x, _ = jax.jit(lambda r: sampler(r, score_fn))(jax.random.key(seed))
    return np.asarray(x, np.float64)


# ------------------------------------------------------------------ guidance (mixture data)

MEANS = np.array([[-1.5, 0.0], [1.5, 0.0], [0.0, 1.5]])
COVS = np.stack([np.diag([0.5, 0.3]), np.array([[0.4, 0.15], [0.15, 0.3]]), np.diag([0.3, 0.5])])
GM = GaussianMixture(np.array([0.3, 0.4, 0.3]), MEANS, COVS)
K = 0  # the requested class
COMPONENT = GaussianMixture.gaussian(MEANS[K], COVS[K])


def _nearest_fraction(x: np.ndarray) -> float:
    d = ((x[:, None, :] - MEANS[None]) ** 2).sum(-1)
    return float(np.mean(d.argmin(1) == K))


def _exact_classifier(x, t):
    return GM.log_posterior(SDE, x, t)


@pytest.fixture(scope="module")
def pc():
    return get_sampler("pc", SDE, (N_SAMPLES, 2), predictor="reverse_diffusion",
                       corrector="none")


@pytest.fixture(scope="module")
def cfg_samples(pc):
    cond, uncond = COMPONENT.perturbed_score_fn(SDE), GM.perturbed_score_fn(SDE)
    return {w: _sample(pc, C.cfg(cond, uncond, w)) for w in (0.0, 3.0)}


def test_classifier_guidance_is_the_conditional_score():
    # With the exact posterior as classifier, s + grad log p(k | x_t) = grad log p_t(x | k).
    x = jax.random.normal(jax.random.key(1), (64, 2)) * 2.0
    t = jax.random.uniform(jax.random.key(2), (64,), minval=1e-3, maxval=1.0)
    guided = C.classifier_guidance(GM.perturbed_score_fn(SDE), _exact_classifier, K, 1.0)
    np.testing.assert_allclose(guided(x, t), COMPONENT.perturbed_score_fn(SDE)(x, t),
                               rtol=1e-4, atol=1e-4)


def test_classifier_guidance_samples_the_chosen_component(pc):
    # Measured: mean error (0.007, -0.008), max |cov error| 0.007, nearest-to-k fraction 0.951
    # (exact samples of the component: 0.948).
    guided = C.classifier_guidance(GM.perturbed_score_fn(SDE), _exact_classifier, K, 1.0)
    x = _sample(pc, guided)
    np.testing.assert_allclose(x.mean(0), MEANS[K], atol=0.05)
    np.testing.assert_allclose(np.cov(x.T), COVS[K], atol=0.05)
    exact = np.asarray(COMPONENT.sample(jax.random.key(9), 200_000))
    assert abs(_nearest_fraction(x) - _nearest_fraction(exact)) < 0.015


def test_cfg_w0_is_conditional_and_w_sharpens(cfg_samples):
    # w = 0: mean error (0.007, -0.008), max |cov error| 0.007, fraction 0.951 (same as above).
    # w = 3: fraction 1.000, the mean moves 0.55 away from the other classes (to x = -2.05) and
    # the variance along the class axis drops from 0.50 to 0.36: p(x | k) p(k | x)^w sharpened.
    x0, x3 = cfg_samples[0.0], cfg_samples[3.0]
    np.testing.assert_allclose(x0.mean(0), MEANS[K], atol=0.05)
    np.testing.assert_allclose(np.cov(x0.T), COVS[K], atol=0.05)
    assert _nearest_fraction(x3) > _nearest_fraction(x0) + 0.03
    assert _nearest_fraction(x3) > 0.99
    assert x3.mean(0)[0] < MEANS[K, 0] - 0.3
    assert np.trace(np.cov(x3.T)) < np.trace(np.cov(x0.T)) - 0.1


def test_cfg_from_model_is_one_batched_call():
    calls = []

    def conditional(x, t, y):  # component scores for y < 3, the mixture for the null label 3
        calls.append(x.shape[0])
        per_class = jnp.stack([GaussianMixture.gaussian(MEANS[k], COVS[k]).perturbed_score_fn(
            SDE)(x, t) for k in range(3)] + [GM.perturbed_score_fn(SDE)(x, t)])
        return per_class[y, jnp.arange(x.shape[0])]

    x = jax.random.normal(jax.random.key(3), (16, 2))
    t = jnp.full((16,), 0.3)
    labels = jnp.arange(16) % 3
    guided = C.cfg_from_model(conditional, labels, null_label=3, w=2.0)(x, t)
    assert calls == [32]
    two_calls = C.cfg(lambda x, t: conditional(x, t, labels),
                      lambda x, t: conditional(x, t, jnp.full((16,), 3)), 2.0)(x, t)
    np.testing.assert_allclose(guided, two_calls, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------- inpainting (Gaussian data, D = 4)

COV4 = 0.5 * np.array([[1.0, 0.6, 0.3, 0.1], [0.6, 1.0, 0.5, 0.2],
                       [0.3, 0.5, 1.0, 0.4], [0.1, 0.2, 0.4, 1.0]])
MEAN4 = np.array([0.5, -0.3, 0.2, 0.1])
OBSERVED = np.array([0.9, 0.0, 0.0, -0.4])
MASK = np.array([1.0, 0.0, 0.0, 1.0])  # coordinates 0 and 3 are known


def _gaussian_conditional(mean, cov, known, value):
    """Mean and covariance of the unknown coordinates given x[known] = value[known]."""
    u = ~known
    gain = cov[np.ix_(u, known)] @ np.linalg.inv(cov[np.ix_(known, known)])
    return (mean[u] + gain @ (value[known] - mean[known]),
            cov[np.ix_(u, u)] - gain @ cov[np.ix_(known, u)])


def _inpaint(**options) -> np.ndarray:
    score_fn = GaussianMixture.gaussian(MEAN4, COV4).perturbed_score_fn(SDE)
    data = jnp.broadcast_to(jnp.asarray(OBSERVED, jnp.float32), (N_SAMPLES, 4))
    inpaint = C.get_inpainter(SDE, (N_SAMPLES, 4), **options)
    x, _ = jax.jit(lambda r: inpaint(r, score_fn, data, MASK))(jax.random.key(0))
    return np.asarray(x, np.float64)


def test_inpainting_matches_the_exact_conditional():
    # Published PC inpainter (reverse diffusion + Langevin, snr 0.16, 500 steps), exact score.
    # Measured: mean error (-0.008, -0.001) (standard errors 0.009, 0.010), max |cov error|
    # 0.027 on a conditional covariance [[0.31, 0.13], [0.13, 0.39]] (entry standard error
    # ~0.01); known coordinates exact to 5e-5 (they end at alpha(eps) x_known).
    x = _inpaint(sampler="pc", corrector="langevin")
    known = MASK > 0
    mean, cov = _gaussian_conditional(MEAN4, COV4, known, OBSERVED)
    np.testing.assert_allclose(x[:, known], np.broadcast_to(OBSERVED[known], (N_SAMPLES, 2)),
                               atol=1e-3)
    np.testing.assert_allclose(x[:, ~known].mean(0), mean, atol=0.04)
    np.testing.assert_allclose(np.cov(x[:, ~known].T), cov, atol=0.045)


def test_inpainting_without_corrector_is_the_biased_replacement():
    # Documents the published approximation: replacement alone plugs the known part into the
    # joint score, which misses grad_u log p(x_known_0 | x_t). Measured: mean error -0.057
    # (6.5 standard errors) on the first unknown coordinate, cov error +0.07; the Langevin
    # corrector above removes it.
    x = _inpaint(sampler="pc", corrector="none")
    mean, _ = _gaussian_conditional(MEAN4, COV4, MASK > 0, OBSERVED)
    assert np.max(np.abs(x[:, MASK == 0].mean(0) - mean)) > 0.035


@pytest.mark.parametrize("options", [
    dict(sampler="ddim", nfe=50), dict(sampler="ddim", nfe=50, eta=1.0),
    dict(sampler="heun", nfe=35), dict(sampler="dpm_solver++", nfe=20),
    pytest.param(dict(sampler="unipc", nfe=10), marks=pytest.mark.slow),
    pytest.param(dict(sampler="ipndm", nfe=10), marks=pytest.mark.slow)],
    ids=["ddim", "ddim_eta1", "heun", "dpm_solver++", "unipc", "ipndm"])
def test_inpainting_with_the_fast_samplers(options):
    # The same merge as the `project` of the corrector-free samplers. The known coordinates
    # are kept exactly; the unknown ones move from the marginal mean (-0.30, 0.20) towards the
    # conditional (-0.14, 0.12) but keep the replacement bias. Measured mean errors
    # (first coordinate, n = 4000): DDIM -0.085, DDIM eta=1 -0.066, Heun 35 NFE -0.092,
    # DPM-Solver++ 20 NFE -0.085, UniPC 10 NFE -0.081, iPNDM 10 NFE -0.085: 0.42-0.59 of the
    # marginal's distance 0.18 (bound 0.75).
    x = _inpaint(**options)
    known = MASK > 0
    mean, _ = _gaussian_conditional(MEAN4, COV4, known, OBSERVED)
    np.testing.assert_allclose(x[:, known], np.broadcast_to(OBSERVED[known], (N_SAMPLES, 2)),
                               atol=1e-3)
    error = np.linalg.norm(x[:, ~known].mean(0) - mean)
    assert error < 0.75 * np.linalg.norm(MEAN4[~known] - mean)


def test_merged_sampler_rejects_unknown_sampler_and_option():
    with pytest.raises(ValueError, match="sampler='ode'"):
        C.get_inpainter(SDE, (4, 4), sampler="ode")
    with pytest.raises(ValueError, match="no option"):
        C.get_inpainter(SDE, (4, 4), sampler="ddim", snr=0.1)


# ------------------------------------------------------------------------------ colorization


def test_color_basis_is_orthogonal_with_grey_first():
    m = C.color_basis(3)
    np.testing.assert_allclose(m.T @ m, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(m[:, 0], np.full(3, 1 / np.sqrt(3)), atol=1e-12)


def test_colorization_keeps_grey_and_matches_the_conditional():
    # One 1x1 RGB pixel from a correlated Gaussian; the grey level is observed. Measured (n=2000,
    # PC + Langevin, 250 steps): grey kept to 3e-5; colour-coordinate mean error (0.015, 0.009),
    # max |cov error| 0.019 on a conditional covariance [[0.18, 0.02], [0.02, 0.32]] (standard
    # errors ~0.012 for the mean, ~0.01 for the covariance).
    n = 2000
    sde = sde_lib.VPSDE(N=250)
    mean = np.array([0.3, -0.1, 0.2])
    cov = 0.4 * np.array([[1.0, 0.5, 0.2], [0.5, 1.0, 0.4], [0.2, 0.4, 1.0]])
    score_fn = GaussianMixture.gaussian(mean, cov, (1, 1, 3)).perturbed_score_fn(sde)
    grey = np.full((n, 1, 1, 1), 0.5, np.float32)
    colorize = C.get_colorizer(sde, (n, 1, 1, 3), corrector="langevin")
    x, _ = jax.jit(lambda r: colorize(r, score_fn, grey))(jax.random.key(0))
    x = np.asarray(x, np.float64).reshape(n, 3)
    np.testing.assert_allclose(x.mean(-1), 0.5, atol=1e-4)
    m = C.color_basis(3)  # in decoupled coordinates y = x @ m, y_0 = sqrt(3) grey is known
    known = np.array([True, False, False])
    c_mean, c_cov = _gaussian_conditional(m.T @ mean, m.T @ cov @ m, known,
                                          np.array([0.5 * np.sqrt(3), 0.0, 0.0]))
    y = x @ m
    np.testing.assert_allclose(y[:, 1:].mean(0), c_mean, atol=0.05)
    np.testing.assert_allclose(np.cov(y[:, 1:].T), c_cov, atol=0.04)


# ------------------------------------------------------------------------------------ SDEdit

MEAN3 = np.array([1.0, -0.5, 0.0])
COV3 = np.array([[0.6, 0.2, 0.0], [0.2, 0.4, 0.1], [0.0, 0.1, 0.3]])
GAUSS3 = GaussianMixture.gaussian(MEAN3, COV3)


def test_sdedit_small_t0_returns_the_input():
    # DDIM on its 100-step grid, the steps below t0 (10 at t0 = 0.1, one at 0.01 and 0.002).
    # Measured RMS change of the guide: t0 = 0.1 -> 0.364, 0.01 -> 0.047, 0.002 -> 0.016, i.e.
    # 1.05-1.13 sigma(t0) (sigma = 0.322, 0.045, 0.015): the edit shrinks to nothing with the
    # noise level; t0 <= eps returns the guide exactly.
    guide = jax.random.normal(jax.random.key(4), (256, 3))
    score_fn = GAUSS3.perturbed_score_fn(SDE)
    rms = []
    for t0 in (0.1, 0.01, 0.002):
        x = _sample(C.sdedit("ddim", SDE, guide, t0, nfe=100), score_fn)
        rms.append(float(np.sqrt(np.mean((x - np.asarray(guide)) ** 2))))
        sigma = float(SDE.marginal_coeffs(jnp.asarray([t0]))[1][0])
        assert rms[-1] < 1.3 * sigma
    assert rms[0] > rms[1] > rms[2]
    same, nfe = C.sdedit("pc", SDE, guide, 1e-3)(jax.random.key(0), score_fn)
    assert int(nfe) == 0 and np.array_equal(np.asarray(same), np.asarray(guide))


def test_sdedit_at_T_is_unconditional_sampling():
    # Guides far from the data (all 3.0) are forgotten at t0 = T (alpha_T = 0.0066). Measured
    # (PC reverse diffusion, 500 steps): mean error <= 0.02, max |cov error| 0.015.
    guide = jnp.full((N_SAMPLES, 3), 3.0)
    x = _sample(C.sdedit("pc", SDE, guide, SDE.T, predictor="reverse_diffusion"),
                GAUSS3.perturbed_score_fn(SDE))
    np.testing.assert_allclose(x.mean(0), MEAN3, atol=0.05)
    np.testing.assert_allclose(np.cov(x.T), COV3, atol=0.04)


def test_sdedit_rejects_t0_outside_the_interval():
    with pytest.raises(ValueError, match="t0"):
        C.sdedit("pc", SDE, jnp.zeros((2, 3)), 1.5)


# ------------------------------------------------------------- noise-conditional classifiers


def _classifier_config(name: str, **data):
    from configs.digits_classifier import get_config

    config = get_config()
    config.classifier.name = name
    config.classifier.nf = 16
    config.classifier.num_classes = 3
    config.data.update(data)
    config.optim.lr = 3e-3
    config.optim.warmup = 0
    return config


def test_wrn_classifier_shapes_and_per_example_independence():
    from score_sde.models import classifier as cls_models

    config = _classifier_config("wrn_classifier")
    model = cls_models.get_classifier(config)
    params = jax.jit(lambda r: cls_models.init_classifier(r, config))(jax.random.key(0))
    fn = jax.jit(cls_models.get_classifier_fn(SDE, model, params))
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
    t = jnp.linspace(0.1, 1.0, 4)
    logits = fn(x, t)
    assert logits.shape == (4, 3)
    other = x.at[1:].set(jax.random.normal(jax.random.key(2), (3, 8, 8, 1)))
    np.testing.assert_allclose(fn(other, t)[0], logits[0], rtol=1e-5, atol=1e-5)


def test_trained_mlp_classifier_approaches_the_exact_posterior():
    # An MLP classifier trained 400 steps (batch 256) on the 3-class mixture above, on noisy
    # x_t, t ~ U(eps, 1). Measured: mean |p_learned(k | x_t) - p_exact(k | x_t)| = 0.03 on
    # fresh noisy samples (0.17 at initialisation).
    from score_sde import classifier_training as ct
    from score_sde.models import classifier as cls_models

    config = _classifier_config("mlp_classifier", dim=2)
    config.classifier.nf = 64
    config.classifier.num_res_blocks = 2
    model = cls_models.get_classifier(config)
    optimizer = losses.get_optimizer(config)
    state = ct.init_classifier_state(jax.random.key(0), config, optimizer)
    step = ct.get_classifier_step_fn(config, SDE, model, optimizer)
    gm_k = [GaussianMixture.gaussian(MEANS[k], COVS[k]) for k in range(3)]

    def batch(rng):
        y = jax.random.categorical(rng, jnp.log(jnp.asarray(GM.weights, jnp.float32)),
                                   shape=(256,))
        xs = jnp.stack([g.sample(jax.random.fold_in(rng, k), 256) for k, g in enumerate(gm_k)])
        return {"image": xs[y, jnp.arange(256)], "label": y}

    def error(params, rng):
        b = batch(rng)
        t = jax.random.uniform(jax.random.fold_in(rng, 9), (256,), minval=1e-3, maxval=1.0)
        mean, std = SDE.marginal_prob(b["image"], t)
        x_t = mean + std[:, None] * jax.random.normal(jax.random.fold_in(rng, 8), mean.shape)
        learned = jax.nn.softmax(cls_models.get_classifier_fn(SDE, model, params)(x_t, t))
        return jnp.mean(jnp.abs(learned - jnp.exp(GM.log_posterior(SDE, x_t, t))))

    @jax.jit
    def train(state):
        def body(state, i):
            return step(state, batch(jax.random.fold_in(jax.random.key(1), i)))[0], None

        return jax.lax.scan(body, state, jnp.arange(400))[0]

    before = float(error(state.params, jax.random.key(5)))
    state = train(state)
    after = float(error(state.params, jax.random.key(5)))
    print(f"classifier posterior error: {before:.3f} -> {after:.3f}")
    assert after < 0.06 and after < before / 4, (before, after)


# ------------------------------------------------------------------------ CLI input helpers


def test_editing_inputs_masks_and_errors(tmp_path):
    from PIL import Image

    from configs.digits import get_config
    from score_sde import editing_modes as E

    config = get_config()
    images, labels = E.load_images(config, None, n=4)
    assert images.shape == (4, 8, 8, 1) and labels.shape == (4,) and labels.min() >= 0
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "a.png")
    np.savez(tmp_path / "b.npz", images=np.zeros((3, 8, 8), np.float32))
    assert E.load_images(config, str(tmp_path / "a.png"))[0].max() == 1.0
    assert E.load_images(config, str(tmp_path / "b.npz"))[0].shape == (3, 8, 8, 1)
    m = E.load_mask("right_half", (2, 8, 8, 1))
    assert m.shape == (2, 8, 8, 1) and m[:, :, :4].all() and not m[:, :, 4:].any()
    Image.fromarray(np.tile(np.array([0, 255], np.uint8), (8, 4))).save(tmp_path / "m.png")
    assert E.load_mask(str(tmp_path / "m.png"), (2, 8, 8, 1)).mean() == 0.5
    with pytest.raises(ValueError, match="mask="):
        E.load_mask("diagonal", (2, 8, 8, 1))
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match="image_size"):
        E.load_images(config, str(tmp_path / "big.png"))
