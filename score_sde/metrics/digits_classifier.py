"""Offline "digits FD": a small classifier of scikit-learn's 8x8 digits and its feature space.

The classifier (three convolutions and two dense layers, ~90k parameters, shipped as
`digits_classifier.msgpack`) is trained by `scripts/train_digits_classifier.py` on the split
returned by `digits_split()`. Its 128-d penultimate activations play the role Inception's pool3
plays for FID: `digits_fd(samples)` is the Frechet distance between samples and the training
split in that space. Images are NHWC float in [0, 1] of shape (N, 8, 8, 1), i.e. the raw 0..16
pixel values divided by 16.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from score_sde import storage
from score_sde.data.digits import SPLIT_SEED, TEST_SIZE, digits_split  # noqa: F401
from score_sde.metrics.frechet import feature_statistics, frechet_distance_from_stats

__all__ = [
    "DEFAULT_WEIGHTS",
    "DIGITS_SHAPE",
    "DigitsClassifier",
    "digits_accuracy",
    "digits_fd",
    "digits_feature_fn",
    "digits_reference_statistics",
    "digits_split",
    "load_digits_params",
    "save_digits_params",
]

DEFAULT_WEIGHTS = Path(__file__).with_name("digits_classifier.msgpack")
DIGITS_SHAPE = (8, 8, 1)


class DigitsClassifier(nn.Module):
    """Conv(32) -> Conv(64, /2) -> Conv(64, /2) -> Dense(128) [features] -> Dense(10) [logits]."""

    num_classes: int = 10
    feature_dim: int = 128

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        if x.shape[1:] != DIGITS_SHAPE:
            raise ValueError(f"digits images must have shape (N, 8, 8, 1), got {x.shape}")
        x = 2.0 * x - 1.0
        x = nn.relu(nn.Conv(32, (3, 3), name="conv1")(x))
        x = nn.relu(nn.Conv(64, (3, 3), strides=2, name="conv2")(x))
        x = nn.relu(nn.Conv(64, (3, 3), strides=2, name="conv3")(x))
        x = x.reshape(x.shape[0], -1)
        features = nn.relu(nn.Dense(self.feature_dim, name="dense1")(x))
        logits = nn.Dense(self.num_classes, name="logits")(features)
        return {"features": features, "logits": logits}


def save_digits_params(path: str | Path, params) -> None:
    """Write classifier params with flax's msgpack serialization."""
    storage.write_bytes(path, serialization.msgpack_serialize(jax.device_get(params)))


def load_digits_params(path: str | Path | None = None) -> dict:
    """Load classifier params (default: the shipped `digits_classifier.msgpack`)."""
    path = storage.path(path if path is not None else DEFAULT_WEIGHTS)
    if not path.exists():
        raise FileNotFoundError(
            f"digits classifier weights not found at {path}; "
            "train them with `python scripts/train_digits_classifier.py`"
        )
    params = serialization.msgpack_restore(path.read_bytes())
    template = jax.eval_shape(
        DigitsClassifier().init, jax.random.key(0), jnp.zeros((1, *DIGITS_SHAPE))
    )["params"]
    got = jax.tree_util.tree_map(np.shape, params)
    want = jax.tree_util.tree_map(lambda s: s.shape, template)
    if got != want:
        raise ValueError(f"{path} does not hold DigitsClassifier params: {got} != {want}")
    return params


@functools.lru_cache(maxsize=4)
def _cached_apply(path: str | None) -> Callable[[jax.Array], dict[str, jax.Array]]:
    params = load_digits_params(path)
    model = DigitsClassifier()
    return jax.jit(lambda x: model.apply({"params": params}, x))


def digits_feature_fn(
    weights: str | Path | None = None,
) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """Jitted `fn(images (N, 8, 8, 1) in [0, 1]) -> {'features': (N, 128), 'logits': (N, 10)}`."""
    apply = _cached_apply(str(weights) if weights is not None else None)

    def fn(images: np.ndarray) -> dict[str, np.ndarray]:
        out = apply(jnp.asarray(images, jnp.float32))
        return {k: np.asarray(v) for k, v in out.items()}

    return fn


def digits_accuracy(
    images: np.ndarray, labels: np.ndarray, weights: str | Path | None = None
) -> float:
    """Top-1 accuracy of the classifier on labelled images."""
    logits = digits_feature_fn(weights)(images)["logits"]
    return float(np.mean(np.argmax(logits, -1) == np.asarray(labels)))


@functools.lru_cache(maxsize=4)
def _reference_statistics(split: str, weights: str | None) -> dict[str, np.ndarray]:
    x_tr, _, x_te, _ = digits_split()
    images = {"train": x_tr, "test": x_te}[split]
    feats = digits_feature_fn(weights)(images)["features"].astype(np.float64)
    mu, sigma = feature_statistics(feats)
    return {"mu": mu, "sigma": sigma, "features": feats}


def digits_reference_statistics(
    split: str = "train", weights: str | Path | None = None
) -> dict[str, np.ndarray]:
    """Feature statistics {'mu', 'sigma', 'features'} of a split ('train' or 'test'), cached."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    stats = _reference_statistics(split, str(weights) if weights is not None else None)
    return {k: v.copy() for k, v in stats.items()}


def digits_fd(
    samples: np.ndarray, ref_stats: dict | None = None, weights: str | Path | None = None
) -> float:
    """Frechet distance of samples (N, 8, 8, 1) in [0, 1] to the digits train split (default).

    Samples are clipped to [0, 1]. Its floor, the train-vs-test FD, is
    `digits_fd(digits_split()[2])`.
    """
    samples = np.clip(np.asarray(samples, np.float32), 0.0, 1.0)
    ref = ref_stats if ref_stats is not None else digits_reference_statistics("train", weights)
    mu, sigma = feature_statistics(digits_feature_fn(weights)(samples)["features"])
    return frechet_distance_from_stats({"mu": mu, "sigma": sigma}, ref)
