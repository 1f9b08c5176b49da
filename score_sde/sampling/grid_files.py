"""Time grids stored in files: what `--mode optimize_grid` writes and `grid='file:PATH'` reads.

A grid file is a small JSON object (local or gs://, through score_sde.storage):

  format   "score_sde time grid", version 1
  times    the n + 1 decreasing times T = t_0 > ... > t_n = eps
  sampler, nfe, steps   the sampler and budget the grid was made for (steps = n)
  sde      the SDE's class and parameters (sde_description), eps
  ...      anything else the writer records (checkpoint step, cost before / after)

A grid is only right for the sampler, NFE and SDE it was made for, so reading one for another
gives one error that says what the file holds and how to make the right one.

A coefficient file (format "score_sde solver coefficients", version 1) is what
`--mode optimize_grid` writes for the 'learned' sampler (sampling/learned): the same record
plus `weights`, the (steps, MAX_ORDER) weights of the data predictions of each step, and
`data_shape`, the shape of one sample; it is read with coefficients='file:PATH' and refused,
in one line, for another SDE, eps, data shape or NFE, and where a grid file is expected.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from score_sde import storage
from score_sde.sde_lib import SDE

FORMAT, VERSION = "score_sde time grid", 1
COEFFICIENTS_FORMAT = "score_sde solver coefficients"
PREFIX = "file:"
_REMEDY = "make one with --mode optimize_grid (score_sde.sampling.optimize_grid)"
_COEFF_REMEDY = ("make them with --mode optimize_grid --config.sampling.method=learned "
                 "(score_sde.sampling.learn_coefficients)")


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
    return _read_record(path, FORMAT, "grid", _REMEDY)


def _read_record(path: str, fmt: str, what: str, remedy: str) -> dict[str, Any]:
    """The JSON record at `path` of format `fmt`; one clear error otherwise (a grid file where
    coefficients are expected, or the other way round, says what it holds)."""
    p = storage.path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} file {path} does not exist; {remedy}")
    try:
        record = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what} file {path} is not JSON ({e}); {remedy}") from None
    held = record.get("format") if isinstance(record, dict) else None
    if held == COEFFICIENTS_FORMAT and fmt != held:
        raise ValueError(f"{path} holds learned solver coefficients for nfe={record.get('nfe')}, "
                         f"not a time grid: sample it with config.sampling.method='learned' "
                         f"and config.sampling.coefficients='file:{path}', or {remedy}")
    if held == FORMAT and fmt != held:
        raise ValueError(f"{path} holds a time grid for {record.get('sampler')} at "
                         f"nfe={record.get('nfe')}, not learned solver coefficients: sample it "
                         f"with config.sampling.grid='file:{path}', or {remedy}")
    if held != fmt:
        raise ValueError(f"{path} is not a score_sde {what} file (no \"format\": \"{fmt}\"); "
                         f"{remedy}")
    if record.get("version") != VERSION:
        raise ValueError(f"{what} file {path} has version {record.get('version')!r}; this "
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


# ------------------------------------------------------------------- learned solver coefficients


def write_coefficient_file(path: str, times: np.ndarray, weights: np.ndarray, *, nfe: int,
                           sde: SDE, eps: float, data_shape: tuple[int, ...],
                           **info: Any) -> str:
    """Write the learned solver of `times` (n + 1, decreasing from sde.T to eps) and `weights`
    (n, K) as a coefficient file for samples of `data_shape`; returns the path."""
    times, weights = np.asarray(times, np.float64), np.asarray(weights, np.float64)
    _check_times(times, sde, eps, where=str(path))
    if weights.ndim != 2 or weights.shape[0] != len(times) - 1:
        raise ValueError(f"{path}: weights must be (steps, K) = ({len(times) - 1}, K), got "
                         f"{weights.shape}")
    record = {"format": COEFFICIENTS_FORMAT, "version": VERSION, "sampler": "learned",
              "nfe": int(nfe), "steps": len(times) - 1, "times": [float(t) for t in times],
              "weights": weights.tolist(), "sde": sde_description(sde), "eps": float(eps),
              "data_shape": [int(d) for d in data_shape], **info}
    storage.write_json(path, record)
    return str(path)


def load_coefficients(path: str, sde: SDE, eps: float, data_shape: tuple[int, ...],
                      nfe: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(times (n + 1,), weights (n, K), first) of a coefficient file, float32, after checking
    that it was made for this SDE, eps, sample shape and (when given) nfe: one line otherwise.
    first: {'analytic_first_step': bool, 'data_scale': float or None} of the file."""
    record = _read_record(path, COEFFICIENTS_FORMAT, "coefficient", _COEFF_REMEDY)
    held = (f"coefficient file {path} holds a learned solver at nfe={record['nfe']} for samples "
            f"of shape {tuple(record['data_shape'])}")
    if record["sde"] != sde_description(sde):
        raise ValueError(f"{held} on the SDE {record['sde']}, not on this model's "
                         f"{sde_description(sde)}; {_COEFF_REMEDY} for this model")
    if tuple(record["data_shape"]) != tuple(data_shape):
        raise ValueError(f"{held}, not of this model's shape {tuple(data_shape)}; "
                         f"{_COEFF_REMEDY} for this model")
    if nfe is not None and int(nfe) != record["nfe"]:
        raise ValueError(f"{held}, not at nfe={nfe}: set config.sampling.nfe={record['nfe']}, "
                         f"or {_COEFF_REMEDY} at nfe={nfe}")
    if not np.isclose(record["eps"], eps, rtol=1e-6, atol=0.0):
        raise ValueError(f"{held} ending at eps={record['eps']}; this sampler ends at eps={eps}; "
                         f"{_COEFF_REMEDY} for this eps")
    times = np.asarray(record["times"], np.float64)
    _check_times(times, sde, eps, where=f"coefficient file {path}")
    weights = np.asarray(record["weights"], np.float64)
    if weights.ndim != 2 or weights.shape[0] != len(times) - 1:
        raise ValueError(f"coefficient file {path}: weights must be ({len(times) - 1}, K), got "
                         f"{weights.shape}")
    first = {"analytic_first_step": bool(record.get("analytic_first_step", False)),
             "data_scale": record.get("data_scale")}
    return times.astype(np.float32), weights.astype(np.float32), first
