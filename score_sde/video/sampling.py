"""Conditional clip sampling of a trained network: what --mode predict / interpolate and the
video benchmark run.

`block_sampler` builds, once, the jitted `(rng, observed, mask) -> clips` of config.sampling's
sampler for n clips of the network's length: a mask-conditioned network
(config.model.mask_conditioning) samples through `masked_score_fn` with classifier-free
guidance weight config.video.guidance_scale; any other through its unconditional score with
reconstruction guidance of weight config.video.reconstruction_guidance (0: the given frames
only replace their noised selves, the "replacement" method). The given frames come back equal
to the observation.
"""

from __future__ import annotations

import jax

from score_sde import models, sde_lib
from score_sde.inference import model_score_fn
from score_sde.models import parameterization as param_lib
from score_sde.sampling import get_sampler_from_config
from score_sde.video import conditioning
from score_sde.video.rollout import BlockSampler

Array = jax.Array


def block_sampler(config, sde: sde_lib.SDE, eps: float, model, params, n: int) -> BlockSampler:
    """The jitted `sample_block(rng, observed (n, T, H, W, C), mask (n, T)) -> clips` of the
    module docstring (observed and clips in the model's range)."""
    sample = get_sampler_from_config(config, sde, models.input_shape(config, n), eps)
    video = config.get("video", {})
    masked = bool(config.model.get("mask_conditioning", False))
    param = param_lib.from_config(config, sde)

    def score_fn(observed, mask):
        if masked:
            return conditioning.masked_score_fn(sde, param, model, params, observed, mask,
                                                float(video.get("guidance_scale", 0.0)))
        base = model_score_fn(config, sde, model, params)
        weight = float(video.get("reconstruction_guidance", 0.0))
        if weight > 0:
            return conditioning.reconstruction_guided_score_fn(sde, base, observed, mask, weight)
        return conditioning.on_given_frames(sde, base, observed, mask)

    def run(rng, observed, mask):
        x, _ = sample(rng, score_fn(observed, mask))
        return conditioning.with_given_frames(x, observed, mask)

    return jax.jit(run)

