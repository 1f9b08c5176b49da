"""The time grid of a fixed-step sampler, optimised for one model (GITS, Chen et al. 2024).

`optimize_grid(score_fn, sde, shape, method=..., nfe=...)` picks the n = nfe grid times whose
sampler output best matches a high-accuracy solve of the same probability-flow ODE, from a
batch of prior draws x_T (shape[0] of them):

1. Teacher (`solve_teacher`): the adaptive Tsit5 solve (rtol = atol = 1e-5 by default) from
   x_T, saved on a fine grid of n_fine + 1 times uniform in log-SNR, and the data prediction m_p
   of every saved state x_p (one score call each). It depends on the model, the draws and the
   fine grid only, not on the sampler or NFE: one `Teacher` serves every (method, nfe) pair,
   and `Teacher.save` / `Teacher.load` keep it beside a checkpoint.
2. Local cost of a step t_i -> t_j: the error of one solver step started from the teacher's
   x_i, measured against the teacher's x_j. The step models the sampler's own: the
   data-prediction exponential integrator (DPM-Solver++) of order 1 (DDIM) or 2 (2M; also the
   proxy for UniPC's predictor), or iPNDM's second-order Adams-Bashforth step in y = x / alpha
   and rho = sigma / alpha. A second-order step also uses the model output at the previous grid
   point t_k, so its cost depends on the triple (k, i, j); on the teacher's states every such
   step is a linear combination of the stored x_i, m_i, x_k, m_k, x_j, so all O(n_fine^3) costs
   come from one Gram matrix of those vectors, without another score call. The error is taken
   in data units (x / alpha) and weighted by s^2 / (s^2 + (sigma / alpha)^2), the factor by which
   the probability-flow map of data with spread s shrinks an error made at that noise level
   before it reaches t = eps; the path cost is the sum of the steps' RMS errors.
3. The path of exactly n steps from T to eps of least cost: dynamic programming over the fine
   grid (over pairs (t_k, t_i) of the last two points for second order). DPM-Solver++ and UniPC
   take their first and last steps at first order, iPNDM only its first.
4. Refinement (LD3-style, Tong et al. 2025): a differentiable copy of the sampler run from the
   draws on a grid of traced times (iPNDM exactly, at its order; DDIM and DPM-Solver++(2M)
   exactly; UniPC through DPM-Solver++(2M)); Adam on the grid's log-SNR increments (softmax, so
   the times stay ordered and the ends fixed) lowers its mean square distance to the teacher's
   endpoint, from the better of the default and the DP grid. Each Adam step takes a minibatch
   of refine_batch draws (cycling through the batch); after each cycle through the draws the
   grid's loss on all of them is measured and the best grid kept; a cycle that does not
   improve on it halves the step size and restarts from the best grid, and `patience` such
   cycles in a row end the refinement.
5. The judge is the sampler itself: its output on each candidate grid (default, DP, refined)
   against the teacher's endpoint, same draws. The best wins if its gain over the default is
   significant on those draws (it wins on significantly more than half: a sign test, `judge`),
   else the default stays,
   so the result is never worse than the default on those draws.

Cost: one adaptive solve and n_fine + 1 score calls (shared), at most refine_steps gradients
through nfe score calls on refine_batch draws, then one sampler run per candidate. Heun (two
score calls per step) and the adaptive and PC samplers are not supported.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from score_sde import storage
from score_sde.sampling import steps
from score_sde.sampling.common import full_t, prior_sample
from score_sde.sampling.grids import get_time_grid
from score_sde.sampling.ode import solve_flow
from score_sde.sampling.registry import SAMPLERS, get_sampler
from score_sde.sde_lib import SDE, ScoreFn

# Samplers with one grid step per score call: the step that models theirs ('dpm': the
# data-prediction exponential integrator, 'ipndm': Adams-Bashforth in y and rho) and its
# highest order in the local costs (see the module docstring).
LOCAL_STEP = {"ddim": ("dpm", 1), "dpm_solver++": ("dpm", 2), "unipc": ("dpm", 2),
              "ipndm": ("ipndm", 2)}


@dataclasses.dataclass(frozen=True)
class GridResult:
    """An optimised grid and how the sampler does on it.

    times: the n + 1 decreasing times (float32); start_times: the sampler's default grid;
    cost_before / cost_after: RMS difference between the sampler's output on start_times /
    times and the teacher's endpoint (data units, same draws); candidates: that error of every
    grid tried (name -> RMS); teacher_nfe: score calls of the teacher solve; seconds: wall
    time of each phase (teacher: 0 when given, dp, refine, judge); refine_steps: Adam steps
    taken; chosen: the name of the grid kept.
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
    refine_steps: int = 0
    chosen: str = "default"

    def record(self) -> dict[str, Any]:
        """What a grid file keeps besides the times (grid_files.write_grid_file(**record))."""
        return {"cost_before": self.cost_before, "cost_after": self.cost_after,
                "start_times": [float(t) for t in self.start_times],
                "candidates": self.candidates, "teacher_nfe": self.teacher_nfe,
                "seconds": self.seconds, "refine_steps": self.refine_steps,
                "chosen": self.chosen}


