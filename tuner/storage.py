"""Storage URLs and engines: where a study lives, opened safely for several workers.

The URL comes from ``--storage``, else ``$TUNER_STORAGE``, else the study file, else the embedded
default ``sqlite:///tuner.db``. SQLite is opened in WAL mode with a busy timeout so several local
workers can share the file; PostgreSQL and MySQL URLs are used as given, with ``pool_pre_ping`` so a
connection the server dropped during a long trial is replaced rather than failing the next query.
Passwords never appear in messages: every URL shown goes through :func:`mask`.
"""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tuner.errors import TunerError

DEFAULT_URL = "sqlite:///tuner.db"
ENV_VAR = "TUNER_STORAGE"
SQLITE_BUSY_TIMEOUT_S = 60


class StorageError(TunerError):
    """A storage URL that is malformed, needs a missing driver, or cannot be reached."""


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
    """Create the file's folder and switch it to WAL (a setting that persists in the file)."""
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if not database or database == ":memory:":
        return
    path = Path(database).expanduser()
    if path.parent != Path() and not path.parent.is_dir():
        raise StorageError(f"storage {mask(url)}: folder {path.parent} does not exist")
    try:
        with sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
    except sqlite3.DatabaseError as err:
        raise StorageError(f"storage {mask(url)}: {path} is not a usable SQLite database ({err})") from None


def open_storage(url: str, *, create_schema: bool = True, **rdb_kwargs: Any) -> Any:
    """An Optuna ``RDBStorage`` for ``url``, with clear errors for bad URLs and unreachable servers.

    Args:
        url: a SQLAlchemy URL (``sqlite:///file.db``, ``postgresql://...``, ``mysql+pymysql://...``).
        create_schema: create Optuna's tables. Do it once, before workers start: concurrent creation
            on a fresh file races (Optuna issue #4621); workers pass ``False``.
        rdb_kwargs: passed to ``RDBStorage`` (heartbeat settings).
    """
    import optuna
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise StorageError(
            f"bad storage URL {mask(url)!r}: expected e.g. sqlite:///tuner.db, "
            "postgresql://user:password@host/db or mysql+pymysql://user:password@host/db"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        _prepare_sqlite(url)
    try:
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs(url), skip_table_creation=not create_schema, **rdb_kwargs
        )
    except ImportError as err:
        raise StorageError(
            f"storage {mask(url)} needs a database driver that is not installed ({err.__cause__ or err}); "
            "install the extra: pip install 'tuner[db]'"
        ) from None
    except NoSuchModuleError:
        raise StorageError(
            f"storage {mask(url)}: unknown database dialect or driver {parsed.drivername!r}; use sqlite, "
            "postgresql (psycopg), or mysql+pymysql"
        ) from None
    except SQLAlchemyError as err:
        reason = _scrub(str(getattr(err, "orig", None) or err).strip().splitlines()[0], url)
        raise StorageError(f"cannot open storage {mask(url)}: {reason}") from None


def open_reader(url: str) -> Any:
    """An Optuna ``RDBStorage`` for reading a study that workers may be writing to (reports, dashboards).

    It never creates a database or its schema. SQLite is opened read-only (``mode=ro`` URI), so the
    reader can never take the write lock: optuna-dashboard opens the URL as given, read-write with
    SQLite's default 5 s timeout, and a live study crashed with "database is locked" (optuna-dashboard
    issue #545). In WAL mode, which ``tuner run`` sets, readers and the one writer do not block each
    other; a file still in rollback-journal mode (made by plain Optuna) is switched to WAL once first,
    the only write a reader makes. The busy timeout covers the moments a WAL checkpoint or that switch
    holds the file.
    """
    import optuna
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise StorageError(f"bad storage URL {mask(url)!r}") from None
    if parsed.get_backend_name() != "sqlite":
        try:
            return open_storage(url, create_schema=False)
        except optuna.exceptions.StorageInternalError as err:  # the schema check's query wraps the real cause
            reason = _scrub(str(err.__cause__ or err).strip().splitlines()[0], url)
            raise StorageError(f"cannot open storage {mask(url)}: {reason}") from None
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise StorageError(f"storage {mask(url)}: give the SQLite file as sqlite:///path/to/file.db")
    path = Path(database).expanduser().resolve()
    if not path.is_file():
        raise StorageError(f"storage {mask(url)}: {path} does not exist; run the study first")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=SQLITE_BUSY_TIMEOUT_S) as connection:
            mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
    except sqlite3.DatabaseError as err:
        raise StorageError(f"storage {mask(url)}: {path} is not a usable SQLite database ({err})") from None
    if mode != "wal":
        _prepare_sqlite(url)
    # sqlite3 itself opens the read-only URI: SQLAlchemy would percent-decode a path given in the URL
    uri = f"file:{quote(str(path))}?mode=ro"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT_S, check_same_thread=False)

    try:
        return optuna.storages.RDBStorage(f"sqlite:///{path}", engine_kwargs={"creator": connect},
                                          skip_table_creation=True)
    except Exception as err:  # noqa: BLE001 - an unusable file surfaces here as a SQLAlchemy or Optuna error
        raise StorageError(f"storage {mask(url)}: {path} holds no Optuna study "
                           f"({str(err.__cause__ or err).splitlines()[0]})") from None
