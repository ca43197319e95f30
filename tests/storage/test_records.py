"""Trial records: retry links written by tuner or by Optuna's retry callback."""

from __future__ import annotations

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from report_study import trial

from tuner.storage.records import retry_of


def test_optuna_retry_link_is_read_too() -> None:
    made = trial(TrialState.COMPLETE, "a", 8, 0, 1, 0.3, [0.3])
    made.system_attrs["failed_trial"] = 7  # set by RetryHeartbeatStaleTrialCallback
    assert retry_of(made) == 7
    assert retry_of(trial(TrialState.COMPLETE, "a", 8, 0, 1, 0.3, [0.3])) is None


def test_a_retry_of_a_retry_links_to_the_trial_before_it() -> None:
    """Optuna's callback keeps the first attempt's number as ``failed_trial`` in every later retry."""
    study = optuna.create_study()
    first = study.ask()
    study.tell(first, state=TrialState.FAIL)
    retry = RetryHeartbeatStaleTrialCallback(max_retry=3)
    retry(study, study.trials[0])
    second = study.ask()  # the queued retry, trial 1
    study.tell(second, state=TrialState.FAIL)
    retry(study, study.trials[1])
    queued = study.trials[2]
    assert queued.state == TrialState.WAITING and queued.system_attrs["failed_trial"] == 0
    assert [retry_of(t) for t in study.trials] == [None, 0, 1]
