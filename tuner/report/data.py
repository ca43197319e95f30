"""The report's data: pure functions from trials to plain values, which the tests check.

Computing and drawing are apart, as in ``optuna.visualization``: the ``*_data`` functions here take
``FrozenTrial`` lists (and the study's attributes) and return plain values; :mod:`tuner.report.figures`
draws them. Nothing in the report imports torch, so ``tuner report`` starts in a second. The headline,
the history, learning curves, pruning savings, LR-finder curves, the choices of backbone and batch size,
parallel coordinates, importances, the workers' timeline, the trials' table and studies compared.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.keys import FAIL_REASON_ATTR, FINDER_ATTR, HOST_ATTR, TEST_ATTR, WORKER_ATTR
from tuner.report.snapshot import DEFAULT_LABEL, StudySnapshot
from tuner.storage.records import best_trial, complete_trials, retry_of


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (attributes may hold anything, NaN included)."""
    return float(value) if finite(value) else None


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
        reason = str(trial.user_attrs.get(FAIL_REASON_ATTR) or "")
        for kind in ("stale", "interrupted", "not admitted"):
            if reason.startswith(kind):
                return f"FAIL ({kind})"
    return trial.state.name


def _better(direction: str) -> Any:
    return max if direction == "maximize" else min


@dataclass(frozen=True)
class BestTrial:
    """The best complete trial, as the header shows it."""

    number: int
    value: float | None
    params: dict[str, Any]  # with the learning rate used, and the study file's backbone and batch size if fixed
    val_pmr: Any  # as recorded: shown where it is a finite number


@dataclass(frozen=True)
class Summary:
    """The header: trial counts by state, the best trial, its test metrics if evaluated, total compute."""

    study: str
    storage: str
    metric: str
    direction: str
    trials: int
    finished: int  # complete, pruned and failed
    states: dict[str, int]  # trials by state name, those with none left out
    compute_s: float
    best: BestTrial | None = None
    test: dict[str, float] | None = None


def summary_data(snapshot: StudySnapshot) -> Summary:
    """The header: trial counts by state, the best trial, its test metrics if evaluated, total compute."""
    trials = snapshot.trials
    counts = Counter(t.state.name for t in trials)
    best = best_trial(trials, snapshot.direction)
    compute = sum(d for t in trials if (d := duration_s(t, snapshot.taken_at)) is not None)
    finished = sum(counts[s] for s in ("COMPLETE", "PRUNED", "FAIL"))
    header = Summary(study=snapshot.name, storage=snapshot.storage, metric=snapshot.metric,
                     direction=snapshot.direction, trials=len(trials), finished=finished,
                     states={s.name: counts[s.name] for s in TrialState if counts[s.name]}, compute_s=compute)
    if best is None:
        return header
    params = dict(best.params)
    if finite(best.user_attrs.get("lr_used")):
        params["learning_rate"] = best.user_attrs["lr_used"]
    for key in ("backbone", "batch_size"):
        params.setdefault(key, choice(best, key, snapshot.defaults))
    return replace(header, best=BestTrial(best.number, best.value, params, best.user_attrs.get("val_pmr")),
                   test=_test_metrics(best, snapshot.user_attrs))


def _test_metrics(trial: FrozenTrial, study_attrs: Mapping[str, Any]) -> dict[str, float] | None:
    recorded = study_attrs.get(f"{TEST_ATTR}{trial.number}")
    if isinstance(recorded, Mapping) and finite(recorded.get("kendall_tau")):
        return {k: float(v) for k, v in recorded.items() if finite(v)}
    if finite(trial.user_attrs.get("test_tau")):
        found = {"kendall_tau": float(trial.user_attrs["test_tau"])}
        if finite(trial.user_attrs.get("test_pmr")):
            found["pmr"] = float(trial.user_attrs["test_pmr"])
        return found
    return None


@dataclass(frozen=True)
class History:
    """The optimisation history: ``(trial number, value)`` points."""

    complete: list[tuple[int, float]] = field(default_factory=list)
    pruned: list[tuple[int, float]] = field(default_factory=list)  # each pruned trial's last value
    best: list[tuple[int, float]] = field(default_factory=list)  # the best complete value so far


def history_data(trials: Sequence[FrozenTrial], direction: str = "maximize") -> History:
    """Each complete or pruned trial's value by number, and the best complete value so far."""
    points = History()
    better = _better(direction)
    best: float | None = None
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.value is None or not finite(trial.value):
            continue
        if trial.state == TrialState.COMPLETE:
            points.complete.append((trial.number, float(trial.value)))
            best = float(trial.value) if best is None else better(best, float(trial.value))
            points.best.append((trial.number, best))
        elif trial.state == TrialState.PRUNED:
            points.pruned.append((trial.number, float(trial.value)))
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


