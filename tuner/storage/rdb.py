"""Opening a study's storage for a worker: Optuna's RDB storage, made to outlive database hiccups.

PostgreSQL and MySQL URLs are used as given, with ``pool_pre_ping`` so a connection the server dropped
during a long trial is replaced rather than failing the next query. Every storage call that fails
because the connection dropped, the server restarted or SQLite stayed locked is retried with backoff
for up to ``RETRY_S`` seconds, less with heartbeats (:mod:`tuner.storage.retry`; :class:`ResilientRDBStorage`),
and a trial is created once however often its creation is retried. A trial made RUNNING carries its start
by the database's clock (``STARTED_ATTR``), which every worker and ``tuner reap`` share, whatever their
time zones and clocks: Optuna's ``datetime_start`` is the worker's local time.
"""

from __future__ import annotations

import copy
import json
import logging
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from tuner._compat.optuna import RDBStorageHooks, backend_of, rdb_models, stale_trial_query, transaction
from tuner.keys import CLAIM_ATTR, HEARTBEAT_ATTR, REQUEST_ATTR, STARTED_ATTR, TOKEN_ATTR
from tuner.storage.retry import RETRY_S, RetriedCalls, final_write, opening, retry_deadline
from tuner.storage.sqlite import engine_kwargs, existing_sqlite, prepare_sqlite
from tuner.storage.urls import is_proxy, mask, missing_driver, parse_url, unknown_dialect, unreachable

log = logging.getLogger(__name__)


