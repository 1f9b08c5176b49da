"""Training-state checkpoints with orbax, in the published layout.

    workdir/checkpoints/<step>/       snapshots every training.snapshot_freq (all kept)
    workdir/checkpoints-meta/<step>/  pre-emption checkpoint every
                                      training.snapshot_freq_for_preemption (only the newest kept)

Orbax writes each checkpoint into a temporary directory (`<step>.orbax-checkpoint-tmp...`) and
renames it when complete, so a run killed mid-write, or a write that failed (a full disk), leaves
no directory that looks complete. On restart the newest checkpoint of either kind is restored;
an unfinished, incomplete or unreadable one is skipped with one line naming it, never loaded.
Saves run in the background; a failed one raises `CheckpointError` (one line: the directory and
the OS error) from the next `check()`, `save_*()` or `wait()`, so training stops at once.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from score_sde.published import load_published

__all__ = ["CheckpointError", "Checkpoints", "abstract_like", "is_complete", "load_published",
           "state_from_published"]

SNAPSHOT_DIR = "checkpoints"
META_DIR = "checkpoints-meta"
ITEM = "state"
TMP_MARK = ".orbax-checkpoint-tmp"


class CheckpointError(OSError):
    """A checkpoint could not be written, or none of those found could be read."""


def _manager(directory: epath.Path, max_to_keep: int | None,
             async_save: bool) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(directory, options=options, item_names=(ITEM,))


def _absolute(path: str | os.PathLike) -> epath.Path:
    path = epath.Path(path)
    return path if "://" in str(path) else path.absolute()


def abstract_like(state: Any, sharding: jax.sharding.Sharding | None = None) -> Any:
    """Shapes/dtypes (and target sharding) of a state, the restore target. Leaves that are
    `ocp.PLACEHOLDER` stay so: orbax skips reading them (a partial restore)."""
    def leaf(x):
        if x is ocp.PLACEHOLDER:
            return x
        s = sharding if sharding is not None else getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)

    return jax.tree.map(leaf, state)


def _has_placeholders(tree: Any) -> bool:
    return any(x is ocp.PLACEHOLDER for x in jax.tree.leaves(tree))


def _restore_partial(item_dir: epath.Path, abstract: Any) -> Any:
    """The leaves of `abstract` that are not placeholders, read from one checkpoint item.

    A checkpointer of its own: the managers' handler for the item is the standard one (which
    takes no placeholders), and one manager cannot restore an item with two kinds of handler.
    """
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as reader:
        return reader.restore(item_dir, args=ocp.args.PyTreeRestore(
            item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract)))


def is_complete(step_dir: str | os.PathLike) -> bool:
    """Orbax's finalised layout: step metadata plus the item's metadata (no tmp suffix)."""
    step_dir = epath.Path(step_dir)
    return ((step_dir / "_CHECKPOINT_METADATA").is_file()
            and (step_dir / ITEM).is_dir()
            and any((step_dir / ITEM / f).exists() for f in ("_METADATA", "manifest.ocdbt")))


def os_error_text(error: BaseException) -> str:
    """The operating-system reason behind an orbax/tensorstore error ("No space left on
    device"), else the error's first line, shortened."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    text = str(error)
    code = re.search(r"os_error_code='?(\d+)", text)
    if code:
        return os.strerror(int(code.group(1)))
    first = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {first[:200]}"


def _read_error_text(error: BaseException) -> str:
    """One line for a failed restore: the type and the gist of the message.

    A tensorstore error is a chain "STATUS: Error opening ...: ...: <file>: <reason>" followed
    by the JSON spec of the array; its last two links name the bad file and what is wrong.
    """
    text = str(error).split(" [tensorstore_spec")[0]
    text = text.splitlines()[0] if text else ""
    links = text.split(": ")
    if len(links) > 3 and links[0].isupper():
        text = ": ".join(links[-2:])
    return f"{type(error).__name__}: {text[:300]}"


def _ignore_closed_loop_reports() -> None:
    """Drop tensorstore's 'Event loop is closed' reports after a failed restore or save.

    When one array of a checkpoint cannot be read (or written), orbax stops its event loop
    while the operations on the other arrays are still in flight; each of them then reports
    "Event loop is closed" through sys.unraisablehook (hundreds of identical tracebacks, no
    information). Every other unraisable error still reaches the previous hook.
    """
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop_reports", False):
        return

    def hook(unraisable):
        if (isinstance(unraisable.exc_value, RuntimeError)
                and str(unraisable.exc_value) == "Event loop is closed"):
            return
        previous(unraisable)

    hook.drops_closed_loop_reports = True
    sys.unraisablehook = hook


@dataclasses.dataclass
class Checkpoints:
    """Snapshots and the pre-emption checkpoint of one workdir (a local path or gs://)."""

    workdir: str | os.PathLike
    async_save: bool = True

    def __post_init__(self):
        self.workdir = _absolute(self.workdir)
        _ignore_closed_loop_reports()
        self.snapshots = _manager(self.workdir / SNAPSHOT_DIR, None, self.async_save)
        self.meta = _manager(self.workdir / META_DIR, 1, self.async_save)
        self._managers = {SNAPSHOT_DIR: self.snapshots, META_DIR: self.meta}
        self._pending: dict[str, int] = {}  # kind -> step of a save not yet known to be done
        self._failed = False  # a save failed and was reported: closing stays quiet
        # what the last restore skipped: (directory, why), e.g. (.../checkpoints/11, "unreadable")
        self.skipped: list[tuple[epath.Path, str]] = []
        self.last_read_error = ""

    # ------------------------------------------------------------------------- saving

    def save_snapshot(self, step: int, state: Any) -> None:
        self._save(SNAPSHOT_DIR, step, state)

    def save_preemption(self, step: int, state: Any) -> None:
        self._save(META_DIR, step, state)

    def _save(self, kind: str, step: int, state: Any) -> None:
        self._finish(kind)  # the previous save of this kind, failed or not, is known first
        self._pending[kind] = step
        try:
            self._managers[kind].save(
                step, args=ocp.args.Composite(**{ITEM: ocp.args.StandardSave(state)}))
        except Exception as e:  # noqa: BLE001  (a synchronous part of the write failed)
            raise self._save_error(kind, e) from e

    def check(self) -> None:
        """Raise CheckpointError if a background save has failed; never waits for one."""
        for kind in list(self._pending):
            if not self._managers[kind].is_saving_in_progress():
                self._finish(kind)

    def wait(self) -> None:
        """Wait until every save is committed; CheckpointError if one failed."""
        for kind in list(self._pending):
            self._finish(kind)

    def _finish(self, kind: str) -> None:
        if kind not in self._pending:
            return
        try:
            self._managers[kind].wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._save_error(kind, e) from e
        self._pending.pop(kind)

    def _save_error(self, kind: str, error: BaseException) -> CheckpointError:
        step = self._pending.pop(kind)
        self._failed = True
        self._close_quietly()  # the other kind's save is still committed; threads end
        kept = self.newest_complete()
        kept = (f"the newest complete checkpoint {kept} is kept" if kept
                else "no complete checkpoint exists yet")
        return CheckpointError(f"could not write the checkpoint {self.workdir / kind / str(step)}"
                               f" ({os_error_text(error)}); {kept}; the run stopped")

    def newest_complete(self) -> epath.Path | None:
        """The complete checkpoint of either kind with the highest step (a directory)."""
        found = [(int(d.name), d) for kind in self._managers for d in self._step_dirs(kind)
                 if is_complete(d)]
        return max(found, key=lambda c: c[0])[1] if found else None

    def _step_dirs(self, kind: str) -> list[epath.Path]:
        root = self.workdir / kind
        return [d for d in root.iterdir() if d.name.isdigit()] if root.is_dir() else []

    # ------------------------------------------------------------------------- restoring

    def snapshot_steps(self) -> list[int]:
        return sorted(self.snapshots.all_steps())

    def _candidates(self, kinds: list[str]) -> list[tuple[int, str]]:
        found = []
        for kind in kinds:
            self._managers[kind].reload()
            found += [(step, kind) for step in self._managers[kind].all_steps()]
        return sorted(found, key=lambda c: (c[0], c[1] == META_DIR), reverse=True)

    def _skip(self, step_dir: epath.Path, what: str, why: str, announce: bool = True) -> None:
        self.skipped.append((step_dir, what))
        if announce and jax.process_index() == 0:
            print(f"Skipping {what} checkpoint {step_dir}{why}", flush=True)

    def _skip_unfinished(self, kinds: list[str]) -> None:
        for kind in kinds:
            root = self.workdir / kind
            if root.is_dir():
                for d in sorted(root.glob(f"*{TMP_MARK}*"), key=lambda d: d.name):
                    self._skip(d, "unfinished", " (a write that was interrupted, failed or is "
                               "still in progress)")

    def _try_restore(self, step: int, kind: str, target: Any, announce: bool = True
                     ) -> Any | None:
        step_dir = self.workdir / kind / str(step)
        if not is_complete(step_dir):
            self._skip(step_dir, "incomplete", " (missing metadata)", announce)
            return None
        try:
            abstract = abstract_like(target)
            if _has_placeholders(abstract):  # e.g. the EMA weights alone (inference)
                return _restore_partial(step_dir / ITEM, abstract)
            restored = self._managers[kind].restore(step, args=ocp.args.Composite(
                **{ITEM: ocp.args.StandardRestore(abstract)}))
        except Exception as e:  # noqa: BLE001  (corrupt data files, wrong structure, ...)
            self._skip(step_dir, "unreadable", f": {_read_error_text(e)}", announce)
            self.last_read_error = _read_error_text(e)
            return None
        return restored[ITEM]

    def restore_latest(self, target: Any, snapshots_only: bool = False) -> tuple[Any, int | None]:
        """The newest complete checkpoint restored into `target`'s structure, or (target, None).

        What was skipped on the way is printed (one line each) and kept in `self.skipped`.
        """
        kinds = [SNAPSHOT_DIR] if snapshots_only else [SNAPSHOT_DIR, META_DIR]
        self.skipped = []
        self._skip_unfinished(kinds)
        for step, kind in self._candidates(kinds):
            state = self._try_restore(step, kind, target)
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
        self.skipped, self.last_read_error = [], "missing metadata"
        state = self._try_restore(step, SNAPSHOT_DIR, target, announce=False)
        if state is None:
            step_dir, what = self.skipped[-1]
            raise CheckpointError(f"the checkpoint {step_dir} is {what} ({self.last_read_error})")
        return state

    def unusable(self) -> str:
        """The checkpoints the last restore skipped, for an error message ("" if none)."""
        return ", ".join(f"{d} ({what})" for d, what in self.skipped)

    def close(self) -> None:
        """Wait for the saves and release orbax's threads (quiet after a reported failure)."""
        try:
            self.wait()
        finally:
            self._close_quietly()

    def _close_quietly(self) -> None:
        for mgr in self._managers.values():
            try:
                mgr.close()
            except Exception:  # noqa: BLE001
                if not self._failed:
                    raise


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
