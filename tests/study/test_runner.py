"""Studies end to end on a temporary SQLite file, with the tiny backbone, and --workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from processes import (
    LONG_TRIAL,
    assert_exact_budget,
    children_of,
    exited,
    first_trial_has,
    tiny_study,
    wait_for,
)

from tuner.cli import main
from tuner.errors import ConfigError, TunerError
from tuner.study.queries import trials
from tuner.study.runner import load_run, open_study, run_study


def test_workers_sample_with_their_own_seeds(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuner.study.runner import load_run, open_study, worker_index

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


def start_pool(study_dir: Path, n_trials: int, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tuner", "run", "--study", "tiny", "--workers", "2", *LONG_TRIAL,
                             f"--set=study.n_trials={n_trials}", *args],
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


def test_workers_end_their_trials_when_their_parent_is_killed(study_dir: Path) -> None:
    """Each worker leads its own session, so nothing else would stop it: it notices its parent is gone."""
    # one worker trains for far longer than the test waits, the other waits for that trial to end
    pool = start_pool(study_dir, 1, "--set=trainer.max_epochs=100000")
    wait_for(lambda: running_pids(study_dir), "a running trial", timeout=300, process=pool)
    workers = children_of(pool.pid)
    assert len(workers) == 2
    pool.kill()
    pool.communicate()
    try:
        wait_for(lambda: all(exited(pid) for pid in workers), "the workers to exit", timeout=60)
    finally:
        for pid in workers:
            if not exited(pid):
                os.kill(pid, signal.SIGKILL)
    trials = tiny_study(study_dir).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[0].user_attrs["fail_reason"] == "interrupted by SIGTERM; queued for retry"


def test_run_completes_the_budget_prunes_and_records(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(study_dir)
    run = load_run("tiny")
    summary = run_study(run, progress=False)
    assert summary.finished == 5 and summary.trials_run == 5
    study = open_study(run)
    states = [t.state for t in study.trials]
    assert len(states) == 5 and optuna.trial.TrialState.PRUNED in states
    baseline = study.trials[0]
    assert baseline.user_attrs["baseline"] and baseline.params == {"learning_rate": 3e-5, "batch_size": 8}
    for trial in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        attrs = trial.user_attrs
        assert {"val_kendall_tau", "val_pmr", "val_acc", "val_loss", "epochs", "lr_used", "lr_finder", "wall_s",
                "host", "pid", "worker", "seed", "data_fingerprint", "checkpoint", "versions"} <= set(attrs)
        assert attrs["versions"]["optuna"] == optuna.__version__
        # the study asks 32-true; the machine it ran on is recorded with what decided
        assert attrs["hardware"]["precision"] == "32-true" and attrs["hardware"]["precision_asked"] == "32-true"
        assert {"cpu_model", "cpu_capability", "amx", "avx512_bf16", "torch_threads", "gpu"} <= set(attrs["hardware"])
        assert Path(attrs["checkpoint"]).is_file()
        assert trial.value == max(r["val_kendall_tau"] for r in attrs["history"])
        # two validations per epoch, each reported at its own step (no collisions at step = epoch)
        assert sorted(trial.intermediate_values) == list(range(len(attrs["history"])))
        assert len(attrs["history"]) == 2 * attrs["epochs"]
        assert (Path(attrs["trial_dir"]) / "logs" / "metrics.csv").is_file()
    # a second run resumes to the budget and no further
    assert run_study(run, progress=False).trials_run == 0
    assert run_study(run, n_trials=6, progress=False).trials_run == 1
    assert len(open_study(run).trials) == 6


def test_timeout_stops_after_the_current_trial(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(study_dir)
    summary = run_study(load_run("tiny"), timeout=0.05, progress=False)  # any trial takes longer
    assert summary.trials_run == 1 and summary.finished == 1


QUICK = ["--set", "trainer.max_epochs=1", "--set", "trainer.limit_train_batches=2", "--set",
         "trainer.limit_val_batches=1", "--set", 'study.pruner="none"']


def test_an_error_of_the_study_in_a_trial_stops_the_run_and_spends_nothing(
        study_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A worker of `--workers` skips the pre-flight check: a data file gone then fails its first trial, and
    stops it. Once the file is back, `tuner run` carries on to the budget, the baseline first."""
    monkeypatch.chdir(study_dir)
    train = study_dir / "train.lower"
    train.rename(study_dir / "train.away")
    code = main(["run", "--study", "tiny", "--worker-id", "w0", "--set", "study.n_trials=2", *QUICK])
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines()[-1] == f"tuner: error: data file {train} does not exist", err
    run = load_run("tiny")
    failed, queued = open_study(run).trials
    assert failed.state == optuna.trial.TrialState.FAIL and failed.user_attrs["study_error"]
    assert failed.user_attrs["fail_reason"] == f"DataError: data file {train} does not exist"
    assert queued.state == optuna.trial.TrialState.WAITING and queued.user_attrs["baseline"]

    (study_dir / "train.away").rename(train)
    assert main(["run", "--study", "tiny", "--set", "study.n_trials=2", *QUICK]) == 0
    out = capsys.readouterr().out
    assert "study tiny in sqlite:///" in out and ": 2/2 trials finished, 2 run now" in out
    failed, baseline, sampled = open_study(run).trials
    assert failed.state == optuna.trial.TrialState.FAIL
    assert baseline.user_attrs["retry_of"] == 0 and baseline.params == {"learning_rate": 3e-5, "batch_size": 8}
    assert baseline.state == sampled.state == optuna.trial.TrialState.COMPLETE


