"""A running trial's heartbeat: a thread that records it every ``heartbeat_interval`` seconds."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from optuna.trial import TrialState

from tuner.errors import ForceQuit, first_line

log = logging.getLogger(__name__)

# after a failed beat, the next try comes this soon rather than an interval later: once the database is
# back, the trial must beat again before a worker coming back too finds it stale
RETRY_BEAT_S = 1.0


class Heartbeat:
    """Records a trial's heartbeat every ``interval`` seconds in a thread while the trial runs.

    A failed write (the database restarting) is logged and tried again within ``RETRY_BEAT_S``: the thread
    must outlive outages, and beat soon after one, or a live trial would look dead to the other workers.

    After each beat it reads the trial's state: a trial no longer RUNNING was failed as stale by another
    worker, which queued its retry (a worker can come back from an outage and find a live trial stale:
    :func:`tuner.config.schema.outage_wait_s`). The thread then calls ``on_ended`` and stops beating.
    """

    def __init__(self, storage: Any, trial_id: int, interval: int | None,
                 on_ended: Callable[[], None] | None = None, first_stored: bool = False,
                 stalled: Callable[[], bool] | None = None) -> None:
        """``first_stored``: the storage stored the trial's first beat as it started it, so the first beat
        here is an interval later (see :func:`tuner.storage.rdb.beats_when_started`). ``stalled``: asked
        before each beat; once it says the trial made no progress for too long (and has ended it), the
        thread stops beating."""
        self.storage, self.trial_id, self.interval, self.on_ended = storage, trial_id, interval, on_ended
        self.first_stored = first_stored
        self.stalled = stalled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> None:
        if self.interval:
            beaten = self.first_stored or self._beat()
            self._thread = threading.Thread(target=self._run, args=(beaten,), name=f"heartbeat-{self.trial_id}",
                                            daemon=True)
            self._thread.start()

    def __exit__(self, kind: object, exc: BaseException | None, traceback: object) -> None:
        self._stop.set()
        # a force-quit does not wait for a beat that waits out a database outage: the thread is a daemon
        if self._thread is not None and not isinstance(exc, ForceQuit):
            self._thread.join()

    def _run(self, beaten: bool) -> None:
        assert self.interval
        while not self._stop.wait(self.interval if beaten else min(self.interval, RETRY_BEAT_S)):
            if self.stalled is not None and self.stalled():
                return
            beaten = self._beat()
            if beaten and self._ended():
                if self.on_ended is not None:
                    self.on_ended()
                return

    def _beat(self) -> bool:
        try:
            self.storage.record_heartbeat(self.trial_id)
        except Exception as err:  # noqa: BLE001 - logged; tried again soon
            log.warning("heartbeat of trial %d not recorded: %s", self.trial_id, first_line(err))
            return False
        return True

    def _ended(self) -> bool:
        try:
            return bool(self.storage.get_trial(self.trial_id).state != TrialState.RUNNING)
        except Exception:  # noqa: BLE001 - unknown: the next beat reads it again
            return False
