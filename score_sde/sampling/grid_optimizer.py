"""The time grid of a fixed-step sampler, optimised for one model (GITS, Chen et al. 2024).

`optimize_grid(score_fn, sde, shape, method=..., nfe=...)` picks the n = nfe grid times whose
sampler output best matches a high-accuracy solve of the same probability-flow ODE, from a
batch of prior draws x_T (shape[0] of them):

1. Teacher: the adaptive Tsit5 solve (rtol = atol = 1e-5 by default) from x_T, saved on a fine
   grid of candidate times: n_fine points uniform in log-SNR, plus the sampler's own default
   grid (so the default is one of the paths searched), and the data prediction m_p of every
   saved state x_p (one score call each).
2. Local cost of a step t_i -> t_j: the error of one solver step started from the teacher's
   x_i, measured against the teacher's x_j. The step is the data-prediction exponential
   integrator (DPM-Solver++) of order 1 (DDIM) or 2. A multistep solver's second-order step
   also uses the model output at the previous grid point t_k, so its cost depends on the
   triple (k, i, j); on the teacher's states every such step is a linear combination of the
   stored x_i, m_i, m_k, x_j, so all O(n_fine^3) costs come from one Gram matrix of those
   vectors, without another score call. The error is taken in data units (x / alpha) and
   weighted by s^2 / (s^2 + (sigma / alpha)^2), the factor by which the probability-flow map of
   data with spread s shrinks an error made at that noise level before it reaches t = eps; the
   path cost is the sum of the steps' RMS errors (errors of successive steps add up).
3. The path of exactly n steps from T to eps of least cost: dynamic programming over the fine
   grid (over pairs (t_k, t_i) of the last two points for second order).
4. Refinement (LD3-style, Tong et al. 2025): the local-cost solver run from the draws on a
   grid of traced times is differentiable in the grid; Adam on the grid's log-SNR increments
   (softmax, so the times stay ordered and the ends fixed) lowers its mean square distance to
   the teacher's endpoint, starting from the better of the default and the DP grid.
5. The judge is the sampler itself: its output on each candidate grid (default, DP, refined)
   against the teacher's endpoint, same draws. The best wins, so the result is never worse
   than the default on those draws.

The order-2 local step is DPM-Solver++(2M)'s (UniPC's predictor differs in B(h)); for UniPC's
corrector and iPNDM (Adams-Bashforth in the noise prediction, up to 4th order) it is a proxy,
which step 5 checks. Cost: one adaptive solve, n_fine + len(default) score calls, refine_steps
gradients through nfe score calls, all on the batch of draws, then one sampler run per
candidate. Heun (two score calls per step) and the adaptive and PC samplers are not supported.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from score_sde.sampling.common import data_prediction, full_t, prior_sample
from score_sde.sampling.grids import get_time_grid
from score_sde.sampling.registry import SAMPLERS, get_sampler
from score_sde.sde_lib import SDE, ScoreFn

# Samplers with one grid step per score call, and the order of the local step that models
# theirs (see the module docstring).
LOCAL_ORDER = {"ddim": 1, "dpm_solver++": 2, "unipc": 2, "ipndm": 2}


@dataclasses.dataclass(frozen=True)
class GridResult:
    """An optimised grid and how the sampler does on it.

    times: the n + 1 decreasing times (float32); start_times: the sampler's default grid;
    cost_before / cost_after: RMS difference between the sampler's output on start_times /
    times and the teacher's endpoint (data units, same draws); candidates: that error of every
    grid tried (name -> RMS); teacher_nfe: score calls of the teacher solve; seconds: wall
    time of each phase (teacher, dp, refine, judge).
    """

    times: np.ndarray
    start_times: np.ndarray
    cost_before: float
    cost_after: float
    candidates: dict[str, float]
    teacher_nfe: int
    method: str
    nfe: int
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """What a grid file keeps besides the times (grid_files.write_grid_file(**record))."""
        return {"cost_before": self.cost_before, "cost_after": self.cost_after,
                "start_times": [float(t) for t in self.start_times],
                "candidates": self.candidates, "teacher_nfe": self.teacher_nfe,
                "seconds": self.seconds}


def optimize_grid(score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...], *, method: str,
                  nfe: int | None = None, eps: float = 1e-3, rng: jax.Array | None = None,
                  n_fine: int = 100, rtol: float = 1e-5, atol: float = 1e-5,
                  refine_steps: int = 50, learning_rate: float = 0.05,
                  options: dict[str, Any] | None = None) -> GridResult:
    """The grid of `method` at `nfe` that best matches the teacher solve (module docstring).

    shape: the batch of prior draws (B, *data_shape); options: the sampler's other keyword
    options (order, grid and sigma_range of the starting grid, ...); rng: the draws' key;
    nfe: the sampler's default when None.
    """
    options = dict(options or {})
    order = _local_order(method, options)
    nfe = int(nfe if nfe is not None else _default(method, "nfe"))
    if nfe < 1:
        raise ValueError(f"optimize_grid: config.sampling.nfe must be >= 1, got {nfe}")
    start = _start_grid(method, sde, nfe, eps, options)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    clock = _Clock()
    fine = _fine_grid(sde, eps, n_fine, start)
    xs, ms, teacher_nfe = _teacher(sde, score_fn, shape, rng, fine, rtol, atol)
    clock("teacher")
    x_T, target = (jnp.asarray(v.reshape((shape[0], *shape[1:])), jnp.float32)
                   for v in (xs[0], xs[-1]))
    candidates = {"default": start,
                  "dp": fine[shortest_path(_LocalCosts(sde, fine, xs, ms), nfe, order)]}
    clock("dp")
    if refine_steps > 0:
        proxy = _ProxyLoss(sde, score_fn, x_T, target, order)
        init = min(candidates.values(), key=proxy)
        candidates["refined"] = proxy.refine(init, refine_steps, learning_rate)
        clock("refine")
    errors = {name: _sampler_error(method, sde, shape, eps, times, options, score_fn, rng,
                                   xs[-1]) for name, times in candidates.items()}
    clock("judge")
    best = min(errors, key=errors.get)
    return GridResult(np.asarray(candidates[best], np.float32), start, errors["default"],
                      errors[best], errors, teacher_nfe, method, nfe, clock.seconds)


class _Clock:
    """Wall seconds of each phase: `clock(name)` ends the phase `name`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._last, 2)
        self._last = now


