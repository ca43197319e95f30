"""Studies and their workers: open a study in its storage, run workers on it, summarise it.

The budget ``n_trials`` counts the study's trials across every worker, on every machine, except
failed trials that were retried and trials failed by an error of the study itself (see
:mod:`tuner.worker`): a study run again resumes up to the budget and stops there. ``run_study`` is one
worker in this process; ``run_workers`` starts several local worker processes and shows their combined
progress. Both first run the pre-flight check (:func:`tuner.preflight.check`), so a study that cannot
work fails before its first trial.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner import search
from tuner.config import RunConfig, find_study, load_study
from tuner.errors import ConfigError, TunerError
from tuner.storage import (
    NoDatabase,
    SlotLock,
    check_sqlite_for_workers,
    mask,
    open_reader,
    open_storage,
    resolve_url,
)
from tuner.worker import StopSignals, reap, used_slots, work

log = logging.getLogger(__name__)

TEST_ATTR = "test:"  # study attribute prefix of a trial's test metrics, set by `tuner evaluate --study`


def load_run(study: str, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A study file by name or path, validated, with its sampler and pruner checked too."""
    return load_study(find_study(study), overrides, check=_check_search)


def _check_search(run: RunConfig) -> None:
    """The sampler's and pruner's options are checked by building them."""
    search.build_sampler(run.study.sampler, run)
    search.build_pruner(run.study.pruner)


def open_study(run: RunConfig, storage: str | None = None, create: bool = True, worker_index: int = 0
               ) -> optuna.Study:
    """The run's study in its storage, created if absent (with ``create=False``, refused, and nothing is
    created). A study that exists with another metric or direction is refused rather than mixed.

    ``worker_index`` offsets the sampler's seed: workers with one seed would sample the same settings.
    """
    url = resolve_url(storage, run.study.storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    interval = run.study.heartbeat_interval or None
    heartbeat: dict[str, Any] = {"heartbeat_interval": interval,
                                 "grace_period": run.study.grace_period if interval else None}
    if create:
        # creating the schema concurrently on a fresh database races (Optuna issue #4621): one at a time
        with SlotLock(url, "schema")(retry=False):
            backend = open_storage(url, **heartbeat)
    else:
        backend = open_storage(url, create_schema=False, **heartbeat)
    config = run.study.sampler
    if worker_index and config.seed is not None:
        config = dataclasses.replace(config, seed=config.seed + worker_index)
    sampler = search.build_sampler(config, run)
    pruner = search.build_pruner(run.study.pruner)
    names = {s.study_name for s in optuna.study.get_all_study_summaries(backend)}
    if run.name not in names and not create:
        raise TunerError(f"no study {run.name!r} in {mask(url)}; studies there: {sorted(names) or 'none'}")
    study = optuna.create_study(study_name=run.name, storage=backend, sampler=sampler, pruner=pruner,
                                direction=run.study.direction, load_if_exists=True)
    metric = study.user_attrs.get("metric")
    if metric is None:
        study.set_user_attr("metric", run.study.metric)
    elif metric != run.study.metric:
        raise TunerError(f"study {run.name!r} in {mask(url)} optimises {metric}, not {run.study.metric}; "
                         "use another study name or storage")
    if study.direction.name.lower() != run.study.direction:
        raise TunerError(f"study {run.name!r} in {mask(url)} is to {study.direction.name.lower()}, "
                         f"not {run.study.direction}; use another study name or storage")
    return study


def counted(study: optuna.Study) -> int:
    """The trials that use the budget (see :func:`tuner.worker.used_slots`)."""
    return used_slots(study.get_trials(deepcopy=False))


def finished(trials: list[FrozenTrial]) -> int:
    """Trials that ended and count towards the budget: a failed trial that was retried does not, nor one
    failed by an error of the study itself."""
    return used_slots(trials) - sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)


def _preflight(run: RunConfig) -> None:
    """:func:`tuner.preflight.check` with SIGINT and SIGTERM handled as in a worker: a signal raises
    :class:`tuner.errors.Interrupted` rather than Lightning's own exit."""
    from tuner.preflight import check  # torch is imported here, not for `tuner trials`

    with StopSignals():
        check(run)


@dataclass
class RunSummary:
    study: str
    storage: str
    trials_run: int
    finished: int
    n_trials: int
    best: dict[str, Any] | None
    interrupted: str | None = None  # the signal that stopped the worker
    failed_workers: list[str] = field(default_factory=list)  # `--workers`: those that exited abnormally
    repeated_failure: str | None = None  # trials failed in a row with the same error: the worker stopped


