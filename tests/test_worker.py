"""The worker loop: exact budgets across processes, stale and interrupted trials, retries, reaping."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from conftest import replies_lost
from optuna.trial import TrialState
from trivial_worker import open_trivial_study

from tuner import storage as storage_module
from tuner.config import RunConfig, SamplerConfig
from tuner.errors import DataError, TunerError
from tuner.runner import _progress_line
from tuner.search import build_sampler
from tuner.storage import SlotLock, StorageError, check_sqlite_for_workers, retrying
from tuner.worker import StopSignals, fail_stale, reap, requeue, used_slots, work

HERE = Path(__file__).resolve().parent


def start_trivial_workers(url: str, name: str, budget: int, k: int,
                          seconds: float = 0.0) -> list[subprocess.Popen[str]]:
    return [subprocess.Popen([sys.executable, str(HERE / "trivial_worker.py"), url, name, str(budget), str(seconds)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(k)]


def finish(workers: list[subprocess.Popen[str]], timeout: float = 240) -> list[tuple[int, str, str]]:
    out = []
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=timeout)
        out.append((worker.returncode, stdout, stderr))
    return out


def assert_exact_budget(study: optuna.Study, budget: int) -> None:
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))  # no trial recorded twice
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert used_slots(trials) == budget


def wait_for(condition: Callable[[], object], what: str, timeout: float = 120,
             process: subprocess.Popen[str] | None = None) -> object:
    """Poll ``condition`` until it is truthy (the event is in another process: there is nothing to join).

    With ``process``, the process the event depends on: its exit fails the wait at once, with its output.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"the process exited ({process.returncode}) before {what}:\n"
                                 f"{out[-2000:]}{err[-4000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_four_workers_share_one_budget_exactly(storage_url: str) -> None:
    name = f"budget-{uuid.uuid4().hex[:8]}"
    study = open_trivial_study(storage_url, name)
    try:
        results = finish(start_trivial_workers(storage_url, name, 40, k=4, seconds=0.02))
        assert all(code == 0 for code, _, _ in results), results
        assert sum(json.loads(out)["ran"] for _, out, _ in results) == 40
        assert_exact_budget(study, 40)
        assert all(t.state == TrialState.COMPLETE for t in study.trials)
        workers = {t.user_attrs["pid"] for t in study.trials}
        assert len(workers) > 1  # the work was shared
    finally:
        optuna.delete_study(study_name=name, storage=storage_url)


def test_eight_sqlite_workers_never_see_a_locked_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'busy.db'}"
    study = open_trivial_study(url, "busy")
    results = finish(start_trivial_workers(url, "busy", 120, k=8))
    assert all(code == 0 for code, _, _ in results), results
    assert not [err for _, _, err in results if "locked" in err]
    assert_exact_budget(study, 120)


def test_used_slots_leave_out_failures_that_were_retried(tmp_path: Path) -> None:
    study = open_trivial_study(f"sqlite:///{tmp_path / 's.db'}", "slots")
    first = study.ask()
    first.suggest_float("x", -10, 10)
    frozen = study.tell(first, state=TrialState.FAIL)
    assert used_slots(study.get_trials()) == 1
    assert requeue(study, frozen, max_retries=1)
    assert used_slots(study.get_trials()) == 1  # the retry holds the failed trial's slot
    retry = study.ask()
    assert retry.params == first.params
    assert not requeue(study, study.tell(retry, state=TrialState.FAIL), max_retries=1)  # limit reached
    assert used_slots(study.get_trials()) == 1


