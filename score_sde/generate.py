"""`--mode sample`: N samples of a trained model to disk, sharded over hosts, resumable.

    python -m score_sde.main --config configs/digits_cond.py --workdir runs/digits_cond \\
        --mode sample --config.sampling.num_samples=50000 --config.sampling.batch_size=512

config.sampling.num_samples samples of the EMA weights of the newest checkpoint (or
config.eval.ckpt), in global batches of sampling.batch_size over every device of every host,
with config.sampling's sampler and guidance (class labels: sampling.class_labels, else every
class in turn). Into sampling.output_dir (default workdir/<eval_folder>/samples_step_<step>):

    manifest.json            checkpoint step, sampler, seed, count, layout and the whole config
    samples_<first>.npz      format 'npz'/'both': 'samples' uint8 NHWC, 'indices', 'labels'
    png/[<label>/]<i>.png    format 'png'/'both': one file per sample (class folders if labelled)
    grid.png                 the first shard of process 0 as a grid, for a look

Each host writes its own shards (score_sde.sample_shards.ShardLayout). Sample i's noise depends
only on (seed, i), and every file is written whole, so a job that is killed and started again
skips the complete shards and ends with exactly the files of an uninterrupted job. A folder
that holds another run's manifest, or cannot be written, stops the job with one line.
"""

from __future__ import annotations

import json
import time
import uuid

import jax
import numpy as np
from etils.epath import Path

from score_sde import data_stats, parallel, storage
from score_sde import logging_utils as log
from score_sde.inference import Restorer, guidance_scale
from score_sde.sample_shards import (
    FORMATS,
    NOISE_STREAM,
    IndexedSampler,
    ShardLayout,
    existing_files,
    label_table,
    labels_of,
    local_rows,
    write_shard,
)
from score_sde.sampling import sampler_options_from_config

MANIFEST = "manifest.json"
GRID = "grid.png"


def sample(config, workdir: str | Path, eval_folder: str = "eval") -> Path:
    """Write config.sampling.num_samples samples (see the module docstring); the output folder."""
    s = config.sampling
    fmt = str(s.get("output_format", "npz")).lower()
    if fmt not in FORMATS:
        raise ValueError(f"config.sampling.output_format={fmt!r}; choose one of {FORMATS}")
    layout = ShardLayout(int(s.get("num_samples", 64)), int(s.get("batch_size", 64)),
                         jax.process_count())
    r = Restorer(config, workdir)
    try:
        state, step = r.restore(r.chosen_step())
        out = storage.path(s.get("output_dir", "") or
                           Path(workdir) / eval_folder / f"samples_step_{step}")
        # built (not compiled) first: a bad batch size or class label stops before any file
        sampler = IndexedSampler(config, r.sde, r.eps, r.model, r.mesh, layout.batch_size,
                                 data_stats=data_stats.load(r.workdir))
        check_output_dir(out, manifest(config, workdir, step, layout, fmt))
        log.say(f"Sampling {layout.num_samples} images from the checkpoint at step {step} "
                f"with config.sampling.method={config.sampling.method!r} into {out}")
        start = time.perf_counter()
        new, nfe = _run(sampler, state.ema_params, layout, fmt, label_table(config), out)
        seconds = time.perf_counter() - start
    finally:
        r.close()
    if str(config.data.dataset).lower() == "digits" and fmt != "png" and log.is_main():
        _report_digits_fd(out)
    drawn = (f"{new} drawn now in {seconds:.1f} s incl. compilation, {nfe} network evaluations "
             "each" if new else "all were on disk already")
    log.say(f"{layout.num_samples} samples in {out} ({drawn})")
    return out


def _run(sampler: IndexedSampler, params, layout: ShardLayout, fmt: str,
         table: np.ndarray | None, out: Path) -> tuple[int, int | None]:
    """Sample every round whose files are not all on disk yet (on some host) and write this
    host's shards; (samples drawn, network evaluations per sample)."""
    me = jax.process_index()
    have = existing_files(out) | ({GRID} if (out / GRID).exists() else set())
    todo = [k for k in range(layout.rounds)
            if not parallel.all_true(_files(layout, k, me, fmt, table) <= have)]
    new = sum(len(layout.shard(k, p)) for k in todo for p in range(layout.process_count))
    bar = log.progress(total=layout.num_samples, desc="sampling", unit="img",
                       initial=layout.num_samples - new)
    nfe = None
    try:
        for k in todo:
            images, nfe = sampler(params, layout.batch_indices(k, me))
            indices = layout.shard(k, me)
            images = log.to_uint8(local_rows(images))[:len(indices)]  # rows past N: padding
            if len(indices):
                write_shard(out, layout, fmt, images, indices, labels_of(table, indices))
            if k == 0 and me == 0:
                log.save_image_grid(out / GRID, images[:64])
            bar.update(sum(len(layout.shard(k, p)) for p in range(layout.process_count)))
    finally:
        bar.close()
    return new, nfe


