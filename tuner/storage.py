"""Storage URLs and engines: where a study lives, opened safely for several workers.

The URL comes from ``--storage``, else ``$TUNER_STORAGE``, else the study file, else the embedded
default ``sqlite:///tuner.db``. SQLite is opened in WAL mode with a busy timeout so several local
workers can share the file; PostgreSQL and MySQL URLs are used as given, with ``pool_pre_ping`` so a
connection the server dropped during a long trial is replaced rather than failing the next query.
Passwords never appear in messages: every URL shown goes through :func:`mask`.

Workers outlive database hiccups: every storage call that fails because the connection dropped, the
server restarted or SQLite stayed locked is retried with backoff for up to ``RETRY_S`` seconds
(:class:`ResilientRDBStorage`); a trial is created once however often its creation is retried, and
:func:`slot_lock` serialises "is there budget left? then start a
trial" across every worker on every machine, so a study never runs more trials than its budget.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import TunerError

DEFAULT_URL = "sqlite:///tuner.db"
ENV_VAR = "TUNER_STORAGE"
SQLITE_BUSY_TIMEOUT_S = 60
SQLITE_MAX_WORKERS = 8
TOKEN_ATTR = "tuner:create_token"  # the trial system attribute that names the call that created the trial
RETRY_S = 120.0  # how long a worker waits out a database outage before giving up
LOCK_KEEP_S = 5.0  # a SlotLock taken again within this many seconds keeps its server connection
NETWORK_FILE_SYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "9p", "lustre", "gpfs", "ceph",
                        "glusterfs", "fuse.glusterfs", "beegfs", "afs", "fuse.s3fs", "fuse.gcsfuse")

log = logging.getLogger(__name__)
T = TypeVar("T")


class StorageError(TunerError):
    """A storage URL that is malformed, needs a missing driver, or cannot be reached."""


class NoDatabase(StorageError):
    """A SQLite file that does not exist, given to a command that uses a study but never creates one."""


def resolve_url(cli: str | None = None, study_file: str | None = None) -> str:
    """The storage URL by precedence: ``--storage``, ``$TUNER_STORAGE``, the study file, the default."""
    for value in (cli, os.environ.get(ENV_VAR), study_file):
        if value:
            return value
    return DEFAULT_URL


def mask(url: str) -> str:
    """The URL with any password replaced by ``***``; unparsable URLs are shown without credentials."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        scheme, sep, rest = url.partition("://")
        return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else "<unparsable URL>"


def _password(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    try:
        password = make_url(url).password
    except Exception:  # noqa: BLE001 - unparsable: nothing to hide beyond what mask() drops
        return None
    return str(password) if password else None


def _scrub(text: str, url: str) -> str:
    """Hide the URL's password wherever a driver's message repeats it."""
    password = _password(url)
    if not password:
        return text
    return re.sub(rf"(?<![A-Za-z0-9]){re.escape(password)}(?![A-Za-z0-9])", "***", text)


def engine_kwargs(url: str) -> dict[str, Any]:
    """SQLAlchemy engine options per backend (see the module docstring for why)."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    return {"pool_pre_ping": True}


def _prepare_sqlite(url: str) -> None:
    """Check the file's folder and switch the file to WAL (a setting that persists in the file)."""
    path = _sqlite_path(url)
    if path is None:
        return
    _check_writable(url, path)
    try:
        with sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
    except sqlite3.DatabaseError as err:
        raise StorageError(f"storage {mask(url)}: {path} is not a usable SQLite database ({err})") from None


def _check_writable(url: str, path: Path) -> None:
    """Refuse a SQLite file that this process could not write, naming what to fix.

    Besides the file, SQLite and the study lock write ``-wal``, ``-shm`` and ``.lock`` files in its folder.
    """
    folder = path.absolute().parent
    if not folder.is_dir():
        raise StorageError(f"storage {mask(url)}: folder {folder} does not exist; create it or give another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StorageError(f"storage {mask(url)}: folder {folder} is not writable (SQLite writes its journal and "
                           "lock files beside the database); make it writable or give another path")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise StorageError(f"storage {mask(url)}: {path} is not writable; make it writable or give another path")


def _existing_sqlite(url: str) -> Path | None:
    """The file of a SQLite URL (``None``: in memory or a URI), for commands that only use a study:
    refused, and not created, where it is absent."""
    path = _sqlite_path(url)
    if path is not None and not path.is_file():
        folder = path.absolute().parent
        where = f" (folder {folder} does not exist)" if not folder.is_dir() else ""
        raise NoDatabase(f"storage {mask(url)}: no database at {path.absolute()}{where}; run the study first "
                         "(tuner run), or give its --storage")
    return path


def _sqlite_path(url: str) -> Path | None:
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser()


def _mounts() -> list[tuple[str, str]]:
    """(mount point, file system type) of every mount, from /proc/mounts (empty where there is none)."""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return []
    return [(fields[1].replace("\\040", " "), fields[2]) for fields in (line.split() for line in lines)
            if len(fields) >= 3]


def file_system_type(path: Path) -> str | None:
    """The type of the file system holding ``path`` (the longest mount point that contains it)."""
    resolved = str(path.resolve())
    best: tuple[str, str] | None = None
    for point, fstype in _mounts():
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) > len(best[0])):
            best = (point, fstype)
    return best[1] if best else None


