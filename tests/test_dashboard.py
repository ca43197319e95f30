"""The live dashboard: served by the real command, over a SQLite study that a worker keeps writing to."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import ARTIFACTS

from tuner.dashboard import study_path
from tuner.errors import TunerError
from tuner.storage.rdb import open_storage
from tuner.storage.reader import open_reader

# A worker as tuner runs one: the same storage settings, trials finishing one after another.
WRITER = """
import sys, time
import optuna
from tuner.storage.rdb import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name=sys.argv[2], storage=open_storage(sys.argv[1], create_schema=False))

def objective(trial):
    x = trial.suggest_float("x", -1.0, 1.0)
    for step in range(3):
        trial.report(x * step, step)
    trial.set_user_attr("history", [{"epoch": 0, "step": 1, "val_kendall_tau": x}])
    return x

while True:
    study.optimize(objective, n_trials=1)
    time.sleep(0.05)  # pace the worker: the two cores are shared with the browser and the server
"""


def count(url: str, name: str) -> int:
    return len(optuna.load_study(study_name=name, storage=open_reader(url)).get_trials(deepcopy=False))


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture()
def live(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A SQLite study with a worker process finishing trials until the test ends."""
    url = f"sqlite:///{tmp_path / 'live.db'}"
    optuna.create_study(study_name="live", storage=open_storage(url), direction="maximize")
    errors = (tmp_path / "writer.err").open("w")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, url, "live"], stderr=errors, stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: count(url, "live") >= 5, "the worker's first trials")
        yield {"url": url, "writer": writer, "errors": tmp_path / "writer.err"}
    finally:
        writer.kill()
        writer.wait(timeout=30)
        errors.close()


def start_dashboard(*args: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen([sys.executable, "-m", "tuner.cli", "dashboard", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = process.stdout.readline() if process.stdout else ""  # the URL, once the server listens
    if "http://" not in line:
        process.kill()
        _, err = process.communicate(timeout=30)
        raise AssertionError(f"the dashboard did not start: {line!r} {err}")
    return process, line.rsplit(" ", 1)[-1].strip()


def stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    return process.returncode, err


def test_study_path_and_unknown_study(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(study_name="a", storage=open_storage(url))
    optuna.create_study(study_name="b", storage=open_storage(url))
    assert study_path(open_reader(url), "b", url) == "/dashboard/studies/2"
    with pytest.raises(TunerError, match=r"no study 'c' in sqlite:///.*s\.db; studies there: \['a', 'b'\]"):
        study_path(open_reader(url), "c", url)


def test_dashboard_refuses_a_missing_file_without_creating_it(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    result = subprocess.run([sys.executable, "-m", "tuner.cli", "dashboard", "--study", "x", "--storage",
                             f"sqlite:///{missing}", "--port", "0"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "no database at" in result.stderr and "run the study first" in result.stderr
    assert not missing.exists()


def test_dashboard_warns_when_reachable_from_other_machines(live: dict[str, Any]) -> None:
    process, link = start_dashboard("--study", "live", "--storage", live["url"], "--host", "0.0.0.0", "--port", "0")
    code, err = stop(process)
    assert link.startswith("http://0.0.0.0:") and link.endswith("/dashboard/studies/1")
    assert "not only on this machine" in err and code == 0


@pytest.mark.browser
def test_dashboard_shows_a_live_study_while_its_worker_keeps_finishing_trials(browser: Any,
                                                                           live: dict[str, Any]) -> None:
    url, writer = live["url"], live["writer"]
    process, link = start_dashboard("--study", "live", "--storage", url, "--port", "0")
    try:
        assert link.startswith("http://127.0.0.1:") and link.endswith("/dashboard/studies/1")
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(link + "/trials")
        page.get_by_text("live (id=1)").wait_for()
        page.get_by_text("Trial 0", exact=True).first.wait_for()
        shown = int(page.get_by_text(re.compile(r"^\d+ Trials$")).first.inner_text().split()[0])
        assert shown >= 5
        before = count(url, "live")
        # poll the study as the page does, while the worker goes on finishing trials
        origin = link.split("/dashboard")[0]
        seen: list[int] = []

        def poll() -> int:
            response = page.request.get(f"{origin}/api/studies/1")
            assert response.ok, response.text()
            seen.append(len(response.json()["trials"]))
            return seen[-1]

        # the dashboard (its cache lasts a few seconds) catches up with trials finished after it first
        # answered: counted from its own first answer, which a loaded machine may delay past `before`
        first = max(poll(), before)
        wait_until(lambda: poll() >= first + 10, "ten more trials in the dashboard")
        assert seen == sorted(seen) and seen[-1] >= seen[0] + 10
        page.goto(link)
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 2")
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"))
        page.close()
        assert writer.poll() is None, "the worker died"
        errors = live["errors"].read_text()
        assert "locked" not in errors and "Error" not in errors, errors
    finally:
        code, err = stop(process)
    assert code == 0 and "dashboard stopped" in err


def test_dashboard_arguments_default_to_this_machine() -> None:
    from tuner.cli import build_parser

    args = build_parser().parse_args(["dashboard", "--study", "s"])
    assert (args.host, args.port, args.storage) == ("127.0.0.1", 8080, None)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["dashboard", "--study", "s", "--port", "70000"])


def test_dashboard_never_prints_a_password() -> None:
    result = subprocess.run([sys.executable, "-m", "tuner.cli", "dashboard", "--study", "s", "--storage",
                             "postgresql://u:hunter2@127.0.0.1:1/x", "--port", "0"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "postgresql://u:***@127.0.0.1:1/x" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
