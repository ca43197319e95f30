"""SQLite: WAL mode, missing and read-only folders, files that are not databases, network file systems."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import optuna
import pytest
from conftest import unprivileged

from tuner.storage import sqlite
from tuner.storage.lock import SlotLock
from tuner.storage.rdb import open_storage
from tuner.storage.sqlite import check_sqlite_for_workers
from tuner.storage.urls import StorageError


def test_sqlite_is_created_once_in_wal_mode(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    with sqlite3.connect(tmp_path / "study.db") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    worker = open_storage(url, create_schema=False)
    assert len(optuna.load_study(study_name="s", storage=worker).trials) == 2


def test_sqlite_in_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"folder .*nope does not exist"):
        open_storage(f"sqlite:///{tmp_path / 'nope' / 'x.db'}")


def _write_to(url: str) -> str:
    for attempt in (lambda: open_storage(url), lambda: SlotLock(url, "s")().__enter__()):
        try:
            attempt()
        except StorageError as err:
            assert "is not writable" in str(err), err
        else:
            return "written"
    return "refused"


def test_sqlite_in_a_read_only_folder_is_refused_for_writing(open_tmp: Path) -> None:
    folder = open_tmp / "read-only"
    folder.mkdir()
    storage = open_storage(f"sqlite:///{folder / 'study.db'}")
    optuna.create_study(storage=storage, study_name="s")
    storage.engine.dispose()
    folder.chmod(0o555)
    for name in ("study.db", "new.db"):
        assert unprivileged(_write_to, f"sqlite:///{folder / name}") == "refused"
    assert sorted(p.name for p in folder.iterdir()) == ["study.db"]


def test_sqlite_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are not the tables you are looking for\n" * 100)
    with pytest.raises(StorageError, match="not a usable SQLite database"):
        open_storage(f"sqlite:///{path}")
    assert path.read_text().startswith("these are not")  # nothing lost


def test_sqlite_on_a_network_file_system_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    monkeypatch.setattr(sqlite, "_mounts", lambda: [("/", "ext4"), (str(tmp_path), "nfs4")])
    with pytest.raises(StorageError, match=r"network file system \(nfs4\).*use PostgreSQL or MySQL"):
        check_sqlite_for_workers(url, 1)
    monkeypatch.setattr(sqlite, "_mounts", lambda: [("/", "ext4")])
    check_sqlite_for_workers(url, 8)
    assert "use PostgreSQL" not in caplog.text
    check_sqlite_for_workers(url, 9)
    assert "9 workers share the SQLite file" in caplog.text and "use PostgreSQL or MySQL" in caplog.text