def _local_order(method: str, options: dict) -> int:
    """The local step's order: the sampler's (its `order` option) up to LOCAL_ORDER."""
    SAMPLERS.lookup(method, field="config.sampling.method")
    if method not in LOCAL_ORDER:
        raise ValueError(f"optimize_grid: config.sampling.method={method!r} is not supported; "
                         f"choose one of {sorted(LOCAL_ORDER)} (one grid step per score call)")
    if "order" not in SAMPLERS.lookup(method).options:
        return LOCAL_ORDER[method]
    return min(LOCAL_ORDER[method], int(options.get("order") or _default(method, "order")))


def _default(method: str, option: str):
    """The default of a sampler's keyword option."""
    return inspect.signature(SAMPLERS.lookup(method).factory).parameters[option].default


def _start_grid(method: str, sde: SDE, nfe: int, eps: float, options: dict) -> np.ndarray:
    """The grid the sampler uses with these options (its default grid / sigma_range)."""
    grid = options.pop("grid", None) or _default(method, "grid")
    sigma_range = options.pop("sigma_range", None)
    if sigma_range is None and grid == _default(method, "grid"):
        sigma_range = _default(method, "sigma_range")
    options.pop("nfe", None)
    return get_time_grid(grid, sde, nfe, eps, sigma_range).astype(np.float64)


def _fine_grid(sde: SDE, eps: float, n_fine: int, start: np.ndarray) -> np.ndarray:
    """n_fine + 1 times uniform in log-SNR from T to eps, with the start grid's times added."""
    lam = np.linspace(_log_snr(sde, sde.T), _log_snr(sde, eps), n_fine + 1)
    inner = np.asarray(sde.t_from_log_snr(jnp.asarray(lam[1:-1], jnp.float32)), np.float64)
    times = np.unique(np.concatenate([[sde.T, eps], inner, start]).astype(np.float32))[::-1]
    return times.astype(np.float64)


def _log_snr(sde: SDE, t: float) -> float:
    return float(sde.log_snr(jnp.asarray([t], jnp.float32))[0])


def _teacher(sde: SDE, score_fn: ScoreFn, shape, rng, times: np.ndarray, rtol: float,
             atol: float) -> tuple[np.ndarray, np.ndarray, int]:
    """States x_p (P, B, D) of the adaptive probability-flow solve at `times`, their data
    predictions m_p (P, B, D) (float64 numpy) and the solve's score calls."""
    ts = jnp.asarray(times, jnp.float32)
    x0_hat = data_prediction(sde, score_fn)

    @jax.jit
    def solve(rng):
        x_T, _ = prior_sample(sde, rng, shape)
        rsde = sde.reverse(score_fn, probability_flow=True)
        term = diffrax.ODETerm(lambda t, y, args: rsde.sde(y, full_t(t, y))[0])
        sol = diffrax.diffeqsolve(term, diffrax.Tsit5(), ts[0], ts[-1], dt0=None, y0=x_T,
                                  saveat=diffrax.SaveAt(ts=ts),
                                  stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
                                  max_steps=16384, throw=False)
        ys = sol.ys.at[0].set(x_T)
        ms = jax.lax.map(lambda a: x0_hat(a[0], full_t(a[1], a[0])), (ys, ts))
        ok = sol.result == diffrax.RESULTS.successful
        return ys, ms, 1 + 6 * sol.stats["num_steps"], ok

    ys, ms, nfe, ok = jax.device_get(solve(rng))
    if not ok or not np.all(np.isfinite(ys)):
        raise FloatingPointError("optimize_grid: the teacher solve failed (max_steps reached or "
                                 "NaN); check the score function, or loosen rtol / atol")
    flat = lambda a: np.asarray(a, np.float64).reshape(len(times), shape[0], -1)
    return flat(ys), flat(ms), int(nfe)


