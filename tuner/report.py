"""Figures of a study: pure functions from trials to figure data, and one self-contained HTML page.

Computing and drawing are apart, as in ``optuna.visualization``: the ``*_data`` functions take
``FrozenTrial`` lists (and the study's attributes) and return plain values, which the tests check; the
``draw_*`` functions turn those values into plotly figure specifications, and :func:`render_html`
lays them out in one HTML file with plotly.js embedded from the installed ``plotly`` package, so the
page opens offline. Nothing here imports torch: ``tuner report`` starts in a second.

Every string that comes from a study (its name, parameters, attributes, error messages) is
HTML-escaped before it reaches the page, and the figures' JSON is embedded with ``<``, ``>`` and
``&`` escaped, so a ``<script>`` in a study name or a fail reason stays text.
"""

from __future__ import annotations

import html
import json
import math
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import TunerError
from tuner.runner import TEST_ATTR, find_study_id, locate_study
from tuner.storage import mask, open_reader

# tuner.objective.FINDER_ATTR (that module imports torch): the study attribute prefix of cached finder results
FINDER_ATTR = "lr_finder:"
MIN_IMPORTANCE_TRIALS = 5
STATE_COLOURS = {
    "COMPLETE": "#2a9d8f", "PRUNED": "#e9c46a", "FAIL": "#e63946", "FAIL (stale)": "#7b2cbf",
    "FAIL (interrupted)": "#8d99ae", "RUNNING": "#4895ef", "WAITING": "#cccccc",
}
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
DEFAULT_LABEL = "(study default)"


@dataclass(frozen=True)
class StudySnapshot:
    """A study as read once from its storage: what every figure is computed from.

    Args:
        defaults: the study file's fixed settings where it is known (``backbone``, ``batch_size``,
            ``max_epochs``), for trials that did not sample them.
        taken_at: when it was read; running trials are drawn up to this time.
    """

    name: str
    storage: str
    direction: str = "maximize"
    metric: str = "val_kendall_tau"
    trials: Sequence[FrozenTrial] = ()
    user_attrs: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    taken_at: datetime = field(default_factory=datetime.now)


def load_snapshot(study: str, storage: str | None = None) -> StudySnapshot:
    """Read a study (a study file's name or path, or a study name in the storage) without writing to it."""
    name, url, run = locate_study(study, storage)
    backend = open_reader(url)
    find_study_id(backend, name, url)
    loaded = optuna.load_study(study_name=name, storage=backend)
    defaults: dict[str, Any] = {}
    if run is not None:
        defaults = {"backbone": run.model.backbone.label, "batch_size": run.data.batch_size,
                    "max_epochs": run.trainer.max_epochs}
    attrs = loaded.user_attrs
    return StudySnapshot(name=name, storage=mask(url), direction=loaded.direction.name.lower(),
                         metric=str(attrs.get("metric", "val_kendall_tau")),
                         trials=loaded.get_trials(deepcopy=False), user_attrs=attrs, defaults=defaults)


# ---------------------------------------------------------------------------------------------------
# Helpers over trials


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (attributes may hold anything, NaN included)."""
    return float(value) if _finite(value) else None


def duration_s(trial: FrozenTrial, now: datetime | None = None) -> float | None:
    """Compute time of a trial: its recorded ``wall_s``, else start to end (to ``now`` while running)."""
    wall = _number(trial.user_attrs.get("wall_s"))
    if wall is not None:
        return wall
    end = trial.datetime_complete or (now if trial.state == TrialState.RUNNING else None)
    if trial.datetime_start and end:
        return max(0.0, (end - trial.datetime_start).total_seconds())
    return None


def choice(trial: FrozenTrial, key: str, defaults: Mapping[str, Any]) -> Any:
    """A sampled parameter, else the study file's fixed setting, else a plain placeholder."""
    if key in trial.params:
        return trial.params[key]
    return defaults.get(key, DEFAULT_LABEL)


def state_label(trial: FrozenTrial) -> str:
    """The state name, with failures of a lost worker (``stale``) or a stopped one (``interrupted``) told apart."""
    if trial.state == TrialState.FAIL:
        reason = str(trial.user_attrs.get("fail_reason") or "")
        for kind in ("stale", "interrupted"):
            if reason.startswith(kind):
                return f"FAIL ({kind})"
    return trial.state.name


def retry_of(trial: FrozenTrial) -> int | None:
    """The number of the trial this one retries: tuner's ``retry_of``, else Optuna's retry callback's link."""
    value = trial.user_attrs.get("retry_of")
    if value is None:
        # what RetryHeartbeatStaleTrialCallback.retried_trial_number reads, without its experimental warning
        value = trial.system_attrs.get("failed_trial")
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _better(direction: str) -> Any:
    return max if direction == "maximize" else min


def _complete(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and _finite(t.value)]


def best_trial(trials: Iterable[FrozenTrial], direction: str = "maximize") -> FrozenTrial | None:
    """The best complete trial (the lowest number on ties), or ``None``."""
    complete = sorted(_complete(trials), key=lambda t: t.number)
    if not complete:
        return None
    sign = 1.0 if direction == "maximize" else -1.0
    return max(complete, key=lambda t: (sign * float(t.value or 0.0), -t.number))


# ---------------------------------------------------------------------------------------------------
# Figure data: pure functions


