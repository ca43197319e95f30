"""``tuner run`` in this process: one worker on a study, its progress lines, and its summary.

The budget ``n_trials`` counts the study's trials across every worker, on every machine, except
failed trials that were retried and trials failed by an error of the study itself (see
:mod:`tuner.study.recovery`): a study run again resumes up to the budget and stops there.
``run_study`` is one worker in this process (:mod:`tuner.study.pool` starts several); its trials run in
:func:`tuner.study.loop.work`. It first runs the pre-flight check (:func:`tuner.study.open.check_study`),
so a study that cannot work fails before its first trial.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.config.schema import StudyFile
from tuner.hpo import search
from tuner.keys import BASELINE_ATTR, FAIL_REASON_ATTR
from tuner.storage.lock import SlotLock
from tuner.storage.rdb import request_template
from tuner.storage.records import TrialRow, best_row
from tuner.storage.retry import retry_deadline
from tuner.storage.urls import mask, resolve_url
from tuner.study.env import PARENT_PID_VARIABLE, ParentWatch, requested_threads, worker_index
from tuner.study.loop import work
from tuner.study.open import check_study, open_study
from tuner.study.recovery import used_slots
from tuner.training.stopping import StopSignals

log = logging.getLogger(__name__)


def counted(study: optuna.Study) -> int:
    """The trials that use the budget (see :func:`tuner.study.recovery.used_slots`)."""
    return used_slots(study.get_trials(deepcopy=False))


def finished(trials: list[FrozenTrial]) -> int:
    """Trials that ended and count towards the budget: a failed trial that was retried does not, nor one
    failed by an error of the study itself."""
    return used_slots(trials) - sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)


@dataclass
class RunSummary:
    """What ``tuner run`` did, in this process or with ``--workers``: the trials it ran, the study's finished
    trials against its budget, the best trial so far, and what stopped it."""

    study: str
    storage: str
    trials_run: int
    finished: int
    n_trials: int
    best: TrialRow | None
    interrupted: str | None = None  # the signal that stopped the worker
    forced: bool = False  # a second signal stopped it at once, leaving its trial RUNNING for the stale check
    failed_workers: list[str] = field(default_factory=list)  # `--workers`: those that exited abnormally
    repeated_failure: str | None = None  # trials failed in a row with the same error: the worker stopped


def default_worker() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def run_study(
    run: StudyFile,
    storage: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    output_dir: str | Path | None = None,
    worker: str | None = None,
    progress: bool | None = None,
    check: bool = True,
) -> RunSummary:
    """Run this process as one worker of ``run``'s study until it holds ``n_trials`` (the study's
    total), ``timeout`` seconds pass (after the running trial), SIGTERM/SIGINT arrives, or trials keep
    failing with the same error (``repeated_failure`` says so).

    With ``check``, the pre-flight check runs first (a worker that
    :func:`tuner.study.pool.run_workers` started skips it: its parent ran it; such a worker also stops
    as on SIGTERM once that parent is gone). An error of the study, found there or raised inside a trial,
    is raised as a :class:`tuner.errors.TunerError`; a signal during the check raises
    :class:`tuner.errors.Interrupted`.
    """
    from tuner import hardware
    from tuner.hpo.objective import Objective

    # set by `--workers`; read once and removed, so that processes this worker starts do not inherit it
    parent = os.environ.pop(PARENT_PID_VARIABLE, None)
    # `--workers` gives each worker process its share in TUNER_NUM_THREADS, having warned already
    hardware.set_threads(1, requested_threads())
    budget = n_trials or run.study.n_trials
    timeout = timeout if timeout is not None else run.study.timeout
    url = resolve_url(storage, run.study.storage)
    if check:
        check_study(run)  # before the study exists: a study that cannot work creates nothing
    study = open_study(run, storage, worker_index=worker_index())
    lock = SlotLock(url, run.name, retry_deadline(run.study.heartbeat_interval, run.study.grace_period))
    with lock():
        if run.study.baseline and not study.get_trials(deepcopy=False):
            _enqueue_baseline(study, search.baseline_params(run))
    interactive = sys.stderr.isatty() if progress is None else progress
    lines = _Progress(budget, counted(study), interactive)
    with StopSignals() as signals, ParentWatch(parent):
        objective = Objective(run, Path(output_dir or Path(run.trainer.output_dir) / run.name), interactive, signals)
        result = work(study, objective, budget, lock=lock, signals=signals, max_retries=run.study.max_retries,
                      stall_timeout=run.study.stall_timeout,
                      timeout=timeout, worker=worker or default_worker(), on_start=lines.start,
                      on_end=lines.finished)
    return RunSummary(run.name, mask(url), result.ran, finished(study.get_trials(deepcopy=False)), budget,
                      best_row(study, run), interrupted=result.interrupted, forced=result.forced,
                      repeated_failure=result.repeated_failure)


BASELINE_TOKEN = "baseline"


def _enqueue_baseline(study: optuna.Study, params: dict[str, Any]) -> None:
    """Queue the baseline trial, once per study, as ``study.enqueue_trial`` does. On a database the study
    lock keeps a second worker from queueing it again; through the storage proxy, which has no lock, the
    creation is named (``BASELINE_TOKEN``), and a second worker's finds the first's trial instead."""
    trial = optuna.trial.create_trial(state=TrialState.WAITING, system_attrs={"fixed_params": params},
                                      user_attrs={BASELINE_ATTR: True})
    study.add_trial(request_template(trial, BASELINE_TOKEN, lookup=True))


class _Progress:
    """Trial-level progress: a bar line as each trial starts (on a terminal), a plain line as it ends.

    Lightning draws its own live progress for epochs under the bar line; a second live bar for trials
    would fight it for the terminal, so the trial bar is redrawn as a line when each trial starts.
    """

    def __init__(self, total: int, done: int, interactive: bool) -> None:
        self.total, self.done, self.interactive = total, done, interactive

    def start(self, number: int) -> None:
        if self.interactive:
            width = 30
            filled = width * min(self.done, self.total) // max(self.total, 1)
            print(f"trials [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}: "
                  f"starting trial {number}", file=sys.stderr, flush=True)

    def finished(self, trial: FrozenTrial) -> None:
        self.done += 1
        print(f"trial {trial.number}: {_line(trial)}", flush=True)


def _line(trial: FrozenTrial) -> str:
    value = "" if trial.value is None else f" value={trial.value:.4f}"
    reason = trial.user_attrs.get(FAIL_REASON_ATTR) if trial.state == TrialState.FAIL else None
    epochs = trial.user_attrs.get("epochs", "-")
    return f"{trial.state.name}{value} epochs={epochs}" + (f" ({reason})" if reason else "")
