"""A known study for the report's tests: trials with every state, retries, LR-finder curves and hostile strings.

A pytest plugin (see conftest.py): its ``storage`` and ``snapshot`` fixtures hold the study in a SQLite file.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from tuner.report.snapshot import StudySnapshot, load_snapshot

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
    """A trial as tuner.hpo.objective records one (worker, host, history, times, learning rate)."""
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
    from tuner.storage.rdb import open_storage

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
    return load_snapshot(NAME, storage)
