"""The agreement check between the replay and the live head-to-head, on a synthetic table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_replay import RATES, synthetic_table

from bench.agreement import agreement, central, charge, clock, live_trials
from bench.replay import Table, default_policies


def _live(best: dict[str, list[float]], trials: dict[str, list[int]]) -> dict[str, Any]:
    cells = {f"{system}/{seed}": {"best": {"tau": tau}, "trials": trials[system][seed]}
             for system, values in best.items() for seed, tau in enumerate(values)}
    return {"settings": {"sizing": {"budget_cpu_s": 600}}, "cells": cells, "machine": {"summary": "synthetic"}}


def test_the_central_range() -> None:
    assert central([float(v) for v in range(200)]) == (5.0, 195.0)


def test_live_cells_like_the_replays_seeds_agree_and_others_do_not(tmp_path: Path) -> None:
    path = synthetic_table(tmp_path)
    first = agreement(path, _live({"optuna": [0.0], "random": [0.0]}, {"optuna": [1], "random": [1]}),
                      seeds=40, workers=1)
    assert set(first["systems"]) == {"optuna", "random"}  # the systems the live run has
    replayed = {system: s["replay"] for system, s in first["systems"].items()}
    # three live cells at the replay's own medians agree; three above every seed's best, or with 0 trials, do not
    medians = {system: [r["best_val_tau_median"]] * 3 for system, r in replayed.items()}
    trials = {system: [round(r["trials_median"])] * 3 for system, r in replayed.items()}
    again = agreement(path, _live(medians, trials), seeds=40, workers=1)
    assert all(s["replay"]["agrees"] for s in again["systems"].values())
    off = agreement(path, _live({"optuna": [0.99] * 3, "random": medians["random"]},
                                {"optuna": trials["optuna"], "random": [0] * 3}), seeds=40, workers=1)
    optuna, random = off["systems"]["optuna"], off["systems"]["random"]
    assert not optuna["replay"]["agrees"] and optuna["replay"]["best_val_tau_outside_95"] == 3
    assert optuna["replay"]["best_val_tau_p_value"] < 0.01 <= optuna["replay"]["trials_p_value"]
    assert not random["replay"]["agrees"] and random["replay"]["trials_p_value"] < 0.01
    assert optuna["rank"] == {"live": 1, "replay": optuna["rank"]["replay"]}


def _events(folder: Path, trials: list[tuple[str, dict[str, Any], list[float]]]) -> None:
    folder.mkdir(parents=True)
    lines = [{"trial": number, "params": params, "cpu_s": cpu_s, "tau": 0.5}
             for number, params, times in trials for cpu_s in times]
    (folder / "events.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_live_trials_take_the_cpu_since_the_previous_trials_last_validation(tmp_path: Path) -> None:
    first = {"backbone": "large", "batch_size": 8, "learning_rate": RATES[6]}
    second = {"backbone": "small", "batch_size": 16, "learning_rate": RATES[0]}
    _events(tmp_path / "cell", [("0", first, [10.0, 18.0]), ("1", second, [25.0])])
    from bench.h2h_systems import read_events

    found = live_trials(read_events(tmp_path / "cell" / "events.jsonl"))
    assert [(t["trial"], t["validations"], t["cpu_s"]) for t in found] == [("0", 2, 18.0), ("1", 1, 7.0)]


def test_the_clock_sets_live_cpu_against_the_replays_charge(tmp_path: Path) -> None:
    table = Table.load(synthetic_table(tmp_path))
    policy = default_policies()["optuna_example"]
    large = {"backbone": "large", "batch_size": 8, "learning_rate": RATES[6] * 1.2}  # snaps to RATES[6]
    # the replay's charge of each trial: load and tokenise (no cache) and the curve up to the validations run
    whole = charge(table, policy, {"params": large, "validations": 2}, set())
    half = charge(table, policy, {"params": large, "validations": 1}, set())
    assert whole > half > 1.0 + 3.0
    # live trials at 1.1x the charge, then the last one, cut by the budget and left out
    _events(tmp_path / "optuna-0", [("0", large, [half * 1.1, whole * 1.1]),
                                    ("1", large, [whole * 1.1 + half * 1.1, whole * 2.2]),
                                    ("2", large, [whole * 2.2 + 1.0])])
    found = clock(table, policy, [tmp_path / "optuna-0"])
    assert found is not None and found["trials"] == 2
    assert found["live_over_replay"] == pytest.approx(1.1, abs=1e-3)
    assert clock(table, policy, [tmp_path / "missing"]) is None


def test_the_overhead_live_trials_pay_is_charged_in_a_second_replay(tmp_path: Path) -> None:
    path = synthetic_table(tmp_path)
    table = Table.load(path)
    policy = default_policies()["random"]
    large = {"backbone": "large", "batch_size": 8, "learning_rate": RATES[6]}
    one = charge(table, policy, {"params": large, "validations": 1}, set())
    # every live trial, one validation each, costs 50 CPU s more than the table prices it
    _events(tmp_path / "cells" / "random-0", [(str(n), large, [(one + 50.0) * (n + 1)]) for n in range(4)])
    live = _live({"random": [0.5]}, {"random": [3]})
    found = agreement(path, live, seeds=20, workers=1, cell_folders=tmp_path / "cells")["systems"]["random"]
    assert found["clock"]["per_trial_gap_cpu_s"] == pytest.approx(50.0, abs=1e-3)
    assert found["replay_with_overhead"]["trials_median"] < found["replay"]["trials_median"]
