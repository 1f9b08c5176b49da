"""The masked denoising loss of a clip network (masked conditioning, MCVD / FDM).

Per clip a mask of given frames is drawn from the training mix (video.masks.MaskMix); all
frames are noised to x_t = alpha x + sigma z, the network sees the given frames clean (with
their indicator) in place of their x_t, and the parameterisation's weighted error
weight(t) |F - target|^2 is averaged over the frames to generate only. With
config.video.joint_image_frames = J > 0, J extra frames drawn from other clips of the batch are
appended to every clip as independent images (never given, attending only to themselves):
joint image-video training.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from score_sde.models.parameterization import Parameterization
from score_sde.sde_lib import batch_mul
from score_sde.video.masks import MaskMix

Array = jax.Array
# model_fn(x, labels, mask, observed, independent) -> output: the network with frame inputs
FrameModelFn = Callable[[Array, Array, Array, Array, Array | None], Array]


def trains_with_masks(config) -> bool:
    """Whether config trains with frame masks or independent frames (this module's loss)."""
    return bool(config.model.get("mask_conditioning", False)) or joint_image_frames(config) > 0


def joint_image_frames(config) -> int:
    frames = int(config.get("video", {}).get("joint_image_frames", 0) or 0)
    if frames < 0:
        raise ValueError(f"config.video.joint_image_frames={frames} must be >= 0")
    return frames


def frame_weights(mask: Array, shape: tuple[int, ...]) -> Array:
    """1 on the frames to generate, 0 on the given ones, broadcast to a clip batch `shape`."""
    keep = 1.0 - jnp.asarray(mask, jnp.float32)
    return keep.reshape(keep.shape + (1,) * (len(shape) - 2))


def masked_dsm_loss(param: Parameterization, model_fn: FrameModelFn, x: Array, mask: Array,
                    t: Array, noise: Array, weighting: str, reduce_mean: bool = True,
                    independent: Array | None = None) -> Array:
    """Per-clip loss (B,): weight(t) times the mean (reduce_mean) or sum of |F - target|^2
    over the frames to generate. x, noise (B, T, H, W, C); mask (B, T) true = given."""
    alpha, sigma = param.coeffs(t)
    x_t = batch_mul(alpha, x) + batch_mul(sigma, noise)
    out = param.network_output(lambda h, labels: model_fn(h, labels, mask, x, independent),
                               x_t, t)
    keep = frame_weights(mask, x.shape)
    err = jnp.square(out - param.target(x, noise, x_t, t)) * keep
    total = jnp.sum(err.reshape(x.shape[0], -1), axis=-1)
    if reduce_mean:
        per_frame = int(jnp.size(x[0, 0]))
        total = total / jnp.maximum(jnp.sum(keep.reshape(x.shape[0], -1), -1) * per_frame, 1.0)
    return total * param.loss_weight(t, weighting)


def add_independent_frames(rng: Array, x: Array, mask: Array, count: int
                           ) -> tuple[Array, Array, Array | None]:
    """(x, mask, independent) with `count` frames of random clips of the batch appended to
    every clip as independent, generated images; independent is None when count is 0."""
    b, frames = x.shape[:2]
    if count == 0:
        return x, mask, None
    clip_rng, frame_rng = jax.random.split(rng)
    clips = jax.random.randint(clip_rng, (b, count), 0, b)
    picks = jax.random.randint(frame_rng, (b, count), 0, frames)
    extra = x[clips, picks]  # (B, count, H, W, C)
    independent = jnp.concatenate([jnp.zeros((b, frames), bool), jnp.ones((b, count), bool)], 1)
    mask = jnp.concatenate([mask, jnp.zeros((b, count), bool)], axis=1)
    return jnp.concatenate([x, extra], axis=1), mask, independent


def get_masked_loss_fn(config, param: Parameterization, model, train: bool, weighting: str,
                       eps: float = 1e-5) -> Callable[[Array, dict, dict], Array]:
    """`loss_fn(rng, params, batch) -> scalar` of this module for a clip network: masks from
    config.video's mix (none given unless config.model.mask_conditioning), joint image frames
    from config.video.joint_image_frames."""
    conditioning = bool(config.model.get("mask_conditioning", False))
    mix, extra = MaskMix.from_config(config), joint_image_frames(config)
    reduce_mean = bool(config.training.reduce_mean)

    def loss_fn(rng, params, batch):
        x = batch["image"]
        if x.ndim != 5:
            raise ValueError(f"the masked loss takes clips (B, T, H, W, C); got {x.shape}")
        mask_rng, frame_rng, t_rng, z_rng, drop_rng = jax.random.split(rng, 5)
        mask = mix.sample(mask_rng, x.shape[0], x.shape[1]) if conditioning else \
            jnp.zeros(x.shape[:2], bool)
        x, mask, independent = add_independent_frames(frame_rng, x, mask, extra)
        rngs = {"dropout": drop_rng} if train else None

        def model_fn(h, labels, mask, observed, independent):
            frames = {"mask": mask, "observed": observed} if conditioning else {}
            if independent is not None:
                frames["independent"] = independent
            return model.apply({"params": params}, h, labels, train=train, rngs=rngs, **frames)

        t = param.sample_t(t_rng, x.shape[0], eps)
        noise = jax.random.normal(z_rng, x.shape)
        return jnp.mean(masked_dsm_loss(param, model_fn, x, mask, t, noise, weighting,
                                        reduce_mean, independent))

    return loss_fn
