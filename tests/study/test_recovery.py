"""Recovery: slots, retries queued once, stale trials failed and retried, and reaping dead workers' trials
and old ones, judged by the database's clock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
from conftest import age_heartbeats, replies_lost, started_by_a_worker
from optuna.trial import FrozenTrial, TrialState
from processes import first_trial_has, start_tuner, tiny_study, wait_for
from trivial_worker import open_trivial_study

from tuner.keys import HEARTBEAT_ATTR, STARTED_ATTR
from tuner.storage.rdb import database_time, heartbeat_settings, open_storage
from tuner.study.recovery import fail_stale, reap, requeue, used_slots


def test_used_slots_leave_out_failures_that_were_retried(tmp_path: Path) -> None:
    study = open_trivial_study(f"sqlite:///{tmp_path / 's.db'}", "slots")
    first = study.ask()
    first.suggest_float("x", -10, 10)
    frozen = study.tell(first, state=TrialState.FAIL)
    assert used_slots(study.get_trials()) == 1
    assert requeue(study, frozen, max_retries=1)
    assert used_slots(study.get_trials()) == 1  # the retry holds the failed trial's slot
    retry = study.ask()
    assert retry.params == first.params
    assert not requeue(study, study.tell(retry, state=TrialState.FAIL), max_retries=1)  # limit reached
    assert used_slots(study.get_trials()) == 1


@pytest.mark.parametrize("failures", [1, 6], ids=["optuna-retries", "tuner-retries"])
@pytest.mark.usefixtures("no_optuna_backoff")
def test_a_retry_whose_queuing_reply_was_lost_is_queued_once(tmp_path: Path, failures: int) -> None:
    study = open_trivial_study(f"sqlite:///{tmp_path / 's.db'}", "requeue")
    first = study.ask()
    first.suggest_float("x", -10, 10)
    frozen = study.tell(first, state=TrialState.FAIL)
    with replies_lost(study._storage._backend.engine, failures) as failed:
        assert requeue(study, frozen, max_retries=2)
    assert len(failed) == failures
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.WAITING]
    assert used_slots(study.get_trials()) == 1
    retry = study.ask()  # the retry, though it inherited the failed trial's creation token
    assert retry.number == 1 and retry.params == first.params
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.RUNNING]


def test_a_stale_trial_is_failed_with_its_reason_and_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = open_trivial_study(url, "stale")
    trial = study.ask()
    trial.suggest_float("x", -10, 10)
    trial.set_user_attr("worker", "w9")
    study._storage.record_heartbeat(trial._trial_id)
    assert fail_stale(study, max_retries=2) == []  # the heartbeat is fresh
    monkeypatch.setattr(type(study._storage._backend), "_get_stale_trial_ids", lambda self, study_id: [trial._trial_id])
    assert fail_stale(study, max_retries=2) == [trial.number]
    failed, retry = study.get_trials()
    assert failed.state == TrialState.FAIL and failed.user_attrs["fail_reason"].startswith("stale: the heartbeat of "
                                                                                           "worker w9")
    assert retry.state == TrialState.WAITING and retry.params == failed.params
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == failed.number


def test_the_stale_check_follows_the_grace_period_stored_with_the_study(storage_url: str) -> None:
    """Whatever grace period a worker's storage was opened with, its stale check uses the study's."""
    name = f"grace-{uuid.uuid4().hex[:8]}"  # the server databases are shared by the tests
    study = open_trivial_study(storage_url, name)  # a worker that asked for a grace period of 10 s
    study.set_user_attr(HEARTBEAT_ATTR, heartbeat_settings(1, 600))  # the study was created with 600 s
    patient = optuna.load_study(study_name=name, storage=open_storage(storage_url, heartbeat_interval=1,
                                                                      grace_period=3600))
    trial = study.ask()  # RUNNING, with its first heartbeat
    age_heartbeats(storage_url, [trial._trial_id], 60)
    assert fail_stale(study, max_retries=2) == []  # a live trial to the study, though not to this worker
    age_heartbeats(storage_url, [trial._trial_id], 600)
    assert patient._storage._get_stale_trial_ids(patient._study_id) == [trial._trial_id]
    assert fail_stale(study, max_retries=2) == [trial.number]
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.WAITING]


def _started(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> float:
    """When ``trial`` became RUNNING by the database's clock, as its storage recorded it."""
    started = study._storage.get_trial(trial._trial_id).system_attrs[STARTED_ATTR]
    assert isinstance(started, (int, float))
    return float(started)


