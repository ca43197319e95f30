"""The report's page: its sections, escaping, the command, size at scale, and the page in a real browser."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import ARTIFACTS
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState
from report_study import EVIL_BACKBONE, EVIL_REASON, EVIL_WORKER, NAME, T0, add_study, history, trial

from tuner.report.data import importance_data
from tuner.report.page import build_report, script_json, write_report
from tuner.report.snapshot import StudySnapshot, load_snapshot


def test_no_finished_trials_says_so(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    add_study(url, "empty", [])
    page = build_report(load_snapshot("empty", url))
    assert "This study has no finished trials to compare: no trial has finished yet." in page
    assert "class='plot'" not in page
    running = StudySnapshot("busy", "sqlite://", trials=[trial(TrialState.RUNNING, "a", 8, 0, None)])
    page = build_report(running)
    assert "no trial has finished yet" in page and "plot-timeline" in page


def test_json_in_the_page_cannot_close_its_script() -> None:
    text = script_json({"a": "</script><script>alert(1)</script>", "b": float("nan"), "c": "x & y"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"a": "</script><script>alert(1)</script>", "b": None, "c": "x & y"}


def test_every_user_string_is_escaped(snapshot: StudySnapshot) -> None:
    page = build_report(snapshot)
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
    page = build_report(snapshot)
    seconds = time.perf_counter() - started
    assert seconds < 20, f"{seconds:.1f} s for 3000 trials"
    assert page.count("<tr>") == 3000 + 1
    assert importance_data(trials).reason is None


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=120,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_report_never_imports_torch(storage: str, tmp_path: Path) -> None:
    result = _run("-c", "import sys, tuner.report; assert 'torch' not in sys.modules, 'torch imported'")
    assert result.returncode == 0, result.stderr
    # the library API at the package's top, as the README shows it
    result = _run("-c", "import sys; from tuner import write_report; import tuner.report.page as page; "
                        "assert write_report is page.write_report; assert 'torch' not in sys.modules, 'torch imported'")
    assert result.returncode == 0, result.stderr
    result = _run("-c", "import tuner; assert all(callable(getattr(tuner, name)) for name in tuner.__all__)")
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
    write_report(NAME, out, storage=storage, compare=["other"])
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
