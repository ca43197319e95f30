"""``tuner run --workers K``: K local worker processes on one study, their output and progress in one place.

The pre-flight check runs here once; each worker is a ``tuner run`` process with an even share of the
CPU threads and, where GPUs are visible, one of them. Signals are forwarded, so the workers end their
trials cleanly; a worker whose parent is gone stops as on SIGTERM (:class:`tuner.study.env.ParentWatch`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.config.schema import StudyFile
from tuner.storage.records import best_row
from tuner.storage.sqlite import check_sqlite_for_workers
from tuner.storage.urls import mask, resolve_url
from tuner.study.env import PARENT_PID_VARIABLE, requested_threads, worker_index
from tuner.study.open import check_study, open_study
from tuner.study.run import RunSummary, finished

log = logging.getLogger(__name__)


_TRIAL_LINE = re.compile(r"^trial \d+: ")


KILL_AFTER_S = 10.0  # how long a worker has to end after SIGTERM when starting the others failed


def run_workers(
    run: StudyFile,
    study_file: str | Path,
    workers: int,
    overrides: list[str] | tuple[str, ...] = (),
    storage: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
) -> RunSummary:
    """Start ``workers`` local worker processes (``tuner run``) on the study and wait for them.

    Each worker gets an even share of the CPU threads and, where GPUs are visible, one of them
    (round-robin). Their output is shown prefixed with the worker's label, with a combined progress
    line after each trial. SIGINT and SIGTERM are forwarded, and the workers end their trials
    cleanly. The storage URL reaches them in the environment, never on a command line.

    The pre-flight check runs here, once, before any worker starts; the workers skip it. If a worker
    cannot be started, those already started are stopped before the error is raised; if this process
    is killed, each worker notices and stops as on SIGTERM.
    """
    url = resolve_url(storage, run.study.storage)
    check_sqlite_for_workers(url, workers)
    check_study(run)  # once, here: the workers skip it
    study = open_study(run, storage)  # the schema and the study exist before any worker starts
    before = finished(study.get_trials(deepcopy=False))
    budget = n_trials or run.study.n_trials
    from tuner import hardware

    threads = hardware.thread_share(workers, requested_threads())
    gpus = _visible_gpus()
    command = [sys.executable, "-m", "tuner", "run", "--study", str(Path(study_file).resolve()),
               *(f"--set={item}" for item in overrides), "--n-trials", str(budget)]
    if timeout is not None:
        command += ["--timeout", str(timeout)]
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for index in range(workers):
            label = f"w{index}"
            env = {**os.environ, "TUNER_STORAGE": url, "TUNER_NUM_THREADS": str(threads),
                   "TUNER_WORKER_INDEX": str(worker_index() * workers + index),
                   "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1", PARENT_PID_VARIABLE: str(os.getpid())}
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
            processes[label] = subprocess.Popen(
                [*command, "--worker-id", f"{socket.gethostname()}-{label}"], env=env, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True,  # our signals are forwarded, not shared
            )  # bytes: the relay decodes each line itself, so that no line can stop it
    except BaseException:
        # in their own sessions, the workers already started would outlive this process
        _stop(list(processes.values()))
        raise
    print(f"started {workers} workers on {mask(url)} ({threads} CPU threads each"
          + (f", GPUs {', '.join(gpus)}" if gpus else "") + ")", flush=True)
    forwarded: list[int] = []

    def forward(signum: int, frame: object) -> None:
        forwarded.append(signum)
        print(f"{signal.Signals(signum).name}: stopping the workers after their trials end cleanly", flush=True)
        for process in processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    readers = [threading.Thread(target=_relay, args=(label, process, study, budget), daemon=True)
               for label, process in processes.items()]
    try:
        for reader in readers:
            reader.start()
        codes = {label: process.wait() for label, process in processes.items()}
        for reader in readers:
            reader.join()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    stopped = {128 + signal.SIGTERM, 128 + signal.SIGINT} if forwarded else set()
    failed = [f"{label} (exit {code})" for label, code in codes.items() if code != 0 and code not in stopped]
    after = finished(study.get_trials(deepcopy=False))
    return RunSummary(run.name, mask(url), after - before, after, budget, best_row(study, run),
                      interrupted=signal.Signals(forwarded[0]).name if forwarded else None, failed_workers=failed)


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """End worker ``processes`` and their sessions: SIGTERM, SIGKILL for those still running
    ``KILL_AFTER_S`` seconds later, and wait for them."""
    for process in processes:
        _signal_session(process, signal.SIGTERM)
    deadline = time.monotonic() + KILL_AFTER_S
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_session(process, signal.SIGKILL)
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _signal_session(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def _relay(label: str, process: subprocess.Popen[bytes], study: optuna.Study, budget: int) -> None:
    """Print a worker's output prefixed with its label, and the study's progress after each trial.

    Whatever one line does (bytes that are not UTF-8, a study that cannot be read for the progress line),
    the relay goes on reading: a worker whose pipe is no longer drained blocks once the pipe is full.
    """
    assert process.stdout is not None
    failed = False
    for raw in process.stdout:
        try:
            line = raw.decode(errors="replace").rstrip()
            print(f"[{label}] {line}", flush=True)
            if _TRIAL_LINE.match(line):
                print(f"progress: {_progress_line(study.get_trials(deepcopy=False), budget)}", flush=True)
        except Exception as err:  # noqa: BLE001 - see above; logged once, not once a line
            if not failed:
                log.warning("[%s] cannot show a line of this worker's output: %s: %s", label, type(err).__name__, err)
                failed = True


def _progress_line(trials: list[FrozenTrial], budget: int) -> str:
    """The study's progress; the finished trials are the complete, pruned and failed ones that count."""
    states = {state: sum(t.state == state for t in trials) for state in TrialState}
    done = finished(trials)
    failed = done - states[TrialState.COMPLETE] - states[TrialState.PRUNED]
    return (f"{done}/{budget} finished ({states[TrialState.COMPLETE]} complete, "
            f"{states[TrialState.PRUNED]} pruned, {failed} failed), "
            f"{states[TrialState.RUNNING]} running")


def _visible_gpus() -> list[str]:
    """The GPUs to share among workers: ``CUDA_VISIBLE_DEVICES`` if set, else every CUDA device."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu for gpu in visible.split(",") if gpu.strip()]
    try:
        import torch
    except ImportError:
        return []
    return [str(index) for index in range(torch.cuda.device_count())]
