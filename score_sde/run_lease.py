"""One training run per workdir: a lease file that the live run keeps renewing.

    workdir/train.lease   {"id", "host", "pid", "start", "expires"}   (JSON, times in Unix s)

Two runs writing one workdir interleave their logs and break each other's checkpoints. File
locks do not work where workdirs live on clusters (NFS/Lustre shared by nodes, gcsfuse, gs://
buckets), and host + pid cannot be checked from another machine, so the hold is a lease: the
run writes it at start, a background thread pushes `expires` forward while the run lives, and
the run deletes it at exit. A lease whose `expires` has passed (a run killed with SIGKILL, a
lost node) does not block; nor does one from a dead process on this very host. Two runs that
start at once both write, wait `settle_s` and read back: the last writer holds the workdir and
the other is refused. Clocks of the machines sharing a workdir must agree to well within
`duration_s`.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from etils import epath

from score_sde import storage

LEASE_FILE = "train.lease"
DURATION_S = 120.0  # a killed run blocks its workdir for at most this long
RENEW_S = 30.0
SETTLE_S = 1.0  # must exceed the time between reading and writing the lease file


class WorkdirBusyError(FileExistsError):
    """Another live training run holds the workdir."""


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


@dataclass(frozen=True)
class Holder:
    """Who holds a workdir, as written in its lease file."""

    id: str
    host: str
    pid: int
    start: float
    expires: float

    def describe(self) -> str:
        return (f"host {self.host}, pid {self.pid}, since {_when(self.start)}, "
                f"lease expires {_when(self.expires)}")

    def is_stale(self, now: float) -> bool:
        """Expired, or written by a process of this host that no longer exists."""
        return self.expires < now or (self.host == socket.gethostname()
                                      and not _pid_alive(self.pid))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class WorkdirLease:
    """Context manager: hold `workdir` for one training run (see the module docstring).

    `acquire()` raises WorkdirBusyError naming the holder if a live run holds the workdir.
    """

    def __init__(self, workdir: str | os.PathLike, duration_s: float = DURATION_S,
                 renew_s: float = RENEW_S, settle_s: float | None = None):
        if not 0 < renew_s < duration_s:
            raise ValueError(f"lease renewal every {renew_s} s must be shorter than the lease "
                             f"({duration_s} s)")
        self.path = epath.Path(workdir) / LEASE_FILE
        self.duration_s, self.renew_s = duration_s, renew_s
        self.settle_s = SETTLE_S if settle_s is None else settle_s
        now = time.time()
        self.me = Holder(uuid.uuid4().hex, socket.gethostname(), os.getpid(), now, now)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> Holder | None:
        """The holder in the lease file, None if there is none (or it cannot be parsed)."""
        try:
            return Holder(**json.loads(self.path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):  # torn or foreign content: nobody valid holds it
            return None

    def _write(self) -> None:
        self.me = Holder(**{**asdict(self.me), "expires": time.time() + self.duration_s})
        storage.write_text(self.path, json.dumps(asdict(self.me)))  # never half-written

    def _refuse(self, holder: Holder) -> WorkdirBusyError:
        return WorkdirBusyError(
            f"{self.path.parent} is held by another training run ({holder.describe()}); "
            f"stop that run, wait for the lease to expire, or use another --workdir "
            f"(eval and sample modes may run beside it)")

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        holder = self.read()
        if holder is not None and not holder.is_stale(time.time()):
            raise self._refuse(holder)
        if holder is not None:
            print(f"Taking over the stale lease of {self.path.parent} ({holder.describe()})",
                  flush=True)
        self._write()
        time.sleep(self.settle_s)  # another run starting now writes too; the last writer wins
        holder = self.read()
        if holder is None or holder.id != self.me.id:
            raise self._refuse(holder) if holder else WorkdirBusyError(
                f"{self.path} vanished while this run was taking it; another run is starting "
                "in the same workdir")
        self._thread = threading.Thread(target=self._renew, name="workdir-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_s):
            try:
                holder = self.read()
                if holder is not None and holder.id != self.me.id:
                    print(f"Warning: the lease of {self.path.parent} was taken by another run "
                          f"({holder.describe()}); two runs may now write this workdir",
                          file=sys.stderr, flush=True)
                    return
                self._write()
            except Exception as e:  # a storage hiccup: try again at the next renewal
                print(f"Warning: could not renew {self.path}: {e}", file=sys.stderr, flush=True)

    def release(self) -> None:
        """Stop renewing and delete the lease if this run still holds it."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        holder = self.read()
        if holder is not None and holder.id == self.me.id:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> WorkdirLease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
