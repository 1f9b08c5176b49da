"""The config a workdir was trained with: workdir/config.json, and what changed on resume.

A training run writes its full config there when it starts (`record`, replacing the file in one
step), so a workdir says how it was made; a run that resumes with other values first prints each
field that differs (old -> new). A change is allowed (a longer n_iters, a lower learning rate),
only made visible. `load` reads it back (a teacher's config for distillation, a benchmark's).
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
from etils import epath

from score_sde import storage

CONFIG_FILE = "config.json"
ABSENT = "<absent>"


def _flat(tree: dict[str, Any], prefix: str = "config") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}.{key}"))
        else:
            out[f"{prefix}.{key}"] = value
    return out


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """One 'config.a.b: old -> new' line per leaf field that differs (sorted by name)."""
    a, b = _flat(old), _flat(new)
    return [f"{k}: {json.dumps(a.get(k, ABSENT))} -> {json.dumps(b.get(k, ABSENT))}"
            for k in sorted(a.keys() | b.keys()) if a.get(k, ABSENT) != b.get(k, ABSENT)]


def _as_json(config) -> dict[str, Any]:
    """The config as plain JSON values (tuples become lists, as they are stored)."""
    return json.loads(config.to_json_best_effort(sort_keys=True))


def record(config, workdir: str | os.PathLike) -> list[str]:
    """Print how `config` differs from workdir/config.json, then write it there.

    Returns the printed change lines (empty for a new workdir or the same config). A config.json
    that cannot be parsed is replaced with a note, never an error.
    """
    path = epath.Path(workdir) / CONFIG_FILE
    new = _as_json(config)
    changes = []
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            print(f"Replacing {path}: it is not valid JSON", flush=True)
        else:
            changes = config_changes(old, new)
    if changes:
        print(f"The config differs from the one in {path} (old -> new):", flush=True)
        for line in changes:
            print(f"  {line}", flush=True)
    storage.write_text(path, json.dumps(new, indent=2, sort_keys=True) + "\n")
    return changes


def _tuples(value: Any) -> Any:
    """JSON's lists back to the tuples the config held (a config stores sequences as tuples)."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def load(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The config that `record` wrote to workdir/config.json, its sequences as tuples (JSON
    has one kind: the configs hold tuples, and the published fir_kernel list reads the same).

    A missing file is a FileNotFoundError, one that is not a JSON object a ValueError; both
    name the path.
    """
    path = epath.Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (no training run recorded its config "
                                "there)")
    try:
        values = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); it is not a config that "
                         "training recorded") from e
    if not isinstance(values, dict):
        raise ValueError(f"{path} holds a JSON {type(values).__name__}, not a config")
    return ml_collections.ConfigDict(_tuples(values))
