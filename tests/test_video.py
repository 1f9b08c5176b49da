"""Clips (B, T, H, W, C) on the score stack: the space-time network's zero-initialised temporal
layers (an image model's exact output per frame), independent frames, the masked loss, the
conditional score functions, every sampler on clips, roll-out, the mask refusals, writers."""

from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import models, sde_lib
from score_sde.configs.video.moving_digits import get_config
from score_sde.models import parameterization as param_lib
from score_sde.models import video
from score_sde.sampling import SAMPLERS, get_sampler
from score_sde.video import clip_io, conditioning, loss, masks, rollout

FRAMES, SIZE = 3, 8


def tiny_config(image_model="small_unet", frames=FRAMES, **model):
    config = get_config()
    config.data.image_size, config.data.num_frames = SIZE, frames
    m = config.model
    m.image_model, m.nf, m.ch_mult, m.num_res_blocks, m.dropout = image_model, 8, (1, 2), 1, 0.0
    m.attn_resolutions, m.temporal_resolutions = (4,), (8, 4)
    if image_model == "ncsnpp":
        from score_sde.configs.video.default_video_configs import ddpmpp_64

        ddpmpp_64(config, channels=1, frames=frames)
        config.data.image_size, m.nf, m.ch_mult, m.num_res_blocks = SIZE, 8, (1, 2), 1
        m.attn_resolutions, m.temporal_resolutions, m.remat = (4,), (8, 4), False
    for k, v in model.items():
        m[k] = v
    return config


