"""Recovery: the budget's slots, stale trials failed and retried, and ``tuner reap``.

The budget ``n_trials`` counts every trial except a failed one that was retried (its retry holds the
slot) and one failed by an error of the study itself. A trial whose heartbeat is older than
``grace_period`` belongs to a dead worker (SIGKILL, power loss, a lost node): the next worker to look
fails it, with the reason, and queues a retry with Optuna's ``RetryHeartbeatStaleTrialCallback`` up to
``max_retries`` times.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
import warnings
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from tuner.keys import STARTED_ATTR
from tuner.storage.rdb import database_time
from tuner.storage.records import is_not_admitted, is_study_error, retry_history

log = logging.getLogger(__name__)


def slot_holders(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that use the budget: all of them but failed trials that have a retry (the retry holds
    the slot), trials failed by an error of the study itself (which would otherwise spend the budget
    until it is fixed), and trials created past the budget, which never ran."""
    retried = {retry_history(t)[-1] for t in trials if retry_history(t)}
    return [t for t in trials
            if not (t.state == TrialState.FAIL and (t.number in retried or is_study_error(t) or is_not_admitted(t)))]


def used_slots(trials: list[FrozenTrial]) -> int:
    """How much of the budget ``trials`` use (see :func:`slot_holders`)."""
    return len(slot_holders(trials))


def _retries_left(trial: FrozenTrial, max_retries: int) -> bool:
    return len(retry_history(trial)) < max_retries


def requeue(study: optuna.Study, trial: FrozenTrial, max_retries: int) -> bool:
    """Queue a retry of the failed ``trial`` (same parameters and attributes) unless it used up
    ``max_retries``. Returns whether a retry was queued.

    The retry starts without the failed trial's reports: it takes them over only if it resumes from that
    trial's checkpoint (see :mod:`tuner.hpo.objective`), which only the retry, where it runs, can tell.
    """
    if not _retries_left(trial, max_retries):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=max_retries)(study, trial)
    return True


def retry_note(trial: FrozenTrial, max_retries: int) -> str:
    if _retries_left(trial, max_retries):
        return "queued for retry"
    return f"not retried: retry limit of {max_retries} reached"


def _owner(trial: FrozenTrial) -> str:
    attrs = trial.user_attrs
    return f"worker {attrs.get('worker', '?')} on {attrs.get('host', '?')}, pid {attrs.get('pid', '?')}"


def heartbeat_interval(study: optuna.Study) -> int | None:
    return getattr(study._storage, "get_heartbeat_interval", lambda: None)()


def _stale_ids(study: optuna.Study) -> list[int]:
    """Ids of the RUNNING trials whose heartbeat is older than the grace period (none without heartbeats)."""
    if not heartbeat_interval(study):
        return []
    # Optuna keeps this query private; its public fail_stale_trials cannot record a failure's reason
    return list(study._storage._get_stale_trial_ids(study._study_id))  # type: ignore[attr-defined]


def fail_stale(study: optuna.Study, max_retries: int) -> list[int]:
    """Fail the RUNNING trials whose heartbeat stopped, record why, and queue their retries.

    Optuna's ``fail_stale_trials`` does the same but cannot record a reason (a finished trial's
    attributes are read-only), so the reason is written while the trial still runs. Several workers
    may race here; the storage lets exactly one change each trial's state. Returns the trials failed.
    """
    storage = study._storage
    failed = []
    for trial_id in _stale_ids(study):
        trial = storage.get_trial(trial_id)
        if trial.state != TrialState.RUNNING:
            continue
        reason = f"stale: the heartbeat of {_owner(trial)} stopped; {retry_note(trial, max_retries)}"
        try:
            storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # its worker, or another worker, finished it first
        log.warning("trial %d failed: %s", trial.number, reason)
        requeue(study, storage.get_trial(trial_id), max_retries)
        failed.append(trial.number)
    return failed


def reap(study: optuna.Study, max_retries: int, older_than: float | None = None) -> list[dict[str, Any]]:
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
        if trial._trial_id in stale_by_heartbeat:
            why = f"the heartbeat of {_owner(trial)} stopped"
        elif trial.user_attrs.get("host") == host and not _alive(trial.user_attrs.get("pid")):
            why = f"{_owner(trial)} is no longer running"
        elif older_than is not None and ages.get(trial._trial_id, -math.inf) > older_than:
            why = f"running for more than {older_than:.0f} s (reaped by hand)"
        if why is None:
            continue
        reason = f"stale: {why}; {retry_note(trial, max_retries)}"
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
            if not study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue
        retried = requeue(study, study._storage.get_trial(trial._trial_id), max_retries)
        reaped.append({"number": trial.number, "reason": reason, "retried": retried})
    return reaped


def _ages(study: optuna.Study, trials: list[FrozenTrial]) -> dict[int, float]:
    """How long each of ``trials`` has been RUNNING, in seconds, by trial id.

    By the database's clock where the storage recorded the start by it (``STARTED_ATTR``: tuner's
    storages), so that neither the workers' time zones nor this machine's clock matter. Otherwise
    Optuna's ``datetime_start`` is all there is: the worker's local time, compared with this
    machine's, which is right only where both keep the same time zone and time.
    """
    now = database_time(study._storage) if any(STARTED_ATTR in t.system_attrs for t in trials) else None
    here = time.time()
    ages = {}
    for trial in trials:
        started = trial.system_attrs.get(STARTED_ATTR)
        if isinstance(started, (int, float)):
            ages[trial._trial_id] = (here if now is None else now) - started  # an epoch: still no time zone
        elif trial.datetime_start is not None:
            ages[trial._trial_id] = here - trial.datetime_start.timestamp()
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
