"""Evaluation, likelihood and conversion of trained checkpoints (run_lib.evaluate); --mode
sample (N samples to disk) is score_sde.generate.

Everything written here is resumable: each result lives in its own file under
workdir/<eval_folder>/step_<step>/ and a file that exists is not computed again.

    loss.json                  mean evaluation loss over the test split (EMA weights)
    bpd_<repeat>.npz           bits/dim of every example, one file per dequantisation repeat
    host_<p>/samples_<r>.npz   eval.num_samples samples in rounds of eval.batch_size, each
                               process writing its own shard ('samples': uint8 NHWC)
    metrics.json               what the registered eval hooks (FID/KID/IS, ...) return
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import numpy as np
from etils.epath import Path  # local or gs:// paths alike

from score_sde import checkpoints, data_stats, losses, models, parallel, storage
from score_sde import logging_utils as log
from score_sde.data import get_data_scaler, get_dataset
from score_sde.eval_hooks import EVAL_HOOKS, register_eval_hook, sample_files
from score_sde.inference import ConfigSampler, Restorer, make_eval_call, model_score_fn
from score_sde.sample_shards import local_rows

# Names of the library floor that this module's users import from here (README, notebooks).
__all__ = ["EVAL_HOOKS", "ConfigSampler", "Restorer", "bits_per_dim", "bpd_over_split", "convert",
           "eval_loss", "evaluate", "get_likelihood_call", "likelihood", "local_rows",
           "register_eval_hook", "sample_files", "sample_rounds"]


def _write_json(path: Path, values: dict) -> None:
    if log.is_main():
        storage.write_json(path, values)


def _save_npz(path: Path, **arrays) -> None:
    storage.save_npz(path, **arrays)


# ----------------------------------------------------------------------------- loss


def eval_loss(r: Restorer, state, split: str = "test") -> float:
    """Mean loss of the EMA weights over every full batch of a split."""
    config = r.config
    parallel.check_batch_size(int(config.eval.batch_size), "config.eval.batch_size", r.mesh)
    ds = get_dataset(config, split)
    call = make_eval_call(losses.get_step_fn(config, r.sde, r.model, r.optimizer, train=False),
                          r.mesh, get_data_scaler(config))
    key = jax.random.PRNGKey(int(config.seed) + 3)
    values = []
    for i, batch in enumerate(log.progress(ds.iterate(), total=ds.num_batches, desc="eval loss")):
        rng = parallel.replicate(jax.random.fold_in(key, i), r.mesh)
        values.append(call(state.replace(rng=rng), parallel.shard_batch(batch, r.mesh)))
    return float(np.mean(jax.device_get(values)))


# ----------------------------------------------------------------------------- bits/dim


def bits_per_dim(logp_nats: np.ndarray, dim: int, levels: int, centered: bool) -> np.ndarray:
    """Bits/dim of data with `levels` values, dequantised into [0, 1] and scaled by the config
    (x 2 when centered): the published offset 7 - inverse_scaler(-1) for 8-bit data."""
    from score_sde.likelihood import bits_per_dim as bpd

    return np.asarray(bpd(logp_nats, dim, scale=2.0 if centered else 1.0, n_bins=levels))


def get_likelihood_call(r: Restorer) -> Callable:
    """jit(params, rng, x_scaled) -> logp (nats, per example) via score_sde.likelihood."""
    from score_sde import likelihood

    config = r.config
    fn = likelihood.get_likelihood_fn_from_config(config, r.sde, r.eps)

    def call(params, rng, x):  # a class-conditional model: its unconditional (null-label) score
        return fn(rng, model_score_fn(config, r.sde, r.model, params), x)[0]

    rep = parallel.replicated(r.mesh)
    return jax.jit(call, in_shardings=(rep, rep, parallel.data_sharding(r.mesh)),
                   out_shardings=parallel.data_sharding(r.mesh))


def bpd_over_split(r: Restorer, state, split: str, repeat: int, call=None) -> np.ndarray:
    """Bits/dim of every example of a split, dequantised with noise of this repeat."""
    config = r.config
    ds = get_dataset(config, split, batch_size=int(config.eval.batch_size),
                     shuffle=False, pad_last=True,
                     seed=int(np.random.SeedSequence([int(config.seed), 11, repeat])
                              .generate_state(1)[0] % 2**31))
    ds.dequantize = True  # published: bits/dim always on uniformly dequantised data
    call = call or get_likelihood_call(r)
    scaler = get_data_scaler(config)
    dim = int(np.prod(models.input_shape(config)[1:]))  # values per image (or clip)
    key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed) + 4), repeat)
    out = []
    for i, batch in enumerate(log.progress(ds.iterate(), total=ds.num_batches,
                                           desc=f"bits/dim (repeat {repeat})")):
        x = parallel.shard_batch({"image": scaler(batch["image"])}, r.mesh)["image"]
        logp = parallel.to_host(call(state.ema_params,
                                     parallel.replicate(jax.random.fold_in(key, i), r.mesh), x))
        mask = parallel.to_host(parallel.shard_batch({"m": batch["mask"]}, r.mesh)["m"])
        out.append(bits_per_dim(logp, dim, ds.source.levels, bool(config.data.centered))[mask])
    return np.concatenate(out)


def _num_repeats(config) -> int:
    default = 5 if str(config.data.dataset).upper() == "CIFAR10" else 1
    return int(config.eval.get("num_repeats", default))


# ----------------------------------------------------------------------------- samples


def sample_rounds(r: Restorer, state, step: int, out: Path, sampler: ConfigSampler) -> None:
    config = r.config
    rounds = math.ceil(int(config.eval.num_samples) / sampler.n)
    host_dir = out / f"host_{jax.process_index()}"
    key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed) + 5), step)
    for i in log.progress(range(rounds), desc="sampling rounds"):
        path = host_dir / f"samples_{i}.npz"
        if parallel.all_true(path.exists()):
            continue
        images, _ = sampler(state.ema_params, jax.random.fold_in(key, i))
        _save_npz(path, samples=log.to_uint8(local_rows(images)))


# ----------------------------------------------------------------------------- modes


def evaluate(config, workdir: str | Path, eval_folder: str = "eval") -> dict[int, dict]:
    """Loss, bits/dim, samples and hook metrics of the snapshots chosen by config.eval."""
    r = Restorer(config, workdir)
    ev = config.eval
    writer = log.MetricWriter(Path(workdir) / eval_folder, console=False)
    results = {}
    sampler = None
    try:
        for step in r.eval_steps():
            state, _ = r.restore(step)
            out = Path(workdir) / eval_folder / f"step_{step}"
            out.mkdir(parents=True, exist_ok=True)
            log.say(f"Evaluating the checkpoint at step {step} -> {out}")
            res: dict[str, float] = {}
            if ev.enable_loss:
                res.update(_cached_json(out / "loss.json",
                                        lambda s=state: {"eval/loss": eval_loss(r, s)}))
            if ev.enable_bpd:
                res["eval/bpd"] = _bpd(r, state, out)
            if ev.enable_sampling:
                sampler = sampler or ConfigSampler(config, r.sde, r.eps, r.model, r.mesh,
                                                   data_stats=data_stats.load(r.workdir))
                sample_rounds(r, state, step, out, sampler)
                for name, hook in EVAL_HOOKS.items():
                    log.say(f"Running eval hook {name}")
                    res.update(hook(config, out, step))
            _write_json(out / "metrics.json", res)
            writer.scalars(step, res)
            log.say(f"step {step}: " + ", ".join(f"{k}={v:.5g}" for k, v in res.items()))
            results[step] = res
    finally:
        writer.close()
        r.close()
    return results


def _cached_json(path: Path, compute: Callable[[], dict]) -> dict:
    if path.exists():
        return storage.read_json(path)
    values = compute()
    _write_json(path, values)
    return values


def _bpd(r: Restorer, state, out: Path) -> float:
    call = get_likelihood_call(r)
    values = []
    for repeat in range(_num_repeats(r.config)):
        path = out / f"bpd_{repeat}.npz"
        if not path.exists():
            bpd = bpd_over_split(r, state, r.config.eval.bpd_dataset, repeat, call)
            if log.is_main():
                _save_npz(path, bpd=bpd)
        else:
            bpd = storage.load_npz(path)["bpd"]
        values.append(bpd)
    return float(np.mean(np.concatenate(values)))


def likelihood(config, workdir: str | Path, eval_folder: str = "eval") -> float:
    """Bits/dim of the test split under the EMA weights (mean over eval.num_repeats)."""
    r = Restorer(config, workdir)
    try:
        state, step = r.restore(r.chosen_step())
        log.say(f"Bits/dim of the {config.eval.bpd_dataset} split under the checkpoint at "
                f"step {step}")
        call = get_likelihood_call(r)
        bpd = np.concatenate([bpd_over_split(r, state, config.eval.bpd_dataset, k, call)
                              for k in range(_num_repeats(config))])
    finally:
        r.close()
    mean, se = float(bpd.mean()), float(bpd.std() / np.sqrt(len(bpd)))
    out = Path(workdir) / eval_folder
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / f"bpd_step_{step}.json", {"bpd": mean, "stderr": se, "n": len(bpd)})
    log.say(f"bits/dim = {mean:.4f} +- {se:.4f} over {len(bpd)} examples "
            f"(written to {out / f'bpd_step_{step}.json'})")
    return mean


def convert(config, workdir: str | Path, published_path: str) -> Path:
    """Write a published checkpoint as a snapshot of workdir, at its published step (so the
    published checkpoint index `ckpt` selects it through config.eval.begin_ckpt/end_ckpt)."""
    r = Restorer(config, workdir)
    try:
        if r.ckpts.snapshot_steps():
            raise FileExistsError(f"{r.workdir / checkpoints.SNAPSHOT_DIR} already has "
                                  "checkpoints; convert into an empty workdir")
        state = jax.jit(lambda k: losses.init_train_state(k, config, r.model, r.optimizer))(
            jax.random.PRNGKey(int(config.seed)))
        state = checkpoints.state_from_published(jax.device_get(state), published_path, config,
                                                 keep_step=True)
        step = int(state.step)
        r.ckpts.save_snapshot(step, parallel.replicate(state, r.mesh))
        r.ckpts.wait()
    finally:
        r.close()
    path = r.workdir / checkpoints.SNAPSHOT_DIR / str(step)
    log.say(f"Converted {published_path} into {path} (use --mode sample/eval/likelihood "
            "with this workdir)")
    return path



def __getattr__(name: str):
    """A renamed name fails with one line naming its replacement."""
    if name == "Sampler":
        raise ImportError("score_sde.evaluate.Sampler was renamed ConfigSampler "
                          "(score_sde.inference.ConfigSampler)")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
