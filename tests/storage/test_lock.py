"""The study lock: a missing folder is named; a server lock held elsewhere is waited for up to a deadline,
and a PostgreSQL holder lost with its machine is noticed by TCP keepalive on both ends."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import require_server

from tuner.storage.lock import SlotLock
from tuner.storage.urls import StorageError


def test_the_study_lock_in_a_missing_folder_names_it(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"folder .*nope does not exist"):
        SlotLock(f"sqlite:///{tmp_path / 'nope' / 'x.db'}", "s")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_a_lock_held_by_another_worker_is_given_up_after_the_wait_then_taken_once_released(kind: str) -> None:
    url = require_server(kind)
    name = f"held-{uuid.uuid4().hex[:8]}"  # MySQL's lock names are the server's, shared by its databases
    holder, waiter = SlotLock(url, name), SlotLock(url, name, wait_s=0.5)
    outcome: list[tuple[str, float]] = []

    def take() -> None:
        started = time.monotonic()
        try:
            with waiter():
                outcome.append(("taken", time.monotonic() - started))
        except StorageError as err:
            outcome.append((str(err), time.monotonic() - started))

    with holder():
        attempt = threading.Thread(target=take, daemon=True)
        attempt.start()
        attempt.join(timeout=10)  # a wait without a deadline would still be waiting
        assert not attempt.is_alive(), "taking a held lock waited past its deadline"
    [(said, waited)] = outcome
    assert f"could not take the lock of study {name!r} in 0.5 s: another worker held it" in said
    assert waited >= 0.5
    started = time.monotonic()
    with waiter():  # released: taken at once
        assert time.monotonic() - started < 0.5


def test_the_postgresql_lock_connection_keeps_alive_on_both_ends() -> None:
    url = require_server("postgresql")
    lock = SlotLock(url, f"keepalive-{uuid.uuid4().hex[:8]}")
    with lock._engine.connect() as connection:
        server = {name: connection.exec_driver_sql(f"SHOW {name}").scalar() for name in (
            "tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "tcp_user_timeout")}
        client = socket.socket(fileno=socket.dup(connection.connection.dbapi_connection.fileno()))
    # read back from the server's socket
    assert server == {"tcp_keepalives_idle": "30", "tcp_keepalives_interval": "10", "tcp_keepalives_count": "3",
                      "tcp_user_timeout": "60000"}
    with client:
        assert client.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 10
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 60_000
