"""The gRPC storage proxy: a worker's whole loop through it, heartbeats and stale trials, and a proxy that
dies at a chosen write, after its commit and before its reply, and comes back on the same port."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import age_heartbeats, heartbeat_rows, require_server, started_by_a_worker
from optuna.trial import TrialState
from processes import assert_exact_budget

from tuner.errors import TunerError
from tuner.keys import HEARTBEAT_ATTR, REQUEST_ATTR, STARTED_ATTR, TOKEN_ATTR
from tuner.storage.lock import SlotLock
from tuner.storage.proxy import make_server, open_backend, open_proxy
from tuner.storage.rdb import database_time, heartbeat_settings, open_storage
from tuner.storage.urls import StorageError, proxy_address
from tuner.study.loop import work
from tuner.study.open import load_study_file, open_study
from tuner.study.recovery import fail_stale, reap
from tuner.study.run import BASELINE_TOKEN, _enqueue_baseline
from tuner.training.stopping import StopSignals

HEARTBEAT_S, GRACE_S = 1, 10


class Proxy:
    """A storage proxy in this process that can die after a chosen write commits, before it replies, and
    come back at once on the same port, over a fresh storage (as a restarted proxy process would)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.backend = open_backend(url)
        self.server, self.port = make_server(self.backend, "127.0.0.1", 0)
        self.server.start()
        self.deaths: list[str] = []

    @property
    def address(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def die_after(self, write: str, when: Callable[[Any], bool] = lambda result: True) -> None:
        """Die once, after the first call of the backend's ``write`` whose result ``when`` accepts."""
        original = getattr(self.backend, write)

        def dying(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)  # committed
            if not self.deaths and when(result):
                self.deaths.append(write)
                self.restart()
            return result

        setattr(self.backend, write, dying)

    def restart(self) -> None:
        self.server.stop(0)  # the calls in progress are aborted: their replies are lost
        self.backend = open_backend(self.url)
        self.server, _ = make_server(self.backend, "127.0.0.1", self.port)
        self.server.start()

    def stop(self) -> None:
        self.server.stop(0).wait()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return require_server("postgresql")


@pytest.fixture
def proxy(database: str) -> Iterator[Proxy]:
    served = Proxy(database)
    yield served
    served.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _study(address: str, name: str) -> optuna.Study:
    storage = open_storage(address, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                               sampler=optuna.samplers.RandomSampler(seed=0))


def _run(study: optuna.Study, address: str, budget: int) -> list[int]:
    """One worker's loop through the proxy; the trial numbers its objective ran."""
    ran: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        ran.append(trial.number)
        return float(trial.suggest_float("x", -10, 10) ** 2)

    with StopSignals() as signals:
        work(study, objective, budget, lock=SlotLock(address, study.study_name), signals=signals)
    return ran


def _unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"  # the PostgreSQL test database is shared by the tests


def test_proxy_urls_are_checked() -> None:
    assert proxy_address("grpc://127.0.0.1:13000") == ("127.0.0.1", 13000)
    for bad in ("grpc://127.0.0.1", "grpc://:13000", "grpc://host:13000/db", "grpc://u:secret@host:1"):
        with pytest.raises(StorageError, match="expected grpc://HOST:PORT") as err:
            proxy_address(bad)
        assert "secret" not in str(err.value)


def test_a_proxy_that_does_not_answer_is_named_at_once() -> None:
    port = _free_port()
    with pytest.raises(StorageError, match=f"no storage proxy answered.*tuner storage serve.*--port {port}"):
        open_proxy(f"grpc://127.0.0.1:{port}")


def test_a_worker_through_the_proxy_keeps_the_budget_exact(proxy: Proxy) -> None:
    study = _study(proxy.address, _unique("through"))
    ran = [n for _ in range(2) for n in _run(study, proxy.address, 5)]  # the second finds the budget spent
    assert sorted(ran) == list(range(5))
    assert_exact_budget(study, 5)
    trials = study.get_trials(deepcopy=False)
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert all(REQUEST_ATTR not in t.system_attrs and TOKEN_ATTR in t.system_attrs for t in trials)


def test_the_baseline_is_queued_once_by_workers_without_a_lock(proxy: Proxy) -> None:
    name = _unique("baseline")
    studies = [_study(proxy.address, name) for _ in range(2)]
    for study in studies:
        _enqueue_baseline(study, {"x": 1.0})
        _enqueue_baseline(study, {"x": 1.0})
    trials = studies[0].get_trials(deepcopy=False)
    assert [(t.state, t.user_attrs, t.system_attrs.get(TOKEN_ATTR)) for t in trials] == [
        (TrialState.WAITING, {"baseline": True}, BASELINE_TOKEN)]


def test_heartbeats_and_stale_trials_work_through_the_proxy(proxy: Proxy, database: str) -> None:
    study = _study(proxy.address, _unique("stale"))
    storage = study._storage
    # each gets its first heartbeat as it is created
    live, dead, reaped = (storage.get_trial(storage.create_new_trial(study._study_id)) for _ in range(3))
    study._storage.record_heartbeat(live._trial_id)
    age_heartbeats(database, [dead._trial_id], 3600)  # the proxy recorded the trial's first heartbeat
    assert study._storage._get_stale_trial_ids(study._study_id) == [dead._trial_id]
    assert fail_stale(study, max_retries=2) == [dead.number]
    age_heartbeats(database, [reaped._trial_id], 3600)
    assert [r.number for r in reap(study, 2)] == [reaped.number]  # `tuner reap`
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.RUNNING, TrialState.FAIL, TrialState.FAIL,
                                         TrialState.WAITING, TrialState.WAITING]
    assert trials[1].user_attrs["fail_reason"].startswith("stale: the heartbeat of")
    assert [t.system_attrs["failed_trial"] for t in trials[3:]] == [dead.number, reaped.number]


