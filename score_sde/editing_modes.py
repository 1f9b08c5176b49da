"""Command-line modes for controllable generation: `fn(config, workdir, **flags)` each.

  inpaint           fill the unknown pixels of input images (mask: file or a named pattern)
  colorize          colour grey input images (needs num_channels >= 2)
  edit              SDEdit: perturb input images to t0 and solve back (denoise / enhance / edit)
  restore           restore degraded images by posterior sampling (score_sde.inverse): a task
                    (an operator preset: super-resolution, blur, inpainting, denoising, MRI, CT,
                    ...), a method, a budget of network passes and the observation noise

Inputs are a PNG file, a folder of PNGs, or an .npz (key 'images', 'samples' or its only array;
uint8 or floats in [0, 1], NHWC or NHW); without one, the first n images of the test split.
Each image mode restores the newest checkpoint in workdir (EMA weights) and writes
workdir/<folder>/<mode>.png (rows: input | mask or observation | results) and <mode>.npz.
"""

from __future__ import annotations

import time
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
from etils.epath import Path

from score_sde import controllable as C
from score_sde import inference, inverse, sampling, storage
from score_sde import logging_utils as log
from score_sde.data import (
    get_data_inverse_scaler,
    get_data_scaler,
    get_data_value_range,
    get_dataset,
)
from score_sde.inference import load_classifier_fn  # noqa: F401  (its former home)
from score_sde.inverse import report

MASKS = ("left_half", "right_half", "top_half", "bottom_half", "center", "random")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


# ------------------------------------------------------------------------------------ inputs


