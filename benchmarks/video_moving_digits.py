"""The video targets of issue 26 on moving digits, measured on three trained runs:

  spacetime  the default, configs/video/moving_digits.py
  concat     the same with config.model.name='video_concat' (MCVD's channel-stacking baseline)
  image      the same network at config.data.num_frames=1 and batch 64 (64 frames a step, as
             the video run sees): the image model on the same digits

Each run is trained beforehand (the page gives the commands and their wall time), e.g.

    python -m score_sde.main --config configs/video/moving_digits.py --workdir runs/video_st \\
        --mode train

and the figures come from their newest EMA weights with the config's sampler:

  unconditional  N clips of the network's length from the space-time run and N * T frames
                 from the image run against N test clips: per-frame digits FD, identity kept
                 along the clip, motion energy (score_sde.metrics.moving_digits); the floor is
                 a second set of N test clips (other seed) against the first
  prediction     test clips given their first 4 frames, the next 8 (two blocks of the 8-frame
                 network, each given 4): PSNR / SSIM against the truth, k samples per clip
                 (mean and best of k), beside repeating the last given frame and the concat run
  rollout        unconditional clips rolled out to 4x the training length (blocks given their
                 4 last frames): digits FD and motion of each 8-frame window against the first

    python benchmarks/video_moving_digits.py --spacetime runs/video_st --concat runs/video_concat \\
        --image runs/video_image --out benchmarks/results/video_moving_digits.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's package

from score_sde import run_config  # noqa: E402
from score_sde.data import get_data_inverse_scaler, get_data_scaler, get_source  # noqa: E402
from score_sde.inference import Restorer  # noqa: E402
from score_sde.metrics.frame_quality import prediction_scores  # noqa: E402
from score_sde.metrics.moving_digits import (  # noqa: E402
    moving_digits_metrics,
    moving_digits_reference,
)
from score_sde.video.rollout import rollout  # noqa: E402
from score_sde.video.sampling import block_sampler  # noqa: E402

GIVEN, PREDICTED = 4, 8


class Run:
    """A trained run's EMA weights and the jitted block sampler for n clips (cached per n)."""

    def __init__(self, workdir: str):
        self.config = run_config.load(workdir)
        r = Restorer(self.config, workdir)
        try:
            state, self.step = r.restore(r.chosen_step())
        finally:
            r.close()
        self.sde, self.eps, self.model, self.params = r.sde, r.eps, r.model, state.ema_params
        self.frames = int(self.config.data.num_frames)
        self._samplers = {}

    def sampler(self, n: int):
        if n not in self._samplers:
            self._samplers[n] = block_sampler(self.config, self.sde, self.eps, self.model,
                                              self.params, n)
        return self._samplers[n]

    def generate(self, rng, total: int, observed: np.ndarray, mask: np.ndarray,
                 context: int = GIVEN) -> np.ndarray:
        """Clips in [0, 1] of `total` frames from the first block's observed (in [0, 1]) and
        mask, rolled out with `context` carried frames."""
        n = len(observed)
        scaled = jnp.asarray(get_data_scaler(self.config)(observed[:, :self.frames]))
        out = rollout(self.sampler(n), rng, total, context, scaled, jnp.asarray(mask))
        return np.clip(np.asarray(get_data_inverse_scaler(self.config)(out)), 0.0, 1.0)

    def unconditional(self, rng, n: int, total: int | None = None) -> np.ndarray:
        shape = (n, self.frames, *self.clip_shape())
        return self.generate(rng, total or self.frames, np.zeros(shape, np.float32),
                             np.zeros((n, self.frames), bool))

    def clip_shape(self) -> tuple[int, int, int]:
        d = self.config.data
        return int(d.image_size), int(d.image_size), int(d.num_channels)


