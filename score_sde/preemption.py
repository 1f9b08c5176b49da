"""Pre-emption: SIGTERM or SIGINT becomes a checkpoint and a "resume me" exit status.

Clusters stop jobs with SIGTERM and kill them some seconds later: SLURM at the time limit
(ahead of it with `--signal`), on pre-emption and on `scontrol requeue`; GCE and TPU VMs on
maintenance or pre-emption. `PreemptionGuard` records the first SIGTERM or SIGINT instead of
dying; the training loop then makes every process agree on one step (train.py), saves a
checkpoint there, waits until it is committed and raises `Preempted`, a SystemExit whose status
EXIT_PREEMPTED tells the launcher to start the run again (it resumes from that checkpoint).
A second SIGINT (Ctrl-C twice) aborts at once.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

# sysexits.h EX_TEMPFAIL, "temporary failure; the user is invited to retry": pre-empted,
# a checkpoint of the last step is saved, start the same command again to resume.
EXIT_PREEMPTED = 75

HANDLED = (signal.SIGTERM, signal.SIGINT)


class Preempted(SystemExit):
    """Raised by train() after the pre-emption checkpoint is committed; exits EXIT_PREEMPTED."""

    def __init__(self, step: int, signal_name: str, where: str):
        super().__init__(EXIT_PREEMPTED)
        self.step, self.signal_name, self.where = step, signal_name, where

    def __str__(self) -> str:
        return (f"pre-empted at step {self.step} by {self.signal_name}; checkpoint saved in "
                f"{self.where}; exit {EXIT_PREEMPTED} = resume me")


class PreemptionGuard:
    """While entered, the first SIGTERM/SIGINT sets `signal_name` instead of ending the process.

    The previous handlers come back on exit, so library users who call train() keep theirs.
    Handlers can only be installed from the main thread; elsewhere the guard installs none and
    `request()` (what the handler calls) is the only way to ask for a stop.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = HANDLED):
        self.signals = signals
        self.signal_name: str | None = None
        self._previous: dict[signal.Signals, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def request(self, name: str) -> None:
        """Ask for a stop at the next agreed step (first request wins)."""
        if self.signal_name is None:
            self.signal_name = name

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt(f"second {name}: aborting without a checkpoint")
        if not self.requested:
            # os.write, not print: a handler may interrupt a print on the same stream.
            os.write(2, f"score_sde: got {name}; saving a checkpoint at the next step all "
                        "processes agree on, then exiting (Ctrl-C again aborts at once)\n".encode())
        self.request(name)

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