def summary_data(snapshot: StudySnapshot) -> dict[str, Any]:
    """The header: trial counts by state, the best trial, its test metrics if evaluated, total compute."""
    trials = snapshot.trials
    counts = Counter(t.state.name for t in trials)
    best = best_trial(trials, snapshot.direction)
    compute = sum(d for t in trials if (d := duration_s(t, snapshot.taken_at)) is not None)
    finished = sum(counts[s] for s in ("COMPLETE", "PRUNED", "FAIL"))
    result: dict[str, Any] = {
        "study": snapshot.name, "storage": snapshot.storage, "metric": snapshot.metric,
        "direction": snapshot.direction, "trials": len(trials), "finished": finished,
        "states": {s.name: counts[s.name] for s in TrialState if counts[s.name]},
        "compute_s": compute, "best": None, "test": None,
    }
    if best is not None:
        params = dict(best.params)
        if _finite(best.user_attrs.get("lr_used")):
            params["learning_rate"] = best.user_attrs["lr_used"]
        for key in ("backbone", "batch_size"):
            params.setdefault(key, choice(best, key, snapshot.defaults))
        result["best"] = {"number": best.number, "value": best.value, "params": params,
                          "val_pmr": best.user_attrs.get("val_pmr")}
        result["test"] = _test_metrics(best, snapshot.user_attrs)
    return result


def _test_metrics(trial: FrozenTrial, study_attrs: Mapping[str, Any]) -> dict[str, float] | None:
    recorded = study_attrs.get(f"{TEST_ATTR}{trial.number}")
    if isinstance(recorded, Mapping) and _finite(recorded.get("kendall_tau")):
        return {k: float(v) for k, v in recorded.items() if _finite(v)}
    if _finite(trial.user_attrs.get("test_tau")):
        found = {"kendall_tau": float(trial.user_attrs["test_tau"])}
        if _finite(trial.user_attrs.get("test_pmr")):
            found["pmr"] = float(trial.user_attrs["test_pmr"])
        return found
    return None


def history_data(trials: Sequence[FrozenTrial], direction: str = "maximize") -> dict[str, list[Any]]:
    """Each complete or pruned trial's value by number, and the best complete value so far."""
    points: dict[str, list[Any]] = {"complete": [], "pruned": [], "best": []}
    better = _better(direction)
    best: float | None = None
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.value is None or not _finite(trial.value):
            continue
        if trial.state == TrialState.COMPLETE:
            points["complete"].append((trial.number, float(trial.value)))
            best = float(trial.value) if best is None else better(best, float(trial.value))
            points["best"].append((trial.number, best))
        elif trial.state == TrialState.PRUNED:
            points["pruned"].append((trial.number, float(trial.value)))
    return points


def validations_per_epoch(trials: Iterable[FrozenTrial]) -> int:
    """How many validations ran per epoch: the most any trial's history holds for one epoch."""
    most = 1
    for trial in trials:
        counts = Counter(r.get("epoch") for r in _history(trial))
        most = max(most, *counts.values()) if counts else most
    return most


def _history(trial: FrozenTrial) -> list[Mapping[str, Any]]:
    history = trial.user_attrs.get("history")
    return [r for r in history if isinstance(r, Mapping)] if isinstance(history, list) else []


def curve_points(trial: FrozenTrial, metric: str, per_epoch: int) -> list[tuple[float, float]]:
    """``(epochs trained, metric)`` at each of the trial's validations.

    The history records each validation's epoch index; the ``k``-th of ``per_epoch`` validations of
    epoch ``e`` ran after ``e + k / per_epoch`` epochs of training.
    """
    seen: Counter[Any] = Counter()
    points = []
    for record in _history(trial):
        epoch = record.get("epoch")
        if not isinstance(epoch, int):
            continue
        seen[epoch] += 1
        value = _number(record.get(metric))
        if value is not None:
            points.append((epoch + seen[epoch] / per_epoch, value))
    return points


