"""Controllable generation (Song et al. 2021, Sec. 5, App. I): guided scores, inverse problems.

Guidance transforms a score_fn, so it composes with every sampler:

  classifier_guidance   s(x, t) + scale * grad_x log p_t(y | x)   (noise-conditional classifier)
  cfg / cfg_from_model  (1 + w) s(x, t | y) - w s(x, t)            (classifier-free guidance)

cfg combines any two score functions; cfg_from_model (one batched call of a conditional score
function) and model_conditional_score_fn live with the network's score in score_sde.models.utils
(a trained model's guided score: `trained_score_fn`) and are re-exported here.

Inverse problems whose observation is a known part of x in an orthogonal basis (inpainting: a
pixel mask; colorization: the grey direction of the channels) are solved as published: at every
step the known part is replaced by the observation perturbed to the current time,
x_known_t = alpha_t x_known + sigma_t z. Every fixed-step sampler takes such a merge as its
`project` argument (after the prior draw and after each update): 'pc' (any predictor and
corrector), 'ddim', 'heun', 'dpm_solver++', 'unipc', 'ipndm'. The adaptive ODE solver has
no fixed steps to merge at. The replacement is the published approximation: it uses the joint
score with the known part plugged in, not the conditional score (which has an extra term
grad_u log p(x_known_0 | x_t)); Langevin correctors at the last, low-noise steps pull the
unknown part towards the exact conditional, the corrector-free samplers keep a bias
(tests/test_controllable.py measures both).

SDEdit (Meng et al. 2022) perturbs a guide image to t0 and solves back with a fixed-step sampler
or the ODE: the sampler's own times below t0 (`ts`) from the perturbed guide (`x_init`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from score_sde.models.utils import (  # cfg_from_model, model_conditional_score_fn: re-exported
    ConditionalScoreFn,
    cfg_combine,
    cfg_from_model,
    model_conditional_score_fn,
)
from score_sde.sampling import MERGE_SAMPLERS, SAMPLERS, get_sampler  # MERGE_SAMPLERS: re-exported
from score_sde.sampling.common import full_t
from score_sde.sampling.registry import Sampler
from score_sde.sde_lib import SDE, ScoreFn, batch_mul

__all__ = ["MERGE_SAMPLERS", "ClassifierFn", "ConditionalScoreFn", "Merge", "cfg",
           "cfg_from_model", "classifier_guidance", "color_basis", "colorization_merge",
           "get_colorizer", "get_editor", "get_inpainter", "inpainting_merge", "linear_merge",
           "merging_sampler", "model_conditional_score_fn", "sdedit", "sdedit_times"]

Array = jax.Array
ClassifierFn = Callable[[Array, Array], Array]
# merge(rng, x, x_mean, t) -> (x, x_mean): put the observation, perturbed to t, into the state;
# the samplers' `project` argument (score_sde.sampling.common.Project).
Merge = Callable[[Array, Array, Array, Array], tuple[Array, Array]]


def _batch_labels(labels: Array | int, batch: int) -> Array:
    return jnp.broadcast_to(jnp.asarray(labels, jnp.int32), (batch,))


# ------------------------------------------------------------------------------- guidance


def classifier_guidance(score_fn: ScoreFn, classifier_fn: ClassifierFn, labels: Array | int,
                        scale: float = 1.0) -> ScoreFn:
    """score(x, t) + scale * grad_x log p_t(y = labels | x): sample p_t(x | y) (scale = 1).

    classifier_fn(x, t) -> logits (B, K) of a noise-conditional classifier; labels is an int or
    (B,) ints. Examples must not interact inside the classifier (no batch statistics): the
    gradient of the batch sum of log-probabilities is then each example's own gradient.
    """

    def log_p_y(x: Array, t: Array) -> Array:
        logp = jax.nn.log_softmax(classifier_fn(x, t), axis=-1)
        y = _batch_labels(labels, x.shape[0])
        return jnp.sum(jnp.take_along_axis(logp, y[:, None], axis=-1))

    grad_log_p_y = jax.grad(log_p_y)

    def guided(x: Array, t: Array) -> Array:
        return score_fn(x, t) + scale * grad_log_p_y(x, t)

    return guided


def cfg(score_fn_cond: ScoreFn, score_fn_uncond: ScoreFn, w: float) -> ScoreFn:
    """Classifier-free guidance (Ho & Salimans 2022): (1 + w) s(x, t | y) - w s(x, t).

    w = 0 is plain conditional sampling; w > 0 samples the sharpened p(x | y) p(y | x)^w.
    """
    if w == 0:
        return score_fn_cond
    return lambda x, t: cfg_combine(score_fn_cond(x, t), score_fn_uncond(x, t), w)


# ------------------------------------------------------------- observations in a channel basis


def color_basis(num_channels: int = 3) -> np.ndarray:
    """An orthogonal (C, C) matrix whose first column is the grey direction ones / sqrt(C).

    Colorization works in these decoupled coordinates y = x @ M: y[..., 0] = sqrt(C) * grey
    (grey = mean of the channels) is known, the other C - 1 (colour) coordinates are not. The
    noise of every SDE here is isotropic, so it stays independent per coordinate after M.
    """
    if num_channels < 2:
        raise ValueError(f"colorization needs num_channels >= 2, got {num_channels}")
    a = np.eye(num_channels)
    a[:, 0] = 1.0
    q, _ = np.linalg.qr(a)
    return q * np.sign(q[0, 0])  # first column +ones / sqrt(C)


def linear_merge(sde: SDE, data: Array, mask: Array, basis: np.ndarray | None = None) -> Merge:
    """Replace the known part of x by the observation perturbed to time t (the published merge).

    data: (B, ...) the observation in pixel space (its unknown part is ignored); mask: 1 where
    known, broadcastable to data; both are in the basis coordinates x @ basis (channels last)
    when `basis` is given, else in pixel coordinates. The noisy state gets
    alpha_t data + sigma_t z on the known part, the noise-free state (x_mean) alpha_t data.
    """
    m = None if basis is None else jnp.asarray(basis, jnp.float32)
    to_basis = (lambda v: v) if m is None else (lambda v: v @ m)
    from_basis = (lambda v: v) if m is None else (lambda v: v @ m.T)
    known = to_basis(jnp.asarray(data, jnp.float32))
    mask = jnp.asarray(mask, jnp.float32)

    def merge(rng, x, x_mean, t):
        mean, std = sde.marginal_prob(known, t)
        noisy = mean + batch_mul(std, jax.random.normal(rng, known.shape, known.dtype))
        x = to_basis(x) * (1.0 - mask) + noisy * mask
        x_mean = to_basis(x_mean) * (1.0 - mask) + mean * mask
        return from_basis(x), from_basis(x_mean)

    return merge


def inpainting_merge(sde: SDE, data: Array, mask: Array) -> Merge:
    """The inpainting merge: pixels where mask == 1 are known (mask broadcastable to data)."""
    return linear_merge(sde, data, mask)


def colorization_merge(sde: SDE, gray: Array, num_channels: int | None = None) -> Merge:
    """The colorization merge: the grey component (mean of channels) of x is known.

    gray: (B, H, W, 1) grey image, or (B, H, W, C) whose channel mean is taken.
    """
    gray = jnp.asarray(gray, jnp.float32)
    c = int(num_channels or (3 if gray.shape[-1] == 1 else gray.shape[-1]))
    image = jnp.broadcast_to(jnp.mean(gray, axis=-1, keepdims=True), gray.shape[:-1] + (c,))
    mask = jnp.zeros((c,), jnp.float32).at[0].set(1.0)
    return linear_merge(sde, image, mask, color_basis(c))


# ----------------------------------------------------------- samplers with a per-step merge


def merging_sampler(sde: SDE, shape: tuple[int, ...], sampler: str = "pc", **options):
    """`get_sampler(sampler, ...)`, checked to take a per-step merge (its `project` argument).

    'pc' defaults to the published inpainter's reverse_diffusion predictor + langevin corrector.
    """
    if sampler not in MERGE_SAMPLERS:
        raise ValueError(
            f"sampler={sampler!r} cannot merge an observation at every step; choose one of "
            f"{list(MERGE_SAMPLERS)} (adaptive ODE solvers have no fixed steps to merge at)")
    if sampler == "pc":
        options = {"predictor": "reverse_diffusion", "corrector": "langevin", **options}
    return get_sampler(sampler, sde, shape, **options)


def get_inpainter(sde: SDE, shape: tuple[int, ...], sampler: str = "pc", **options):
    """`inpaint(rng, score_fn, data, mask) -> (x, nfe)`; mask == 1 marks known pixels.

    data (B, ...) of `shape` in the model's (scaled) range; mask broadcastable to it. sampler:
    one of MERGE_SAMPLERS, with its `get_sampler` options.
    """
    sample = merging_sampler(sde, shape, sampler, **options)

    def inpaint(rng, score_fn, data, mask):
        return sample(rng, score_fn, inpainting_merge(sde, data, mask))

    return inpaint


def get_colorizer(sde: SDE, shape: tuple[int, ...], sampler: str = "pc", **options):
    """`colorize(rng, score_fn, gray) -> (x, nfe)`: colour images of `shape` (B, H, W, C).

    gray (B, H, W, 1) or (B, H, W, C) in the model's range; its channel mean is kept.
    sampler: one of MERGE_SAMPLERS, with its `get_sampler` options.
    """
    sample = merging_sampler(sde, shape, sampler, **options)

    def colorize(rng, score_fn, gray):
        return sample(rng, score_fn, colorization_merge(sde, gray, shape[-1]))

    return colorize


# ----------------------------------------------------------------------------------- SDEdit


def sdedit_times(full: np.ndarray, t0: float) -> np.ndarray:
    """A sampler's times below t0, started at t0: [t0, *full[full < t0]].

    A grid point just below t0 (closer than half its own next step) is dropped, so that no
    step is much shorter than its neighbours (multistep solvers divide by step ratios).
    """
    below = np.asarray(full, np.float64)[np.asarray(full) < t0]
    if len(below) > 1 and t0 - below[0] < 0.5 * (below[0] - below[1]):
        below = below[1:]
    return np.concatenate([[t0], below]).astype(np.float32)


def get_editor(sde: SDE, shape: tuple[int, ...], t0: float,
               sampler: str | Callable[..., Sampler] = "pc", eps: float = 1e-3, **options):
    """SDEdit (Meng et al. 2022): `edit(rng, score_fn, guide) -> (x, nfe)`.

    The guide (of `shape`) is perturbed to t0, x_t0 = alpha guide + sigma z, and the sampler
    solves back to eps from that x_init on its own times below t0 (`ts`, sdedit_times): the
    cost scales with t0 (PC keeps its step size; an nfe budget is the one of a solve from T),
    t0 = T is the unconditional sampler. The guide is an input, so one compiled editor serves
    every guide. sampler: a name for `score_sde.sampling.get_sampler` or a factory
    `(sde, shape, *, eps, ts, **options)` (e.g. `pc_sampler`) of a fixed-step sampler or the
    ODE. t0 in (0, T] trades faithfulness (small t0) for realism (large t0); t0 <= eps returns
    the guide unchanged (nfe 0).
    """
    if not 0.0 < t0 <= sde.T:
        raise ValueError(f"SDEdit: t0 must be in (0, {sde.T}], got {t0}")
    if t0 <= eps:
        return lambda rng, score_fn, guide: (jnp.asarray(guide), jnp.asarray(0, jnp.int32))
    if options.get("analytic_first_step"):
        raise ValueError("SDEdit: analytic_first_step guesses the score of pure noise, but the "
                         "edit starts from the guide at t0; unset "
                         "config.sampling.analytic_first_step")
    if isinstance(sampler, str):
        name = sampler

        def build(**kw):
            return get_sampler(name, sde, shape, eps=eps, **kw)
    else:
        name = getattr(sampler, "__name__", "sampler")

        def build(**kw):
            return sampler(sde, shape, eps=eps, **kw)

    # the grid SDEdit cuts at t0 is static: without a data_scale, the unit-scale one (a sampler
    # that would estimate the scale from the score cannot before it is called)
    takes_scale = isinstance(sampler, str) and "data_scale" in SAMPLERS.lookup(sampler).options
    grid_options = ({"data_scale": 1.0, **options} if takes_scale
                    and options.get("data_scale") is None else options)
    full = getattr(build(**grid_options), "ts", None)
    if full is None:
        raise ValueError(f"SDEdit: sampler {name!r} has no time grid to start at t0 from; use a "
                         "fixed-step sampler ('pc', 'ddim', 'dpm_solver++', ...) or 'ode'")
    ts = sdedit_times(full, float(t0))
    try:
        sample = build(**grid_options, ts=ts)
    except ValueError as e:
        raise ValueError(f"SDEdit from t0={t0}: {name} keeps {len(ts) - 1} of its "
                         f"{len(full) - 1} steps below t0, too few ({e}); raise t0 or nfe") from e

    def edit(rng, score_fn, guide):
        guide = jnp.asarray(guide, jnp.float32)
        rng, noise_rng = jax.random.split(rng)
        mean, std = sde.marginal_prob(guide, full_t(t0, guide))
        x_t0 = mean + batch_mul(std, jax.random.normal(noise_rng, mean.shape, mean.dtype))
        return sample(rng, score_fn, x_init=x_t0)

    return edit


def sdedit(sampler: str | Callable[..., Sampler], sde: SDE, guide: Array, t0: float,
           eps: float = 1e-3, **options) -> Sampler:
    """SDEdit of one guide: `sample(rng, score_fn) -> (x, nfe)` (get_editor's edit)."""
    guide = jnp.asarray(guide, jnp.float32)
    edit = get_editor(sde, guide.shape, t0, sampler, eps, **options)
    return lambda rng, score_fn: edit(rng, score_fn, guide)
