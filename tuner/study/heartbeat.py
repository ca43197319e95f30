"""A running trial's heartbeat: a thread that records it every ``heartbeat_interval`` seconds."""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)


class Heartbeat:
    """Records a trial's heartbeat every ``interval`` seconds in a thread while the trial runs.

    A failed write (the database restarting) is logged and tried again at the next beat: the thread
    must outlive outages, or a live trial would look dead to the other workers.
    """

    def __init__(self, storage: Any, trial_id: int, interval: int | None) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> None:
        if self.interval:
            self._beat()
            self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.trial_id}", daemon=True)
            self._thread.start()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        assert self.interval
        while not self._stop.wait(self.interval):
            self._beat()

    def _beat(self) -> None:
        try:
            self.storage.record_heartbeat(self.trial_id)
        except Exception as err:  # noqa: BLE001 - logged; the next beat tries again
            log.warning("heartbeat of trial %d not recorded: %s", self.trial_id, str(err).splitlines()[0])
