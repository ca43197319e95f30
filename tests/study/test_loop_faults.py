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

from tuner.errors import TunerError
from tuner.keys import TOKEN_ATTR
from tuner.storage.lock import SlotLock
from tuner.storage.rdb import open_storage
from tuner.storage.records import is_not_admitted, retry_history
from tuner.study.loop import work
from tuner.study.recovery import fail_stale, used_slots
from tuner.training.stopping import StopSignals

BUDGET = 3

# (the storage method, which of its calls fails): every write the worker makes on its way through a
# study that holds a stale trial. Its loop queues the stale trial's retry and fails it, takes the retry
# up, then creates fresh trials; each trial is labelled (a new one by the transaction that creates it),
# beats (its first beat is stored as it starts), reports and is told.
WRITES = [
    ("set_trial_user_attr", 0),  # the stale trial's fail_reason
    ("_create_new_trial", 0),  # its retry queued (WAITING, from a template), before the failure
    ("set_trial_state_values", 0),  # the stale trial failed
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


def _run(study: optuna.Study, url: str, objective: Callable[[optuna.Trial], float] = _objective,
         timeout: float = 20) -> bool:
    """One worker's loop to its end; whether it ran out of time."""
    started = time.monotonic()
    with StopSignals() as signals:
        result = work(study, objective, BUDGET, lock=SlotLock(url, study.study_name), signals=signals,
                      timeout=timeout, poll_s=0.2)
    assert time.monotonic() - started < timeout + 10
    return result.timed_out


def _other_worker(study: optuna.Study) -> optuna.Study:
    """The same study, opened by another worker (its own storage and connections)."""
    url = study._storage._backend.url
    return optuna.load_study(study_name=study.study_name, storage=open_storage(url, create_schema=False,
                                                                               heartbeat_interval=1, grace_period=30))


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
            assert not _run(study, storage_url, _beating(faults) if method == "record_heartbeat" else _objective)
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
            assert not _run(study, storage_url)
        trials = study.get_trials(deepcopy=False)
        assert [(t.number, t.state) for t in trials][-1] == (BUDGET, TrialState.FAIL)
        assert is_not_admitted(trials[-1]) and trials[-1].user_attrs["fail_reason"].startswith("not admitted")
        _assert_exactly_once(study)
    finally:
        optuna.delete_study(study_name=study.study_name, storage=storage_url)


def _count(study: optuna.Study, state: TrialState) -> int:
    return sum(t.state == state for t in study.get_trials(deepcopy=False))


# the first worker's writes as it fails its trial for an error of the study: its retry queued (the
# worker's second creation), the trial failed (its first final write)
@pytest.mark.parametrize(("method", "skip"), [("_create_new_trial", 1), ("set_trial_state_values", 0)])
@pytest.mark.usefixtures("no_optuna_backoff")
def test_an_error_of_the_study_cannot_overshoot_the_budget(storage_url: str, method: str, skip: int) -> None:
    # A worker fails its trial for an error of the study (a data file gone); another worker runs its whole
    # loop just as one of those writes starts. Whatever it counts, the study ends with the budget's trials.
    study = _study(storage_url)
    other = _other_worker(study)

    def broken(trial: optuna.Trial) -> float:
        trial.suggest_float("x", -10, 10)
        raise TunerError("data file gone")

    try:
        with storage_faults(study._storage._backend, method, skip=skip, times=0,
                            before=lambda: _run(other, storage_url, timeout=3)), pytest.raises(TunerError):
            _run(study, storage_url, broken)
        assert not _run(study, storage_url)  # the study fixed: a worker finishes it
        assert _count(study, TrialState.COMPLETE) == BUDGET
        _assert_exactly_once(study)
    finally:
        optuna.delete_study(study_name=study.study_name, storage=storage_url)


@pytest.mark.usefixtures("no_optuna_backoff")
def test_two_workers_failing_one_stale_trial_queue_one_retry(storage_url: str) -> None:
    # The first worker's write of the failure is lost before it reaches the server; before its repeat,
    # another worker (a lost lock; the proxy has none) fails the same trial. Its repeat finds the trial
    # failed, as its own lost write would have left it: both went on to queue a retry.
    study = _study(storage_url)
    other = _other_worker(study)
    try:
        _stale_trial(study)
        with storage_faults(study._storage._backend, "set_trial_state_values", when="before",
                            during=lambda: fail_stale(other, max_retries=2)) as faults:
            fail_stale(study, max_retries=2)
        assert faults == ["set_trial_state_values:before"]
        assert [t.state for t in study.get_trials(deepcopy=False)] == [TrialState.FAIL, TrialState.WAITING]
        assert not _run(study, storage_url)
        _assert_exactly_once(study)
    finally:
        optuna.delete_study(study_name=study.study_name, storage=storage_url)


@pytest.mark.usefixtures("no_optuna_backoff")
def test_a_retry_of_a_trial_created_past_the_budget_is_not_admitted(storage_url: str) -> None:
    # The budget is spent; a worker that created one more trial died before withdrawing it. Its trial goes
    # stale and is retried, and the retry stays past the budget as its first attempt was.
    study = _study(storage_url)
    try:
        for _ in range(BUDGET):
            trial = study.ask()
            study.tell(trial, _objective(trial))
        _stale_trial(study)
        assert not _run(study, storage_url)
        trials = study.get_trials(deepcopy=False)
        assert _count(study, TrialState.COMPLETE) == BUDGET and used_slots(trials) == BUDGET
        stale, retry = trials[BUDGET:]
        assert retry_history(retry) == [stale.number] and is_not_admitted(retry)
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    finally:
        optuna.delete_study(study_name=study.study_name, storage=storage_url)
