"""The report's data: the headline, history, learning curves, pruning savings and LR-finder curves."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from optuna.trial import TrialState
from report_study import EVIL_BACKBONE, FINDER_A, T0, trial

from tuner.report.data import (
    history_data,
    learning_curves_data,
    loss_at,
    lr_finder_data,
    pruning_savings_data,
    summary_data,
)
from tuner.report.page import header_html
from tuner.report.snapshot import StudySnapshot


def test_summary_counts_states_and_finds_the_best(snapshot: StudySnapshot) -> None:
    summary = summary_data(snapshot)
    assert summary["states"] == {"RUNNING": 1, "COMPLETE": 3, "PRUNED": 1, "FAIL": 2}
    assert summary["finished"] == 6 and summary["trials"] == 7
    best = summary["best"]
    assert best["number"] == 2 and best["value"] == 0.7 and best["val_pmr"] == 0.3
    assert best["params"] == {"learning_rate": 1e-4, "backbone": EVIL_BACKBONE, "batch_size": 16}
    assert summary["test"] is None
    # compute time: wall_s of every finished trial, and the running one up to when the study was read
    finished = (10 + 3 + 10 + 2 + 10 + 1) * 60
    running = (snapshot.taken_at - (T0 + timedelta(minutes=15))).total_seconds()
    assert summary["compute_s"] == pytest.approx(finished + running, abs=5)


def test_summary_shows_recorded_test_metrics(snapshot: StudySnapshot) -> None:
    attrs = {**snapshot.user_attrs, "test:2": {"kendall_tau": 0.68, "pmr": 0.25, "documents": 10}}
    summary = summary_data(dataclasses.replace(snapshot, user_attrs=attrs))
    assert summary["test"] == {"kendall_tau": 0.68, "pmr": 0.25, "documents": 10.0}
    assert "0.6800" in header_html(summary)


def test_history_has_the_best_complete_value_so_far(snapshot: StudySnapshot) -> None:
    points = history_data(snapshot.trials, "maximize")
    assert points["complete"] == [(0, 0.5), (2, 0.7), (4, 0.6)]
    assert points["pruned"] == [(1, 0.1)]
    assert points["best"] == [(0, 0.5), (2, 0.7), (4, 0.7)]
    assert history_data(snapshot.trials, "minimize")["best"] == [(0, 0.5), (2, 0.5), (4, 0.5)]


def test_learning_curves_place_each_validation_within_its_epoch(snapshot: StudySnapshot) -> None:
    curves = learning_curves_data(snapshot.trials, "val_kendall_tau")
    assert curves["per_epoch"] == 2
    assert set(curves["backbones"]) == {"tiny-a", EVIL_BACKBONE}
    first = curves["backbones"]["tiny-a"][0]
    assert first["number"] == 0 and first["points"] == [(0.5, 0.2), (1.0, 0.3), (1.5, 0.4), (2.0, 0.5)]
    assert [t["number"] for t in curves["backbones"]["tiny-a"]] == [0, 3, 4, 6]
    # the pruned trial stopped after half an epoch, at its first validation
    assert curves["pruned"] == [{"number": 1, "backbone": EVIL_BACKBONE, "x": 0.5, "y": 0.1}]


def test_pruning_savings_against_a_study_without_pruning(snapshot: StudySnapshot) -> None:
    savings = pruning_savings_data(snapshot.trials, max_epochs=2)
    rows = {r["number"]: r for r in savings["rows"]}
    assert set(rows) == {0, 1, 2, 3, 4, 5}  # the running trial is left out
    pruned = rows[1]
    assert pruned["epochs"] == 0.5 and pruned["epochs_planned"] == 2
    # set-up time stays, fitting scales from half an epoch to two: 180 - 162 + 162 * 4
    assert pruned["seconds"] == 180 and pruned["seconds_planned"] == pytest.approx(18 + 162 * 4)
    assert rows[0]["epochs"] == rows[0]["epochs_planned"] == 2
    assert rows[3]["epochs_planned"] == rows[3]["epochs"] == 0.5  # a failure costs the same either way
    totals = savings["totals"]
    assert totals["epochs"] == 2 + 0.5 + 2 + 0.5 + 2 + 0
    assert totals["epochs_planned"] == totals["epochs"] + 1.5
    assert totals["seconds_saved"] == pytest.approx(162 * 3)
    assert savings["cumulative"]["epochs"][-1] == totals["epochs"] and savings["pruned"] == 1
    # without the study's max_epochs, the most a complete trial ran
    assert pruning_savings_data(snapshot.trials)["rows"][1]["epochs_planned"] == 2


def test_lr_finder_curves_with_suggestion_and_learning_rates_used(snapshot: StudySnapshot) -> None:
    curves = {c["key"]: c for c in lr_finder_data(snapshot.trials, snapshot.user_attrs)}
    assert set(curves) == {"lr_finder:tiny-a|8", f"lr_finder:{EVIL_BACKBONE}|16"}
    a = curves["lr_finder:tiny-a|8"]
    assert a["backbone"] == "tiny-a" and a["batch_size"] == "8" and a["suggestion"] == 1e-3 and a["reliable"]
    assert a["lr"] == FINDER_A["lr"] and a["loss"] == FINDER_A["loss"]
    assert [(u["number"], u["lr"]) for u in a["used"]] == [(0, 5e-4), (3, 1e-4), (4, 1e-4)]
    b = curves[f"lr_finder:{EVIL_BACKBONE}|16"]
    assert not b["reliable"] and b["reason"] == "loss did not drop" and [u["number"] for u in b["used"]] == [1, 2]


def test_lr_finder_curve_stored_on_a_trial_in_suggest_mode() -> None:
    info = {"mode": "suggest", "key": "lr_finder:m|4", "suggestion": 1e-3, "reliable": True, "reason": "ok",
            "lr": [1e-4, 1e-3], "loss": [0.5, 0.3], "used": "suggestion"}
    made = trial(TrialState.COMPLETE, "m", 8, 0, 1, 0.3, [0.3], lr_finder=info, lr_used=1e-3)
    [curve] = lr_finder_data([made], {})
    assert curve["key"] == "lr_finder:m|4" and curve["lr"] == [1e-4, 1e-3] and curve["used"][0]["lr"] == 1e-3


def test_loss_at_interpolates_on_log_learning_rate() -> None:
    lrs, losses = [1e-4, 1e-2], [1.0, 0.0]
    assert loss_at(lrs, losses, 1e-3) == pytest.approx(0.5)
    assert loss_at(lrs, losses, 1e-6) == 1.0 and loss_at(lrs, losses, 1.0) == 0.0
    assert loss_at([], [], 1e-3) is None