def test_stale_trials_through_the_proxy_follow_the_grace_period_stored_with_the_study(
        proxy: Proxy, database: str) -> None:
    study = _study(proxy.address, _unique("grace"))  # a worker that asks for a grace period of GRACE_S
    study.set_user_attr(HEARTBEAT_ATTR, heartbeat_settings(HEARTBEAT_S, 600))  # the study was created with 600 s
    trial = study._storage.get_trial(study._storage.create_new_trial(study._study_id))
    age_heartbeats(database, [trial._trial_id], 60)
    assert fail_stale(study, max_retries=2) == []  # a live trial to the study, though not to this worker
    age_heartbeats(database, [trial._trial_id], 600)
    assert fail_stale(study, max_retries=2) == [trial.number]


@pytest.mark.parametrize("interval", [0, 30], ids=["off", "on"])
def test_a_trial_gets_a_first_heartbeat_through_the_proxy_only_if_its_study_has_heartbeats(
        proxy: Proxy, database: str, study_dir: Path, interval: int) -> None:
    """The proxy serves studies with different settings: its own do not decide."""
    run = load_study_file(str(study_dir / "studies" / "tiny.toml"),
                          [f'study.name="{_unique("first-beat")}"', f"study.heartbeat_interval={interval}"])
    study = open_study(run, proxy.address)
    storage = study._storage
    created = storage.create_new_trial(study._study_id)  # RUNNING as it is made
    study.enqueue_trial({"learning_rate": 1e-4, "batch_size": 8})
    [queued] = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert storage.set_trial_state_values(queued._trial_id, TrialState.RUNNING)  # taken up
    assert heartbeat_rows(database, [created, queued._trial_id]) == (2 if interval else 0)


def test_a_worker_with_other_heartbeat_settings_is_refused_through_the_proxy(proxy: Proxy, study_dir: Path) -> None:
    name = _unique("refused")
    tiny = str(study_dir / "studies" / "tiny.toml")
    open_study(load_study_file(tiny, [f'study.name="{name}"']), proxy.address)
    with pytest.raises(TunerError) as err:
        open_study(load_study_file(tiny, [f'study.name="{name}"', "study.grace_period=70"]), proxy.address)
    assert str(err.value) == (f"study {name!r} in {proxy.address} has grace_period 120, not 70 (heartbeat settings are "
                              "fixed when a study is created: every worker judges stale trials by them); use "
                              "--set study.grace_period=120")


def test_reap_through_the_proxy_judges_age_by_the_database_clock(proxy: Proxy) -> None:
    study = _study(proxy.address, _unique("clock"))
    storage = study._storage
    west, east = (started_by_a_worker(storage, study._study_id, hours) for hours in (-5, 5))
    now = database_time(storage)
    assert now is not None and abs(now - proxy.backend.database_time()) < 60
    assert 0 <= now - west.system_attrs[STARTED_ATTR] < 60  # recorded by the proxy's database
    storage.set_trial_system_attr(east._trial_id, STARTED_ATTR, east.system_attrs[STARTED_ATTR] - 7200)
    assert [r.number for r in reap(study, 0, older_than=3600)] == [east.number]


