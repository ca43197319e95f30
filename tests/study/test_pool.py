"""`tuner run --workers K`: seeds, forwarded signals, dead workers, a killed parent, failed starts, the relay."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

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

from tuner.storage.records import retry_of
from tuner.study.open import load_study_file, open_study


def start_pool(study_dir: Path, n_trials: int, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tuner", "run", "--study", "tiny", "--workers", "2", *LONG_TRIAL,
                             f"--set=study.n_trials={n_trials}", *args],
                            cwd=study_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def running_pids(study_dir: Path) -> list[int]:
    if not first_trial_has(study_dir):
        return []
    return [t.user_attrs["pid"] for t in tiny_study(study_dir).get_trials(states=(TrialState.RUNNING,))
            if "start_step" in t.user_attrs]


def test_workers_sample_with_their_own_seeds(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuner.study.env import worker_index
    from tuner.study.open import load_study_file

    monkeypatch.chdir(study_dir)
    run = load_study_file("tiny", ['study.storage="sqlite:///:memory:"'])

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
    # the idle worker may notice later than the other and take the retry up first: then it ends that
    # one too, and queues the next. Either way, every trial ended cleanly and one retry is queued.
    *ended, queued = tiny_study(study_dir).trials
    assert ended and queued.state == TrialState.WAITING and retry_of(queued) == ended[-1].number
    for number, trial in enumerate(ended):
        assert trial.state == TrialState.FAIL, trial
        assert trial.user_attrs["fail_reason"] == "interrupted by SIGTERM; queued for retry"
        assert retry_of(trial) == (number - 1 if number else None)


# a child that ignores SIGTERM, as a worker busy ending its trial might, and says when it does
DEAF_CHILD = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "print('ready', flush=True); time.sleep(600)")


def test_workers_started_before_a_failed_start_are_stopped(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuner.study import pool

    monkeypatch.chdir(study_dir)
    monkeypatch.setattr(pool, "check_study", lambda run: None)  # not what this test is about
    monkeypatch.setattr(pool, "KILL_AFTER_S", 0.5)
    popen = subprocess.Popen
    started: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], **options: object) -> subprocess.Popen[bytes]:
        if len(started) == 2:
            raise OSError(11, "fork failed on purpose")
        child = popen([sys.executable, "-c", DEAF_CHILD], **options)  # type: ignore[call-overload]
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        started.append(child)
        return child

    monkeypatch.setattr(pool.subprocess, "Popen", start)
    try:
        with pytest.raises(OSError, match="fork failed on purpose"):
            pool.run_workers(load_study_file("tiny"), study_dir / "studies" / "tiny.toml", 3)
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
    from tuner.study.pool import _relay

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
    [warning] = [r for r in caplog.records if r.name == "tuner.study.pool"]  # once, not once a line
    assert "w0" in warning.getMessage() and "the database is gone on purpose" in warning.getMessage()
