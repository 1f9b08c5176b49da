"""Training and forward throughput of a config's score network, with XLA's FLOP count.

    python benchmarks/throughput.py --config configs/vp/cifar10_ddpmpp_continuous.py \
        --batch 128 --precision bf16 --json results/throughput.json

Training images/s cover the whole jitted step (forward, backward, optimizer, EMA) with the
state donated, as in `score_sde.train`; forward images/s is one network evaluation (the unit
cost of sampling). The batch is sharded over all local devices on a 'data' mesh axis. FLOPs
and bytes come from XLA's cost analysis of the compiled programs; model FLOP utilisation (MFU)
needs the device's peak FLOP/s (known for common accelerators, or --peak_tflops).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from score_sde import losses, models, parallel, sde_lib
from score_sde.models import utils as mutils

# Dense peak TFLOP/s per chip by compute dtype (vendor datasheets; fp32 = tensor-core TF32).
PEAK_TFLOPS = {
    "H100": {"bfloat16": 989.0, "float32": 494.0},
    "H200": {"bfloat16": 989.0, "float32": 494.0},
    "A100": {"bfloat16": 312.0, "float32": 156.0},
    "V100": {"bfloat16": 125.0, "float32": 15.7},
    "TPU v4": {"bfloat16": 275.0, "float32": 275.0},
    "TPU v5": {"bfloat16": 459.0, "float32": 459.0},
}
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _peak_tflops(dtype: str, override: float | None) -> float | None:
    if override:
        return override
    kind = jax.devices()[0].device_kind
    for name, peaks in PEAK_TFLOPS.items():
        if name.lower() in kind.lower():
            return peaks[dtype]
    return None


def _cost(compiled) -> dict:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):  # older jax: one dict per program
        analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    return {"flops": float(analysis.get("flops", 0.0)),
            "bytes": float(analysis.get("bytes accessed", 0.0))}


def _time(fn, args, iters: int) -> float:
    """Seconds per call, after the caller's warm-up; `fn` returns (new first arg, output)."""
    state = args[0]
    start = time.perf_counter()
    for _ in range(iters):
        state, out = fn(state, *args[1:])
    jax.block_until_ready((state, out))
    return (time.perf_counter() - start) / iters


def _peak_memory() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def benchmark(config, batch: int, precision: str, iters: int = 10,
              peak_tflops: float | None = None) -> dict:
    config.training.batch_size = batch
    config.model.dtype = DTYPES[precision]
    mesh = parallel.make_mesh()
    parallel.check_batch_size(batch, "--batch", mesh)
    sde, _ = sde_lib.get_sde(config)
    model = models.get_model(config)
    optimizer = losses.get_optimizer(config)

    state = parallel.replicate(
        losses.init_train_state(jax.random.PRNGKey(0), config, optimizer=optimizer), mesh)
    shape = models.registry.input_shape(config, batch)
    images = jax.device_put(jax.random.normal(jax.random.PRNGKey(1), shape),
                            parallel.data_sharding(mesh))
    train_step = jax.jit(losses.get_step_fn(config, sde, model, optimizer, train=True),
                         donate_argnums=0)
    train_compiled = train_step.lower(state, {"image": images}).compile()

    t = jax.device_put(jnp.full((batch,), 0.5), parallel.data_sharding(mesh))

    def forward(params, x, t):
        return params, mutils.get_score_fn(sde, model, params, train=False)(x, t)

    forward_step = jax.jit(forward)
    forward_compiled = forward_step.lower(state.ema_params, images, t).compile()

    for _ in range(2):  # warm-up
        state, _ = train_step(state, {"image": images})
        forward_step(state.ema_params, images, t)
    jax.block_until_ready(state)
    forward_s = _time(forward_step, (state.ema_params, images, t), iters)
    train_s = _time(train_step, (state, {"image": images}), iters)

    train_cost, forward_cost = _cost(train_compiled), _cost(forward_compiled)
    peak = _peak_tflops(config.model.dtype, peak_tflops)
    n_dev = len(mesh.devices.flat)
    mfu = lambda flops, sec: (flops / sec / (peak * 1e12 * n_dev)) if peak else None
    return {
        "config": config.model.name, "device": jax.devices()[0].device_kind,
        "devices": n_dev, "batch": batch, "precision": precision,
        "params": models.registry.count_params(state.params),
        "train_img_per_s": batch / train_s, "forward_img_per_s": batch / forward_s,
        "train_step_ms": 1e3 * train_s, "forward_ms": 1e3 * forward_s,
        "train_gflop_per_img": train_cost["flops"] / batch / 1e9,
        "forward_gflop_per_img": forward_cost["flops"] / batch / 1e9,
        "train_gbytes_per_step": train_cost["bytes"] / 1e9,
        "forward_gbytes_per_call": forward_cost["bytes"] / 1e9,
        "train_mfu": mfu(train_cost["flops"], train_s),
        "forward_mfu": mfu(forward_cost["flops"], forward_s),
        "peak_memory_bytes": _peak_memory(),
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="path of a config file")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--precision", choices=sorted(DTYPES), nargs="+", default=["fp32"])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--peak_tflops", type=float, default=None)
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="config overrides, e.g. model.nf=32")
    parser.add_argument("--json", default=None, help="append results to this JSON file")
    args = parser.parse_args(argv)

    results = []
    for precision in args.precision:
        config = load_config(args.config)
        for item in args.set:
            field, value = item.split("=", 1)
            _set_field(config, field, value)
        result = {"config_path": args.config, **benchmark(config, args.batch, precision,
                                                          args.iters, args.peak_tflops)}
        print(json.dumps(result))
        results.append(result)
    if args.json:
        path = Path(args.json)
        previous = json.loads(path.read_text()) if path.exists() else []
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(previous + results, indent=1))
    return results


def _set_field(config, field: str, value: str) -> None:
    *parents, leaf = field.split(".")
    node = config
    for name in parents:
        node = node[name]
    current = node[leaf]
    if isinstance(current, (tuple, list)):
        node[leaf] = type(current)(type(current[0])(v) for v in value.split(","))
    elif isinstance(current, bool):
        node[leaf] = value.lower() in ("1", "true", "yes")
    else:
        node[leaf] = type(current)(value) if current is not None else value


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
