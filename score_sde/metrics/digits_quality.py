"""Digits sample quality against sample-size-matched floors, in two feature spaces.

`digits_quality(samples)` scores N generated digits against the held-out test split (360
images) and puts every metric beside its matched floor: the same metric for N real digits,
drawn without replacement from the train split (1,437 images, never the test split), averaged
over `floor_draws` draws. Every finite-sample metric depends on N (FD's bias falls like 1/N),
so only a floor measured at the same N makes "model / floor" a fair ratio; a model as good as
the data scores its floor in expectation.

Metrics (keys of `DigitsQuality.scores`):

- `fd_classifier`: Frechet distance in the shipped digits classifier's 128-d features (the
  "digits FD" space; here against the test split).
- `fd_randconv`: Frechet distance in a fixed random convolutional feature space
  (`random_features`, 128-d, scaled so the train split's mean squared feature is 1). Nothing
  was trained there, so it is independent of the classifier; it sees local stroke statistics
  (noise, blur, grey levels) that the classifier learnt to ignore.
- `kid_randconv`: KID (unbiased MMD^2, cubic polynomial kernel) in the random features, with
  its jackknife standard error; unbiased, so its floor is near 0 at every N.
- `precision_randconv` / `recall_randconv`: improved precision and recall (k-NN manifolds,
  k = 3) in the random features: fidelity and coverage apart.

Sizes: with P train images, a set of N <= P // 2 samples is scored whole. A larger one is
split into `sets` = ceil(N / (P // 2)) interleaved disjoint sets of N // sets samples (sample
i in set i % sets; a remainder under `sets` is left out) whose scores are averaged, and the
floor is drawn at that size: model and floor always see the same number of images. Floor draws
overlap (they come from one pool of P), so their spread is scaled by 1 / sqrt(1 - size / P),
the finite-population correction, to estimate the spread of a fresh real set of that size.

Caveat: the classifier was trained on the train split, so in its space the floor's images are
ones it has seen; the random space has no such asymmetry.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping

import numpy as np

from score_sde.metrics.digits_classifier import DIGITS_SHAPE, digits_feature_fn, digits_split
from score_sde.metrics.frechet import feature_statistics, frechet_distance_to
from score_sde.metrics.kid import mmd2_jackknife
from score_sde.metrics.precision_recall import precision_recall
from score_sde.metrics.random_features import random_conv_features

__all__ = [
    "METRICS",
    "MIN_SAMPLES",
    "DigitsQuality",
    "MatchedScore",
    "digits_quality",
    "digits_quality_features",
    "matched_quality",
    "matched_size",
]

METRICS = ("fd_classifier", "fd_randconv", "kid_randconv", "precision_randconv",
           "recall_randconv")
SPACES = ("classifier", "randconv")
MIN_SAMPLES = 4  # precision / recall's k-th neighbour (k = 3) and KID's jackknife need them


@dataclasses.dataclass(frozen=True)
class MatchedScore:
    """A metric of the samples beside its matched floor (mean and spread over real draws)."""

    value: float
    floor: float
    floor_std: float
    se: float | None = None  # the value's own standard error, where the metric gives one

    @property
    def ratio(self) -> float:
        """value / floor: 1 for a set as good as real digits (FD, precision, recall)."""
        return self.value / self.floor if self.floor else math.nan


@dataclasses.dataclass(frozen=True)
class DigitsQuality:
    """The report of `digits_quality`: scores keyed by METRICS and how they were matched."""

    num_samples: int  # N, the samples given
    matched_size: int  # images per scored set, and per floor draw
    sets: int  # disjoint sets of matched_size samples, scores averaged
    floor_draws: int
    k: int
    scores: Mapping[str, MatchedScore]

    def metrics(self) -> dict[str, float]:
        """Flat floats for metric files: <name>, <name>_floor, <name>_floor_std, kid's _se."""
        out: dict[str, float] = {}
        for name, s in self.scores.items():
            out.update({name: s.value, f"{name}_floor": s.floor, f"{name}_floor_std": s.floor_std})
            if s.se is not None:
                out[f"{name}_se"] = s.se
        out.update(matched_size=float(self.matched_size), matched_sets=float(self.sets))
        return out

    def summary(self) -> str:
        """One line: each metric beside the floor of as many real digits (mean +- spread; KID's
        standard error is in `metrics()`: the floor's spread is the yardstick for a model
        measured against the same reference images)."""
        s, n = self.scores, self.matched_size
        head = f"{self.num_samples} samples" + (
            f" (as {self.sets} sets of {n})" if self.sets > 1 else "")
        fd, rc, kid = s["fd_classifier"], s["fd_randconv"], s["kid_randconv"]
        p, r = s["precision_randconv"], s["recall_randconv"]
        return (f"{head}: digits FD {fd.value:.1f} ({fd.ratio:.2f}x the floor of {n} real "
                f"digits, {fd.floor:.1f} +- {fd.floor_std:.1f}); random-feature FD "
                f"{rc.value:.3f} ({rc.ratio:.2f}x, floor {rc.floor:.3f} +- {rc.floor_std:.3f}); "
                f"KID {kid.value:.4f} (floor {kid.floor:.4f} +- {kid.floor_std:.4f}); precision "
                f"{p.value:.2f} / recall {r.value:.2f} (real: {p.floor:.2f} / {r.floor:.2f})")


