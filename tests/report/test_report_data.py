"""The report's data: the headline, history, learning curves, pruning savings, LR-finder curves, choices,
parallel coordinates, importances, the timeline, trials and comparisons."""

from __future__ import annotations

import dataclasses
import math
import random
from datetime import timedelta

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from report_study import EVIL_BACKBONE, EVIL_REASON, EVIL_WORKER, FINDER_A, T0, trial

from tuner.report.data import (
    PrunedAt,
    choices_data,
    compare_data,
    compare_table,
    history_data,
    importance_data,
    learning_curves_data,
    loss_at,
    lr_finder_data,
    parallel_data,
    pruning_savings_data,
    summary_data,
    table_data,
    timeline_data,
)
from tuner.report.page import header_html
from tuner.report.snapshot import StudySnapshot, load_snapshot


def test_summary_counts_states_and_finds_the_best(snapshot: StudySnapshot) -> None:
    summary = summary_data(snapshot)
    assert summary.states == {"RUNNING": 1, "COMPLETE": 3, "PRUNED": 1, "FAIL": 2}
    assert summary.finished == 6 and summary.trials == 7
    best = summary.best
    assert best.number == 2 and best.value == 0.7 and best.val_pmr == 0.3
    assert best.params == {"learning_rate": 1e-4, "backbone": EVIL_BACKBONE, "batch_size": 16}
    assert summary.test is None
    # compute time: wall_s of every finished trial, and the running one up to when the study was read
    finished = (10 + 3 + 10 + 2 + 10 + 1) * 60
    running = (snapshot.taken_at - (T0 + timedelta(minutes=15))).total_seconds()
    assert summary.compute_s == pytest.approx(finished + running, abs=5)


def test_summary_shows_recorded_test_metrics(snapshot: StudySnapshot) -> None:
    attrs = {**snapshot.user_attrs, "test:2": {"kendall_tau": 0.68, "pmr": 0.25, "documents": 10}}
    summary = summary_data(dataclasses.replace(snapshot, user_attrs=attrs))
    assert summary.test == {"kendall_tau": 0.68, "pmr": 0.25, "documents": 10.0}
    assert "0.6800" in header_html(summary)


def test_history_has_the_best_complete_value_so_far(snapshot: StudySnapshot) -> None:
    points = history_data(snapshot.trials, "maximize")
    assert points.complete == [(0, 0.5), (2, 0.7), (4, 0.6)]
    assert points.pruned == [(1, 0.1)]
    assert points.best == [(0, 0.5), (2, 0.7), (4, 0.7)]
    assert history_data(snapshot.trials, "minimize").best == [(0, 0.5), (2, 0.5), (4, 0.5)]


def test_learning_curves_place_each_validation_within_its_epoch(snapshot: StudySnapshot) -> None:
    curves = learning_curves_data(snapshot.trials, "val_kendall_tau")
    assert curves.per_epoch == 2
    assert set(curves.backbones) == {"tiny-a", EVIL_BACKBONE}
    first = curves.backbones["tiny-a"][0]
    assert first.number == 0 and first.points == [(0.5, 0.2), (1.0, 0.3), (1.5, 0.4), (2.0, 0.5)]
    assert [t.number for t in curves.backbones["tiny-a"]] == [0, 3, 4, 6]
    # the pruned trial stopped after half an epoch, at its first validation
    assert curves.pruned == [PrunedAt(number=1, backbone=EVIL_BACKBONE, x=0.5, y=0.1)]