class _LocalCosts:
    """Local step costs on the teacher's states: `first(i, j)` arrays and `second(k, i, j)`."""

    def __init__(self, sde: SDE, times: np.ndarray, xs: np.ndarray, ms: np.ndarray):
        alpha, sigma = (np.asarray(v, np.float64)
                        for v in sde.marginal_coeffs(jnp.asarray(times, jnp.float32)))
        self.alpha, self.sigma, self.lam = alpha, sigma, np.log(alpha) - np.log(sigma)
        spread = float(np.mean(np.var(xs[-1], axis=0)))  # the data's variance, per dimension
        # weight of an error made at t_j by the time it reaches eps (see the module docstring)
        self.weight = spread / (spread + (sigma / alpha) ** 2) / alpha**2
        vectors = np.stack([xs, ms], axis=1).reshape(2 * len(times), -1)  # x_0, m_0, x_1, ...
        self.gram = vectors @ vectors.T / (xs.shape[1] * xs.shape[2])

    @property
    def n_points(self) -> int:
        return len(self.lam)

    def _error(self, terms: list[tuple[np.ndarray, np.ndarray]], j: np.ndarray) -> np.ndarray:
        """Weighted RMS of sum_u c_u v_u over (coefficient, vector index) terms, at t_j."""
        sq = sum(cu * cv * self.gram[iu, iv] for cu, iu in terms for cv, iv in terms)
        return np.sqrt(np.maximum(sq, 0.0) * self.weight[j])

    def _step(self, i, j):
        h = self.lam[j] - self.lam[i]
        return self.sigma[j] / self.sigma[i], -self.alpha[j] * np.expm1(-h), h

    def first(self) -> np.ndarray:
        """(P, P): cost of the order-1 step i -> j (inf unless i < j)."""
        i, j = np.triu_indices(self.n_points, 1)
        a, b, _ = self._step(i, j)
        cost = np.full((self.n_points,) * 2, np.inf)
        cost[i, j] = self._error([(a, 2 * i), (b, 2 * i + 1), (-1.0, 2 * j)], j)
        return cost

    def second(self) -> np.ndarray:
        """(P, P, P): cost of the order-2 step i -> j with the previous point k (k < i < j)."""
        p = self.n_points
        k, i, j = np.meshgrid(*(np.arange(p),) * 3, indexing="ij")
        keep = (k < i) & (i < j)
        k, i, j = k[keep], i[keep], j[keep]
        a, b, h = self._step(i, j)
        r = (self.lam[i] - self.lam[k]) / h  # r0 of DPM-Solver++(2M): the previous step / h
        terms = [(a, 2 * i), (b * (1 + 0.5 / r), 2 * i + 1), (-b * 0.5 / r, 2 * k + 1),
                 (-1.0, 2 * j)]
        cost = np.full((p, p, p), np.inf)
        cost[k, i, j] = self._error(terms, j)
        return cost


def shortest_path(costs: _LocalCosts, n_steps: int, order: int) -> np.ndarray:
    """Indices 0 = i_0 < ... < i_n = P - 1 of the least total cost (order-1 first step, and
    last step: a multistep solver takes its first and last steps at first order)."""
    first = costs.first()
    end = costs.n_points - 1
    if n_steps < 1 or n_steps > end:
        raise ValueError(f"optimize_grid: {n_steps} steps do not fit on {end + 1} fine points; "
                         "give more n_fine")
    if order == 1 or n_steps <= 2:
        return _path_first_order(first, n_steps)
    second = costs.second()
    total = np.full((end + 1, end + 1), np.inf)  # total[i, j]: best cost ending i -> j
    total[0] = first[0]
    back = []
    for _ in range(n_steps - 2):
        cand = total[:, :, None] + second  # (k, i, j)
        back.append(np.argmin(cand, axis=0))
        total = np.min(cand, axis=0)
    final = total[:, :] + first[:, end][None, :]  # last step j -> end at first order
    i, j = np.unravel_index(np.argmin(final), final.shape)
    if not np.isfinite(final[i, j]):
        raise ValueError("optimize_grid: no finite-cost path (NaN in the teacher's states?)")
    path = [end, j, i]
    for arg in reversed(back):
        i, j = arg[i, j], i
        path.append(i)
    return np.asarray(path[::-1])


