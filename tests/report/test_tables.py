"""The report's tables: choices, parallel coordinates, importances, the timeline, trials and comparisons."""

from __future__ import annotations

import math
import random
from datetime import timedelta

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from report_study import EVIL_BACKBONE, EVIL_REASON, EVIL_WORKER, T0, trial

from tuner.report.snapshot import StudySnapshot, load_snapshot
from tuner.report.tables import choices_data, compare_data, importance_data, parallel_data, table_data, timeline_data


def test_choices_group_complete_trials(snapshot: StudySnapshot) -> None:
    choices = choices_data(snapshot.trials)
    assert choices["backbone"] == {"tiny-a": [0.5, 0.6], EVIL_BACKBONE: [0.7]}
    assert choices["batch_size"] == {"8": [0.5, 0.6], "16": [0.7]}
    assert [(p["number"], p["seconds"]) for p in choices["cost"]["tiny-a"]] == [(0, 600), (4, 600)]
    # a study that searched no backbone shows the study file's
    fixed = [trial(TrialState.COMPLETE, "x", 8, 0, 1, 0.3, [0.3])]
    for made in fixed:
        made.params.pop("backbone")
    assert choices_data(fixed, {"backbone": "bert"})["backbone"] == {"bert": [0.3]}


def test_parallel_coordinates_use_indices_for_choices_and_log10_for_learning_rates(snapshot: StudySnapshot) -> None:
    parallel = parallel_data(snapshot.trials)
    dims = {d["name"]: d for d in parallel["dimensions"]}
    assert list(dims) == ["backbone", "batch_size", "learning_rate", "lr_used"]
    assert dims["backbone"]["labels"] == sorted(["tiny-a", EVIL_BACKBONE])
    assert dims["batch_size"]["labels"] == ["8", "16"]
    assert dims["batch_size"]["values"] == [0, 1, 0]
    assert dims["learning_rate"]["log"] and dims["learning_rate"]["values"] == pytest.approx([-4, -4, -4])
    assert dims["lr_used"]["values"] == pytest.approx([math.log10(5e-4), -4, -4])
    assert parallel["values"] == [0.5, 0.7, 0.6] and parallel["numbers"] == [0, 2, 4]


def test_importances_need_enough_trials(snapshot: StudySnapshot) -> None:
    found = importance_data(snapshot.trials)
    assert found["importances"] == {} and "at least 5 complete trials; this study has 3" in found["reason"]


def test_importances_rank_the_parameter_that_matters() -> None:
    rng = random.Random(0)
    made = []
    for _ in range(60):
        x, y = rng.uniform(0, 1), rng.uniform(0, 1)
        made.append(optuna.trial.create_trial(
            value=x * 10 + y * 0.1, params={"x": x, "y": y},
            distributions={"x": FloatDistribution(0, 1), "y": FloatDistribution(0, 1)}))
    found = importance_data(made, "maximize")
    assert found["reason"] is None and max(found["importances"], key=found["importances"].get) == "x"


def test_timeline_lanes_states_and_retries(snapshot: StudySnapshot) -> None:
    timeline = timeline_data(snapshot.trials, snapshot.taken_at)
    assert timeline["lanes"] == ["h1 / 0", "h1 / 1", f"h1 / {EVIL_WORKER}", "h2 / 0"]
    states = {b["number"]: b["state"] for b in timeline["bars"]}
    assert states == {0: "COMPLETE", 1: "PRUNED", 2: "COMPLETE", 3: "FAIL (stale)", 4: "COMPLETE",
                      5: "FAIL (interrupted)", 6: "RUNNING"}
    running = timeline["bars"][6]
    assert running["start"] == T0 + timedelta(minutes=15) and running["end"] == snapshot.taken_at
    [link] = timeline["links"]
    assert link["from"] == 3 and link["to"] == 4 and link["from_lane"] == "h1 / 0" and link["to_lane"] == "h2 / 0"
    assert link["from_time"] == T0 + timedelta(minutes=12) and link["to_time"] == T0 + timedelta(minutes=13)


def test_table_rows_sort_keys_and_notes(snapshot: StudySnapshot) -> None:
    table = table_data(snapshot.trials, now=snapshot.taken_at)
    assert table["columns"][:8] == ["#", "state", "value", "pmr", "epochs", "lr used", "backbone", "batch size"]
    rows = table["rows"]
    assert rows[2][:3] == [("2", 2), ("COMPLETE", "complete"), ("0.7", 0.7)]
    assert rows[1][4] == ("0.5", 0.5)  # epochs trained, from the history
    assert rows[4][-1][0] == "retry of #3" and rows[5][-1][0] == EVIL_REASON
    assert rows[6][2] == ("", None)  # no value yet: sorts last


def test_compare_studies(storage: str, snapshot: StudySnapshot) -> None:
    other = load_snapshot("other", storage)
    [known, second] = compare_data([snapshot, other])
    assert known["best"] == 0.7 and second["best"] == pytest.approx(0.6)
    assert second["states"] == {"COMPLETE": 3, "PRUNED": 1}
    assert [p[1] for p in second["best_by_trial"]] == pytest.approx([0.4, 0.5, 0.6, 0.6])
    assert second["best_by_compute_h"][-1][0] == pytest.approx(16 / 60)