class ResilientRDBStorage(RetriedCalls, RDBStorageHooks):
    """Optuna's ``RDBStorage`` whose calls are retried through database outages (see
    :class:`tuner.storage.retry.RetriedCalls`).

    Optuna turns a dropped connection into ``StorageInternalError`` and the trial's result is lost;
    here the call waits for the database to come back. A retried write may have been committed already,
    its reply lost with the connection, so only writes whose repeat is harmless are repeated blindly:
    attributes, parameters, intermediate values and heartbeats, which write the same row again.
    Every write that creates or moves a trial is made to recognise its own earlier attempt:

    - Creating a trial: a repeat would make a second trial, which holds a slot of the budget for ever.
      Each creating call carries a token, a system attribute (``TOKEN_ATTR``) written in the same
      transaction as the trial, and every attempt after its first looks for the trial carrying it
      before making one (:meth:`prepare_trial_row`). That covers this class's retries and
      Optuna's own, which :meth:`create_trial` makes after a failed commit.
    - Taking up a queued trial (WAITING to RUNNING): a repeat finds it RUNNING and says no, and the
      trial would be orphaned. The claim carries a token too (``CLAIM_ATTR``), and a repeat that
      finds its own token says yes (:meth:`claim`).
    - Finishing a trial: a repeat finds it finished (``UpdateFinishedTrialError``). A repeat that
      finds the state and values it was asked to store says yes.

    A trial created or taken up RUNNING gets its first heartbeat in the same transaction, so a worker
    that dies before its heartbeat thread starts leaves a trial that the stale check ends, and its start
    by the database's clock (``STARTED_ATTR``, :meth:`database_time`).

    Heartbeats follow the settings stored with the study (:func:`heartbeat_settings`), not this storage's:
    a worker that asked for a shorter grace period would fail others' live trials, and the storage proxy
    serves studies with different settings. This storage's own apply to a study without stored settings.
    """

    def __init__(self, *args: Any, retry_s: float = RETRY_S, **kwargs: Any) -> None:
        self.retry_s = retry_s  # how long a call waits out an outage (retry_deadline)
        self._creating: dict[str, _Creation] = {}  # the creations in progress, by token
        # studies' stored heartbeat settings, by study id: fixed once stored, so read once (a query fewer
        # under the study lock for every trial made)
        self._heartbeats: dict[int, dict[str, int | None]] = {}
        super().__init__(*args, **kwargs)

    def create_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        """Optuna's, retried, and creating one trial however many attempts it takes (see the class).

        A template may name the creation itself (``REQUEST_ATTR``: a token, and whether an earlier
        attempt may have committed it): a client of the gRPC proxy, whose attempts reach this process
        as separate calls, or a creation that must happen once per study (the baseline)."""
        request = _request(template_trial)
        call = uuid.uuid4().hex  # this call's entry in _creating (callers may share a requested token)
        plain = _without_token(template_trial)
        self._creating[call] = _Creation(plain, str(request.get("token") or call), bool(request.get("lookup")))
        try:
            # the template carries the call to prepare_trial_row, and into the trial returned
            template = _with_token(plain, call)
            return self.retried(super().create_trial, "create_new_trial")(study_id, template)
        finally:
            del self._creating[call]

    def prepare_trial_row(self, study_id: int, template_trial: FrozenTrial | None, session: Any) -> Any:
        """The new trial's row, in the session that holds the study's row lock; on an attempt after the
        first, the row an earlier attempt committed, if one did."""
        models = rdb_models()
        call: str = template_trial.system_attrs.get(TOKEN_ATTR, "") if template_trial is not None else ""
        creation = self._creating.get(call)
        if creation is None:  # not a creation through create_trial
            return super().prepare_trial_row(study_id, template_trial, session)
        if creation.tried:
            found = _trial_with_token(session, study_id, creation.token)
            if found is not None:
                log.info("storage %s: trial %d was created by an attempt whose reply was lost, or by its first "
                         "request; not created again", mask(self.url), found.number)
                return found
        creation.tried = True
        # Optuna makes the trial from the caller's template (without one: RUNNING, started now), and the
        # template's attributes and the token go in as plain INSERTs: through the template, Optuna would
        # read the trial again and upsert each one, though a new trial has none yet
        template = creation.template
        user_attrs = dict(template.user_attrs) if template is not None else {}
        system_attrs = {**(template.system_attrs if template is not None else {}), TOKEN_ATTR: creation.token}
        if template is not None and (template.user_attrs or template.system_attrs):
            template = copy.copy(template)
            template.user_attrs, template.system_attrs = {}, {}
        trial = super().prepare_trial_row(study_id, template, session)
        for model, attrs in ((models.TrialUserAttributeModel, user_attrs),
                             (models.TrialSystemAttributeModel, system_attrs)):
            session.add_all(model(trial_id=trial.trial_id, key=key, value_json=json.dumps(value))
                            for key, value in attrs.items())
        if trial.state == TrialState.RUNNING:
            self._mark_running(session, study_id, int(trial.trial_id))
        return trial

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
                               ) -> bool:
        """Optuna's, retried; a repeat recognises its own earlier commit (see the class)."""
        if state == TrialState.RUNNING:
            return self.claim(trial_id)
        attempt = final_write(lambda: RDBStorage.set_trial_state_values(self, trial_id, state, values),
                              lambda: RDBStorage.get_trial(self, trial_id), state, values, self.url, trial_id)
        return self.retried(attempt, "set_trial_state_values")()

    def stale_trial_ids(self, study_id: int, grace_period: int | None = None) -> list[int]:
        """The study's RUNNING trials whose heartbeat is older than the grace period stored with the study
        (none if it has heartbeats off), whatever the asking worker's. For a study without stored settings,
        ``grace_period`` (a client of the gRPC proxy gives its own), else this storage's."""
        stored = self._heartbeats.get(study_id)
        if stored is None:
            with transaction(self) as opened:
                stored = self._stored_heartbeat(opened, study_id)
        if stored is not None:
            interval = stored["heartbeat_interval"] or 0
            grace = stored["grace_period"] or 2 * interval  # Optuna's default
        else:
            interval = self.heartbeat_interval or grace_period or 0
            grace = grace_period or self.grace_period or 2 * interval
        if not interval:
            return []
        return stale_trial_query(self, study_id, interval, grace)

    def claim(self, trial_id: int, token: str | None = None) -> bool:
        """Take up the queued trial ``trial_id`` (WAITING to RUNNING); ``False`` when another worker did.

        ``token`` names the claim (a fresh one without it); a client of the gRPC proxy gives its own, so
        that its repeat through a restarted proxy recognises the claim an earlier attempt committed."""
        models = rdb_models()
        token = token or uuid.uuid4().hex

        def attempt() -> bool:
            with transaction(self) as opened:
                trial = models.TrialModel.find_or_raise_by_id(trial_id, opened, for_update=True)
                claim = models.TrialSystemAttributeModel.find_by_trial_and_key(trial, CLAIM_ATTR, opened)
                if trial.state == TrialState.RUNNING:
                    # a token names one claim call: finding it, an earlier attempt of this call committed
                    if claim is not None and json.loads(str(claim.value_json)) == token:
                        log.info("storage %s: trial %d was taken up by an attempt whose reply was lost",
                                 mask(self.url), trial.number)
                        return True
                self.check_trial_is_updatable(trial_id, trial.state)
                if trial.state != TrialState.WAITING:
                    return False
                trial.state = TrialState.RUNNING
                trial.datetime_start = datetime.now()
                if claim is None:
                    opened.add(models.TrialSystemAttributeModel(trial_id=trial_id, key=CLAIM_ATTR,
                                                                value_json=json.dumps(token)))
                else:  # a trial queued through the storage API by hand, from a copy of a claimed one
                    claim.value_json = json.dumps(token)
                assert trial.study_id is not None  # a trial row always has its study
                started = models.TrialSystemAttributeModel.find_by_trial_and_key(trial, STARTED_ATTR, opened)
                self._mark_running(opened, trial.study_id, trial_id, started)
            return True

        return self.retried(attempt, "set_trial_state_values")()

    def _mark_running(self, session: Any, study_id: int, trial_id: int, started: Any = None) -> None:
        """In the transaction that makes a trial RUNNING: its start by the database's clock, in its
        ``STARTED_ATTR`` row (``started``, where a copied trial has one already), and its first
        heartbeat, if its study has heartbeats on (see the class)."""
        models = rdb_models()
        now = _EPOCH_SQL.get(session.get_bind().dialect.name)
        if now is not None:
            import sqlalchemy

            value = sqlalchemy.cast(sqlalchemy.literal_column(now), sqlalchemy.Text)  # a JSON number
            if started is None:
                session.add(models.TrialSystemAttributeModel(trial_id=trial_id, key=STARTED_ATTR, value_json=value))
            else:
                started.value_json = value
        stored = self._stored_heartbeat(session, study_id)
        if stored["heartbeat_interval"] if stored is not None else self.heartbeat_interval:
            session.add(models.TrialHeartbeatModel(trial_id=trial_id))

    def _stored_heartbeat(self, session: Any, study_id: int) -> dict[str, int | None] | None:
        """:func:`_stored_heartbeat`, read once per study once found."""
        found = self._heartbeats.get(study_id)
        if found is None:
            found = _stored_heartbeat(session, study_id)
            if found is not None:
                self._heartbeats[study_id] = found
        return found

    def database_time(self) -> float | None:
        """The database's clock, in seconds since the epoch: the clock of ``STARTED_ATTR``. ``None`` for a
        database whose clock this module cannot read."""
        import sqlalchemy

        now = _EPOCH_SQL.get(self.engine.dialect.name)
        if now is None:
            return None
        with transaction(self) as opened:
            return float(opened.execute(sqlalchemy.select(sqlalchemy.literal_column(now))).scalar_one())