@dataclasses.dataclass(frozen=True)
class Teacher:
    """The adaptive solve from a batch of prior draws, on a fine grid (module docstring, 1).

    times: (P,) decreasing fine times from T to eps; xs, ms: (P, B, D) states and their data
    predictions (float64); nfe: score calls of the solve; key: what it was made from (draws,
    seed, n_fine, rtol, atol, SDE, eps, and whatever the caller adds, e.g. the checkpoint step),
    so a stored teacher is only reused for the same inputs.
    """

    times: np.ndarray
    xs: np.ndarray
    ms: np.ndarray
    nfe: int
    key: dict[str, Any]

    def save(self, path: str) -> None:
        """Write the teacher as one .npz (local or gs://)."""
        storage.save_npz(path, times=self.times, xs=self.xs, ms=self.ms,
                         nfe=np.asarray(self.nfe), key=np.asarray(json.dumps(self.key)))

    @classmethod
    def load(cls, path: str, key: dict[str, Any]) -> Teacher | None:
        """The teacher stored at `path` if it exists and was made for `key`, else None."""
        if not storage.path(path).exists():
            return None
        z = storage.load_npz(path)
        if json.loads(str(z["key"])) != json.loads(json.dumps(key)):
            return None
        return cls(z["times"], z["xs"], z["ms"], int(z["nfe"]), key)


def teacher_key(sde: SDE, shape: tuple[int, ...], eps: float, seed: int, n_fine: int = 100,
                rtol: float = 1e-5, atol: float = 1e-5, **extra: Any) -> dict[str, Any]:
    """The inputs that fix a teacher solve (Teacher.key); extra: e.g. checkpoint_step."""
    return {"sde": type(sde).__name__, "T": float(sde.T), "eps": float(eps),
            "shape": [int(s) for s in shape], "seed": int(seed), "n_fine": int(n_fine),
            "rtol": float(rtol), "atol": float(atol), **extra}


def solve_teacher(score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...], *, eps: float = 1e-3,
                  seed: int = 0, n_fine: int = 100, rtol: float = 1e-5, atol: float = 1e-5,
                  **key_extra: Any) -> Teacher:
    """The teacher of the draws of PRNGKey(seed) (shape: (B, *data_shape)), on n_fine + 1
    times uniform in log-SNR from T to eps; key_extra goes into its key."""
    times = _fine_grid(sde, eps, n_fine)
    xs, ms, nfe = _teacher(sde, score_fn, shape, jax.random.PRNGKey(seed), times, rtol, atol)
    key = teacher_key(sde, shape, eps, seed, n_fine, rtol, atol, **key_extra)
    return Teacher(times, xs, ms, nfe, key)


