"""The heartbeat thread: it beats again soon after a database outage."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import sqlalchemy
from optuna.trial import TrialState

from tuner.study import heartbeat
from tuner.study.heartbeat import Heartbeat


class _Storage:
    """A storage whose first ``failures`` heartbeats fail, as during an outage; ``beaten`` is set by one that lands."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.beaten = threading.Event()

    def record_heartbeat(self, trial_id: int) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise sqlalchemy.exc.OperationalError("UPDATE", {}, Exception("server closed the connection"))
        self.beaten.set()

    def get_trial(self, trial_id: int) -> SimpleNamespace:
        return SimpleNamespace(state=TrialState.RUNNING)


def test_a_failed_beat_is_tried_again_soon_not_an_interval_later(monkeypatch: pytest.MonkeyPatch) -> None:
    # a live trial whose heartbeat waits a whole interval after the database is back can look stale
    monkeypatch.setattr(heartbeat, "RETRY_BEAT_S", 0.01)
    storage = _Storage(failures=2)
    with Heartbeat(storage, 1, interval=3600):  # the first beat, here, fails
        assert storage.beaten.wait(10), f"no beat landed after {storage.calls} attempts"
    assert storage.calls == 3


def test_a_first_beat_stored_with_the_trial_is_not_written_again() -> None:
    storage = _Storage(failures=0)
    with Heartbeat(storage, 1, interval=3600, first_stored=True):
        pass
    assert storage.calls == 0
    with Heartbeat(storage, 1, interval=3600):
        pass
    assert storage.calls == 1
