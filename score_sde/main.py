"""Command line: `python -m score_sde.main --config CONFIG --workdir DIR --mode MODE`.

Modes (the MODES table; other modules add theirs with `@register_mode(name)`):
  train       train (resuming from the newest checkpoint in workdir)
  eval        loss / bits/dim / samples (+ eval hooks) of the snapshots chosen by config.eval
  sample      a grid of samples from the newest (or config.eval.ckpt) checkpoint
  likelihood  bits/dim of the test split
  convert     a published checkpoint (--init_from_published PATH) -> workdir/checkpoints/0
  fid_stats   reference statistics of a dataset split for FID/KID/IS (digits FD on digits)
  inpaint     fill the masked pixels of --input images (--mask); grid input | observed | result
  colorize    colour the grey version of --input images (colour models)
  edit        SDEdit: perturb --input images to time --t0 and solve back
  train_classifier  a noise-conditional classifier for classifier guidance (config.classifier)

Config values are overridden on the command line, e.g. `--config.training.n_iters=2000`.
Multi-host: --coordinator_address/--num_processes/--process_id, or --distributed to read the
cluster environment (SLURM, Open MPI, Cloud TPU); a detected cluster environment also starts it.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (get_config()).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
flags.DEFINE_string("mode", "train", "What to run; one of the MODES table (see --helpfull).")
flags.DEFINE_string("eval_folder", "eval", "Sub-folder of workdir for evaluation outputs.")
flags.DEFINE_string("init_from_published", None,
                    "A checkpoint of the published score_sde code: the starting weights of "
                    "--mode train, or what --mode convert converts.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
flags.DEFINE_bool("distributed", False,
                  "Call jax.distributed.initialize() from the cluster environment.")
flags.DEFINE_bool("traceback", False, "Show the full traceback of errors.")
flags.DEFINE_string("compilation_cache", None,
                    "Directory of JAX's persistent compilation cache (or set "
                    "JAX_COMPILATION_CACHE_DIR): reruns and resumed jobs load compiled "
                    "programs instead of compiling them again.")
flags.DEFINE_string("input", None, "Images to edit: a PNG, a folder of PNGs or an .npz "
                    "(default: the first --num_images test images).")
flags.DEFINE_string("mask", "right_half", "Inpainting mask: a PNG/.npz (1 = known pixel) or one "
                    "of left_half, right_half, top_half, bottom_half, center, random.")
flags.DEFINE_float("t0", 0.5, "SDEdit start time in (0, T].")
flags.DEFINE_float("noise_std", 0.0, "SDEdit: Gaussian noise added to the inputs first.")
flags.DEFINE_integer("num_images", 16, "Number of images for inpaint / colorize / edit.")
flags.DEFINE_string("split", "train", "Dataset split of --mode fid_stats.")
flags.mark_flags_as_required(["config", "workdir"])

Mode = Callable[[object, str], object]
MODES: dict[str, Mode] = {}

# Errors that are about the user's input (config, paths, data) and read as one message.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, FloatingPointError, ImportError,
               IndexError)


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


@register_mode("eval")
def _eval(config, workdir):
    from score_sde import evaluate, sample_quality  # noqa: F401  (registers the metrics hook)

    return evaluate.evaluate(config, workdir, FLAGS.eval_folder)


@register_mode("sample")
def _sample(config, workdir):
    from score_sde import evaluate

    return evaluate.sample(config, workdir, FLAGS.eval_folder)


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


@register_mode("edit")
def _edit(config, workdir):
    from score_sde import editing_modes

    return editing_modes.edit(config, workdir, input=FLAGS.input, t0=FLAGS.t0,
                              noise_std=FLAGS.noise_std, n=FLAGS.num_images)


@register_mode("train_classifier")
def _train_classifier(config, workdir):
    from score_sde import editing_modes

    return editing_modes.train_classifier(config, workdir)


def run(mode: str, config, workdir: str) -> object:
    """Run one mode by name (also usable from Python)."""
    if mode not in MODES:
        raise ValueError(f"--mode={mode!r} is not a mode; choose one of {sorted(MODES)}")
    return MODES[mode](config, workdir)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with a one-line message for a config override that does not exist."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"score_sde: error: {e}\nPass --helpshort or --helpfull to see help on flags.")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        bad = [a for a in argv[1:] if a.startswith("--config.")]
        detail = str(e).strip("'\"").replace("\\n", " ").replace("\n", " ").replace("\\'", "'")
        sys.exit(f"score_sde: error: a config override is not valid ({detail}); "
                 f"overrides given: {' '.join(bad)}")


def use_compilation_cache(directory: str) -> None:
    """Store every compiled XLA program that took over a second in `directory`."""
    import jax

    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:  # keep library INFO logs (orbax) off the console
        logging.set_verbosity(logging.WARNING)
    from score_sde import parallel

    if FLAGS.compilation_cache:
        use_compilation_cache(FLAGS.compilation_cache)
    try:
        if FLAGS.mode not in MODES:
            raise ValueError(f"--mode={FLAGS.mode!r} is not a mode; choose one of "
                             f"{sorted(MODES)}")
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
        print(f"score_sde: error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
