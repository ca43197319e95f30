"""Scale: N simulated workers on one study, straight to PostgreSQL and through the gRPC storage proxy.

    python bench/scale.py [--workers 32 128 256] [--storages postgresql grpc] [--trial-s 1.0]
                          [--trials-per-worker 2] [--processes 16]
                          [--postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/tuner_scale]

Each simulated worker runs tuner's worker loop (:func:`tuner.study.loop.work`, heartbeats every 30 s,
stale after 120 s, as ``tuner run`` does; an idle worker looks for others' ended trials every second
at most) on a trivial objective that sleeps ``--trial-s`` seconds, with
its own storage: its own database engine, or its own proxy client. 256 Python processes would not fit
in this machine's memory (about 330 MB each: the worker loop imports torch), so the workers are
threads, spread over ``--processes`` processes; each is a worker as far as the database or the proxy
can tell.

The benchmark creates its PostgreSQL database (``tuner_scale``) and drops it at the end. For each storage
and N, a fresh schema and study with a budget of ``N x --trials-per-worker`` trials; through the proxy,
a fresh ``tuner storage serve`` process in front of it. The clock runs from the moment every worker
process is ready to the last one's exit; a run still going after ``RUN_DEADLINE_S`` is stopped.

Per run: trials/s (finished trials over that time); errors (a worker whose loop raised, or a trial that
failed other than "not admitted"); the peak number of server connections to the database
(``pg_stat_activity``, sampled every 0.1 s); whether the server refused connections (its "too many
clients" error, seen by any worker); ``lost`` (objective runs that returned but whose trial is not stored
COMPLETE) and ``duplicated`` (trials whose objective ran more than once, and trials stored beyond the
exact budget).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

from _common import ROOT, ensure_pg_database, machine, write_results

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/tuner_scale"
RUN_DEADLINE_S = 100.0
HEARTBEAT_S, GRACE_S = 30, 120  # tuner's defaults
POLL_S = 1.0  # an idle worker looks again for others' ended trials at least this often (default: 30 s)
REFUSED = ("too many clients", "remaining connection slots", "too many connections")


def _child(url: str, study_name: str, budget: int, threads: int, trial_s: float) -> None:
    """One process of ``threads`` simulated workers; prints its report as one JSON line."""
    import optuna
    import sqlalchemy.dialects.postgresql.psycopg  # noqa: F401 - imported here, not by N threads at once
    from optuna.storages._rdb import models  # noqa: F401 - the same

    import tuner.storage.proxy  # noqa: F401 - the same
    from tuner.storage.lock import SlotLock
    from tuner.storage.rdb import open_storage
    from tuner.study.loop import work
    from tuner.training.stopping import StopSignals

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    runs: list[tuple[int, int]] = []  # (trial id, number) of each objective run that returned
    errors: list[str] = []

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -10, 10)
        time.sleep(trial_s)
        runs.append((trial._trial_id, trial.number))
        return x * x

    def worker(index: int, ready: threading.Barrier, go: threading.Event) -> None:
        try:
            storage = open_storage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
            study = optuna.load_study(study_name=study_name, storage=storage,
                                      sampler=optuna.samplers.RandomSampler(seed=os.getpid() * 1000 + index))
        except Exception as err:  # noqa: BLE001 - an error of the run: recorded
            errors.append(f"open: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            ready.wait()
            return
        ready.wait()
        go.wait()
        try:
            # a StopSignals not entered: signal handlers belong to the main thread, and nothing signals here
            work(study, objective, budget, lock=SlotLock(url, study_name), signals=StopSignals(),
                 worker=str(index), poll_s=POLL_S)
        except Exception as err:  # noqa: BLE001 - recorded
            errors.append(f"work: {type(err).__name__}: {(str(err).splitlines() or [''])[0]}")
            traceback.print_exc(file=sys.stderr)

    ready, go = threading.Barrier(threads + 1), threading.Event()
    pool = [threading.Thread(target=worker, args=(i, ready, go), daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    ready.wait()
    print("ready", flush=True)
    sys.stdin.readline()
    go.set()
    for thread in pool:
        thread.join()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"runs": runs, "errors": errors, "peak_rss_mb": rss_mb}), flush=True)


def _fresh_database(pg_url: str) -> None:
    """The benchmark's database, created if absent, with an empty schema."""
    import sqlalchemy

    url = ensure_pg_database(pg_url)
    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text("DROP SCHEMA IF EXISTS public CASCADE"))
        connection.execute(sqlalchemy.text("CREATE SCHEMA public"))


