"""The study lock: one worker at a time decides "is there budget left? then start a trial".

:class:`SlotLock` serialises that step across every worker on every machine, so a study never runs
more trials than its budget: a PostgreSQL advisory lock, a MySQL ``GET_LOCK``, or a lock file beside
a SQLite database.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from tuner.storage.retry import RETRY_S, opening, retrying
from tuner.storage.sqlite import check_writable, sqlite_path
from tuner.storage.urls import StorageError, is_proxy, mask, missing_driver, parse_url, unknown_dialect, unreachable

log = logging.getLogger(__name__)

T = TypeVar("T")
LOCK_KEEP_S = 5.0  # a SlotLock taken again within this many seconds keeps its server connection
LOCK_WAIT_S = RETRY_S  # how long taking a server lock waits for another worker to release it
# TCP keepalive of a PostgreSQL lock connection, on both ends: a holder whose machine is lost keeps its
# session, and the lock, until the server notices, after the operating system's two hours by default;
# with these, within idle + interval * count = 60 s, well inside LOCK_WAIT_S. Keepalive probes wait
# while sent data is unacknowledged (retransmitted for some 15 min): the user timeout bounds that too.
_KEEPALIVE_IDLE_S, _KEEPALIVE_INTERVAL_S, _KEEPALIVE_COUNT = 30, 10, 3
_USER_TIMEOUT_MS = 60_000
_LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE for a lock_timeout reached


class SlotLock:
    """A lock shared by every worker of one study, on any machine that reaches its storage.

    PostgreSQL and MySQL hold it on the server (an advisory lock, ``GET_LOCK``), so it is released
    when a holder's connection dies (on PostgreSQL within a minute of its machine being lost, by TCP
    keepalive), and taking it fails after ``wait_s`` while another worker holds it; SQLite, which only
    local workers share, uses ``flock`` on a file next to the database. Through the storage proxy
    (``grpc://``) there is none: a worker there holds no database session, and admission by trial number
    keeps the budget exact without the lock (:func:`tuner.study.loop._admitted`). Hold it only for a
    few queries. A server lock taken again within ``LOCK_KEEP_S`` of its last use keeps its connection
    open for the next; one used less often (a worker on long trials, a one-off lock) closes it, so it
    holds no idle connection on the server.
    """

    def __init__(self, url: str, study_name: str, retry_s: float = RETRY_S, wait_s: float = LOCK_WAIT_S) -> None:
        """``retry_s``: how long taking the lock waits out a database outage (see
        :func:`tuner.storage.retry.retry_deadline`); ``wait_s``: how long it waits for another worker
        to release a server lock before it fails with a :class:`StorageError`."""
        from sqlalchemy.exc import NoSuchModuleError

        self.url = url
        self.study_name = study_name
        self.retry_s = retry_s
        self.wait_s = max(0.0, wait_s)
        parsed = parse_url(url)
        self.backend = parsed.get_backend_name()
        digest = hashlib.sha256(f"tuner:{study_name}".encode()).digest()
        self._key = int.from_bytes(digest[:8], "big", signed=True)
        self._name = f"tuner:{digest.hex()[:40]}"
        self._thread_lock = threading.Lock()
        self._last_use = -math.inf
        self._engine: Any = None
        self._path: Path | None = None
        if is_proxy(url):
            pass  # no lock: see the class docstring
        elif self.backend == "sqlite":
            database = sqlite_path(url)
            if database is not None:
                check_writable(url, database)
                self._path = database.with_name(database.name + ".lock")
        elif self.backend in ("postgresql", "mysql", "mariadb"):
            import sqlalchemy

            try:
                # a connection kept between frequent uses: a new one for every trial made taking the lock
                # cost 5 ms instead of 0.7 on local PostgreSQL; pre-ping replaces one the server dropped
                self._engine = sqlalchemy.create_engine(url, pool_size=1, max_overflow=0, pool_pre_ping=True,
                                                        connect_args=_client_keepalives(parsed))
                if self.backend == "postgresql":
                    lock_timeout_ms = max(1, math.ceil(self.wait_s * 1000))
                    sqlalchemy.event.listen(self._engine, "connect",
                                            functools.partial(_server_settings, lock_timeout_ms=lock_timeout_ms))
                # closed with this object, not whenever the garbage collector reaches the engine's cycles
                weakref.finalize(self, self._engine.dispose)
            except ImportError as err:
                raise missing_driver(url, err) from None
            except NoSuchModuleError:
                raise unknown_dialect(url, parsed.drivername) from None

    @contextlib.contextmanager
    def __call__(self, retry: bool = True) -> Iterator[None]:
        """Hold the lock; ``retry=False`` fails at once, with a clear error, when the server cannot be
        reached at all (see :func:`tuner.storage.retry.opening`)."""
        with self._thread_lock:
            if self._engine is not None:
                keep = time.monotonic() - self._last_use < LOCK_KEEP_S
                acquire = retrying(self._acquire, "lock", self.url, self.retry_s) if retry else self._first
                connection, release = acquire()
                try:
                    yield
                finally:
                    try:
                        connection.execute(*release)
                        connection.commit()
                    except Exception:  # noqa: BLE001 - closing the session releases the lock, if it holds it
                        with contextlib.suppress(Exception):
                            connection.invalidate()  # never back to the pool while it may hold the lock
                    with contextlib.suppress(Exception):
                        connection.close()
                        if not keep:
                            self._engine.dispose()
                    self._last_use = time.monotonic()
            elif self._path is not None:
                import fcntl

                with open(self._path, "a+b") as handle:
                    fcntl.flock(handle, fcntl.LOCK_EX)
                    try:
                        yield
                    finally:
                        fcntl.flock(handle, fcntl.LOCK_UN)
            else:  # an in-memory database, which only this process can see, or the storage proxy
                yield

    def _first(self) -> tuple[Any, tuple[Any, dict[str, Any]]]:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return opening(self._acquire, self.url, self.retry_s)
        except SQLAlchemyError as err:
            raise unreachable(err, self.url) from None

    def _acquire(self) -> tuple[Any, tuple[Any, dict[str, Any]]]:
        import sqlalchemy

        connection = self._engine.connect()
        try:
            if self.backend == "postgresql":
                # pg_advisory_lock alone would wait for ever, and a SIGTERM's handling with it; under the
                # session's lock_timeout (_server_settings) it gives up at the deadline, and waiters still
                # queue and wake as the lock is freed (polling pg_try_advisory_lock halved the throughput of
                # trivial trials at 4 workers)
                try:
                    connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": self._key})
                except sqlalchemy.exc.OperationalError as err:
                    code = getattr(err.orig, "sqlstate", None) or getattr(err.orig, "pgcode", None)
                    if code != _LOCK_NOT_AVAILABLE:
                        raise
                    timed_out = True
                else:
                    timed_out = False
                if timed_out:  # raised outside the driver's error, which the retries would take for an outage
                    raise self._timed_out()
                return connection, (sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
            # MySQL counts whole seconds, and waits for ever on a negative count
            got = connection.execute(sqlalchemy.text("SELECT GET_LOCK(:name, :wait)"),
                                     {"name": self._name, "wait": math.ceil(self.wait_s)}).scalar()
            if got != 1:
                raise self._timed_out()
            return connection, (sqlalchemy.text("SELECT RELEASE_LOCK(:name)"), {"name": self._name})
        except BaseException:
            with contextlib.suppress(Exception):
                connection.invalidate()  # an interrupted wait may yet be granted the lock: drop the session
            connection.close()
            raise

    def _timed_out(self) -> StorageError:
        return StorageError(
            f"storage {mask(self.url)}: could not take the lock of study {self.study_name!r} in {self.wait_s:g} s: "
            "another worker held it all that time (a worker whose machine was lost holds it until the "
            "database server drops its connection)")


def _client_keepalives(parsed: Any) -> dict[str, Any]:
    """libpq's keepalive settings for a PostgreSQL lock connection through psycopg, unless the URL sets its own."""
    if parsed.get_backend_name() != "postgresql" or parsed.get_driver_name() not in ("psycopg", "psycopg2"):
        return {}
    settings = {"keepalives": 1, "keepalives_idle": _KEEPALIVE_IDLE_S, "keepalives_interval": _KEEPALIVE_INTERVAL_S,
                "keepalives_count": _KEEPALIVE_COUNT, "tcp_user_timeout": _USER_TIMEOUT_MS}
    return {key: value for key, value in settings.items() if key not in parsed.query}


def _server_settings(dbapi_connection: Any, record: Any, lock_timeout_ms: int) -> None:
    """The lock session's settings, set once per connection: how long taking the lock waits, and the
    server's keepalive settings (the server's end is the one that must notice a lost holder, to free its
    lock; they apply to TCP connections only, not a Unix socket; ``tcp_user_timeout`` needs PostgreSQL 12
    or later)."""
    cursor = dbapi_connection.cursor()
    try:
        settings = {"lock_timeout": lock_timeout_ms, "tcp_keepalives_idle": _KEEPALIVE_IDLE_S,
                    "tcp_keepalives_interval": _KEEPALIVE_INTERVAL_S, "tcp_keepalives_count": _KEEPALIVE_COUNT,
                    "tcp_user_timeout": _USER_TIMEOUT_MS}
        for name, value in settings.items():
            cursor.execute(f"SET {name} = {int(value)}")
    finally:
        cursor.close()
    dbapi_connection.commit()  # a session's SET in a transaction rolled back would be undone
