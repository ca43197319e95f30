"""The agreement check between the replay and the live head-to-head, on a synthetic table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_replay import synthetic_table

from bench.agreement import agreement, central


def _live(best: dict[str, list[float]], trials: dict[str, list[int]]) -> dict[str, Any]:
    cells = {f"{system}/{seed}": {"best": {"tau": tau}, "trials": trials[system][seed]}
             for system, values in best.items() for seed, tau in enumerate(values)}
    return {"settings": {"sizing": {"budget_cpu_s": 600}}, "cells": cells, "machine": {"summary": "synthetic"}}


def test_the_central_range() -> None:
    assert central([float(v) for v in range(200)]) == (5.0, 195.0)


def test_live_cells_inside_the_replays_range_agree_and_outside_do_not(tmp_path: Path) -> None:
    path = synthetic_table(tmp_path)
    first = agreement(path, _live({"optuna": [0.0], "random": [0.0]}, {"optuna": [1], "random": [1]}),
                      seeds=40, workers=1)
    replayed = {system: s["replay"] for system, s in first["systems"].items()}
    # the replay's own medians, as live cells, agree; a best tau no seed reached, or 0 trials, does not
    medians = {system: [r["best_val_tau_median"]] for system, r in replayed.items()}
    trials = {system: [round(r["trials_median"])] for system, r in replayed.items()}
    again = agreement(path, _live(medians, trials), seeds=40, workers=1)
    assert all(s["agrees"] for s in again["systems"].values())
    off = agreement(path, _live({"optuna": [0.99], "random": medians["random"]},
                                {"optuna": trials["optuna"], "random": [0]}), seeds=40, workers=1)
    assert not off["systems"]["optuna"]["agrees"] and not off["systems"]["random"]["agrees"]
    assert off["systems"]["optuna"]["live"] == {"best_val_tau": [0.99], "trials": trials["optuna"]}