def check_sqlite_for_workers(url: str, workers: int) -> None:
    """Refuse SQLite on a network file system, and warn when more local workers share it than it suits.

    SQLite's locks and its WAL index need one machine's shared memory; over NFS and its kin they fail
    silently and the file can be corrupted.
    """
    path = _sqlite_path(url) if url.startswith("sqlite") else None
    if path is None:
        return
    fstype = file_system_type(path.parent if path.parent != Path() else Path.cwd())
    if fstype is not None and (fstype in NETWORK_FILE_SYSTEMS or fstype.startswith("nfs")):
        raise StorageError(f"storage {mask(url)}: {path} is on a network file system ({fstype}), where SQLite's "
                           "locking is unreliable; use PostgreSQL or MySQL (see README, 'Many machines')")
    if workers > SQLITE_MAX_WORKERS:
        log.warning("%d workers share the SQLite file %s; above %d, use PostgreSQL or MySQL (see README, "
                    "'Many machines')", workers, path, SQLITE_MAX_WORKERS)


def _transient(err: BaseException) -> bool:
    """Whether ``err`` (or what it wraps) is a lost connection, a server restart or a locked database."""
    from sqlalchemy import exc

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, (exc.OperationalError, exc.InterfaceError)):
            return True
        if isinstance(seen, exc.DBAPIError) and seen.connection_invalidated:
            return True
        if isinstance(seen, sqlite3.OperationalError) and "locked" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def retrying(call: Callable[..., T], what: str, url: str, deadline_s: float = RETRY_S) -> Callable[..., T]:
    """``call``, retried with exponential backoff while it fails transiently, for up to ``deadline_s``."""

    @functools.wraps(call)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        started, delay = time.monotonic(), 0.1
        while True:
            try:
                return call(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - re-raised unless transient
                if not _transient(err) or time.monotonic() - started + delay > deadline_s:
                    raise
                reason = _scrub(str(getattr(err, "orig", None) or err.__cause__ or err).strip().splitlines()[0], url)
                log.warning("storage %s: %s failed (%s); retrying in %.1f s", mask(url), what, reason, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    return wrapper


class ResilientRDBStorage(RDBStorage):
    """Optuna's ``RDBStorage`` whose calls are retried through database outages (see :func:`retrying`).

    Optuna turns a dropped connection into ``StorageInternalError`` and the trial's result is lost;
    here the call waits for the database to come back. A retried write may have been committed already,
    its reply lost with the connection. Attributes, intermediate values and heartbeats are written again
    harmlessly. A state change is not covered: repeated, it finds the trial already finished
    (``UpdateFinishedTrialError``) or, taking up a queued trial, already RUNNING (``False``). Creating a
    trial is: a repeat would make a second trial, RUNNING without a heartbeat, which no stale check ever
    ends and which holds a slot of the budget for ever. So each creating call carries a token, a system
    attribute (``TOKEN_ATTR``) written in the same transaction as the trial, and every attempt after its
    first looks for the trial carrying it before making one (:meth:`_get_prepared_new_trial`). That
    covers this class's retries and Optuna's own, which ``_create_new_trial`` makes after a failed commit.
    """

    _RETRIED = (
        "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr", "get_study_id_from_name",
        "get_study_name_from_id", "get_study_directions", "get_study_user_attrs", "get_study_system_attrs",
        "get_all_studies", "set_trial_param", "get_trial_id_from_study_id_trial_number",
        "set_trial_state_values", "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
        "get_trial", "get_all_trials", "get_n_trials", "get_best_trial", "record_heartbeat", "_get_stale_trial_ids",
        # what Optuna's caching layer calls on the storage beneath it
        "_get_trials", "_set_trial_param", "_get_best_trial_id",
        # create_new_trial and _create_new_trial retry themselves, with a token
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._creating: dict[str, _Creation] = {}  # the creations in progress, by token
        super().__init__(*args, **kwargs)

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if name in ResilientRDBStorage._RETRIED:
            return retrying(value, name, super().__getattribute__("url"))
        return value

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return self._create_new_trial(study_id, template_trial)._trial_id

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        """Optuna's, retried, and creating one trial however many attempts it takes (see the class)."""
        token = uuid.uuid4().hex
        plain = _without_token(template_trial)
        self._creating[token] = _Creation(plain)
        try:
            # the template carries the token to _get_prepared_new_trial, and into the trial returned
            template = _with_token(plain, token)
            return retrying(super()._create_new_trial, "_create_new_trial", self.url)(study_id, template)
        finally:
            del self._creating[token]

    def _get_prepared_new_trial(self, study_id: int, template_trial: FrozenTrial | None, session: Any) -> Any:
        """The new trial's row, in the session that holds the study's row lock; on an attempt after the
        first, the row an earlier attempt committed, if one did."""
        from optuna.storages._rdb import models

        token: str = template_trial.system_attrs.get(TOKEN_ATTR, "") if template_trial is not None else ""
        creation = self._creating.get(token)
        if creation is None:  # not a creation through _create_new_trial
            return super()._get_prepared_new_trial(study_id, template_trial, session)
        if creation.tried:
            found = _trial_with_token(session, study_id, token)
            if found is not None:
                log.info("storage %s: trial %d was created by an attempt whose reply was lost; not created again",
                         mask(self.url), found.number)
                return found
        creation.tried = True
        # Optuna makes the trial from the caller's template (without one: RUNNING, started now), and the
        # token goes in with one INSERT: through the template, Optuna would read the trial again and upsert
        trial = super()._get_prepared_new_trial(study_id, creation.template, session)
        session.add(models.TrialSystemAttributeModel(trial_id=trial.trial_id, key=TOKEN_ATTR,
                                                     value_json=json.dumps(token)))
        return trial


@dataclass
class _Creation:
    """A trial creation in progress (:meth:`ResilientRDBStorage._create_new_trial`)."""

    template: FrozenTrial | None  # the caller's, without a token
    tried: bool = False  # an attempt got as far as storing the trial, and may have committed


def _without_token(template: FrozenTrial | None) -> FrozenTrial | None:
    """``template`` without a creation token. A retry queued by ``RetryHeartbeatStaleTrialCallback``
    copies the failed trial's system attributes, its token among them."""
    if template is None or TOKEN_ATTR not in template.system_attrs:
        return template
    plain = copy.copy(template)
    plain.system_attrs = {key: value for key, value in template.system_attrs.items() if key != TOKEN_ATTR}
    return plain


def _with_token(template: FrozenTrial | None, token: str) -> FrozenTrial:
    """A copy of ``template`` carrying ``token``; without a template, of the trial Optuna makes without one
    (RUNNING: its number and start are set when it is stored)."""
    if template is None:
        template = FrozenTrial(number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.now(),
                               datetime_complete=None, params={}, distributions={}, user_attrs={}, system_attrs={},
                               intermediate_values={}, trial_id=-1)
    else:
        template = copy.copy(template)
    template.system_attrs = {**template.system_attrs, TOKEN_ATTR: token}
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


def open_storage(url: str, *, create_schema: bool = True, **rdb_kwargs: Any) -> Any:
    """An Optuna ``RDBStorage`` for ``url``, with clear errors for bad URLs and unreachable servers.

    Args:
        url: a SQLAlchemy URL (``sqlite:///file.db``, ``postgresql://...``, ``mysql+pymysql://...``).
        create_schema: create the database and Optuna's tables. Do it once, before workers start:
            concurrent creation on a fresh file races (Optuna issue #4621). With ``False`` a SQLite file
            must exist already (:class:`NoDatabase`), and nothing is created.
        rdb_kwargs: passed to ``RDBStorage`` (heartbeat settings).
    """
    from sqlalchemy.exc import NoSuchModuleError, SQLAlchemyError

    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        if not create_schema:
            _existing_sqlite(url)
        _prepare_sqlite(url)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat arguments
            return ResilientRDBStorage(
                url, engine_kwargs=engine_kwargs(url), skip_table_creation=not create_schema, **rdb_kwargs
            )
    except ImportError as err:
        raise _missing_driver(url, err) from None
    except NoSuchModuleError:
        raise _unknown_dialect(url, parsed.drivername) from None
    except SQLAlchemyError as err:
        raise _unreachable(err, url) from None


def parse_url(url: str) -> Any:
    """``url`` as a SQLAlchemy ``URL``, or a clear error."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except (ArgumentError, ValueError):
        raise StorageError(
            f"bad storage URL {mask(url)!r}: expected e.g. sqlite:///tuner.db, "
            "postgresql://user:password@host/db or mysql+pymysql://user:password@host/db"
        ) from None


def _unknown_dialect(url: str, drivername: str) -> StorageError:
    return StorageError(f"storage {mask(url)}: unknown database dialect or driver {drivername!r}; use sqlite, "
                        "postgresql (psycopg), or mysql+pymysql")


# the driver modules `pip install 'tuner[db]'` installs (pyproject.toml), and the URL scheme of each per backend
_DB_EXTRA_MODULES = ("psycopg", "pymysql")
_DB_EXTRA_SCHEMES = {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql", "mariadb": "mariadb+pymysql"}


def _missing_driver(url: str, err: ImportError) -> StorageError:
    seen: BaseException | None = err  # Optuna raises its own ImportError from the driver's
    while seen is not None and not (isinstance(seen, ImportError) and seen.name):
        seen = seen.__cause__
    if not isinstance(seen, ImportError) or not seen.name:
        return StorageError(f"storage {mask(url)} needs a database driver that is not installed ({err})")
    module = seen.name.partition(".")[0]
    where = f"storage {mask(url)} needs the driver module {module}, which is not installed"
    if module in _DB_EXTRA_MODULES:
        return StorageError(f"{where}: pip install 'tuner[db]'")
    scheme = _DB_EXTRA_SCHEMES.get(parse_url(url).get_backend_name())
    if scheme is None:
        return StorageError(f"{where}; install it")
    other = parse_url(url).set(drivername=scheme).render_as_string(hide_password=True)
    return StorageError(f"{where}: use {other} (pip install 'tuner[db]'), or install {module}")


def _unreachable(err: Exception, url: str) -> StorageError:
    reason = _scrub(str(getattr(err, "orig", None) or err).strip().splitlines()[0], url)
    return StorageError(f"cannot open storage {mask(url)}: {reason}")


class SlotLock:
    """A lock shared by every worker of one study, on any machine that reaches its storage.

    PostgreSQL and MySQL hold it on the server (``pg_advisory_lock``, ``GET_LOCK``), so it is released
    when a holder's connection dies; SQLite, which only local workers share, uses ``flock`` on a file
    next to the database. Hold it only for a few queries. A server lock taken again within
    ``LOCK_KEEP_S`` of its last use keeps its connection open for the next; one used less often (a
    worker on long trials, a one-off lock) closes it, so it holds no idle connection on the server.
    """

    def __init__(self, url: str, study_name: str) -> None:
        from sqlalchemy.exc import NoSuchModuleError

        self.url = url
        parsed = parse_url(url)
        self.backend = parsed.get_backend_name()
        digest = hashlib.sha256(f"tuner:{study_name}".encode()).digest()
        self._key = int.from_bytes(digest[:8], "big", signed=True)
        self._name = f"tuner:{digest.hex()[:40]}"
        self._thread_lock = threading.Lock()
        self._last_use = -math.inf
        self._engine: Any = None
        self._path: Path | None = None
        if self.backend == "sqlite":
            database = _sqlite_path(url)
            if database is not None:
                _check_writable(url, database)
                self._path = database.with_name(database.name + ".lock")
        elif self.backend in ("postgresql", "mysql", "mariadb"):
            import sqlalchemy

            try:
                # a connection kept between frequent uses: a new one for every trial made taking the lock
                # cost 5 ms instead of 0.7 on local PostgreSQL; pre-ping replaces one the server dropped
                self._engine = sqlalchemy.create_engine(url, pool_size=1, max_overflow=0, pool_pre_ping=True)
                # closed with this object, not whenever the garbage collector reaches the engine's cycles
                weakref.finalize(self, self._engine.dispose)
            except ImportError as err:
                raise _missing_driver(url, err) from None
            except NoSuchModuleError:
                raise _unknown_dialect(url, parsed.drivername) from None

    @contextlib.contextmanager
    def __call__(self, retry: bool = True) -> Iterator[None]:
        """Hold the lock; ``retry=False`` fails at once, with a clear error, when the server is down."""
        with self._thread_lock:
            if self._engine is not None:
                keep = time.monotonic() - self._last_use < LOCK_KEEP_S
                connection, release = retrying(self._acquire, "lock", self.url)() if retry else self._first()
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
            else:  # an in-memory database: only this process can see it
                yield

    def _first(self) -> tuple[Any, tuple[Any, dict[str, Any]]]:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return self._acquire()
        except SQLAlchemyError as err:
            raise _unreachable(err, self.url) from None

    def _acquire(self) -> tuple[Any, tuple[Any, dict[str, Any]]]:
        import sqlalchemy

        connection = self._engine.connect()
        try:
            if self.backend == "postgresql":
                connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": self._key})
                return connection, (sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
            got = connection.execute(sqlalchemy.text("SELECT GET_LOCK(:name, :wait)"),
                                     {"name": self._name, "wait": int(RETRY_S)}).scalar()
            if got != 1:
                raise StorageError(f"storage {mask(self.url)}: could not take the study lock in {RETRY_S:.0f} s")
            return connection, (sqlalchemy.text("SELECT RELEASE_LOCK(:name)"), {"name": self._name})
        except BaseException:
            with contextlib.suppress(Exception):
                connection.invalidate()  # an interrupted wait may yet be granted the lock: drop the session
            connection.close()
            raise


def open_reader(url: str) -> Any:
    """An Optuna ``RDBStorage`` for reading a study that workers may be writing to (reports, dashboards).

    It never creates a database or its schema. SQLite is opened read-only (``mode=ro`` URI), so the
    reader can never take the write lock: optuna-dashboard opens the URL as given, read-write with
    SQLite's default 5 s timeout, and a live study crashed with "database is locked" (optuna-dashboard
    issue #545). In WAL mode, which ``tuner run`` sets, readers and the one writer do not block each
    other; a file still in rollback-journal mode (made by plain Optuna) is switched to WAL once first,
    the only write a reader makes, where its folder is writable. In a read-only folder a WAL file that
    no one has open (no ``-wal`` file) is read as immutable: SQLite could not create the ``-shm`` file a
    WAL reader needs. The busy timeout covers the moments a WAL checkpoint or that switch holds the file.
    """
    parsed = parse_url(url)
    if parsed.get_backend_name() != "sqlite":
        try:
            return open_storage(url, create_schema=False)
        except optuna.exceptions.StorageInternalError as err:  # the schema check's query wraps the real cause
            cause = err.__cause__
            raise _unreachable(cause if isinstance(cause, Exception) else err, url) from None
    path = _existing_sqlite(url)
    if path is None:
        raise StorageError(f"storage {mask(url)}: give the SQLite file as sqlite:///path/to/file.db")
    path = path.resolve()
    writable = os.access(path.parent, os.W_OK | os.X_OK)
    # sqlite3 itself opens the read-only URI: SQLAlchemy would percent-decode a path given in the URL
    uris = [f"file:{quote(str(path))}?mode=ro"]
    if not writable and not Path(f"{path}-wal").exists():
        # a WAL reader needs the -shm file, which it cannot create in a read-only folder; with no -wal
        # file, no one has the database open, so it is read as immutable
        uris.append(f"{uris[0]}&immutable=1")
    for uri in uris:
        try:
            mode = _journal_mode(uri)
            break
        except sqlite3.DatabaseError as err:
            error = err
    else:
        raise StorageError(f"storage {mask(url)}: {path} is not a usable SQLite database ({error})"
                           + ("" if writable else f"; its folder {path.parent} is not writable")) from None
    if mode != "wal" and writable:
        _prepare_sqlite(url)

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT_S, check_same_thread=False)

    try:
        return optuna.storages.RDBStorage(f"sqlite:///{path}", engine_kwargs={"creator": connect},
                                          skip_table_creation=True)
    except Exception as err:  # noqa: BLE001 - an unusable file surfaces here as a SQLAlchemy or Optuna error
        raise StorageError(f"storage {mask(url)}: {path} holds no Optuna study "
                           f"({str(err.__cause__ or err).splitlines()[0]})") from None


def _journal_mode(uri: str) -> str:
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT_S)) as connection:
        return str(connection.execute("PRAGMA journal_mode").fetchone()[0])