@pytest.mark.parametrize("failures", [1, 6], ids=["optuna-retries", "tuner-retries"])
@pytest.mark.usefixtures("no_optuna_backoff")
def test_a_retry_whose_queuing_reply_was_lost_is_queued_once(tmp_path: Path, failures: int) -> None:
    study = open_trivial_study(f"sqlite:///{tmp_path / 's.db'}", "requeue")
    first = study.ask()
    first.suggest_float("x", -10, 10)
    frozen = study.tell(first, state=TrialState.FAIL)
    with replies_lost(study._storage._backend.engine, failures) as failed:
        assert requeue(study, frozen, max_retries=2)
    assert len(failed) == failures
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.WAITING]
    assert used_slots(study.get_trials()) == 1
    retry = study.ask()  # the retry, though it inherited the failed trial's creation token
    assert retry.number == 1 and retry.params == first.params
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.RUNNING]


def test_a_stale_trial_is_failed_with_its_reason_and_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = open_trivial_study(url, "stale")
    trial = study.ask()
    trial.suggest_float("x", -10, 10)
    trial.set_user_attr("worker", "w9")
    study._storage.record_heartbeat(trial._trial_id)
    assert fail_stale(study, max_retries=2) == []  # the heartbeat is fresh
    monkeypatch.setattr(type(study._storage._backend), "_get_stale_trial_ids", lambda self, study_id: [trial._trial_id])
    assert fail_stale(study, max_retries=2) == [trial.number]
    failed, retry = study.get_trials()
    assert failed.state == TrialState.FAIL and failed.user_attrs["fail_reason"].startswith("stale: the heartbeat of "
                                                                                           "worker w9")
    assert retry.state == TrialState.WAITING and retry.params == failed.params
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == failed.number


def test_the_worker_loop_stops_on_a_signal_and_requeues_the_trial(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = open_trivial_study(url, "signal")

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", -10, 10)
        if trial.number == 1:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted: the handler raises at once outside deferred code
        return 1.0

    with StopSignals() as signals:
        result = work(study, objective, 10, lock=SlotLock(url, "signal"), signals=signals)
    assert result.interrupted == "SIGTERM" and result.ran == 2
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert study.trials[1].user_attrs["fail_reason"] == "interrupted by SIGTERM; queued for retry"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back


def test_lightnings_own_sigterm_exit_also_requeues_the_trial(tmp_path: Path) -> None:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    url = f"sqlite:///{tmp_path / 's.db'}"
    study = open_trivial_study(url, "lightning-exit")
    with StopSignals() as signals:

        def objective(trial: optuna.Trial) -> float:
            trial.suggest_float("x", -10, 10)
            with signals.deferred():  # as inside training, where Lightning may see the signal first
                os.kill(os.getpid(), signal.SIGTERM)
            raise SIGTERMException  # a SystemExit

        result = work(study, objective, 10, lock=SlotLock(url, "lightning-exit"), signals=signals)
    assert result.interrupted == "SIGTERM"
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]
    assert study.trials[0].user_attrs["fail_reason"] == "interrupted by SIGTERM; queued for retry"


