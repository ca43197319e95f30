"""The worker loop: exact budgets across processes, signals, errors of the study, and resuming a retry."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState
from processes import (
    assert_exact_budget,
    assert_resumed,
    finish,
    first_trial_has,
    start_trivial_workers,
    start_tuner,
    tiny_study,
    wait_for,
)
from trivial_worker import open_trivial_study

from tuner.errors import DataError
from tuner.storage.lock import SlotLock
from tuner.storage.rdb import beats_when_started
from tuner.study import recovery
from tuner.study.heartbeat import Heartbeat
from tuner.study.loop import _ask, _label, work
from tuner.study.pool import _progress_line
from tuner.study.recovery import fail_stale, used_slots
from tuner.training.stopping import StopSignals


def test_four_workers_share_one_budget_exactly(storage_url: str) -> None:
    name = f"budget-{uuid.uuid4().hex[:8]}"
    study = open_trivial_study(storage_url, name)
    try:
        results = finish(start_trivial_workers(storage_url, name, 40, k=4, seconds=0.02))
        assert all(code == 0 for code, _, _ in results), results
        assert sum(json.loads(out)["ran"] for _, out, _ in results) == 40
        assert_exact_budget(study, 40)
        assert all(t.state == TrialState.COMPLETE for t in study.trials)
        workers = {t.user_attrs["pid"] for t in study.trials}
        assert len(workers) > 1  # the work was shared
    finally:
        optuna.delete_study(study_name=name, storage=storage_url)


def test_eight_sqlite_workers_never_see_a_locked_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'busy.db'}"
    study = open_trivial_study(url, "busy")
    results = finish(start_trivial_workers(url, "busy", 120, k=8))
    assert all(code == 0 for code, _, _ in results), results
    assert not [err for _, _, err in results if "locked" in err]
    assert_exact_budget(study, 120)


def test_the_worker_loop_stops_on_a_signal_and_requeues_the_trial(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = open_trivial_study(url, "signal")

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", -10, 10)
        if trial.number == 1:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted: the handler raises at once outside deferred code
        return 1.0

    with StopSignals() as signals:
        result = work(study, objective, 10, lock=SlotLock(url, "signal"), signals=signals)
    assert result.interrupted == "SIGTERM" and result.ran == 2
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert study.trials[1].user_attrs["fail_reason"] == "interrupted by SIGTERM; queued for retry"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back


@pytest.mark.parametrize(("outcome", "where"),
                         [("complete", "heartbeat"), ("error", "heartbeat"), ("complete", "tell")])
def test_a_signal_once_the_objective_returned_lets_its_outcome_be_stored_then_stops(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outcome: str, where: str) -> None:
    # the trial ended: a signal while its heartbeat stops or its outcome is stored must not fail and requeue it
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = open_trivial_study(url, "ending")
    hooked = Heartbeat.__exit__ if where == "heartbeat" else study._storage.set_trial_state_values

    def signalled(*args: object, **kwargs: object) -> object:
        signal.raise_signal(signal.SIGTERM)
        return hooked(*args, **kwargs)  # type: ignore[operator]

    if where == "heartbeat":
        monkeypatch.setattr(Heartbeat, "__exit__", signalled)
    else:
        monkeypatch.setattr(study._storage, "set_trial_state_values", signalled)

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", -10, 10)
        if outcome == "error":
            raise RuntimeError("diverged")
        return 1.0

    with StopSignals() as signals:
        result = work(study, objective, 10, lock=SlotLock(url, "ending"), signals=signals)
    assert result.interrupted == "SIGTERM" and result.ran == 1
    [trial] = study.trials  # no retry queued
    if outcome == "complete":
        assert trial.state == TrialState.COMPLETE and trial.value == 1.0
    else:
        assert trial.state == TrialState.FAIL and trial.user_attrs["fail_reason"] == "RuntimeError: diverged"


def test_a_second_signal_quits_at_once_and_leaves_the_trial_to_the_stale_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = open_trivial_study(url, "force-quit")
    reached = []

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", -10, 10)
        with signals.deferred():  # training, which would stop at its next batch, but hangs
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)  # the user insists
            reached.append(True)
        return 1.0

    with StopSignals() as signals:
        result = work(study, objective, 10, lock=SlotLock(url, "force-quit"), signals=signals)
    assert not reached
    assert result.interrupted == "SIGTERM" and result.forced
    [trial] = study.trials
    assert trial.state == TrialState.RUNNING  # nothing more stored: the database may be what hangs
    for beating in [t for t in threading.enumerate() if t.name.startswith("heartbeat-")]:
        beating.join(5)  # the heartbeat stops, so the trial turns stale
        assert not beating.is_alive()
    monkeypatch.setattr(recovery, "_stale_ids", lambda study: [trial._trial_id])
    assert fail_stale(study, max_retries=2) == [0]
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]


def test_lightnings_own_sigterm_exit_also_requeues_the_trial(tmp_path: Path) -> None:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    url = f"sqlite:///{tmp_path / 's.db'}"
    study = open_trivial_study(url, "lightning-exit")
    with StopSignals() as signals:

        def objective(trial: optuna.Trial) -> float:
            trial.suggest_float("x", -10, 10)
            with signals.deferred():  # as inside training, where Lightning may see the signal first
                os.kill(os.getpid(), signal.SIGTERM)
            raise SIGTERMException  # a SystemExit

        result = work(study, objective, 10, lock=SlotLock(url, "lightning-exit"), signals=signals)
    assert result.interrupted == "SIGTERM"
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]
    assert study.trials[0].user_attrs["fail_reason"] == "interrupted by SIGTERM; queued for retry"


def test_a_trial_another_worker_failed_as_stale_is_stopped_at_once_and_left_to_its_retry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker coming back from a database outage can find a live trial's heartbeat stale (see
    # tuner.config.schema.outage_wait_s); it fails the trial and queues its retry. The trial's own worker
    # must stop it (its retry resumes from its checkpoint) and store nothing more on it.
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = open_trivial_study(url, "stale-alive")
    other = open_trivial_study(url, "stale-alive")  # the other worker's connection
    failed: list[FrozenTrial] = []
    waited: list[float] = []

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", -10, 10)
        if trial.number == 0:
            with monkeypatch.context() as patch:
                patch.setattr(recovery, "_stale_ids", lambda study: [trial._trial_id])
                assert fail_stale(other, max_retries=2) == [0]
            failed.append(other._storage.get_trial(trial._trial_id))
            started = time.monotonic()
            try:
                signals.sleep(20)  # training, which checks the signals at each batch
            finally:
                waited.append(time.monotonic() - started)
            raise AssertionError("the trial was not stopped")
        return 1.0

    with StopSignals() as signals:
        result = work(study, objective, 2, lock=SlotLock(url, "stale-alive"), signals=signals)
    assert waited[0] < 5  # a heartbeat interval is 1 s
    assert result.ran == 3 and result.interrupted is None
    trials = study.get_trials()
    assert trials[0] == failed[0]  # as the other worker left it: no tell, no attribute
    assert trials[0].user_attrs["fail_reason"].startswith("stale: ")
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert [t.number for t in trials if t.user_attrs.get("retry_of") == 0] == [1]  # one retry
    assert used_slots(trials) == 2


def test_an_error_of_the_study_stops_the_worker_and_spends_no_budget(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = open_trivial_study(url, "study-error")
    study.enqueue_trial({"x": 1.0}, user_attrs={"baseline": True})

    def missing_data(trial: optuna.Trial) -> float:
        trial.suggest_float("x", -10, 10)
        raise DataError("data file train.txt does not exist")

    with StopSignals() as signals, pytest.raises(DataError, match="train.txt does not exist"):
        work(study, missing_data, 3, lock=SlotLock(url, "study-error"), signals=signals)
    failed, queued = study.trials
    assert failed.state == TrialState.FAIL and failed.user_attrs["study_error"]
    assert failed.user_attrs["fail_reason"] == "DataError: data file train.txt does not exist"
    assert queued.state == TrialState.WAITING and queued.params == {"x": 1.0} and queued.user_attrs["baseline"]
    assert used_slots(study.trials) == 1  # the queued trial; the failure is not counted
    with StopSignals() as signals:  # the data are back: the study runs to its budget
        result = work(study, lambda t: t.suggest_float("x", -10, 10), 3, lock=SlotLock(url, "study-error"),
                      signals=signals)
    assert result.ran == 3 and result.repeated_failure is None
    assert [t.state for t in study.trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * 3
    retry = study.trials[1]
    assert retry.user_attrs["retry_of"] == 0 and retry.user_attrs["baseline"] and retry.params == {"x": 1.0}
    assert not retry.user_attrs.get("study_error") and not retry.user_attrs.get("fail_reason")
    assert used_slots(study.trials) == 3
    assert _progress_line(study.trials, 3) == "3/3 finished (3 complete, 0 pruned, 0 failed), 0 running"


def test_the_same_failure_three_times_in_a_row_stops_the_worker(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = open_trivial_study(url, "same-failure")
    errors = iter(["one", "two", "one", None, "one", "one", "one", "one"])

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", -10, 10)
        error = next(errors)
        if error is not None:
            raise RuntimeError(f"{error}\nsecond line")
        return 1.0

    with StopSignals() as signals:
        result = work(study, objective, 20, lock=SlotLock(url, "same-failure"), signals=signals)
    assert result.ran == 7  # "one" after "two", or after a success, starts the count again
    assert result.repeated_failure == "3 trials in a row failed with the same error: RuntimeError: one"
    assert [t.state for t in study.trials].count(TrialState.FAIL) == 6


def test_grid_exhaustion_ends_the_worker(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    storage = open_trivial_study(url, "unused")._storage
    study = optuna.create_study(study_name="grid", storage=storage,
                                sampler=optuna.samplers.GridSampler({"x": [1.0, 2.0, 3.0]}))
    with StopSignals() as signals:
        result = work(study, lambda t: t.suggest_float("x", 0, 5), 10, lock=SlotLock(url, "grid"), signals=signals)
    assert result.ran == 3 and len(study.trials) == 3


def test_a_killed_workers_trial_is_retried_by_another_and_resumes(study_dir: Path) -> None:
    first = start_tuner(study_dir)
    last = study_dir / "runs" / "tiny" / "trial-0000" / "checkpoints" / "last.ckpt"
    wait_for(last.is_file, "the first checkpoint", process=first)
    first.kill()
    first.wait()
    second = start_tuner(study_dir)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err
    original, retry = tiny_study(study_dir).trials
    assert original.state == TrialState.FAIL
    assert original.user_attrs["fail_reason"].startswith("stale: the heartbeat of worker")
    assert original.user_attrs["fail_reason"].endswith("queued for retry")
    assert_resumed(retry, original)
    assert "1/1 trials finished" in out


def test_sigterm_ends_the_trial_cleanly_and_its_retry_resumes(study_dir: Path) -> None:
    first = start_tuner(study_dir)
    # after the first validation's checkpoint: a signal in a step that runs past the grace (a loaded
    # machine) abandons the step, and the retry resumes from that checkpoint
    last = study_dir / "runs" / "tiny" / "trial-0000" / "checkpoints" / "last.ckpt"
    wait_for(lambda: last.is_file() and first_trial_has(study_dir, "start_step"), "the first checkpoint",
             process=first)
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err and "stopped by SIGTERM" in err
    interrupted, queued = tiny_study(study_dir).trials
    assert interrupted.user_attrs["fail_reason"] == "interrupted by SIGTERM; queued for retry"
    assert interrupted.state == TrialState.FAIL and queued.state == TrialState.WAITING
    second = start_tuner(study_dir)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err
    assert_resumed(tiny_study(study_dir).trials[1], interrupted)


def test_a_new_trial_is_labelled_and_beaten_as_it_is_created_with_no_writes_after(tmp_path: Path) -> None:
    study = open_trivial_study(f"sqlite:///{tmp_path / 'study.db'}", "labels")
    backend = study._storage._backend
    written: list[str] = []
    attr = backend.set_trial_user_attr
    backend.set_trial_user_attr = lambda trial_id, key, value: (written.append(key), attr(trial_id, key, value))
    labels = {"worker": "w3", "host": "node-7", "pid": 4242}
    trial = _ask(study, waiting=False, labels=labels)
    _label(trial, labels)
    assert written == []  # the creating transaction stored them
    stored = optuna.load_study(study_name="labels", storage=study._storage).trials[0]
    assert {key: stored.user_attrs[key] for key in labels} == labels
    assert beats_when_started(study._storage)
    with backend.engine.connect() as connection:  # its first heartbeat is stored
        beats = connection.execute(sqlalchemy.text("SELECT trial_id FROM trial_heartbeats")).scalars().all()
    assert beats == [trial._trial_id]
    _label(trial, {**labels, "pid": 99})  # a retry taken up by another worker: what differs is written
    assert written == ["pid"]


def test_a_stalled_trial_is_failed_and_retried_while_its_worker_lives(tmp_path: Path) -> None:
    # A hung data loader: the worker's process lives and beats, and no forward pass ever comes.
    url = f"sqlite:///{tmp_path / 'stall.db'}"
    study = open_trivial_study(url, "stall")
    hung: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -10, 10)
        if not hung:
            hung.append(trial.number)
            deadline = time.monotonic() + 30  # hangs until the stall check has failed it
            while study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
                assert time.monotonic() < deadline, "the stalled trial was never failed"
                time.sleep(0.05)
        return x * x

    with StopSignals() as signals:
        result = work(study, objective, 2, lock=SlotLock(url, "stall"), signals=signals, stall_timeout=1.5)
    assert result.ran == 3 and result.interrupted is None
    stalled, retry, other = study.get_trials(deepcopy=False)
    assert stalled.state == TrialState.FAIL and stalled.number == hung[0]
    assert stalled.user_attrs["fail_reason"].startswith("stalled: no forward pass for 1.5 s")
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["retry_of"] == stalled.number
    assert retry.params == stalled.params and other.state == TrialState.COMPLETE
    assert_exact_budget(study, 2)


def test_a_trial_that_makes_progress_is_never_stalled(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'busy.db'}"
    study = open_trivial_study(url, "busy")

    def objective(trial: optuna.Trial) -> float:
        ending = time.monotonic() + 3  # longer than the timeout, with progress all along
        while time.monotonic() < ending:
            signals.progress()
            time.sleep(0.05)
        return trial.suggest_float("x", -10, 10)

    with StopSignals() as signals:
        work(study, objective, 1, lock=SlotLock(url, "busy"), signals=signals, stall_timeout=1.5)
    assert [t.state for t in study.get_trials(deepcopy=False)] == [TrialState.COMPLETE]
