"""Does the replay agree with the live head-to-head? Its policies replayed on a table of the live run's own task.

    python -m bench.agreement [--table bench/results/lc_table_nips_h2h.json]
                              [--live bench/results/head_to_head.json] [--seeds 200]

The table must be built with the live run's task and sizes (``bench/lc_table.py``, one validation an epoch, as
the live systems validate). Each live system is replayed by the policy of its recipe with the live run's
CPU-second budget per search and ``--seeds`` seeds. A live cell is one draw from its system's distribution, so a
system agrees where its live cells could be draws of the replay's seeds: for its best validation tau and for its
number of trials, a two-sided Mann-Whitney test of the live cells against the replay's seeds finds no
difference at the 1% level. The central 95% of the replay's seeds is shown beside them, with how many live cells
fall outside it (with 5 cells, one is expected one time in four). The systems' ranks by median best validation
tau are compared, live against replay.

Where the live run's cell folders are still on disk (``runs/head_to_head/<results>/<system>-<seed>/``), each live
trial's CPU seconds, from the previous trial's last validation to its own, are set against what the replay
charges the same trial (its configuration's curve at the nearest grid rate, up to the validations it ran, plus
loading and tokenising): the ratio says how far the table's prices are from the live clock. Each system's gap a
trial (its own set-up, checkpoints and bookkeeping, which the table does not price) is then charged to every
replayed trial (``Policy.trial_overhead_cpu_s``) and the check is made again: its trial counts are calibrated on
the same live run by that one number a system; its best validation tau is not. The ranks compare the live run
with this second replay where there is one.

Writes ``bench/results/agreement_<table>.json`` and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench._common import RESULTS, ROOT
from bench.replay import Policy, Table, _evaluated, _replay_one, default_policies, trial_fixed_cost

# live system (bench/head_to_head.py) -> the replay's policy of the same recipe
SYSTEMS = {"hf": "hf", "optuna": "optuna_example", "random": "random", "tuner": "tuner"}
ALPHA = 0.01  # a system disagrees where a Mann-Whitney test tells its live cells from the replay at this level


def central(values: list[float], share: float = 0.95) -> tuple[float, float]:
    """The range holding the central ``share`` of ``values``."""
    ordered = sorted(values)
    low = ordered[int((1 - share) / 2 * len(ordered))]
    high = ordered[min(len(ordered) - 1, int((1 + share) / 2 * len(ordered)))]
    return low, high


def live_trials(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A live cell's trials from its validations, in order: each one's parameters, validations and CPU seconds
    from the previous trial's last validation to its own last (set-up, training, validating, and the search's own
    work between them)."""
    trials: list[dict[str, Any]] = []
    for event in events:
        if not trials or trials[-1]["trial"] != event["trial"] or trials[-1]["params"] != event["params"]:
            trials.append({"trial": event["trial"], "params": event["params"], "validations": 0, "end": 0.0})
        trials[-1]["validations"] += 1
        trials[-1]["end"] = float(event["cpu_s"])
    previous = 0.0
    for trial in trials:
        end = trial.pop("end")
        trial["cpu_s"], previous = end - previous, end
    return trials


def charge(table: Table, policy: Policy, trial: dict[str, Any], tokenized: set[str]) -> float:
    """What the replay charges a live trial: its configuration's curve (the nearest grid rate, averaged over the
    training seeds) up to the validations it ran, plus what the replay charges a trial besides training."""
    backbone, batch_size = trial["params"]["backbone"], int(trial["params"]["batch_size"])
    rate = table.snap(float(trial["params"]["learning_rate"]))
    paid = trial_fixed_cost(table, policy, backbone, tokenized)
    curves = []
    for seed in table.seeds:
        config = table.curve(backbone, batch_size, rate, seed)
        evaluated = _evaluated(config["curve"], policy.evals, table.evals_per_epoch)
        curves.append(table.cost(config, evaluated, min(trial["validations"], len(evaluated)) - 1))
    return paid + statistics.fmean(curves)


