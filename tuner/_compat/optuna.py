"""Optuna's private names that tuner uses (see :mod:`tuner._compat`).

Optuna's RDB models and sessions import SQLAlchemy: they are imported where first needed, so that a
report that never opens a database starts without it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage, RetryFailedTrialCallback
from optuna.storages._cached_storage import _CachedStorage
from optuna.trial import FrozenTrial

# ---------------------------------------------------------------------------------------------------
# A study and its trials


def storage_of(study: optuna.Study) -> BaseStorage:
    """The study's own storage, Optuna's cache included. A worker reads and writes trials through it: a
    second handle would see a stale cache. Optuna has no accessor."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The study's id, which the storage API takes; Optuna has no accessor."""
    return study._study_id


def enter_optimize_loop(study: optuna.Study) -> None:
    """Play the part of Optuna's optimize loop in this thread (until :func:`leave_optimize_loop`): a sampler
    ends a study with ``study.stop()`` (the grid sampler, once its grid is spent), which Optuna allows only
    inside its own loop."""
    study._thread_local.in_optimize_loop, study._stop_flag = True, False


def leave_optimize_loop(study: optuna.Study) -> None:
    study._thread_local.in_optimize_loop = False


def stop_requested(study: optuna.Study) -> bool:
    """Whether ``study.stop()`` was called since :func:`enter_optimize_loop`."""
    return study._stop_flag


def forget_trials(study: optuna.Study) -> None:
    """Drop the study's cached list of trials, as ``study.ask`` does before it creates a trial, so that the
    sampler reads them afresh."""
    study._thread_local.cached_all_trials = None


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """A trial's id, which storage calls (heartbeats, states) take; Optuna keeps it private on both kinds."""
    return trial._trial_id


def as_asked(trial: optuna.Trial) -> FrozenTrial:
    """The trial as ``study.ask`` read it (a queued retry's attributes and links included): reading it again
    costs a query per trial under the study lock."""
    return trial._cached_frozen_trial


# ---------------------------------------------------------------------------------------------------
# Retries, linked as Optuna's RetryFailedTrialCallback links them

# Optuna's readers are public but experimental, and warn at every call (trials are read in every loop of a
# worker): the function their decorator wraps, where it does.
_retry_history = getattr(RetryFailedTrialCallback.retry_history, "__wrapped__",
                         RetryFailedTrialCallback.retry_history)
_retried_trial_number = getattr(RetryFailedTrialCallback.retried_trial_number, "__wrapped__",
                                RetryFailedTrialCallback.retried_trial_number)


def retry_history(trial: FrozenTrial) -> list[int]:
    """The numbers of the trials ``trial`` retries, oldest first (Optuna's
    ``RetryFailedTrialCallback.retry_history``)."""
    return list(_retry_history(trial))


def retried_trial_number(trial: FrozenTrial) -> int | None:
    """The number of the first attempt ``trial`` retries (Optuna's
    ``RetryFailedTrialCallback.retried_trial_number``)."""
    return _retried_trial_number(trial)


def retry_system_attrs(trial: FrozenTrial) -> dict[str, Any]:
    """The system attributes of a retry of ``trial``: its own, and the links that Optuna's retry callback
    writes and its readers (:func:`retry_history`) read. Optuna writes them only from its callback."""
    return {"failed_trial": trial.number, **trial.system_attrs, "retry_history": [*retry_history(trial), trial.number]}


# ---------------------------------------------------------------------------------------------------
# Storages


def backend_of(storage: Any) -> Any:
    """The storage beneath Optuna's cache (``storage`` itself where there is none): tuner's own storage
    methods live there. Optuna keeps it private."""
    return getattr(storage, "_backend", storage)


def stale_trial_ids(storage: Any, study_id: int) -> list[int]:
    """The study's RUNNING trials whose heartbeat is stale, by Optuna's private heartbeat protocol: the public
    ``fail_stale_trials`` fails them without a reason, and a finished trial's attributes can no longer be
    written."""
    return list(storage._get_stale_trial_ids(study_id))


# what Optuna's caching layer calls on the storage beneath it, besides the public API
CACHE_CALLS = ("_get_trials", "_set_trial_param", "_get_best_trial_id")


class CachedStorage(_CachedStorage):
    """Optuna's caching layer over a storage (private; Optuna's documentation advises it for a gRPC proxy's
    server), with what a subclass needs of its private state."""

    @property
    def backend(self) -> BaseStorage:
        """The storage beneath the cache."""
        return self._backend

    def has_read(self, trial_id: int) -> bool:
        """Whether the cache holds trial ``trial_id``: it read or created it."""
        with self._lock:
            return trial_id in self._trial_id_to_study_id_and_number


class RDBStorageHooks(RDBStorage):
    """Optuna's ``RDBStorage``, the private steps that tuner's storage extends given names of tuner's own:

    - :meth:`create_trial` (``_create_new_trial``): Optuna's caching layer creates every trial through it,
      and it retries a failed commit itself;
    - :meth:`prepare_trial_row` (``_get_prepared_new_trial``): the new trial's row, inside the transaction
      that stores it, holding the study's row lock;
    - :meth:`stale_trial_ids` (``_get_stale_trial_ids``): Optuna's heartbeat protocol.
    """

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        return self.create_trial(study_id, template_trial)

    def create_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        """Create a trial from ``template_trial`` (without one: RUNNING, started now) and return it as stored."""
        return RDBStorage._create_new_trial(self, study_id, template_trial)

    def _get_prepared_new_trial(self, study_id: int, template_trial: FrozenTrial | None, session: Any) -> Any:
        return self.prepare_trial_row(study_id, template_trial, session)

    def prepare_trial_row(self, study_id: int, template_trial: FrozenTrial | None, session: Any) -> Any:
        """The new trial's row (Optuna's ``TrialModel``), added to ``session``."""
        return RDBStorage._get_prepared_new_trial(self, study_id, template_trial, session)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self.stale_trial_ids(study_id)

    def stale_trial_ids(self, study_id: int) -> list[int]:
        """The study's RUNNING trials whose heartbeat is older than this storage's grace period."""
        return RDBStorage._get_stale_trial_ids(self, study_id)


@contextlib.contextmanager
def transaction(storage: RDBStorage) -> Iterator[Any]:
    """A transaction on ``storage``'s database, as Optuna's own calls open one (committed at the end, rolled
    back on an error, a database error raised as Optuna's ``StorageInternalError``), for writes that must
    share one transaction. Optuna's is private."""
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(storage.scoped_session) as opened:
        yield opened


def rdb_models() -> ModuleType:
    """Optuna's table models (``TrialModel``, ``TrialSystemAttributeModel``, ``TrialUserAttributeModel``,
    ``TrialHeartbeatModel``, ``StudyUserAttributeModel``): the rows that tuner's transactions write. Private."""
    from optuna.storages._rdb import models

    return models


@dataclass
class _StaleView:
    """What Optuna's stale-trial query reads from its storage."""

    scoped_session: Any
    heartbeat_interval: int
    grace_period: int


def stale_trial_query(storage: RDBStorage, study_id: int, heartbeat_interval: int, grace_period: int) -> list[int]:
    """Optuna's stale-trial query on ``storage``'s database, with heartbeat settings other than the storage's
    (the study's stored ones). The query is private, and reads only these three settings from its storage."""
    view = _StaleView(storage.scoped_session, heartbeat_interval, grace_period)
    return RDBStorage._get_stale_trial_ids(view, study_id)  # type: ignore[arg-type]