def optimize_grid(score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...], *, method: str,
                  nfe: int | None = None, eps: float = 1e-3, rng: jax.Array | None = None,
                  n_fine: int = 100, rtol: float = 1e-5, atol: float = 1e-5,
                  refine_steps: int = 40, learning_rate: float = 0.05, refine_batch: int = 32,
                  patience: int = 3, teacher: Teacher | None = None,
                  options: dict[str, Any] | None = None) -> GridResult:
    """The grid of `method` at `nfe` that best matches the teacher solve (module docstring).

    shape: the batch of prior draws (B, *data_shape); options: the sampler's other keyword
    options (order, grid and sigma_range of the starting grid, ...); rng: the draws' key;
    nfe: the sampler's default when None; teacher: a `solve_teacher` result of the same draws
    to reuse (then rng, n_fine, rtol and atol are its own).
    """
    options = dict(options or {})
    if options.get("analytic_first_step"):
        raise ValueError("optimize_grid: analytic_first_step is not modelled by the optimiser "
                         "(its steps all call the model); unset "
                         "config.sampling.analytic_first_step to optimise a grid")
    kind, order = _local_step(method, options)
    nfe = int(nfe if nfe is not None else _default(method, "nfe"))
    if nfe < 1:
        raise ValueError(f"optimize_grid: config.sampling.nfe must be >= 1, got {nfe}")
    start = _start_grid(method, sde, nfe, eps, options)
    clock = _Clock()
    if teacher is None:
        rng = jax.random.PRNGKey(0) if rng is None else rng
        fine = _fine_grid(sde, eps, n_fine)
        xs, ms, teacher_nfe = _teacher(sde, score_fn, shape, rng, fine, rtol, atol)
    else:
        _check_teacher(teacher, shape, eps)
        fine, xs, ms, teacher_nfe = teacher.times, teacher.xs, teacher.ms, teacher.nfe
    clock("teacher")
    x_T, target = (jnp.asarray(v.reshape((shape[0], *shape[1:])), jnp.float32)
                   for v in (xs[0], xs[-1]))
    path = shortest_path(_LocalCosts(sde, fine, xs, ms, kind), nfe, min(order, 2),
                         last_first_order=kind == "dpm")
    candidates = {"default": start, "dp": fine[path]}
    clock("dp")
    steps_taken = 0
    if refine_steps > 0:
        proxy = _ProxyLoss(sde, score_fn, x_T, target, kind, _proxy_order(method, options))
        losses = {name: proxy(times) for name, times in candidates.items()}
        init = min(losses, key=losses.get)
        candidates["refined"], steps_taken = proxy.refine(
            candidates[init], losses[init], refine_steps, learning_rate, refine_batch, patience)
        clock("refine")
    per_draw = {name: _sampler_error(method, sde, shape, eps, times, options, score_fn, x_T,
                                     xs[-1]) for name, times in candidates.items()}
    clock("judge")
    best = judge(per_draw)
    errors = {name: float(np.sqrt(np.mean(e))) for name, e in per_draw.items()}
    return GridResult(np.asarray(candidates[best], np.float32), start, errors["default"],
                      errors[best], errors, teacher_nfe, method, nfe, clock.seconds,
                      steps_taken, best)


