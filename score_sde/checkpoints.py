"""Training-state checkpoints with orbax, in the published layout.

    workdir/checkpoints/<step>/       snapshots every training.snapshot_freq (all kept)
    workdir/checkpoints-meta/<step>/  pre-emption checkpoint every
                                      training.snapshot_freq_for_preemption (only the newest kept)

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a run
killed mid-write leaves no directory that looks complete. On restart the newest checkpoint of
either kind is restored; a directory that is incomplete or fails to restore is skipped with a
message naming it, never loaded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from score_sde.published import load_published

__all__ = ["Checkpoints", "abstract_like", "is_complete", "load_published",
           "state_from_published"]

SNAPSHOT_DIR = "checkpoints"
META_DIR = "checkpoints-meta"
ITEM = "state"


def _manager(directory: Path, max_to_keep: int | None, async_save: bool) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(directory.absolute(), options=options, item_names=(ITEM,))


def abstract_like(state: Any, sharding: jax.sharding.Sharding | None = None) -> Any:
    """Shapes/dtypes (and target sharding) of a state, the restore target."""
    def leaf(x):
        s = sharding if sharding is not None else getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)

    return jax.tree.map(leaf, state)


def is_complete(step_dir: Path) -> bool:
    """Orbax's finalised layout: step metadata plus the item's metadata (no tmp suffix)."""
    return ((step_dir / "_CHECKPOINT_METADATA").is_file()
            and (step_dir / ITEM).is_dir()
            and any((step_dir / ITEM / f).exists() for f in ("_METADATA", "manifest.ocdbt")))


@dataclasses.dataclass
class Checkpoints:
    """Snapshots and the pre-emption checkpoint of one workdir."""

    workdir: str | Path
    async_save: bool = True

    def __post_init__(self):
        self.workdir = Path(self.workdir)
        self.snapshots = _manager(self.workdir / SNAPSHOT_DIR, None, self.async_save)
        self.meta = _manager(self.workdir / META_DIR, 1, self.async_save)

    def save_snapshot(self, step: int, state: Any) -> None:
        self.snapshots.save(step, args=ocp.args.Composite(**{ITEM: ocp.args.StandardSave(state)}))

    def save_preemption(self, step: int, state: Any) -> None:
        self.meta.save(step, args=ocp.args.Composite(**{ITEM: ocp.args.StandardSave(state)}))

    def snapshot_steps(self) -> list[int]:
        return sorted(self.snapshots.all_steps())

    def _candidates(self, managers) -> list[tuple[int, str, ocp.CheckpointManager]]:
        found = []
        for name, mgr in managers:
            mgr.reload()
            found += [(step, name, mgr) for step in mgr.all_steps()]
        return sorted(found, key=lambda c: (c[0], c[1] == META_DIR), reverse=True)

    def _try_restore(self, mgr, step: int, name: str, target: Any) -> Any | None:
        step_dir = self.workdir / name / str(step)
        if not is_complete(step_dir):
            print(f"Skipping incomplete checkpoint {step_dir} (missing metadata)", flush=True)
            return None
        try:
            restored = mgr.restore(step, args=ocp.args.Composite(
                **{ITEM: ocp.args.StandardRestore(abstract_like(target))}))
        except Exception as e:  # corrupt data files, wrong structure, ...
            print(f"Skipping unreadable checkpoint {step_dir}: {type(e).__name__}: "
                  f"{str(e).splitlines()[0][:200] if str(e) else ''}", flush=True)
            return None
        return restored[ITEM]

    def restore_latest(self, target: Any, snapshots_only: bool = False) -> tuple[Any, int | None]:
        """The newest complete checkpoint restored into `target`'s structure, or (target, None)."""
        managers = [(SNAPSHOT_DIR, self.snapshots)]
        if not snapshots_only:
            managers.append((META_DIR, self.meta))
        for step, name, mgr in self._candidates(managers):
            state = self._try_restore(mgr, step, name, target)
            if state is not None:
                return state, step
        return target, None

    def restore_snapshot(self, target: Any, step: int) -> Any:
        """A given snapshot; a clear error if it is not there or cannot be read."""
        self.snapshots.reload()
        if step not in self.snapshots.all_steps():
            raise FileNotFoundError(
                f"no checkpoint for step {step} in {self.workdir / SNAPSHOT_DIR}; available "
                f"steps: {self.snapshot_steps() or 'none (train first)'}")
        state = self._try_restore(self.snapshots, step, SNAPSHOT_DIR, target)
        if state is None:
            raise RuntimeError(f"checkpoint {self.workdir / SNAPSHOT_DIR / str(step)} is "
                               "incomplete or corrupt")
        return state

    def wait(self) -> None:
        self.snapshots.wait_until_finished()
        self.meta.wait_until_finished()

    def close(self) -> None:
        self.snapshots.close()
        self.meta.close()


def state_from_published(state: Any, path: str, config, keep_step: bool = False) -> Any:
    """A TrainState whose params and EMA params come from a published checkpoint.

    The optimizer state stays freshly initialised (fine-tuning starts a new Adam state) and so
    does the PRNG key; the step is the published one with `keep_step`, else unchanged.
    """
    from score_sde import published

    raw = published.load_published_state(path)
    ema = published.params_from_state(raw, config, use_ema=True, source=path)
    params = published.params_from_state(raw, config, use_ema=False, source=path)
    _check_same_tree(state.params, params, path)
    if keep_step:
        state = state.replace(step=jnp.asarray(int(np.asarray(raw["step"])), jnp.int32))
    return state.replace(params=params, ema_params=ema)


def _check_same_tree(expected: Any, got: Any, path: str) -> None:
    want = jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), expected)
    have = jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), got)
    if jax.tree.structure(want) != jax.tree.structure(have) or want != have:
        raise ValueError(f"the published checkpoint {path} does not match the model built from "
                         "config.model (different parameter names or shapes); use the config it "
                         "was trained with")
