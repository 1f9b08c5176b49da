"""Train the digits-metric classifier and write score_sde/metrics/digits_classifier.msgpack.

Deterministic (fixed seeds; CPU): trains on the train part of `digits_split()` with random
one-pixel shifts as augmentation, for a fixed number of epochs (no model selection on the test
split), then reports test accuracy and the digits-FD floor (train vs test features).

    nice -n 10 python scripts/train_digits_classifier.py [--out PATH] [--epochs 60]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from score_sde.metrics import digits_classifier as dc  # noqa: E402
from score_sde.metrics.frechet import frechet_distance_from_features  # noqa: E402


def random_shift(rng: np.random.Generator, x: np.ndarray, max_shift: int = 1) -> np.ndarray:
    """Shift each image by up to `max_shift` pixels in each direction (zero fill)."""
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (max_shift,) * 2, (max_shift,) * 2, (0, 0)))
    dy, dx = rng.integers(0, 2 * max_shift + 1, size=(2, n))
    return np.stack([padded[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def train(epochs: int, batch_size: int, lr: float, seed: int) -> dict:
    x_tr, y_tr, x_te, y_te = dc.digits_split()
    model = dc.DigitsClassifier()
    params = model.init(jax.random.key(seed), jnp.zeros((1, *dc.DIGITS_SHAPE)))["params"]
    steps_per_epoch = len(x_tr) // batch_size
    schedule = optax.cosine_decay_schedule(lr, epochs * steps_per_epoch)
    tx = optax.adamw(schedule, weight_decay=1e-4)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(p):
            logits = model.apply({"params": p}, x)["logits"]
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        perm = rng.permutation(len(x_tr))
        losses = []
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            xb = random_shift(rng, x_tr[idx])
            params, opt_state, loss = step(params, opt_state, xb, y_tr[idx])
            losses.append(float(loss))
        if epoch % 10 == 0 or epoch == epochs - 1:
            print(f"epoch {epoch:3d}  loss {np.mean(losses):.4f}")
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=dc.DEFAULT_WEIGHTS)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.time()
    params = train(args.epochs, args.batch_size, args.lr, args.seed)
    dc.save_digits_params(args.out, params)
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({size / 1024:.0f} KiB) in {time.time() - start:.0f} s")

    x_tr, y_tr, x_te, y_te = dc.digits_split()
    fn = dc.digits_feature_fn(args.out)
    print(f"train accuracy {dc.digits_accuracy(x_tr, y_tr, args.out):.4f}")
    print(f"test accuracy  {dc.digits_accuracy(x_te, y_te, args.out):.4f}")
    floor = frechet_distance_from_features(fn(x_tr)["features"], fn(x_te)["features"])
    print(f"digits FD floor (train vs test) {floor:.4f}")


if __name__ == "__main__":
    main()
