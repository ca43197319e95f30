"""Recovery: the budget's slots (the rule: :func:`slot_holders`), stale trials failed and retried, and
``tuner reap``.

A trial whose heartbeat is older than the study's ``grace_period`` (stored with it when it was created,
whatever the looking worker asked for) belongs to a dead worker (SIGKILL, power loss, a lost node): the next
worker to look fails it, with the reason, and queues a retry up to ``max_retries`` times
(:func:`fail_and_retry`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from tuner._compat.optuna import retry_system_attrs, stale_trial_ids, storage_of, study_id, trial_id
from tuner.config.schema import StudyFile
from tuner.keys import FAIL_REASON_ATTR, HOST_ATTR, PID_ATTR, STARTED_ATTR, STUDY_ERROR_ATTR, WORKER_ATTR
from tuner.storage.lock import SlotLock
from tuner.storage.rdb import database_time, request_template
from tuner.storage.records import is_not_admitted, is_study_error, lineage, retry_history
from tuner.storage.retry import retry_deadline
from tuner.storage.urls import resolve_url
from tuner.study.open import open_study

log = logging.getLogger(__name__)


def slot_holders(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that hold a slot of the budget: the budget rule, which every worker, ``tuner run`` and
    its summary apply.

    The budget ``n_trials`` is the study's, across every worker on every machine: a study run again
    resumes up to it and stops there. Every trial holds a slot (running, waiting, finished) except:

    - a failed trial that was retried: its retry holds the slot, however often it is retried (up to
      ``max_retries``);
    - a trial failed by an error of the study itself (bad data, a backbone that cannot load), which would
      otherwise spend the budget until the study is fixed; it is queued again with the same settings;
    - a trial created past the budget (``not_admitted``), failed before it ran.

    A worker starts a trial while fewer than ``n_trials`` trials hold slots, and admits it by its place
    among them (:func:`tuner.study.worker._admitted`; a retry by its first attempt's: :func:`retry_admitted`),
    so that finished trials end equal to ``n_trials`` whatever the number of workers, lock or no lock.
    """
    retried = {retry_history(t)[-1] for t in trials if retry_history(t)}
    return [t for t in trials
            if not (t.state == TrialState.FAIL and (t.number in retried or is_study_error(t) or is_not_admitted(t)))]


def used_slots(trials: list[FrozenTrial]) -> int:
    """How much of the budget ``trials`` use (see :func:`slot_holders`)."""
    return len(slot_holders(trials))


def _retries_left(trial: FrozenTrial, max_retries: int) -> bool:
    return len(retry_history(trial)) < max_retries


def fail_and_retry(study: optuna.Study, trial_id: int, reason: str, max_retries: int, *,
                   study_error: bool = False, trial: optuna.Trial | None = None) -> FrozenTrial | None:
    """Fail the RUNNING trial ``trial_id`` with ``reason``, its retry queued first; every failure of a
    running trial (stale, interrupted, an error of the study, reaped) goes through here.

    The retry is queued before the failure is written, and its creation is named after the failed trial
    (:func:`requeue`). So a slot of the budget is held at every moment, by the running trial or by its
    waiting retry, on every storage, lock or no lock: a worker that counts between the two writes never
    sees the budget spent with nothing left to run, nor a free slot. However many workers fail the same
    trial at once (a lost lock; the storage proxy, which has none), it has one retry. A retry whose
    trial ended otherwise (its worker finished it first) is withdrawn by whoever takes it up
    (:func:`retry_admitted`).

    Args:
        study_error: the trial failed through an error of the study itself (it uses no slot).
        trial: the worker's own ``optuna.Trial`` for ``trial_id``, told through the study (its sampler
            sees the failure); otherwise the failure is written to the storage.
    Returns:
        The failed trial as stored, or ``None`` when it was no longer running (another worker ended it).
    """
    storage = storage_of(study)
    try:
        storage.set_trial_user_attr(trial_id, FAIL_REASON_ATTR, reason)
        if study_error:
            storage.set_trial_user_attr(trial_id, STUDY_ERROR_ATTR, True)
    except UpdateFinishedTrialError:
        return None
    current = storage.get_trial(trial_id)
    if current.state != TrialState.RUNNING:
        return None
    requeue(study, current, max_retries)
    try:
        if trial is not None:
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        elif not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            return None
    except UpdateFinishedTrialError:
        return None
    stored = storage.get_trial(trial_id)
    return stored if stored.state == TrialState.FAIL else None