# The database's clock in seconds since the epoch, free of any time zone: PostgreSQL's is the transaction's
# start, MySQL's the statement's (whole seconds), SQLite's the calling process's (milliseconds).
_EPOCH_SQL = {"postgresql": "EXTRACT(EPOCH FROM CURRENT_TIMESTAMP)", "mysql": "UNIX_TIMESTAMP()",
              "mariadb": "UNIX_TIMESTAMP()", "sqlite": "((julianday('now') - 2440587.5) * 86400.0)"}


def database_time(storage: Any) -> float | None:
    """The database's clock, in seconds since the epoch, read through ``storage`` (or the storage beneath
    Optuna's cache, or a storage proxy): ``None`` where there is none to read (another kind of storage)."""
    read = getattr(backend_of(storage), "database_time", None)
    return read() if callable(read) else None


def heartbeat_settings(heartbeat_interval: int | None, grace_period: int | None) -> dict[str, int | None]:
    """A study's heartbeat settings as stored with it when it is created (the study attribute
    ``HEARTBEAT_ATTR``): ``heartbeat_interval`` 0 is no heartbeats, and then no grace period."""
    return {"heartbeat_interval": heartbeat_interval or 0, "grace_period": grace_period if heartbeat_interval else None}


def _stored_heartbeat(session: Any, study_id: int) -> dict[str, int | None] | None:
    """The heartbeat settings stored with study ``study_id`` (:func:`heartbeat_settings`), or ``None``: a study
    created before they were stored, or by Optuna alone."""
    attr = rdb_models().StudyUserAttributeModel
    row = session.query(attr.value_json).filter(attr.study_id == study_id, attr.key == HEARTBEAT_ATTR).one_or_none()
    value = json.loads(row[0]) if row is not None else None
    return value if isinstance(value, dict) else None


