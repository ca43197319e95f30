"""SQLite as a shared study file: WAL mode, a busy timeout, and the checks that keep it safe.

Several local workers can share one SQLite file; a folder that is missing or read-only is named before
anything is written, and a file on a network file system (where SQLite's locks do not hold) is refused
for more than one worker.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from typing import Any, TypeVar

from tuner.storage.urls import NoDatabase, StorageError, mask

log = logging.getLogger(__name__)

T = TypeVar("T")
SQLITE_BUSY_TIMEOUT_S = 60


SQLITE_MAX_WORKERS = 8
NETWORK_FILE_SYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "9p", "lustre", "gpfs", "ceph",
                        "glusterfs", "fuse.glusterfs", "beegfs", "afs", "fuse.s3fs", "fuse.gcsfuse")


def engine_kwargs(url: str) -> dict[str, Any]:
    """SQLAlchemy engine options per backend (see the module docstring for why)."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    return {"pool_pre_ping": True}


def prepare_sqlite(url: str) -> None:
    """Check the file's folder and switch the file to WAL (a setting that persists in the file)."""
    path = sqlite_path(url)
    if path is None:
        return
    check_writable(url, path)
    try:
        with sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
    except sqlite3.DatabaseError as err:
        raise StorageError(f"storage {mask(url)}: {path} is not a usable SQLite database ({err})") from None


def check_writable(url: str, path: Path) -> None:
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


def existing_sqlite(url: str) -> Path | None:
    """The file of a SQLite URL (``None``: in memory or a URI), for commands that only use a study:
    refused, and not created, where it is absent."""
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        folder = path.absolute().parent
        where = f" (folder {folder} does not exist)" if not folder.is_dir() else ""
        raise NoDatabase(f"storage {mask(url)}: no database at {path.absolute()}{where}; run the study first "
                         "(tuner run), or give its --storage")
    return path


def sqlite_path(url: str) -> Path | None:
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
    path = sqlite_path(url) if url.startswith("sqlite") else None
    if path is None:
        return
    fstype = file_system_type(path.parent if path.parent != Path() else Path.cwd())
    if fstype is not None and (fstype in NETWORK_FILE_SYSTEMS or fstype.startswith("nfs")):
        raise StorageError(f"storage {mask(url)}: {path} is on a network file system ({fstype}), where SQLite's "
                           "locking is unreliable; use PostgreSQL or MySQL (see docs/clusters.md, 'SQLite')")
    if workers > SQLITE_MAX_WORKERS:
        log.warning("%d workers share the SQLite file %s; above %d, use PostgreSQL or MySQL (see docs/clusters.md, "
                    "'SQLite')", workers, path, SQLITE_MAX_WORKERS)
