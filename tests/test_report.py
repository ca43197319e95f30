"""The report: figure data from a known study in a real SQLite file, the page in a real browser."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import ARTIFACTS
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from tuner import report
from tuner.errors import TunerError
from tuner.report import StudySnapshot

T0 = datetime(2026, 1, 5, 9, 0, 0)
# user-supplied strings that would run if they reached the page unescaped
NAME = 'known "study" <script>window.__pwned = "study name"</script>'
EVIL_BACKBONE = "tiny-b<img src=x onerror=\"window.__pwned='backbone'\">"
EVIL_REASON = "interrupted (SIGTERM) <script>window.__pwned = 'fail reason'</script>"
EVIL_WORKER = "<svg onload=\"window.__pwned='worker'\">"
DISTRIBUTIONS = {"learning_rate": FloatDistribution(1e-5, 1e-3, log=True),
                 "backbone": CategoricalDistribution(["tiny-a", EVIL_BACKBONE]),
                 "batch_size": CategoricalDistribution([8, 16])}
FINDER_A = {"lr": [1e-5, 1e-4, 1e-3, 1e-2], "loss": [0.7, 0.6, 0.4, 0.9], "suggestion": 1e-3, "reliable": True,
            "reason": "loss dropped 43%", "seconds": 20.0}
FINDER_B = {"lr": [1e-5, 1e-4, 1e-3, 1e-2], "loss": [0.69, 0.69, 0.68, 0.7], "suggestion": 1e-2, "reliable": False,
            "reason": "loss did not drop", "seconds": 20.0}


def history(values: list[float], per_epoch: int = 2) -> list[dict[str, Any]]:
    return [{"epoch": i // per_epoch, "step": 10 * (i + 1), "val_kendall_tau": v, "val_loss": 1 - v}
            for i, v in enumerate(values)]


def trial(state: TrialState, backbone: str, batch: int, start_min: float, minutes: float | None,
          value: float | None = None, taus: list[float] | None = None, **attrs: Any) -> FrozenTrial:
    """A trial as tuner.objective records one (worker, host, history, times, learning rate)."""
    params = {"learning_rate": attrs.pop("lr", 1e-4), "backbone": backbone, "batch_size": batch}
    user_attrs = {"worker": "0", "host": "h1", **attrs}
    if taus is not None:
        user_attrs["history"] = history(taus)
        user_attrs["epochs"] = (len(taus) - 1) // 2
    if minutes is not None:
        user_attrs.setdefault("wall_s", minutes * 60)
        user_attrs.setdefault("fit_s", minutes * 60 * 0.9)
    user_attrs.setdefault("lr_used", params["learning_rate"])
    user_attrs.setdefault("lr_finder", {"mode": "scale", "key": f"lr_finder:{backbone}|{batch}",
                                        "used": "suggestion x multiplier"})
    distributions = dict(DISTRIBUTIONS)
    if backbone not in distributions["backbone"].choices:  # type: ignore[attr-defined]
        distributions["backbone"] = CategoricalDistribution([backbone])
    made = optuna.trial.create_trial(
        state=state, value=value, params=params, distributions=distributions, user_attrs=user_attrs,
        intermediate_values={i: v for i, v in enumerate(taus or [])})
    made.datetime_start = T0 + timedelta(minutes=start_min)
    made.datetime_complete = None if minutes is None else made.datetime_start + timedelta(minutes=minutes)
    return made


def known_trials() -> list[FrozenTrial]:
    """Seven trials on four lanes: complete, pruned, a stale failure and its retry, an interruption, a running one."""
    return [
        trial(TrialState.COMPLETE, "tiny-a", 8, 0, 10, 0.5, [0.2, 0.3, 0.4, 0.5], lr_used=1e-3 * 0.5, val_pmr=0.1),
        trial(TrialState.PRUNED, EVIL_BACKBONE, 16, 0, 3, 0.1, [0.1], worker="1"),
        trial(TrialState.COMPLETE, EVIL_BACKBONE, 16, 3, 10, 0.7, [0.3, 0.5, 0.6, 0.7], worker="1", val_pmr=0.3),
        trial(TrialState.FAIL, "tiny-a", 8, 10, 2, None, [0.25], fail_reason="stale: no heartbeat for 120 s"),
        trial(TrialState.COMPLETE, "tiny-a", 8, 13, 10, 0.6, [0.3, 0.4, 0.5, 0.6], host="h2", retry_of=3),
        trial(TrialState.FAIL, EVIL_BACKBONE, 8, 13, 1, None, None, worker="1", fail_reason=EVIL_REASON),
        trial(TrialState.RUNNING, "tiny-a", 16, 15, None, None, [0.3], worker=EVIL_WORKER),
    ]


def add_study(url: str, name: str, trials: list[FrozenTrial], **attrs: Any) -> optuna.Study:
    from tuner.storage import open_storage

    study = optuna.create_study(study_name=name, storage=open_storage(url), direction="maximize")
    study.set_user_attr("metric", "val_kendall_tau")
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    study.add_trials(trials)
    return study


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite file with the known study and a second one to compare (the tests only read it)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path_factory.mktemp('report') / 'studies.db'}"
    add_study(url, NAME, known_trials(), **{"lr_finder:tiny-a|8": FINDER_A, f"lr_finder:{EVIL_BACKBONE}|16": FINDER_B})
    add_study(url, "other", [trial(TrialState.COMPLETE, "tiny-a", 8, i * 5, 5, 0.4 + i / 10, [0.1, 0.2, 0.3, 0.4])
                             for i in range(3)] + [trial(TrialState.PRUNED, "tiny-a", 8, 15, 1, 0.1, [0.1])])
    return url


@pytest.fixture(scope="module")
def snapshot(storage: str) -> StudySnapshot:
    return report.load_snapshot(NAME, storage)


def test_snapshot_reads_the_study_without_writing(storage: str, snapshot: StudySnapshot) -> None:
    assert snapshot.name == NAME and snapshot.direction == "maximize" and snapshot.metric == "val_kendall_tau"
    assert [t.number for t in snapshot.trials] == list(range(7))
    assert snapshot.trials[0].datetime_start == T0
    with pytest.raises(TunerError, match="no study 'nope'.*studies there"):
        report.load_snapshot("nope", storage)


def test_summary_counts_states_and_finds_the_best(snapshot: StudySnapshot) -> None:
    summary = report.summary_data(snapshot)
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
    summary = report.summary_data(dataclasses.replace(snapshot, user_attrs=attrs))
    assert summary["test"] == {"kendall_tau": 0.68, "pmr": 0.25, "documents": 10.0}
    assert "0.6800" in report.header_html(summary)


def test_history_has_the_best_complete_value_so_far(snapshot: StudySnapshot) -> None:
    points = report.history_data(snapshot.trials, "maximize")
    assert points["complete"] == [(0, 0.5), (2, 0.7), (4, 0.6)]
    assert points["pruned"] == [(1, 0.1)]
    assert points["best"] == [(0, 0.5), (2, 0.7), (4, 0.7)]
    assert report.history_data(snapshot.trials, "minimize")["best"] == [(0, 0.5), (2, 0.5), (4, 0.5)]


def test_learning_curves_place_each_validation_within_its_epoch(snapshot: StudySnapshot) -> None:
    curves = report.learning_curves_data(snapshot.trials, "val_kendall_tau")
    assert curves["per_epoch"] == 2
    assert set(curves["backbones"]) == {"tiny-a", EVIL_BACKBONE}
    first = curves["backbones"]["tiny-a"][0]
    assert first["number"] == 0 and first["points"] == [(0.5, 0.2), (1.0, 0.3), (1.5, 0.4), (2.0, 0.5)]
    assert [t["number"] for t in curves["backbones"]["tiny-a"]] == [0, 3, 4, 6]
    # the pruned trial stopped after half an epoch, at its first validation
    assert curves["pruned"] == [{"number": 1, "backbone": EVIL_BACKBONE, "x": 0.5, "y": 0.1}]


def test_pruning_savings_against_a_study_without_pruning(snapshot: StudySnapshot) -> None:
    savings = report.pruning_savings_data(snapshot.trials, max_epochs=2)
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
    assert report.pruning_savings_data(snapshot.trials)["rows"][1]["epochs_planned"] == 2


def test_lr_finder_curves_with_suggestion_and_learning_rates_used(snapshot: StudySnapshot) -> None:
    curves = {c["key"]: c for c in report.lr_finder_data(snapshot.trials, snapshot.user_attrs)}
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
    [curve] = report.lr_finder_data([made], {})
    assert curve["key"] == "lr_finder:m|4" and curve["lr"] == [1e-4, 1e-3] and curve["used"][0]["lr"] == 1e-3


def test_loss_at_interpolates_on_log_learning_rate() -> None:
    lrs, losses = [1e-4, 1e-2], [1.0, 0.0]
    assert report.loss_at(lrs, losses, 1e-3) == pytest.approx(0.5)
    assert report.loss_at(lrs, losses, 1e-6) == 1.0 and report.loss_at(lrs, losses, 1.0) == 0.0
    assert report.loss_at([], [], 1e-3) is None


def test_choices_group_complete_trials(snapshot: StudySnapshot) -> None:
    choices = report.choices_data(snapshot.trials)
    assert choices["backbone"] == {"tiny-a": [0.5, 0.6], EVIL_BACKBONE: [0.7]}
    assert choices["batch_size"] == {"8": [0.5, 0.6], "16": [0.7]}
    assert [(p["number"], p["seconds"]) for p in choices["cost"]["tiny-a"]] == [(0, 600), (4, 600)]
    # a study that searched no backbone shows the study file's
    fixed = [trial(TrialState.COMPLETE, "x", 8, 0, 1, 0.3, [0.3])]
    for made in fixed:
        made.params.pop("backbone")
    assert report.choices_data(fixed, {"backbone": "bert"})["backbone"] == {"bert": [0.3]}


def test_parallel_coordinates_use_indices_for_choices_and_log10_for_learning_rates(snapshot: StudySnapshot) -> None:
    parallel = report.parallel_data(snapshot.trials)
    dims = {d["name"]: d for d in parallel["dimensions"]}
    assert list(dims) == ["backbone", "batch_size", "learning_rate", "lr_used"]
    assert dims["backbone"]["labels"] == sorted(["tiny-a", EVIL_BACKBONE])
    assert dims["batch_size"]["labels"] == ["8", "16"]
    assert dims["batch_size"]["values"] == [0, 1, 0]
    assert dims["learning_rate"]["log"] and dims["learning_rate"]["values"] == pytest.approx([-4, -4, -4])
    assert dims["lr_used"]["values"] == pytest.approx([math.log10(5e-4), -4, -4])
    assert parallel["values"] == [0.5, 0.7, 0.6] and parallel["numbers"] == [0, 2, 4]


def test_importances_need_enough_trials(snapshot: StudySnapshot) -> None:
    found = report.importance_data(snapshot.trials)
    assert found["importances"] == {} and "at least 5 complete trials; this study has 3" in found["reason"]


def test_importances_rank_the_parameter_that_matters() -> None:
    rng = random.Random(0)
    made = []
    for _ in range(60):
        x, y = rng.uniform(0, 1), rng.uniform(0, 1)
        made.append(optuna.trial.create_trial(
            value=x * 10 + y * 0.1, params={"x": x, "y": y},
            distributions={"x": FloatDistribution(0, 1), "y": FloatDistribution(0, 1)}))
    found = report.importance_data(made, "maximize")
    assert found["reason"] is None and max(found["importances"], key=found["importances"].get) == "x"


def test_timeline_lanes_states_and_retries(snapshot: StudySnapshot) -> None:
    timeline = report.timeline_data(snapshot.trials, snapshot.taken_at)
    assert timeline["lanes"] == ["h1 / 0", "h1 / 1", f"h1 / {EVIL_WORKER}", "h2 / 0"]
    states = {b["number"]: b["state"] for b in timeline["bars"]}
    assert states == {0: "COMPLETE", 1: "PRUNED", 2: "COMPLETE", 3: "FAIL (stale)", 4: "COMPLETE",
                      5: "FAIL (interrupted)", 6: "RUNNING"}
    running = timeline["bars"][6]
    assert running["start"] == T0 + timedelta(minutes=15) and running["end"] == snapshot.taken_at
    [link] = timeline["links"]
    assert link["from"] == 3 and link["to"] == 4 and link["from_lane"] == "h1 / 0" and link["to_lane"] == "h2 / 0"
    assert link["from_time"] == T0 + timedelta(minutes=12) and link["to_time"] == T0 + timedelta(minutes=13)


def test_optuna_retry_link_is_read_too() -> None:
    made = trial(TrialState.COMPLETE, "a", 8, 0, 1, 0.3, [0.3])
    made.system_attrs["failed_trial"] = 7  # set by RetryHeartbeatStaleTrialCallback
    assert report.retry_of(made) == 7
    assert report.retry_of(trial(TrialState.COMPLETE, "a", 8, 0, 1, 0.3, [0.3])) is None


def test_table_rows_sort_keys_and_notes(snapshot: StudySnapshot) -> None:
    table = report.table_data(snapshot.trials, now=snapshot.taken_at)
    assert table["columns"][:8] == ["#", "state", "value", "pmr", "epochs", "lr used", "backbone", "batch size"]
    rows = table["rows"]
    assert rows[2][:3] == [("2", 2), ("COMPLETE", "complete"), ("0.7", 0.7)]
    assert rows[1][4] == ("0.5", 0.5)  # epochs trained, from the history
    assert rows[4][-1][0] == "retry of #3" and rows[5][-1][0] == EVIL_REASON
    assert rows[6][2] == ("", None)  # no value yet: sorts last


def test_compare_studies(storage: str, snapshot: StudySnapshot) -> None:
    other = report.load_snapshot("other", storage)
    [known, second] = report.compare_data([snapshot, other])
    assert known["best"] == 0.7 and second["best"] == pytest.approx(0.6)
    assert second["states"] == {"COMPLETE": 3, "PRUNED": 1}
    assert [p[1] for p in second["best_by_trial"]] == pytest.approx([0.4, 0.5, 0.6, 0.6])
    assert second["best_by_compute_h"][-1][0] == pytest.approx(16 / 60)


def test_no_finished_trials_says_so(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    add_study(url, "empty", [])
    page = report.build_report(report.load_snapshot("empty", url))
    assert "This study has no finished trials to compare: no trial has finished yet." in page
    assert "class='plot'" not in page
    running = StudySnapshot("busy", "sqlite://", trials=[trial(TrialState.RUNNING, "a", 8, 0, None)])
    page = report.build_report(running)
    assert "no trial has finished yet" in page and "plot-timeline" in page


def test_json_in_the_page_cannot_close_its_script() -> None:
    text = report.script_json({"a": "</script><script>alert(1)</script>", "b": float("nan"), "c": "x & y"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"a": "</script><script>alert(1)</script>", "b": None, "c": "x & y"}


def test_every_user_string_is_escaped(snapshot: StudySnapshot) -> None:
    page = report.build_report(snapshot)
    body = page.split("<body>", 1)[1]
    for evil in (NAME, EVIL_BACKBONE, EVIL_REASON, EVIL_WORKER):
        assert evil not in page
    assert "<script>window" not in body and "<img src=x" not in body and "<svg onload" not in body
    assert body.count("<script") == 2  # the figures' JSON and the page's own script


def synthetic(n: int, seed: int = 0) -> list[FrozenTrial]:
    """``n`` trials with 4 to 8 validations each, on 3 backbones and 4 workers, some pruned or failed."""
    rng = random.Random(seed)
    distributions = {"learning_rate": FloatDistribution(1e-5, 1e-3, log=True),
                     "backbone": CategoricalDistribution(["a", "b", "c"]),
                     "batch_size": CategoricalDistribution([8, 16])}
    made = []
    for i in range(n):
        params = {"learning_rate": 10 ** rng.uniform(-5, -3), "backbone": rng.choice("abc"),
                  "batch_size": rng.choice([8, 16])}
        taus = [rng.uniform(0, 0.8) for _ in range(rng.randint(1, 8))]
        state = rng.choice([TrialState.COMPLETE] * 6 + [TrialState.PRUNED] * 3 + [TrialState.FAIL])
        attrs = {"history": history(taus), "worker": str(i % 4), "host": "h", "wall_s": 60.0 * len(taus),
                 "fit_s": 55.0 * len(taus), "lr_used": params["learning_rate"]}
        if state == TrialState.FAIL:
            attrs["fail_reason"] = rng.choice(["stale: lost", "interrupted", "RuntimeError: boom"])
        made_trial = optuna.trial.create_trial(state=state, value=max(taus) if state != TrialState.FAIL else None,
                                               params=params, distributions=distributions, user_attrs=attrs)
        made_trial.number = i
        made_trial.datetime_start = T0 + timedelta(minutes=i)
        made_trial.datetime_complete = made_trial.datetime_start + timedelta(minutes=len(taus))
        made.append(made_trial)
    return made


def test_thousands_of_trials_stay_fast() -> None:
    trials = synthetic(3000)
    snapshot = StudySnapshot("big", "sqlite:///big.db", trials=trials)
    started = time.perf_counter()
    page = report.build_report(snapshot)
    seconds = time.perf_counter() - started
    assert seconds < 20, f"{seconds:.1f} s for 3000 trials"
    assert page.count("<tr>") == 3000 + 1
    assert report.importance_data(trials)["reason"] is None


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=120,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_report_never_imports_torch(storage: str, tmp_path: Path) -> None:
    result = _run("-c", "import sys, tuner.report; assert 'torch' not in sys.modules, 'torch imported'")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "r.html"
    code = ("import sys; from tuner.cli import main; "
            f"code = main(['report', '--study', 'other', '--storage', {storage!r}, '-o', {str(out)!r}]); "
            "assert code == 0; assert 'torch' not in sys.modules, 'torch imported'")
    result = _run("-c", code)
    assert result.returncode == 0, result.stderr
    assert out.is_file()


def test_report_command(storage: str, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = _run("-m", "tuner.cli", "report", "--study", NAME, "--compare", "other", "--storage", storage,
                  "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {out} in ")
    page = out.read_text(encoding="utf-8")
    assert "Studies compared" in page and "<script src" not in page and "<link" not in page
    missing = _run("-m", "tuner.cli", "report", "--study", "nope", "--storage", storage, "-o", str(out))
    assert missing.returncode == 2 and "no study 'nope'" in missing.stderr
    absent = _run("-m", "tuner.cli", "report", "--study", "x", "--storage", f"sqlite:///{tmp_path / 'no.db'}")
    assert absent.returncode == 2 and "no database at" in absent.stderr and not (tmp_path / "no.db").exists()


# ---------------------------------------------------------------------------------------------------
# In a real browser

EXPECTED_TRACES = {
    "plot-history": 3,  # complete, pruned, best so far
    "plot-curves": 3,  # two backbones and the pruned marks
    "plot-savings": 4,  # epochs and hours, with and without pruning
    "plot-finder": 6,  # per (backbone, batch size): curve, suggestion, rates used
    "plot-backbone": 2, "plot-batch": 2, "plot-cost": 2,
    "plot-parallel": 1,
    "plot-timeline": 6,  # complete, pruned, stale, interrupted, running, and the retry link
    "plot-compare-trial": 2, "plot-compare-compute": 2, "plot-compare-states": 4,  # running, complete, pruned, failed
}


@pytest.mark.browser
def test_report_in_a_browser(browser: Any, storage: str, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    report.write_report(NAME, out, storage=storage, compare=["other"])
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("request", lambda r: problems.append(f"request: {r.url}") if not r.url.startswith("file:") else None)
    page.goto(out.as_uri())
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot').length === {len(EXPECTED_TRACES)}")
    traces = page.evaluate("Object.fromEntries(Array.from(document.querySelectorAll('.js-plotly-plot'))"
                           ".map(e => [e.id, e.data.length]))")
    assert traces == EXPECTED_TRACES
    # every figure drew something: an SVG (or, for parallel coordinates, WebGL canvases) with marks in it
    for figure in EXPECTED_TRACES:
        assert page.locator(f"#{figure} .main-svg").count() >= 1
    assert page.locator("#plot-timeline .bars .point").count() == 7
    assert page.locator("#parameters").inner_text().count("at least 5 complete trials") == 1
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)

    # injected markup stayed text: nothing ran, and the strings are shown as written
    assert page.evaluate("window.__pwned") is None
    assert page.locator("h1").inner_text() == f"Study {NAME}"
    assert page.get_by_text(EVIL_REASON).count() >= 1

    # the table sorts by value, descending on a second click, empty cells last
    header = page.locator("#trials th", has_text="value")
    header.click()
    column = "Array.from(document.querySelectorAll('#trials tbody tr')).map(r => r.cells[{}].textContent)"
    assert page.evaluate(column.format(0)) == ["1", "0", "4", "2", "3", "5", "6"]
    header.click()
    assert page.evaluate(column.format(0)) == ["2", "4", "0", "1", "3", "5", "6"]
    page.locator("#trials th", has_text="state").click()
    assert page.evaluate(column.format(1))[:3] == ["COMPLETE"] * 3
    assert problems == []
    page.close()