@dataclass
class _Creation:
    """A trial creation in progress (:meth:`ResilientRDBStorage.create_trial`)."""

    template: FrozenTrial | None  # the caller's, without a token
    token: str  # stored with the trial (TOKEN_ATTR)
    tried: bool = False  # an attempt got as far as storing the trial, and may have committed


def _request(template: FrozenTrial | None) -> dict[str, Any]:
    """The creation a template names (``REQUEST_ATTR``: ``token``, ``lookup``), or ``{}``."""
    value = template.system_attrs.get(REQUEST_ATTR) if template is not None else None
    return value if isinstance(value, dict) else {}


def request_template(template: FrozenTrial | None, token: str, lookup: bool) -> FrozenTrial:
    """``template`` naming its creation by ``token`` (see :meth:`ResilientRDBStorage.create_trial`);
    with ``lookup``, a trial the study already holds with that token is returned instead of a new one."""
    return _with_attr(_without_token(template), REQUEST_ATTR, {"token": token, "lookup": lookup})


_RUN_ATTRS = (TOKEN_ATTR, CLAIM_ATTR, REQUEST_ATTR, STARTED_ATTR)  # one creation's, or one run's, never a copy's


def _without_token(template: FrozenTrial | None) -> FrozenTrial | None:
    """``template`` without creation or claim tokens and start. A retry queued by
    ``RetryHeartbeatStaleTrialCallback`` copies the failed trial's system attributes, these among them."""
    if template is None or not set(_RUN_ATTRS) & template.system_attrs.keys():
        return template
    plain = copy.copy(template)
    plain.system_attrs = {key: value for key, value in template.system_attrs.items() if key not in _RUN_ATTRS}
    return plain


def _with_token(template: FrozenTrial | None, token: str) -> FrozenTrial:
    """A copy of ``template`` carrying ``token``; without a template, of the trial Optuna makes without one
    (RUNNING: its number and start are set when it is stored)."""
    return _with_attr(template, TOKEN_ATTR, token)


def _with_attr(template: FrozenTrial | None, key: str, value: Any) -> FrozenTrial:
    """A copy of ``template`` with the system attribute ``key``; without a template, of the trial Optuna
    makes without one (:func:`new_trial_template`)."""
    template = new_trial_template() if template is None else copy.copy(template)
    template.system_attrs = {**template.system_attrs, key: value}
    return template


def new_trial_template(user_attrs: Mapping[str, Any] | None = None) -> FrozenTrial:
    """The trial Optuna makes without a template, as a template: RUNNING, started now (its number and id are
    set when it is stored), with ``user_attrs``."""
    return FrozenTrial(number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.now(),
                       datetime_complete=None, params={}, distributions={}, user_attrs=dict(user_attrs or {}),
                       system_attrs={}, intermediate_values={}, trial_id=-1)


def _trial_with_token(session: Any, study_id: int, token: str) -> Any:
    """The trial row of study ``study_id`` whose creation carried ``token``, or ``None``."""
    models = rdb_models()
    attr = models.TrialSystemAttributeModel
    return (session.query(models.TrialModel)
            .join(attr, attr.trial_id == models.TrialModel.trial_id)
            .filter(models.TrialModel.study_id == study_id, attr.key == TOKEN_ATTR,
                    attr.value_json == json.dumps(token))
            .order_by(models.TrialModel.trial_id)
            .first())


def beats_when_started(storage: Any) -> bool:
    """Whether ``storage``, or the one beneath Optuna's cache, stores a trial's first heartbeat in the
    transaction that makes it RUNNING (:class:`ResilientRDBStorage` with heartbeats on)."""
    backend = backend_of(storage)
    return isinstance(backend, ResilientRDBStorage) and bool(backend.heartbeat_interval)


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