class _Clock:
    """Wall seconds of each phase: `clock(name)` ends the phase `name`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._last, 2)
        self._last = now


def _check_teacher(teacher: Teacher, shape, eps: float) -> None:
    if list(teacher.key["shape"]) != list(shape) or not np.isclose(teacher.key["eps"], eps):
        raise ValueError(f"optimize_grid: the teacher was solved for draws of shape "
                         f"{teacher.key['shape']} to eps={teacher.key['eps']}, not {list(shape)} "
                         f"to eps={eps}; solve_teacher with this shape and eps")


def _local_step(method: str, options: dict) -> tuple[str, int]:
    """The local step's kind and order: the sampler's (its `order` option) up to LOCAL_STEP."""
    SAMPLERS.lookup(method, field="config.sampling.method")
    if method not in LOCAL_STEP:
        raise ValueError(f"optimize_grid: config.sampling.method={method!r} is not supported; "
                         f"choose one of {sorted(LOCAL_STEP)} (one grid step per score call)")
    kind, order = LOCAL_STEP[method]
    return kind, min(order, _proxy_order(method, options))


def _proxy_order(method: str, options: dict) -> int:
    """The sampler's order (its option or default; 1 for DDIM), at most 2 for 'dpm' steps."""
    if "order" not in SAMPLERS.lookup(method).options:
        return 1
    order = int(options.get("order") or _default(method, "order"))
    return order if LOCAL_STEP[method][0] == "ipndm" else min(order, 2)


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
    return get_time_grid(grid, sde, nfe, eps, sigma_range,
                         data_scale=options.get("data_scale")).astype(np.float64)


def _fine_grid(sde: SDE, eps: float, n_fine: int) -> np.ndarray:
    """n_fine + 1 times uniform in log-SNR from T to eps (float64)."""
    lam = np.linspace(_log_snr(sde, sde.T), _log_snr(sde, eps), n_fine + 1)
    inner = np.asarray(sde.t_from_log_snr(jnp.asarray(lam[1:-1], jnp.float32)), np.float64)
    times = np.unique(np.concatenate([[sde.T, eps], inner]).astype(np.float32))[::-1]
    return times.astype(np.float64)


def _log_snr(sde: SDE, t: float) -> float:
    return float(sde.log_snr(jnp.asarray([t], jnp.float32))[0])


def _teacher(sde: SDE, score_fn: ScoreFn, shape, rng, times: np.ndarray, rtol: float,
             atol: float) -> tuple[np.ndarray, np.ndarray, int]:
    """States x_p (P, B, D) of the adaptive probability-flow solve at `times`, their data
    predictions m_p (P, B, D) (float64 numpy) and the solve's score calls."""
    ts = jnp.asarray(times, jnp.float32)
    x0_hat = steps.data_prediction(sde, score_fn)

    @jax.jit
    def solve(rng):
        x_T, _ = prior_sample(sde, rng, shape)
        _, nfe, ys = solve_flow(sde, score_fn, x_T, ts[0], ts[-1], rtol=rtol, atol=atol,
                                save_ts=ts)
        ys = ys.at[0].set(x_T)
        ms = jax.lax.map(lambda a: x0_hat(a[0], full_t(a[1], a[0])), (ys, ts))
        return ys, ms, nfe, jnp.all(jnp.isfinite(ys))

    ys, ms, nfe, ok = jax.device_get(solve(rng))
    if not ok:
        raise FloatingPointError("optimize_grid: the teacher solve failed (max_steps reached or "
                                 "NaN); check the score function, or loosen rtol / atol")
    flat = lambda a: np.asarray(a, np.float64).reshape(len(times), shape[0], -1)
    return flat(ys), flat(ms), int(nfe)


