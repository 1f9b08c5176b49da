"""Sample quality in the driver: reference statistics of a dataset and the eval-mode scores.

`--mode fid_stats` writes the reference statistics of config.data's split (mu, sigma, features)
to workdir/<eval_folder>/fid_stats_<dataset>_<split>.npz. Eval mode then scores every
evaluated checkpoint's sample .npz files: for the embedded digits data the offline metrics (no
file needed): digits FD against the train split, and the test-split metrics of
metrics.digits_quality, each with its floor for as many real digits (fd_classifier, fd_randconv,
kid_randconv, precision_randconv, recall_randconv, each with _floor and _floor_std); for moving
digits clips the moving-digits metric against as many test clips; FID / KID / IS against
config.eval.fid_stats with the Inception weights of config.eval.inception_weights (a file the
user supplies; nothing is downloaded) otherwise.
"""

from __future__ import annotations

import numpy as np
from etils.epath import Path  # local or gs:// paths alike

from score_sde import logging_utils as log
from score_sde import storage
from score_sde.data import get_data_inverse_scaler, get_dataset
from score_sde.eval_hooks import register_eval_hook, sample_files
from score_sde.metrics import stats


def _feature_kind(config) -> str:
    return "digits" if str(config.data.dataset).lower() == "digits" else "inception"


def _inception_weights(config) -> str:
    path = config.eval.get("inception_weights", "")
    if not path:
        raise FileNotFoundError(
            "config.eval.inception_weights is not set: FID/KID/IS need the standard FID "
            "Inception weights (pytorch-fid's pt_inception-2015-12-05 .pth, or its .msgpack from "
            "`python -m score_sde.metrics.inception IN.pth OUT.msgpack`)")
    return str(path)


def _images01(config, split: str):
    """The split's images in [0, 1], one batch at a time (this host's share)."""
    inverse = get_data_inverse_scaler(config)
    pipeline = get_dataset(config, split, shuffle=False, pad_last=True)
    for batch in pipeline.iterate():
        images = np.asarray(batch["image"])[np.asarray(batch["mask"], bool)]
        yield np.clip(np.asarray(inverse(images)), 0.0, 1.0)


def fid_stats(config, workdir: str | Path, eval_folder: str = "eval",
              split: str = "train") -> Path:
    """Write the reference statistics of config.data's `split` for the sample metrics."""
    kind = _feature_kind(config)
    out = storage.path(workdir) / eval_folder / f"fid_stats_{config.data.dataset}_{split}.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    log.say(f"Computing {kind} reference statistics of {config.data.dataset}/{split} -> {out}")
    weights = _inception_weights(config) if kind == "inception" else None
    stats.dataset_statistics(_images01(config, split), kind, inception_weights=weights,
                             out_path=out)
    return out


def _digits_quality(samples: np.ndarray) -> dict[str, float]:
    """The matched-floor digits metrics (metrics.digits_quality), also said in one line."""
    from score_sde.metrics.digits_quality import MIN_SAMPLES, digits_quality

    if len(samples) < MIN_SAMPLES:
        return {}
    report = digits_quality(samples)
    log.say(report.summary())
    return report.metrics()


def moving_digits_quality(config, clips: np.ndarray) -> dict[str, float]:
    """The moving-digits metric (metrics.moving_digits) of uint8 clips (N, T, H, W, 1) against
    the first N test clips: per-frame digits FD, identity along the clip, motion."""
    from score_sde.data import get_source
    from score_sde.metrics.moving_digits import moving_digits_metrics

    source = get_source(config, "test")
    n = min(len(clips), len(source))
    real = np.stack([source[i]["image"] for i in range(n)]).astype(np.float32)
    scores = moving_digits_metrics(clips.astype(np.float32) / 255.0, real / (source.levels - 1),
                                   num_digits=int(config.data.get("num_digits", 1)))
    log.say(f"moving digits: digits FD {scores['digits_fd']:.1f}, identity kept in "
            f"{scores['identity']:.0%} of clips (data {scores['identity_data']:.0%}), motion "
            f"{scores['motion_ratio']:.2f}x the data's ({n} clips each)")
    return scores


@register_eval_hook("sample_quality")
def score_samples(config, sample_dir: Path, step: int) -> dict[str, float]:
    """digits metrics, the moving-digits metric, or FID/KID/IS, of one checkpoint's samples
    (skipped without reference stats)."""
    files = sample_files(sample_dir)
    if not files:
        return {}
    samples = np.concatenate([storage.load_npz(f)["samples"] for f in files])
    kind = _feature_kind(config)
    if str(config.data.dataset).upper() == "MOVING_DIGITS":
        scores = moving_digits_quality(config, samples)
    elif kind == "digits":
        scores = {**stats.evaluate_samples(samples, None, "digits"), **_digits_quality(samples)}
    else:
        ref = config.eval.get("fid_stats", "")
        if not ref or not storage.path(ref).exists():
            log.say("No FID reference statistics (config.eval.fid_stats): run --mode fid_stats "
                    "and set config.eval.fid_stats to its .npz to get FID/KID/IS")
            return {}
        scores = stats.evaluate_samples(samples, ref, "inception",
                                        inception_weights=_inception_weights(config))
    return {f"eval/{k}": float(v) for k, v in scores.items()}
