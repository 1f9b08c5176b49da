"""`--mode predict` and `--mode interpolate`: clips completed from given frames.

    python -m score_sde.main --config configs/video/moving_digits.py --workdir runs/video \\
        --mode predict [--input clips.npz] [--config.video.predict_mask=past:2] \\
        [--config.video.rollout_frames=32]

The first config.video.num_clips clips of --input (an .npz of uint8 clips (N, T, H, W[, C]),
or a folder of <clip>/<frame>.png folders), else of the test split, give the frames that
config.video.predict_mask (predict) or config.video.interpolate_mask (interpolate) selects
(forms: score_sde/video/masks.py); the EMA weights of the newest checkpoint (or
config.eval.ckpt) generate the others with config.sampling's sampler. With
config.video.rollout_frames longer than the network's clip, blocks are rolled out
autoregressively, each given the last config.video.rollout_context frames. Into
workdir/<eval_folder>/<mode>_step_<step>/:

    <mode>.npz / .png / .gif   the results ('clips' uint8, 'truth', 'mask'): PNG one strip per
                               clip, GIF all clips playing
    truth.png / .gif           the input clips, for comparison
    metrics.json               PSNR of the generated frames against the input's, and that of
                               repeating the last given frame (where the input has them)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils.epath import Path

from score_sde import logging_utils as log
from score_sde import storage
from score_sde.data import clips as clip_data
from score_sde.data import get_data_inverse_scaler, get_data_scaler, get_source
from score_sde.inference import Restorer
from score_sde.metrics.frame_quality import psnr as frame_psnr
from score_sde.models.video import num_frames
from score_sde.video import clip_io
from score_sde.video.masks import check_mask, parse_mask
from score_sde.video.rollout import check_rollout, rollout
from score_sde.video.sampling import block_sampler

MASK_FIELDS = {"predict": "predict_mask", "interpolate": "interpolate_mask"}


def predict(config, workdir: str | Path, input: str | None = None,
            eval_folder: str = "eval") -> Path:
    """--mode predict (module docstring); returns the output folder."""
    return complete(config, workdir, "predict", input, eval_folder)


def interpolate(config, workdir: str | Path, input: str | None = None,
                eval_folder: str = "eval") -> Path:
    """--mode interpolate (module docstring); returns the output folder."""
    return complete(config, workdir, "interpolate", input, eval_folder)


def _lengths(config) -> tuple[int, int, int]:
    """(network frames T, frames to produce, roll-out context)."""
    frames, video = num_frames(config), config.video
    total = int(video.get("rollout_frames", 0) or 0) or frames
    context = int(video.get("rollout_context", min(4, frames - 1)))
    if total > frames:
        check_rollout(total, frames, context)
    if total < frames:
        raise ValueError(f"config.video.rollout_frames={total} is shorter than the network's "
                         f"clip (config.data.num_frames={frames}); give 0 or at least {frames}")
    return frames, total, context


def input_clips(config, input: str | None, n: int, length: int, want: int) -> np.ndarray:
    """n clips (n, length..want frames, H, W, C) float in [0, 1]: of --input, else the test
    split's first n (want frames where its clips are that long); one line when there are
    fewer clips, or fewer than `length` frames."""
    if input:
        path = storage.path(input)
        if path.is_dir():
            source_config = ml_collections.ConfigDict(config.to_dict())
            source_config.data.data_dir, source_config.data.num_frames = input, length
            source = clip_data.frame_folder_source(source_config, "test")
            clips = [source[i]["image"] for i in range(min(n, len(source)))]
            clips, levels = np.stack(clips) if clips else np.zeros((0, length)), 256
        else:
            clips, levels = clip_data.load_npz_clips(input), 256
    else:
        clips, levels = _test_clips(config, n, length, want)
    where = input or f"the test split of {config.data.dataset}"
    if len(clips) < n:
        raise ValueError(f"{where} has {len(clips)} clips; config.video.num_clips={n}")
    if clips.shape[1] < length:
        raise ValueError(f"the clips of {where} have {clips.shape[1]} frames, fewer than the "
                         f"{length} this mode needs (config.data.num_frames / "
                         "config.video.rollout_frames)")
    size = (int(config.data.image_size),) * 2 + (int(config.data.num_channels),)
    if clips.shape[2:] != size:
        raise ValueError(f"the clips of {where} have frames of {clips.shape[2:]}; the model "
                         f"takes {size} (config.data.image_size, num_channels)")
    return clips[:n].astype(np.float32) / (levels - 1)


def _test_clips(config, n: int, length: int, want: int) -> tuple[np.ndarray, int]:
    """The test split's first n clips, `want` frames long if they are, else `length`."""
    for frames in dict.fromkeys((want, length)):
        source_config = ml_collections.ConfigDict(config.to_dict())
        source_config.data.num_frames = frames
        source = get_source(source_config, "test")
        try:
            clips = [source[i]["image"] for i in range(min(n, len(source)))]
        except ValueError:  # the clips are shorter than `want` frames
            if frames == length:
                raise
            continue
        return (np.stack(clips) if clips else np.zeros((0, frames))), source.levels
    raise AssertionError("unreachable")


