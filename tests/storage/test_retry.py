"""Waiting out outages: transient errors retried, the others failing at once in one line."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import optuna
import psycopg
import pymysql
import pytest
import sqlalchemy

from tuner.storage import retry
from tuner.storage.lock import SlotLock
from tuner.storage.rdb import open_storage
from tuner.storage.retry import RETRY_S, opening, retrying
from tuner.storage.urls import StorageError


def test_storage_calls_are_retried_through_transient_errors(caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            lost = psycopg.OperationalError("server closed the connection unexpectedly")
            raise sqlalchemy.exc.OperationalError("SELECT 1", {}, lost)
        return "ok"

    assert retrying(flaky, "query", "postgresql://u:hunter2@db/x")() == "ok" and len(calls) == 3
    assert "retrying" in caplog.text and "hunter2" not in caplog.text

    def broken() -> None:
        raise ValueError("not transient")

    with pytest.raises(ValueError):
        retrying(broken, "query", "sqlite:///x.db")()


class _Clock:
    """``time`` for :func:`retrying`: its sleeps pass at once, and are counted."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _outage(*args: object) -> None:
    raise sqlalchemy.exc.OperationalError("SELECT 1", {}, psycopg.OperationalError("server closed the connection"))


@pytest.mark.parametrize(("interval", "grace", "deadline"),
                         [(None, None, RETRY_S), (30, 120, 60), (1, 3, 1), (10, 1000, RETRY_S)])
def test_a_worker_gives_up_an_outage_before_a_live_trial_could_look_stale(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interval: int | None, grace: int | None,
        deadline: float) -> None:
    # Waiting as long as the grace period, a worker coming back could find another worker's live trial
    # with a heartbeat older than it, and fail it. The storage and the study lock give up sooner.
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = open_storage(url, heartbeat_interval=interval, grace_period=grace)
    clock = _Clock()
    monkeypatch.setattr(retry, "time", clock)
    monkeypatch.setattr(optuna.storages.RDBStorage, "record_heartbeat", _outage)
    with pytest.raises(sqlalchemy.exc.OperationalError):
        storage.record_heartbeat(1)
    assert deadline - 5 < clock.now <= deadline  # backoff waits are 5 s at most
    assert retry.retry_deadline(interval, grace) == deadline

    lock = SlotLock("postgresql+psycopg://tuner@localhost/none", "s", retry_s=retry.retry_deadline(interval, grace))
    monkeypatch.setattr(lock, "_acquire", _outage)
    clock.now = 0.0
    with pytest.raises(sqlalchemy.exc.OperationalError), lock():
        pass
    assert deadline - 5 < clock.now <= deadline


@pytest.mark.parametrize("driver_error", [
    psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly"),
    psycopg.OperationalError("connection failed: connection to server at \"127.0.0.1\", port 5432 failed: "
                             "Connection refused"),
    pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query"),
    pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock; try restarting transaction"),
    pymysql.err.InterfaceError(0, ""),
    sqlite3.OperationalError("database is locked"),
], ids=["pg-closed", "pg-refused", "mysql-lost", "mysql-deadlock", "mysql-socket-gone", "sqlite-locked"])
def test_lost_connections_restarts_and_locks_are_waited_out(driver_error: Exception) -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 2:
            raise sqlalchemy.exc.OperationalError("SELECT 1", {}, driver_error)
        return "ok"

    assert retrying(flaky, "query", "postgresql://u:pw@db/x", deadline_s=5)() == "ok" and len(calls) == 2


@pytest.mark.parametrize(("driver_error", "said"), [
    (psycopg.OperationalError('connection failed: FATAL:  password authentication failed for user "u"'),
     "password authentication failed"),
    (psycopg.errors.UndefinedTable('relation "trials" does not exist'), 'relation "trials" does not exist'),
    (pymysql.err.OperationalError(1045, "Access denied for user 'u'@'localhost' (using password: YES)"),
     "Access denied"),
    (pymysql.err.OperationalError(1049, "Unknown database 'x'"), "Unknown database"),
    (sqlite3.OperationalError("no such table: trials"), "no such table: trials"),
], ids=["pg-password", "pg-no-table", "mysql-access", "mysql-no-database", "sqlite-no-table"])
def test_errors_that_retrying_cannot_fix_fail_at_once_in_one_line(driver_error: Exception, said: str) -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise sqlalchemy.exc.OperationalError("SELECT 1", {}, driver_error)

    started = time.monotonic()
    with pytest.raises(StorageError) as raised:
        retrying(broken, "get_all_studies", "postgresql://u:hunter2@db/x", deadline_s=3)()
    assert len(calls) == 1 and time.monotonic() - started < 1
    message = str(raised.value)
    assert "\n" not in message and said in message and "get_all_studies" in message and "hunter2" not in message


def test_opening_waits_out_a_dropped_session_but_not_a_server_it_cannot_reach() -> None:
    # a worker starting while sessions are killed (a restart, an administrator) waits; a wrong host or
    # port fails at once
    calls = []

    def killed_once() -> str:
        calls.append(1)
        if len(calls) == 1:
            shutdown = psycopg.errors.AdminShutdown("terminating connection due to administrator command")
            raise sqlalchemy.exc.OperationalError("SELECT 1", {}, shutdown)
        return "open"

    assert opening(killed_once, "postgresql://u:pw@db/x", deadline_s=5) == "open" and len(calls) == 2

    def refused() -> None:
        calls.append(1)
        raise sqlalchemy.exc.OperationalError("SELECT 1", {}, psycopg.OperationalError(
            'connection failed: connection to server at "127.0.0.1", port 1 failed: Connection refused'))

    calls.clear()
    started = time.monotonic()
    with pytest.raises(sqlalchemy.exc.OperationalError):
        opening(refused, "postgresql://u:pw@db/x", deadline_s=5)
    assert calls == [1] and time.monotonic() - started < 1
