"""Training and forward throughput of a config's score network, with XLA's FLOP count.

    python benchmarks/throughput.py --config configs/vp/cifar10_ddpmpp_continuous.py \
        --batch 128 --precision fp32 bf16 --json benchmarks/results/throughput.json

Training images/s cover the whole jitted step (forward, backward, optimizer, EMA) with the
state donated, as in `score_sde.train`; forward images/s is one network evaluation as a sampler
calls it (the unit cost of sampling). The batch is sharded over all local devices on a 'data'
mesh axis. FLOPs and bytes come from XLA's cost analysis of the compiled programs (hardware
FLOPs: rematerialised work counts); model FLOP utilisation (MFU) needs the device's peak FLOP/s
(known for common accelerators, or --peak_tflops). Memory: the device allocator's peak
(`peak_memory_bytes`, GPU/TPU only, cumulative over the process: run one precision per process
for a clean figure) and XLA's static estimate per program (`*_program_bytes`, any backend).

`--cost_only` compiles without running anything (FLOPs, bytes and program memory of full-size
networks on a CPU); `--forward_only` skips the training program. `--set model.remat=True`
rematerialises the residual blocks.
"""

from __future__ import annotations

import argparse
import ast
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
    """XLA's FLOPs, bytes accessed and static memory (arguments + outputs + temporaries)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):  # older jax: one dict per program
        analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    memory = compiled.memory_analysis()
    program_bytes = None
    if memory is not None:
        program_bytes = int(memory.argument_size_in_bytes + memory.output_size_in_bytes
                            + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
    return {"flops": float(analysis.get("flops", 0.0)),
            "bytes": float(analysis.get("bytes accessed", 0.0)), "program_bytes": program_bytes}


def _peak_memory() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def benchmark(config, batch: int, precision: str, iters: int = 10,
              peak_tflops: float | None = None, cost_only: bool = False,
              forward_only: bool = False) -> dict:
    """One config x batch x precision: img/s (unless cost_only), FLOPs, bytes, memory, MFU."""
    config.training.batch_size = batch
    config.model.dtype = DTYPES[precision]
    mesh = parallel.make_mesh()
    parallel.check_batch_size(batch, "--batch", mesh)
    sde, _ = sde_lib.get_sde(config)
    model = models.get_model(config)
    optimizer = losses.get_optimizer(config)
    replicated, sharded = parallel.replicated(mesh), parallel.data_sharding(mesh)

    init = jax.jit(lambda rng: losses.init_train_state(rng, config, optimizer=optimizer),
                   out_shardings=replicated)
    shape = models.registry.input_shape(config, batch)
    if cost_only:  # abstract inputs: nothing is allocated or run
        state = jax.eval_shape(init, jax.random.PRNGKey(0))
        state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                            sharding=replicated), state)
        images = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharded)
        t = jax.ShapeDtypeStruct((batch,), jnp.float32, sharding=sharded)
    else:
        state = init(jax.random.PRNGKey(0))
        images = jax.device_put(jax.random.normal(jax.random.PRNGKey(1), shape), sharded)
        t = jax.device_put(jnp.full((batch,), 0.5), sharded)

    def forward(params, x, t):
        return mutils.get_score_fn(sde, model, params, train=False)(x, t)

    forward_compiled = jax.jit(forward).lower(state.ema_params, images, t).compile()
    train_compiled = None
    if not forward_only:
        train_step = jax.jit(losses.get_step_fn(config, sde, model, optimizer, train=True),
                             donate_argnums=0)
        train_compiled = train_step.lower(state, {"image": images}).compile()

    forward_s = train_s = None
    if not cost_only:
        # The compiled executables are called directly: no second compile through jit's cache.
        def run_forward():
            return forward_compiled(state.ema_params, images, t)

        jax.block_until_ready([run_forward() for _ in range(2)])  # warm-up
        outputs = []
        start = time.perf_counter()
        for _ in range(iters):
            outputs.append(run_forward())
            if len(outputs) > 2:  # bound the number of results in flight
                outputs.pop(0)
        jax.block_until_ready(outputs)
        forward_s = (time.perf_counter() - start) / iters

        if train_compiled is not None:
            for _ in range(2):  # warm-up
                state, loss = train_compiled(state, {"image": images})
            jax.block_until_ready(state)
            start = time.perf_counter()
            for _ in range(iters):
                state, loss = train_compiled(state, {"image": images})
            jax.block_until_ready((state, loss))
            train_s = (time.perf_counter() - start) / iters

    forward_cost = _cost(forward_compiled)
    train_cost = _cost(train_compiled) if train_compiled is not None else None
    peak = _peak_tflops(config.model.dtype, peak_tflops)
    n_dev = mesh.devices.size

    def mfu(cost, sec):
        if cost is None or sec is None or not peak:
            return None
        return cost["flops"] / sec / (peak * 1e12 * n_dev)

    per_img = lambda cost, key, scale: None if cost is None else cost[key] / scale
    return {
        "config": config.model.name, "device": jax.devices()[0].device_kind,
        "devices": n_dev, "batch": batch, "precision": precision,
        "remat": bool(config.model.get("remat", False)),
        "params": models.registry.count_params(state.params),
        "train_img_per_s": None if train_s is None else batch / train_s,
        "forward_img_per_s": None if forward_s is None else batch / forward_s,
        "train_step_ms": None if train_s is None else 1e3 * train_s,
        "forward_ms": None if forward_s is None else 1e3 * forward_s,
        "train_gflop_per_img": per_img(train_cost, "flops", batch * 1e9),
        "forward_gflop_per_img": per_img(forward_cost, "flops", batch * 1e9),
        "train_gbytes_per_step": per_img(train_cost, "bytes", 1e9),
        "forward_gbytes_per_call": per_img(forward_cost, "bytes", 1e9),
        "train_mfu": mfu(train_cost, train_s),
        "forward_mfu": mfu(forward_cost, forward_s),
        "peak_tflops": peak,
        "train_program_bytes": None if train_cost is None else train_cost["program_bytes"],
        "forward_program_bytes": forward_cost["program_bytes"],
        "peak_memory_bytes": None if cost_only else _peak_memory(),
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="path of a config file")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--precision", choices=sorted(DTYPES), nargs="+", default=["fp32"])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--peak_tflops", type=float, default=None)
    parser.add_argument("--cost_only", action="store_true",
                        help="compile only: XLA FLOPs/bytes/memory, no timing")
    parser.add_argument("--forward_only", action="store_true",
                        help="skip the training step (compile and time the forward pass only)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="config overrides, e.g. model.nf=32 model.remat=True")
    parser.add_argument("--json", default=None, help="append results to this JSON file")
    args = parser.parse_args(argv)

    results = []
    for precision in args.precision:
        config = load_config(args.config)
        for item in args.set:
            field, value = item.split("=", 1)
            _set_field(config, field, value)
        result = {"config_path": args.config, "overrides": list(args.set),
                  **benchmark(config, args.batch, precision, args.iters, args.peak_tflops,
                              args.cost_only, args.forward_only)}
        print(json.dumps(result), flush=True)
        results.append(result)
    if args.json:
        path = Path(args.json)
        previous = json.loads(path.read_text()) if path.exists() else []
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(previous + results, indent=1))
    return results


def _set_field(config, field: str, value: str) -> None:
    """config.<field> = value, converted to the current value's type (a literal if new)."""
    *parents, leaf = field.split(".")
    node = config
    for name in parents:
        node = node[name]
    current = node.get(leaf)
    if isinstance(current, (tuple, list)):
        node[leaf] = type(current)(type(current[0])(v) for v in value.split(","))
    elif isinstance(current, bool) or (current is None and value.lower() in ("true", "false")):
        node[leaf] = value.lower() in ("1", "true", "yes")
    elif current is not None:
        node[leaf] = type(current)(value)
    else:
        try:
            node[leaf] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            node[leaf] = value


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