def complete(config, workdir: str | Path, kind: str, input: str | None = None,
             eval_folder: str = "eval") -> Path:
    """Given frames in, the other frames generated (module docstring)."""
    field = MASK_FIELDS[kind]
    frames, total, context = _lengths(config)
    n = int(config.video.get("num_clips", 16))
    mask = check_mask(parse_mask(config.video.get(field, ""), frames, f"config.video.{field}"),
                      n, frames)
    truth = input_clips(config, input, n, frames, total)
    r = Restorer(config, workdir)
    try:
        state, step = r.restore(r.chosen_step())
        sample_block = block_sampler(config, r.sde, r.eps, r.model, state.ema_params, n)
    finally:
        r.close()
    log.say(f"{kind}: {n} clips of {total} frames given {config.video.get(field)!r} with the "
            f"checkpoint at step {step} ({config.sampling.method})")
    observed = jnp.asarray(get_data_scaler(config)(truth[:, :frames]))
    rng = jax.random.PRNGKey(int(config.seed) + 7)
    out = rollout(sample_block, rng, total, context, observed, jnp.asarray(mask))
    result = np.clip(np.asarray(get_data_inverse_scaler(config)(out)), 0.0, 1.0)
    return _write(config, workdir, eval_folder, kind, step, result, truth, mask)


def _write(config, workdir, eval_folder: str, kind: str, step: int, result: np.ndarray,
           truth: np.ndarray, mask: np.ndarray) -> Path:
    out = storage.path(workdir) / eval_folder / f"{kind}_step_{step}"
    if not log.is_main():
        return out
    out.mkdir(parents=True, exist_ok=True)
    clip_io.write_clips(out, kind, result, truth=clip_io.as_uint8(truth), mask=mask)
    clip_io.write_clips(out, "truth", truth)
    metrics = _psnr_summary(result, truth, mask)
    storage.write_json(out / "metrics.json", metrics)
    log.say(f"Wrote {len(result)} clips to {out}" + "".join(
        f", {k}={v:.2f}" for k, v in metrics.items()))
    return out


def _psnr_summary(result: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict:
    """Mean PSNR of the generated frames that the input also has, and of the last given frame
    repeated in their place (0 given frames: no baseline)."""
    frames = min(result.shape[1], truth.shape[1])
    gen = ~np.concatenate([mask, np.zeros((len(mask), frames - mask.shape[1]), bool)], 1)
    gen = gen[:, :frames]
    if not gen.any():
        return {}
    psnr = frame_psnr(result[:, :frames], truth[:, :frames])
    out = {"psnr": float(psnr[gen].mean())}
    if mask.any():
        last = np.asarray([truth[i, np.flatnonzero(mask[i])[-1]] for i in range(len(mask))])
        copy = frame_psnr(np.repeat(last[:, None], frames, 1), truth[:, :frames])
        out["psnr_copy_last_given"] = float(copy[gen].mean())
    return out
