"""Many workers on the real database servers: `tuner run --workers 4`, dropped connections, a restart."""

from __future__ import annotations

import contextlib
import json
import os
import random
import selectors
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
from conftest import replies_lost, require_server
from optuna.trial import TrialState
from processes import assert_exact_budget, finish, start_trivial_workers, wait_for
from trivial_worker import open_trivial_study

from tuner.storage.records import is_not_admitted
from tuner.study.loop import _ask
from tuner.study.recovery import requeue


def test_four_tuner_workers_on_each_backend(study_dir: Path, storage_url: str) -> None:
    name = f"tiny-{uuid.uuid4().hex[:8]}"
    out = subprocess.run(
        [sys.executable, "-m", "tuner", "run", "--study", "tiny", "--workers", "4", "--storage", storage_url,
         f"--set=study.name={name!r}", "--set=study.n_trials=8", "--set=trainer.max_epochs=1",
         "--set=trainer.limit_train_batches=3", "--set=trainer.limit_val_batches=2"],
        cwd=study_dir, capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        study = optuna.load_study(study_name=name, storage=storage_url)
        assert_exact_budget(study, 8)
        assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
        assert len({t.user_attrs["worker"] for t in study.trials}) >= 2
        assert "[w0] " in out.stdout and "progress: 8/8 finished" in out.stdout
        password = sqlalchemy.engine.make_url(storage_url).password
        assert not password or password not in out.stdout + out.stderr
    finally:
        optuna.delete_study(study_name=name, storage=storage_url)


def _terminate_other_backends(admin: sqlalchemy.engine.Engine) -> int:
    with admin.connect() as connection:
        return len(connection.execute(sqlalchemy.text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()")).all())


def test_dropped_connections_lose_no_result() -> None:
    url = require_server("postgresql")
    name = f"drops-{uuid.uuid4().hex[:8]}"
    study = open_trivial_study(url, name)
    admin = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        workers = start_trivial_workers(url, name, 60, k=2, seconds=0.05)
        wait_for(lambda: len(study.get_trials(deepcopy=False)) >= 4, "the first trials")  # mid-study, not start-up
        killed = 0
        while any(w.poll() is None for w in workers):
            killed += _terminate_other_backends(admin)
            time.sleep(0.3)
        results = finish(workers)
        assert killed > 0
        assert all(code == 0 for code, _, _ in results), "\n".join(err[-4000:] for code, _, err in results if code)
        assert_exact_budget(study, 60)
        _assert_complete_or_not_admitted(study)
    finally:
        optuna.delete_study(study_name=name, storage=url)


def _assert_complete_or_not_admitted(study: optuna.Study) -> None:
    """Every trial completed, but those a worker made past the budget after its study lock was lost
    (the server frees a session's lock with its connection) and failed before they ran."""
    trials = study.get_trials(deepcopy=False)
    assert all(t.value is not None for t in trials if t.state == TrialState.COMPLETE)
    assert all(t.state == TrialState.COMPLETE or is_not_admitted(t) for t in trials), [
        (t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in trials if t.state != TrialState.COMPLETE]


def _kill_other_sessions(admin: sqlalchemy.engine.Engine, kind: str, rng: random.Random) -> int:
    """Kill a random half of the other sessions on the study's database; returns how many."""
    with admin.connect() as connection:
        if kind == "postgresql":
            pids = connection.execute(sqlalchemy.text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )).scalars().all()
            chosen = [pid for pid in pids if rng.random() < 0.5]
            for pid in chosen:
                connection.execute(sqlalchemy.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            return len(chosen)
        ids = connection.execute(sqlalchemy.text(
            "SELECT id FROM information_schema.processlist WHERE db = DATABASE() AND id <> CONNECTION_ID()"
        )).scalars().all()
        chosen = [i for i in ids if rng.random() < 0.5]
        for session in chosen:
            with contextlib.suppress(sqlalchemy.exc.DBAPIError):  # it may have ended already
                connection.execute(sqlalchemy.text(f"KILL {int(session)}"))
        return len(chosen)


@pytest.mark.soak
@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_soak_connections_killed_at_random(kind: str) -> None:
    # `make soak`: three workers, 100 trials, sessions killed at random moments. The seed is printed
    # (shown when the test fails); TUNER_SOAK_SEED=SEED replays the same kills' schedule.
    seed = int(os.environ.get("TUNER_SOAK_SEED") or random.SystemRandom().randrange(2**32))
    print(f"soak seed {seed}: replay with TUNER_SOAK_SEED={seed}")
    rng = random.Random(seed)
    url = require_server(kind)
    name = f"soak-{uuid.uuid4().hex[:8]}"
    study = open_trivial_study(url, name)
    admin = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        workers = start_trivial_workers(url, name, 100, k=3, seconds=0.02)
        killed, deadline = 0, time.monotonic() + 600
        while any(w.poll() is None for w in workers):
            assert time.monotonic() < deadline, f"the soak ran past 600 s (seed {seed})"
            killed += _kill_other_sessions(admin, kind, rng)
            time.sleep(rng.uniform(0.05, 0.6))
        results = finish(workers)
        assert killed > 0
        assert all(code == 0 for code, _, _ in results), (seed, results)
        assert_exact_budget(study, 100)
        _assert_complete_or_not_admitted(study)
    finally:
        optuna.delete_study(study_name=name, storage=url)
        admin.dispose()


@pytest.mark.parametrize("failures", [1, 6], ids=["optuna-retries", "tuner-retries"])
@pytest.mark.usefixtures("no_optuna_backoff")
def test_trials_whose_creation_reply_was_lost_are_created_once(failures: int) -> None:
    # the server commits, then its session is terminated before the client reads the reply
    url = require_server("postgresql")
    name = f"lost-{uuid.uuid4().hex[:8]}"
    study = open_trivial_study(url, name)
    admin = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)

    def terminate(dbapi_connection: Any) -> None:
        pid = dbapi_connection.info.backend_pid
        with admin.connect() as connection:
            assert connection.execute(sqlalchemy.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()

    engine = study._storage._backend.engine
    try:
        with replies_lost(engine, failures, drop=terminate) as lost:
            trial = _ask(study, waiting=False)  # the worker's own creation, without a template
        assert len(lost) == failures
        trial.suggest_float("x", -10, 10)
        frozen = study.tell(trial, state=TrialState.FAIL)
        with replies_lost(engine, failures, drop=terminate) as lost:
            assert requeue(study, frozen, max_retries=2)  # a template, WAITING
        assert len(lost) == failures
        trials = optuna.load_study(study_name=name, storage=url).trials
        assert [(t.number, t.state) for t in trials] == [(0, TrialState.FAIL), (1, TrialState.WAITING)]
        assert trials[0]._trial_id == trial._trial_id and trials[1].params == trials[0].params
    finally:
        optuna.delete_study(study_name=name, storage=url)
        admin.dispose()


class _Proxy:
    """A TCP proxy in front of the database; ``outage()`` drops every connection and refuses new ones
    for a while, as a server restart does."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.down = threading.Event()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            if self.down.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.connections += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, server)
        selector.register(server, selectors.EVENT_READ, client)
        try:
            while True:
                for key, _ in selector.select():
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            client.close()
            server.close()

    def outage(self, seconds: float) -> None:
        self.down.set()
        with self.lock:
            for connection in self.connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.connections.clear()
        time.sleep(seconds)
        self.down.clear()


def test_a_database_restart_mid_study_loses_no_result() -> None:
    url = require_server("postgresql")
    parsed = sqlalchemy.engine.make_url(url)
    proxy = _Proxy(parsed.host or "127.0.0.1", parsed.port or 5432)
    proxied = parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    name = f"restart-{uuid.uuid4().hex[:8]}"
    study = open_trivial_study(url, name)
    try:
        workers = start_trivial_workers(proxied, name, 60, k=2, seconds=0.05)
        wait_for(lambda: len(study.get_trials(deepcopy=False)) >= 10, "the first trials")
        proxy.outage(3.0)
        results = finish(workers)
        assert all(code == 0 for code, _, _ in results), results
        assert any("retrying" in err for _, _, err in results)  # the outage was seen, and waited out
        assert sum(json.loads(out)["ran"] for _, out, _ in results) == 60
        assert_exact_budget(study, 60)
        _assert_complete_or_not_admitted(study)
    finally:
        optuna.delete_study(study_name=name, storage=url)


@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_passwords_never_reach_the_output(kind: str, tmp_path: Path) -> None:
    url = require_server(kind)
    bad = sqlalchemy.engine.make_url(url).set(port=1).render_as_string(hide_password=False)
    out = subprocess.run([sys.executable, "-m", "tuner", "studies", "--storage", bad], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    password = sqlalchemy.engine.make_url(url).password
    assert out.returncode == 2 and "cannot open storage" in out.stderr
    assert password and password not in out.stdout + out.stderr and ":***@" in out.stderr
