"""Frame masks (B, T), true on the frames that are given (clean) rather than generated.

Training draws a mix (MCVD, FDM): with probability p_unconditional nothing is given (this is
also classifier-free guidance's mask dropout), with p_past the first k frames
(k ~ U{1..max_past}), with p_past_future the first k and the last m (m ~ U{1..max_future});
at least one frame is always left to generate. Sampling takes any mask, named by a string:

  '' or 'none'          nothing given: unconditional generation
  'past:K'              the first K frames given: prediction
  'past_future:K,M'     the first K and the last M given: interpolation
  'frames:0,3,7'        the listed frames given
  '11000011'            one 0/1 per frame
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
MASK_FORMS = ("none", "past:K", "past_future:K,M", "frames:i,j,...", "a 0/1 string")


@dataclasses.dataclass(frozen=True)
class MaskMix:
    """The training distribution of masks (module docstring); config.video fields of the
    same names."""

    p_unconditional: float = 0.2
    p_past: float = 0.5
    p_past_future: float = 0.3
    max_past: int = 4
    max_future: int = 2

    def __post_init__(self):
        probs = (self.p_unconditional, self.p_past, self.p_past_future)
        if min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-6:
            raise ValueError(f"config.video.p_unconditional, p_past, p_past_future = {probs} "
                             "must be >= 0 and sum to 1")
        if self.max_past < 1 or self.max_future < 1:
            raise ValueError(f"config.video.max_past={self.max_past} and max_future="
                             f"{self.max_future} must be >= 1")

    @classmethod
    def from_config(cls, config) -> MaskMix:
        v = config.get("video", {})
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{n: type(getattr(cls, n))(v[n]) for n in names if n in v})

    def sample(self, rng: Array, batch: int, frames: int) -> Array:
        """(batch, frames) bool masks drawn from the mix (none given for a single frame)."""
        if frames < 2:
            return jnp.zeros((batch, frames), bool)
        kind_rng, past_rng, future_rng = jax.random.split(rng, 3)
        probs = jnp.asarray([self.p_unconditional, self.p_past, self.p_past_future])
        kind = jax.random.choice(kind_rng, 3, (batch,), p=probs)
        k = jax.random.randint(past_rng, (batch,), 1, min(self.max_past, frames - 1) + 1)
        m = jax.random.randint(future_rng, (batch,), 1, min(self.max_future, frames - 1) + 1)
        m = jnp.minimum(m, frames - 1 - k)  # leaves >= 1 frame to generate (0: past only)
        pos = jnp.arange(frames)[None, :]
        past = pos < k[:, None]
        future = pos >= (frames - m)[:, None]
        mask = jnp.where((kind == 2)[:, None], past | future, past)
        return jnp.where((kind == 0)[:, None], False, mask)


def parse_mask(spec: str, frames: int, field: str = "config.video.mask") -> np.ndarray:
    """The (frames,) bool mask named by `spec` (module docstring); one line for a mask of the
    wrong length, an unknown form, or one that leaves nothing to generate."""
    spec = str(spec or "none").strip().lower()
    if spec == "none":
        return np.zeros(frames, bool)
    try:
        mask = _parse(spec, frames)
    except ValueError as e:
        raise ValueError(f"{field}={spec!r}: {e}") from None
    if mask.all():
        raise ValueError(f"{field}={spec!r} gives all {frames} frames: nothing is left to "
                         "generate")
    return mask


def _parse(spec: str, frames: int) -> np.ndarray:
    if set(spec) <= {"0", "1"}:
        if len(spec) != frames:
            raise ValueError(f"a mask of {len(spec)} frames; the clips have {frames}")
        return np.array([c == "1" for c in spec])
    form, _, args = spec.partition(":")
    try:
        numbers = [int(a) for a in args.split(",") if a.strip()]
    except ValueError:
        numbers = None
    pos = np.arange(frames)
    if form == "past" and numbers and len(numbers) == 1:
        return _within(pos < numbers[0], numbers[0], frames)
    if form == "past_future" and numbers and len(numbers) == 2:
        k, m = numbers
        return _within((pos < k) | (pos >= frames - m), k + m, frames)
    if form == "frames" and numbers is not None:
        bad = [i for i in numbers if not 0 <= i < frames]
        if bad:
            raise ValueError(f"frames {bad} are outside 0..{frames - 1}")
        return np.isin(pos, numbers)
    raise ValueError(f"not a mask; give one of {MASK_FORMS}")


def _within(mask: np.ndarray, given: int, frames: int) -> np.ndarray:
    if not 0 <= given < frames:
        raise ValueError(f"{given} given frames; the clips have {frames}, so at most "
                         f"{frames - 1} can be given")
    return mask


def check_mask(mask, batch: int, frames: int, field: str = "the frame mask") -> np.ndarray:
    """A (frames,) or (batch, frames) mask as (batch, frames) bool; one line if its length is
    not the clips' number of frames."""
    mask = np.asarray(mask, bool)
    if mask.ndim == 1:
        mask = np.broadcast_to(mask, (batch, mask.shape[0]))
    if mask.ndim != 2 or mask.shape[1] != frames or mask.shape[0] != batch:
        raise ValueError(f"{field} has shape {mask.shape}; the clips need {frames} frames "
                         f"(a mask of shape ({frames},) or ({batch}, {frames}))")
    return mask