@dataclass(frozen=True)
class Curve:
    """One trial's learning curve: ``(epochs trained, metric)`` at each of its validations."""

    number: int
    state: str
    points: list[tuple[float, float]]


@dataclass(frozen=True)
class PrunedAt:
    """Where a pruned trial stopped: after ``x`` epochs, at metric ``y``."""

    number: int
    backbone: str
    x: float
    y: float


@dataclass(frozen=True)
class LearningCurves:
    per_epoch: int  # validations per epoch
    backbones: dict[str, list[Curve]]
    pruned: list[PrunedAt]


def learning_curves_data(trials: Sequence[FrozenTrial], metric: str,
                         defaults: Mapping[str, Any] | None = None) -> LearningCurves:
    """Validation ``metric`` by epoch for every trial, grouped by backbone, and where pruned trials stopped."""
    per_epoch = validations_per_epoch(trials)
    groups: dict[str, list[Curve]] = defaultdict(list)
    stops = []
    for trial in sorted(trials, key=lambda t: t.number):
        points = curve_points(trial, metric, per_epoch)
        if not points:
            continue
        backbone = str(choice(trial, "backbone", defaults or {}))
        groups[backbone].append(Curve(trial.number, trial.state.name, points))
        if trial.state == TrialState.PRUNED:
            stops.append(PrunedAt(trial.number, backbone, points[-1][0], points[-1][1]))
    return LearningCurves(per_epoch, dict(groups), stops)


def epochs_run(trial: FrozenTrial, per_epoch: int = 1) -> float:
    """Epochs a trial trained: from its last validation, else its ``epochs`` attribute."""
    history = _history(trial)
    if history:
        epoch = history[-1].get("epoch")
        if isinstance(epoch, int):
            last = sum(1 for r in history if r.get("epoch") == epoch)
            return epoch + last / per_epoch
    return _number(trial.user_attrs.get("epochs")) or 0.0


@dataclass(frozen=True)
class SavingsRow:
    """One finished trial: the epochs and compute seconds it ran, and what it would have run without pruning."""

    number: int
    state: str
    epochs: float
    epochs_planned: float
    seconds: float
    seconds_planned: float


@dataclass(frozen=True)
class SavingsTotals:
    epochs: float
    epochs_planned: float
    seconds: float
    seconds_planned: float
    epochs_saved_fraction: float
    seconds_saved: float


@dataclass(frozen=True)
class PruningSavings:
    rows: list[SavingsRow]
    totals: SavingsTotals
    cumulative: dict[str, list[float]]  # running sums, trial by trial, of the epochs and seconds in the rows
    numbers: list[int]  # the rows' trial numbers
    pruned: int  # how many of them were pruned


_SAVINGS = ("epochs", "epochs_planned", "seconds", "seconds_planned")


def pruning_savings_data(trials: Sequence[FrozenTrial], max_epochs: int | None = None) -> PruningSavings:
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
    rows: list[SavingsRow] = []
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
        rows.append(SavingsRow(trial.number, trial.state.name, run, planned, seconds, seconds_planned))
    sums = {key: float(sum(getattr(r, key) for r in rows)) for key in _SAVINGS}
    planned_total = sums["epochs_planned"]
    totals = SavingsTotals(**sums, epochs_saved_fraction=(1 - sums["epochs"] / planned_total) if planned_total else 0.0,
                           seconds_saved=sums["seconds_planned"] - sums["seconds"])
    cumulative: dict[str, list[float]] = {key: [] for key in _SAVINGS}
    for key, values in cumulative.items():
        total = 0.0
        for row in rows:
            total += float(getattr(row, key))
            values.append(total)
    return PruningSavings(rows, totals, cumulative, [r.number for r in rows],
                          sum(1 for r in rows if r.state == "PRUNED"))


def _parse_finder_key(key: str) -> tuple[str, str]:
    body = key[len(FINDER_ATTR):] if key.startswith(FINDER_ATTR) else key
    backbone, _, batch = body.rpartition("|")
    return (backbone, batch) if backbone else (body, "")


@dataclass(frozen=True)
class FinderUse:
    """A learning rate a trial used from a finder curve, and how it chose it (the finder's ``used``)."""

    number: int
    lr: float
    state: str
    how: str


