"""Waiting out database outages: which errors are transient, and calls retried through them.

An error counts as transient when the connection dropped, the server is restarting, or the database is
busy or locked (by message, SQLSTATE or MySQL error code, whatever the driver). Anything else (a failed
login, a missing database or table, bad SQL) fails at once, in one line: retrying cannot fix it.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from tuner._compat.optuna import CACHE_CALLS
from tuner.config.schema import outage_wait_s
from tuner.errors import first_line
from tuner.storage.urls import StorageError, mask, scrub

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRY_S = 120.0  # how long a worker waits out a database outage before giving up (without heartbeats)


def retry_deadline(heartbeat_interval: int | None, grace_period: int | None) -> float:
    """How long a worker with these heartbeat settings waits out a database outage: ``RETRY_S``, or less, so
    that a worker coming back does not take a live trial for a dead one
    (:func:`tuner.config.schema.outage_wait_s`)."""
    wait = outage_wait_s(heartbeat_interval, grace_period)
    return RETRY_S if wait is None else min(RETRY_S, wait)


# What a lost connection, a restarting server or a busy database says, whatever the driver. Anything
# else (a failed login, a missing database or table, bad SQL) fails at once: retrying cannot fix it.
_TRANSIENT_MESSAGES = (
    "server closed the connection", "connection refused", "could not connect", "connection reset",
    "connection timed out", "timeout expired", "broken pipe", "lost connection", "gone away",
    "terminating connection", "the database system is starting up", "the database system is shutting down",
    "the database system is in recovery mode", "connection is closed", "connection already closed",
    "consuming input failed", "ssl syscall error", "no route to host", "database is locked",
    "database table is locked", "database is busy", "too many connections", "deadlock", "lock wait timeout",
    "server has gone away", "can't connect",
)
# SQLSTATE classes and codes of the same (PostgreSQL: 08 connection exceptions, 57P0x shutdown and
# start-up, 40001/40P01 serialisation failure and deadlock, 53300 too many connections)
_TRANSIENT_SQLSTATES = ("08", "57P01", "57P02", "57P03", "40001", "40P01", "53300", "55P03")
# MySQL and MariaDB error numbers: 1040 too many connections, 1053 server shutdown, 1205 lock wait
# timeout, 1213 deadlock, 1927 connection killed, 2002/2003 cannot connect, 2006 gone away, 2013 lost
_TRANSIENT_MYSQL_CODES = (1040, 1053, 1205, 1213, 1927, 2002, 2003, 2006, 2013, 2055)


class TransientError(StorageError):
    """A failure that waiting may fix, raised by a storage client that is not a database driver (the
    gRPC proxy's, while the proxy is down or restarting): :func:`retrying` retries it."""


def _transient(err: BaseException) -> bool:
    """Whether ``err`` (or what it wraps) is a lost connection, a server restart or a locked database."""
    from sqlalchemy import exc

    for seen in _chain(err):
        if isinstance(seen, TransientError):
            return True
        if isinstance(seen, exc.DBAPIError) and seen.connection_invalidated:
            return True
        if _transient_driver_error(seen):
            return True
    return False


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and what it wraps: its cause or context, and a SQLAlchemy error's driver error (``orig``)."""
    chain: list[BaseException] = []
    seen: BaseException | None = err
    while seen is not None and seen not in chain:
        chain.append(seen)
        orig = getattr(seen, "orig", None)
        seen = orig if isinstance(orig, BaseException) and orig not in chain else seen.__cause__ or seen.__context__
    return chain


def _transient_driver_error(err: BaseException) -> bool:
    """Whether a driver's own exception (psycopg, pymysql, sqlite3) says the connection or lock failed."""
    kinds = {kind.__name__ for kind in type(err).__mro__}  # psycopg's AdminShutdown is an OperationalError
    if not kinds & {"OperationalError", "InterfaceError", "DatabaseError", "InternalError"}:
        return False
    if type(err).__module__.startswith("sqlalchemy"):
        return False  # its driver's exception is in the chain, and says more
    sqlstate = getattr(err, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        return sqlstate in _TRANSIENT_SQLSTATES or sqlstate[:2] in _TRANSIENT_SQLSTATES
    code = err.args[0] if err.args else None
    if isinstance(code, int) and code:
        return code in _TRANSIENT_MYSQL_CODES
    if type(err).__name__ == "InterfaceError" and type(err).__module__.startswith("pymysql"):
        return True  # pymysql's "(0, '')": the socket is gone
    text = str(err).lower()
    return any(message in text for message in _TRANSIENT_MESSAGES)


def _permanent(err: BaseException, what: str, url: str) -> StorageError:
    """A database error that retrying cannot fix, as one line naming the storage and the call."""
    root = _chain(err)[-1]
    first = first_line(root, type(root).__name__)
    return StorageError(f"storage {mask(url)}: {what} failed: {scrub(first, url)}")


def retrying(call: Callable[..., T], what: str, url: str, deadline_s: float = RETRY_S) -> Callable[..., T]:
    """``call``, retried with exponential backoff while it fails transiently, for up to ``deadline_s``."""

    @functools.wraps(call)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        started, delay = time.monotonic(), 0.1
        while True:
            try:
                return call(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - re-raised unless transient
                if not _transient(err):
                    if _is_database_error(err):
                        raise _permanent(err, what, url) from None
                    raise
                if time.monotonic() - started + delay > deadline_s:
                    raise
                reason = scrub(first_line(getattr(err, "orig", None) or err.__cause__ or err), url)
                log.warning("storage %s: %s failed (%s); retrying in %.1f s", mask(url), what, reason, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    return wrapper


# The storage calls retried blindly through an outage: reads, and writes whose repeat writes the same row
# again (attributes, parameters, intermediate values, heartbeats). The writes that create or move a trial
# recognise their own earlier attempt instead, and retry themselves (tuner.storage.rdb, tuner.storage.proxy).
RETRIED = frozenset((
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr", "get_study_id_from_name",
    "get_study_name_from_id", "get_study_directions", "get_study_user_attrs", "get_study_system_attrs",
    "get_all_studies", "set_trial_param", "get_trial_id_from_study_id_trial_number",
    "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr", "get_trial", "get_all_trials",
    "get_n_trials", "get_best_trial", "record_heartbeat", "stale_trial_ids", "database_time", *CACHE_CALLS,
))
_outermost = threading.local()  # the deadline of the retried storage call in progress on this thread


class RetriedCalls:
    """A storage whose calls wait out outages: each method named in :data:`RETRIED`, and each call a method
    passes to :meth:`retried`, is retried through transient failures (:func:`retrying`) for ``retry_s``.

    A call made inside another on the same thread (Optuna's base methods call the storage's own) keeps the
    outermost one's deadline, which :meth:`time_left` tells: a client of the storage proxy gives up an
    attempt that hangs there.
    """

    url: str
    retry_s: float

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if name in RETRIED:
            return RetriedCalls.retried(self, value, name)
        return value

    def retried(self, call: Callable[..., T], what: str) -> Callable[..., T]:
        """``call``, retried through outages until ``retry_s`` has passed since the outermost call began."""
        retried = retrying(call, what, self.url, self.retry_s)

        def wrapper(*args: Any, **kwargs: Any) -> T:
            if getattr(_outermost, "deadline", None) is not None:  # inside another retried call: its deadline holds
                return retried(*args, **kwargs)
            _outermost.deadline = time.monotonic() + self.retry_s
            try:
                return retried(*args, **kwargs)
            finally:
                _outermost.deadline = None

        return wrapper

    def time_left(self) -> float | None:
        """The seconds left to the retried call in progress on this thread, or ``None`` outside one."""
        deadline = getattr(_outermost, "deadline", None)
        return None if deadline is None else deadline - time.monotonic()


# What a driver says when the server could not be reached at all: nothing listens there, or the host
# is unknown. At start-up that is more often a wrong URL than an outage.
_REFUSED_MESSAGES = ("connection refused", "could not connect", "can't connect", "no route to host",
                     "name or service not known", "could not translate host name", "unknown mysql server host")


def _refused(err: BaseException) -> bool:
    for seen in _chain(err):
        code = seen.args[0] if seen.args else None
        if isinstance(code, int) and code in (2002, 2003, 2005):
            return True
        if any(message in str(seen).lower() for message in _REFUSED_MESSAGES):
            return True
    return False


def opening(call: Callable[[], T], url: str, deadline_s: float = RETRY_S) -> T:
    """``call``, which opens a first connection: retried like :func:`retrying` while a connection drops
    under it (a session killed, a server restarting), but given up at once when the server cannot be
    reached at all, so that a wrong host or port fails in a second rather than minutes. Errors are
    raised as they are, for the caller to explain."""
    started, delay = time.monotonic(), 0.1
    while True:
        try:
            return call()
        except Exception as err:  # noqa: BLE001 - Optuna wraps a failed commit in StorageInternalError
            if not _transient(err) or _refused(err) or time.monotonic() - started + delay > deadline_s:
                raise
            reason = scrub(first_line(_chain(err)[-1]), url)
            log.warning("storage %s: opening failed (%s); retrying in %.1f s", mask(url), reason, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _is_database_error(err: BaseException) -> bool:
    """Whether ``err`` is, or wraps, an error the database or its driver raised (not an Optuna rule such
    as a finished trial, nor integrity errors, which Optuna handles itself)."""
    from sqlalchemy import exc

    return any(isinstance(seen, exc.DBAPIError) and not isinstance(seen, exc.IntegrityError) for seen in _chain(err))


def stored_as(trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> bool:
    """Whether ``trial`` is stored with ``state`` and ``values``: what a repeated final write, refused
    because the trial is finished, checks to tell its own lost commit from another worker's."""
    return trial.state == state and (values is None or list(trial.values or []) == list(values))


def final_write(write: Callable[[], Any], read: Callable[[], FrozenTrial], state: TrialState,
                values: Sequence[float] | None, url: str, trial_id: int) -> Callable[[], bool]:
    """One attempt, for :func:`retrying`, of storing a trial's final ``state``: ``write`` does it, and a
    repeat that ``write`` refuses because the trial is finished succeeds if ``read`` finds it stored so,
    by an earlier attempt whose reply was lost. A first attempt refused is another worker's doing."""
    attempts = 0

    def attempt() -> bool:
        nonlocal attempts
        attempts += 1
        try:
            return bool(write())
        except UpdateFinishedTrialError:
            if attempts > 1 and stored_as(read(), state, values):
                log.info("storage %s: trial %d was already stored %s by an attempt whose reply was lost",
                         mask(url), trial_id, state.name)
                return True
            raise

    return attempt
