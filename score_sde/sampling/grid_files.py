"""Time grids stored in files: what `--mode optimize_grid` writes and `grid='file:PATH'` reads.

A grid file is a small JSON object (local or gs://, through score_sde.storage):

  format   "score_sde time grid", version 1
  times    the n + 1 decreasing times T = t_0 > ... > t_n = eps
  sampler, nfe, steps   the sampler and budget the grid was made for (steps = n)
  sde      the SDE's class and parameters (sde_description), eps
  ...      anything else the writer records (checkpoint step, cost before / after)

A grid is only right for the sampler, NFE and SDE it was made for, so reading one for another
gives one error that says what the file holds and how to make the right one.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from score_sde import storage
from score_sde.sde_lib import SDE

FORMAT, VERSION = "score_sde time grid", 1
PREFIX = "file:"
_REMEDY = "make one with --mode optimize_grid (score_sde.sampling.optimize_grid)"


def is_grid_file(grid: str | None) -> bool:
    """True for a grid option of the form 'file:PATH'."""
    return isinstance(grid, str) and grid.startswith(PREFIX)


def sde_description(sde: SDE) -> dict[str, Any]:
    """The SDE's class and parameters, without N (the continuous-time grid does not use it)."""
    fields = dataclasses.asdict(sde) if dataclasses.is_dataclass(sde) else {}
    return {"name": type(sde).__name__,
            **{k: float(v) for k, v in sorted(fields.items()) if k != "N"}}


def write_grid_file(path: str, times: np.ndarray, *, sampler: str, nfe: int, sde: SDE,
                    eps: float, **info: Any) -> str:
    """Write `times` (decreasing, from sde.T to eps) as a grid file; returns the path."""
    times = np.asarray(times, np.float64)
    _check_times(times, sde, eps, where=str(path))
    record = {"format": FORMAT, "version": VERSION, "times": [float(t) for t in times],
              "sampler": str(sampler), "nfe": int(nfe), "steps": len(times) - 1,
              "sde": sde_description(sde), "eps": float(eps), **info}
    storage.write_json(path, record)
    return str(path)


def read_grid_file(path: str) -> dict[str, Any]:
    """The record of a grid file; one clear error if it is missing or not a grid file."""
    p = storage.path(path)
    if not p.exists():
        raise FileNotFoundError(f"grid file {path} does not exist; {_REMEDY}")
    try:
        record = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"grid file {path} is not JSON ({e}); {_REMEDY}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{path} is not a score_sde grid file (no \"format\": \"{FORMAT}\"); "
                         f"{_REMEDY}")
    if record.get("version") != VERSION:
        raise ValueError(f"grid file {path} has version {record.get('version')!r}; this "
                         f"score_sde reads version {VERSION}")
    return record


def load_grid(path: str, sde: SDE, n_steps: int, eps: float) -> np.ndarray:
    """The times of a grid file for a sampler taking n_steps steps on `sde` down to eps.

    Checks that the file was made for this SDE, eps and number of steps (float32 result, as
    grids.get_time_grid returns).
    """
    record = read_grid_file(path)
    held = f"grid file {path} holds a grid for {record['sampler']} at nfe={record['nfe']}"
    if record["sde"] != sde_description(sde):
        raise ValueError(f"{held} on the SDE {record['sde']}, not on this config's "
                         f"{sde_description(sde)}; {_REMEDY} for this model")
    if record["steps"] != n_steps:
        raise ValueError(f"{held} ({record['steps']} steps); this sampler takes {n_steps} steps: "
                         f"set config.sampling.nfe={record['nfe']} (and "
                         f"method={record['sampler']}), or {_REMEDY} at this nfe")
    if not np.isclose(record["eps"], eps, rtol=1e-6, atol=0.0):
        raise ValueError(f"{held} ending at eps={record['eps']}; this sampler ends at "
                         f"eps={eps}; {_REMEDY} for this eps")
    times = np.asarray(record["times"], np.float64)
    _check_times(times, sde, eps, where=f"grid file {path}")
    return times.astype(np.float32)


def check_sampler(path: str, method: str) -> None:
    """One clear error if the grid file at `path` was made for another sampler than `method`."""
    record = read_grid_file(path)
    if record["sampler"] != method:
        raise ValueError(f"grid file {path} holds a grid for {record['sampler']} at "
                         f"nfe={record['nfe']}, not for config.sampling.method={method!r}: "
                         f"set method={record['sampler']!r}, or {_REMEDY} for {method}")


def _check_times(times: np.ndarray, sde: SDE, eps: float, where: str) -> None:
    if times.ndim != 1 or len(times) < 2 or not np.all(np.isfinite(times)):
        raise ValueError(f"{where}: times must be a list of at least 2 finite numbers")
    if np.any(np.diff(times) >= 0):
        raise ValueError(f"{where}: times must be strictly decreasing, got {times.tolist()}")
    ends = np.asarray([sde.T, eps], np.float64)
    if not np.allclose(times[[0, -1]], ends, rtol=1e-5, atol=0.0):
        raise ValueError(f"{where}: times must run from T={sde.T} to eps={eps}, got "
                         f"{times[0]} ... {times[-1]}")