def clock(table: Table, policy: Policy, folders: list[Path]) -> dict[str, Any] | None:
    """Live CPU seconds against the replay's charge, over every trial of the cells in ``folders`` but each cell's
    last (the budget cut it short)."""
    from bench.h2h_systems import read_events

    live = charged = 0.0
    count = 0
    for folder in folders:
        tokenized: set[str] = set()
        trials = live_trials(read_events(folder / "events.jsonl"))
        for trial in trials[:-1]:
            live += trial["cpu_s"]
            charged += charge(table, policy, trial, tokenized)
            count += 1
    if not count:
        return None
    return {"trials": count, "live_cpu_s": round(live, 1), "replay_cpu_s": round(charged, 1),
            "live_over_replay": round(live / charged, 3), "per_trial_gap_cpu_s": round((live - charged) / count, 2)}


def ranks(medians: dict[str, float]) -> dict[str, int]:
    """1 for the highest median, and so on."""
    order = sorted(medians, key=lambda system: -medians[system])
    return {system: order.index(system) + 1 for system in medians}


def _replays(table_path: Path, policies: dict[str, Policy], seeds: int, budget: float, budget_trials: float,
             workers: int) -> dict[str, list[dict[str, Any]]]:
    """Each system's replayed searches, by system."""
    jobs = [(table_path, policy, seed, budget, budget_trials, False) for policy in policies.values()
            for seed in range(seeds)]
    names = {policy.name: system for system, policy in policies.items()}
    runs: dict[str, list[dict[str, Any]]] = {system: [] for system in policies}
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for name, _, result in pool.imap_unordered(_replay_one, jobs, chunksize=4):
            runs[names[name]].append(result)
    return runs


def _judge(runs: list[dict[str, Any]], live_best: list[float], live_trials_: list[float]) -> dict[str, Any]:
    """The replay's spread of best validation tau and of trials, and where the live cells fall in it."""
    from scipy.stats import mannwhitneyu

    best = [r["events"][-1][1] if r["events"] else 0.0 for r in runs]
    trials = [float(len(r["trials"])) for r in runs]
    replayed: dict[str, Any] = {}
    for label, mine, theirs in (("best_val_tau", live_best, best), ("trials", live_trials_, trials)):
        low, high = central(theirs)
        replayed[f"{label}_median"] = statistics.median(theirs)
        replayed[f"{label}_95"] = [low, high]
        replayed[f"{label}_outside_95"] = sum(not low <= v <= high for v in mine)
        replayed[f"{label}_p_value"] = float(mannwhitneyu(mine, theirs, alternative="two-sided").pvalue)
    replayed["agrees"] = replayed["best_val_tau_p_value"] >= ALPHA and replayed["trials_p_value"] >= ALPHA
    return replayed


