"""The eval-hook registry: metrics computed from an evaluated checkpoint's samples.

A hook is `hook(config, sample_dir, step) -> {name: value}`; `--mode eval` runs every
registered hook after sampling a checkpoint into sample_dir (files `host_<p>/samples_<r>.npz`,
key 'samples': uint8 NHWC). Hooks register here, on the library floor, so the module that
defines one (sample_quality) and the driver that runs them (evaluate) need not import each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from etils.epath import Path  # local or gs:// paths alike

from score_sde.registry import Registry

EvalHook = Callable[[Any, Path, int], dict[str, float]]
EVAL_HOOKS: Registry[EvalHook] = Registry("eval hook")


def register_eval_hook(name: str) -> Callable[[EvalHook], EvalHook]:
    """Decorator: run `hook(config, sample_dir, step)` on every evaluated checkpoint's samples."""
    def add(hook: EvalHook) -> EvalHook:
        EVAL_HOOKS[name] = hook
        return hook

    return add


def sample_files(sample_dir: str | Path) -> list[Path]:
    """Every samples_<round>.npz of an evaluated checkpoint (all hosts)."""
    return sorted(Path(sample_dir).glob("host_*/samples_*.npz"))