def requested_threads() -> int | None:
    """The CPU threads per worker the user asked for: ``$TUNER_NUM_THREADS``, else ``$OMP_NUM_THREADS``."""
    for variable in ("TUNER_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(variable, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


WORKER_INDEX_VARIABLES = ("TUNER_WORKER_INDEX", "SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX")


def worker_index() -> int:
    """This worker's index among its peers: set by ``--workers``, a Slurm array or an indexed Kubernetes Job
    (0 when none is set)."""
    for variable in WORKER_INDEX_VARIABLES:
        value = os.environ.get(variable, "")
        if value.isdigit():
            return int(value)
    return 0


def default_worker() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def run_study(
    run: RunConfig,
    storage: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    output_dir: str | Path | None = None,
    worker: str | None = None,
    progress: bool | None = None,
    check: bool = True,
) -> RunSummary:
    """Run this process as one worker of ``run``'s study until it holds ``n_trials`` (the study's
    total), ``timeout`` seconds pass (after the running trial), SIGTERM/SIGINT arrives, or trials keep
    failing with the same error (``repeated_failure`` says so).

    With ``check``, the pre-flight check runs first (a worker started by :func:`run_workers` skips it:
    its parent ran it). An error of the study, found there or raised inside a trial, is raised as a
    :class:`tuner.errors.TunerError`; a signal during the check raises :class:`tuner.errors.Interrupted`.
    """
    from tuner import hardware  # torch is imported here, not for `tuner trials`
    from tuner.objective import Objective

    # `--workers` gives each worker process its share in TUNER_NUM_THREADS, having warned already
    hardware.set_threads(1, requested_threads())
    budget = n_trials or run.study.n_trials
    timeout = timeout if timeout is not None else run.study.timeout
    url = resolve_url(storage, run.study.storage)
    if check:
        _preflight(run)  # before the study exists: a study that cannot work creates nothing
    study = open_study(run, storage, worker_index=worker_index())
    lock = SlotLock(url, run.name)
    with lock():
        if run.study.baseline and not study.get_trials(deepcopy=False):
            study.enqueue_trial(search.baseline_params(run), user_attrs={"baseline": True})
    interactive = sys.stderr.isatty() if progress is None else progress
    lines = _Progress(budget, counted(study), interactive)
    with StopSignals() as signals:
        objective = Objective(run, Path(output_dir or Path(run.trainer.output_dir) / run.name), interactive, signals)
        result = work(study, objective, budget, lock=lock, signals=signals, max_retries=run.study.max_retries,
                      timeout=timeout, worker=worker or default_worker(), on_start=lines.start,
                      on_end=lines.finished)
    return RunSummary(run.name, mask(url), result.ran, finished(study.get_trials(deepcopy=False)), budget,
                      best_trial(study, run), interrupted=result.interrupted,
                      repeated_failure=result.repeated_failure)


_TRIAL_LINE = re.compile(r"^trial \d+: ")


def run_workers(
    run: RunConfig,
    study_file: str | Path,
    workers: int,
    overrides: list[str] | tuple[str, ...] = (),
    storage: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
) -> RunSummary:
    """Start ``workers`` local worker processes (``tuner run``) on the study and wait for them.

    Each worker gets an even share of the CPU threads and, where GPUs are visible, one of them
    (round-robin). Their output is shown prefixed with the worker's label, with a combined progress
    line after each trial. SIGINT and SIGTERM are forwarded, and the workers end their trials
    cleanly. The storage URL reaches them in the environment, never on a command line.

    The pre-flight check runs here, once, before any worker starts; the workers skip it.
    """
    url = resolve_url(storage, run.study.storage)
    check_sqlite_for_workers(url, workers)
    _preflight(run)  # once, here: the workers skip it
    study = open_study(run, storage)  # the schema and the study exist before any worker starts
    before = finished(study.get_trials(deepcopy=False))
    budget = n_trials or run.study.n_trials
    from tuner import hardware

    threads = hardware.thread_share(workers, requested_threads())
    gpus = _visible_gpus()
    command = [sys.executable, "-m", "tuner", "run", "--study", str(Path(study_file).resolve()),
               *(f"--set={item}" for item in overrides), "--n-trials", str(budget)]
    if timeout is not None:
        command += ["--timeout", str(timeout)]
    processes: dict[str, subprocess.Popen[str]] = {}
    for index in range(workers):
        label = f"w{index}"
        env = {**os.environ, "TUNER_STORAGE": url, "TUNER_NUM_THREADS": str(threads),
               "TUNER_WORKER_INDEX": str(worker_index() * workers + index),
               "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
        processes[label] = subprocess.Popen(
            [*command, "--worker-id", f"{socket.gethostname()}-{label}"], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,  # our signals are forwarded, not shared
        )
    print(f"started {workers} workers on {mask(url)} ({threads} CPU threads each"
          + (f", GPUs {', '.join(gpus)}" if gpus else "") + ")", flush=True)
    forwarded: list[int] = []

    def forward(signum: int, frame: object) -> None:
        forwarded.append(signum)
        print(f"{signal.Signals(signum).name}: stopping the workers after their trials end cleanly", flush=True)
        for process in processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    readers = [threading.Thread(target=_relay, args=(label, process, study, budget), daemon=True)
               for label, process in processes.items()]
    try:
        for reader in readers:
            reader.start()
        codes = {label: process.wait() for label, process in processes.items()}
        for reader in readers:
            reader.join()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    stopped = {128 + signal.SIGTERM, 128 + signal.SIGINT} if forwarded else set()
    failed = [f"{label} (exit {code})" for label, code in codes.items() if code != 0 and code not in stopped]
    after = finished(study.get_trials(deepcopy=False))
    return RunSummary(run.name, mask(url), after - before, after, budget, best_trial(study, run),
                      interrupted=signal.Signals(forwarded[0]).name if forwarded else None, failed_workers=failed)


def _relay(label: str, process: subprocess.Popen[str], study: optuna.Study, budget: int) -> None:
    """Print a worker's output prefixed with its label, and the study's progress after each trial."""
    assert process.stdout is not None
    for line in process.stdout:
        print(f"[{label}] {line.rstrip()}", flush=True)
        if _TRIAL_LINE.match(line):
            print(f"progress: {_progress_line(study.get_trials(deepcopy=False), budget)}", flush=True)


def _progress_line(trials: list[FrozenTrial], budget: int) -> str:
    """The study's progress; the finished trials are the complete, pruned and failed ones that count."""
    states = {state: sum(t.state == state for t in trials) for state in TrialState}
    done = finished(trials)
    failed = done - states[TrialState.COMPLETE] - states[TrialState.PRUNED]
    return (f"{done}/{budget} finished ({states[TrialState.COMPLETE]} complete, "
            f"{states[TrialState.PRUNED]} pruned, {failed} failed), "
            f"{states[TrialState.RUNNING]} running")


def _visible_gpus() -> list[str]:
    """The GPUs to share among workers: ``CUDA_VISIBLE_DEVICES`` if set, else every CUDA device."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu for gpu in visible.split(",") if gpu.strip()]
    try:
        import torch
    except ImportError:
        return []
    return [str(index) for index in range(torch.cuda.device_count())]


def reap_study(run: RunConfig, storage: str | None = None, older_than: float | None = None) -> list[dict[str, Any]]:
    """Fail the study's stale RUNNING trials and queue their retries (see :func:`tuner.worker.reap`)."""
    study = open_study(run, storage, create=False)
    with SlotLock(resolve_url(storage, run.study.storage), run.name)():
        return reap(study, run.study.max_retries, older_than)


class _Progress:
    """Trial-level progress: a bar line as each trial starts (on a terminal), a plain line as it ends.

    Lightning draws its own live progress for epochs under the bar line; a second live bar for trials
    would fight it for the terminal, so the trial bar is redrawn as a line when each trial starts.
    """

    def __init__(self, total: int, done: int, interactive: bool) -> None:
        self.total, self.done, self.interactive = total, done, interactive

    def start(self, number: int) -> None:
        if self.interactive:
            width = 30
            filled = width * min(self.done, self.total) // max(self.total, 1)
            print(f"trials [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}: "
                  f"starting trial {number}", file=sys.stderr, flush=True)

    def finished(self, trial: FrozenTrial) -> None:
        self.done += 1
        print(f"trial {trial.number}: {_line(trial)}", flush=True)


def _line(trial: FrozenTrial) -> str:
    value = "" if trial.value is None else f" value={trial.value:.4f}"
    reason = trial.user_attrs.get("fail_reason") if trial.state == TrialState.FAIL else None
    epochs = trial.user_attrs.get("epochs", "-")
    return f"{trial.state.name}{value} epochs={epochs}" + (f" ({reason})" if reason else "")


def trial_row(trial: FrozenTrial, run: RunConfig | None = None) -> dict[str, Any]:
    """One trial as a stable JSON object (see README, "JSON output")."""
    params = dict(trial.params)
    if "lr_used" in trial.user_attrs:
        params["learning_rate"] = trial.user_attrs["lr_used"]
    if run is not None:
        params.setdefault("backbone", run.model.backbone.label)
        params.setdefault("batch_size", run.data.batch_size)
    duration = (trial.datetime_complete - trial.datetime_start).total_seconds() if (
        trial.datetime_complete and trial.datetime_start) else None
    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": trial.value,
        "params": params,
        "duration_s": duration,
        "attrs": dict(trial.user_attrs),
    }


def best_trial(study: optuna.Study, run: RunConfig | None = None) -> dict[str, Any] | None:
    """The best complete trial as a JSON row, or ``None`` before any trial completed."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    return trial_row(study.best_trial, run)


def read_study(run: RunConfig, storage: str | None = None) -> optuna.Study:
    """The run's study, opened read-only (see :func:`tuner.storage.open_reader`): nothing is created or written."""
    url = resolve_url(storage, run.study.storage)
    backend = open_reader(url)
    find_study_id(backend, run.name, url)
    return optuna.load_study(study_name=run.name, storage=backend)


def trials(run: RunConfig, storage: str | None = None) -> list[dict[str, Any]]:
    return [trial_row(t, run) for t in read_study(run, storage).get_trials(deepcopy=False)]


def best(run: RunConfig, storage: str | None = None) -> dict[str, Any]:
    row = best_trial(read_study(run, storage), run)
    if row is None:
        raise TunerError(f"study {run.name!r} has no complete trial yet")
    return row


def record_test(run: RunConfig, metrics: dict[str, Any], storage: str | None = None) -> None:
    """Keep the best trial's test metrics in the study (attribute ``test:NUMBER``) for reports.

    A finished trial's own attributes can no longer change in Optuna, so they go on the study.
    """
    study = open_study(run, storage, create=False)
    row = best_trial(study, run)
    if row is not None:
        study.set_user_attr(f"{TEST_ATTR}{row['number']}", metrics)


def best_checkpoint(run: RunConfig, storage: str | None = None) -> str:
    row = best(run, storage)
    path = row["attrs"].get("checkpoint")
    if not path or not Path(path).is_file():
        raise TunerError(f"the best trial ({row['number']}) of study {run.name!r} has no checkpoint on this machine "
                         f"(recorded: {path})")
    return str(path)


def list_studies(storage: str | None = None, root: Path | None = None) -> dict[str, Any]:
    """Study files under ``studies/`` and the studies in the storage, with trial counts."""
    folder = (root or Path.cwd()) / "studies"
    files = sorted(str(p) for p in folder.glob("*.toml")) if folder.is_dir() else []
    url = resolve_url(storage)
    try:
        summaries = optuna.study.get_all_study_summaries(open_reader(url))
    except NoDatabase:  # none yet: the study files are still worth listing
        summaries = []
    stored = [{"name": s.study_name, "trials": s.n_trials,
               "best_value": s.best_trial.value if s.best_trial else None} for s in summaries]
    return {"files": files, "storage": mask(url), "studies": stored}


def locate_study(study: str, storage: str | None = None) -> tuple[str, str, RunConfig | None]:
    """Where ``--study`` lives: its name, its storage URL, and its study file's settings where there is one.

    ``study`` is a study file's name or path (as for ``tuner run``), or else the name of a study in
    the storage (``--storage``, ``$TUNER_STORAGE`` or the default), for studies whose file is elsewhere.
    """
    try:
        path = find_study(study)
    except ConfigError:
        given = Path(study).expanduser()
        if given.suffix == ".toml" or (given.parent != Path(".") and given.exists()):  # a path, not a name
            raise
        return study, resolve_url(storage), None
    run = load_study(path)
    return run.name, resolve_url(storage, run.study.storage), run


def find_study_id(storage: Any, name: str, url: str) -> int:
    """The id of study ``name`` in an opened storage, or an error that lists the studies there."""
    try:
        return int(storage.get_study_id_from_name(name))
    except KeyError:
        names = sorted(s.study_name for s in storage.get_all_studies())
        raise TunerError(f"no study {name!r} in {mask(url)}; studies there: {names or 'none'}") from None