def test_the_same_failure_three_times_in_a_row_stops_the_run(
        study_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from tuner.model.orderer import SentenceOrderer

    def broken(self: SentenceOrderer) -> None:
        raise RuntimeError("the optimizer is broken on purpose")

    monkeypatch.chdir(study_dir)
    monkeypatch.setattr(SentenceOrderer, "configure_optimizers", broken)  # training only: the check passes
    code = main(["run", "--study", "tiny", "--set", "study.n_trials=5", *QUICK])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.splitlines()[-1] == ("tuner: error: 3 trials in a row failed with the same error: "
                                             "RuntimeError: the optimizer is broken on purpose; stopping")
    assert "3/5 trials finished, 3 run now" in captured.out
    trials = open_study(load_run("tiny")).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL] * 3


def test_a_new_storage_never_overwrites_an_earlier_studys_trials(study_dir: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(study_dir)
    first = load_run("tiny", ["study.n_trials=1"])
    run_study(first, progress=False)
    second = load_run("tiny", ["study.n_trials=1", f'study.storage="sqlite:///{study_dir / "other.db"}"'])
    run_study(second, progress=False)
    old, new = open_study(first).trials[0].user_attrs, open_study(second).trials[0].user_attrs
    assert old["trial_dir"] != new["trial_dir"] and new["trial_dir"].endswith("trial-0000-2")
    assert Path(old["checkpoint"]).is_file() and Path(new["checkpoint"]).is_file()


def test_reopening_with_another_metric_is_refused(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(study_dir)
    open_study(load_run("tiny"))
    with pytest.raises(TunerError, match="optimises val_kendall_tau, not val_pmr"):
        open_study(load_run("tiny", ['study.metric="val_pmr"']))
    with pytest.raises(TunerError, match="is to maximize, not minimize"):
        open_study(load_run("tiny", ['study.direction="minimize"']))
    with pytest.raises(TunerError, match="no study 'other'"):
        trials(load_run("tiny", ['study.name="other"']))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ('study.sampler="annealing"', "unknown sampler 'annealing'"),
        ('study.pruner="early"', "unknown pruner 'early'"),
        ('study.pruner={type="median", warmup=3}', "study.pruner: median does not take these options"),
        ("search.batch_size=[]", "search.batch_size: the list of choices is empty"),
        ("search.learning_rate=[1e-3, 1e-5]", "search.learning_rate: needs 0 < low <= high"),
        ('study.lr_finder="maybe"', "unknown mode 'maybe'"),
        ("study.n_trials=0", "study.n_trials: must be positive"),
        ("study.colour=1", "unknown key 'colour'"),
    ],
)
def test_bad_study_sections_name_file_and_key(study_dir: Path, monkeypatch: pytest.MonkeyPatch, override: str,
                                              message: str) -> None:
    monkeypatch.chdir(study_dir)
    with pytest.raises(ConfigError) as err:
        load_run("tiny", [override])
    assert message in str(err.value) and str(err.value).startswith(f"--set {override}: ")


# a child that ignores SIGTERM, as a worker busy ending its trial might, and says when it does
DEAF_CHILD = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "print('ready', flush=True); time.sleep(600)")


def test_workers_started_before_a_failed_start_are_stopped(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuner.study import runner

    monkeypatch.chdir(study_dir)
    monkeypatch.setattr(runner, "_preflight", lambda run: None)  # not what this test is about
    monkeypatch.setattr(runner, "KILL_AFTER_S", 0.5)
    popen = subprocess.Popen
    started: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], **options: object) -> subprocess.Popen[bytes]:
        if len(started) == 2:
            raise OSError(11, "fork failed on purpose")
        child = popen([sys.executable, "-c", DEAF_CHILD], **options)  # type: ignore[call-overload]
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        started.append(child)
        return child

    monkeypatch.setattr(runner.subprocess, "Popen", start)
    try:
        with pytest.raises(OSError, match="fork failed on purpose"):
            runner.run_workers(load_run("tiny"), study_dir / "studies" / "tiny.toml", 3)
        assert [child.returncode for child in started] == [-signal.SIGKILL, -signal.SIGKILL]  # SIGTERM ignored
        for child in started:
            with pytest.raises(ProcessLookupError):
                os.killpg(child.pid, 0)  # nothing left in the worker's session either
    finally:
        for child in started:
            if child.poll() is None:
                child.kill()
                child.wait()


# more than a pipe holds, after a trial line (whose progress line reads the study) and a line that is not UTF-8
NOISY_CHILD = """import sys
out = sys.stdout.buffer
out.write(b"trial 0: COMPLETE\\n")
out.write(b"not utf-8: \\xff\\n")
for _ in range(8192):
    out.write(b"x" * 127 + b"\\n")
out.write(b"done\\n")
"""


def test_the_relay_drains_a_workers_output_whatever_one_line_does(capsys: pytest.CaptureFixture[str],
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    from tuner.study.runner import _relay

    class LostStudy:
        def get_trials(self, deepcopy: bool) -> list[object]:
            raise RuntimeError("the database is gone on purpose")

    child = subprocess.Popen([sys.executable, "-c", NOISY_CHILD], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    relay = threading.Thread(target=_relay, args=("w0", child, LostStudy(), 1), daemon=True)
    relay.start()
    try:
        assert child.wait(timeout=30) == 0  # a relay that stopped reading leaves it blocked on a full pipe
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    relay.join(timeout=30)
    assert not relay.is_alive()
    out = capsys.readouterr().out
    assert out.startswith("[w0] trial 0: COMPLETE\n[w0] not utf-8: \ufffd\n") and out.endswith("[w0] done\n")
    assert out.count(f"[w0] {'x' * 127}\n") == 8192
    [warning] = [r for r in caplog.records if r.name == "tuner.study.runner"]  # once, not once a line
    assert "w0" in warning.getMessage() and "the database is gone on purpose" in warning.getMessage()