def test_reap_fails_trials_of_dead_workers_and_old_ones(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = open_trivial_study(url, "reap")
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead, old, alive = study.ask(), study.ask(), study.ask()
    for trial, pid in ((dead, gone.pid), (old, os.getpid()), (alive, os.getpid())):
        trial.suggest_float("x", -10, 10)
        trial.set_user_attr("host", os.uname().nodename)
        trial.set_user_attr("pid", pid)
    reaped = reap(study, max_retries=2)
    assert [r.number for r in reaped] == [dead.number] and reaped[0].retried
    assert "is no longer running" in reaped[0].reason
    for trial in (old, alive):  # started two hours ago
        study._storage.set_trial_system_attr(trial._trial_id, STARTED_ATTR, _started(study, trial) - 7200)
    reaped = reap(study, max_retries=0, older_than=3600)
    assert sorted(r.number for r in reaped) == [old.number, alive.number]
    assert not any(r.retried for r in reaped)
    by_number = {t.number: t for t in study.trials}
    assert by_number[old.number].user_attrs["fail_reason"].endswith("retry limit of 0 reached")


def test_a_trial_records_its_start_by_the_database_clock_when_it_runs_and_a_retry_its_own(tmp_path: Path) -> None:
    study = open_trivial_study(f"sqlite:///{tmp_path / 's.db'}", "started")
    first = study.ask()
    first.suggest_float("x", -10, 10)
    study._storage.set_trial_system_attr(first._trial_id, STARTED_ATTR, _started(study, first) - 7200)
    assert requeue(study, study.tell(first, state=TrialState.FAIL), max_retries=1)
    assert STARTED_ATTR not in study.get_trials()[1].system_attrs  # queued, not started: not the failed one's
    retry = study.ask()
    now = database_time(study._storage)
    assert retry.number == 1 and now is not None and 0 <= now - _started(study, retry) < 60


def test_reap_older_than_judges_age_by_the_database_clock_not_the_workers(storage_url: str) -> None:
    study = open_trivial_study(storage_url, f"clock-{uuid.uuid4().hex[:8]}")
    west, east = (started_by_a_worker(study._storage, study._study_id, hours) for hours in (-5, 5))
    assert west.datetime_start is not None and west.datetime_start < datetime.now() - timedelta(hours=4)
    now = database_time(study._storage)
    assert now is not None and 0 <= now - _started(study, west) < 60
    study._storage.set_trial_system_attr(east._trial_id, STARTED_ATTR, _started(study, east) - 7200)
    reaped = reap(study, max_retries=0, older_than=3600)
    # west's trial started just now, though its start reads five hours ago; east's two hours ago
    assert [r.number for r in reaped] == [east.number]
    assert "running for more than 3600 s" in reaped[0].reason
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING, TrialState.FAIL]


def test_reap_older_than_falls_back_to_the_workers_start_without_the_database_clock() -> None:
    study = optuna.create_study()  # in memory: no database, no recorded start
    for hours in (-2, 0):
        started_by_a_worker(study._storage, study._study_id, hours)
    reaped = reap(study, max_retries=0, older_than=3600)
    assert [r.number for r in reaped] == [0]
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.RUNNING]


def test_tuner_reap_fails_a_dead_workers_trial(study_dir: Path) -> None:
    first = start_tuner(study_dir, "--set=study.heartbeat_interval=0")  # no heartbeats: only reap can tell
    wait_for(lambda: first_trial_has(study_dir, "trial_dir"), "a running trial", process=first)
    first.kill()
    first.wait()
    out = subprocess.run([sys.executable, "-m", "tuner", "reap", "--study", "tiny", "--json"], cwd=study_dir,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    [reaped] = json.loads(out.stdout)
    assert reaped["number"] == 0 and reaped["retried"] and "is no longer running" in reaped["reason"]
    states = [t.state for t in tiny_study(study_dir).trials]
    assert states == [TrialState.FAIL, TrialState.WAITING]