def test_clips(config, n: int, frames: int, seed_offset: int = 0) -> np.ndarray:
    """n test clips of `frames` frames in [0, 1]: the first n, or with seed_offset = j the
    j-th next n (a second real set, for the floor)."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.data.num_frames, c.data.test_clips = frames, max(n * (1 + seed_offset), 1)
    source = get_source(c, "test")
    picks = range(seed_offset * n, seed_offset * n + n)
    return np.stack([source[i]["image"] for i in picks]).astype(np.float32) / (source.levels - 1)


def _digits(run: Run) -> int:
    return int(run.config.data.get("num_digits", 1))


def unconditional(st: Run, image: Run | None, n: int, rng) -> dict:
    real = test_clips(st.config, n, st.frames)
    other = test_clips(st.config, n, st.frames, seed_offset=1)
    ref = moving_digits_reference(real, num_digits=_digits(st))
    start = time.perf_counter()
    clips = st.unconditional(rng, n)
    out = {"n_clips": n, "sample_seconds": round(time.perf_counter() - start, 1),
           "spacetime": moving_digits_metrics(clips, ref, num_digits=_digits(st)),
           "floor": moving_digits_metrics(other, ref, num_digits=_digits(st))}
    if image is not None:
        frames = image.unconditional(jax.random.fold_in(rng, 1), n * st.frames)
        as_clips = frames.reshape(n, st.frames, *frames.shape[2:])  # FD only: frames apart
        out["image"] = {"digits_fd": moving_digits_metrics(as_clips, ref,
                                                           num_digits=_digits(st))["digits_fd"]}
        out["fd_ratio_to_image"] = out["spacetime"]["digits_fd"] / out["image"]["digits_fd"]
    return out


def prediction(runs: dict[str, Run], n: int, k: int, rng) -> dict:
    """Past GIVEN -> next PREDICTED frames, k samples per clip, for each run and the copy."""
    st = runs["spacetime"]
    truth = test_clips(st.config, n, GIVEN + PREDICTED)
    target = truth[:, GIVEN:]
    copy = np.repeat(truth[:, None, GIVEN - 1:GIVEN], PREDICTED, axis=2)  # (n, 1, T, ...)
    out = {"n_clips": n, "samples_per_clip": k, "copy_last_frame": _scores(copy, target)}
    for index, (name, run) in enumerate(runs.items()):
        mask = np.broadcast_to(np.arange(run.frames) < GIVEN, (n * k, run.frames))
        observed = np.repeat(truth, k, axis=0)[:, :run.frames]
        start = time.perf_counter()
        clips = run.generate(jax.random.fold_in(rng, index), GIVEN + PREDICTED,
                             observed, mask)
        samples = clips[:, GIVEN:].reshape(n, k, PREDICTED, *clips.shape[2:])
        out[name] = _scores(samples, target)
        out[name]["seconds"] = round(time.perf_counter() - start, 1)
    return out


def _scores(samples: np.ndarray, target: np.ndarray) -> dict:
    s = prediction_scores(samples, target)
    return {key: (np.round(v, 3).tolist() if isinstance(v, np.ndarray) else v)
            for key, v in s.items()}


def rollout_quality(st: Run, n: int, factor: int, rng) -> dict:
    """Unconditional clips of factor x T frames: each T-frame window's digits FD and motion
    against real clips of T frames, and the last window's FD over the first's."""
    total = factor * st.frames
    clips = st.unconditional(rng, n, total)
    ref = moving_digits_reference(test_clips(st.config, n, st.frames), num_digits=_digits(st))
    windows = []
    for start in range(0, total, st.frames):
        m = moving_digits_metrics(clips[:, start:start + st.frames], ref,
                                  num_digits=_digits(st))
        windows.append({"frames": [start, start + st.frames], "digits_fd": m["digits_fd"],
                        "identity": m["identity"], "motion_ratio": m["motion_ratio"]})
    return {"n_clips": n, "frames": total, "windows": windows,
            "fd_last_over_first": windows[-1]["digits_fd"] / windows[0]["digits_fd"]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spacetime", required=True, help="workdir of the default video run")
    p.add_argument("--concat", help="workdir of the video_concat run")
    p.add_argument("--image", help="workdir of the one-frame (image) run")
    p.add_argument("--clips", type=int, default=256, help="clips per unconditional set")
    p.add_argument("--predict_clips", type=int, default=64)
    p.add_argument("--samples_per_clip", type=int, default=4)
    p.add_argument("--rollout_factor", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/video_moving_digits.json"))
    args = p.parse_args(argv)
    runs = {"spacetime": Run(args.spacetime)}
    if args.concat:
        runs["concat"] = Run(args.concat)
    image = Run(args.image) if args.image else None
    rng = jax.random.PRNGKey(args.seed)
    result = {"steps": {name: run.step for name, run in runs.items()},
              "sampler": f"{runs['spacetime'].config.sampling.method}, nfe "
                         f"{runs['spacetime'].config.sampling.get('nfe')}",
              "unconditional": unconditional(runs["spacetime"], image, args.clips,
                                             jax.random.fold_in(rng, 0)),
              "prediction": prediction(runs, args.predict_clips, args.samples_per_clip,
                                       jax.random.fold_in(rng, 1)),
              "rollout": rollout_quality(runs["spacetime"], args.clips, args.rollout_factor,
                                         jax.random.fold_in(rng, 2))}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
