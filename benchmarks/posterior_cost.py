"""What a posterior method costs per image (issue 25, item 4): network passes, seconds, memory.

Each method restores a batch of --batch images of the config's shape (default the CIFAR-10
DDPM++ network, configs/vp/cifar10_ddpmpp_continuous.py, at random weights: cost does not
depend on the weights) from a --task observation at a budget of --nfe network passes, in its
own process, so that its compile time and its process's peak memory are its own. Reported per
method: the passes it spent (score_sde.inverse's convention: a forward 1, a vjp or jvp 1 more,
a jax.checkpoint recomputation 1 more), compile seconds, seconds per image of the compiled
call (median of --repeats, after --warmup untimed calls), XLA's buffer estimate of the compiled call
(arguments + outputs + temporaries, CompiledMemoryStats) and the process's peak RSS. The row
'none' is the unconditional sampler (DDIM) at the same budget: the cost of the network alone.

    python benchmarks/posterior_cost.py                        # all methods, CPU, batch 2
    python benchmarks/posterior_cost.py --config configs/tiny.py --methods ddrm --nfe 8  # smoke

Writes --out (default benchmarks/results/posterior_cost.json) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's package

from score_sde import inference, inverse, models, sampling, sde_lib  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
METHODS = "none,mmps,pigdm,dps,ddrm,daps"


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("cfg", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def random_params(config):
    """Random weights of the network's shapes (traced with eval_shape, never compiled)."""
    shapes = jax.eval_shape(lambda rng: models.init_model(rng, config), jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: jnp.asarray(0.02 * rng.normal(size=s.shape), s.dtype), shapes)


def build(args, config):
    """(fn(params, rng, y) -> (x, nfe), y): the method's sampler on --task, or DDIM ('none')."""
    sde, eps = sde_lib.get_sde(config)
    model = models.get_model(config)
    d = config.data
    image = (int(d.image_size), int(d.image_size), int(d.num_channels))
    operator = inverse.get_operator(args.task, image)
    shape = (args.batch, *image)
    x = jax.random.uniform(jax.random.PRNGKey(1), shape, minval=-1.0, maxval=1.0)
    y = operator.degrade(jax.random.PRNGKey(2), x, args.sigma_y)

    def score_fn(params):
        return inference.model_score_fn(config, sde, model, params)

    if args.method == "none":
        sample = sampling.get_sampler("ddim", sde, shape, nfe=args.nfe, eps=eps)
        return (lambda p, rng, obs: sample(rng, score_fn(p))), y
    sample = inverse.get_posterior_sampler(args.method, sde, operator, shape,
                                           sigma_y=args.sigma_y, nfe=args.nfe, eps=eps)
    return (lambda p, rng, obs: sample(rng, score_fn(p), obs)), y


def measure(args) -> dict:
    """One method's row (run in a child process)."""
    config = load_config(args.config)
    params = random_params(config)
    fn, y = build(args, config)
    rng = jax.random.PRNGKey(0)
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(params, rng, y).compile()
    compile_s = time.perf_counter() - start
    mem = compiled.memory_analysis()
    times, nfe = [], None
    for _ in range(args.warmup + args.repeats):  # --warmup untimed calls first
        start = time.perf_counter()
        x, nfe = jax.block_until_ready(compiled(params, rng, y))
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times[args.warmup:])
    buffers = (mem.argument_size_in_bytes + mem.output_size_in_bytes
               + mem.temp_size_in_bytes) if mem is not None else None
    return {"method": args.method, "nfe": args.nfe, "nfe_used": int(nfe), "batch": args.batch,
            "compile_seconds": round(compile_s, 1),
            "seconds_per_image": round(seconds / args.batch, 3),
            "seconds_per_pass_per_image": round(seconds / args.batch / int(nfe), 4),
            "xla_buffers_mib": round(buffers / 2**20, 1) if buffers is not None else None,
            "xla_temp_mib": round(mem.temp_size_in_bytes / 2**20, 1) if mem else None,
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "finite": bool(np.all(np.isfinite(np.asarray(x))))}


def child(args, method: str) -> dict:
    """measure() in a fresh process (its own compile and peak RSS); errors as a row."""
    cmd = [sys.executable, __file__, "--child", "--method", method]
    for key in ("config", "task", "sigma_y", "nfe", "batch", "repeats", "warmup"):
        cmd += [f"--{key}", str(getattr(args, key))]
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode or not lines:
        error = (done.stderr.strip().splitlines() or ["failed"])[-1]
        return {"method": method, "nfe": args.nfe, "error": error}
    return json.loads(lines[-1])


def table(rows: list[dict]) -> str:
    cols = ("method", "nfe_used", "compile_seconds", "seconds_per_image",
            "seconds_per_pass_per_image", "xla_buffers_mib", "xla_temp_mib", "peak_rss_mib")
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(str(r.get(c, r.get("error", "-") if c == "nfe_used"
                                                else "-")) for c in cols) + " |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/vp/cifar10_ddpmpp_continuous.py")
    p.add_argument("--task", default="sr4_bicubic")
    p.add_argument("--sigma_y", type=float, default=0.05)
    p.add_argument("--nfe", type=int, default=24)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="timed calls (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls after compiling")
    p.add_argument("--methods", default=METHODS)
    p.add_argument("--out", default=str(RESULTS / "posterior_cost.json"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args)), flush=True)
        return
    rows = []
    for method in args.methods.split(","):
        rows.append(child(args, method))
        print(json.dumps(rows[-1]), flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "backend":
                                              jax.default_backend(), "rows": rows}, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