@dataclass(frozen=True)
class FinderCurve:
    """One (backbone, batch size) LR-finder curve, its suggestion, and the learning rates trials used."""

    key: str
    backbone: str
    batch_size: str
    lr: list[float]
    loss: list[float]
    suggestion: float | None
    reliable: bool
    reason: str
    used: list[FinderUse] = field(default_factory=list)


def lr_finder_data(trials: Sequence[FrozenTrial], study_attrs: Mapping[str, Any]) -> list[FinderCurve]:
    """Each (backbone, batch size) finder curve with its suggestion, and the learning rates trials used.

    Curves come from the study's cached results (``scale`` mode) and, where a trial stored its own
    curve (``suggest`` mode), from the first trial that ran it.
    """
    curves: dict[str, FinderCurve] = {}

    def add(key: str, result: Mapping[str, Any]) -> None:
        if key in curves:
            return
        pairs = [(float(lr), float(loss)) for lr, loss in zip(result.get("lr") or [], result.get("loss") or [],
                                                              strict=False) if finite(lr) and finite(loss) and lr > 0]
        backbone, batch = _parse_finder_key(key)
        suggestion = result.get("suggestion")
        curves[key] = FinderCurve(key, backbone, batch, [p[0] for p in pairs], [p[1] for p in pairs],
                                  _number(suggestion), bool(result.get("reliable")), str(result.get("reason") or ""))

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
            curves[str(info["key"])].used.append(FinderUse(trial.number, used, trial.state.name,
                                                           str(info.get("used", ""))))
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



MIN_IMPORTANCE_TRIALS = 5


@dataclass(frozen=True)
class CostPoint:
    """A complete trial's value against its compute time."""

    number: int
    seconds: float
    value: float
    batch_size: str


@dataclass(frozen=True)
class Choices:
    """The values of complete trials per backbone and per batch size, and their cost by backbone."""

    backbone: dict[str, list[float]]
    batch_size: dict[str, list[float]]
    cost: dict[str, list[CostPoint]]


def choices_data(trials: Sequence[FrozenTrial], defaults: Mapping[str, Any] | None = None) -> Choices:
    """Values of complete trials per backbone and per batch size, and each one's value against its compute time."""
    defaults = defaults or {}
    groups: dict[str, dict[str, list[float]]] = {"backbone": defaultdict(list), "batch_size": defaultdict(list)}
    cost: dict[str, list[CostPoint]] = defaultdict(list)
    for trial in sorted(complete_trials(trials), key=lambda t: t.number):
        value = float(trial.value or 0.0)
        for key, values in groups.items():
            values[str(choice(trial, key, defaults))].append(value)
        seconds = duration_s(trial)
        if seconds is not None:
            cost[str(choice(trial, "backbone", defaults))].append(
                CostPoint(trial.number, seconds, value, str(choice(trial, "batch_size", defaults))))
    return Choices(backbone={k: v for k, v in sorted(groups["backbone"].items())},
                   batch_size={k: v for k, v in sorted(groups["batch_size"].items(),
                                                       key=lambda kv: _sort_key(kv[0]))},
                   cost=dict(sorted(cost.items())))


def _sort_key(text: str) -> tuple[int, float, str]:
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


@dataclass(frozen=True)
class Dimension:
    """One axis of the parallel coordinates: a categorical parameter's values are indices into ``labels``."""

    name: str
    values: list[float]  # log10 of the values where ``log``
    labels: list[str] | None
    log: bool


@dataclass(frozen=True)
class Parallel:
    dimensions: list[Dimension]
    values: list[float]  # each complete trial's value
    numbers: list[int]
    left_out: list[str]  # parameters not in every complete trial


def parallel_data(trials: Sequence[FrozenTrial]) -> Parallel:
    """Parallel coordinates over complete trials: every parameter they all have, the learning rate used, the value.

    Categorical parameters become indices with their labels; log-scaled ones are drawn on log10.
    """
    complete = sorted(complete_trials(trials), key=lambda t: t.number)
    if not complete:
        return Parallel([], [], [], [])
    names = sorted(set.intersection(*(set(t.params) for t in complete)))
    left_out = sorted(set().union(*(set(t.params) for t in complete)) - set(names))
    dimensions: list[Dimension] = []
    for name in names:
        distribution = complete[0].distributions.get(name)
        raw = [t.params[name] for t in complete]
        if isinstance(distribution, optuna.distributions.CategoricalDistribution) or not all(finite(v) for v in raw):
            labels = sorted({str(v) for v in raw}, key=_sort_key)
            index = {label: i for i, label in enumerate(labels)}
            dimensions.append(Dimension(name, [index[str(v)] for v in raw], labels, log=False))
        else:
            log = bool(getattr(distribution, "log", False))
            dimensions.append(Dimension(name, [math.log10(v) if log else float(v) for v in raw], None, log))
    if all(finite(t.user_attrs.get("lr_used")) and t.user_attrs["lr_used"] > 0 for t in complete):
        dimensions.append(Dimension("lr_used", [math.log10(t.user_attrs["lr_used"]) for t in complete], None,
                                    log=True))
    return Parallel(dimensions, [float(t.value or 0.0) for t in complete], [t.number for t in complete], left_out)