def _as_digits(images: np.ndarray, name: str) -> np.ndarray:
    """uint8 (0..255) or float images (N, 8, 8, 1) as float32 in [0, 1] (floats clipped)."""
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[1:] != DIGITS_SHAPE:
        raise ValueError(f"{name} must have shape (N, 8, 8, 1), got {x.shape}")
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    return np.clip(x, 0.0, 1.0)


@functools.lru_cache(maxsize=1)
def _randconv_scale() -> float:
    """RMS of the train split's random features: the fixed unit of the random space."""
    return float(np.sqrt(np.mean(random_conv_features(digits_split()[0]) ** 2)))


def digits_quality_features(images: np.ndarray) -> dict[str, np.ndarray]:
    """{'classifier': (N, 128), 'randconv': (N, 128)} float64 features of digits in [0, 1]."""
    x = _as_digits(images, "images")
    return {"classifier": digits_feature_fn()(x)["features"].astype(np.float64),
            "randconv": random_conv_features(x) / _randconv_scale()}


class _Reference:
    """The reference features and, per space, the FD to their Gaussian fit."""

    def __init__(self, features: dict[str, np.ndarray]):
        self.features = features
        self.fd = {space: frechet_distance_to(dict(zip(("mu", "sigma"), feature_statistics(f),
                                                       strict=True)))
                   for space, f in features.items()}


@functools.lru_cache(maxsize=1)
def _split_features() -> tuple[_Reference, dict[str, np.ndarray]]:
    """The test split as the reference, the train split's features as the floor pool."""
    x_train, _, x_test, _ = digits_split()
    return _Reference(digits_quality_features(x_test)), digits_quality_features(x_train)


def matched_size(num_samples: int, pool_size: int) -> tuple[int, int]:
    """(images per set, number of sets) for N samples against a floor pool of pool_size."""
    cap = pool_size // 2
    sets = max(1, math.ceil(num_samples / cap))
    return num_samples // sets, sets


def _score_sets(sets: list[dict[str, np.ndarray]], ref: _Reference,
                k: int) -> tuple[dict[str, float], float]:
    """Every metric of disjoint generated feature sets (averaged over the sets) against the
    reference; and KID's jackknife standard error."""
    out = {f"fd_{space}": float(np.mean([ref.fd[space](s[space]) for s in sets]))
           for space in SPACES}
    out["kid_randconv"], kid_se = mmd2_jackknife([s["randconv"] for s in sets],
                                                 ref.features["randconv"])
    pr = np.mean([precision_recall(ref.features["randconv"], s["randconv"], k) for s in sets],
                 axis=0)
    out["precision_randconv"], out["recall_randconv"] = float(pr[0]), float(pr[1])
    return out, kid_se