class _LocalCosts:
    """Local step costs on the teacher's states: `first()` (P, P) and `second()` (P, P, P) of
    the step `kind` ('dpm' or 'ipndm', module docstring)."""

    def __init__(self, sde: SDE, times: np.ndarray, xs: np.ndarray, ms: np.ndarray,
                 kind: str = "dpm"):
        alpha, sigma = (np.asarray(v, np.float64)
                        for v in sde.marginal_coeffs(jnp.asarray(times, jnp.float32)))
        self.alpha, self.sigma, self.lam = alpha, sigma, np.log(alpha) - np.log(sigma)
        self.kind = kind
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

    def first(self) -> np.ndarray:
        """(P, P): cost of the order-1 step i -> j (inf unless i < j); DDIM, which is also
        iPNDM's first-order step (Euler in y and rho)."""
        i, j = np.triu_indices(self.n_points, 1)
        c = self._exponential(np.stack([i, j]), order=1)
        terms = _linear_terms(lambda x, m: steps.exponential_step(x, m, 0.0, 0.0, c),
                              [2 * i, 2 * i + 1])
        cost = np.full((self.n_points,) * 2, np.inf)
        cost[i, j] = self._error(terms + [(-1.0, 2 * j)], j)
        return cost

    def second(self) -> np.ndarray:
        """(P, P, P): cost of the order-2 step i -> j with the previous point k (k < i < j)."""
        p = self.n_points
        k, i, j = np.meshgrid(*(np.arange(p),) * 3, indexing="ij")
        keep = (k < i) & (i < j)
        k, i, j = k[keep], i[keep], j[keep]
        if self.kind == "ipndm":
            terms = self._adams_bashforth_terms(k, i, j)
        else:  # DPM-Solver++(2M) from (x_i, m_i, m_k)
            c = self._exponential(np.stack([k, i, j]), order=2)
            terms = _linear_terms(lambda x, m, m_prev: steps.exponential_step(x, m, m_prev, 0.0, c),
                                  [2 * i, 2 * i + 1, 2 * k + 1])
        cost = np.full((p, p, p), np.inf)
        cost[k, i, j] = self._error(terms + [(-1.0, 2 * j)], j)
        return cost

    def _exponential(self, points: np.ndarray, order: int) -> steps.ExponentialCoeffs:
        """The exponential-integrator coefficients of the last step of each grid (columns of
        the fine-grid indices `points`, (n + 1, T)) at `order`."""
        c = steps.exponential_coeffs(self.alpha[points], self.sigma[points], self.lam[points],
                                     order)
        return steps.ExponentialCoeffs(*(v[-1] for v in c))._replace(order=order)

    def _adams_bashforth_terms(self, k, i, j) -> list[tuple[np.ndarray, np.ndarray]]:
        """iPNDM's second-order step i -> j after k: w_x x_i + w_i eps_i + w_k eps_k, with each
        noise prediction eps_p = (x_p - alpha_p m_p) / sigma_p in the stored vectors."""
        points = np.stack([k, i, j])
        w_x, w_eps = steps.adams_bashforth_weights(self.alpha[points], self.sigma[points], 2)
        terms = [(w_x[-1], 2 * i)]
        for w, p in ((w_eps[-1, :, 0], i), (w_eps[-1, :, 1], k)):
            eps = _linear_terms(lambda x, m, p=p: steps.noise_from_data(
                x, m, self.alpha[p], self.sigma[p]), [2 * p, 2 * p + 1])
            terms += [(w * coeff, idx) for coeff, idx in eps]
        return terms


def _linear_terms(step, indices: list) -> list[tuple[np.ndarray, np.ndarray]]:
    """(coefficient, vector index) of each input of `step`, a map linear in its inputs (with
    array coefficients over the cost's steps): its value on each unit input."""
    basis = np.eye(len(indices))
    return [(np.asarray(step(*basis[u]), np.float64), idx) for u, idx in enumerate(indices)]


