"""The optimize loop: open the study in its storage, run trials until the budget is spent, summarise.

The budget ``n_trials`` counts finished trials (complete, pruned, failed) and running ones, across
every worker: a worker never starts a trial once the study holds ``n_trials`` of them, so a study run
again resumes up to the budget and stops there.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner import search
from tuner.config import RunConfig, find_study, load_study
from tuner.errors import ConfigError, TunerError
from tuner.storage import mask, open_storage, resolve_url

log = logging.getLogger(__name__)

TEST_ATTR = "test:"  # study attribute prefix of a trial's test metrics, set by `tuner evaluate --study`
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def load_run(study: str, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A study file by name or path, validated, with its sampler and pruner checked too."""
    path = find_study(study)
    run = load_study(path, overrides)
    try:
        search.build_sampler(run.study.sampler, run)
        search.build_pruner(run.study.pruner)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return run


def open_study(run: RunConfig, storage: str | None = None, create: bool = True) -> optuna.Study:
    """The run's study in its storage, created if absent. A study that exists with another metric or
    direction is refused rather than mixed."""
    url = resolve_url(storage, run.study.storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    backend = open_storage(url)
    sampler = search.build_sampler(run.study.sampler, run)
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
    return len(study.get_trials(deepcopy=False, states=COUNTED))


@dataclass
class RunSummary:
    study: str
    storage: str
    trials_run: int
    finished: int
    n_trials: int
    best: dict[str, Any] | None


def run_study(
    run: RunConfig,
    storage: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    output_dir: str | Path | None = None,
    worker: str = "0",
    progress: bool | None = None,
) -> RunSummary:
    """Run trials of ``run``'s study until ``n_trials`` (the study's total) or ``timeout`` seconds.

    The timeout stops the worker after its current trial.
    """
    from tuner.objective import Objective  # torch is imported here, not for `tuner trials`

    budget = n_trials or run.study.n_trials
    timeout = timeout if timeout is not None else run.study.timeout
    study = open_study(run, storage)
    if run.study.baseline and not study.trials:
        study.enqueue_trial(search.baseline_params(run), user_attrs={"baseline": True})
    interactive = sys.stderr.isatty() if progress is None else progress
    objective = Objective(run, Path(output_dir or Path(run.trainer.output_dir) / run.name), worker, interactive)
    started, ran = time.monotonic(), 0
    progress_lines = _Progress(budget, counted(study), interactive)
    while counted(study) < budget:
        if timeout is not None and time.monotonic() - started >= timeout:
            log.info("timeout of %.0f s reached; stopping after %d trials", timeout, ran)
            break
        progress_lines.start()
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True,
                       callbacks=[lambda _study, trial: progress_lines.finished(trial)])
        ran += 1
    url = resolve_url(storage, run.study.storage)
    return RunSummary(run.name, mask(url), ran, len(study.get_trials(deepcopy=False, states=FINISHED)), budget,
                      best_trial(study, run))


class _Progress:
    """Trial-level progress: a bar line as each trial starts (on a terminal), a plain line as it ends.

    Lightning draws its own live progress for epochs under the bar line; a second live bar for trials
    would fight it for the terminal, so the trial bar is redrawn as a line when each trial starts.
    """

    def __init__(self, total: int, done: int, interactive: bool) -> None:
        self.total, self.done, self.interactive = total, done, interactive

    def start(self) -> None:
        if self.interactive:
            width = 30
            filled = width * min(self.done, self.total) // max(self.total, 1)
            print(f"trials [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}: "
                  f"starting trial {self.done + 1}", file=sys.stderr, flush=True)

    def finished(self, trial: FrozenTrial) -> None:
        self.done += 1
        print(f"trial {trial.number}: {_line(trial)}", flush=True)


def _line(trial: FrozenTrial) -> str:
    value = "" if trial.value is None else f" value={trial.value:.4f}"
    reason = trial.user_attrs.get("fail_reason")
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


def trials(run: RunConfig, storage: str | None = None) -> list[dict[str, Any]]:
    study = open_study(run, storage, create=False)
    return [trial_row(t, run) for t in study.get_trials(deepcopy=False)]


def best(run: RunConfig, storage: str | None = None) -> dict[str, Any]:
    row = best_trial(open_study(run, storage, create=False), run)
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
    summaries = optuna.study.get_all_study_summaries(open_storage(url))
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
        if study.endswith(".toml"):
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