@dataclass(frozen=True)
class Importances:
    """Each parameter's share of the importance, or (empty) the reason why there are none."""

    by_parameter: dict[str, float]
    reason: str | None = None


def importance_data(trials: Sequence[FrozenTrial], direction: str = "maximize") -> Importances:
    """Parameter importances by PED-ANOVA (Optuna's default evaluator), or why there are none."""
    complete = complete_trials(trials)
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        return Importances({}, f"parameter importances need at least {MIN_IMPORTANCE_TRIALS} complete "
                               f"trials; this study has {len(complete)}")
    varied = [name for name in set().union(*(t.params for t in complete))
              if len({repr(t.params.get(name)) for t in complete}) > 1]
    if not varied:
        return Importances({}, "no parameter took more than one value among the complete trials")
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
        return Importances({}, f"PED-ANOVA could not rank the parameters: {err}")
    finally:
        optuna.logging.set_verbosity(verbosity)
    return Importances({k: float(v) for k, v in found.items()})


@dataclass(frozen=True)
class Bar:
    """A trial on its worker's lane, from its start to its end."""

    number: int
    lane: str  # host and worker label
    start: datetime
    end: datetime
    state: str  # see state_label
    value: float | None
    fail_reason: Any
    retry_of: int | None
    resumed_step: Any  # the step its retry resumed at, where it did


@dataclass(frozen=True)
class RetryLink:
    """From the end of a failed trial to the start of its retry."""

    from_number: int
    to_number: int
    from_lane: str
    from_time: datetime
    to_lane: str
    to_time: datetime


@dataclass(frozen=True)
class Timeline:
    lanes: list[str]
    bars: list[Bar]
    links: list[RetryLink]


def timeline_data(trials: Sequence[FrozenTrial], now: datetime | None = None) -> Timeline:
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
        bars.append(Bar(trial.number, lane, start, end, state_label(trial), trial.value, attrs.get(FAIL_REASON_ATTR),
                        retry_of(trial), attrs.get("resumed_step")))
    by_number = {b.number: b for b in bars}
    links = [RetryLink(b.retry_of, b.number, by_number[b.retry_of].lane, by_number[b.retry_of].end, b.lane, b.start)
             for b in bars if b.retry_of is not None and b.retry_of in by_number]
    lanes = sorted({str(b.lane) for b in bars})
    return Timeline(lanes, bars, links)


Cell = tuple[str, Any]
"""A table cell: the text shown, and the key it sorts by (``None``: empty, sorted last)."""


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[list[Cell]]


def table_data(trials: Sequence[FrozenTrial], defaults: Mapping[str, Any] | None = None,
               now: datetime | None = None) -> Table:
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
    return Table(columns, rows)


def _cell(value: Any) -> Cell:
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


@dataclass(frozen=True)
class StudyComparison:
    """One study among those compared."""

    study: str
    states: dict[str, int]  # trials by state name
    trials: int
    best: float | None
    compute_s: float
    best_by_trial: list[tuple[int, float]]  # the best value so far, by trial number
    best_by_compute_h: list[tuple[float, float]]  # and by compute hours spent


def compare_data(snapshots: Sequence[StudySnapshot]) -> list[StudyComparison]:
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
        studies.append(StudyComparison(snapshot.name, dict(Counter(t.state.name for t in snapshot.trials)),
                                       len(snapshot.trials), best, spent, by_trial, by_compute))
    return studies


def compare_table(studies: Sequence[StudyComparison]) -> Table:
    """The studies compared, one row each: trials, the best value and compute hours."""
    return Table(["study", "trials", "best", "compute hours"],
                 [[_cell(s.study), _cell(s.trials), _cell(s.best), _cell(s.compute_s / 3600)] for s in studies])


Figure = dict[str, Any]
