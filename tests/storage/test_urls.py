"""Storage URLs: precedence, masked passwords, bad forms, unreachable servers and missing drivers."""

from __future__ import annotations

import sys

import pytest

from tuner.storage.lock import SlotLock
from tuner.storage.rdb import open_storage
from tuner.storage.urls import DEFAULT_URL, StorageError, mask, resolve_url


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


def test_bad_url_explains_the_form() -> None:
    with pytest.raises(StorageError, match="bad storage URL.*expected e.g. sqlite:///tuner.db"):
        open_storage("tuner.db")


def test_unreachable_server_is_one_line_without_the_password() -> None:
    with pytest.raises(StorageError) as err:
        open_storage("postgresql://alice:s3cret@127.0.0.1:1/tuner")
    message = str(err.value)
    assert message.startswith("cannot open storage postgresql://alice:***@127.0.0.1:1/tuner")
    assert "s3cret" not in message


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("mysql://u:p@127.0.0.1/x", "needs the driver module MySQLdb, which is not installed: use "
         "mysql+pymysql://u:***@127.0.0.1/x (pip install 'tuner[db]'), or install MySQLdb"),
        ("mysql+mysqldb://u:p@127.0.0.1/x", "use mysql+pymysql://u:***@127.0.0.1/x (pip install 'tuner[db]')"),
        ("postgresql+psycopg2://u:p@127.0.0.1/x", "needs the driver module psycopg2, which is not installed: use "
         "postgresql+psycopg://u:***@127.0.0.1/x (pip install 'tuner[db]'), or install psycopg2"),
    ],
)
def test_a_driver_tuner_db_does_not_install_is_named(url: str, hint: str) -> None:
    for open_ in (open_storage, lambda u: SlotLock(u, "s")):
        with pytest.raises(StorageError) as err:
            open_(url)
        assert hint in str(err.value) and ":p@" not in str(err.value)


@pytest.mark.parametrize("module", ["pymysql", "psycopg"])
def test_a_driver_tuner_db_installs_is_the_extra(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    url = f"{'mysql+pymysql' if module == 'pymysql' else 'postgresql+psycopg'}://u:p@127.0.0.1/x"
    with pytest.raises(StorageError) as err:
        open_storage(url)
    assert f"needs the driver module {module}, which is not installed: pip install 'tuner[db]'" in str(err.value)
    assert ":p@" not in str(err.value)


def test_unknown_driver() -> None:
    with pytest.raises(StorageError, match="unknown database dialect or driver 'mysql\\+nosuchdriver'"):
        open_storage("mysql+nosuchdriver://u:p@127.0.0.1/x")


def test_a_refused_connection_wrapped_by_optuna_says_what_the_server_said() -> None:
    import optuna
    import psycopg
    import sqlalchemy

    from tuner.storage.urls import unreachable

    refused = psycopg.OperationalError("connection failed: FATAL:  sorry, too many clients already")
    try:
        try:
            raise sqlalchemy.exc.OperationalError("SELECT 1", {}, refused)
        except sqlalchemy.exc.OperationalError as err:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from err
    except optuna.exceptions.StorageInternalError as wrapped:
        message = str(unreachable(wrapped, "postgresql://u:hunter2@db/x"))
    assert message == ("cannot open storage postgresql://u:***@db/x: connection failed: FATAL:  sorry, too many "
                       "clients already")