def _path_first_order(first: np.ndarray, n_steps: int) -> np.ndarray:
    end = first.shape[0] - 1
    total = np.full(end + 1, np.inf)
    total[0] = 0.0
    back = []
    for _ in range(n_steps):
        cand = total[:, None] + first
        back.append(np.argmin(cand, axis=0))
        total = np.min(cand, axis=0)
    path = [end]
    for arg in reversed(back):
        path.append(arg[path[-1]])
    return np.asarray(path[::-1])


class _ProxyLoss:
    """Mean square distance to the teacher's endpoint of the local-cost solver (order 1 or 2,
    first and last steps at order 1) run from the draws on a grid given as traced times, and
    its gradient descent on the grid (LD3-style, Tong et al. 2025)."""

    def __init__(self, sde: SDE, score_fn: ScoreFn, x_T, target, order: int):
        self.sde, self.x0_hat, self.order = sde, data_prediction(sde, score_fn), order
        self.x_T, self.target = x_T, target
        self.lam_T = float(sde.log_snr(jnp.asarray([sde.T], jnp.float32))[0])
        self._loss = jax.jit(self.loss)
        self._grad = jax.jit(jax.value_and_grad(self._loss_of_logits))

    def __call__(self, times: np.ndarray) -> float:
        return float(self._loss(jnp.asarray(times, jnp.float32)))

    def loss(self, ts: jax.Array) -> jax.Array:
        sde, n = self.sde, ts.shape[0] - 1
        alpha, sigma = sde.marginal_coeffs(ts)
        lam = jnp.log(alpha) - jnp.log(sigma)
        h = lam[1:] - lam[:-1]
        steps = jnp.arange(n)
        second = (steps > 0) & (steps < n - 1) & (self.order == 2)
        r = h[jnp.maximum(steps - 1, 0)] / h

        def step(carry, i):
            x, m_prev = carry
            m = self.x0_hat(x, full_t(ts[i], x))
            d = jnp.where(second[i], (m - m_prev) / (2.0 * r[i]), 0.0)
            x = (sigma[i + 1] / sigma[i]) * x - alpha[i + 1] * jnp.expm1(-h[i]) * (m + d)
            return (x, m), None

        (x, _), _ = jax.lax.scan(step, (self.x_T, jnp.zeros_like(self.x_T)), steps)
        return jnp.mean((x - self.target) ** 2)

    def _times(self, logits: jax.Array, t_end: jax.Array) -> jax.Array:
        """Times at log-SNR lambda_T + cumsum(softmax(logits)) (lambda(t_end) - lambda_T)."""
        lam_end = self.sde.log_snr(t_end[None])[0]
        frac = jnp.concatenate([jnp.zeros(1), jnp.cumsum(jax.nn.softmax(logits))])
        lam = self.lam_T + frac * (lam_end - self.lam_T)
        inner = self.sde.t_from_log_snr(lam[1:-1])
        return jnp.concatenate([jnp.asarray([self.sde.T]), inner, t_end[None]])

    def _loss_of_logits(self, logits, t_end):
        return self.loss(self._times(logits, t_end))

    def refine(self, times: np.ndarray, n_steps: int, learning_rate: float) -> np.ndarray:
        """Adam on the log-SNR increments of the grid; the best grid seen."""
        t_end = jnp.asarray(times[-1], jnp.float32)
        lam = np.asarray(self.sde.log_snr(jnp.asarray(times, jnp.float32)), np.float64)
        logits = jnp.asarray(np.log(np.diff(lam)), jnp.float32)
        opt = optax.adam(learning_rate)
        state = opt.init(logits)
        best = (self(times), np.asarray(times, np.float64))
        for _ in range(n_steps):
            value, grad = self._grad(logits, t_end)
            grid = np.asarray(self._times(logits, t_end), np.float64)
            if float(value) < best[0] and np.all(np.diff(grid) < 0):
                best = (float(value), grid)
            updates, state = opt.update(grad, state)
            logits = optax.apply_updates(logits, updates)
        return best[1]


def _sampler_error(method: str, sde: SDE, shape, eps: float, times: np.ndarray,
                   options: dict, score_fn: ScoreFn, rng, target: np.ndarray) -> float:
    """RMS difference between the sampler's output on `times` and the teacher's endpoint."""
    sample = get_sampler(method, sde, shape, eps=eps, ts=times, **options)
    x = jax.device_get(jax.jit(lambda r: sample(r, score_fn)[0])(rng))
    diff = np.asarray(x, np.float64).reshape(shape[0], -1) - target
    return float(np.sqrt(np.mean(diff**2)))
