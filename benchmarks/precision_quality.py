"""Does bf16 compute train as well as fp32? Short digits trainings per precision and seed.

    python benchmarks/precision_quality.py --steps 600 --seeds 0 1 --fd_samples 512 \
        --json benchmarks/results/precision_quality.json

Trains the embedded default (configs/digits.py: small U-Net, VP SDE, batch 64) with
`losses.get_step_fn` on the digits train split scaled to [-1, 1], once per precision and seed,
and reports the mean training loss of the final 100 steps; optionally the digits Frechet
distance of samples drawn with DPM-Solver++ (20 NFE). Samples come from the raw parameters, as
in benchmarks/results/precision_quality.json (measured before the digits configs had the EMA
warm-up, when a 600-step EMA still held 0.999**600 = 55% of the initialisation).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

from configs.digits import get_config
from score_sde import losses, sampling, sde_lib
from score_sde.metrics.digits_classifier import digits_fd, digits_split
from score_sde.models import get_model
from score_sde.models import utils as mutils

DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def train(precision: str, seed: int, steps: int, images: np.ndarray, fd_samples: int) -> dict:
    """Loss curve (and optionally digits FD) of one short training run."""
    config = get_config()
    config.model.dtype = DTYPES[precision]
    batch = config.training.batch_size
    sde, eps = sde_lib.get_sde(config)
    model, optimizer = get_model(config), losses.get_optimizer(config)
    state = jax.jit(lambda rng: losses.init_train_state(rng, config, optimizer=optimizer))(
        jax.random.PRNGKey(seed))
    step = jax.jit(losses.get_step_fn(config, sde, model, optimizer, train=True),
                   donate_argnums=0)
    data = images if config.data.centered else None
    if data is None:
        raise ValueError("configs/digits.py is expected to have data.centered=True")

    order = np.random.default_rng(seed)
    loss_values, start = [], time.perf_counter()
    perm, pos = order.permutation(len(data)), 0
    for _ in range(steps):
        if pos + batch > len(perm):
            perm, pos = order.permutation(len(data)), 0
        state, loss = step(state, {"image": data[perm[pos:pos + batch]]})
        pos += batch
        loss_values.append(loss)
    loss_values = [float(v) for v in jax.device_get(loss_values)]
    result = {"precision": precision, "seed": seed, "steps": steps,
              "train_seconds": time.perf_counter() - start,
              "final100_loss": float(np.mean(loss_values[-100:])), "losses": loss_values}

    if fd_samples:
        sampler = sampling.get_sampler("dpm_solver++", sde, (fd_samples, 8, 8, 1), nfe=20)
        score_fn = mutils.get_score_fn(sde, model, state.params, train=False, continuous=True)
        x, _ = jax.jit(lambda rng: sampler(rng, score_fn))(jax.random.PRNGKey(1000 + seed))
        result["digits_fd"] = float(digits_fd((np.asarray(x) + 1.0) / 2.0))
    return result


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--precision", choices=sorted(DTYPES), nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--fd_samples", type=int, default=512, help="0 skips the FD")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    x_train = digits_split()[0] * 2.0 - 1.0  # [0, 1] -> [-1, 1] (data.centered)
    results = []
    for precision in args.precision:
        for seed in args.seeds:
            r = train(precision, seed, args.steps, x_train, args.fd_samples)
            print(json.dumps({k: v for k, v in r.items() if k != "losses"}), flush=True)
            results.append(r)
    for precision in args.precision:
        finals = [r["final100_loss"] for r in results if r["precision"] == precision]
        fds = [r["digits_fd"] for r in results if r["precision"] == precision and "digits_fd" in r]
        summary = (f"{precision}: final-100-step loss {np.mean(finals):.4f} "
                   f"+- {np.ptp(finals) / 2:.4f}")
        if fds:
            summary += f"; digits FD {np.mean(fds):.2f} +- {np.ptp(fds) / 2:.2f}"
        print(summary + f" (mean +- half-range over seeds {args.seeds})", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
