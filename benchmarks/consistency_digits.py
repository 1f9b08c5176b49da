"""Digits figures of issue 18: consistency models (CD, CT) against their EDM teacher.

  fd    digits FD of N samples (EMA weights, quantised to uint8 as --mode eval does) of one
        workdir's newest checkpoint (or --step) with a sampler, a PNG grid of its first 64
        samples; one JSON line appended to --out
  grads per-level CD loss and parameter-gradient norm at the student's start (the teacher's
        weights) for the l2 and pseudo-Huber distances, and the iCT weight of each pair: why
        uniformly weighted pseudo-Huber CD fails
  cost  CPU seconds per training step (process time, so other jobs' load does not count) of
        the teacher's DSM step, the CD step (teacher inside) and the CT step, jitted, batch 64

    python benchmarks/consistency_digits.py fd --config=configs/digits_cd.py \
        --workdir=runs/digits_cd --method=consistency --nfe=1 --out=results.jsonl
    python benchmarks/consistency_digits.py cost --teacher_workdir=runs/digits_edm
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, configs


def _config(path: str):
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _run_config(workdir: str):
    """The config a training run recorded in workdir/config.json (its overrides included)."""
    from score_sde import run_config

    try:
        return run_config.load(workdir)
    except FileNotFoundError as e:
        raise SystemExit(f"{e}: pass --config=CONFIG_FILE") from e


def fd(args) -> dict:
    from score_sde import inference
    from score_sde import logging_utils as log
    from score_sde.metrics.digits_classifier import digits_fd

    config = _config(args.config) if args.config else _run_config(args.workdir)
    config.sampling.method = args.method
    if args.nfe:
        config.sampling.nfe = args.nfe
    if args.grid:
        config.sampling.grid = args.grid
    if args.sigmas:
        config.sampling.consistency_sigmas = tuple(float(v) for v in args.sigmas.split(","))
    r = inference.Restorer(config, args.workdir)
    try:
        state, step = r.restore(args.step)
    finally:
        r.close()
    sampler = inference.ConfigSampler(config, r.sde, r.eps, r.model, r.mesh, n=args.batch)
    key = jax.random.PRNGKey(args.seed)
    images, nfe, start = [], 0, time.perf_counter()
    for i in range(args.num_samples // args.batch):
        x, nfe = sampler(state.ema_params, jax.random.fold_in(key, i))
        images.append(log.to_uint8(np.asarray(x)))
    seconds = time.perf_counter() - start
    images = np.concatenate(images)
    out = Path(args.out)
    png = out.parent / f"{out.stem}_{args.name}.png"
    log.save_image_grid(png, images[:64].astype(np.float32) / 255.0)
    row = {"name": args.name, "workdir": args.workdir, "step": step, "method": args.method,
           "nfe": nfe, "sigmas": args.sigmas, "n": len(images),
           "digits_fd": round(digits_fd(images / 255.0), 3),
           "seconds_incl_compile": round(seconds, 1), "grid": str(png)}
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
    return row


def grads(args) -> list:
    """CD loss and global gradient norm at each level pair (one batch, every example at that
    pair) of a student equal to its teacher, for l2 and pseudo-Huber."""
    import jax.numpy as jnp

    from score_sde import consistency_losses as cl
    from score_sde import distillation
    from score_sde.data import get_data_scaler, get_dataset
    from score_sde.models import consistency as consistency_models
    from score_sde.models import utils as mutils
    from score_sde.sampling import steps

    base = _config("configs/digits_cd.py")
    teacher = distillation.load_teacher(base, args.teacher_workdir)
    params = jax.tree.map(jnp.asarray, teacher.params)
    x = jnp.asarray(get_data_scaler(base)(get_dataset(base, "train").batch(0)["image"]))
    sig = cl.levels_of(base)
    denoiser = steps.edm_denoiser(teacher.sde, steps.data_prediction(
        teacher.sde, mutils.get_score_fn(teacher.sde, teacher.model, params, continuous=True)))
    rows = []
    for name in ("l2", "pseudo_huber"):
        base.consistency.distance = name
        param, distance = consistency_models.from_config(base, teacher.sde), cl._distance(base)

        def loss(p, s_cur, s_next, key, param=param, distance=distance):
            full = lambda u: jnp.full((x.shape[0],), u, jnp.float32)  # noqa: E731
            student, target = cl.cd_outputs(
                consistency_models.get_consistency_fn(param, teacher.model, p, True, key),
                consistency_models.get_consistency_fn(param, teacher.model, params, True, key),
                lambda u, a, b: cl.ode_step(denoiser, u, a, b, "heun"), x,
                jax.random.normal(key, x.shape), full(s_cur), full(s_next))
            return jnp.mean(distance(student, target))

        value_and_grad = jax.jit(jax.value_and_grad(loss))
        for n in range(len(sig) - 1):
            value, g = value_and_grad(params, float(sig[n]), float(sig[n + 1]),
                                      jax.random.PRNGKey(args.seed))
            norm = float(jnp.sqrt(sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(g))))
            rows.append({"distance": name, "sigma_next": round(float(sig[n + 1]), 4),
                         "loss": float(value), "grad_norm": round(norm, 5),
                         "ict_weight": round(1.0 / float(sig[n + 1] - sig[n]), 4)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def cost(args) -> dict:
    """CPU seconds per step (median over blocks, process time) of the three objectives."""
    import jax.numpy as jnp

    from score_sde import consistency_losses, distillation, losses, models
    from score_sde.data import get_data_scaler, get_dataset

    teacher_cfg = _config("configs/digits_edm.py")
    cd_cfg, ct_cfg = _config("configs/digits_cd.py"), _config("configs/digits_ct.py")
    teacher = distillation.load_teacher(cd_cfg, args.teacher_workdir)
    model = models.get_model(teacher_cfg)
    opt = losses.get_optimizer(teacher_cfg)
    sde = teacher.sde
    fns = {
        "teacher_dsm": (teacher_cfg, losses.get_step_fn(teacher_cfg, sde, model, opt, True)),
        "cd": (cd_cfg, consistency_losses.get_step_fn(cd_cfg, model, opt, teacher.spec())),
        "ct": (ct_cfg, consistency_losses.get_step_fn(ct_cfg, model, opt)),
    }
    ds = get_dataset(teacher_cfg, "train")
    scaler = get_data_scaler(teacher_cfg)
    batch = {"image": jnp.asarray(scaler(ds.batch(0)["image"]))}
    result = {}
    for name, (config, step_fn) in fns.items():
        state = losses.init_train_state(jax.random.PRNGKey(0), config, model, opt)
        step = jax.jit(step_fn, donate_argnums=(0,))
        state, loss = step(state, batch)
        jax.block_until_ready(loss)
        times = []
        for _ in range(args.blocks):
            t0 = time.process_time()
            for _ in range(args.steps):
                state, loss = step(state, batch)
            jax.block_until_ready(loss)
            times.append((time.process_time() - t0) / args.steps)
        result[name] = round(float(np.median(times)) * 1e3, 1)
    result = {"cpu_ms_per_step": result}
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fd")
    f.add_argument("--config", default=None,
                   help="config file; default: the run's WORKDIR/config.json")
    f.add_argument("--workdir", required=True)
    f.add_argument("--method", default="consistency")
    f.add_argument("--nfe", type=int, default=None)
    f.add_argument("--grid", default=None)
    f.add_argument("--sigmas", default=None, help="consistency_sigmas, e.g. 0.821 or 17,2.5,0.17")
    f.add_argument("--step", type=int, default=None)
    f.add_argument("--num_samples", type=int, default=2048)
    f.add_argument("--batch", type=int, default=256)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--name", required=True)
    f.add_argument("--out", default="benchmarks/results/consistency_digits.jsonl")
    g = sub.add_parser("grads")
    g.add_argument("--teacher_workdir", required=True)
    g.add_argument("--seed", type=int, default=1)
    c = sub.add_parser("cost")
    c.add_argument("--teacher_workdir", required=True)
    c.add_argument("--steps", type=int, default=20)
    c.add_argument("--blocks", type=int, default=3)
    args = p.parse_args()
    {"fd": fd, "grads": grads, "cost": cost}[args.cmd](args)


if __name__ == "__main__":
    main()
