"""Moving digits: clips of scikit-learn's 8x8 digits moving on a small canvas, made on the fly.

The embedded video dataset (no download): clip i of a split is drawn from (seed, split, i)
alone, so the data is random-access, deterministic by seed and the same in every process.
Each clip holds `num_digits` digits on a `canvas` x `canvas` grey canvas (digits combine by
maximum), for `num_frames` frames. A digit starts at an integer position and moves by an
integer velocity (each component +-1 .. +-max_speed pixels per frame):

  'bounce'  deterministic: at a wall the position is reflected and that velocity component
            flips sign, so the past of a clip fixes its future
  'random'  stochastic: at a wall the digit bounces the same way, then that velocity
            component gets a new random speed (still away from the wall) and the other
            component a new random velocity

Train clips use the digits of the train part of the fixed digits split and test clips those
of its test part (score_sde.data.digits), so no test digit image is ever seen in training; the
test split always uses TEST_SEED, whatever the training seed.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

from score_sde.data.digits import DIGITS_LEVELS, digits_integer_split

MOTIONS = ("bounce", "random")
DIGIT_SIZE = 8
TEST_SEED = 20240  # the test split's clips never depend on config.seed / data.clip_seed
_SPLIT_STREAM = {"train": 0, "test": 1}


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """Integer top-left positions (num_frames, num_digits, 2) (row, column) of each digit,
    the velocity each frame was left with (same shape), and the digit images' indices."""

    positions: np.ndarray
    velocities: np.ndarray
    digits: np.ndarray


def _velocity(rng: np.random.Generator, max_speed: int, size: int) -> np.ndarray:
    """Integer components in +-[1, max_speed], random signs."""
    speed = rng.integers(1, max_speed + 1, size=size)
    return speed * rng.choice(np.array([-1, 1]), size=size)


def bounce_step(p: np.ndarray, v: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray,
                                                                   np.ndarray]:
    """One frame of motion inside [0, limit] per component: (position, velocity, hit), where a
    component that crosses a wall is reflected back inside and its velocity flips."""
    p = p + v
    low, high = p < 0, p > limit
    p = np.where(low, -p, np.where(high, 2 * limit - p, p))
    return p, np.where(low | high, -v, v), low | high


def trajectory(rng: np.random.Generator, num_frames: int, num_digits: int, canvas: int,
               motion: str, max_speed: int, num_images: int) -> Trajectory:
    """The digits and motion of one clip (module docstring), drawn from `rng`."""
    if motion not in MOTIONS:
        raise ValueError(f"config.data.motion={motion!r}; choose one of {MOTIONS}")
    limit = canvas - DIGIT_SIZE
    if limit < 1 or not 1 <= max_speed <= limit:
        raise ValueError(f"config.data.max_speed={max_speed} must be in 1..{max(limit, 1)} "
                         f"(canvas {canvas} minus the digit size {DIGIT_SIZE}); a canvas "
                         f"(config.data.image_size) above {DIGIT_SIZE} is needed")
    digits = rng.integers(0, num_images, size=num_digits)
    p = rng.integers(0, limit + 1, size=(num_digits, 2))
    v = _velocity(rng, max_speed, (num_digits, 2))
    positions, velocities = [p], [v]
    for _ in range(num_frames - 1):
        p, v, hit = bounce_step(p, v, limit)
        if motion == "random" and hit.any():
            fresh = _velocity(rng, max_speed, v.shape)
            away = np.where(hit, np.sign(v) * np.abs(fresh), fresh)  # keeps the bounce's sign
            v = np.where(hit.any(axis=1, keepdims=True), away, v)
        positions.append(p)
        velocities.append(v)
    return Trajectory(np.stack(positions), np.stack(velocities), digits)


def render(traj: Trajectory, images: np.ndarray, canvas: int) -> np.ndarray:
    """The clip (num_frames, canvas, canvas, 1) uint8 (grey levels of `images`, combined by
    maximum) of a trajectory over the digit images (N, 8, 8)."""
    frames = np.zeros((len(traj.positions), canvas, canvas), np.uint8)
    for f, pos in enumerate(traj.positions):
        for (row, col), d in zip(pos, traj.digits, strict=True):
            window = frames[f, row:row + DIGIT_SIZE, col:col + DIGIT_SIZE]
            np.maximum(window, images[d], out=window)
    return frames[..., None]


@functools.cache
def _split_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 8, 8) uint8 with 17 grey levels, labels (N,)) of the digits split part."""
    x_tr, y_tr, x_te, y_te = digits_integer_split()
    return (x_tr[..., 0], y_tr) if split == "train" else (x_te[..., 0], y_te)


@dataclasses.dataclass(frozen=True)
class MovingDigitsSource:
    """A split of moving digits as a random-access source of clips (module docstring):
    `source[i] -> {'image': uint8 (num_frames, canvas, canvas, 1), 'label': the first
    digit's class}`."""

    split: str
    num_clips: int
    num_frames: int = 8
    canvas: int = 16
    num_digits: int = 1
    motion: str = "bounce"
    max_speed: int = 2
    seed: int = 0
    levels: int = DIGITS_LEVELS
    has_labels: bool = True
    in_memory: bool = True  # made in this process: no worker processes

    def __len__(self) -> int:
        return self.num_clips

    def _rng(self, index: int) -> np.random.Generator:
        seed = TEST_SEED if self.split == "test" else self.seed
        return np.random.default_rng([seed, _SPLIT_STREAM[self.split], int(index)])

    def trajectory(self, index: int) -> Trajectory:
        """Positions, velocities and digit indices of clip `index`."""
        if not 0 <= index < self.num_clips:
            raise IndexError(f"clip {index} of a split of {self.num_clips}")
        images, _ = _split_digits(self.split)
        return trajectory(self._rng(index), self.num_frames, self.num_digits, self.canvas,
                          self.motion, self.max_speed, len(images))

    def digit_labels(self, index: int) -> np.ndarray:
        """The classes (num_digits,) of clip `index`'s digits."""
        return _split_digits(self.split)[1][self.trajectory(index).digits]

    def __getitem__(self, index: int) -> dict[str, Any]:
        images, labels = _split_digits(self.split)
        traj = self.trajectory(int(index))
        return {"image": render(traj, images, self.canvas),
                "label": np.int32(labels[traj.digits[0]])}


def moving_digits_source(config, split: str) -> MovingDigitsSource:
    """The moving digits of config.data: image_size (the canvas), num_frames, num_digits,
    motion, max_speed, train_clips / test_clips (clips per split) and clip_seed (train)."""
    d = config.data
    if int(d.get("num_digits", 1)) < 1:
        raise ValueError(f"config.data.num_digits={d.get('num_digits')}; give 1 or more")
    return MovingDigitsSource(
        split=split,
        num_clips=int(d.get("train_clips" if split == "train" else "test_clips",
                            20000 if split == "train" else 512)),
        num_frames=int(d.num_frames), canvas=int(d.image_size),
        num_digits=int(d.get("num_digits", 1)), motion=str(d.get("motion", "bounce")),
        max_speed=int(d.get("max_speed", 2)), seed=int(d.get("clip_seed", 0)))
