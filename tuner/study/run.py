"""Running a study: open it in its storage, run one worker on it in this process, summarise it.

The budget ``n_trials`` counts the study's trials across every worker, on every machine, except
failed trials that were retried and trials failed by an error of the study itself (see
:mod:`tuner.study.recovery`): a study run again resumes up to the budget and stops there.
``run_study`` is one worker in this process (:mod:`tuner.study.pool` starts several). It first runs
the pre-flight check (:func:`tuner.study.preflight.check`), so a study that cannot work fails before
its first trial.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.config.loader import find_study_file, read_study_file
from tuner.config.schema import StudyFile
from tuner.errors import TunerError
from tuner.hpo import search
from tuner.keys import HEARTBEAT_ATTR
from tuner.storage.lock import SlotLock
from tuner.storage.rdb import heartbeat_settings, open_storage, request_template
from tuner.storage.records import best_row
from tuner.storage.retry import retry_deadline
from tuner.storage.urls import mask, resolve_url
from tuner.study.loop import work
from tuner.study.recovery import reap, used_slots
from tuner.training.stopping import StopSignals

log = logging.getLogger(__name__)


def load_study_file(study: str, overrides: list[str] | tuple[str, ...] = ()) -> StudyFile:
    """A study file by name or path, validated, with its sampler and pruner checked too."""
    return read_study_file(find_study_file(study), overrides, check=_check_search)


def _check_search(run: StudyFile) -> None:
    """The sampler's and pruner's options are checked by building them."""
    search.build_sampler(run.study.sampler, run)
    search.build_pruner(run.study.pruner)


def open_study(run: StudyFile, storage: str | None = None, create: bool = True, worker_index: int = 0
               ) -> optuna.Study:
    """The run's study in its storage, created if absent (with ``create=False``, refused, and nothing is
    created). A study that exists with another metric or direction is refused rather than mixed. So is one
    with other heartbeat settings, for a worker (``create``: :func:`_check_heartbeat`); a command that runs
    no trial (``tuner reap``, ``tuner evaluate --study``, with ``create=False``) has no heartbeat to
    conflict, and the stale check follows the study's settings whatever its own.

    ``worker_index`` offsets the sampler's seed: workers with one seed would sample the same settings.
    """
    url = resolve_url(storage, run.study.storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    interval = run.study.heartbeat_interval or None
    heartbeat: dict[str, Any] = {"heartbeat_interval": interval,
                                 "grace_period": run.study.grace_period if interval else None}
    if create:
        # creating the schema concurrently on a fresh database races (Optuna issue #4621): one at a time
        with SlotLock(url, "schema")(retry=False):
            backend = open_storage(url, **heartbeat)
    else:
        backend = open_storage(url, create_schema=False, **heartbeat)
    config = run.study.sampler
    if worker_index and config.seed is not None:
        config = dataclasses.replace(config, seed=config.seed + worker_index)
    sampler = search.build_sampler(config, run)
    pruner = search.build_pruner(run.study.pruner)
    names = {s.study_name for s in optuna.study.get_all_study_summaries(backend)}
    if run.name not in names and not create:
        raise TunerError(f"no study {run.name!r} in {mask(url)}; studies there: {sorted(names) or 'none'}")
    study = optuna.create_study(study_name=run.name, storage=backend, sampler=sampler, pruner=pruner,
                                direction=run.study.direction, load_if_exists=True)
    metric = study.user_attrs.get("metric")
    if metric is None:
        study.set_user_attr("metric", run.study.metric)
    elif metric != run.study.metric:
        raise TunerError(f"study {run.name!r} in {mask(url)} optimises {metric}, not {run.study.metric}; "
                         "use another study name or storage")
    if study.direction.name.lower() != run.study.direction:
        raise TunerError(f"study {run.name!r} in {mask(url)} is to {study.direction.name.lower()}, "
                         f"not {run.study.direction}; use another study name or storage")
    if create:
        _check_heartbeat(study, run, url)
    return study


def _check_heartbeat(study: optuna.Study, run: StudyFile, url: str) -> None:
    """Refuse a worker whose heartbeat settings differ from those stored with the study when it was created:
    a worker with a shorter grace period would fail other workers' live trials as stale. A study created
    before the settings were stored takes this worker's."""
    asked = heartbeat_settings(run.study.heartbeat_interval, run.study.grace_period)
    kept = study.user_attrs.get(HEARTBEAT_ATTR)
    if kept is None:
        study.set_user_attr(HEARTBEAT_ATTR, asked)
        return
    stored = heartbeat_settings(kept.get("heartbeat_interval"), kept.get("grace_period"))
    if stored == asked:
        return
    given = {"heartbeat_interval": run.study.heartbeat_interval or 0, "grace_period": run.study.grace_period}
    # in a study without heartbeats, the grace period does not matter
    wrong = {key: value for key, value in given.items()
             if stored[key] != value and (key == "heartbeat_interval" or stored["heartbeat_interval"])}
    raise TunerError(f"study {run.name!r} in {mask(url)} has "
                     + ", ".join(f"{key} {stored[key]}, not {value}" for key, value in wrong.items())
                     + " (heartbeat settings are fixed when a study is created: every worker judges stale trials "
                       "by them); use " + " ".join(f"--set study.{key}={stored[key]}" for key in wrong))


def counted(study: optuna.Study) -> int:
    """The trials that use the budget (see :func:`tuner.study.recovery.used_slots`)."""
    return used_slots(study.get_trials(deepcopy=False))


def finished(trials: list[FrozenTrial]) -> int:
    """Trials that ended and count towards the budget: a failed trial that was retried does not, nor one
    failed by an error of the study itself."""
    return used_slots(trials) - sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)


def check_study(run: StudyFile) -> None:
    """:func:`tuner.study.preflight.check` with SIGINT and SIGTERM handled as in a worker: a signal raises
    :class:`tuner.errors.Interrupted` rather than Lightning's own exit."""
    from tuner.study.preflight import check

    with StopSignals():
        check(run)


@dataclass
class RunSummary:
    study: str
    storage: str
    trials_run: int
    finished: int
    n_trials: int
    best: dict[str, Any] | None
    interrupted: str | None = None  # the signal that stopped the worker
    forced: bool = False  # a second signal stopped it at once, leaving its trial RUNNING for the stale check
    failed_workers: list[str] = field(default_factory=list)  # `--workers`: those that exited abnormally
    repeated_failure: str | None = None  # trials failed in a row with the same error: the worker stopped


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
                                      user_attrs={"baseline": True})
    study.add_trial(request_template(trial, BASELINE_TOKEN, lookup=True))


def reap_study(run: StudyFile, storage: str | None = None, older_than: float | None = None) -> list[dict[str, Any]]:
    """Fail the study's stale RUNNING trials and queue their retries (see :func:`tuner.study.recovery.reap`)."""
    study = open_study(run, storage, create=False)
    lock = SlotLock(resolve_url(storage, run.study.storage), run.name,
                    retry_deadline(run.study.heartbeat_interval, run.study.grace_period))
    with lock():
        return reap(study, run.study.max_retries, older_than)


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
    reason = trial.user_attrs.get("fail_reason") if trial.state == TrialState.FAIL else None
    epochs = trial.user_attrs.get("epochs", "-")
    return f"{trial.state.name}{value} epochs={epochs}" + (f" ({reason})" if reason else "")
