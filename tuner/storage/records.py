"""What a stored trial says about itself: its retry links, whether the study failed it, its JSON row, the best one.

Pure functions of Optuna's ``FrozenTrial``, shared by the worker, the CLI and the report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tuner._compat.optuna import retried_trial_number
from tuner._compat.optuna import retry_history as _retry_history
from tuner.config.schema import StudyFile
from tuner.keys import NOT_ADMITTED_ATTR, RETRY_OF_ATTR, STUDY_ERROR_ATTR


def complete_trials(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """The complete trials with a finite value."""
    return [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]


def retry_history(trial: FrozenTrial) -> list[int]:
    """The numbers of the trials this one retries, oldest first (empty for a first attempt), as Optuna's
    ``RetryFailedTrialCallback.retry_history`` reads them."""
    return _retry_history(trial)


def lineage(trial: FrozenTrial) -> int:
    """The number of the first attempt of the trial that ``trial`` is, or retries."""
    history = retry_history(trial)
    return history[0] if history else trial.number


def is_not_admitted(trial: FrozenTrial) -> bool:
    """Whether ``trial`` was created past the budget and failed before it ran (see tuner.study.loop)."""
    return trial.state == TrialState.FAIL and bool(trial.user_attrs.get(NOT_ADMITTED_ATTR))


def is_study_error(trial: FrozenTrial) -> bool:
    """Whether ``trial`` failed because of an error of the study itself (bad data, an unusable backbone),
    not of its own settings."""
    return trial.state == TrialState.FAIL and bool(trial.user_attrs.get(STUDY_ERROR_ATTR))


@dataclass(frozen=True)
class TrialRow:
    """One trial as ``tuner trials`` and ``tuner best`` show it.

    ``params`` holds the learning rate used (the finder's, where it chose one) and the study file's fixed
    backbone and batch size where they were not sampled; ``attrs`` are the trial's user attributes.
    """

    number: int
    state: str  # the TrialState's name
    value: float | None
    params: dict[str, Any]
    duration_s: float | None  # start to end; None while it runs
    attrs: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The row as a stable JSON object (see docs/commands.md, "JSON output")."""
        return {"number": self.number, "state": self.state, "value": self.value, "params": self.params,
                "duration_s": self.duration_s, "attrs": self.attrs}


def trial_row(trial: FrozenTrial, run: StudyFile | None = None) -> TrialRow:
    """One trial as a :class:`TrialRow`; with ``run``, the study file's fixed choices fill its params."""
    params = dict(trial.params)
    if "lr_used" in trial.user_attrs:
        params["learning_rate"] = trial.user_attrs["lr_used"]
    if run is not None:
        params.setdefault("backbone", run.model.backbone.label)
        params.setdefault("batch_size", run.data.batch_size)
    duration = (trial.datetime_complete - trial.datetime_start).total_seconds() if (
        trial.datetime_complete and trial.datetime_start) else None
    return TrialRow(number=trial.number, state=trial.state.name, value=trial.value, params=params,
                    duration_s=duration, attrs=dict(trial.user_attrs))


def retry_of(trial: FrozenTrial) -> int | None:
    """The number of the trial this one retries (the one before it, for a retry of a retry): the last
    of the retry history Optuna's retry callback stores, else its ``failed_trial``, else tuner's
    ``retry_of``. ``failed_trial`` alone will not do: it is the first attempt's number, inherited by every
    later retry. A queued retry is a copy of the failed trial's user attributes, so its ``retry_of``
    attribute is the failed trial's own until a worker takes it up; the history is right at once."""
    history = retry_history(trial)
    value = history[-1] if history else retried_trial_number(trial)
    if value is None:
        value = trial.user_attrs.get(RETRY_OF_ATTR)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def best_trial(trials: Iterable[FrozenTrial], direction: str = "maximize") -> FrozenTrial | None:
    """The best complete trial (the lowest number on ties), or ``None``."""
    complete = sorted(complete_trials(trials), key=lambda t: t.number)
    if not complete:
        return None
    sign = 1.0 if direction == "maximize" else -1.0
    return max(complete, key=lambda t: (sign * float(t.value or 0.0), -t.number))


def best_row(study: optuna.Study, run: StudyFile | None = None) -> TrialRow | None:
    """The study's best complete trial as a row (see :func:`trial_row`), or ``None`` before any completed."""
    direction = "maximize" if study.direction == StudyDirection.MAXIMIZE else "minimize"
    best = best_trial(study.get_trials(deepcopy=False), direction)
    return None if best is None else trial_row(best, run)
