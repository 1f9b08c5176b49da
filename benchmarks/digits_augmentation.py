"""Generated digits as training data: a classifier on 10% of the real digits, with and without.

A plain digits classifier (the architecture of the digits metric, `DigitsClassifier`, no
augmentation) is trained on the batches of `score_sde.data.get_dataset` (the training
pipeline of every model) for a fixed number of steps, in variants:

  real10     data.subset_fraction=0.1: a class-stratified 10% of the 1,437 training digits
             (data.subset_seed=0: the subset the class-conditional model was trained on)
  mixed      the same 10% plus the generated samples of --synthetic at --ratio of each batch
  synthetic  only the generated samples (data.synthetic_ratio=1)
  real100    all 1,437 training digits (for reference)

Each over --seeds seeds (initialisation and batch order); the test accuracy is measured on the
360 test digits of `digits_split()`. Writes benchmarks/results/<tag>.json and .md, and each
classifier's weights to benchmarks/results/<tag>/<variant>_seed<s>.msgpack (new files: the
shipped metric weights stay as they are). The samples come from a class-conditional model
trained on the same 10%:

    python -m score_sde.main --config configs/digits_cond.py --workdir runs/cond10 --mode train \\
        --config.data.subset_fraction=0.1 --config.training.n_iters=2001
    python -m score_sde.main --config configs/digits_cond.py --workdir runs/cond10 --mode sample \\
        --config.sampling.num_samples=2000 --config.sampling.batch_size=500 \\
        --config.sampling.method=dpm_solver++ --config.sampling.nfe=20
    python benchmarks/digits_augmentation.py --synthetic runs/cond10/eval/samples_step_2000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

from configs.digits_cond import get_config  # noqa: E402
from score_sde.data import get_dataset  # noqa: E402
from score_sde.metrics import digits_classifier as dc  # noqa: E402

VARIANTS = {  # name -> (subset_fraction, synthetic_ratio)
    "real10": (0.1, 0.0), "mixed": (0.1, None), "synthetic": (0.1, 1.0), "real100": (1.0, 0.0)}


def pipeline(fraction: float, ratio: float, synthetic: str, seed: int, batch: int):
    config = get_config()
    config.data.subset_fraction, config.data.subset_seed = fraction, 0
    config.data.synthetic, config.data.synthetic_ratio = (synthetic, ratio) if ratio else ("", 0.0)
    return get_dataset(config, "train", batch_size=batch, seed=seed,
                       process_index=0, process_count=1)


def train(ds, steps: int, seed: int, lr: float) -> dict:
    model = dc.DigitsClassifier()
    params = model.init(jax.random.key(seed), jnp.zeros((1, *dc.DIGITS_SHAPE)))["params"]
    tx = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=1e-4)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(p):
            logits = model.apply({"params": p}, x)["logits"]
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for i in range(steps):
        b = ds.batch(i)
        params, opt_state = step(params, opt_state, b["image"], b["label"])
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", help="folder of generated .npz shards")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--tag", default="digits_augmentation")
    parser.add_argument("--render", help="only write the .md table of this results .json")
    args = parser.parse_args()
    if args.render:
        results = json.loads(Path(args.render).read_text())
        Path(args.render).with_suffix(".md").write_text(table(results))
        return

    out = ROOT / "benchmarks" / "results"
    weights = out / args.tag
    _, _, x_te, y_te = dc.digits_split()
    results = {"args": vars(args), "accuracy": {}, "train_examples": {}}
    for name in args.variants.split(","):
        fraction, ratio = VARIANTS[name]
        ratio = args.ratio if ratio is None else ratio
        accs = []
        for seed in range(args.seeds):
            start = time.time()
            ds = pipeline(fraction, ratio, args.synthetic, seed, args.batch_size)
            params = train(ds, args.steps, seed, args.lr)
            path = weights / f"{name}_seed{seed}.msgpack"
            dc.save_digits_params(path, params)
            logits = dc.DigitsClassifier().apply({"params": params}, jnp.asarray(x_te))["logits"]
            accs.append(float(np.mean(np.argmax(np.asarray(logits), -1) == y_te)))
            results["train_examples"][name] = [
                len(ds.source) if ratio < 1 else 0,
                len(ds.synthetic) if ds.synthetic is not None else 0]
            print(f"{name} seed {seed}: test accuracy {accs[-1]:.4f} ({time.time() - start:.0f} "
                  f"s; real {len(ds.source)}, synthetic per batch {ds.num_synthetic})",
                  flush=True)
        results["accuracy"][name] = accs
    (out / f"{args.tag}.json").write_text(json.dumps(results, indent=1))
    (out / f"{args.tag}.md").write_text(table(results))
    print(table(results))


def table(results: dict) -> str:
    """The markdown table of a results dict (`--render JSON` writes it again)."""
    lines = ["| training data | real / generated examples | test accuracy (mean ± std over "
             f"{results['args']['seeds']} seeds) | per seed |", "|---|---|---|---|"]
    for name, accs in results["accuracy"].items():
        real, synth = results["train_examples"][name]
        lines.append(f"| {name} | {real} / {synth} | {100 * np.mean(accs):.1f} ± "
                     f"{100 * np.std(accs):.1f} % | "
                     + ", ".join(f"{100 * a:.1f}" for a in accs) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
