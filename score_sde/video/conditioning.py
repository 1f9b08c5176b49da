"""Score functions of clips conditioned on given frames, for every sampler.

A mask (B, T) marks the given frames and `observed` (B, T, H, W, C) holds them (any values
elsewhere). Each function here returns a plain `score_fn(x, t)` that closes over them, so
every sampler, guidance transform and grid runs conditional generation unchanged:

  masked_score_fn   a network trained with masks (config.model.mask_conditioning): it sees
                    the given frames clean, with their indicator; with guidance_scale w,
                    classifier-free guidance over the mask, (1 + w) s(x | given) - w s(x)
                    (the unconditional score is the network with nothing given)
  reconstruction_guided_score_fn   any (unconditional) score function, steered to the given
                    frames by reconstruction guidance (Ho et al. 2022, eq. 7): the data
                    prediction of the generated frames moves by -(w_r alpha / 2) times the
                    gradient of |x_given - x0_hat_given|^2 with respect to them

On the given frames all of them return the score of the noised observation itself,
-(x - alpha x_obs) / sigma^2 (its data prediction is x_obs exactly), so the sampler carries
them to the observation; `with_given_frames` puts the observation in exactly at the end.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from score_sde.models.parameterization import Parameterization
from score_sde.sampling.steps import data_prediction
from score_sde.sde_lib import SDE, batch_mul
from score_sde.video.loss import frame_weights

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]


def _given(mask: Array, x: Array) -> Array:
    """The mask as a bool array that broadcasts over a clip batch like x."""
    return frame_weights(mask, x.shape) < 0.5


def observation_score(sde: SDE, observed: Array) -> ScoreFn:
    """The score of x_t given x_0 = observed: -(x - alpha observed) / sigma^2."""

    def score(x: Array, t: Array) -> Array:
        alpha, sigma = sde.marginal_coeffs(t)
        return batch_mul(-1.0 / sigma**2, x - batch_mul(alpha, observed))

    return score


def on_given_frames(sde: SDE, score_fn: ScoreFn, observed: Array, mask: Array) -> ScoreFn:
    """score_fn on the frames to generate, the observation's own score on the given ones."""
    given = observation_score(sde, observed)

    def score(x: Array, t: Array) -> Array:
        return jnp.where(_given(mask, x), given(x, t), score_fn(x, t))

    return score


def frame_model_score_fn(param: Parameterization, model, params, mask: Array | None,
                         observed: Array | None) -> ScoreFn:
    """The network's score with these given frames (None: nothing given) on every frame."""
    frames = {} if mask is None else {"mask": mask, "observed": observed}

    def model_fn(x, labels):
        return model.apply({"params": params}, x, labels, train=False, **frames)

    def score(x: Array, t: Array) -> Array:
        return param.score(param.network_output(model_fn, x, t), x, t)

    return score


def masked_score_fn(sde: SDE, param: Parameterization, model, params, observed: Array,
                    mask: Array, guidance_scale: float = 0.0) -> ScoreFn:
    """`score_fn(x, t)` of a mask-conditioned network given the frames `mask` selects of
    `observed`, with classifier-free guidance of weight guidance_scale over the mask."""
    cond = frame_model_score_fn(param, model, params, mask, observed)
    w = float(guidance_scale)
    if w != 0.0:
        uncond = frame_model_score_fn(param, model, params, None, None)
        plain = cond

        def cond(x: Array, t: Array) -> Array:
            return (1.0 + w) * plain(x, t) - w * uncond(x, t)

    return on_given_frames(sde, cond, observed, mask)


def reconstruction_guided_score_fn(sde: SDE, score_fn: ScoreFn, observed: Array, mask: Array,
                                   weight: float) -> ScoreFn:
    """Reconstruction guidance (module docstring) of an unconditional `score_fn`: on the
    frames to generate, score - weight alpha^2 / (2 sigma^2) grad |x_obs - x0_hat|^2_given."""
    x0_hat = data_prediction(sde, score_fn)

    def guided(x: Array, t: Array) -> Array:
        alpha, sigma = sde.marginal_coeffs(t)
        keep = _given(mask, x).astype(x.dtype)
        x0, pull = jax.vjp(lambda z: x0_hat(z, t), x)
        grad = pull(2.0 * keep * (x0 - observed))[0]  # d |given part of x0 - obs|^2 / dx
        score = batch_mul(1.0 / sigma**2, batch_mul(alpha, x0) - x)  # Tweedie inverted
        return score - batch_mul(weight * alpha**2 / (2.0 * sigma**2), grad)

    return on_given_frames(sde, guided, observed, mask)


def with_given_frames(x: Array, observed: Array, mask: Array) -> Array:
    """The sampled clips with the given frames set to the observation exactly."""
    return jnp.where(_given(mask, x), observed, x)
