"""Helpers for tests that run tuner in other processes: start them, wait on them, and check the study they leave."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import torch
from optuna.trial import TrialState

from tuner.errors import TunerError
from tuner.storage.reader import open_reader
from tuner.study.recovery import used_slots

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


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command's name (Linux), or None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def exited(pid: int) -> bool:
    """Whether ``pid`` has ended, reaped or not: an orphan's new parent may never reap it."""
    fields = _stat(pid)
    return fields is None or fields[0] in ("Z", "X")


def checkpoint_step(path: Path) -> int:

    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def assert_resumed(retry: optuna.trial.FrozenTrial, original: optuna.trial.FrozenTrial) -> None:
    last = Path(original.user_attrs["trial_dir"]) / "checkpoints" / "last.ckpt"
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["retry_of"] == original.number
    assert retry.params == original.params
    assert retry.user_attrs["resumed_from"] == str(last)
    assert retry.user_attrs["start_step"] == checkpoint_step(last) > 0
    # validations before the resume travel in the checkpoint: one per epoch, none lost
    assert [r["epoch"] for r in retry.user_attrs["history"]] == list(range(40))
    # and so do the pruning reports: the original's up to its checkpoint, then the retry's own
    taus = [r["val_kendall_tau"] for r in retry.user_attrs["history"]]
    assert retry.intermediate_values == pytest.approx(dict(enumerate(taus)))


def run_tuner(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "tuner.cli", *args], capture_output=True, text=True,
                          input=stdin, cwd=cwd, env=env, timeout=600)
