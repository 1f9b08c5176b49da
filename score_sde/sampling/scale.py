"""The data's scale from the score function itself, and grids that follow it under jit.

A library user who builds a sampler for their own score function often does not know the
spread of their data, yet the default grids place their steps relative to it (grids: the
'vp_*' grids run VP's clock on sigma / (alpha data_scale)). `estimate_data_scale` measures it
with one score call.

**The estimator.** For any data distribution and any noise level, Tweedie's x0_hat(x_t) =
E[x_0 | x_t] satisfies Cov(x0_hat(x_t), x_t) = Cov(x_0, x_t) = alpha Cov(x_0) (the law of total
covariance), so in EDM's variables x_edm = x_t / alpha, the mean over coordinates of
Cov(x0_hat, x_edm) is the data's variance s^2 (s: the spread, sqrt(mean per-coordinate
variance)), if x_edm is drawn from the noisy data. Without data it is drawn from N(0, rho^2 I)
(rho = sigma / alpha, the noise level), the noise alone; then for Gaussian data N(mu, s^2 I)
the covariance is c = s^2 rho^2 / (s^2 + rho^2) exactly, which gives back
s^2 = rho^2 q / (1 - q), q = c / rho^2 in (0, 1). q measures how much of the noise the
denoiser attributes to the data: q ~ (s / rho)^2 when the data are drowned (rho >> s), where
a float32 score, or a network's small relative error, leaves no trace of s in x0_hat, and
q ~ 1 when rho << s, where x0_hat ~ x and c says only that s >> rho. It is informative in
between, rho within a few times s.

**The pilot level.** s is not known, so the one call spreads the batch over a ladder of noise
levels geometric over the SDE's [rho(eps), rho(T)] (`pilot_levels`, ratio about 3: every
spread in that range has levels within a factor 3 of it), example i at level i mod L, in
antithetic pairs (+z, -z: the data's mean and every even-order part of x0_hat cancel, so the
mean needs no estimate). Each level gives s_j^2 from its q_j; they are averaged in log s^2
with weights n_j q_j^2 (1 - q_j)^2 (n_j: the coordinates measured at level j), the inverse
variance of log s_j^2 under a fixed relative error of the denoiser's signal: the levels near
q = 1/2, rho ~ s, count most. For non-Gaussian data the draws from N(0, rho^2 I) are not the
noisy data, so the estimate is that of the Gaussian of the same covariance only
approximately (measured on the benchmark's mixtures: benchmarks/pages/data_scale.md).

**Grids under jit.** The estimate is a traced value inside `sample`, while every sampler
computes its grid and weights in float64 numpy when it is built. `ScaledTables` keeps it that
way: it builds the sampler's tables (grid, weights) for every scale of a ladder of ratio
sqrt(2) over the SDE's noise levels (`scale_ladder`) ahead of time, stacks them, and inside the
trace picks the one nearest the estimate with an index (a gather: one compiled body, no host
round trip, no per-scale recompilation). The scale is rounded to within a factor 2^(1/4)
(19%), far inside what moves a default grid's accuracy.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from score_sde.sampling.grids import SCALED_GRIDS, check_data_scale
from score_sde.sde_lib import SDE, ScoreFn, batch_mul

Array = jax.Array

PILOT_CALLS = 1  # score calls (on one batch of the sampler's shape) the estimate costs
LEVEL_RATIO = 3.0  # the ratio of neighbouring pilot noise levels
SCALE_RATIO = float(np.sqrt(2.0))  # the ratio of neighbouring scales of the tables' ladder
# The error of the denoiser's signal q allowed for, relative to the noise level (a network's
# x0_hat at high noise): levels where the data's trace q is below it count little.
DENOISER_ERROR = 0.02
_PILOT_KEY = 0x5CA1E  # folded into the sampler's rng: the prior draw and its noise stay as before


def noise_levels(sde: SDE, eps: float) -> tuple[float, float]:
    """(rho(eps), rho(T)): the SDE's smallest and largest noise level sigma / alpha."""
    with jax.ensure_compile_time_eval():  # static, also when called inside a trace
        t = jnp.asarray([eps, sde.T], jnp.float32)
        return tuple(float(v) for v in np.exp(-np.asarray(sde.log_snr(t), np.float64)))