def _files(layout: ShardLayout, k: int, process: int, fmt: str, table) -> set[str]:
    """The files a host writes in round k (process 0's first round also writes the grid)."""
    indices = layout.shard(k, process)
    files = set(layout.files(indices, labels_of(table, indices), fmt)) if len(indices) else set()
    return files | {GRID} if k == 0 and process == 0 else files


# ----------------------------------------------------------------------------- manifest


def manifest(config, workdir, step: int, layout: ShardLayout, fmt: str) -> dict:
    """What the files of a job depend on; a restarted job must find the same."""
    method, options = sampler_options_from_config(config)
    table = label_table(config)
    return {
        "checkpoint": {"workdir": str(workdir), "step": int(step)},
        "num_samples": layout.num_samples,
        "seed": int(config.seed),
        "noise": f"sample i: jax.random.fold_in(jax.random.PRNGKey(seed + {NOISE_STREAM}), i)",
        "sampler": {"method": method, **{k: _plain(v) for k, v in options.items()}},
        "guidance_scale": guidance_scale(config),
        "class_labels": None if table is None else "sample i: label_table[i % len(label_table)]",
        "label_table": None if table is None else [int(c) for c in table],
        "output_format": fmt,
        "batch_size": layout.batch_size,
        "processes": layout.process_count,
        "config": _without_output_dir(json.loads(config.to_json_best_effort())),
    }


def _without_output_dir(config: dict) -> dict:
    """The config minus sampling.output_dir: a folder moved elsewhere is still the same run."""
    config["sampling"].pop("output_dir", None)
    return config


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def check_output_dir(out: Path, expected: dict) -> None:
    """Create the folder and write the manifest (process 0), or check the one that is there.

    One clear error when the folder cannot be written or holds another run's files.
    """
    expected = json.loads(json.dumps(expected))  # as it reads back from the file
    path = out / MANIFEST
    try:
        out.mkdir(parents=True, exist_ok=True)
        found = storage.read_json(path) if path.exists() else None
        if found is None and (existing_files(out) or (out / GRID).exists()):
            raise FileExistsError(f"config.sampling.output_dir={out} holds sample files but no "
                                  f"{MANIFEST} (not a run of --mode sample, or an older one); "
                                  "give an empty or new folder")
        if log.is_main():
            _remove_partial_files(out)
        if found is None and log.is_main():
            probe = out / f".write_test.{uuid.uuid4().hex}"
            probe.write_text("")
            probe.unlink()
            storage.write_json(path, expected)
    except (PermissionError, NotADirectoryError, FileNotFoundError) as e:
        raise OSError(f"config.sampling.output_dir={out} cannot be written "
                      f"({e.strerror or e}); give a folder this job can write") from e
    if found is not None and found != expected:
        diffs = _differences(found, expected)
        raise FileExistsError(
            f"config.sampling.output_dir={out} holds the files of another run (its {MANIFEST} "
            f"differs in {', '.join(diffs[:4])}{' ...' if len(diffs) > 4 else ''}); give "
            "another output_dir, or delete that folder to start again")


def _remove_partial_files(out: Path) -> None:
    """Delete the temporary files of writes that a killed job left unfinished
    (storage.write_bytes' `.NAME.tmp-*`), so a resumed job ends with exactly the files of an
    uninterrupted one. Runs before the first collective, so no host is writing yet."""
    for pattern in (".*.tmp-*", "png/.*.tmp-*", "png/*/.*.tmp-*"):
        for p in out.glob(pattern):
            p.unlink(missing_ok=True)


def _differences(old, new, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ, as 'key: old -> new'."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new))
                for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def _report_digits_fd(out: Path) -> None:
    """One line: this host's samples scored against the test digits (digits FD, a random
    feature space's FD, KID, precision / recall), each beside its floor for as many real
    digits (score_sde.metrics.digits_quality)."""
    from score_sde.metrics.digits_quality import MIN_SAMPLES, digits_quality

    shards = sorted(out.glob("samples_*.npz"))
    images = np.concatenate([storage.load_npz(p)["samples"] for p in shards])  # uint8
    if len(images) < MIN_SAMPLES:
        return
    log.say(digits_quality(images).summary())
