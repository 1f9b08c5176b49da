"""Block-autoregressive roll-out: clips longer than the network's T frames.

The first block is sampled as asked (unconditionally, or given frames of a real clip); each
further block is sampled given its first `context` frames, the last `context` frames generated
so far, and adds T - context new frames, until `total` frames exist.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
# sample_block(rng, observed (B, T, H, W, C), mask (B, T)) -> clips (B, T, H, W, C) with the
# given frames equal to the observation
BlockSampler = Callable[[Array, Array, Array], Array]


def num_blocks(total: int, frames: int, context: int) -> int:
    """Blocks of `frames` frames that roll out `total` frames with `context` carried over."""
    if total <= frames:
        return 1
    check_rollout(total, frames, context)
    return 1 + -(-(total - frames) // (frames - context))


def check_rollout(total: int, frames: int, context: int) -> None:
    if not 1 <= context < frames:
        raise ValueError(f"config.video.rollout_context={context} must be in 1..{frames - 1} "
                         f"(the network takes {frames} frames and needs one to generate)")
    if total < 1:
        raise ValueError(f"config.video.rollout_frames={total} must be positive")


def rollout(sample_block: BlockSampler, rng: Array, total: int, context: int,
            observed: Array, mask: Array) -> Array:
    """(B, total, H, W, C) clips: the first block from (observed, mask), then blocks given
    the last `context` frames (module docstring). observed (B, T, ...) and mask (B, T) fix
    the block shape."""
    frames = observed.shape[1]
    keys = jax.random.split(rng, num_blocks(total, frames, context))
    clips = np.asarray(sample_block(keys[0], observed, mask))
    carry_mask = jnp.broadcast_to(jnp.arange(frames) < context, mask.shape)
    for key in keys[1:]:
        block_obs = np.zeros(observed.shape, np.float32)
        block_obs[:, :context] = clips[:, -context:]
        block = np.asarray(sample_block(key, jnp.asarray(block_obs), carry_mask))
        clips = np.concatenate([clips, block[:, context:]], axis=1)
    return clips[:, :total]