def pilot_levels(sde: SDE, eps: float, batch: int) -> np.ndarray:
    """The pilot's noise levels: geometric over [rho(eps), rho(T)] with ratio <= LEVEL_RATIO,
    at most one per antithetic pair of the batch (fewer levels, wider apart, for small
    batches)."""
    lo, hi = noise_levels(sde, eps)
    n = int(np.ceil(np.log(hi / lo) / np.log(LEVEL_RATIO))) + 1
    n = max(1, min(n, max(batch // 2, 1)))
    return np.geomspace(hi, lo, n) if n > 1 else np.asarray([np.sqrt(lo * hi)])


def estimate_data_scale(sde: SDE, score_fn: ScoreFn, rng: Array, shape: tuple[int, ...],
                        eps: float, sharding=None) -> Array:
    """The data's spread s = sqrt(mean per-coordinate variance) estimated from score_fn with
    PILOT_CALLS score call on a batch of `shape` (module docstring); a traced float32 scalar,
    jit-compatible. Exact in expectation for isotropic Gaussian data N(mu, s^2 I); 1.0 when no
    level informs (a score that is zero everywhere, a batch that is all noise)."""
    batch = int(shape[0])
    rho = pilot_levels(sde, eps, batch)
    pairs = max(batch // 2, 1)
    level = np.arange(batch) // 2 % len(rho) if batch > 1 else np.zeros(1, int)
    with jax.ensure_compile_time_eval():
        t = np.asarray(sde.t_from_sigma(jnp.asarray(rho[level], jnp.float32)), np.float32)
    t = jnp.asarray(t)
    z = jax.random.normal(jax.random.fold_in(rng, _PILOT_KEY), (pairs, *shape[1:]), jnp.float32)
    z = jnp.stack([z, -z], 1).reshape((2 * pairs, *shape[1:]))[:batch]
    x_edm = batch_mul(jnp.asarray(rho[level], jnp.float32), z)
    alpha, sigma = sde.marginal_coeffs(t)
    x = batch_mul(alpha, x_edm)
    if sharding is not None:
        x = jax.lax.with_sharding_constraint(x, sharding)
    x0 = batch_mul(1.0 / alpha, x + batch_mul(sigma**2, score_fn(x, t)))
    # sum of x0_hat . x_edm per level: with antithetic pairs the mean's term cancels
    prod = jnp.sum((x0 * x_edm).reshape(batch, -1), axis=1)
    onehot = jnp.asarray(level[:, None] == np.arange(len(rho))[None], jnp.float32)
    if batch > 1 and batch % 2:  # an unpaired last example would carry the mean's term
        prod, onehot = prod.at[-1].set(0.0), onehot.at[-1].set(0.0)
    count = onehot.sum(0) * float(np.prod(shape[1:]))
    c = (onehot.T @ prod) / jnp.maximum(count, 1.0)
    return _combine(c, jnp.asarray(rho, jnp.float32), count)


def _combine(c: Array, rho: Array, count: Array) -> Array:
    """s from the per-level covariances c: s_j^2 = rho^2 q / (1 - q), averaged in log s^2 with
    inverse-variance weights (module docstring)."""
    q = c / rho**2
    ok = (q > 0.0) & (q < 1.0) & (count > 0)
    q_safe = jnp.where(ok, q, 0.5)
    log_s2 = 2.0 * jnp.log(rho) + jnp.log(q_safe) - jnp.log1p(-q_safe)
    # var(q_j) ~ (2 q^2 + DENOISER_ERROR^2) / n_j: the draws' own spread, and an error of the
    # denoiser's signal fixed relative to the noise; var(log s_j^2) = var(q_j) / (q (1 - q))^2
    var = (2.0 * q_safe**2 + DENOISER_ERROR**2) / (count * (q_safe * (1.0 - q_safe)) ** 2)
    w = jnp.where(ok, 1.0 / jnp.where(ok, var, 1.0), 0.0)
    total = w.sum()
    mean = jnp.sum(w * log_s2) / jnp.where(total > 0, total, 1.0)
    return jnp.where(total > 0, jnp.exp(0.5 * mean), 1.0)


# ---------------------------------------------------------------- tables over a scale ladder


def estimates(data_scale: float | None, grid: str, ts, analytic_first_step: bool = False
              ) -> bool:
    """Whether a sampler estimates the data's scale: no data_scale given, no explicit ts, and
    a default grid that depends on it (grids.SCALED_GRIDS) or the analytic first step (whose
    Gaussian has the data's spread)."""
    return data_scale is None and ts is None and (grid in SCALED_GRIDS or analytic_first_step)


def scale_ladder(sde: SDE, eps: float) -> np.ndarray:
    """Scales 2^(k/2) (1 among them) from below rho(eps) to above rho(T): every spread the
    SDE can resolve is within a factor 2^(1/4) of one of them."""
    lo, hi = noise_levels(sde, eps)
    k = np.arange(np.floor(2 * np.log2(lo)) - 1, np.ceil(2 * np.log2(hi)) + 2)
    return SCALE_RATIO ** k


def as_tables(tables):
    """A sampler's tables (a pytree of numpy arrays) as float32 numpy (ints int32, bools
    kept)."""
    kinds = {"b": bool, "i": np.int32, "u": np.int32}
    return jax.tree.map(lambda v: np.asarray(v, kinds.get(np.asarray(v).dtype.kind, np.float32)),
                        tables)


class ScaledTables:
    """A sampler's static tables (a pytree of arrays: grid, weights) for its data scale.

    `tables(scale)` builds them in numpy for a scale (None: the sampler's unit default). With
    estimate False they are built once for data_scale; with estimate True, for every scale of
    scale_ladder, and `select` estimates the scale from the score function (PILOT_CALLS calls)
    and picks the nearest scale's tables. `nominal` is the tables of data_scale (or 1 when
    estimating): the grid `sample.ts` reports.
    """

    def __init__(self, tables: Callable[[float | None], dict], sde: SDE, eps: float,
                 shape: tuple[int, ...], data_scale: float | None, estimate: bool,
                 sharding=None):
        if data_scale is not None:
            check_data_scale(data_scale)
        self.sde, self.eps, self.shape, self.sharding = sde, eps, tuple(shape), sharding
        self.estimate = bool(estimate) and data_scale is None
        self.data_scale = data_scale
        self.nominal = tables(1.0 if self.estimate else data_scale)
        if self.estimate:
            self.scales = scale_ladder(sde, eps)
            built = [tables(float(s)) for s in self.scales]
            self._bank = jax.tree.map(lambda *v: jnp.asarray(np.stack(v)), *built)
        else:
            self._bank = jax.tree.map(jnp.asarray, self.nominal)

    @property
    def pilot_calls(self) -> int:
        return PILOT_CALLS if self.estimate else 0

    def select(self, rng: Array, score_fn: ScoreFn) -> tuple[dict, Array | float | None]:
        """(the tables to sample with, the data scale they were built for: the estimate
        rounded to the ladder, or data_scale when not estimating)."""
        if not self.estimate:
            return self._bank, self.data_scale
        s = estimate_data_scale(self.sde, score_fn, rng, self.shape, self.eps, self.sharding)
        k = jnp.argmin(jnp.abs(jnp.log(jnp.asarray(self.scales, jnp.float32)) - jnp.log(s)))
        return (jax.tree.map(lambda v: v[k], self._bank),
                jnp.asarray(self.scales, jnp.float32)[k])