def _drop_database(pg_url: str) -> None:
    import sqlalchemy

    from tuner.storage.retry import retrying

    url = sqlalchemy.engine.make_url(pg_url)
    admin = sqlalchemy.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT",
                                     poolclass=sqlalchemy.pool.NullPool)

    def drop() -> None:  # retried: the server may still be out of connections as the workers' close
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))

    retrying(drop, "drop database", pg_url, 60.0)()


class _Connections:
    """Samples the database's server connections (``pg_stat_activity``) in a thread; keeps the peak."""

    def __init__(self, pg_url: str) -> None:
        import sqlalchemy

        url = sqlalchemy.engine.make_url(pg_url)
        self.database = url.database
        # one connection held for the whole run, to the maintenance database: it is not counted
        self.engine = sqlalchemy.create_engine(url.set(database="postgres"), pool_size=1, max_overflow=0)
        self.connection = self.engine.connect()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import sqlalchemy

        query = sqlalchemy.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :name")
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, int(self.connection.execute(query, {"name": self.database}).scalar() or 0))
            self.connection.rollback()

    def __enter__(self) -> _Connections:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.connection.close()
        self.engine.dispose()


def _start_proxy(pg_url: str) -> tuple[subprocess.Popen[str], str]:
    proxy = subprocess.Popen([sys.executable, "-m", "tuner.cli", "storage", "serve", "--storage", pg_url,
                              "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proxy.stdout is not None
    line = proxy.stdout.readline()
    if "listening on " not in line:
        proxy.kill()
        raise SystemExit(f"the storage proxy did not start: {line}{proxy.stderr.read() if proxy.stderr else ''}")
    return proxy, line.split("listening on ")[1].split()[0]


def measure(storage: str, pg_url: str, workers: int, processes: int, budget: int, trial_s: float) -> dict[str, Any]:
    import optuna

    from tuner.storage.rdb import open_storage
    from tuner.storage.reader import open_reader
    from tuner.study.recovery import used_slots

    _fresh_database(pg_url)
    name = f"scale-{storage}-{workers}"
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    creator = open_storage(pg_url)
    optuna.create_study(study_name=name, storage=creator)  # schema and study, before any worker
    creator.engine.dispose()  # its connection would count
    proxy, url = (_start_proxy(pg_url) if storage == "grpc" else (None, pg_url))
    shares = [workers // processes + (i < workers % processes) for i in range(min(processes, workers))]
    reports: list[dict[str, Any]] = []
    stderr: list[str] = []
    timed_out = False
    children: list[subprocess.Popen[str]] = []
    # sampled from before the workers connect: a server out of connections could not refuse the sampler
    with _Connections(pg_url) as connections:
        try:
            children = [subprocess.Popen([sys.executable, __file__, "--child", url, name, str(budget), str(k),
                                          str(trial_s)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, cwd=ROOT) for k in shares]
            for child in children:
                assert child.stdout is not None
                if child.stdout.readline().strip() != "ready":
                    raise SystemExit(f"a worker process failed to start: {child.communicate()[1][-2000:]}")
            started = time.perf_counter()
            for child in children:
                assert child.stdin is not None
                child.stdin.write("go\n")
                child.stdin.flush()
            for child in children:
                try:
                    out, err = child.communicate(timeout=max(1.0, RUN_DEADLINE_S - (time.perf_counter() - started)))
                except subprocess.TimeoutExpired:
                    timed_out = True
                    child.kill()
                    out, err = child.communicate()
                stderr.append(err)
                lines = [line for line in out.splitlines() if line.startswith("{")]
                reports.append(json.loads(lines[-1]) if lines else {"runs": [], "errors": ["killed"],
                                                                    "peak_rss_mb": 0})
            seconds = time.perf_counter() - started
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
            if proxy is not None:
                proxy.terminate()
                proxy.wait(30)
    proxy_rss = None
    trials = optuna.load_study(study_name=name, storage=open_reader(pg_url)).get_trials(deepcopy=False)
    by_id = {t._trial_id: t for t in trials}
    runs = Counter(trial_id for report in reports for trial_id, _ in report["runs"])
    errors = [e for report in reports for e in report["errors"]]
    not_admitted = [t for t in trials if t.state.name == "FAIL" and t.user_attrs.get("not_admitted")]
    failed = [t for t in trials if t.state.name == "FAIL" and not t.user_attrs.get("not_admitted")]
    finished = sum(t.state.is_finished() for t in trials) - len(not_admitted)
    complete = sum(t.state.name == "COMPLETE" for t in trials)
    lost = sum(1 for trial_id in runs if by_id[trial_id].state.name != "COMPLETE")
    duplicated = sum(n - 1 for n in runs.values()) + max(0, complete - budget)
    refused = any(word in text.lower() for text in errors + stderr for word in REFUSED)
    row = {
        "storage": storage, "workers": workers, "processes": len(children), "budget": budget,
        "trials_per_s": round(finished / seconds, 2), "seconds": round(seconds, 1),
        "errors": len(errors) + len(failed), "error_examples": sorted(set(errors))[:3],
        "failed_trials": len(failed), "not_admitted": len(not_admitted),
        "peak_server_connections": connections.peak, "server_refused_connections": refused,
        "lost": lost, "duplicated": duplicated, "finished": finished,
        "exact_budget": used_slots(trials) == budget and not any(not t.state.is_finished() for t in trials),
        "timed_out": timed_out,
        "worker_process_peak_rss_mb": round(max((r["peak_rss_mb"] for r in reports), default=0), 1),
        "memory_per_worker_mb": round(sum(r["peak_rss_mb"] for r in reports) / workers, 1),
    }
    if proxy_rss is not None:
        row["proxy_rss_mb"] = proxy_rss
    print(f"{storage:>10} N={workers:>4}: {row['trials_per_s']:6.2f} trials/s in {row['seconds']:5.1f} s, "
          f"errors {row['errors']}, peak connections {row['peak_server_connections']}, refused {refused}, "
          f"lost {lost}, duplicated {duplicated}, exact budget {row['exact_budget']}, "
          f"not admitted {len(not_admitted)}", flush=True)
    return row


def _memory() -> dict[str, Any]:
    fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
    return {"total_gib": round(int(fields["MemTotal"].split()[0]) / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[32, 128, 256])
    parser.add_argument("--storages", nargs="+", default=["postgresql", "grpc"], choices=["postgresql", "grpc"])
    parser.add_argument("--trial-s", type=float, default=1.0)
    parser.add_argument("--trials-per-worker", type=int, default=2)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--postgres-url", default=DEFAULT_PG_URL)
    args = parser.parse_args()
    import sqlalchemy

    _fresh_database(args.postgres_url)
    engine = sqlalchemy.create_engine(args.postgres_url, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as connection:
        server = {"version": connection.execute(sqlalchemy.text("SHOW server_version")).scalar(),
                  "max_connections": connection.execute(sqlalchemy.text("SHOW max_connections")).scalar()}
    runs: list[dict[str, Any]] = []
    try:
        for workers in args.workers:
            for storage in args.storages:
                runs.append(measure(storage, args.postgres_url, workers, args.processes,
                                    workers * args.trials_per_worker, args.trial_s))
                _write(args, server, runs)  # after each run: a long run cut short keeps the others
    finally:
        _drop_database(args.postgres_url)


def _write(args: argparse.Namespace, server: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    refused = [r["workers"] for r in runs if r["storage"] == "postgresql" and r["server_refused_connections"]]
    write_results("scale.json", {
        "machine": {**machine(None), "memory": _memory(), "platform": platform.platform()},
        "postgresql": server,
        "settings": {"trial_s": args.trial_s, "trials_per_worker": args.trials_per_worker,
                     "processes": args.processes, "heartbeat_interval": HEARTBEAT_S, "grace_period": GRACE_S,
                     "poll_s": POLL_S, "proxy_threads": 10, "run_deadline_s": RUN_DEADLINE_S,
                     "workers_are": "threads spread over --processes processes (256 processes would not fit "
                                    "in memory); each has its own storage: its own engine, or its own proxy client"},
        "postgresql_refused_connections_at": min(refused) if refused else None,
        "runs": runs,
    })

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]))
    else:
        main()