def learning_curves_data(trials: Sequence[FrozenTrial], metric: str,
                         defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Validation ``metric`` by epoch for every trial, grouped by backbone, and where pruned trials stopped."""
    per_epoch = validations_per_epoch(trials)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    stops = []
    for trial in sorted(trials, key=lambda t: t.number):
        points = curve_points(trial, metric, per_epoch)
        if not points:
            continue
        backbone = str(choice(trial, "backbone", defaults or {}))
        groups[backbone].append({"number": trial.number, "state": trial.state.name, "points": points})
        if trial.state == TrialState.PRUNED:
            stops.append({"number": trial.number, "backbone": backbone, "x": points[-1][0], "y": points[-1][1]})
    return {"per_epoch": per_epoch, "backbones": dict(groups), "pruned": stops}


def epochs_run(trial: FrozenTrial, per_epoch: int = 1) -> float:
    """Epochs a trial trained: from its last validation, else its ``epochs`` attribute."""
    history = _history(trial)
    if history:
        epoch = history[-1].get("epoch")
        if isinstance(epoch, int):
            last = sum(1 for r in history if r.get("epoch") == epoch)
            return epoch + last / per_epoch
    return _number(trial.user_attrs.get("epochs")) or 0.0


def pruning_savings_data(trials: Sequence[FrozenTrial], max_epochs: int | None = None) -> dict[str, Any]:
    """Epochs and compute time the study ran, against what it would have run without pruning.

    A pruned trial would have trained to its planned epochs (its sampled ``max_epochs``, else the
    study's ``max_epochs``, else the most any complete trial ran), at the speed it trained before it
    was stopped; its set-up time (``wall_s - fit_s``) stays as it was. Complete and failed trials
    cost the same either way. Running and waiting trials are left out.

    Args:
        max_epochs: the study's epochs per trial (``trainer.max_epochs``), where known.
    """
    per_epoch = validations_per_epoch(trials)
    finished = sorted((t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)),
                      key=lambda t: t.number)
    if max_epochs is None:
        ran = [epochs_run(t, per_epoch) for t in finished if t.state == TrialState.COMPLETE]
        max_epochs = math.ceil(max(ran)) if ran else None
    rows: list[dict[str, Any]] = []
    for trial in finished:
        run = epochs_run(trial, per_epoch)
        planned_attr = trial.params.get("max_epochs", max_epochs)
        planned = float(planned_attr) if trial.state == TrialState.PRUNED and planned_attr else run
        planned = max(planned, run)
        seconds = duration_s(trial) or 0.0
        fit = _number(trial.user_attrs.get("fit_s"))
        fit = seconds if fit is None else fit
        seconds_planned = seconds
        if planned > run and run > 0:
            seconds_planned = seconds - fit + fit * planned / run
        rows.append({"number": trial.number, "state": trial.state.name, "epochs": run, "epochs_planned": planned,
                     "seconds": seconds, "seconds_planned": seconds_planned})
    keys = ("epochs", "epochs_planned", "seconds", "seconds_planned")
    totals: dict[str, float] = {key: float(sum(r[key] for r in rows)) for key in keys}
    planned_total = totals["epochs_planned"]
    totals["epochs_saved_fraction"] = (1 - totals["epochs"] / planned_total) if planned_total else 0.0
    totals["seconds_saved"] = totals["seconds_planned"] - totals["seconds"]
    cumulative: dict[str, list[float]] = {key: [] for key in keys}
    for key, values in cumulative.items():
        total = 0.0
        for row in rows:
            total += float(row[key])
            values.append(total)
    return {"rows": rows, "totals": totals, "cumulative": cumulative, "numbers": [r["number"] for r in rows],
            "pruned": sum(1 for r in rows if r["state"] == "PRUNED")}


def _parse_finder_key(key: str) -> tuple[str, str]:
    body = key[len(FINDER_ATTR):] if key.startswith(FINDER_ATTR) else key
    backbone, _, batch = body.rpartition("|")
    return (backbone, batch) if backbone else (body, "")


def lr_finder_data(trials: Sequence[FrozenTrial], study_attrs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each (backbone, batch size) finder curve with its suggestion, and the learning rates trials used.

    Curves come from the study's cached results (``scale`` mode) and, where a trial stored its own
    curve (``suggest`` mode), from the first trial that ran it.
    """
    curves: dict[str, dict[str, Any]] = {}

    def add(key: str, result: Mapping[str, Any]) -> None:
        if key in curves:
            return
        pairs = [(float(lr), float(loss)) for lr, loss in zip(result.get("lr") or [], result.get("loss") or [],
                                                              strict=False) if _finite(lr) and _finite(loss) and lr > 0]
        backbone, batch = _parse_finder_key(key)
        suggestion = result.get("suggestion")
        curves[key] = {"key": key, "backbone": backbone, "batch_size": batch, "lr": [p[0] for p in pairs],
                       "loss": [p[1] for p in pairs], "suggestion": _number(suggestion),
                       "reliable": bool(result.get("reliable")), "reason": str(result.get("reason") or ""),
                       "used": []}

    for key in sorted(study_attrs):
        if key.startswith(FINDER_ATTR) and isinstance(study_attrs[key], Mapping):
            add(key, study_attrs[key])
    ordered = sorted(trials, key=lambda t: t.number)
    for trial in ordered:
        info = trial.user_attrs.get("lr_finder")
        if isinstance(info, Mapping) and info.get("key") and info.get("lr"):
            add(str(info["key"]), info)
    for trial in ordered:
        info = trial.user_attrs.get("lr_finder")
        if not isinstance(info, Mapping) or str(info.get("key")) not in curves:
            continue
        used = _number(trial.user_attrs.get("lr_used"))
        if used is not None:
            curves[str(info["key"])]["used"].append({"number": trial.number, "lr": used,
                                                     "state": trial.state.name, "how": str(info.get("used", ""))})
    return list(curves.values())


def loss_at(lrs: Sequence[float], losses: Sequence[float], lr: float) -> float | None:
    """The finder's loss at ``lr``, interpolated on log(lr) and clamped to the curve's ends."""
    if not lrs:
        return None
    pairs = sorted(zip(lrs, losses, strict=True))
    if lr <= pairs[0][0]:
        return pairs[0][1]
    for (x0, y0), (x1, y1) in zip(pairs, pairs[1:], strict=False):
        if x0 <= lr <= x1:
            span = math.log(x1) - math.log(x0)
            weight = (math.log(lr) - math.log(x0)) / span if span else 0.0
            return y0 + weight * (y1 - y0)
    return pairs[-1][1]


def choices_data(trials: Sequence[FrozenTrial], defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Values of complete trials per backbone and per batch size, and each one's value against its compute time."""
    defaults = defaults or {}
    groups: dict[str, dict[str, list[float]]] = {"backbone": defaultdict(list), "batch_size": defaultdict(list)}
    cost: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for trial in sorted(_complete(trials), key=lambda t: t.number):
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
    complete = sorted(_complete(trials), key=lambda t: t.number)
    if not complete:
        return {"dimensions": [], "values": [], "numbers": [], "left_out": []}
    names = sorted(set.intersection(*(set(t.params) for t in complete)))
    left_out = sorted(set().union(*(set(t.params) for t in complete)) - set(names))
    dimensions = []
    for name in names:
        distribution = complete[0].distributions.get(name)
        raw = [t.params[name] for t in complete]
        if isinstance(distribution, optuna.distributions.CategoricalDistribution) or not all(_finite(v) for v in raw):
            labels = sorted({str(v) for v in raw}, key=_sort_key)
            index = {label: i for i, label in enumerate(labels)}
            dimensions.append({"name": name, "values": [index[str(v)] for v in raw], "labels": labels, "log": False})
        else:
            log = bool(getattr(distribution, "log", False))
            dimensions.append({"name": name, "values": [math.log10(v) if log else float(v) for v in raw],
                               "labels": None, "log": log})
    if all(_finite(t.user_attrs.get("lr_used")) and t.user_attrs["lr_used"] > 0 for t in complete):
        dimensions.append({"name": "lr_used", "values": [math.log10(t.user_attrs["lr_used"]) for t in complete],
                           "labels": None, "log": True})
    return {"dimensions": dimensions, "values": [float(t.value or 0.0) for t in complete],
            "numbers": [t.number for t in complete], "left_out": left_out}


def importance_data(trials: Sequence[FrozenTrial], direction: str = "maximize") -> dict[str, Any]:
    """Parameter importances by PED-ANOVA (Optuna's default evaluator), or why there are none.

    Returns ``{"importances": {param: share}, "reason": None}`` or ``{"importances": {}, "reason": text}``.
    """
    complete = _complete(trials)
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
        worker = attrs.get("worker")
        host = attrs.get("host")
        lane = f"{host or '?'} / {worker if worker is not None else '?'}" if (host or worker is not None) \
            else "unknown worker"
        bars.append({"number": trial.number, "lane": lane, "start": start, "end": end, "state": state_label(trial),
                     "value": trial.value, "fail_reason": attrs.get("fail_reason"), "retry_of": retry_of(trial),
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
        note = attrs.get("fail_reason") or ""
        if retry_of(trial) is not None:
            note = f"retry of #{retry_of(trial)}" + (f"; {note}" if note else "")
        lr = attrs.get("lr_used", trial.params.get("learning_rate"))
        epochs = epochs_run(trial, per_epoch) if _history(trial) or "epochs" in attrs else None
        cells: list[Any] = [trial.number, state_label(trial), trial.value, attrs.get("val_pmr"), epochs,
                            lr, choice(trial, "backbone", defaults), choice(trial, "batch_size", defaults),
                            *[trial.params.get(p) for p in params], duration_s(trial, now),
                            attrs.get("worker"), note]
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
            if trial.state == TrialState.COMPLETE and trial.value is not None and _finite(trial.value):
                best = float(trial.value) if best is None else better(best, float(trial.value))
            if best is not None:
                by_trial.append((trial.number, best))
                by_compute.append((spent / 3600, best))
        studies.append({"study": snapshot.name, "states": dict(Counter(t.state.name for t in snapshot.trials)),
                        "trials": len(snapshot.trials), "best": best, "compute_s": spent,
                        "best_by_trial": by_trial, "best_by_compute_h": by_compute})
    return studies


# ---------------------------------------------------------------------------------------------------
# Drawing: plotly figure specifications (plain dicts)

Figure = dict[str, Any]


def _e(value: Any) -> str:
    """A user-supplied value as HTML text (plotly reads entities back as the literal characters)."""
    return html.escape(str(value), quote=True)


def _layout(title: str, x_title: str, y_title: str, **extra: Any) -> dict[str, Any]:
    layout: dict[str, Any] = {
        "title": {"text": title}, "xaxis": {"title": {"text": x_title}}, "yaxis": {"title": {"text": y_title}},
        "margin": {"t": 50, "r": 20, "l": 60, "b": 50}, "height": 420, "hovermode": "closest",
        "legend": {"orientation": "h", "y": -0.2}}
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(layout.get(key), dict):
            layout[key] = {**layout[key], **value}
        else:
            layout[key] = value
    return layout


def _colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def draw_history(points: Mapping[str, list[Any]], metric: str) -> Figure:
    def trace(name: str, pairs: list[Any], **style: Any) -> dict[str, Any]:
        return {"type": "scatter", "name": name, "x": [p[0] for p in pairs], "y": [p[1] for p in pairs], **style}

    return {"data": [
        trace("complete", points["complete"], mode="markers", marker={"color": STATE_COLOURS["COMPLETE"]}),
        trace("pruned (last value)", points["pruned"], mode="markers",
              marker={"color": STATE_COLOURS["PRUNED"], "symbol": "x"}),
        trace("best so far", points["best"], mode="lines", line={"shape": "hv", "color": "#264653"}),
    ], "layout": _layout("Optimisation history", "trial", _e(metric))}


def draw_learning_curves(curves: Mapping[str, Any], metric: str) -> Figure:
    drawn = sum(len(trials) for trials in curves["backbones"].values())
    opacity = 1.0 if drawn <= 50 else 0.4  # thousands of curves: let the bands show through
    data = []
    for i, (backbone, trials) in enumerate(curves["backbones"].items()):
        xs: list[Any] = []
        ys: list[Any] = []
        text: list[Any] = []
        for trial in trials:
            for x, y in trial["points"]:
                xs.append(x)
                ys.append(y)
                text.append(f"trial {trial['number']} ({trial['state'].lower()})")
            xs.append(None)
            ys.append(None)
            text.append(None)
        data.append({"type": "scatter", "mode": "lines+markers", "name": _e(backbone), "x": xs, "y": ys,
                     "text": text, "connectgaps": False, "line": {"color": _colour(i), "width": 1}, "opacity": opacity,
                     "marker": {"size": 4, "color": _colour(i)},
                     "hovertemplate": "%{text}<br>epoch %{x:.2f}: %{y:.4f}<extra>%{fullData.name}</extra>"})
    stops = curves["pruned"]
    data.append({"type": "scatter", "mode": "markers", "name": "pruned here", "x": [s["x"] for s in stops],
                 "y": [s["y"] for s in stops], "text": [f"trial {s['number']} pruned" for s in stops],
                 "marker": {"symbol": "x", "size": 10, "color": "#e63946"},
                 "hovertemplate": "%{text}<br>epoch %{x:.2f}: %{y:.4f}<extra></extra>"})
    return {"data": data, "layout": _layout("Learning curves", "epochs trained", _e(metric))}


def draw_pruning_savings(savings: Mapping[str, Any]) -> Figure:
    numbers, cumulative = savings["numbers"], savings["cumulative"]
    hours = {k: [v / 3600 for v in cumulative[k]] for k in ("seconds", "seconds_planned")}
    data = [
        {"type": "scatter", "mode": "lines", "name": "epochs run", "x": numbers, "y": cumulative["epochs"],
         "line": {"color": "#2a9d8f"}},
        {"type": "scatter", "mode": "lines", "name": "epochs without pruning", "x": numbers,
         "y": cumulative["epochs_planned"], "line": {"color": "#2a9d8f", "dash": "dash"}},
        {"type": "scatter", "mode": "lines", "name": "compute hours run", "x": numbers, "y": hours["seconds"],
         "xaxis": "x2", "yaxis": "y2", "line": {"color": "#e76f51"}},
        {"type": "scatter", "mode": "lines", "name": "compute hours without pruning (estimate)", "x": numbers,
         "y": hours["seconds_planned"], "xaxis": "x2", "yaxis": "y2", "line": {"color": "#e76f51", "dash": "dash"}},
    ]
    layout = _layout("Pruning savings (cumulative)", "trial", "epochs",
                     xaxis={"domain": [0, 0.45]}, xaxis2={"domain": [0.55, 1], "title": {"text": "trial"},
                                                          "anchor": "y2"},
                     yaxis2={"anchor": "x2", "title": {"text": "compute hours"}})
    return {"data": data, "layout": layout}


def draw_lr_finder(curves: Sequence[Mapping[str, Any]]) -> Figure:
    data = []
    for i, curve in enumerate(curves):
        label = f"{curve['backbone']} | batch {curve['batch_size']}"
        colour = _colour(i)
        data.append({"type": "scatter", "mode": "lines", "name": _e(label), "x": curve["lr"], "y": curve["loss"],
                     "line": {"color": colour}, "legendgroup": str(i)})
        suggestion = curve["suggestion"]
        sx = [suggestion] if suggestion is not None else []
        sy = [loss_at(curve["lr"], curve["loss"], suggestion)] if suggestion is not None else []
        verdict = "reliable" if curve["reliable"] else "unreliable"
        data.append({"type": "scatter", "mode": "markers", "name": f"suggestion ({verdict})", "x": sx, "y": sy,
                     "legendgroup": str(i), "text": [_e(f"{verdict}: {curve['reason']}")] * len(sx),
                     "marker": {"symbol": "star" if curve["reliable"] else "star-open", "size": 14, "color": colour},
                     "hovertemplate": "suggestion %{x:.3g}<br>%{text}<extra></extra>"})
        used = curve["used"]
        data.append({"type": "scatter", "mode": "markers", "name": "learning rates used", "legendgroup": str(i),
                     "x": [u["lr"] for u in used], "y": [loss_at(curve["lr"], curve["loss"], u["lr"]) for u in used],
                     "text": [_e(f"trial {u['number']} ({u['state'].lower()}, {u['how']})") for u in used],
                     "marker": {"symbol": "circle-open", "size": 9, "color": colour},
                     "hovertemplate": "%{text}<br>lr %{x:.3g}<extra></extra>"})
    return {"data": data, "layout": _layout("Learning-rate finder", "learning rate", "smoothed loss",
                                            xaxis={"type": "log"})}


def draw_choice_box(groups: Mapping[str, list[float]], title: str, axis: str, metric: str) -> Figure:
    data = [{"type": "box", "name": _e(name), "y": values, "boxpoints": "all", "jitter": 0.4, "pointpos": 0,
             "marker": {"color": _colour(i), "size": 5}} for i, (name, values) in enumerate(groups.items())]
    return {"data": data, "layout": _layout(title, axis, _e(metric), showlegend=False)}


def draw_cost(cost: Mapping[str, list[dict[str, Any]]], metric: str) -> Figure:
    data = [{"type": "scatter", "mode": "markers", "name": _e(backbone), "x": [p["seconds"] / 60 for p in points],
             "y": [p["value"] for p in points], "text": [f"trial {p['number']}, batch {_e(p['batch_size'])}"
                                                         for p in points],
             "marker": {"color": _colour(i), "size": 8},
             "hovertemplate": "%{text}<br>%{x:.1f} min: %{y:.4f}<extra>%{fullData.name}</extra>"}
            for i, (backbone, points) in enumerate(cost.items())]
    return {"data": data, "layout": _layout("Quality against cost", "wall time per trial (minutes)", _e(metric))}


def draw_parallel(parallel: Mapping[str, Any], metric: str) -> Figure:
    dimensions = []
    for dim in parallel["dimensions"]:
        spec: dict[str, Any] = {"label": _e(dim["name"] + (" (log10)" if dim["log"] else "")), "values": dim["values"]}
        if dim["labels"] is not None:
            spec["tickvals"] = list(range(len(dim["labels"])))
            spec["ticktext"] = [_e(label) for label in dim["labels"]]
        dimensions.append(spec)
    dimensions.append({"label": _e(metric), "values": parallel["values"]})
    trace = {"type": "parcoords", "dimensions": dimensions,
             "line": {"color": parallel["values"], "colorscale": "Viridis", "showscale": True}}
    return {"data": [trace], "layout": {"title": {"text": "Parallel coordinates (complete trials)"}, "height": 440,
                                        "margin": {"t": 90, "r": 60, "l": 80, "b": 40}}}


def draw_importances(importances: Mapping[str, float]) -> Figure:
    ranked = sorted(importances.items(), key=lambda kv: kv[1])
    return {"data": [{"type": "bar", "orientation": "h", "name": "PED-ANOVA", "x": [v for _, v in ranked],
                      "y": [_e(k) for k, _ in ranked], "marker": {"color": "#457b9d"}}],
            "layout": _layout("Parameter importances (PED-ANOVA)", "importance", "", showlegend=False,
                              height=max(260, 60 + 40 * len(ranked)))}


def draw_timeline(timeline: Mapping[str, Any]) -> Figure:
    by_state: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for bar in timeline["bars"]:
        by_state[bar["state"]].append(bar)
    data = []
    for state in sorted(by_state, key=lambda s: list(STATE_COLOURS).index(s) if s in STATE_COLOURS else 99):
        bars = by_state[state]
        marker: dict[str, Any] = {"color": STATE_COLOURS.get(state, "#999999")}
        if state.startswith("FAIL ("):
            marker["pattern"] = {"shape": "/", "fillmode": "overlay", "fgcolor": "#ffffff", "fgopacity": 0.8}
        text = []
        for bar in bars:
            words = f"trial {bar['number']}: {state.lower()}"
            if bar["value"] is not None and _finite(bar["value"]):
                words += f", {bar['value']:.4f}"
            if bar["retry_of"] is not None:
                words += f", retry of {bar['retry_of']}"
            if bar["resumed_step"]:
                words += f", resumed at step {bar['resumed_step']}"
            if bar["fail_reason"]:
                words += f"<br>{_e(str(bar['fail_reason'])[:200])}"
            text.append(words)
        data.append({"type": "bar", "orientation": "h", "name": _e(state), "y": [_e(b["lane"]) for b in bars],
                     "base": [_iso(b["start"]) for b in bars],
                     "x": [max(1.0, (b["end"] - b["start"]).total_seconds() * 1000) for b in bars],
                     "text": text, "hovertemplate": "%{text}<extra></extra>", "textposition": "none",
                     "marker": marker})
    links = timeline["links"]
    if links:
        xs: list[Any] = []
        ys: list[Any] = []
        for link in links:
            xs += [_iso(link["from_time"]), _iso(link["to_time"]), None]
            ys += [_e(link["from_lane"]), _e(link["to_lane"]), None]
        data.append({"type": "scatter", "mode": "lines+markers", "name": "retry of", "x": xs, "y": ys,
                     "line": {"dash": "dot", "color": "#000000"}, "marker": {"symbol": "arrow", "angleref": "previous",
                                                                            "size": 10}, "hoverinfo": "skip"})
    lanes = [_e(lane) for lane in timeline["lanes"]]
    return {"data": data, "layout": _layout(
        "Worker timeline", "time", "worker", barmode="overlay", xaxis={"type": "date"},
        yaxis={"type": "category", "categoryorder": "array", "categoryarray": lanes, "automargin": True},
        height=max(260, 120 + 40 * len(lanes)))}


def _iso(moment: datetime) -> str:
    return moment.isoformat(sep=" ", timespec="milliseconds")


def draw_compare(studies: Sequence[Mapping[str, Any]]) -> list[Figure]:
    by_trial = [{"type": "scatter", "mode": "lines", "name": _e(s["study"]), "line": {"shape": "hv"},
                 "x": [p[0] for p in s["best_by_trial"]], "y": [p[1] for p in s["best_by_trial"]]} for s in studies]
    by_compute = [{"type": "scatter", "mode": "lines", "name": _e(s["study"]), "line": {"shape": "hv"},
                   "x": [p[0] for p in s["best_by_compute_h"]], "y": [p[1] for p in s["best_by_compute_h"]]}
                  for s in studies]
    states = sorted({state for s in studies for state in s["states"]},
                    key=lambda s: list(STATE_COLOURS).index(s) if s in STATE_COLOURS else 99)
    bars = [{"type": "bar", "name": state, "x": [_e(s["study"]) for s in studies],
             "y": [s["states"].get(state, 0) for s in studies], "marker": {"color": STATE_COLOURS.get(state)}}
            for state in states]
    return [
        {"data": by_trial, "layout": _layout("Best so far, by trial", "trial", "best value")},
        {"data": by_compute, "layout": _layout("Best so far, by compute", "compute hours", "best value")},
        {"data": bars, "layout": _layout("Trial states", "study", "trials", barmode="stack")},
    ]


# ---------------------------------------------------------------------------------------------------
# The page


@dataclass
class Section:
    """One part of the page: a title, a line of text, figures (by id) and any extra HTML."""

    id: str
    title: str
    text: str = ""
    figures: list[tuple[str, Figure]] = field(default_factory=list)
    html: str = ""


def _hours(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def header_html(summary: Mapping[str, Any]) -> str:
    states = ", ".join(f"{n} {s.lower()}" for s, n in summary["states"].items()) or "none"
    lines = [f"<h1>Study {_e(summary['study'])}</h1>",
             f"<p class='meta'>storage <code>{_e(summary['storage'])}</code> · {summary['trials']} trials "
             f"({_e(states)}) · total compute {_hours(summary['compute_s'])} · {_e(summary['direction'])} "
             f"{_e(summary['metric'])}</p>"]
    best = summary["best"]
    if best is None:
        reason = "no trial has finished yet" if not summary["finished"] else "no trial has completed yet"
        lines.append(f"<p class='empty'>This study has no finished trials to compare: {reason}.</p>"
                     if not summary["finished"] else f"<p class='empty'>No best trial: {reason}.</p>")
        return "\n".join(lines)
    params = ", ".join(f"{_e(k)}={_e(_format(v))}" for k, v in best["params"].items())
    pmr = f", PMR {best['val_pmr']:.3f}" if _finite(best.get("val_pmr")) else ""
    lines.append(f"<p class='best'>Best validation {_e(summary['metric'])}: <b>{best['value']:.4f}</b>{pmr} "
                 f"(trial {best['number']}: {params})</p>")
    test = summary["test"]
    if test:
        extra = f", PMR {test['pmr']:.3f}" if "pmr" in test else ""
        lines.append(f"<p class='best'>Its test tau: <b>{test['kendall_tau']:.4f}</b>{extra}</p>")
    else:
        lines.append("<p class='meta'>Its test tau: not evaluated yet (<code>tuner evaluate --study NAME</code> "
                     "records it).</p>")
    return "\n".join(lines)


def table_html(table: Mapping[str, Any], table_id: str = "trials") -> str:
    head = "".join(f"<th data-col='{i}' title='sort'>{_e(c)}</th>" for i, c in enumerate(table["columns"]))
    body = []
    for row in table["rows"]:
        cells = []
        for text, key in row:
            sort = "" if key is None else (repr(key) if isinstance(key, (int, float)) else _e(key))
            kind = "n" if isinstance(key, (int, float)) else "s"
            wrap = " class='long'" if len(text) > 24 else ""
            cells.append(f"<td data-sort='{sort}' data-kind='{kind}'{wrap}>{_e(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<table class='sortable' id='{table_id}'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def study_sections(snapshot: StudySnapshot) -> list[Section]:
    """Every section of one study's report, its figures drawn from the pure data functions above."""
    trials, metric = snapshot.trials, snapshot.metric
    sections: list[Section] = []
    history = history_data(trials, snapshot.direction)
    if history["complete"] or history["pruned"]:
        sections.append(Section("history", "Optimisation history",
                                f"Each trial's {_e(metric)}, with the best complete value so far.",
                                [("plot-history", draw_history(history, metric))]))
    curves = learning_curves_data(trials, metric, snapshot.defaults)
    if curves["backbones"]:
        sections.append(Section("curves", "Learning curves",
                                f"Validation {_e(metric)} at every validation of every trial, coloured by backbone; "
                                "a cross marks where a pruned trial stopped.",
                                [("plot-curves", draw_learning_curves(curves, metric))]))
    savings = pruning_savings_data(trials, snapshot.defaults.get("max_epochs"))
    if savings["rows"]:
        totals = savings["totals"]
        sections.append(Section(
            "savings", "Pruning savings",
            f"{savings['pruned']} pruned trials. The study trained {totals['epochs']:.1f} epochs where a study "
            f"without pruning would have trained {totals['epochs_planned']:.1f} "
            f"({totals['epochs_saved_fraction']:.0%} saved), and spent {_hours(totals['seconds'])} of compute "
            f"against an estimated {_hours(totals['seconds_planned'])}.",
            [("plot-savings", draw_pruning_savings(savings))]))
    finder = lr_finder_data(trials, snapshot.user_attrs)
    if finder:
        reasons = "; ".join(f"{_e(c['backbone'])} batch {_e(c['batch_size'])}: "
                            f"{'reliable' if c['reliable'] else 'unreliable'} ({_e(c['reason'])})" for c in finder)
        sections.append(Section("finder", "Learning-rate finder",
                                f"Each (backbone, batch size) curve, its suggestion (a star; hollow when judged "
                                f"unreliable) and the learning rates trials used (circles). {reasons}.",
                                [("plot-finder", draw_lr_finder(finder))]))
    else:
        sections.append(Section("finder", "Learning-rate finder",
                                "No finder curve is stored in this study (the finder was off, or no trial ran it)."))
    choices = choices_data(trials, snapshot.defaults)
    if choices["backbone"]:
        sections.append(Section("choices", "Backbones and batch sizes",
                                f"{_e(metric)} of complete trials per choice, and against each trial's wall time.",
                                [("plot-backbone", draw_choice_box(choices["backbone"], "By backbone", "backbone",
                                                                   metric)),
                                 ("plot-batch", draw_choice_box(choices["batch_size"], "By batch size", "batch size",
                                                                metric)),
                                 ("plot-cost", draw_cost(choices["cost"], metric))]))
    parallel = parallel_data(trials)
    importance = importance_data(trials, snapshot.direction)
    figures: list[tuple[str, Figure]] = []
    if parallel["dimensions"]:
        figures.append(("plot-parallel", draw_parallel(parallel, metric)))
    if importance["importances"]:
        figures.append(("plot-importance", draw_importances(importance["importances"])))
    if figures or importance["reason"]:
        text = "Every parameter the complete trials share, and the learning rate used."
        if parallel["left_out"]:
            text += f" Not in every trial, so left out: {_e(', '.join(parallel['left_out']))}."
        if importance["reason"]:
            text += f" No importances: {_e(importance['reason'])}."
        sections.append(Section("parameters", "Parameters", text, figures))
    timeline = timeline_data(trials, snapshot.taken_at)
    if timeline["bars"]:
        stale = sum(1 for b in timeline["bars"] if b["state"] == "FAIL (stale)")
        sections.append(Section("timeline", "Worker timeline",
                                f"One lane per worker; {len(timeline['links'])} retries (dotted lines from the trial "
                                f"they replace), {stale} trials lost with their worker (hatched).",
                                [("plot-timeline", draw_timeline(timeline))]))
    sections.append(Section("table", "All trials", "Click a column's header to sort.",
                            html=table_html(table_data(trials, snapshot.defaults, snapshot.taken_at))))
    return sections


def compare_sections(snapshots: Sequence[StudySnapshot]) -> list[Section]:
    studies = compare_data(snapshots)
    rows = {"columns": ["study", "trials", "best", "compute hours"],
            "rows": [[_cell(s["study"]), _cell(s["trials"]), _cell(s["best"]), _cell(s["compute_s"] / 3600)]
                     for s in studies]}
    names = ["plot-compare-trial", "plot-compare-compute", "plot-compare-states"]
    return [Section("compare", "Studies compared", "The best value so far by trial and by compute, and trial states.",
                    list(zip(names, draw_compare(studies), strict=True)), table_html(rows, "compare-table"))]


_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{margin-bottom:4px} section{margin-top:32px} .meta{color:#555} .empty{font-size:1.2em;color:#9a031e}
.plot{width:100%;min-height:300px} code{background:#f3f3f3;padding:1px 4px}
table.sortable{border-collapse:collapse;font-size:13px;width:100%}
table.sortable th{cursor:pointer;background:#f0f0f0;position:sticky;top:0;text-align:left;padding:4px}
table.sortable th.asc::after{content:" \\25B2"} table.sortable th.desc::after{content:" \\25BC"}
table.sortable td{border-top:1px solid #e5e5e5;padding:3px 4px;white-space:nowrap}
table.sortable td.long{white-space:normal;min-width:160px;max-width:420px;overflow-wrap:anywhere}
.table-wrap{max-height:640px;overflow:auto}
"""

_SCRIPT = """
(function () {
  var figures = JSON.parse(document.getElementById('figure-data').textContent);
  Object.keys(figures).forEach(function (id) {
    var fig = figures[id];
    Plotly.newPlot(id, fig.data, fig.layout, {responsive: true, displaylogo: false});
  });
  document.querySelectorAll('table.sortable').forEach(function (table) {
    var heads = table.querySelectorAll('th');
    heads.forEach(function (th, col) {
      th.addEventListener('click', function () {
        var asc = !th.classList.contains('asc');
        heads.forEach(function (h) { h.classList.remove('asc', 'desc'); });
        th.classList.add(asc ? 'asc' : 'desc');
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = a.cells[col], y = b.cells[col];
          var p = x.getAttribute('data-sort'), q = y.getAttribute('data-sort');
          if (p === '' || q === '') { return (p === '') - (q === ''); }
          var c = x.getAttribute('data-kind') === 'n' && y.getAttribute('data-kind') === 'n'
            ? parseFloat(p) - parseFloat(q) : (p < q ? -1 : p > q ? 1 : 0);
          return asc ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();
"""


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become null (JSON.parse rejects NaN), datetimes ISO strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, datetime):
        return _iso(value)
    return value


def script_json(value: Any) -> str:
    """JSON that is safe inside a ``<script>`` element: no ``<``, ``>`` or ``&`` can end or open a tag."""
    text = json.dumps(_clean(value), allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(title: str, header: str, sections: Sequence[Section]) -> str:
    """The whole page: header, sections with their figures, plotly.js and the figures' data inline."""
    from plotly.offline import get_plotlyjs

    figures: dict[str, Figure] = {}
    parts = [header]
    nav = " · ".join(f"<a href='#{s.id}'>{_e(s.title)}</a>" for s in sections)
    if nav:
        parts.append(f"<nav>{nav}</nav>")
    for section in sections:
        body = [f"<section id='{section.id}'><h2>{_e(section.title)}</h2>"]
        if section.text:
            body.append(f"<p>{section.text}</p>")
        for figure_id, figure in section.figures:
            figures[figure_id] = figure
            body.append(f"<div class='plot' id='{figure_id}'></div>")
        if section.html:
            body.append(f"<div class='table-wrap'>{section.html}</div>")
        body.append("</section>")
        parts.append("".join(body))
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{_STYLE}</style>"
        f"<script>{get_plotlyjs()}</script></head><body>\n" + "\n".join(parts) +
        f"\n<script type='application/json' id='figure-data'>{script_json(figures)}</script>"
        f"\n<script>{_SCRIPT}</script>\n</body></html>\n"
    )


def build_report(snapshot: StudySnapshot, others: Sequence[StudySnapshot] = ()) -> str:
    """The report of one study (and, with ``others``, the studies compared) as one HTML page."""
    summary = summary_data(snapshot)
    sections = study_sections(snapshot) if snapshot.trials else []
    if others:
        sections += compare_sections([snapshot, *others])
    title = f"tuner report: {snapshot.name}" + (f" vs {', '.join(o.name for o in others)}" if others else "")
    return render_html(title, header_html(summary), sections)


def write_report(study: str, output: str | Path = "report.html", storage: str | None = None,
                 compare: Sequence[str] = ()) -> tuple[Path, float]:
    """Read the study (and those to compare) and write the report; returns the path and the seconds it took."""
    started = time.perf_counter()
    snapshot = load_snapshot(study, storage)
    others = [load_snapshot(other, storage) for other in compare]
    page = build_report(snapshot, others)
    path = Path(output)
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as err:
        raise TunerError(f"cannot write the report to {path}: {err}") from None
    return path, time.perf_counter() - started
