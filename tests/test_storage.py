from __future__ import annotations

import sqlite3
import sys
from datetime import datetime
from pathlib import Path

import optuna
import pytest
from conftest import replies_lost, unprivileged
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from tuner.storage import DEFAULT_URL, TOKEN_ATTR, SlotLock, StorageError, mask, open_reader, open_storage, resolve_url
from tuner.worker import _ask


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


def test_the_study_lock_in_a_missing_folder_names_it(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"folder .*nope does not exist"):
        SlotLock(f"sqlite:///{tmp_path / 'nope' / 'x.db'}", "s")
    assert list(tmp_path.iterdir()) == []


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


def _create(how: str, study: optuna.Study) -> int:
    """Create a trial the way ``how`` names; returns its id."""
    if how == "create_new_trial":  # the storage itself, no template
        return int(study._storage._backend.create_new_trial(study._study_id))
    if how == "worker":  # tuner's worker: the cached storage's _create_new_trial, no template
        return _ask(study, waiting=False)._trial_id
    if how == "ask":
        return study.ask()._trial_id
    if how == "enqueue":  # a WAITING template, through the public API
        study.enqueue_trial({"x": 1.0})
        return study.get_trials(deepcopy=False)[-1]._trial_id
    # a COMPLETE template, as study.add_trial passes it to the cached storage
    template = optuna.create_trial(params={"x": 1.0}, distributions={"x": FloatDistribution(0, 2)}, value=3.0)
    return int(study._storage.create_new_trial(study._study_id, template))


@pytest.mark.parametrize("how", ["create_new_trial", "worker", "ask", "enqueue", "add_trial"])
@pytest.mark.parametrize("failures", [1, 6], ids=["optuna-retries", "tuner-retries"])
@pytest.mark.usefixtures("no_optuna_backoff")
def test_a_trial_whose_creation_reply_was_lost_is_created_once(tmp_path: Path, how: str, failures: int) -> None:
    # One lost reply is retried by Optuna's own loop in _create_new_trial; after five, Optuna gives up
    # and ResilientRDBStorage's retry takes over. Either must find the trial the first commit made.
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=open_storage(url), study_name="s")
    before = datetime.now()
    with replies_lost(study._storage._backend.engine, failures) as failed:
        trial_id = _create(how, study)
    after = datetime.now()
    assert len(failed) == failures  # the faults happened
    trials = optuna.load_study(study_name="s", storage=open_storage(url, create_schema=False)).trials
    assert [(t.number, t._trial_id) for t in trials] == [(0, trial_id)]
    state = {"enqueue": TrialState.WAITING, "add_trial": TrialState.COMPLETE}.get(how, TrialState.RUNNING)
    assert trials[0].state == state
    if state == TrialState.RUNNING:  # started by the call, as Optuna starts a trial made without a template
        assert trials[0].datetime_start is not None and before <= trials[0].datetime_start <= after
    if how == "enqueue":
        assert trials[0].system_attrs["fixed_params"] == {"x": 1.0}
    if how == "add_trial":
        assert trials[0].params == {"x": 1.0} and trials[0].value == 3.0
    # the study goes on: the next trial is number 1
    assert study._storage._backend.create_new_trial(study._study_id) != trial_id
    assert [t.number for t in study.get_trials(deepcopy=False)] == [0, 1]


def test_creating_a_trial_looks_for_its_token_only_after_a_lost_reply(tmp_path: Path) -> None:
    from sqlalchemy import event

    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "s")
    statements: list[str] = []
    event.listen(storage.engine, "before_cursor_execute", lambda c, cur, statement, *a: statements.append(statement))
    storage.create_new_trial(study_id)
    assert statements and not [s for s in statements if s.lstrip().upper().startswith("SELECT")
                                and "trial_system_attributes" in s]


@pytest.mark.usefixtures("no_optuna_backoff")
def test_a_trial_copied_from_another_gets_a_token_of_its_own(tmp_path: Path) -> None:
    # a retry queued by RetryHeartbeatStaleTrialCallback copies the failed trial's system attributes
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 'study.db'}"), study_name="s")
    failed = study.ask()
    study.tell(failed, state=TrialState.FAIL)
    copied = optuna.create_trial(state=TrialState.WAITING, system_attrs=study.trials[0].system_attrs)
    with replies_lost(study._storage._backend.engine) as lost:
        retry_id = study._storage.create_new_trial(study._study_id, copied)
    assert lost == [1]
    first, retry = study._storage._backend.get_all_trials(study._study_id)
    assert retry._trial_id == retry_id and retry.state == TrialState.WAITING
    assert retry.system_attrs[TOKEN_ATTR] != first.system_attrs[TOKEN_ATTR]