def test_an_error_of_the_study_stops_the_worker_and_spends_no_budget(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = open_trivial_study(url, "study-error")
    study.enqueue_trial({"x": 1.0}, user_attrs={"baseline": True})

    def missing_data(trial: optuna.Trial) -> float:
        trial.suggest_float("x", -10, 10)
        raise DataError("data file train.txt does not exist")

    with StopSignals() as signals, pytest.raises(DataError, match="train.txt does not exist"):
        work(study, missing_data, 3, lock=SlotLock(url, "study-error"), signals=signals)
    failed, queued = study.trials
    assert failed.state == TrialState.FAIL and failed.user_attrs["study_error"]
    assert failed.user_attrs["fail_reason"] == "DataError: data file train.txt does not exist"
    assert queued.state == TrialState.WAITING and queued.params == {"x": 1.0} and queued.user_attrs["baseline"]
    assert used_slots(study.trials) == 1  # the queued trial; the failure is not counted
    with StopSignals() as signals:  # the data are back: the study runs to its budget
        result = work(study, lambda t: t.suggest_float("x", -10, 10), 3, lock=SlotLock(url, "study-error"),
                      signals=signals)
    assert result.ran == 3 and result.repeated_failure is None
    assert [t.state for t in study.trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * 3
    retry = study.trials[1]
    assert retry.user_attrs["retry_of"] == 0 and retry.user_attrs["baseline"] and retry.params == {"x": 1.0}
    assert not retry.user_attrs.get("study_error") and not retry.user_attrs.get("fail_reason")
    assert used_slots(study.trials) == 3
    assert _progress_line(study.trials, 3) == "3/3 finished (3 complete, 0 pruned, 0 failed), 0 running"


def test_the_same_failure_three_times_in_a_row_stops_the_worker(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = open_trivial_study(url, "same-failure")
    errors = iter(["one", "two", "one", None, "one", "one", "one", "one"])

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", -10, 10)
        error = next(errors)
        if error is not None:
            raise RuntimeError(f"{error}\nsecond line")
        return 1.0

    with StopSignals() as signals:
        result = work(study, objective, 20, lock=SlotLock(url, "same-failure"), signals=signals)
    assert result.ran == 7  # "one" after "two", or after a success, starts the count again
    assert result.repeated_failure == "3 trials in a row failed with the same error: RuntimeError: one"
    assert [t.state for t in study.trials].count(TrialState.FAIL) == 6


def test_grid_exhaustion_ends_the_worker(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    storage = open_trivial_study(url, "unused")._storage
    study = optuna.create_study(study_name="grid", storage=storage,
                                sampler=optuna.samplers.GridSampler({"x": [1.0, 2.0, 3.0]}))
    with StopSignals() as signals:
        result = work(study, lambda t: t.suggest_float("x", 0, 5), 10, lock=SlotLock(url, "grid"), signals=signals)
    assert result.ran == 3 and len(study.trials) == 3


def test_reap_fails_trials_of_dead_workers_and_old_ones(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = open_trivial_study(url, "reap")
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead, old, alive = study.ask(), study.ask(), study.ask()
    for trial, pid in ((dead, gone.pid), (old, os.getpid()), (alive, os.getpid())):
        trial.suggest_float("x", -10, 10)
        trial.set_user_attr("host", os.uname().nodename)
        trial.set_user_attr("pid", pid)
    reaped = reap(study, max_retries=2)
    assert [r["number"] for r in reaped] == [dead.number] and reaped[0]["retried"]
    assert "is no longer running" in reaped[0]["reason"]
    reaped = reap(study, max_retries=0, older_than=1e-9)
    assert sorted(r["number"] for r in reaped) == [old.number, alive.number]
    assert not any(r["retried"] for r in reaped)
    by_number = {t.number: t for t in study.trials}
    assert by_number[old.number].user_attrs["fail_reason"].endswith("retry limit of 0 reached")


def test_storage_calls_are_retried_through_transient_errors(caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))
        return "ok"

    assert retrying(flaky, "query", "postgresql://u:hunter2@db/x")() == "ok" and len(calls) == 3
    assert "retrying" in caplog.text and "hunter2" not in caplog.text

    def broken() -> None:
        raise ValueError("not transient")

    with pytest.raises(ValueError):
        retrying(broken, "query", "sqlite:///x.db")()


def test_sqlite_on_a_network_file_system_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    monkeypatch.setattr(storage_module, "_mounts", lambda: [("/", "ext4"), (str(tmp_path), "nfs4")])
    with pytest.raises(StorageError, match=r"network file system \(nfs4\).*use PostgreSQL or MySQL"):
        check_sqlite_for_workers(url, 1)
    monkeypatch.setattr(storage_module, "_mounts", lambda: [("/", "ext4")])
    check_sqlite_for_workers(url, 8)
    assert "use PostgreSQL" not in caplog.text
    check_sqlite_for_workers(url, 9)
    assert "9 workers share the SQLite file" in caplog.text and "use PostgreSQL or MySQL" in caplog.text


def test_tuners_tpe_spreads_trials_that_run_at_once() -> None:
    """Four workers asking at the same moment, simulated by four asks before any tell: with its constant
    liar (tuner's default), TPE gives them different backbones and batch sizes; without, mostly the same."""

    def score(backbone: str, batch_size: int) -> float:
        return {"a": 0.6, "b": 0.5, "c": 0.3}[backbone] + {8: 0.05, 16: 0.1, 32: 0.0}[batch_size]

    def distinct_per_batch(seed: int, **options: object) -> float:
        sampler = build_sampler(SamplerConfig(type="tpe", seed=seed, options={"n_startup_trials": 4, **options}),
                                RunConfig(name="tpe"))
        study = optuna.create_study(direction="maximize", sampler=sampler)

        def ask() -> tuple[optuna.Trial, tuple[str, int]]:
            trial = study.ask()
            return trial, (trial.suggest_categorical("backbone", ["a", "b", "c"]),
                           trial.suggest_categorical("batch_size", [8, 16, 32]))

        for _ in range(4):
            trial, config = ask()
            study.tell(trial, score(*config))
        distinct = []
        for _ in range(4):
            batch = [ask() for _ in range(4)]
            distinct.append(len({config for _, config in batch}))
            for trial, config in batch:
                study.tell(trial, score(*config))
        return sum(distinct) / len(distinct)

    with_liar = [distinct_per_batch(seed) for seed in range(4)]
    without = [distinct_per_batch(seed, constant_liar=False) for seed in range(4)]
    assert min(with_liar) >= 2.5 and max(without) <= 2.0, (with_liar, without)


# The real `tuner run`, killed and interrupted mid-trial, on the tiny backbone.

LONG_TRIAL = ["--set=study.n_trials=1", "--set=study.heartbeat_interval=1", "--set=study.grace_period=3",
              "--set=trainer.max_epochs=40", "--set=trainer.val_check_interval=1.0",
              "--set=trainer.limit_train_batches=4", "--set=trainer.limit_val_batches=2", '--set=study.pruner="none"']


def start_tuner(study_dir: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tuner", "run", "--study", "tiny", *LONG_TRIAL, *args],
                            cwd=study_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def tiny_study(study_dir: Path) -> optuna.Study:
    """The study the workers write, opened read-only: a plain ``optuna.load_study`` would create Optuna's
    tables if absent, racing the worker that is creating them (Optuna #4621)."""
    from tuner.storage import open_reader

    return optuna.load_study(study_name="tiny", storage=open_reader(f"sqlite:///{study_dir / 'study.db'}"))


def first_trial_has(study_dir: Path, attr: str | None = None) -> bool:
    """Whether the study's first trial exists (and has ``attr``); False while the worker is still creating it."""
    if not (study_dir / "study.db").is_file():
        return False
    try:
        trials = tiny_study(study_dir).trials
    except (KeyError, TunerError, sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError):
        return False  # the worker is still creating the schema or the study
    return bool(trials) and (attr is None or attr in trials[0].user_attrs)


def checkpoint_step(path: Path) -> int:
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def assert_resumed(retry: optuna.trial.FrozenTrial, original: optuna.trial.FrozenTrial) -> None:
    last = Path(original.user_attrs["trial_dir"]) / "checkpoints" / "last.ckpt"
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["retry_of"] == original.number
    assert retry.params == original.params
    assert retry.user_attrs["resumed_from"] == str(last)
    assert retry.user_attrs["start_step"] == checkpoint_step(last) > 0
    # validations before the resume travel in the checkpoint: one per epoch, none lost
    assert [r["epoch"] for r in retry.user_attrs["history"]] == list(range(40))


def test_a_killed_workers_trial_is_retried_by_another_and_resumes(study_dir: Path) -> None:
    first = start_tuner(study_dir)
    last = study_dir / "runs" / "tiny" / "trial-0000" / "checkpoints" / "last.ckpt"
    wait_for(last.is_file, "the first checkpoint", process=first)
    first.kill()
    first.wait()
    second = start_tuner(study_dir)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err
    original, retry = tiny_study(study_dir).trials
    assert original.state == TrialState.FAIL
    assert original.user_attrs["fail_reason"].startswith("stale: the heartbeat of worker")
    assert original.user_attrs["fail_reason"].endswith("queued for retry")
    assert_resumed(retry, original)
    assert "1/1 trials finished" in out


def test_sigterm_ends_the_trial_cleanly_and_its_retry_resumes(study_dir: Path) -> None:
    first = start_tuner(study_dir)
    wait_for(lambda: first_trial_has(study_dir, "start_step"), "training to start", process=first)
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err and "stopped by SIGTERM" in err
    interrupted, queued = tiny_study(study_dir).trials
    assert interrupted.user_attrs["fail_reason"] == "interrupted by SIGTERM; queued for retry"
    assert interrupted.state == TrialState.FAIL and queued.state == TrialState.WAITING
    second = start_tuner(study_dir)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err
    assert_resumed(tiny_study(study_dir).trials[1], interrupted)


def test_tuner_reap_fails_a_dead_workers_trial(study_dir: Path) -> None:
    first = start_tuner(study_dir, "--set=study.heartbeat_interval=0")  # no heartbeats: only reap can tell
    wait_for(lambda: first_trial_has(study_dir, "trial_dir"), "a running trial", process=first)
    first.kill()
    first.wait()
    out = subprocess.run([sys.executable, "-m", "tuner", "reap", "--study", "tiny", "--json"], cwd=study_dir,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    [reaped] = json.loads(out.stdout)
    assert reaped["number"] == 0 and reaped["retried"] and "is no longer running" in reaped["reason"]
    states = [t.state for t in tiny_study(study_dir).trials]
    assert states == [TrialState.FAIL, TrialState.WAITING]


def slow_backward_orderer(layers: int = 100, rows: int = 4096, width: int = 4096) -> type:
    """The sentence orderer with a backward pass that runs for seconds inside the autograd engine.

    Each extra layer is a view of a view of its input: no work forward, and backward a (rows x width)
    zero-fill and sum, in C++ with no Python in between, like a transformer's backward on a CPU (26 s for
    a 3-layer MiniLM with bf16 autocast where the CPU has no native bf16)."""
    import torch

    from tuner.model import SentenceOrderer

    class View(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.expand(rows, width)[::rows]

    class SlowBackwardOrderer(SentenceOrderer):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            self.slow_input = torch.nn.Parameter(torch.zeros(1, width))
            self.slow = torch.nn.Sequential(*[View() for _ in range(layers)])

        def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return super().score(batch) + 0 * self.slow(self.slow_input).sum()

    return SlowBackwardOrderer


def main_thread_in(*names: str) -> bool:
    """Whether the main thread is inside functions of all these names (as the innermost Python frames see it)."""
    frame = sys._current_frames().get(threading.main_thread().ident or 0)
    found = set()
    while frame is not None:
        found.add(frame.f_code.co_name)
        frame = frame.f_back
    return set(names) <= found


@pytest.mark.parametrize(("phase", "finder", "limit"), [("run_finder", "suggest", 2.5), ("_train", "off", 4.5)])
def test_sigint_inside_a_long_backward_pass_ends_the_run_in_seconds(
        study_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], phase: str, finder: str,
        limit: float) -> None:
    """SIGINT while the main thread is in the autograd engine, in the LR finder or in training: the run ends
    within seconds (training: after the grace a step gets to end with a checkpoint), not after the backward."""
    from tuner import objective
    from tuner.cli import main
    from tuner.worker import STOP_GRACE_S

    assert limit < STOP_GRACE_S + 3
    monkeypatch.chdir(study_dir)
    monkeypatch.setattr(objective, "SentenceOrderer", slow_backward_orderer())
    sent: list[float] = []

    def interrupt() -> None:
        wait_for(lambda: main_thread_in("_engine_run_backward", phase), f"a backward pass in {phase}")
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    code = main(["run", "--study", "tiny", "--set", "study.n_trials=1", "--set", "study.baseline=false",
                 "--set", f'study.lr_finder={{mode="{finder}", num_training=20}}', "--set", 'study.pruner="none"'])
    ended = time.monotonic()
    assert sent, "no SIGINT was sent"
    assert code == 128 + signal.SIGINT
    assert ended - sent[0] < limit
    assert "tuner: stopped by SIGINT" in capsys.readouterr().err
    interrupted, queued = tiny_study(study_dir).trials
    assert interrupted.state == TrialState.FAIL and queued.state == TrialState.WAITING
    assert interrupted.user_attrs["fail_reason"] == "interrupted by SIGINT; queued for retry"


def test_workers_sample_with_their_own_seeds(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuner.runner import load_run, open_study, worker_index

    monkeypatch.chdir(study_dir)
    run = load_run("tiny", ['study.storage="sqlite:///:memory:"'])

    def first_learning_rates(index: int) -> list[float]:
        study = open_study(run, worker_index=index)
        return [study.ask().suggest_float("learning_rate", 1e-5, 3e-3, log=True) for _ in range(3)]

    assert first_learning_rates(0) == first_learning_rates(0)  # one worker alone stays reproducible
    assert first_learning_rates(0) != first_learning_rates(1)
    for variable in ("TUNER_WORKER_INDEX", "SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"):
        monkeypatch.delenv(variable, raising=False)
    assert worker_index() == 0
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert worker_index() == 3
    monkeypatch.setenv("TUNER_WORKER_INDEX", "5")
    assert worker_index() == 5


def start_pool(study_dir: Path, n_trials: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tuner", "run", "--study", "tiny", "--workers", "2", *LONG_TRIAL,
                             f"--set=study.n_trials={n_trials}"],
                            cwd=study_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def running_pids(study_dir: Path) -> list[int]:
    if not first_trial_has(study_dir):
        return []
    return [t.user_attrs["pid"] for t in tiny_study(study_dir).get_trials(states=(TrialState.RUNNING,))
            if "start_step" in t.user_attrs]


def test_workers_flag_forwards_ctrl_c_and_every_trial_is_requeued(study_dir: Path) -> None:
    pool = start_pool(study_dir, n_trials=4)
    pids = wait_for(lambda: running_pids(study_dir), "a running trial", timeout=300)
    pool.send_signal(signal.SIGINT)
    out, err = pool.communicate(timeout=180)
    assert pool.returncode == 128 + signal.SIGINT, err
    assert "Traceback" not in out + err
    for pid in pids:  # type: ignore[union-attr]
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    trials = tiny_study(study_dir).trials
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    assert interrupted, ([(t.state, t.user_attrs.get("fail_reason")) for t in trials], out, err)
    assert all(t.user_attrs["fail_reason"] == "interrupted by SIGTERM; queued for retry" for t in interrupted)
    assert sum(t.state == TrialState.WAITING for t in trials) == len(interrupted)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert "[w0] " in out and "[w1] " in out


def test_workers_flag_reports_a_dead_worker_and_the_other_finishes_its_trial(study_dir: Path) -> None:
    pool = start_pool(study_dir, n_trials=2)
    pids = wait_for(lambda: running_pids(study_dir), "a running trial", timeout=300)
    os.kill(pids[0], signal.SIGKILL)  # type: ignore[index]
    out, err = pool.communicate(timeout=600)
    assert pool.returncode == 1
    assert "workers exited abnormally" in err and "(exit -9)" in err
    study = tiny_study(study_dir)
    assert_exact_budget(study, 2)
    stale = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(stale) == 1 and stale[0].user_attrs["fail_reason"].startswith("stale:")
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 2
    assert "progress: 2/2 finished" in out