def requeue(study: optuna.Study, trial: FrozenTrial, max_retries: int) -> bool:
    """Queue a retry of ``trial`` (its parameters and attributes, linked as Optuna's
    ``RetryHeartbeatStaleTrialCallback`` links them) unless it used up ``max_retries``; returns whether
    it did. The creation is named after ``trial``: however often and by whomever asked, one retry exists.

    The retry starts without the failed trial's reports: it takes them over only if it resumes from that
    trial's checkpoint (see :mod:`tuner.hpo.objective`), which only the retry, where it runs, can tell.
    """
    if not _retries_left(trial, max_retries):
        return False
    template = optuna.trial.create_trial(state=TrialState.WAITING, params=trial.params,
                                         distributions=trial.distributions, user_attrs=trial.user_attrs,
                                         system_attrs=retry_system_attrs(trial))
    storage_of(study).create_new_trial(study_id(study), request_template(template, f"retry-of:{trial_id(trial)}",
                                                                         lookup=True))
    return True


def retry_admitted(study: optuna.Study, trial: FrozenTrial, budget: int) -> bool:
    """Whether the retry ``trial``, just taken up, may run: its failed trial ended FAIL, and fewer than
    ``budget`` trials holding slots began before its first attempt did (admission by lineage, as for
    any new trial: a retry of a trial created past the budget stays past it).

    A failed trial still RUNNING is one whose failure was being written, or whose failing worker died
    between queuing the retry and writing the failure: this worker writes it. If that is refused, the
    trial's own worker finished it, and the retry is not needed.
    """
    storage = storage_of(study)
    failed_id = storage.get_trial_id_from_study_id_trial_number(study_id(study), retry_history(trial)[-1])
    if storage.get_trial(failed_id).state == TrialState.RUNNING:
        with contextlib.suppress(UpdateFinishedTrialError):
            storage.set_trial_state_values(failed_id, state=TrialState.FAIL)
    if storage.get_trial(failed_id).state != TrialState.FAIL:
        return False
    ahead = sum(1 for t in slot_holders(study.get_trials(deepcopy=False)) if lineage(t) < lineage(trial))
    return ahead < budget


def retry_note(trial: FrozenTrial, max_retries: int) -> str:
    if _retries_left(trial, max_retries):
        return "queued for retry"
    return f"not retried: retry limit of {max_retries} reached"


def _owner(trial: FrozenTrial) -> str:
    attrs = trial.user_attrs
    return f"worker {attrs.get(WORKER_ATTR, '?')} on {attrs.get(HOST_ATTR, '?')}, pid {attrs.get(PID_ATTR, '?')}"


def heartbeat_interval(study: optuna.Study) -> int | None:
    return getattr(storage_of(study), "get_heartbeat_interval", lambda: None)()


def _stale_ids(study: optuna.Study) -> list[int]:
    """Ids of the RUNNING trials whose heartbeat is older than the study's grace period (none without
    heartbeats): the storage reads it from the study (:meth:`tuner.storage.rdb.ResilientRDBStorage.stale_trial_ids`)."""
    if not heartbeat_interval(study):
        return []
    return stale_trial_ids(storage_of(study), study_id(study))


