"""The report's data, continued: choices, parallel coordinates, importances, the timeline and the tables."""

from __future__ import annotations

import math
import warnings
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.keys import FAIL_REASON_ATTR, HOST_ATTR, WORKER_ATTR
from tuner.report.data import (
    _better,
    _history,
    choice,
    duration_s,
    epochs_run,
    finite,
    state_label,
    validations_per_epoch,
)
from tuner.report.snapshot import StudySnapshot
from tuner.storage.records import complete_trials, retry_of

MIN_IMPORTANCE_TRIALS = 5


def choices_data(trials: Sequence[FrozenTrial], defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Values of complete trials per backbone and per batch size, and each one's value against its compute time."""
    defaults = defaults or {}
    groups: dict[str, dict[str, list[float]]] = {"backbone": defaultdict(list), "batch_size": defaultdict(list)}
    cost: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for trial in sorted(complete_trials(trials), key=lambda t: t.number):
        value = float(trial.value or 0.0)
        for key, values in groups.items():
            values[str(choice(trial, key, defaults))].append(value)
        seconds = duration_s(trial)
        if seconds is not None:
            cost[str(choice(trial, "backbone", defaults))].append(
                {"number": trial.number, "seconds": seconds, "value": value,
                 "batch_size": str(choice(trial, "batch_size", defaults))})
    return {"backbone": {k: v for k, v in sorted(groups["backbone"].items())},
            "batch_size": {k: v for k, v in sorted(groups["batch_size"].items(), key=lambda kv: _sort_key(kv[0]))},
            "cost": dict(sorted(cost.items()))}


def _sort_key(text: str) -> tuple[int, float, str]:
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def parallel_data(trials: Sequence[FrozenTrial]) -> dict[str, Any]:
    """Parallel coordinates over complete trials: every parameter they all have, the learning rate used, the value.

    Categorical parameters become indices with their labels; log-scaled ones are drawn on log10.
    """
    complete = sorted(complete_trials(trials), key=lambda t: t.number)
    if not complete:
        return {"dimensions": [], "values": [], "numbers": [], "left_out": []}
    names = sorted(set.intersection(*(set(t.params) for t in complete)))
    left_out = sorted(set().union(*(set(t.params) for t in complete)) - set(names))
    dimensions = []
    for name in names:
        distribution = complete[0].distributions.get(name)
        raw = [t.params[name] for t in complete]
        if isinstance(distribution, optuna.distributions.CategoricalDistribution) or not all(finite(v) for v in raw):
            labels = sorted({str(v) for v in raw}, key=_sort_key)
            index = {label: i for i, label in enumerate(labels)}
            dimensions.append({"name": name, "values": [index[str(v)] for v in raw], "labels": labels, "log": False})
        else:
            log = bool(getattr(distribution, "log", False))
            dimensions.append({"name": name, "values": [math.log10(v) if log else float(v) for v in raw],
                               "labels": None, "log": log})
    if all(finite(t.user_attrs.get("lr_used")) and t.user_attrs["lr_used"] > 0 for t in complete):
        dimensions.append({"name": "lr_used", "values": [math.log10(t.user_attrs["lr_used"]) for t in complete],
                           "labels": None, "log": True})
    return {"dimensions": dimensions, "values": [float(t.value or 0.0) for t in complete],
            "numbers": [t.number for t in complete], "left_out": left_out}


def importance_data(trials: Sequence[FrozenTrial], direction: str = "maximize") -> dict[str, Any]:
    """Parameter importances by PED-ANOVA (Optuna's default evaluator), or why there are none.

    Returns ``{"importances": {param: share}, "reason": None}`` or ``{"importances": {}, "reason": text}``.
    """
    complete = complete_trials(trials)
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        return {"importances": {}, "reason": f"parameter importances need at least {MIN_IMPORTANCE_TRIALS} complete "
                                             f"trials; this study has {len(complete)}"}
    varied = [name for name in set().union(*(t.params for t in complete))
              if len({repr(t.params.get(name)) for t in complete}) > 1]
    if not varied:
        return {"importances": {}, "reason": "no parameter took more than one value among the complete trials"}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created in memory" line
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study = optuna.create_study(direction="minimize" if direction == "minimize" else "maximize",
                                        storage=optuna.storages.InMemoryStorage())
            study.add_trials(complete)
            found = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except (ValueError, RuntimeError, ZeroDivisionError) as err:
        return {"importances": {}, "reason": f"PED-ANOVA could not rank the parameters: {err}"}
    finally:
        optuna.logging.set_verbosity(verbosity)
    return {"importances": {k: float(v) for k, v in found.items()}, "reason": None}


def timeline_data(trials: Sequence[FrozenTrial], now: datetime | None = None) -> dict[str, Any]:
    """One lane per worker (host and worker label), a bar per trial from start to end, and retry links.

    Running trials end at ``now``; waiting trials have not started and are left out.
    """
    bars = []
    for trial in sorted(trials, key=lambda t: t.number):
        start = trial.datetime_start
        end = trial.datetime_complete or (now if trial.state == TrialState.RUNNING else None) or start
        if start is None or end is None:
            continue
        attrs = trial.user_attrs
        worker = attrs.get(WORKER_ATTR)
        host = attrs.get(HOST_ATTR)
        lane = f"{host or '?'} / {worker if worker is not None else '?'}" if (host or worker is not None) \
            else "unknown worker"
        bars.append({"number": trial.number, "lane": lane, "start": start, "end": end, "state": state_label(trial),
                     "value": trial.value, "fail_reason": attrs.get(FAIL_REASON_ATTR), "retry_of": retry_of(trial),
                     "resumed_step": attrs.get("resumed_step")})
    by_number = {b["number"]: b for b in bars}
    links = [{"from": b["retry_of"], "to": b["number"], "from_lane": by_number[b["retry_of"]]["lane"],
              "from_time": by_number[b["retry_of"]]["end"], "to_lane": b["lane"], "to_time": b["start"]}
             for b in bars if b["retry_of"] is not None and b["retry_of"] in by_number]
    lanes = sorted({str(b["lane"]) for b in bars})
    return {"lanes": lanes, "bars": bars, "links": links}


def table_data(trials: Sequence[FrozenTrial], defaults: Mapping[str, Any] | None = None,
               now: datetime | None = None) -> dict[str, Any]:
    """One row per trial for the sortable table: the columns, and per cell a shown text and a sort key."""
    defaults = defaults or {}
    per_epoch = validations_per_epoch(trials)
    params = sorted(set().union(*(set(t.params) for t in trials)) - {"backbone", "batch_size", "learning_rate"}) \
        if trials else []
    columns = ["#", "state", "value", "pmr", "epochs", "lr used", "backbone", "batch size", *params, "seconds",
               "worker", "note"]
    rows = []
    for trial in sorted(trials, key=lambda t: t.number):
        attrs = trial.user_attrs
        note = attrs.get(FAIL_REASON_ATTR) or ""
        if retry_of(trial) is not None:
            note = f"retry of #{retry_of(trial)}" + (f"; {note}" if note else "")
        lr = attrs.get("lr_used", trial.params.get("learning_rate"))
        epochs = epochs_run(trial, per_epoch) if _history(trial) or "epochs" in attrs else None
        cells: list[Any] = [trial.number, state_label(trial), trial.value, attrs.get("val_pmr"), epochs,
                            lr, choice(trial, "backbone", defaults), choice(trial, "batch_size", defaults),
                            *[trial.params.get(p) for p in params], duration_s(trial, now),
                            attrs.get(WORKER_ATTR), note]
        rows.append([_cell(c) for c in cells])
    return {"columns": columns, "rows": rows}


def _cell(value: Any) -> tuple[str, Any]:
    """(shown text, sort key): numbers sort as numbers, empty cells last."""
    if value is None or value == "":
        return "", None
    if isinstance(value, bool):
        return str(value), str(value)
    if isinstance(value, int):
        return str(value), value
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value), None
        text = f"{value:.3e}" if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5) else f"{value:.4g}"
        return text, value
    return str(value), str(value).lower()


def compare_data(snapshots: Sequence[StudySnapshot]) -> list[dict[str, Any]]:
    """Per study: trial states, the best value, compute time, and the best so far by trial and by compute."""
    studies = []
    for snapshot in snapshots:
        better = _better(snapshot.direction)
        best: float | None = None
        spent = 0.0
        by_trial, by_compute = [], []
        for trial in sorted(snapshot.trials, key=lambda t: t.number):
            spent += duration_s(trial, snapshot.taken_at) or 0.0
            if trial.state == TrialState.COMPLETE and trial.value is not None and finite(trial.value):
                best = float(trial.value) if best is None else better(best, float(trial.value))
            if best is not None:
                by_trial.append((trial.number, best))
                by_compute.append((spent / 3600, best))
        studies.append({"study": snapshot.name, "states": dict(Counter(t.state.name for t in snapshot.trials)),
                        "trials": len(snapshot.trials), "best": best, "compute_s": spent,
                        "best_by_trial": by_trial, "best_by_compute_h": by_compute})
    return studies