def shortest_path(costs: _LocalCosts, n_steps: int, order: int,
                  last_first_order: bool = True) -> np.ndarray:
    """Indices 0 = i_0 < ... < i_n = P - 1 of the least total cost: first step at order 1,
    the last at order 1 when last_first_order (DPM-Solver++, UniPC), else at `order` (iPNDM)."""
    first = costs.first()
    end = costs.n_points - 1
    if n_steps < 1 or n_steps > end:
        raise ValueError(f"optimize_grid: {n_steps} steps do not fit on {end + 1} fine points; "
                         "give more n_fine")
    if order == 1 or n_steps == 1 or (n_steps == 2 and last_first_order):
        return _path_first_order(first, n_steps)
    second = costs.second()
    total = np.full((end + 1, end + 1), np.inf)  # total[i, j]: best cost ending i -> j
    total[0] = first[0]
    back = []
    for _ in range(n_steps - 2):
        cand = total[:, :, None] + second  # (k, i, j)
        back.append(np.argmin(cand, axis=0))
        total = np.min(cand, axis=0)
    last = first[:, end][None, :] if last_first_order else second[:, :, end]
    final = total + last  # the last step j -> end
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
    """Mean square distance to the teacher's endpoint of a differentiable copy of the sampler
    run from the draws on a grid given as traced times, and its gradient descent on the grid
    (LD3-style, Tong et al. 2025). kind 'dpm': DDIM (order 1) or DPM-Solver++(2M) (order 2,
    first and last steps at order 1); 'ipndm': iPNDM of that order (1-4)."""

    def __init__(self, sde: SDE, score_fn: ScoreFn, x_T, target, kind: str, order: int):
        self.sde, self.score_fn, self.kind, self.order = sde, score_fn, kind, order
        self.x0_hat = steps.data_prediction(sde, score_fn)
        self.x_T, self.target = x_T, target
        self._loss = jax.jit(lambda ts: self.loss(ts, self.x_T, self.target))
        self._grad = jax.jit(jax.value_and_grad(self._loss_of_logits))

    def __call__(self, times: np.ndarray) -> float:
        return float(self._loss(jnp.asarray(times, jnp.float32)))

    def loss(self, ts: jax.Array, x_T: jax.Array, target: jax.Array) -> jax.Array:
        x = self._ipndm(ts, x_T) if self.kind == "ipndm" else self._dpm(ts, x_T)
        return jnp.mean((x - target) ** 2)

    def _dpm(self, ts: jax.Array, x: jax.Array) -> jax.Array:
        """DDIM or DPM-Solver++(2M) as sampling/fast.py runs it (first and last steps at
        order 1)."""
        alpha, sigma = self.sde.marginal_coeffs(ts)
        coeffs = steps.exponential_coeffs(alpha, sigma, jnp.log(alpha) - jnp.log(sigma),
                                          self.order, lower_order_final=True)

        def step(carry, i):
            x, m_prev = carry
            m = self.x0_hat(x, full_t(ts[i], x))
            x = steps.exponential_step(x, m, m_prev, 0.0, jax.tree.map(lambda c: c[i], coeffs))
            return (x, m), None

        (x, _), _ = jax.lax.scan(step, (x, jnp.zeros_like(x)), jnp.arange(ts.shape[0] - 1))
        return x

    def _ipndm(self, ts: jax.Array, x: jax.Array) -> jax.Array:
        """iPNDM as sampling/ipndm.py runs it."""
        alpha, sigma = self.sde.marginal_coeffs(ts)
        w_x, w_eps = steps.adams_bashforth_weights(alpha, sigma, self.order)

        def step(carry, i):
            x, history = carry
            eps_hat = -sigma[i] * self.score_fn(x, full_t(ts[i], x))
            return steps.adams_bashforth_step(x, eps_hat, history, w_x[i], w_eps[i]), None

        history = jnp.zeros((steps.MAX_ORDER, *x.shape), x.dtype)
        (x, _), _ = jax.lax.scan(step, (x, history), jnp.arange(ts.shape[0] - 1))
        return x

    def _times(self, logits: jax.Array, t_end: jax.Array) -> jax.Array:
        return times_from_logits(self.sde, logits, t_end)

    def _loss_of_logits(self, logits, t_end, x_T, target):
        return self.loss(self._times(logits, t_end), x_T, target)

    def refine(self, times: np.ndarray, loss: float, n_steps: int, learning_rate: float,
               batch: int, patience: int) -> tuple[np.ndarray, int]:
        """Adam on the log-SNR increments of the grid (of proxy loss `loss`), one minibatch of
        `batch` draws a step. After each cycle through the draws the grid's loss on all of
        them is measured: a better grid is kept; otherwise the step size is halved and Adam
        restarts from the best grid, up to `patience` times in a row. Returns (the best grid,
        Adam steps taken)."""
        t_end = jnp.asarray(times[-1], jnp.float32)
        logits = grid_logits(self.sde, times)
        batch = max(1, min(batch, self.x_T.shape[0]))
        parts = [(self.x_T[s:s + batch], self.target[s:s + batch])
                 for s in range(0, self.x_T.shape[0] - batch + 1, batch)]
        adam = optax.scale_by_adam()
        state, scale = adam.init(logits), learning_rate
        best = (loss, np.asarray(times, np.float64), logits)
        stale, taken = 0, 0
        for taken in range(1, n_steps + 1):
            _, grad = self._grad(logits, t_end, *parts[(taken - 1) % len(parts)])
            updates, state = adam.update(grad, state)
            logits = logits - scale * updates
            if taken % len(parts):
                continue
            grid = np.asarray(self._times(logits, t_end), np.float64)
            value = self(grid)
            if value < best[0] * (1 - 1e-3) and np.all(np.diff(grid) < 0):
                best, stale = (value, grid, logits), 0
                continue
            stale += 1
            if stale >= patience:
                break
            logits, scale = best[2], scale / 2  # overshot: back to the best, smaller steps
            state = adam.init(logits)
        return best[1], taken