def fail_stale(study: optuna.Study, max_retries: int) -> list[int]:
    """Fail the RUNNING trials whose heartbeat stopped, record why, and queue their retries.

    Optuna's ``fail_stale_trials`` does the same but cannot record a reason (a finished trial's
    attributes are read-only), so the reason is written while the trial still runs. Several workers
    may race here; the storage lets exactly one change each trial's state. Returns the trials failed.
    """
    storage = storage_of(study)
    failed = []
    for stale_id in _stale_ids(study):
        trial = storage.get_trial(stale_id)
        if trial.state != TrialState.RUNNING:
            continue
        reason = f"stale: the heartbeat of {_owner(trial)} stopped; {retry_note(trial, max_retries)}"
        if fail_and_retry(study, stale_id, reason, max_retries) is None:
            continue  # its worker, or another worker, finished it first
        log.warning("trial %d failed: %s", trial.number, reason)
        failed.append(trial.number)
    return failed


@dataclass(frozen=True)
class ReapedTrial:
    """A trial :func:`reap` failed: its number, the reason recorded on it, and whether its retry was queued."""

    number: int
    reason: str
    retried: bool

    def to_json(self) -> dict[str, Any]:
        """As ``tuner reap --json`` prints it."""
        return {"number": self.number, "reason": self.reason, "retried": self.retried}


def reap(study: optuna.Study, max_retries: int, older_than: float | None = None) -> list[ReapedTrial]:
    """Fail stale RUNNING trials by hand, for storages without heartbeats or with no worker left.

    A RUNNING trial is stale when its heartbeat stopped, when its worker's process is gone from this
    machine, or, with ``older_than``, when it started more than that many seconds ago (see
    :func:`_ages`). Each is failed with the reason and retried like a crashed trial. Returns what was
    done, per trial.
    """
    stale_by_heartbeat = set(_stale_ids(study))
    host = socket.gethostname()
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    ages = _ages(study, running) if older_than is not None else {}
    reaped = []
    for trial in running:
        why = None
        if trial_id(trial) in stale_by_heartbeat:
            why = f"the heartbeat of {_owner(trial)} stopped"
        elif trial.user_attrs.get(HOST_ATTR) == host and not _alive(trial.user_attrs.get(PID_ATTR)):
            why = f"{_owner(trial)} is no longer running"
        elif older_than is not None and ages.get(trial_id(trial), -math.inf) > older_than:
            why = f"running for more than {older_than:.0f} s (reaped by hand)"
        if why is None:
            continue
        reason = f"stale: {why}; {retry_note(trial, max_retries)}"
        if fail_and_retry(study, trial_id(trial), reason, max_retries) is None:
            continue
        reaped.append(ReapedTrial(trial.number, reason, _retries_left(trial, max_retries)))
    return reaped


def _ages(study: optuna.Study, trials: list[FrozenTrial]) -> dict[int, float]:
    """How long each of ``trials`` has been RUNNING, in seconds, by trial id.

    By the database's clock where the storage recorded the start by it (``STARTED_ATTR``: tuner's
    storages), so that neither the workers' time zones nor this machine's clock matter. Otherwise
    Optuna's ``datetime_start`` is all there is: the worker's local time, compared with this
    machine's, which is right only where both keep the same time zone and time.
    """
    now = database_time(storage_of(study)) if any(STARTED_ATTR in t.system_attrs for t in trials) else None
    here = time.time()
    ages = {}
    for trial in trials:
        started = trial.system_attrs.get(STARTED_ATTR)
        if isinstance(started, (int, float)):
            ages[trial_id(trial)] = (here if now is None else now) - started  # an epoch: still no time zone
        elif trial.datetime_start is not None:
            ages[trial_id(trial)] = here - trial.datetime_start.timestamp()
    return ages


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # unknown: not evidence of death
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_study(run: StudyFile, storage: str | None = None, older_than: float | None = None) -> list[ReapedTrial]:
    """``tuner reap``: fail the study's stale RUNNING trials and queue their retries (see :func:`reap`)."""
    study = open_study(run, storage, create=False)
    lock = SlotLock(resolve_url(storage, run.study.storage), run.name,
                    retry_deadline(run.study.heartbeat_interval, run.study.grace_period))
    with lock():
        return reap(study, run.study.max_retries, older_than)
