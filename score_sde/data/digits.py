"""scikit-learn's 8x8 digits, the embedded dataset, and its one fixed train/test split.

The split (80/20, stratified by label, random_state=0: 1437 train / 360 test images) is written
here once. The training data (`digits_source`) and the digits metric
(`score_sde.metrics.digits_classifier`, whose classifier was trained on the train part) both
read it, so generated digits are always compared with the images the model trained on. This
module imports nothing of score_sde above the data sources, so the metrics can import it.
"""

from __future__ import annotations

import functools

import numpy as np

from score_sde.data.sources import ArraySource

TEST_SIZE = 0.2
SPLIT_SEED = 0
DIGITS_LEVELS = 17  # grey levels 0..16 of the stored integers


def digits_integer_split(test_size: float = TEST_SIZE, random_state: int = SPLIT_SEED
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The stratified split as stored: (x_train, y_train, x_test, y_test), images uint8
    (N, 8, 8, 1) with grey levels 0..16 and int32 labels (N,)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = data.images.astype(np.uint8)[..., None]
    y = data.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_size, random_state=random_state, stratify=y)
    return x_tr, y_tr, x_te, y_te


def digits_split(test_size: float = TEST_SIZE, random_state: int = SPLIT_SEED
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed, stratified train/test split of sklearn's digits used by the digits metric.

    Returns (x_train, y_train, x_test, y_test): images (N, 8, 8, 1) float32 in [0, 1] (pixel/16)
    and int32 labels. Defaults (test_size=0.2, random_state=0) give 1437 train / 360 test images.
    """
    x_tr, y_tr, x_te, y_te = digits_integer_split(test_size, random_state)
    return x_tr.astype(np.float32) / 16.0, y_tr, x_te.astype(np.float32) / 16.0, y_te


@functools.cache
def _default_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return digits_integer_split()


def digits_source(split: str) -> ArraySource:
    """The 'train' or 'test' part of the fixed split as an in-memory source (17 grey levels)."""
    x_tr, y_tr, x_te, y_te = _default_split()
    x, y = {"train": (x_tr, y_tr), "test": (x_te, y_te)}[split]
    return ArraySource(images=x, labels=y, levels=DIGITS_LEVELS)