def grid_logits(sde: SDE, times: np.ndarray) -> jax.Array:
    """The logits of a grid's log-SNR increments (times_from_logits gives the grid back)."""
    lam = np.asarray(sde.log_snr(jnp.asarray(times, jnp.float32)), np.float64)
    return jnp.asarray(np.log(np.diff(lam)), jnp.float32)


def times_from_logits(sde: SDE, logits: jax.Array, t_end: jax.Array) -> jax.Array:
    """Times at log-SNR lambda_T + cumsum(softmax(logits)) (lambda(t_end) - lambda_T): a grid
    from T to t_end, ordered for any logits (the refinement's and the learner's variables)."""
    lam_T = sde.log_snr(jnp.asarray([sde.T], jnp.float32))[0]
    lam_end = sde.log_snr(t_end[None])[0]
    frac = jnp.concatenate([jnp.zeros(1), jnp.cumsum(jax.nn.softmax(logits))])
    lam = lam_T + frac * (lam_end - lam_T)
    inner = sde.t_from_log_snr(lam[1:-1])
    return jnp.concatenate([jnp.asarray([sde.T]), inner, t_end[None]])


def judge(per_draw: dict[str, np.ndarray], z: float = 2.0) -> str:
    """The candidate grid to keep, from each one's per-draw squared error (same draws).

    The least mean error wins, but a grid other than 'default' only if it also beats the
    default on significantly more than half of the draws (sign test, z standard deviations of
    the binomial). Gains that rest on a few draws (the errors are heavy-tailed: a handful of
    draws carry most of the mean) or within the noise do not justify a grid fitted to them.
    """
    best = min(per_draw, key=lambda name: float(np.mean(per_draw[name])))
    if best == "default":
        return best
    wins = int(np.sum(np.asarray(per_draw[best]) < per_draw["default"]))
    n = len(per_draw[best])
    return best if wins > n / 2 + z * np.sqrt(n) / 2 else "default"


def _sampler_error(method: str, sde: SDE, shape, eps: float, times: np.ndarray,
                   options: dict, score_fn: ScoreFn, x_T: jax.Array,
                   target: np.ndarray) -> np.ndarray:
    """Per draw: the mean square difference between the sampler's output from x_T on `times`
    and the teacher's endpoint, (B,)."""
    sample = get_sampler(method, sde, shape, eps=eps, ts=times, **options)
    run = jax.jit(lambda x: sample(jax.random.PRNGKey(0), score_fn, x_init=x)[0])
    x = jax.device_get(run(x_T))
    diff = np.asarray(x, np.float64).reshape(shape[0], -1) - target
    return np.mean(diff**2, axis=1)
