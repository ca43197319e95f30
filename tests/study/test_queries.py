"""Queries on a study: the JSON of trials and best, and recording test metrics."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import optuna
import pytest
from processes import run_tuner

from tuner.study.open import load_study_file, open_study
from tuner.study.queries import record_test


def test_trials_and_best_json_match_the_storage(study_dir: Path) -> None:
    out = run_tuner("run", "--study", "tiny", "--n-trials", "3", cwd=study_dir)
    assert out.returncode == 0, out.stderr
    assert "best: trial" in out.stdout
    rows = json.loads(run_tuner("trials", "--study", "tiny", "--json", cwd=study_dir).stdout)
    best = json.loads(run_tuner("best", "--study", "tiny", "--json", cwd=study_dir).stdout)
    with sqlite3.connect(study_dir / "study.db") as db:
        stored = dict(db.execute("select number, state from trials").fetchall())
        values = dict(db.execute(
            "select t.number, v.value from trials t join trial_values v on v.trial_id = t.trial_id").fetchall())
    assert {r["number"]: r["state"] for r in rows} == stored
    for row in rows:
        assert set(row) >= {"number", "state", "value", "params", "attrs"}
        assert set(row["params"]) >= {"learning_rate", "backbone", "batch_size"}
        if row["state"] == "COMPLETE":
            assert row["value"] == pytest.approx(values[row["number"]])
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    assert best["number"] == max(complete, key=lambda r: r["value"])["number"]
    listed = json.loads(run_tuner("studies", "--storage", f"sqlite:///{study_dir / 'study.db'}", "--json",
                              cwd=study_dir).stdout)
    assert listed["studies"] == [{"name": "tiny", "trials": 3, "best_value": pytest.approx(best["value"])}]
    assert listed["files"] == [str(study_dir / "studies" / "tiny.toml")]
    order = run_tuner("order", "--study", "tiny", stdin="second a .\nfirst b .\n", cwd=study_dir)
    assert order.returncode == 0, order.stderr
    assert sorted(order.stdout.splitlines()) == ["first b .", "second a ."]


def test_record_test_keeps_the_best_trials_test_metrics(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(study_dir)
    run = load_study_file("tiny")
    study = open_study(run)
    for value in (0.2, 0.6, 0.4):
        study.add_trial(optuna.trial.create_trial(value=value))
    record_test(run, {"kendall_tau": 0.55, "pmr": 0.1})
    assert open_study(run).user_attrs["test:1"] == {"kendall_tau": 0.55, "pmr": 0.1}