def agreement(table_path: Path, live: dict[str, Any], seeds: int, workers: int,
              cell_folders: Path | None = None) -> dict[str, Any]:
    """The replay as priced, against the live cells; and, where the cell folders say what each system's live
    trials cost beyond the table's prices, the replay again with that overhead charged to every trial."""
    table = Table.load(table_path)
    budget = float(live["settings"]["sizing"]["budget_cpu_s"])
    defaults = default_policies()
    budget_trials = budget / table.full_cost(defaults["random"])
    present = [system for system in SYSTEMS if any(key.split("/")[0] == system for key in live["cells"])]
    keys = {system: sorted((key for key in live["cells"] if key.split("/")[0] == system),
                           key=lambda k: int(k.split("/")[1])) for system in present}
    policies = {system: defaults[SYSTEMS[system]] for system in present}
    clocks = {system: clock(table, policies[system], [cell_folders / key.replace("/", "-") for key in keys[system]])
              for system in present} if cell_folders is not None else {}
    priced = _replays(table_path, policies, seeds, budget, budget_trials, workers)
    overhead = {system: replace(policies[system], trial_overhead_cpu_s=max(0.0, found["per_trial_gap_cpu_s"]))
                for system, found in clocks.items() if found}
    charged = _replays(table_path, overhead, seeds, budget, budget_trials, workers) if overhead else {}
    systems = {}
    for system in present:
        cells = [live["cells"][key] for key in keys[system]]
        live_best = [float(c["best"]["tau"]) for c in cells]
        live_trials_ = [float(c["trials"]) for c in cells]
        found: dict[str, Any] = {"policy": SYSTEMS[system], "cells": keys[system],
                                 "live": {"best_val_tau": live_best, "trials": live_trials_,
                                          "best_val_tau_median": statistics.median(live_best)},
                                 "replay": _judge(priced[system], live_best, live_trials_)}
        if clocks.get(system):
            found["clock"] = clocks[system]
        if system in charged:
            found["replay_with_overhead"] = _judge(charged[system], live_best, live_trials_)
        systems[system] = found
    final = "replay_with_overhead" if charged else "replay"
    live_rank = ranks({s: f["live"]["best_val_tau_median"] for s, f in systems.items()})
    replay_rank = ranks({s: f.get(final, f["replay"])["best_val_tau_median"] for s, f in systems.items()})
    for system, found in systems.items():
        found["rank"] = {"live": live_rank[system], "replay": replay_rank[system]}
    return {"table": str(table_path.relative_to(ROOT)) if table_path.is_relative_to(ROOT) else str(table_path),
            "live": live.get("output", "head_to_head.json"), "live_machine": live["machine"].get("summary"),
            "table_machines": [s["machine"] for s in table.raw["sittings"]], "budget_cpu_s": budget,
            "seeds": seeds, "alpha": ALPHA, "systems": systems, "same_ranking": live_rank == replay_rank}


def render(result: dict[str, Any]) -> str:
    lines = [f"{result['table']} against {result['live']}: {result['budget_cpu_s']:.0f} CPU s a search, "
             f"{result['seeds']} replay seeds; Mann-Whitney p of the live cells against the replay's seeds"]
    for system, s in result["systems"].items():
        live = s["live"]
        lines.append(f"{system}: live best val tau {', '.join(f'{v:.3f}' for v in live['best_val_tau'])}, "
                     f"trials {', '.join(f'{v:.0f}' for v in live['trials'])}; rank live {s['rank']['live']}, "
                     f"replay {s['rank']['replay']}")
        if s.get("clock"):
            c = s["clock"]
            lines.append(f"  clock: {c['trials']} live trials took {c['live_cpu_s']:.0f} CPU s, the replay charges "
                         f"{c['replay_cpu_s']:.0f} ({c['live_over_replay']:.2f}x, {c['per_trial_gap_cpu_s']:+.1f} s "
                         "a trial)")
        for label in ("replay", "replay_with_overhead"):
            if label not in s:
                continue
            rep = s[label]
            lines.append(
                f"  {label}: best val median {rep['best_val_tau_median']:.3f}, 95% in "
                f"[{rep['best_val_tau_95'][0]:.3f}, {rep['best_val_tau_95'][1]:.3f}] "
                f"({rep['best_val_tau_outside_95']} outside), p = {rep['best_val_tau_p_value']:.2g}; trials median "
                f"{rep['trials_median']:.0f}, [{rep['trials_95'][0]:.0f}, {rep['trials_95'][1]:.0f}] "
                f"({rep['trials_outside_95']} outside), p = {rep['trials_p_value']:.2g}: "
                f"{'agrees' if rep['agrees'] else 'DISAGREES'}")
    lines.append(f"same ranking by median best validation tau: {'yes' if result['same_ranking'] else 'no'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", type=Path, default=RESULTS / "lc_table_nips_h2h.json")
    parser.add_argument("--live", type=Path, default=RESULTS / "head_to_head.json")
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    for path in (args.table, args.live):
        if not path.is_file():
            raise SystemExit(f"{path} does not exist")
    live = json.loads(args.live.read_text())
    folders = ROOT / "runs" / "head_to_head" / args.live.stem
    result = agreement(args.table, live, args.seeds, args.workers, folders if folders.is_dir() else None)
    output = RESULTS / f"agreement_{args.table.stem.removeprefix('lc_table_')}.json"
    output.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(render(result))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