def test_pruning_savings_against_a_study_without_pruning(snapshot: StudySnapshot) -> None:
    savings = pruning_savings_data(snapshot.trials, max_epochs=2)
    rows = {r.number: r for r in savings.rows}
    assert set(rows) == {0, 1, 2, 3, 4, 5}  # the running trial is left out
    pruned = rows[1]
    assert pruned.epochs == 0.5 and pruned.epochs_planned == 2
    # set-up time stays, fitting scales from half an epoch to two: 180 - 162 + 162 * 4
    assert pruned.seconds == 180 and pruned.seconds_planned == pytest.approx(18 + 162 * 4)
    assert rows[0].epochs == rows[0].epochs_planned == 2
    assert rows[3].epochs_planned == rows[3].epochs == 0.5  # a failure costs the same either way
    totals = savings.totals
    assert totals.epochs == 2 + 0.5 + 2 + 0.5 + 2 + 0
    assert totals.epochs_planned == totals.epochs + 1.5
    assert totals.seconds_saved == pytest.approx(162 * 3)
    assert savings.cumulative["epochs"][-1] == totals.epochs and savings.pruned == 1
    # without the study's max_epochs, the most a complete trial ran
    assert pruning_savings_data(snapshot.trials).rows[1].epochs_planned == 2


def test_lr_finder_curves_with_suggestion_and_learning_rates_used(snapshot: StudySnapshot) -> None:
    curves = {c.key: c for c in lr_finder_data(snapshot.trials, snapshot.user_attrs)}
    assert set(curves) == {"lr_finder:tiny-a|8", f"lr_finder:{EVIL_BACKBONE}|16"}
    a = curves["lr_finder:tiny-a|8"]
    assert a.backbone == "tiny-a" and a.batch_size == "8" and a.suggestion == 1e-3 and a.reliable
    assert a.lr == FINDER_A["lr"] and a.loss == FINDER_A["loss"]
    assert [(u.number, u.lr) for u in a.used] == [(0, 5e-4), (3, 1e-4), (4, 1e-4)]
    b = curves[f"lr_finder:{EVIL_BACKBONE}|16"]
    assert not b.reliable and b.reason == "loss did not drop" and [u.number for u in b.used] == [1, 2]


def test_lr_finder_curve_stored_on_a_trial_in_suggest_mode() -> None:
    info = {"mode": "suggest", "key": "lr_finder:m|4", "suggestion": 1e-3, "reliable": True, "reason": "ok",
            "lr": [1e-4, 1e-3], "loss": [0.5, 0.3], "used": "suggestion"}
    made = trial(TrialState.COMPLETE, "m", 8, 0, 1, 0.3, [0.3], lr_finder=info, lr_used=1e-3)
    [curve] = lr_finder_data([made], {})
    assert curve.key == "lr_finder:m|4" and curve.lr == [1e-4, 1e-3] and curve.used[0].lr == 1e-3


def test_loss_at_interpolates_on_log_learning_rate() -> None:
    lrs, losses = [1e-4, 1e-2], [1.0, 0.0]
    assert loss_at(lrs, losses, 1e-3) == pytest.approx(0.5)
    assert loss_at(lrs, losses, 1e-6) == 1.0 and loss_at(lrs, losses, 1.0) == 0.0
    assert loss_at([], [], 1e-3) is None


def test_choices_group_complete_trials(snapshot: StudySnapshot) -> None:
    choices = choices_data(snapshot.trials)
    assert choices.backbone == {"tiny-a": [0.5, 0.6], EVIL_BACKBONE: [0.7]}
    assert choices.batch_size == {"8": [0.5, 0.6], "16": [0.7]}
    assert [(p.number, p.seconds) for p in choices.cost["tiny-a"]] == [(0, 600), (4, 600)]
    # a study that searched no backbone shows the study file's
    fixed = [trial(TrialState.COMPLETE, "x", 8, 0, 1, 0.3, [0.3])]
    for made in fixed:
        made.params.pop("backbone")
    assert choices_data(fixed, {"backbone": "bert"}).backbone == {"bert": [0.3]}


