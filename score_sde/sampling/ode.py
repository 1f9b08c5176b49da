"""Probability-flow ODE sampler: dx/dt = f - g^2 score / 2 from T to eps with diffrax, on device."""

from __future__ import annotations

import dataclasses

import diffrax
import jax.numpy as jnp
import numpy as np

from score_sde.registry import Registry
from score_sde.sampling.common import (
    full_t,
    initial_state,
    step_times,
    with_path,
)
from score_sde.sampling.registry import register_sampler
from score_sde.sampling.steps import data_prediction
from score_sde.sde_lib import SDE, ScoreFn


@dataclasses.dataclass(frozen=True)
class OdeSolver:
    """A diffrax solver and its score calls: `first` once plus `per_step` per (tried) step."""

    make: type
    per_step: int
    first: int
    adaptive: bool = True


# Counts measured with a host-callback counter (tests/test_sampling.py checks them): the FSAL
# Runge-Kutta pairs reuse the last stage, plus one evaluation at the start.
ODE_SOLVERS: Registry[OdeSolver] = Registry("ODE solver", field="solver", entries={
    "tsit5": OdeSolver(diffrax.Tsit5, per_step=6, first=1),
    "dopri5": OdeSolver(diffrax.Dopri5, per_step=6, first=1),
    "dopri8": OdeSolver(diffrax.Dopri8, per_step=13, first=1),
    "bosh3": OdeSolver(diffrax.Bosh3, per_step=3, first=1),
    "heun": OdeSolver(diffrax.Heun, per_step=2, first=0),
    "euler": OdeSolver(diffrax.Euler, per_step=1, first=0, adaptive=False),
})


def get_ode_solver(name: str) -> OdeSolver:
    return ODE_SOLVERS.lookup(name)


def solve_flow(sde: SDE, score_fn: ScoreFn, x, t0: float, t1: float, *, solver: str = "tsit5",
               rtol: float = 1e-5, atol: float = 1e-5, n_steps: int | None = None,
               max_steps: int = 16384, ts: np.ndarray | None = None,
               save_ts: np.ndarray | None = None):
    """Integrate the probability-flow ODE from t0 to t1; returns (x(t1), nfe[, path]).

    Adaptive (PID controller, rtol/atol) unless n_steps is given (then fixed steps; with `ts`,
    times from t0 to t1, a step to each of them). save_ts (times from t0 to t1) adds the path:
    the solution at them, (len(save_ts), *x.shape). A failed solve (max_steps reached) returns
    NaN rather than raising: diffrax's raise is a host callback that would gather a sharded
    batch onto one device.
    """
    spec = get_ode_solver(solver)
    if n_steps is None and not spec.adaptive:
        raise ValueError(f"solver={solver!r} has no error estimate: give nfe= for fixed steps")
    rsde = sde.reverse(score_fn, probability_flow=True)
    term = diffrax.ODETerm(lambda t, y, args: rsde.sde(y, full_t(t, y))[0])
    if n_steps is None:
        control = dict(stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol), dt0=None)
    elif ts is not None:  # fixed steps onto given times
        control = dict(stepsize_controller=diffrax.StepTo(jnp.asarray(ts)), dt0=None)
    else:
        control = dict(dt0=(t1 - t0) / n_steps)
    saveat = (diffrax.SaveAt(t1=True) if save_ts is None
              else diffrax.SaveAt(ts=jnp.asarray(save_ts)))
    sol = diffrax.diffeqsolve(term, spec.make(), t0, t1, y0=x, saveat=saveat,
                              max_steps=max_steps, throw=False, **control)
    nfe = spec.first + spec.per_step * sol.stats["num_steps"]
    ok = sol.result == diffrax.RESULTS.successful
    ys = jnp.where(ok, sol.ys, jnp.nan)
    out = (ys[-1], jnp.asarray(nfe, jnp.int32))
    return out if save_ts is None else (*out, ys)


@register_sampler("ode", merges=False, fields={"solver": "ode_solver", "ts": None})
def ode_sampler(sde: SDE, shape: tuple[int, ...], *, solver: str = "tsit5", rtol: float = 1e-5,
                atol: float = 1e-5, nfe: int | None = None, eps: float = 1e-3,
                noise_removal: bool = False, max_steps: int = 16384, ts=None, sharding=None):
    """x_T ~ prior (or x_init), then the probability-flow ODE down to eps (black-box solver).

    nfe= turns adaptive stepping into fixed steps: steps = (nfe - first) // calls per step.
    noise_removal adds one Tweedie step x0 = E[x_0 | x_eps] (+1 score call). `ts` (decreasing
    times in [eps, T]): the solve runs from ts[0] to ts[-1]; a fixed-step solve (nfe given)
    steps to each of them; return_path gives the (adaptive or fixed) solution at them.
    """
    spec = get_ode_solver(solver)
    n_steps = None
    if nfe is not None:
        n_steps = max((nfe - spec.first - int(noise_removal)) // spec.per_step, 1)
    times = None
    if ts is not None:
        times = step_times("ode", sde, eps, ts, "uniform", 1)
        n_steps = None if (n_steps is None and spec.adaptive) else len(times) - 1
    t0, t1 = (sde.T, eps) if times is None else (float(times[0]), float(times[-1]))

    def sample(rng, score_fn, project=None, *, x_init=None, return_path: bool = False):
        if project is not None:
            raise ValueError("the adaptive ODE sampler has no fixed steps to project at; use "
                             "'pc', 'ddim', 'heun', 'dpm_solver++', 'unipc' or 'ipndm' for "
                             "inpainting / colorization")
        x, _ = initial_state(sde, rng, shape, sharding, x_init)
        x, n, *path = solve_flow(sde, score_fn, x, t0, t1, solver=solver, rtol=rtol, atol=atol,
                                 n_steps=n_steps, max_steps=max_steps, ts=times,
                                 save_ts=sample.ts if return_path else None)
        if noise_removal:
            x, n = data_prediction(sde, score_fn)(x, full_t(t1, x)), n + 1
            path = [p.at[-1].set(x) for p in path]
        return with_path(x, n, path[0] if path else None, return_path)

    sample.ts = times if times is not None else np.asarray([t0, t1], np.float32)
    return sample
