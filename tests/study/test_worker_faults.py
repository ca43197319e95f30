"""Exactly once under faults: a commit fails before it reaches the server, or its reply is lost after it,
at every write the worker loop makes, on SQLite, PostgreSQL and MariaDB; and a lost study lock."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

import optuna
import pytest
import sqlalchemy
from conftest import storage_faults
from optuna.trial import TrialState

from tuner.keys import TOKEN_ATTR
from tuner.storage.lock import SlotLock
from tuner.storage.rdb import open_storage
from tuner.storage.records import is_not_admitted, retry_history
from tuner.study.recovery import used_slots
from tuner.study.worker import work
from tuner.training.stopping import StopSignals

BUDGET = 3

# (the storage method, which of its calls fails): every write the worker makes on its way through a
# study that holds a stale trial. Its loop fails the stale trial and queues its retry, takes the retry
# up, then creates fresh trials; each trial is labelled (a new one by the transaction that creates it),
# beats (its first beat is stored as it starts), reports and is told.
WRITES = [
    ("set_trial_user_attr", 0),  # the stale trial's fail_reason
    ("set_trial_state_values", 0),  # the stale trial failed
    ("_create_new_trial", 0),  # its retry queued (WAITING, from a template)
    ("set_trial_state_values", 1),  # the retry taken up (WAITING to RUNNING)
    ("set_trial_user_attr", 1),  # the retry's worker label
    ("record_heartbeat", 0),  # the thread's first beat, a second in
    ("set_trial_intermediate_value", 0),  # the first report
    ("set_trial_state_values", 2),  # the retry's result (COMPLETE, its value)
    ("_create_new_trial", 1),  # a new trial (RUNNING, from a template with its labels)
]


def _study(url: str) -> optuna.Study:
    storage = open_storage(url, heartbeat_interval=1, grace_period=30)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=f"faults-{uuid.uuid4().hex[:8]}", storage=storage,
                               sampler=optuna.samplers.RandomSampler(seed=0))


def _stale_trial(study: optuna.Study) -> None:
    """A RUNNING trial whose worker died an hour ago: a queued one (as the baseline trial is), taken up."""
    study.enqueue_trial({"x": 1.0})
    trial = study.ask()
    trial.suggest_float("x", -10, 10)
    study._storage.set_trial_user_attr(trial._trial_id, "worker", "dead")
    study._storage.record_heartbeat(trial._trial_id)
    with study._storage._backend.engine.begin() as connection:
        connection.execute(sqlalchemy.text("UPDATE trial_heartbeats SET heartbeat = :old WHERE trial_id = :id"),
                           {"old": datetime.now() - timedelta(hours=1), "id": trial._trial_id})


def _objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -10, 10)
    trial.report(x, 0)
    return x * x


def _beating(faults: list[str]) -> Callable[[optuna.Trial], float]:
    """The objective, running until the heartbeat thread's write has met its fault (beats are a second apart)."""
    def objective(trial: optuna.Trial) -> float:
        deadline = time.monotonic() + 10
        while not faults and time.monotonic() < deadline:
            time.sleep(0.05)
        return _objective(trial)

    return objective


def _run(study: optuna.Study, url: str, objective: Callable[[optuna.Trial], float] = _objective) -> None:
    started = time.monotonic()
    with StopSignals() as signals:
        result = work(study, objective, BUDGET, lock=SlotLock(url, study.study_name), signals=signals,
                      timeout=20, poll_s=0.2)
    assert not result.timed_out and time.monotonic() - started < 20


def _assert_exactly_once(study: optuna.Study) -> None:
    trials = optuna.load_study(study_name=study.study_name, storage=open_storage(study._storage._backend.url,
                               create_schema=False)).get_trials(deepcopy=False)
    assert [t.number for t in trials] == list(range(len(trials)))
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]  # no orphan
    assert used_slots(trials) == BUDGET
    tokens = [t.system_attrs[TOKEN_ATTR] for t in trials if TOKEN_ATTR in t.system_attrs]
    assert len(tokens) == len(set(tokens))  # no trial created twice
    failed = [t for t in trials if t.state == TrialState.FAIL and not is_not_admitted(t)]
    for trial in failed:  # each failure has exactly one retry, linked to it
        retries = [t for t in trials if retry_history(t)[-1:] == [trial.number]]
        assert len(retries) == 1 and retries[0].user_attrs["retry_of"] == trial.number
    assert all(t.state == TrialState.COMPLETE for t in trials if t not in failed and not is_not_admitted(t))


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize(("method", "skip"), WRITES, ids=[f"{m}-{s}" for m, s in WRITES])
@pytest.mark.usefixtures("no_optuna_backoff")
def test_every_write_of_the_worker_survives_a_failed_commit(storage_url: str, method: str, skip: int,
                                                            when: str) -> None:
    study = _study(storage_url)
    try:
        _stale_trial(study)
        with storage_faults(study._storage._backend, method, when, skip=skip) as faults:
            _run(study, storage_url, _beating(faults) if method == "record_heartbeat" else _objective)
        assert faults == [f"{method}:{when}"]  # the fault happened where it was aimed
        _assert_exactly_once(study)
    finally:
        optuna.delete_study(study_name=study.study_name, storage=storage_url)


@pytest.mark.usefixtures("no_optuna_backoff")
def test_a_lost_study_lock_cannot_overshoot_the_budget(storage_url: str) -> None:
    # A lock held by a database session is freed by the server when the session's connection drops,
    # while its holder carries on. Here the worker counts a free slot under the lock; before it creates
    # its trial, another worker, which took the freed lock and saw the same count, finishes the last one.
    study = _study(storage_url)
    other = optuna.load_study(study_name=study.study_name, storage=open_storage(storage_url, create_schema=False))

    def the_other_worker_takes_the_last_slots() -> None:
        for _ in range(BUDGET):
            trial = other.ask()
            other.tell(trial, _objective(trial))

    try:
        with storage_faults(study._storage._backend, "_create_new_trial", times=0,
                            before=the_other_worker_takes_the_last_slots):
            _run(study, storage_url)
        trials = study.get_trials(deepcopy=False)
        assert [(t.number, t.state) for t in trials][-1] == (BUDGET, TrialState.FAIL)
        assert is_not_admitted(trials[-1]) and trials[-1].user_attrs["fail_reason"].startswith("not admitted")
        _assert_exactly_once(study)
    finally:
        optuna.delete_study(study_name=study.study_name, storage=storage_url)