def test_parallel_coordinates_use_indices_for_choices_and_log10_for_learning_rates(snapshot: StudySnapshot) -> None:
    parallel = parallel_data(snapshot.trials)
    dims = {d.name: d for d in parallel.dimensions}
    assert list(dims) == ["backbone", "batch_size", "learning_rate", "lr_used"]
    assert dims["backbone"].labels == sorted(["tiny-a", EVIL_BACKBONE])
    assert dims["batch_size"].labels == ["8", "16"]
    assert dims["batch_size"].values == [0, 1, 0]
    assert dims["learning_rate"].log and dims["learning_rate"].values == pytest.approx([-4, -4, -4])
    assert dims["lr_used"].values == pytest.approx([math.log10(5e-4), -4, -4])
    assert parallel.values == [0.5, 0.7, 0.6] and parallel.numbers == [0, 2, 4]


def test_importances_need_enough_trials(snapshot: StudySnapshot) -> None:
    found = importance_data(snapshot.trials)
    assert found.by_parameter == {} and "at least 5 complete trials; this study has 3" in found.reason


def test_importances_rank_the_parameter_that_matters() -> None:
    rng = random.Random(0)
    made = []
    for _ in range(60):
        x, y = rng.uniform(0, 1), rng.uniform(0, 1)
        made.append(optuna.trial.create_trial(
            value=x * 10 + y * 0.1, params={"x": x, "y": y},
            distributions={"x": FloatDistribution(0, 1), "y": FloatDistribution(0, 1)}))
    found = importance_data(made, "maximize")
    assert found.reason is None and max(found.by_parameter, key=found.by_parameter.get) == "x"


def test_timeline_lanes_states_and_retries(snapshot: StudySnapshot) -> None:
    timeline = timeline_data(snapshot.trials, snapshot.taken_at)
    assert timeline.lanes == ["h1 / 0", "h1 / 1", f"h1 / {EVIL_WORKER}", "h2 / 0"]
    states = {b.number: b.state for b in timeline.bars}
    assert states == {0: "COMPLETE", 1: "PRUNED", 2: "COMPLETE", 3: "FAIL (stale)", 4: "COMPLETE",
                      5: "FAIL (interrupted)", 6: "RUNNING"}
    running = timeline.bars[6]
    assert running.start == T0 + timedelta(minutes=15) and running.end == snapshot.taken_at
    [link] = timeline.links
    assert link.from_number == 3 and link.to_number == 4 and link.from_lane == "h1 / 0" and link.to_lane == "h2 / 0"
    assert link.from_time == T0 + timedelta(minutes=12) and link.to_time == T0 + timedelta(minutes=13)


def test_table_rows_sort_keys_and_notes(snapshot: StudySnapshot) -> None:
    table = table_data(snapshot.trials, now=snapshot.taken_at)
    assert table.columns[:8] == ["#", "state", "value", "pmr", "epochs", "lr used", "backbone", "batch size"]
    rows = table.rows
    assert rows[2][:3] == [("2", 2), ("COMPLETE", "complete"), ("0.7", 0.7)]
    assert rows[1][4] == ("0.5", 0.5)  # epochs trained, from the history
    assert rows[4][-1][0] == "retry of #3" and rows[5][-1][0] == EVIL_REASON
    assert rows[6][2] == ("", None)  # no value yet: sorts last


def test_compare_studies(storage: str, snapshot: StudySnapshot) -> None:
    other = load_snapshot("other", storage)
    [known, second] = compare_data([snapshot, other])
    assert known.best == 0.7 and second.best == pytest.approx(0.6)
    assert second.states == {"COMPLETE": 3, "PRUNED": 1}
    assert [p[1] for p in second.best_by_trial] == pytest.approx([0.4, 0.5, 0.6, 0.6])
    assert second.best_by_compute_h[-1][0] == pytest.approx(16 / 60)
    table = compare_table([known, second])
    assert table.columns == ["study", "trials", "best", "compute hours"]
    assert table.rows[1][:3] == [("other", "other"), ("4", 4), ("0.6", pytest.approx(0.6))]
