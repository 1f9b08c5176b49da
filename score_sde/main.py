"""Command line: `python -m score_sde.main --config CONFIG --workdir DIR --mode MODE`.

Modes (the MODES table; other modules add theirs with `@register_mode(name)`):
  train       train (resuming from the newest checkpoint in workdir)
  eval        loss / bits/dim / samples (+ eval hooks) of the snapshots chosen by config.eval
  sample      config.sampling.num_samples samples of the newest (or config.eval.ckpt)
              checkpoint as .npz shards / PNGs, sharded over hosts, resumable
  likelihood  bits/dim of the test split
  convert     a published checkpoint (--init_from_published PATH) -> workdir/checkpoints/0
  fid_stats   reference statistics of a dataset split for FID/KID/IS (digits FD on digits)
  inpaint     fill the masked pixels of --input images (--mask); grid input | observed | result
  colorize    colour the grey version of --input images (colour models)
  edit        SDEdit: perturb --input images to time --t0 and solve back
  restore     restore --input images degraded by --task (an operator preset), or a given
              --observation, by posterior sampling (--restore_method, --nfe, --sigma_y);
              PSNR, SSIM, digits FD (--lpips_weights: LPIPS) beside simple baselines
  predict     video: the frames after config.video.predict_mask's given ones, for --input
              clips (or test clips), rolled out to config.video.rollout_frames; GIF/PNG/npz
  interpolate video: the frames between config.video.interpolate_mask's given ones
  train_classifier  a noise-conditional classifier for classifier guidance (config.classifier)
  optimize_grid  the time grid of config.sampling.method / nfe fitted to the checkpoint
              (workdir/grids/*.json; sample with --config.sampling.grid=file:PATH)
  distill     consistency distillation of a CD config from --teacher_workdir (or a published
              checkpoint, --init_from_published); consistency training is --mode train

Config values are overridden on the command line, e.g. `--config.training.n_iters=2000`.
Multi-host: --coordinator_address/--num_processes/--process_id, or --distributed to read the
cluster environment (SLURM, Open MPI, Cloud TPU); a detected cluster environment also starts it.

A mistake or a failure of the environment (a missing file, an unwritable workdir, a full disk,
a corrupt checkpoint, a bad config value) ends in one line `score_sde: error: ...` and exit
status 1 (the traceback with --traceback); an unexpected error shows its traceback.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
import uuid
from collections.abc import Callable

from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from score_sde.registry import Registry

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (get_config()).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
flags.DEFINE_string("mode", "train", "What to run; one of the MODES table (see --helpfull).")
flags.DEFINE_string("eval_folder", "eval", "Sub-folder of workdir for evaluation outputs.")
flags.DEFINE_string("init_from_published", None,
                    "A checkpoint of the published score_sde code: the starting weights of "
                    "--mode train, or what --mode convert converts.")
flags.DEFINE_string("teacher_workdir", None,
                    "--mode distill: the workdir of the trained score model to distill.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
flags.DEFINE_bool("distributed", False,
                  "Call jax.distributed.initialize() from the cluster environment.")
flags.DEFINE_bool("traceback", False, "Show the full traceback of errors.")
flags.DEFINE_float("progress_every_secs", None,
                   "When stderr is not a terminal (SLURM .out, nohup): seconds between the "
                   "plain progress lines (default $SCORE_SDE_PROGRESS_SECS or 60).")
flags.DEFINE_string("compilation_cache", None,
                    "Directory of JAX's persistent compilation cache (or set "
                    "JAX_COMPILATION_CACHE_DIR): reruns and resumed jobs load compiled "
                    "programs instead of compiling them again.")
flags.DEFINE_string("input", None, "Images to edit: a PNG, a folder of PNGs or an .npz "
                    "(default: the first --num_images test images); clips to complete "
                    "(predict / interpolate): an .npz or a folder of frame folders.")
flags.DEFINE_string("mask", "right_half", "Inpainting mask: a PNG/.npz (1 = known pixel) or one "
                    "of left_half, right_half, top_half, bottom_half, center, random.")
flags.DEFINE_float("t0", 0.5, "SDEdit start time in (0, T].")
flags.DEFINE_float("noise_std", 0.0, "SDEdit: Gaussian noise added to the inputs first.")
flags.DEFINE_integer("num_images", 16, "Number of images for inpaint / colorize / edit / "
                     "restore.")
flags.DEFINE_string("task", "sr4_bicubic", "--mode restore: the degradation, an operator preset "
                    "of score_sde.inverse.OPERATOR_PRESETS (sr4_bicubic, gaussian_blur, "
                    "random_inpaint, denoise, mri_x4, ct_18, ...).")
flags.DEFINE_string("observation", None, "--mode restore: an .npz of already degraded "
                    "observations (key 'observation', the operator's observation shape) instead "
                    "of degrading --input.")
flags.DEFINE_string("restore_method", None, "--mode restore: the posterior sampler "
                    "(score_sde.inverse.POSTERIOR_METHODS; default config.restore.method, else "
                    "by the operator: ddrm with an SVD, pigdm if linear, else daps).")
flags.DEFINE_integer("nfe", None, "--mode restore: the budget of network passes (default 100).")
flags.DEFINE_float("sigma_y", None, "--mode restore: the observation noise's std in the data's "
                   "units (default 0.05 on [-1, 1]).")
flags.DEFINE_integer("restore_samples", None, "--mode restore: posterior samples per image; "
                     "more than 1 writes their mean (the least-squares estimate) and per-pixel "
                     "std (default config.restore.samples or 1).")
flags.DEFINE_string("lpips_weights", None, "--mode restore: an LPIPS weights .npz "
                    "(score_sde/lpips.py, scripts/convert_lpips_weights.py) to add LPIPS to "
                    "the report (default config.restore.lpips_weights; none: no LPIPS).")
flags.DEFINE_string("split", "train", "Dataset split of --mode fid_stats.")
flags.mark_flags_as_required(["config", "workdir"])

Mode = Callable[[object, str], object]
MODES: Registry[Mode] = Registry("mode", field="--mode")

# Errors about the user's input or the environment that read as one message: OSError covers
# missing files, permissions, full disks, checkpoints.CheckpointError, datasets'
# DatasetNotFoundError and the workdir hold; FloatingPointError covers train.NonFiniteLossError.
USER_ERRORS = (ValueError, OSError, FloatingPointError, ImportError, IndexError)
# Modes that create the workdir when it does not exist (the others read a trained one).
CREATES_WORKDIR = ("train", "convert", "train_classifier", "distill")


def register_mode(name: str) -> Callable[[Mode], Mode]:
    """Decorator: `fn(config, workdir)` becomes `--mode name`."""
    def add(fn: Mode) -> Mode:
        MODES[name] = fn
        return fn

    return add


@register_mode("train")
def _train(config, workdir):
    from score_sde import train

    return train.train(config, workdir, init_from_published=FLAGS.init_from_published)


@register_mode("distill")
def _distill(config, workdir):
    from score_sde import train

    return train.distill(config, workdir, teacher_workdir=FLAGS.teacher_workdir,
                         init_from_published=FLAGS.init_from_published)


@register_mode("eval")
def _eval(config, workdir):
    from score_sde import evaluate, sample_quality  # noqa: F401  (registers the metrics hook)

    return evaluate.evaluate(config, workdir, FLAGS.eval_folder)


@register_mode("sample")
def _sample(config, workdir):
    from score_sde import generate

    return generate.sample(config, workdir, FLAGS.eval_folder)


@register_mode("likelihood")
def _likelihood(config, workdir):
    from score_sde import evaluate

    return evaluate.likelihood(config, workdir, FLAGS.eval_folder)


@register_mode("convert")
def _convert(config, workdir):
    from score_sde import evaluate

    if not FLAGS.init_from_published:
        raise ValueError("--mode convert needs --init_from_published PATH (a checkpoint of the "
                         "published score_sde code)")
    return evaluate.convert(config, workdir, FLAGS.init_from_published)


@register_mode("fid_stats")
def _fid_stats(config, workdir):
    from score_sde import sample_quality

    return sample_quality.fid_stats(config, workdir, FLAGS.eval_folder, FLAGS.split)


@register_mode("inpaint")
def _inpaint(config, workdir):
    from score_sde import editing_modes

    return editing_modes.inpaint(config, workdir, input=FLAGS.input, mask=FLAGS.mask,
                                 n=FLAGS.num_images)


@register_mode("colorize")
def _colorize(config, workdir):
    from score_sde import editing_modes

    return editing_modes.colorize(config, workdir, input=FLAGS.input, n=FLAGS.num_images)


@register_mode("restore")
def _restore(config, workdir):
    from score_sde import editing_modes

    return editing_modes.restore(config, workdir, task=FLAGS.task, input=FLAGS.input,
                                 observation=FLAGS.observation, method=FLAGS.restore_method,
                                 nfe=FLAGS.nfe, sigma_y=FLAGS.sigma_y, n=FLAGS.num_images,
                                 lpips_weights=FLAGS.lpips_weights,
                                 samples=FLAGS.restore_samples)


@register_mode("edit")
def _edit(config, workdir):
    from score_sde import editing_modes

    return editing_modes.edit(config, workdir, input=FLAGS.input, t0=FLAGS.t0,
                              noise_std=FLAGS.noise_std, n=FLAGS.num_images)


@register_mode("predict")
def _predict(config, workdir):
    from score_sde import video_modes

    return video_modes.predict(config, workdir, input=FLAGS.input, eval_folder=FLAGS.eval_folder)


@register_mode("interpolate")
def _interpolate(config, workdir):
    from score_sde import video_modes

    return video_modes.interpolate(config, workdir, input=FLAGS.input,
                                   eval_folder=FLAGS.eval_folder)


@register_mode("train_classifier")
def _train_classifier(config, workdir):
    from score_sde import train_classifier

    return train_classifier.train(config, workdir)


@register_mode("optimize_grid")
def _optimize_grid(config, workdir):
    from score_sde import grid_search

    return grid_search.optimize(config, workdir)


def run(mode: str, config, workdir: str) -> object:
    """Run one mode by name (also usable from Python)."""
    if mode not in MODES:
        raise ValueError(f"--mode={mode!r} is not a mode; choose one of {sorted(MODES)}")
    return MODES[mode](config, workdir)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with one-line messages for a config file that does not exist and for a
    config override that does not exist (both before JAX starts)."""
    _check_config_file(argv)
    try:
        rest = FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"score_sde: error: {e}\nPass --helpshort or --helpfull to see help on flags.")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        bad = [a for a in argv[1:] if a.startswith("--config.")]
        detail = str(e).strip("'\"").replace("\\n", " ").replace("\n", " ").replace("\\'", "'")
        sys.exit(f"score_sde: error: a config override is not valid ({detail}); "
                 f"overrides given: {' '.join(bad)}")
    FLAGS.config  # noqa: B018  (loads the file now, not after JAX has started)
    return rest


