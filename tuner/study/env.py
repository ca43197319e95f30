"""What a worker reads from its environment: the CPU threads it may use, its index among its peers, and
the process that started it (``--workers``), which it watches.
"""

from __future__ import annotations

import os
import signal
import sys
import threading


def requested_threads() -> int | None:
    """The CPU threads per worker the user asked for: ``$TUNER_NUM_THREADS``, else ``$OMP_NUM_THREADS``."""
    for variable in ("TUNER_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(variable, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


WORKER_INDEX_VARIABLES = ("TUNER_WORKER_INDEX", "SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX")


def worker_index() -> int:
    """This worker's index among its peers: set by ``--workers``, a Slurm array or an indexed Kubernetes Job
    (0 when none is set)."""
    for variable in WORKER_INDEX_VARIABLES:
        value = os.environ.get(variable, "")
        if value.isdigit():
            return int(value)
    return 0


PARENT_PID_VARIABLE = "TUNER_PARENT_PID"  # set by `--workers`: the worker stops when that process is gone
PARENT_POLL_S = 1.0


class ParentWatch:
    """Stop this worker as SIGTERM does once the process that started it (``--workers``) is gone.

    A worker leads its own session, so a parent killed outright (SIGKILL, the OOM killer) would leave it
    training for ever. A thread compares ``os.getppid()`` with the parent's pid; Linux's
    ``PR_SET_PDEATHSIG`` would need a ``preexec_fn`` (unsafe in a process with threads) and fires when the
    thread that started the child ends, not its process.
    """

    def __init__(self, parent: str | None) -> None:
        self.parent = int(parent) if parent and parent.isdigit() else None
        self._done = threading.Event()

    def __enter__(self) -> ParentWatch:
        if self.parent is not None:
            threading.Thread(target=self._watch, name="parent-watch", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()

    def _watch(self) -> None:
        while not self._done.wait(PARENT_POLL_S):
            if os.getppid() != self.parent:
                # the parent read this worker's output: writing to its pipe now fails (EPIPE), and would fail
                # the trial rather than end it cleanly
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.dup2(devnull, sys.stderr.fileno())
                os.close(devnull)
                os.kill(os.getpid(), signal.SIGTERM)
                return