def _perturbed(params, seed, scale=0.05):
    """params plus small numpy noise (no JAX program to compile)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(
        np.asarray(p) + scale * rng.standard_normal(p.shape).astype(np.float32)), params)


def _filled(config, seed=0):
    """Parameters of config's network with random values (shapes from jax.eval_shape: no
    initialiser compiled), GroupNorm scales near 1."""
    shapes = jax.eval_shape(lambda k: models.init_model(k, config), jax.random.PRNGKey(0))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda path, s: jnp.asarray((jax.tree_util.keystr(path).endswith("['scale']"))
                                    + 0.1 * rng.standard_normal(s.shape).astype(np.float32)),
        shapes)


@pytest.fixture(scope="module")
def net():
    """A one-level mask-conditioned space-time network with non-zero temporal layers (quick
    to compile: every sampler runs it)."""
    config = tiny_config(ch_mult=(1,), attn_resolutions=(), temporal_resolutions=(8,))
    return config, models.get_model(config), _filled(config)


# Compiled without operator fusion: each op is its own kernel in both programs, so the image
# network's part computes the same numbers in each (XLA fuses two different programs
# differently, which moves the last bit).
UNFUSED = {"xla_disable_hlo_passes": "fusion"}


def _unfused(fn, *args):
    return jax.jit(fn).lower(*args).compile(compiler_options=UNFUSED)(*args)


ONE_LEVEL = dict(ch_mult=(1,), attn_resolutions=(8,), temporal_resolutions=(8,))


@pytest.mark.parametrize("image_model,fields", [
    ("small_unet", ONE_LEVEL),
    pytest.param("small_unet", {}, marks=pytest.mark.slow),
    pytest.param("ncsnpp", {}, marks=pytest.mark.slow)])
def test_image_weights_give_the_image_models_output_exactly(image_model, fields):
    config = tiny_config(image_model, **fields)
    image_cfg = video.image_config(config)
    vparams = jax.jit(lambda k: models.init_model(k, config))(jax.random.PRNGKey(0))
    # an image model's weights: the same tree (load_image_params checks it), other values
    iparams = _perturbed(vparams[video.IMAGE_PARAMS], 2)
    vparams = video.load_image_params(vparams, iparams)
    x = jax.random.normal(jax.random.PRNGKey(3), (2, FRAMES, SIZE, SIZE, 1))
    t = jnp.asarray([0.3, 0.8]) * 999
    mask = jnp.asarray([[True, False, False], [False, False, False]])  # with the indicator
    vmodel, imodel = models.get_model(config), models.get_model(image_cfg)
    out = _unfused(lambda p, x: vmodel.apply({"params": p}, x, t, mask=mask, observed=x),
                   vparams, x)
    ref = _unfused(lambda p, x: imodel.apply({"params": p}, x, jnp.repeat(t, FRAMES)),
                   iparams, x.reshape(-1, SIZE, SIZE, 1))
    np.testing.assert_array_equal(np.asarray(out).reshape(ref.shape), np.asarray(ref))
    assert models.count_params(vparams) > models.count_params(iparams)


def test_load_image_params_refuses_another_architecture(net):
    config, _, params = net
    other = video.image_config(tiny_config(nf=16))
    wrong = jax.eval_shape(lambda k: models.init_model(k, other), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"^the image parameters do not fit the video network: "
                                         r".* needs shape \(.*\), the image model's is shape"):
        video.load_image_params(params, wrong)


def test_temporal_attention_mixes_frames_except_independent_ones(net):
    config, model, params = net
    x = jax.random.normal(jax.random.PRNGKey(4), (1, FRAMES, SIZE, SIZE, 1))
    t = jnp.asarray([500.0])
    ind = jnp.asarray([[False, False, True]])
    apply = jax.jit(lambda x, i: model.apply({"params": params}, x, t, independent=i))
    x2 = x.at[:, 0].add(1.0)  # change frame 0 only
    a, b = np.asarray(apply(x, ind)), np.asarray(apply(x2, ind))
    assert np.abs(a[:, 1] - b[:, 1]).max() > 1e-4  # linked frame 1 sees frame 0
    np.testing.assert_array_equal(a[:, 2], b[:, 2])  # the independent frame does not


def test_relative_position_bias_is_per_distance():
    table = jnp.arange(6.0).reshape(3, 2)
    bias = video.relative_bias(table, 4, max_distance=1)
    dist = np.clip(np.arange(4)[None, :] - np.arange(4)[:, None], -1, 1) + 1
    np.testing.assert_array_equal(np.asarray(bias[1]), np.asarray(table)[dist, 1])


def test_the_masked_loss_ignores_the_given_frames(net):
    config, model, params = net
    sde, _ = sde_lib.get_sde(config)
    param = param_lib.from_config(config, sde)
    x = jax.random.normal(jax.random.PRNGKey(5), (2, FRAMES, SIZE, SIZE, 1))
    noise = jax.random.normal(jax.random.PRNGKey(6), x.shape)
    t = jnp.asarray([0.2, 0.7])
    mask = jnp.asarray([[True, False, False], [True, False, True]])

    def model_fn(h, labels, mask, observed, independent):
        return model.apply({"params": params}, h, labels, mask=mask, observed=observed)

    def total(noise, target_shift):  # the output minus a shift: d/d shift = d/d target
        fn = lambda h, labels, m, o, i: model_fn(h, labels, m, o, i) - target_shift
        return jnp.sum(loss.masked_dsm_loss(param, fn, x, mask, t, noise, "sigma2"))

    g_noise, g_target = jax.jit(jax.grad(total, argnums=(0, 1)))(noise, jnp.zeros_like(x))
    for g in (g_noise, g_target):
        g = np.asarray(g)
        assert np.all(g[np.asarray(mask)] == 0.0)  # exactly zero on the given frames
        assert np.all(np.abs(g[~np.asarray(mask)]).reshape(3, -1).max(axis=1) > 0)


def test_with_nothing_given_the_masked_loss_is_the_plain_dsm_loss(net):
    """Against the published DSM loss written out: VP, noise prediction, sigma^2 weighting."""
    config, model, params = net
    config = config.copy_and_resolve_references()
    config.training.sde, config.model.parameterization = "vpsde", "auto"
    sde, _ = sde_lib.get_sde(config)
    param = param_lib.from_config(config, sde)
    assert isinstance(param, param_lib.EpsilonPrediction)
    x = jax.random.normal(jax.random.PRNGKey(7), (2, FRAMES, SIZE, SIZE, 1))
    noise = jax.random.normal(jax.random.PRNGKey(8), x.shape)
    t = jnp.asarray([0.2, 0.7])
    fn = lambda h, labels, m, o, i: model.apply({"params": params}, h, labels)

    @jax.jit
    def both(x, noise):
        got = loss.masked_dsm_loss(param, fn, x, jnp.zeros((2, FRAMES), bool), t, noise,
                                   "sigma2")
        alpha, sigma = param.coeffs(t)
        x_t = sde_lib.batch_mul(alpha, x) + sde_lib.batch_mul(sigma, noise)
        out = model.apply({"params": params}, x_t, param.labels(t))
        return got, jnp.mean(jnp.square(out - noise), axis=(1, 2, 3, 4)) * param.loss_weight(
            t, "sigma2")

    got, want = both(x, noise)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5)


def test_training_masks_follow_the_mix():
    mix = masks.MaskMix(0.25, 0.5, 0.25, max_past=3, max_future=2)
    m = np.asarray(mix.sample(jax.random.PRNGKey(0), 4000, 6))
    given = m.sum(1)
    assert given.max() <= 5  # always a frame to generate
    assert abs((given == 0).mean() - 0.25) < 0.03
    past_only = (given > 0) & ~m[:, -1]
    assert abs(past_only.mean() - 0.5) < 0.04 and np.all(m[past_only].sum(1) <= 3)
    for row in m[past_only][:50]:  # a prefix
        np.testing.assert_array_equal(row, np.arange(6) < row.sum())
    with pytest.raises(ValueError, match="must be >= 0 and sum to 1"):
        masks.MaskMix(0.5, 0.5, 0.5)


@pytest.mark.parametrize("spec,message", [
    ("1100", r"config.video.mask='1100': a mask of 4 frames; the clips have 3"),
    ("past:3", r"3 given frames; the clips have 3, so at most 2 can be given"),
    ("frames:0,1,2", r"gives all 3 frames: nothing is left to generate"),
    ("frames:5", r"frames \[5\] are outside 0..2"),
    ("middle", r"not a mask; give one of"),
])
def test_bad_masks_are_refused_in_one_line(spec, message):
    with pytest.raises(ValueError, match=message):
        masks.parse_mask(spec, FRAMES)


def test_named_masks():
    np.testing.assert_array_equal(masks.parse_mask("past:1", 3), [1, 0, 0])
    np.testing.assert_array_equal(masks.parse_mask("past_future:1,1", 4), [1, 0, 0, 1])
    np.testing.assert_array_equal(masks.parse_mask("010", 3), [0, 1, 0])
    np.testing.assert_array_equal(masks.parse_mask("", 3), [0, 0, 0])
    with pytest.raises(ValueError, match=r"the frame mask has shape \(2, 4\); the clips need 3"):
        masks.check_mask(np.ones((2, 4)), 2, 3)


def test_the_network_refuses_bad_clips_and_masks(net):
    config, model, params = net
    x = jnp.zeros((2, FRAMES, SIZE, SIZE, 1))
    with pytest.raises(ValueError, match=r"the frame mask has shape \(2, 4\); the clips need "
                                         r"\(batch, frames\) = \(2, 3\)"):
        model.apply({"params": params}, x, jnp.ones(2), mask=jnp.ones((2, 4)), observed=x)
    with pytest.raises(ValueError, match=r"takes clips \(B, T, H, W, C\)"):
        model.apply({"params": params}, x[:, 0], jnp.ones(2))
    concat = tiny_config(name="video_concat")
    cparams = jax.eval_shape(lambda k: models.init_model(k, concat), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"a clip of 2 frame\(s\) is shorter than the "
                                         r"network's minimum of 3"):
        jax.eval_shape(lambda p: models.get_model(concat).apply({"params": p}, x[:, :2],
                                                                 jnp.ones(2)), cparams)


def _unit_gaussian_score(sde):
    """Exact score of x_t for data x0 ~ N(0, I) of any shape."""

    def score(x, t):
        alpha, sigma = sde.marginal_coeffs(t)
        return sde_lib.batch_mul(-1.0 / (alpha**2 + sigma**2), x)

    return score


SMALL = {"pc": dict(n_steps=2), "ode": dict(solver="euler", nfe=2), "ddim": dict(nfe=2),
         "heun": dict(nfe=3), "dpm_solver++": dict(nfe=3), "unipc": dict(nfe=2, order=1),
         "ipndm": dict(nfe=2, order=1), "learned": dict(nfe=2), "consistency": dict()}
# last step: x0_hat at eps
ENDS_ON_X0 = ("ddim", "heun", "dpm_solver++", "unipc", "ipndm", "learned")
NOISE_LEFT = 0.02  # 10 sigma(eps) of the EDM SDE: what is left of the noise at t = eps


def test_every_sampler_takes_clips_and_keeps_the_given_frames(net):
    """Clips through every sampler with an exact score (quick to compile) conditioned on given
    frames; the samplers that step to the data prediction return the given frames (up to the
    noise left at t = eps)."""
    config = net[0]
    sde, eps = sde_lib.get_sde(config)
    shape = (2, FRAMES, SIZE, SIZE, 1)
    observed = jax.random.uniform(jax.random.PRNGKey(9), shape, minval=-1, maxval=1)
    mask = jnp.asarray([[True, False, False], [True, False, True]])
    score = conditioning.on_given_frames(sde, _unit_gaussian_score(sde), observed, mask)
    assert set(SMALL) == set(SAMPLERS.names())
    given = np.asarray(mask)
    for name, options in SMALL.items():
        sample = get_sampler(name, sde, shape, eps=eps, **options)
        x, nfe = jax.jit(lambda r, s=sample: s(r, score))(jax.random.PRNGKey(0))
        x = np.asarray(x)
        assert x.shape == shape and np.isfinite(x).all(), name
        if name in ENDS_ON_X0:
            np.testing.assert_allclose(x[given], np.asarray(observed)[given],
                                       atol=NOISE_LEFT, err_msg=name)


def test_a_masked_network_samples_clips(net):
    config, model, params = net
    sde, eps = sde_lib.get_sde(config)
    param = param_lib.from_config(config, sde)
    shape = (2, FRAMES, SIZE, SIZE, 1)
    observed = jax.random.uniform(jax.random.PRNGKey(9), shape, minval=-1, maxval=1)
    mask = jnp.asarray([[True, False, False], [True, False, True]])
    score = conditioning.masked_score_fn(sde, param, model, params, observed, mask)
    sample = get_sampler("dpm_solver++", sde, shape, eps=eps, nfe=3)
    x, _ = jax.jit(lambda r: sample(r, score))(jax.random.PRNGKey(0))
    x = np.asarray(x)
    assert np.isfinite(x).all()
    np.testing.assert_allclose(x[np.asarray(mask)], np.asarray(observed)[np.asarray(mask)],
                               atol=NOISE_LEFT)


def _gaussian_clip_score(sde, rho):
    """Exact score of x_t for two perfectly known scalar frames x0 ~ N(0, [[1, rho], [rho, 1]])
    (shape (B, 2, 1, 1, 1))."""
    cov = jnp.asarray([[1.0, rho], [rho, 1.0]])

    def score(x, t):
        alpha, sigma = sde.marginal_coeffs(t)
        flat = x.reshape(x.shape[0], 2)
        prec = jnp.linalg.inv(alpha[:, None, None] ** 2 * cov + sigma[:, None, None] ** 2
                              * jnp.eye(2))
        return -jnp.einsum("bij,bj->bi", prec, flat).reshape(x.shape)

    return score


def test_reconstruction_guidance_follows_its_formula():
    sde = sde_lib.VPSDE()
    score = _gaussian_clip_score(sde, 0.8)
    x = jnp.asarray([[0.3, -0.5]]).reshape(1, 2, 1, 1, 1)
    obs = jnp.asarray([[1.0, 0.0]]).reshape(1, 2, 1, 1, 1)
    mask = jnp.asarray([[True, False]])
    t = jnp.asarray([0.4])
    w = 2.0
    got = conditioning.reconstruction_guided_score_fn(sde, score, obs, mask, w)(x, t)
    alpha, sigma = (float(a[0]) for a in sde.marginal_coeffs(t))
    cov = np.asarray([[1.0, 0.8], [0.8, 1.0]])
    a_mat = alpha * cov @ np.linalg.inv(alpha**2 * cov + sigma**2 * np.eye(2))  # x0_hat = A x
    xv = np.asarray([0.3, -0.5])
    resid = a_mat[0] @ xv - 1.0
    grad = 2 * resid * a_mat[0]  # d (x0_hat_0 - obs_0)^2 / dx
    s = np.asarray(score(x, t)).reshape(2)
    want_generated = s[1] - w * alpha**2 / (2 * sigma**2) * grad[1]
    want_given = -(0.3 - alpha * 1.0) / sigma**2
    np.testing.assert_allclose(np.asarray(got).reshape(2), [want_given, want_generated],
                               rtol=1e-4)


def test_cfg_over_the_mask_is_the_guided_combination(net):
    config, model, params = net
    sde, _ = sde_lib.get_sde(config)
    param = param_lib.from_config(config, sde)
    x = jax.random.normal(jax.random.PRNGKey(10), (1, FRAMES, SIZE, SIZE, 1))
    mask = jnp.asarray([[True, False, False]])
    t = jnp.asarray([0.5])
    @jax.jit
    def scores(x):
        parts = [conditioning.frame_model_score_fn(param, model, params, m, x)(x, t)
                 for m in (mask, None)]
        return parts, conditioning.masked_score_fn(sde, param, model, params, x, mask, 2.0)(x, t)

    parts, got = scores(x)
    np.testing.assert_allclose(np.asarray(got[:, 1:]),
                               np.asarray(3.0 * parts[0] - 2.0 * parts[1])[:, 1:], rtol=1e-5,
                               atol=1e-5)


def test_rollout_carries_the_last_frames_into_each_block():
    calls = []

    def sample_block(rng, observed, mask):  # generated frames: the block number
        calls.append((np.asarray(observed), np.asarray(mask)))
        return jnp.where(mask[..., None, None, None], observed, float(len(calls)))

    first = jnp.zeros((2, 4, 1, 1, 1))
    out = rollout.rollout(sample_block, jax.random.PRNGKey(0), 11, 2, first,
                          jnp.zeros((2, 4), bool))
    assert out.shape == (2, 11, 1, 1, 1) and len(calls) == rollout.num_blocks(11, 4, 2) == 5
    np.testing.assert_array_equal(out[0, :, 0, 0, 0], [1, 1, 1, 1, 2, 2, 3, 3, 4, 4, 5])
    np.testing.assert_array_equal(calls[2][0][0, :2, 0, 0, 0], [2, 2])
    with pytest.raises(ValueError, match=r"config.video.rollout_context=4 must be in 1..3"):
        rollout.num_blocks(9, 4, 4)


def test_clip_writers(tmp_path):
    from PIL import Image

    clips = np.random.default_rng(0).random((3, 5, 8, 8, 1))
    paths = clip_io.write_clips(tmp_path, "demo", clips, mask=np.zeros((3, 5), bool))
    gif = Image.open(io.BytesIO(paths["gif"].read_bytes()))
    assert gif.n_frames == 5
    assert np.load(paths["npz"])["clips"].shape == (3, 5, 8, 8, 1)
    from score_sde.logging_utils import image_grid
    from score_sde.sample_shards import png_bytes

    grid = image_grid(clip_io.as_uint8(clips))
    assert grid.shape == (2 + 3 * 10, 2 + 5 * 10, 1)  # one row per clip, frames across
    np.testing.assert_array_equal(grid[2:10, 12:20], clip_io.as_uint8(clips)[0, 1])
    strip = np.asarray(Image.open(io.BytesIO(png_bytes(clip_io.as_uint8(clips)[0]))))
    assert strip.shape == (8, 40)
