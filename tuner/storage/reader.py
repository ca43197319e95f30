"""Read-only access to a storage, for the commands that only look: nothing is created, written or locked."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import optuna

from tuner.errors import first_line
from tuner.storage.rdb import open_storage
from tuner.storage.sqlite import SQLITE_BUSY_TIMEOUT_S, existing_sqlite, prepare_sqlite
from tuner.storage.urls import StorageError, mask, parse_url, unreachable

log = logging.getLogger(__name__)

T = TypeVar("T")


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
            raise unreachable(cause if isinstance(cause, Exception) else err, url) from None
    path = existing_sqlite(url)
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
        prepare_sqlite(url)

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT_S, check_same_thread=False)

    try:
        return optuna.storages.RDBStorage(f"sqlite:///{path}", engine_kwargs={"creator": connect},
                                          skip_table_creation=True)
    except Exception as err:  # noqa: BLE001 - an unusable file surfaces here as a SQLAlchemy or Optuna error
        raise StorageError(f"storage {mask(url)}: {path} holds no Optuna study "
                           f"({first_line(err.__cause__ or err)})") from None


def _journal_mode(uri: str) -> str:
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT_S)) as connection:
        return str(connection.execute("PRAGMA journal_mode").fetchone()[0])
