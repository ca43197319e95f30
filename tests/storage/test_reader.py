"""Read-only readers: nothing created, nothing written, nothing blocked, in read-only folders too."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import optuna
import pytest
from conftest import unprivileged

from tuner.storage.rdb import open_storage
from tuner.storage.reader import open_reader
from tuner.storage.urls import StorageError


def _trials_read(url: str) -> tuple[int, str]:
    storage = open_reader(url)
    return len(optuna.load_study(study_name="s", storage=storage).trials), storage.engine.url.database


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_a_reader_reads_a_study_in_a_read_only_folder(open_tmp: Path, journal: str) -> None:
    folder = open_tmp / "read-only"
    folder.mkdir()
    path = folder / "study.db"
    study = optuna.create_study(storage=f"sqlite:///{path}", study_name="s")  # plain Optuna: rollback journal
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    with sqlite3.connect(path) as connection:
        connection.execute(f"PRAGMA journal_mode={journal}")
    path.chmod(0o644)
    folder.chmod(0o555)
    assert unprivileged(_trials_read, f"sqlite:///{path}")[0] == 2
    assert sorted(p.name for p in folder.iterdir()) == ["study.db"]


def test_nothing_is_created_for_a_missing_database(tmp_path: Path) -> None:
    for url in (f"sqlite:///{tmp_path / 'missing.db'}", f"sqlite:///{tmp_path / 'nope' / 'missing.db'}"):
        for open_ in (open_reader, lambda u: open_storage(u, create_schema=False)):
            with pytest.raises(StorageError, match="no database at .*missing.db.*; run the study first"):
                open_(url)
    with pytest.raises(StorageError, match=r"no database at .*missing.db \(folder .*nope does not exist\)"):
        open_reader(f"sqlite:///{tmp_path / 'nope' / 'missing.db'}")
    assert list(tmp_path.iterdir()) == []


def test_a_reader_never_writes_nor_blocks_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "study.db"
    missing = tmp_path / "missing.db"
    with pytest.raises(StorageError, match="no database at .*missing.db; run the study first"):
        open_reader(f"sqlite:///{missing}")
    assert not missing.exists()
    study = optuna.create_study(storage=open_storage(f"sqlite:///{path}"), study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    reader = open_reader(f"sqlite:///{path}")
    seen = optuna.load_study(study_name="s", storage=reader)
    assert len(seen.trials) == 2
    with pytest.raises(optuna.exceptions.StorageInternalError) as err:
        seen.set_user_attr("note", "x")
    assert "readonly database" in str(err.value.__cause__)
    # a reader in the middle of a read transaction does not stop a worker with a short busy timeout
    with reader.engine.connect() as connection:
        connection.exec_driver_sql("BEGIN")
        assert connection.exec_driver_sql("SELECT count(*) FROM trials").scalar() == 2
        writer = sqlite3.connect(path, timeout=0.1)
        writer.execute("UPDATE studies SET study_name = 't'")
        writer.commit()
        writer.close()
        assert connection.exec_driver_sql("SELECT study_name FROM studies").scalar() == "s"  # its snapshot
    assert optuna.load_study(study_name="t", storage=reader).trials[1].number == 1


def test_a_reader_switches_a_rollback_journal_file_to_wal(tmp_path: Path) -> None:
    path = tmp_path / "plain.db"
    optuna.create_study(storage=f"sqlite:///{path}", study_name="plain")  # plain Optuna: rollback journal
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert optuna.load_study(study_name="plain", storage=open_reader(f"sqlite:///{path}")).trials == []
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_reader_refuses_a_file_that_is_not_a_study(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE t (x)")
    with pytest.raises(StorageError, match="holds no Optuna study"):
        open_reader(f"sqlite:///{path}")
