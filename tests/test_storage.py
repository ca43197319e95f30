from __future__ import annotations

import sqlite3
from pathlib import Path

import optuna
import pytest

from tuner.storage import DEFAULT_URL, StorageError, mask, open_reader, open_storage, resolve_url


def test_url_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNER_STORAGE", raising=False)
    assert resolve_url() == DEFAULT_URL == "sqlite:///tuner.db"
    assert resolve_url(study_file="sqlite:///s.db") == "sqlite:///s.db"
    monkeypatch.setenv("TUNER_STORAGE", "sqlite:///env.db")
    assert resolve_url(study_file="sqlite:///s.db") == "sqlite:///env.db"
    assert resolve_url("sqlite:///cli.db", "sqlite:///s.db") == "sqlite:///cli.db"


def test_passwords_are_masked() -> None:
    assert mask("postgresql://alice:s3cret@db.example/tuner") == "postgresql://alice:***@db.example/tuner"
    assert "s3cret" not in mask("not a url://alice:s3cret@host")
    assert mask("sqlite:///tuner.db") == "sqlite:///tuner.db"


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


def test_sqlite_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are not the tables you are looking for\n" * 100)
    with pytest.raises(StorageError, match="not a usable SQLite database"):
        open_storage(f"sqlite:///{path}")
    assert path.read_text().startswith("these are not")  # nothing lost


def test_bad_url_explains_the_form() -> None:
    with pytest.raises(StorageError, match="bad storage URL.*expected e.g. sqlite:///tuner.db"):
        open_storage("tuner.db")


def test_unreachable_server_is_one_line_without_the_password() -> None:
    with pytest.raises(StorageError) as err:
        open_storage("postgresql://alice:s3cret@127.0.0.1:1/tuner")
    message = str(err.value)
    assert message.startswith("cannot open storage postgresql://alice:***@127.0.0.1:1/tuner")
    assert "s3cret" not in message


def test_missing_or_unknown_driver() -> None:
    with pytest.raises(StorageError, match=r"mysql\+mysqldb://u:\*\*\*@127.0.0.1/x needs a database driver.*"
                       r"pip install 'tuner\[db\]'"):
        open_storage("mysql+mysqldb://u:p@127.0.0.1/x")  # mysqlclient is not a dependency
    with pytest.raises(StorageError, match="unknown database dialect or driver 'mysql\\+nosuchdriver'"):
        open_storage("mysql+nosuchdriver://u:p@127.0.0.1/x")


def test_a_reader_never_writes_nor_blocks_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "study.db"
    missing = tmp_path / "missing.db"
    with pytest.raises(StorageError, match="missing.db does not exist; run the study first"):
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
