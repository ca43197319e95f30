"""Opening a study's storage for a worker: Optuna's RDB storage, made to outlive database hiccups.

PostgreSQL and MySQL URLs are used as given, with ``pool_pre_ping`` so a connection the server dropped
during a long trial is replaced rather than failing the next query. Every storage call that fails
because the connection dropped, the server restarted or SQLite stayed locked is retried with backoff
for up to ``RETRY_S`` seconds, less with heartbeats (:func:`retry_deadline`; :class:`ResilientRDBStorage`),
and a trial is created once however often its creation is retried.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from tuner.config.schema import outage_wait_s
from tuner.keys import CLAIM_ATTR, REQUEST_ATTR, TOKEN_ATTR
from tuner.storage.sqlite import engine_kwargs, existing_sqlite, prepare_sqlite
from tuner.storage.urls import (
    StorageError,
    is_proxy,
    mask,
    missing_driver,
    parse_url,
    scrub,
    unknown_dialect,
    unreachable,
)

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
    first = (str(root).strip().splitlines() or [type(root).__name__])[0]
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
                reason = scrub(str(getattr(err, "orig", None) or err.__cause__ or err).strip().splitlines()[0], url)
                log.warning("storage %s: %s failed (%s); retrying in %.1f s", mask(url), what, reason, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    return wrapper


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
            reason = scrub(str(_chain(err)[-1]).strip().splitlines()[0], url)
            log.warning("storage %s: opening failed (%s); retrying in %.1f s", mask(url), reason, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _is_database_error(err: BaseException) -> bool:
    """Whether ``err`` is, or wraps, an error the database or its driver raised (not an Optuna rule such
    as a finished trial, nor integrity errors, which Optuna handles itself)."""
    from sqlalchemy import exc

    return any(isinstance(seen, exc.DBAPIError) and not isinstance(seen, exc.IntegrityError) for seen in _chain(err))


class ResilientRDBStorage(RDBStorage):
    """Optuna's ``RDBStorage`` whose calls are retried through database outages (see :func:`retrying`).

    Optuna turns a dropped connection into ``StorageInternalError`` and the trial's result is lost;
    here the call waits for the database to come back. A retried write may have been committed already,
    its reply lost with the connection, so only writes whose repeat is harmless are repeated blindly:
    attributes, parameters, intermediate values and heartbeats, which write the same row again.
    Every write that creates or moves a trial is made to recognise its own earlier attempt:

    - Creating a trial: a repeat would make a second trial, which holds a slot of the budget for ever.
      Each creating call carries a token, a system attribute (``TOKEN_ATTR``) written in the same
      transaction as the trial, and every attempt after its first looks for the trial carrying it
      before making one (:meth:`_get_prepared_new_trial`). That covers this class's retries and
      Optuna's own, which ``_create_new_trial`` makes after a failed commit.
    - Taking up a queued trial (WAITING to RUNNING): a repeat finds it RUNNING and says no, and the
      trial would be orphaned. The claim carries a token too (``CLAIM_ATTR``), and a repeat that
      finds its own token says yes (:meth:`claim`).
    - Finishing a trial: a repeat finds it finished (``UpdateFinishedTrialError``). A repeat that
      finds the state and values it was asked to store says yes.

    A trial created or taken up RUNNING gets its first heartbeat in the same transaction, so a worker
    that dies before its heartbeat thread starts leaves a trial that the stale check ends.
    """

    _RETRIED = (
        "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr", "get_study_id_from_name",
        "get_study_name_from_id", "get_study_directions", "get_study_user_attrs", "get_study_system_attrs",
        "get_all_studies", "set_trial_param", "get_trial_id_from_study_id_trial_number",
        "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
        "get_trial", "get_all_trials", "get_n_trials", "get_best_trial", "record_heartbeat", "_get_stale_trial_ids",
        # what Optuna's caching layer calls on the storage beneath it
        "_get_trials", "_set_trial_param", "_get_best_trial_id",
        # create_new_trial, _create_new_trial and set_trial_state_values retry themselves (see the class)
    )

    def __init__(self, *args: Any, retry_s: float = RETRY_S, **kwargs: Any) -> None:
        self.retry_s = retry_s  # how long a call waits out an outage (retry_deadline)
        self._creating: dict[str, _Creation] = {}  # the creations in progress, by token
        super().__init__(*args, **kwargs)

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if name in ResilientRDBStorage._RETRIED:
            return retrying(value, name, super().__getattribute__("url"), super().__getattribute__("retry_s"))
        return value

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return self._create_new_trial(study_id, template_trial)._trial_id

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        """Optuna's, retried, and creating one trial however many attempts it takes (see the class).

        A template may name the creation itself (``REQUEST_ATTR``: a token, and whether an earlier
        attempt may have committed it): a client of the gRPC proxy, whose attempts reach this process
        as separate calls, or a creation that must happen once per study (the baseline)."""
        request = _request(template_trial)
        call = uuid.uuid4().hex  # this call's entry in _creating (callers may share a requested token)
        plain = _without_token(template_trial)
        self._creating[call] = _Creation(plain, str(request.get("token") or call), bool(request.get("lookup")))
        try:
            # the template carries the call to _get_prepared_new_trial, and into the trial returned
            template = _with_token(plain, call)
            return retrying(super()._create_new_trial, "_create_new_trial", self.url, self.retry_s)(study_id, template)
        finally:
            del self._creating[call]

    def _get_prepared_new_trial(self, study_id: int, template_trial: FrozenTrial | None, session: Any) -> Any:
        """The new trial's row, in the session that holds the study's row lock; on an attempt after the
        first, the row an earlier attempt committed, if one did."""
        from optuna.storages._rdb import models

        call: str = template_trial.system_attrs.get(TOKEN_ATTR, "") if template_trial is not None else ""
        creation = self._creating.get(call)
        if creation is None:  # not a creation through _create_new_trial
            return super()._get_prepared_new_trial(study_id, template_trial, session)
        if creation.tried:
            found = _trial_with_token(session, study_id, creation.token)
            if found is not None:
                log.info("storage %s: trial %d was created by an attempt whose reply was lost, or by its first "
                         "request; not created again", mask(self.url), found.number)
                return found
        creation.tried = True
        # Optuna makes the trial from the caller's template (without one: RUNNING, started now), and the
        # token goes in with one INSERT: through the template, Optuna would read the trial again and upsert
        trial = super()._get_prepared_new_trial(study_id, creation.template, session)
        session.add(models.TrialSystemAttributeModel(trial_id=trial.trial_id, key=TOKEN_ATTR,
                                                     value_json=json.dumps(creation.token)))
        if trial.state == TrialState.RUNNING:
            self._first_heartbeat(session, int(trial.trial_id))
        return trial

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
                               ) -> bool:
        """Optuna's, retried; a repeat recognises its own earlier commit (see the class)."""
        if state == TrialState.RUNNING:
            return self.claim(trial_id)
        attempts = 0

        def attempt() -> bool:
            nonlocal attempts
            attempts += 1
            try:
                return RDBStorage.set_trial_state_values(self, trial_id, state, values)
            except UpdateFinishedTrialError:
                if attempts > 1 and stored_as(RDBStorage.get_trial(self, trial_id), state, values):
                    log.info("storage %s: trial %d was already stored %s by an attempt whose reply was lost",
                             mask(self.url), trial_id, state.name)
                    return True
                raise

        return retrying(attempt, "set_trial_state_values", self.url, self.retry_s)()

    def stale_trial_ids(self, study_id: int, grace_period: int) -> list[int]:
        """The study's RUNNING trials whose heartbeat is older than ``grace_period`` seconds (the gRPC
        proxy serves studies with different settings: each worker gives its own)."""
        # Optuna's query reads only these three settings; it is private, and takes them from the storage
        view = _StaleView(self.scoped_session, self.heartbeat_interval or grace_period, grace_period)
        return retrying(RDBStorage._get_stale_trial_ids, "_get_stale_trial_ids", self.url,
                        self.retry_s)(view, study_id)

    def claim(self, trial_id: int, token: str | None = None) -> bool:
        """Take up the queued trial ``trial_id`` (WAITING to RUNNING); ``False`` when another worker did.

        ``token`` names the claim (a fresh one without it); a client of the gRPC proxy gives its own, so
        that its repeat through a restarted proxy recognises the claim an earlier attempt committed."""
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        token = token or uuid.uuid4().hex

        def attempt() -> bool:
            with _create_scoped_session(self.scoped_session) as session:
                trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
                claim = models.TrialSystemAttributeModel.find_by_trial_and_key(trial, CLAIM_ATTR, session)
                if trial.state == TrialState.RUNNING:
                    # a token names one claim call: finding it, an earlier attempt of this call committed
                    if claim is not None and json.loads(str(claim.value_json)) == token:
                        log.info("storage %s: trial %d was taken up by an attempt whose reply was lost",
                                 mask(self.url), trial.number)
                        return True
                self.check_trial_is_updatable(trial_id, trial.state)  # type: ignore[arg-type]
                if trial.state != TrialState.WAITING:
                    return False
                trial.state = TrialState.RUNNING
                trial.datetime_start = datetime.now()
                if claim is None:
                    session.add(models.TrialSystemAttributeModel(trial_id=trial_id, key=CLAIM_ATTR,
                                                                 value_json=json.dumps(token)))
                else:  # a trial queued through the storage API by hand, from a copy of a claimed one
                    claim.value_json = json.dumps(token)
                self._first_heartbeat(session, trial_id)
            return True

        return retrying(attempt, "set_trial_state_values", self.url, self.retry_s)()

    def _first_heartbeat(self, session: Any, trial_id: int) -> None:
        """A RUNNING trial's first heartbeat, in the transaction that makes it RUNNING (with heartbeats on)."""
        from optuna.storages._rdb import models

        if self.heartbeat_interval:
            session.add(models.TrialHeartbeatModel(trial_id=trial_id))