def _floors(ref: _Reference, pool: dict[str, np.ndarray], size: int, draws: int,
            k: int, seed: int) -> dict[str, tuple[float, float]]:
    """{metric: (mean, spread)} over `draws` draws of `size` pool rows without replacement;
    the spread is the draws' standard deviation over sqrt(1 - size / pool size)."""
    pool_size = len(pool["randconv"])
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        rows = rng.choice(pool_size, size, replace=False)
        values.append(_score_sets([{s: f[rows] for s, f in pool.items()}], ref, k)[0])
    correction = 1.0 / math.sqrt(1.0 - size / pool_size)
    return {name: (float(np.mean([v[name] for v in values])),
                   float(np.std([v[name] for v in values], ddof=1) * correction))
            for name in METRICS}


@functools.lru_cache(maxsize=16)
def _split_floors(size: int, draws: int, k: int, seed: int) -> dict[str, tuple[float, float]]:
    """The floors against the test split from train-split draws (cached: fixed per size)."""
    ref, pool = _split_features()
    return _floors(ref, pool, size, draws, k, seed)


def _report(features: dict[str, np.ndarray], ref: _Reference, pool_size: int,
            floors_at: Callable[[int], dict[str, tuple[float, float]]], floor_draws: int,
            k: int) -> DigitsQuality:
    """Split the generated features into matched sets, score them, put the floors beside."""
    if floor_draws < 2:
        raise ValueError(f"floor_draws must be >= 2 (the floor's spread needs two), got "
                         f"{floor_draws}")
    n = len(features["randconv"])
    size, sets = matched_size(n, pool_size)
    if size < max(k + 1, 3):
        raise ValueError(f"digits_quality needs sets of at least max(k + 1, 3) = "
                         f"{max(k + 1, 3)} samples (k={k}); got {n} samples in {sets} "
                         f"set(s) of {size}")
    chunks = [{s: f[i::sets][:size] for s, f in features.items()} for i in range(sets)]
    values, kid_se = _score_sets(chunks, ref, k)
    floors = floors_at(size)
    scores = {name: MatchedScore(values[name], *floors[name],
                                 se=kid_se if name == "kid_randconv" else None)
              for name in METRICS}
    return DigitsQuality(num_samples=n, matched_size=size, sets=sets, floor_draws=floor_draws,
                         k=k, scores=scores)


def _one_blas_thread(fn: Callable) -> Callable:
    """Run fn with one BLAS thread: its matrices are small (a few thousand rows at most), and
    on cores shared with other work, BLAS threads that wait for each other made it 10x slower."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapped


@_one_blas_thread
def matched_quality(
    features: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    pool: dict[str, np.ndarray],
    *,
    floor_draws: int = 25,
    k: int = 3,
    seed: int = 0,
) -> DigitsQuality:
    """The report from features ({'classifier': (N, 128), 'randconv': (N, 128)}, as
    `digits_quality_features` gives them) of the samples, the reference and the floor pool."""
    ref = _Reference(reference)
    return _report(features, ref, len(pool["randconv"]),
                   lambda size: _floors(ref, pool, size, floor_draws, k, seed), floor_draws, k)


@_one_blas_thread
def digits_quality(
    samples: np.ndarray,
    *,
    floor_draws: int = 25,
    k: int = 3,
    seed: int = 0,
    reference: np.ndarray | None = None,
    floor_pool: np.ndarray | None = None,
) -> DigitsQuality:
    """Score generated digits (N, 8, 8, 1) against real ones, each metric beside its floor.

    samples: uint8 (0..255, as `--mode sample` and `--mode eval` store them) or floats in
    [0, 1] (clipped). reference: the real images scored against (default the test split);
    floor_pool: the real images the floors are drawn from (default the train split); both
    uint8 or [0, 1] too. floor_draws (>= 2) draws per floor from a NumPy generator seeded by
    `seed`; k: the precision/recall neighbourhood. See the module docstring for the metrics.
    """
    features = digits_quality_features(_as_digits(samples, "samples"))
    if reference is None and floor_pool is None:
        ref, pool = _split_features()  # cached, and so are their floors
        return _report(features, ref, len(pool["randconv"]),
                       lambda size: _split_floors(size, floor_draws, k, seed), floor_draws, k)
    x_train, _, x_test, _ = digits_split()
    return matched_quality(
        features, digits_quality_features(x_test if reference is None else reference),
        digits_quality_features(x_train if floor_pool is None else floor_pool),
        floor_draws=floor_draws, k=k, seed=seed)
