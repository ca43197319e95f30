"""The example Slurm array job, submitted as it is to a real one-node cluster (`.ci/slurm up`), against the
real PostgreSQL server: the budget, and a task stopped or killed mid-trial the ways Slurm does it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
from conftest import require_server
from optuna.trial import TrialState
from processes import LONG_TRIAL, assert_exact_budget, assert_resumed, wait_for

from tuner.errors import TunerError
from tuner.storage.reader import open_reader

pytestmark = pytest.mark.slurm

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "slurm" / "tuner-array.sbatch"
TASKS = 4  # --array=0-3: on two cores two run at a time, one CPU each, and the others wait for a free one


def _cluster() -> None:
    """Skipped with the reason without a cluster here, a failure in CI (`.ci/run` starts one)."""
    reason = None
    if shutil.which("sbatch") is None:
        reason = "Slurm is not installed (`.ci/slurm up` installs it and starts a one-node cluster)"
    else:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=60)
        if ping.returncode != 0 or "UP" not in ping.stdout:
            reason = (f"no Slurm controller answers ({(ping.stdout + ping.stderr).strip()}); "
                      "`eval \"$(.ci/slurm up)\"` starts one and sets SLURM_CONF")
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI runs the Slurm tests: {reason}")
    pytest.skip(reason)


class ArrayJob:
    """The example script submitted as an array job from ``study_dir``; cancelled on the way out."""

    def __init__(self, study_dir: Path, storage: str, name: str, tasks: int, *args: str) -> None:
        self.study_dir, self.storage, self.name, self.tasks = study_dir, storage, name, tasks
        # the job runs `tuner` from this environment, and reads the study and the storage from it
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               "TUNER_STUDY": "tiny", "TUNER_STORAGE": storage, "PYTHONUNBUFFERED": "1"}
        out = subprocess.run(["sbatch", "--parsable", f"--array=0-{tasks - 1}", str(SCRIPT),
                              f"--set=study.name={name!r}", *args],
                             cwd=study_dir, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        self.id = out.stdout.strip().split(";")[0]
        self._reader: Any = None

    def queued(self) -> list[str]:
        """The array's tasks that are still pending, running or completing."""
        out = subprocess.run(["squeue", "-h", "-j", self.id, "-o", "%i %T"], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.split("\n")[:-1]

    def wait(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while self.queued():
            if time.monotonic() > deadline:
                raise AssertionError(f"array job {self.id} still queued after {timeout:.0f} s: {self.queued()}"
                                     f"\n{self.outputs()}")
            time.sleep(0.5)

    def states(self) -> dict[int, tuple[str, str]]:
        """Each task's final state and exit code (``scontrol`` keeps ended jobs for MinJobAge)."""
        out = subprocess.run(["scontrol", "-o", "show", "job", self.id], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        states = {}
        for line in out.stdout.splitlines():
            fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
            states[int(fields["ArrayTaskId"])] = (fields["JobState"], fields["ExitCode"])
        return states

    def output(self, task: int) -> str:
        path = self.study_dir / f"tuner-{self.id}_{task}.out"
        return path.read_text() if path.is_file() else ""

    def outputs(self) -> str:
        return "\n".join(f"--- task {task}:\n{self.output(task)[-3000:]}" for task in range(self.tasks))

    def study(self) -> optuna.Study:
        if self._reader is None:
            self._reader = open_reader(self.storage)
        return optuna.load_study(study_name=self.name, storage=self._reader)

    def trials(self) -> list[optuna.trial.FrozenTrial]:
        """The study's trials; none while the first task is still creating the study."""
        try:
            return self.study().trials
        except (KeyError, TunerError, sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError):
            return []

    def cancel(self) -> None:
        subprocess.run(["scancel", self.id], capture_output=True, timeout=60)
        self.wait(timeout=120)


Submit = Callable[..., ArrayJob]


@pytest.fixture()
def array_job(study_dir: Path) -> Iterator[Submit]:
    """Submits the example script; cancels what is left of every job and deletes its study afterwards."""
    _cluster()
    storage = require_server("postgresql")
    jobs: list[ArrayJob] = []

    def submit(*args: str, tasks: int = TASKS) -> ArrayJob:
        job = ArrayJob(study_dir, storage, f"slurm-{uuid.uuid4().hex[:8]}", tasks, *args)
        jobs.append(job)
        return job

    yield submit
    for job in jobs:
        job.cancel()
        if job.name in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
            optuna.delete_study(study_name=job.name, storage=storage)


def _array_task(pid: int) -> int:
    """The array task that runs the process ``pid`` on this node (its Slurm environment)."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    variables = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
    return int(variables["SLURM_ARRAY_TASK_ID"])


def test_an_array_job_finishes_exactly_the_budget(array_job: Submit) -> None:
    job = array_job("--set=study.n_trials=6", "--set=trainer.max_epochs=1", "--set=trainer.limit_train_batches=3",
                    "--set=trainer.limit_val_batches=2")
    job.wait()
    states = job.states()
    assert states == {task: ("COMPLETED", "0:0") for task in range(TASKS)}, job.outputs()
    trials = job.trials()
    assert_exact_budget(job.study(), 6)
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    # two tasks ran at a time, each its own worker with its own seed
    assert len({t.user_attrs["pid"] for t in trials}) >= 2
    assert any("6/6 trials finished" in job.output(task) for task in range(TASKS))


# How Slurm stops a task, and what becomes of its trial (Slurm 22.05):
# - a plain `scancel JOB_TASK` sends SIGTERM to every process of the task, and SIGKILL only after the
#   cluster's KillWait (srun, told to end, waits that long too): the trial ends cleanly;
# - `scancel --signal=TERM JOB_TASK` signals the task's job steps, tuner under srun: the trial ends
#   cleanly. While other tasks of the array are pending, scancel sends it again every few seconds (its
#   request for the array is refused as "Job can not be altered now", and retried), so this one is
#   tested on an array whose tasks all run;
# - `scancel JOB_TASK.0` cancels tuner's job step, which Slurm does with SIGKILL at once (as a lost node
#   or the OOM killer would): the trial's heartbeat stops, and another task fails it as stale.
STOPS = {
    "scancel": ([], "", TASKS, "interrupted by SIGTERM; queued for retry"),
    "scancel --signal=TERM": (["--signal=TERM"], "", 2, "interrupted by SIGTERM; queued for retry"),
    "scancel the step": ([], ".0", TASKS, "stale: the heartbeat of worker"),
}


@pytest.mark.parametrize("how", list(STOPS))
def test_a_task_stopped_mid_trial_is_retried_by_another_task_and_resumes(array_job: Submit, how: str) -> None:
    options, step, tasks, reason = STOPS[how]
    job = array_job(*LONG_TRIAL, tasks=tasks)  # one trial of 40 epochs; a heartbeat every second, stale after 3 s

    def checkpointed() -> optuna.trial.FrozenTrial | None:
        trials = job.trials()
        # after the first validation's checkpoint: the retry has something to resume from
        if trials and "start_step" in trials[0].user_attrs and trials[0].state == TrialState.RUNNING:
            last = Path(trials[0].user_attrs["trial_dir"]) / "checkpoints" / "last.ckpt"
            return trials[0] if last.is_file() else None
        return None

    running = wait_for(checkpointed, "the first trial's first checkpoint", timeout=300)
    assert isinstance(running, optuna.trial.FrozenTrial)
    task = _array_task(running.user_attrs["pid"])
    stop = subprocess.run(["scancel", *options, f"{job.id}_{task}{step}"], capture_output=True, text=True,
                          timeout=60)
    assert stop.returncode == 0, stop.stderr
    job.wait()

    original, retry = job.study().trials
    assert original.state == TrialState.FAIL, job.outputs()
    assert original.user_attrs["fail_reason"].startswith(reason), original.user_attrs["fail_reason"]
    assert original.user_attrs["fail_reason"].endswith("queued for retry")
    assert_resumed(retry, original)
    # the retry ran, and finished the study, on another task
    finished_on = [t for t in range(tasks) if f"trial {retry.number}: COMPLETE" in job.output(t)]
    assert len(finished_on) == 1 and finished_on[0] != task, job.outputs()
    states = job.states()
    assert states.pop(task)[0] != "COMPLETED"
    assert states == {t: ("COMPLETED", "0:0") for t in range(tasks) if t != task}, job.outputs()