def stored_as(trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> bool:
    """Whether ``trial`` is stored with ``state`` and ``values``: what a repeated final write, refused
    because the trial is finished, checks to tell its own lost commit from another worker's."""
    return trial.state == state and (values is None or list(trial.values or []) == list(values))


@dataclass
class _StaleView:
    """What Optuna's stale-trial query reads from its storage (:meth:`ResilientRDBStorage.stale_trial_ids`)."""

    scoped_session: Any
    heartbeat_interval: int
    grace_period: int


@dataclass
class _Creation:
    """A trial creation in progress (:meth:`ResilientRDBStorage._create_new_trial`)."""

    template: FrozenTrial | None  # the caller's, without a token
    token: str  # stored with the trial (TOKEN_ATTR)
    tried: bool = False  # an attempt got as far as storing the trial, and may have committed


def _request(template: FrozenTrial | None) -> dict[str, Any]:
    """The creation a template names (``REQUEST_ATTR``: ``token``, ``lookup``), or ``{}``."""
    value = template.system_attrs.get(REQUEST_ATTR) if template is not None else None
    return value if isinstance(value, dict) else {}


def request_template(template: FrozenTrial | None, token: str, lookup: bool) -> FrozenTrial:
    """``template`` naming its creation by ``token`` (see :meth:`ResilientRDBStorage._create_new_trial`);
    with ``lookup``, a trial the study already holds with that token is returned instead of a new one."""
    return _with_attr(_without_token(template), REQUEST_ATTR, {"token": token, "lookup": lookup})


def _without_token(template: FrozenTrial | None) -> FrozenTrial | None:
    """``template`` without creation or claim tokens. A retry queued by ``RetryHeartbeatStaleTrialCallback``
    copies the failed trial's system attributes, its tokens among them."""
    if template is None or not {TOKEN_ATTR, CLAIM_ATTR, REQUEST_ATTR} & template.system_attrs.keys():
        return template
    plain = copy.copy(template)
    plain.system_attrs = {key: value for key, value in template.system_attrs.items()
                          if key not in (TOKEN_ATTR, CLAIM_ATTR, REQUEST_ATTR)}
    return plain


def _with_token(template: FrozenTrial | None, token: str) -> FrozenTrial:
    """A copy of ``template`` carrying ``token``; without a template, of the trial Optuna makes without one
    (RUNNING: its number and start are set when it is stored)."""
    return _with_attr(template, TOKEN_ATTR, token)


def _with_attr(template: FrozenTrial | None, key: str, value: Any) -> FrozenTrial:
    """A copy of ``template`` with the system attribute ``key``; without a template, of the trial Optuna
    makes without one (RUNNING: its number and start are set when it is stored)."""
    if template is None:
        template = FrozenTrial(number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.now(),
                               datetime_complete=None, params={}, distributions={}, user_attrs={}, system_attrs={},
                               intermediate_values={}, trial_id=-1)
    else:
        template = copy.copy(template)
    template.system_attrs = {**template.system_attrs, key: value}
    return template


def _trial_with_token(session: Any, study_id: int, token: str) -> Any:
    """The trial row of study ``study_id`` whose creation carried ``token``, or ``None``."""
    from optuna.storages._rdb import models

    attr = models.TrialSystemAttributeModel
    return (session.query(models.TrialModel)
            .join(attr, attr.trial_id == models.TrialModel.trial_id)
            .filter(models.TrialModel.study_id == study_id, attr.key == TOKEN_ATTR,
                    attr.value_json == json.dumps(token))
            .order_by(models.TrialModel.trial_id)
            .first())


def open_storage(url: str, *, create_schema: bool = True, heartbeat_interval: int | None = None,
                 grace_period: int | None = None, retry_s: float | None = None) -> Any:
    """An Optuna ``RDBStorage`` for ``url``, with clear errors for bad URLs and unreachable servers; for
    ``grpc://HOST:PORT``, a client of the storage proxy there (:func:`tuner.storage.proxy.open_proxy`).

    Args:
        url: a SQLAlchemy URL (``sqlite:///file.db``, ``postgresql://...``, ``mysql+pymysql://...``), or
            ``grpc://HOST:PORT``.
        create_schema: create the database and Optuna's tables. Do it once, before workers start:
            concurrent creation on a fresh file races (Optuna issue #4621). With ``False`` a SQLite file
            must exist already (:class:`NoDatabase`), and nothing is created.
        heartbeat_interval, grace_period: Optuna's heartbeat settings; they also shorten how long a call
            waits out an outage (:func:`retry_deadline`).
        retry_s: how long a call waits out an outage, whatever the heartbeat settings.
    """
    from sqlalchemy.exc import NoSuchModuleError, SQLAlchemyError

    if is_proxy(url):
        from tuner.storage.proxy import open_proxy  # the proxy's server opens this module's storage

        return open_proxy(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        if not create_schema:
            existing_sqlite(url)
        prepare_sqlite(url)
    retry_s = retry_deadline(heartbeat_interval, grace_period) if retry_s is None else retry_s

    def build() -> ResilientRDBStorage:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat arguments
            return ResilientRDBStorage(
                url, engine_kwargs=engine_kwargs(url), skip_table_creation=not create_schema,
                heartbeat_interval=heartbeat_interval, grace_period=grace_period, retry_s=retry_s,
            )

    try:
        return opening(build, url, retry_s)
    except ImportError as err:
        raise missing_driver(url, err) from None
    except NoSuchModuleError:
        raise unknown_dialect(url, parsed.drivername) from None
    except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as err:
        raise unreachable(err, url) from None