def _to_float(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    return images.astype(np.float32)


def _read_npz(path) -> np.ndarray:
    try:
        arrays = storage.load_npz(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise storage.UnreadableFileError(f"{path} is not a readable .npz file ({e})") from e
    keys = [k for k in ("images", "samples", "image") if k in arrays] or list(arrays)
    if len(keys) != 1 and keys[0] not in ("images", "samples", "image"):
        raise ValueError(f"{path} holds {list(arrays)}; name the array 'images'")
    return arrays[keys[0]]


def _read_array(path) -> np.ndarray:
    """Images from an .npz, a PNG/JPEG file or a folder of them (local or gs://)."""
    if path.suffix == ".npz":
        return _read_npz(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no PNG/JPEG images in the folder {path}")
        return np.stack([storage.read_image(p) for p in files])
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return storage.read_image(path)[None]
    raise ValueError(f"input {path}: use a PNG/JPEG file, a folder of them, or an .npz")


def _fit_channels(images: np.ndarray, channels: int, what: str) -> np.ndarray:
    if images.ndim == 3:
        images = images[..., None]
    c = images.shape[-1]
    if c == channels:
        return images
    if c == 1:
        return np.repeat(images, channels, axis=-1)
    if channels == 1:
        return images[..., :3].mean(-1, keepdims=True)
    if c == 4 and channels == 3:  # drop alpha
        return images[..., :3]
    raise ValueError(f"{what} has {c} channels; the model has {channels}")


def load_images(config, path: str | None = None, n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Input images (N, H, W, C) in [0, 1] and labels (N,) (-1 when unknown)."""
    d = config.data
    if path is None:
        batch = get_dataset(config, "test", batch_size=n, shuffle=False).batch(0)
        labels = batch.get("label", np.full(n, -1))
        return batch["image"], np.asarray(labels, np.int32)
    p = storage.path(path)
    if not p.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    images = _fit_channels(_to_float(_read_array(p)), d.num_channels, f"input {path}")
    if images.shape[1:3] != (d.image_size, d.image_size):
        raise ValueError(f"input {path} has images of {images.shape[1:3]}; the model takes "
                         f"{d.image_size}x{d.image_size} (config.data.image_size)")
    return images[:n], np.full(min(len(images), n), -1, np.int32)


def make_mask(kind: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A named mask (N, H, W, 1), 1 = known: one of MASKS."""
    n, h, w = shape[:3]
    m = np.ones((n, h, w, 1), np.float32)
    if kind == "left_half":
        m[:, :, : w // 2] = 0
    elif kind == "right_half":
        m[:, :, w // 2:] = 0
    elif kind == "top_half":
        m[:, : h // 2] = 0
    elif kind == "bottom_half":
        m[:, h // 2:] = 0
    elif kind == "center":
        m[:, h // 4: h - h // 4, w // 4: w - w // 4] = 0
    elif kind == "random":
        m = (np.random.default_rng(seed).random((n, h, w, 1)) < 0.5).astype(np.float32)
    else:
        raise ValueError(f"mask={kind!r} is not a file or a known mask; choose one of {MASKS}")
    return m


def load_mask(mask: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A mask file (PNG/npz; nonzero = known) or a named pattern, as (N, H, W, 1) in {0, 1}."""
    if mask in MASKS or not storage.path(mask).exists():
        return make_mask(mask, shape, seed)
    m = _fit_channels(_to_float(_read_array(storage.path(mask))), 1, f"mask {mask}")
    m = (m > 0.5).astype(np.float32)
    if m.shape[1:3] != tuple(shape[1:3]):
        raise ValueError(f"mask {mask} is {m.shape[1:3]}, the images {tuple(shape[1:3])}")
    return np.broadcast_to(m, shape[:3] + (1,)) if len(m) == 1 else m[: shape[0]]


# ------------------------------------------------------------------------------ the network


class _Model:
    """The restored EMA score network of a workdir (see inference.Restorer)."""

    def __init__(self, config, workdir: str | Path):
        r = inference.Restorer(config, workdir)
        try:
            state, self.step = r.restore(r.chosen_step())
        finally:
            r.close()
        self.config, self.sde, self.eps, self.model = config, r.sde, r.eps, r.model
        self.params = jax.device_get(state.ema_params)

    def score_fn(self, params, labels: jax.Array | None, w: float):
        """Unconditional (labels None: the null label), conditional, or CFG with weight w."""
        return inference.sampling_fn(self.config, self.sde, self.model, params, labels, w)


def _merge_options(config) -> tuple[str, dict]:
    """The step-merging sampler and its options from config.sampling.

    The adaptive ODE sampler cannot merge: PC is used instead. PC without a corrector keeps the
    replacement method's bias, so it becomes the published inpainter's reverse_diffusion +
    langevin.
    """
    method = str(config.sampling.get("method", "pc")).lower()
    if method not in C.MERGE_SAMPLERS:
        log.say(f"config.sampling.method={method!r} cannot merge observations per step; "
                "inpainting/colorization use the PC sampler")
        method = "pc"
    method, options = sampling.sampler_options_from_config(config, method)
    if method == "pc" and options.get("corrector", "none") == "none":
        log.say("inpainting/colorization with PC: reverse_diffusion predictor + langevin "
                "corrector (without a corrector the merged samples are biased)")
        options.update(predictor="reverse_diffusion", corrector="langevin")
    return method, options


def _write(workdir, folder: str, name: str, columns: list[np.ndarray], **arrays) -> Path:
    """A PNG grid with one row per input: columns side by side; plus an .npz of the arrays."""
    out = storage.path(workdir) / folder
    c = max(col.shape[-1] for col in columns)
    cols = [np.broadcast_to(col, col.shape[:3] + (c,)) for col in columns]
    images = np.stack(cols, axis=1).reshape((-1,) + cols[0].shape[1:])
    grid = log.image_grid(np.clip(images, 0.0, 1.0), nrow=len(cols))
    path = log.save_image_grid(out / f"{name}.png", grid[None].astype(np.float32) / 255.0,
                               scale=max(1, 512 // max(grid.shape[:2])))
    storage.save_npz(out / f"{name}.npz", **{k: np.asarray(v) for k, v in arrays.items()})
    return path


# ----------------------------------------------------------------------------------- modes


def _run(config, workdir, images, build, seed: int):
    """Restore the model, run `build(model, shape)` -> fn(rng, score_fn) on the inputs."""
    model = _Model(config, workdir)
    scaler = get_data_scaler(config)
    inverse = get_data_inverse_scaler(config)
    labels = sampling.class_labels_from_config(config, len(images),
                                               every_class_by_default=False)
    w = inference.guidance_scale(config)
    fn = build(model, images.shape, scaler)

    @jax.jit
    def run(params, rng):
        x, nfe = fn(rng, model.score_fn(params, labels, w))
        return jnp.clip(inverse(x), 0.0, 1.0), nfe

    start = time.perf_counter()
    x, nfe = run(model.params, jax.random.PRNGKey(seed))
    x = np.asarray(x)
    log.say(f"{int(nfe)} network evaluations, {time.perf_counter() - start:.1f} s "
            f"(incl. compilation), checkpoint step {model.step}")
    return x


def inpaint(config, workdir: str | Path, input: str | None = None, mask: str = "right_half",
            n: int = 16, folder: str = "controllable", seed: int = 0) -> Path:
    """Inpaint the unknown (mask == 0) pixels of the inputs; grid: input | observed | result."""
    images, _ = load_images(config, input, n)
    m = load_mask(mask, images.shape, seed)
    name, options = _merge_options(config)

    def build(model, shape, scaler):
        inpainter = C.get_inpainter(model.sde, shape, name, eps=model.eps, **options)
        data = scaler(jnp.asarray(images))
        return lambda rng, score_fn: inpainter(rng, score_fn, data, m)

    result = _run(config, workdir, images, build, seed)
    observed = images * m + 0.5 * (1.0 - m)
    path = _write(workdir, folder, "inpaint", [images, observed, result],
                  inputs=images, masks=m, results=result)
    log.say(f"Inpainting grid (input | observed | result): {path}")
    return path


def colorize(config, workdir: str | Path, input: str | None = None, n: int = 16,
             folder: str = "controllable", seed: int = 0) -> Path:
    """Colour the grey version of the inputs; grid: input | grey | result."""
    if int(config.data.num_channels) < 2:
        raise ValueError("--mode colorize needs a colour model (config.data.num_channels >= 2)")
    images, _ = load_images(config, input, n)
    grey = np.repeat(images.mean(-1, keepdims=True), images.shape[-1], axis=-1)
    name, options = _merge_options(config)

    def build(model, shape, scaler):
        colorizer = C.get_colorizer(model.sde, shape, name, eps=model.eps, **options)
        data = scaler(jnp.asarray(grey))
        return lambda rng, score_fn: colorizer(rng, score_fn, data)

    result = _run(config, workdir, images, build, seed)
    path = _write(workdir, folder, "colorize", [images, grey, result],
                  inputs=images, grey=grey, results=result)
    log.say(f"Colorization grid (input | grey | result): {path}")
    return path


def edit(config, workdir: str | Path, input: str | None = None, t0: float = 0.5,
         noise_std: float = 0.0, n: int = 16, folder: str = "controllable",
         seed: int = 0) -> Path:
    """SDEdit from time t0 with config.sampling's sampler; grid: input | guide | result.

    noise_std > 0 first corrupts the inputs with Gaussian noise (in [0, 1] units), the
    denoising use; strokes or rough edits come in as the input images themselves.
    """
    images, _ = load_images(config, input, n)
    guide = images
    if noise_std > 0:
        noise = np.random.default_rng(seed).normal(size=images.shape).astype(np.float32)
        guide = images + noise_std * noise

    def build(model, shape, scaler):
        x = scaler(jnp.asarray(guide))

        def factory(sde, shape, eps, **options):  # options: SDEdit's ts
            return sampling.get_sampler_from_config(config, sde, shape, eps, **options)

        return C.sdedit(factory, model.sde, x, float(t0), eps=model.eps)

    result = _run(config, workdir, images, build, seed)
    path = _write(workdir, folder, "edit", [images, np.clip(guide, 0, 1), result],
                  inputs=images, guides=guide, results=result)
    log.say(f"SDEdit grid (input | guide | result), t0={t0}: {path}")
    return path


# ---------------------------------------------------------------------------- restoration

def _restore_settings(config, method: str | None, nfe: int | None, sigma_y: float | None,
                      samples: int | None) -> tuple[str | None, int, float, int]:
    """(method, nfe, sigma_y, samples): the flags, else config.restore.*, else the defaults
    (method None: the operator's, inverse.default_method; sigma_y: the benchmark's 0.05 on
    [-1, 1], halved for data on [0, 1]; one sample)."""
    section = config.get("restore", {}) or {}
    method = method or section.get("method")
    method = None if method is None else str(method).lower()
    nfe = int(nfe or section.get("nfe") or 100)
    samples = int(samples or section.get("samples") or 1)
    if samples < 1:
        raise ValueError(f"restore: samples must be >= 1 (posterior samples per image), got "
                         f"{samples}")
    if sigma_y is None:
        sigma_y = section.get("sigma_y")
    if sigma_y is None:
        sigma_y = inverse.DEFAULT_SIGMA_Y * (1.0 if config.data.centered else 0.5)
    return method, nfe, float(sigma_y), samples


def _observation(config, operator, images, observation: str | None, sigma_y: float, seed: int):
    """(y in the data's scaling, truth images in [0, 1] or None): a given observation (.npz key
    'observation'), or the images degraded by the operator with a fixed seed."""
    if observation is not None:
        y = jnp.asarray(_read_npz(storage.path(observation)), jnp.float32)
        return operator.check_observation(y), None
    x = get_data_scaler(config)(jnp.asarray(images))
    return operator.degrade(jax.random.PRNGKey(seed + 1), x, sigma_y), images


def restore(config, workdir: str | Path, task: str = "sr4_bicubic", input: str | None = None,
            observation: str | None = None, method: str | None = None, nfe: int | None = None,
            sigma_y: float | None = None, n: int = 16, folder: str = "restore",
            seed: int = 0, lpips_weights: str | None = None, samples: int | None = None) -> Path:
    """Restore degraded images by posterior sampling (score_sde.inverse); grid: observation
    (its pseudo-inverse / back-projection) | result | truth when known. samples > 1 (default
    config.restore.samples, else 1) draws that many posterior samples per image: the result is
    their mean (the posterior mean's estimate, which minimises the expected squared error), and
    their per-pixel std is written too. Writes <folder>/<task>.png, <task>.npz (observation,
    results, truth, baseline_<name>; with samples > 1 also posterior_samples and
    posterior_std) and <task>.json: with a truth, the result's PSNR, SSIM, LPIPS
    (lpips_weights, or config.restore.lpips_weights) and digits FD (digits data) beside the
    same metrics of one posterior sample (samples > 1) and of the simple baselines
    (inverse.report: A^+ y, bicubic upsampling, y itself)."""
    d = config.data
    shape = (int(d.image_size), int(d.image_size), int(d.num_channels))
    operator = inverse.get_operator(task, shape)
    method, nfe, sigma_y, samples = _restore_settings(config, method, nfe, sigma_y, samples)
    method = method or inverse.default_method(operator, sigma_y)
    lpips_weights = lpips_weights or (config.get("restore", {}) or {}).get("lpips_weights")
    lpips_fn = report.lpips_distance(lpips_weights) if lpips_weights else None  # fail early
    images = None if observation is not None else load_images(config, input, n)[0]
    y, truth = _observation(config, operator, images, observation, sigma_y, seed)
    inverse_scaler = get_data_inverse_scaler(config)
    batch = samples * len(y)  # sample k of image i at k * len(y) + i

    def build(model, batch_shape, scaler):
        options = inverse.with_value_range(method, {}, get_data_value_range(config))
        sample = inverse.get_posterior_sampler(method, model.sde, operator, (batch,) + shape,
                                               sigma_y=sigma_y, nfe=nfe, eps=model.eps,
                                               **options)
        ys = jnp.concatenate([y] * samples)
        return lambda rng, score_fn: sample(rng, score_fn, ys)

    draws = _run(config, workdir, np.zeros((batch,) + shape, np.float32), build, seed)
    draws = draws.reshape((samples, len(y)) + shape)
    result = draws.mean(axis=0)
    seen = np.clip(np.asarray(inverse_scaler(_back_project(operator, y))), 0.0, 1.0)
    base = {k: np.clip(np.asarray(inverse_scaler(v), np.float32), 0.0, 1.0)
            for k, v in report.baselines(operator, y).items()}
    extra = ({"posterior_samples": draws, "posterior_std": draws.std(axis=0)}
             if samples > 1 else {})
    columns = [seen, result] + ([truth] if truth is not None else [])
    path = _write(workdir, folder, task, columns, observation=np.asarray(y), results=result,
                  **({"truth": truth} if truth is not None else {}), **extra,
                  **{f"baseline_{k}": v for k, v in base.items()})
    summary = {"task": task, "method": method, "nfe": nfe, "sigma_y": sigma_y,
               "num_images": len(y), "samples": samples}
    scores = {}
    if truth is not None:
        digits = str(d.dataset).upper() == "DIGITS"
        single = {"one sample": draws[0]} if samples > 1 else {}
        scores = report.restore_metrics({"result": result, **single, **base}, truth,
                                        lpips_fn=lpips_fn, digits=digits)
        summary.update(scores["result"], baselines={k: scores[k] for k in base},
                       **({"one_sample": scores["one sample"]} if single else {}))
    storage.write_json(storage.path(workdir) / folder / f"{task}.json", summary)
    what = f"mean of {samples} samples" if samples > 1 else "one sample"
    log.say(f"Restoration ({task}, {method}, {nfe} NFE, sigma_y {sigma_y:g}, {what}) grid "
            f"(observation | result{' | truth' if truth is not None else ''}): {path}")
    for line in report.format_report(scores) if scores else ():
        log.say("  " + line)
    return path


def _back_project(operator, y):
    """What the observation shows in image space: A^+ y, or A^T y without a pseudo-inverse."""
    if operator.has_pinv:
        return operator.pinv(y)
    return operator.adjoint(y)