@pytest.mark.parametrize("write", ["create", "claim", "finish"])
def test_a_proxy_that_dies_after_a_commit_loses_and_duplicates_nothing(
        proxy: Proxy, write: str, caplog: pytest.LogCaptureFixture) -> None:
    name = _unique(f"dies-{write}")
    study = _study(proxy.address, name)
    if write == "claim":
        study.enqueue_trial({"x": 1.0})
        proxy.die_after("claim")
    elif write == "create":
        proxy.die_after("_create_new_trial", lambda trial: trial.number == 1)
    else:
        proxy.die_after("set_trial_state_values", lambda stored: True)
    caplog.set_level(logging.INFO, logger="tuner")
    ran = _run(study, proxy.address, 4)
    assert proxy.deaths  # the proxy died where the test chose
    assert sorted(ran) == list(range(4))  # each trial ran once
    assert_exact_budget(study, 4)
    assert all(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    # the repeat through the restarted proxy found its own commit
    assert any("whose reply was lost" in r.getMessage() for r in caplog.records)


def test_reports_and_the_dashboard_read_through_the_proxy(proxy: Proxy) -> None:
    from wsgiref.util import setup_testing_defaults

    from tuner.dashboard import build_app, study_path
    from tuner.report.snapshot import load_snapshot
    from tuner.storage.reader import open_reader

    name = _unique("read")
    study = _study(proxy.address, name)
    _run(study, proxy.address, 3)
    snapshot = load_snapshot(name, proxy.address)
    assert [t.number for t in snapshot.trials] == [0, 1, 2] and snapshot.storage == proxy.address
    backend = open_reader(proxy.address)
    app = build_app(backend)
    page = study_path(backend, name, proxy.address)  # /dashboard/studies/ID, the page `tuner dashboard` opens
    environ: dict[str, Any] = {"PATH_INFO": page.replace("/dashboard/", "/api/")}
    setup_testing_defaults(environ)
    statuses: list[str] = []
    body = b"".join(app(environ, lambda status, headers, *exc: statuses.append(status)))
    assert statuses == ["200 OK"]
    assert len(json.loads(body)["trials"]) == 3


def test_a_creation_served_twice_by_two_proxies_makes_one_trial(proxy: Proxy) -> None:
    # A proxy stopped while its handler retries a creation, and the restarted proxy serving the client's
    # repeat: both commit the same request. The second must find the first's trial.
    study = _study(proxy.address, _unique("twice"))
    original = proxy.backend._create_new_trial  # what the proxy's cache calls

    def served_twice(study_id: int, template: Any = None) -> Any:
        first = original(study_id, template)
        original(study_id, template)  # the other proxy's handler, committing the same request
        return first

    proxy.backend._create_new_trial = served_twice
    trial = study.ask()
    assert [t.number for t in study.get_trials(deepcopy=False)] == [trial.number]


class _Looking(StopSignals):
    """A worker's signals, not installed (it runs in a thread), telling when the worker first waits."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def sleep(self, seconds: float) -> None:
        self.waiting.set()
        super().sleep(seconds)


@pytest.mark.parametrize("write", ["queue", "fail"])
@pytest.mark.parametrize("fault", ["interrupted", "study_error"])
def test_a_worker_counting_during_a_failure_through_the_proxy_neither_stops_early_nor_overshoots(
        proxy: Proxy, fault: str, write: str) -> None:
    # The proxy has no study lock. A worker fails its running trial (a signal, or an error of the study) in
    # two writes, its retry queued and the trial failed; another worker starts as one of those writes
    # reaches the proxy, and counts the budget. It must neither stop with the retry left to no one, nor
    # start a trial beyond the budget.
    budget = 2
    study = _study(proxy.address, _unique("counting"))
    first = study.ask()
    study.tell(first, float(first.suggest_float("x", -10, 10)))
    other = _study(proxy.address, study.study_name)
    signals = _Looking()
    threads: list[threading.Thread] = []

    def other_worker() -> None:
        work(other, lambda trial: float(trial.suggest_float("x", -10, 10)), budget,
             lock=SlotLock(proxy.address, study.study_name), signals=signals, poll_s=0.1, timeout=30)

    def start_the_other_worker() -> None:
        threads.append(threading.Thread(target=other_worker))
        threads[0].start()
        signals.waiting.wait(10)  # until it has counted and waits for the running trial, or has ended

    backend = proxy.backend
    method = {"queue": "_create_new_trial", "fail": "set_trial_state_values"}[write]  # what the proxy calls
    original = getattr(backend, method)

    def watched(*args: Any, **kwargs: Any) -> Any:
        if write == "queue":
            template = kwargs.get("template_trial", args[1] if len(args) > 1 else None)
            chosen = template is not None and template.state == TrialState.WAITING
        else:
            chosen = kwargs.get("state", args[1] if len(args) > 1 else None) == TrialState.FAIL
        if chosen and not threads:
            start_the_other_worker()
        return original(*args, **kwargs)

    setattr(backend, method, watched)

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", -10, 10)
        if fault == "study_error":
            raise TunerError("data file gone")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
        raise AssertionError("the signal did not stop the trial")

    with StopSignals() as own, contextlib.suppress(TunerError):
        work(study, objective, budget, lock=SlotLock(proxy.address, study.study_name), signals=own)
    assert threads, "the other worker never started"
    threads[0].join(30)
    assert not threads[0].is_alive()
    trials = study.get_trials(deepcopy=False)
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], trials
    assert sum(t.state == TrialState.COMPLETE for t in trials) == budget
