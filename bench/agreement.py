"""Does the replay agree with the live head-to-head? Its policies replayed on a table of the live run's own task.

    python -m bench.agreement [--table bench/results/lc_table_nips_h2h.json]
                              [--live bench/results/head_to_head.json] [--seeds 200]

The table must be built with the live run's task and sizes (``bench/lc_table.py``, one validation an epoch, as
the live peers validate). Each live system below is replayed with the live run's CPU-second budget per search
and ``--seeds`` seeds. A system agrees where every live cell's best validation tau, and its number of trials,
lie within the central 95% of the replay's seeds: the live cells are then draws the replay could have made.
Writes ``bench/results/agreement_<table>.json`` and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
from pathlib import Path
from typing import Any

from bench._common import RESULTS, ROOT
from bench.replay import Table, _replay_one, default_policies

# live system (bench/head_to_head.py) -> the replay's policy of the same recipe
SYSTEMS = {"optuna": "optuna_example", "random": "random"}


def central(values: list[float], share: float = 0.95) -> tuple[float, float]:
    """The range holding the central ``share`` of ``values``."""
    ordered = sorted(values)
    low = ordered[int((1 - share) / 2 * len(ordered))]
    high = ordered[min(len(ordered) - 1, int((1 + share) / 2 * len(ordered)))]
    return low, high


def agreement(table_path: Path, live: dict[str, Any], seeds: int, workers: int) -> dict[str, Any]:
    table = Table.load(table_path)
    budget = float(live["settings"]["sizing"]["budget_cpu_s"])
    policies = default_policies()
    budget_trials = budget / table.full_cost(policies["random"])
    jobs = [(table_path, policies[name], seed, budget, budget_trials) for name in SYSTEMS.values()
            for seed in range(seeds)]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SYSTEMS.values()}
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for name, _, result in pool.imap_unordered(_replay_one, jobs, chunksize=4):
            runs[name].append(result)
    systems = {}
    for system, name in SYSTEMS.items():
        cells = [c for key, c in live["cells"].items() if key.split("/")[0] == system]
        best = [r["events"][-1][1] if r["events"] else 0.0 for r in runs[name]]
        trials = [float(len(r["trials"])) for r in runs[name]]
        best_range, trial_range = central(best), central(trials)
        live_best = [float(c["best"]["tau"]) for c in cells]
        live_trials = [float(c["trials"]) for c in cells]
        systems[system] = {
            "policy": name,
            "live": {"best_val_tau": live_best, "trials": live_trials},
            "replay": {"best_val_tau_median": statistics.median(best), "best_val_tau_95": best_range,
                       "trials_median": statistics.median(trials), "trials_95": trial_range},
            "agrees": all(best_range[0] <= v <= best_range[1] for v in live_best)
            and all(trial_range[0] <= v <= trial_range[1] for v in live_trials),
        }
    return {"table": str(table_path.relative_to(ROOT)) if table_path.is_relative_to(ROOT) else str(table_path),
            "live": live.get("output", "head_to_head.json"), "live_machine": live["machine"].get("summary"),
            "table_machines": [s["machine"] for s in table.raw["sittings"]], "budget_cpu_s": budget,
            "seeds": seeds, "systems": systems}


def render(result: dict[str, Any]) -> str:
    lines = [f"{result['table']} against {result['live']}: {result['budget_cpu_s']:.0f} CPU s a search, "
             f"{result['seeds']} replay seeds"]
    for system, s in result["systems"].items():
        live, rep = s["live"], s["replay"]
        lines.append(f"{system:8} live best val {', '.join(f'{v:.3f}' for v in live['best_val_tau'])} "
                     f"(trials {', '.join(f'{v:.0f}' for v in live['trials'])}); replay median "
                     f"{rep['best_val_tau_median']:.3f}, 95% of seeds in [{rep['best_val_tau_95'][0]:.3f}, "
                     f"{rep['best_val_tau_95'][1]:.3f}] (trials {rep['trials_median']:.0f}, "
                     f"[{rep['trials_95'][0]:.0f}, {rep['trials_95'][1]:.0f}]): "
                     f"{'agrees' if s['agrees'] else 'DISAGREES'}")
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
    result = agreement(args.table, json.loads(args.live.read_text()), args.seeds, args.workers)
    output = RESULTS / f"agreement_{args.table.stem.removeprefix('lc_table_')}.json"
    output.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(render(result))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