def _check_config_file(argv: list[str]) -> None:
    """Exit with one line if --config names a file that does not exist."""
    values = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")]
    values += [argv[i + 1] for i, a in enumerate(argv[1:-1], 1) if a == "--config"]
    for value in values:
        path = value.split(":", 1)[0]  # config_flags allows `file.py:argument`
        if path and not os.path.isfile(path):
            sys.exit(f"score_sde: error: --config={value}: no such file (from {os.getcwd()}); "
                     "give the path of a config file, e.g. configs/digits.py")


def check_workdir(workdir: str, mode: str) -> None:
    """One clear error, before JAX starts, for a workdir that cannot be used: a file in the
    way, or (for the modes that create it) a directory that cannot be created or written."""
    path = epath.Path(workdir)
    try:
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "it is a file, not a directory", workdir)
        if mode in CREATES_WORKDIR:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f".write_test.{uuid.uuid4().hex}"
            probe.write_text("")
            probe.unlink()
    except OSError as e:
        reason = e.strerror or str(e)
        raise OSError(f"--workdir={workdir} cannot be used: {reason}"
                      + (f" ({e.filename})" if e.filename and str(e.filename) != workdir
                         else "")) from e


def one_line(error: BaseException) -> str:
    """An error as one line: an OSError as 'path: reason', others as their message."""
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.filename}: {error.strerror}"
    text = str(error).strip() or type(error).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def use_compilation_cache(directory: str) -> None:
    """Store every compiled XLA program that took over a second in `directory`."""
    import jax

    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        if FLAGS.mode not in MODES:
            raise ValueError(f"--mode={FLAGS.mode!r} is not a mode; choose one of "
                             f"{sorted(MODES)}")
        check_workdir(FLAGS.workdir, FLAGS.mode)  # before importing JAX (seconds)
        from score_sde import logging_utils, parallel

        if not FLAGS["verbosity"].present:  # keep library logs (orbax) off the console
            logging.set_verbosity(logging.WARNING)
            logging_utils.quiet_library_logs()
        if FLAGS.progress_every_secs is not None:
            logging_utils.PROGRESS_EVERY_SECS = FLAGS.progress_every_secs
        if FLAGS.compilation_cache:
            use_compilation_cache(FLAGS.compilation_cache)
        parallel.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                            auto=FLAGS.distributed)
        import jax

        if jax.process_index() == 0:
            print(f"score_sde: --mode={FLAGS.mode} --workdir={FLAGS.workdir} on "
                  f"{jax.device_count()} {jax.default_backend()} device(s), "
                  f"{jax.process_count()} process(es)", flush=True)
        run(FLAGS.mode, FLAGS.config, FLAGS.workdir)
    except USER_ERRORS as e:
        if FLAGS.traceback:
            traceback.print_exc()
        print(f"score_sde: error: {one_line(e)}", file=sys.stderr, flush=True)
        sys.exit(1)


def cli() -> None:
    """The `python -m score_sde.main` entry point."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    cli()
