"""Trial records: retry links written by tuner or by Optuna's retry callback."""

from __future__ import annotations

from optuna.trial import TrialState
from report_study import trial

from tuner.storage.records import retry_of


def test_optuna_retry_link_is_read_too() -> None:
    made = trial(TrialState.COMPLETE, "a", 8, 0, 1, 0.3, [0.3])
    made.system_attrs["failed_trial"] = 7  # set by RetryHeartbeatStaleTrialCallback
    assert retry_of(made) == 7
    assert retry_of(trial(TrialState.COMPLETE, "a", 8, 0, 1, 0.3, [0.3])) is None
