"""Quality a CPU study reaches on NIPS within a fixed budget of wall time on this machine.

    python bench/study_nips.py [--budget 1200] [--set search.max_epochs=[1,2] ...]

Runs the shipped NIPS study (TPE, median pruning, the LR finder in scale mode) on a fresh SQLite
file until ``--budget`` seconds have passed (the trial running then finishes), then tests the best
trial's checkpoint on NIPS test. Writes ``bench/results/study_nips.json``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from _common import ROOT, machine, require_shared, write_results

from tuner.storage.records import trial_row
from tuner.study.open import load_study_file, open_study
from tuner.study.queries import best_checkpoint
from tuner.study.run import run_study
from tuner.training.inference import evaluate_checkpoint

DEFAULTS = ["search.max_epochs=[1, 2]"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=1200.0, help="seconds of wall time (2 CPU cores here)")
    parser.add_argument("--set", action="append", default=[], help="extra study overrides")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    nips = require_shared("nips_abstracts")
    folder = Path(tempfile.mkdtemp(prefix="study-nips-"))
    overrides = [
        *DEFAULTS, *args.set,
        f'data.train="{nips / "train.lower"}"', f'data.validation="{nips / "val.lower"}"',
        f'data.test="{nips / "test.lower"}"',
        f'study.storage="sqlite:///{folder / "study.db"}"', f'trainer.output_dir="{folder}"', "study.n_trials=100",
    ]
    run = load_study_file(str(ROOT / "studies" / "nips.toml"), overrides)
    started = time.perf_counter()
    run_study(run, timeout=args.budget, progress=False)
    wall = time.perf_counter() - started
    rows = [trial_row(t, run).to_json() for t in open_study(run).trials]
    checkpoint = best_checkpoint(run)
    best = max((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: r["value"])
    test = evaluate_checkpoint(checkpoint, split="test")["test"]
    print(f"{len(rows)} trials in {wall:.0f} s; best validation tau {best['value']:.4f} (trial {best['number']}, "
          f"{best['params']}); its test tau {test['kendall_tau']:.4f}, PMR {test['pmr']:.4f}")
    write_results("study_nips.json", {
        "budget_s": args.budget, "wall_s": wall, "best_val_kendall_tau": best["value"],
        "best_test_kendall_tau": test["kendall_tau"], "best_test_pmr": test["pmr"], "best_trial": best["number"],
        "best_params": best["params"], "overrides": overrides[: len(DEFAULTS) + len(args.set)],
        "trials": [{k: r[k] for k in ("number", "state", "value", "params", "duration_s")}
                   | {"epochs": r["attrs"].get("epochs"), "lr_finder": r["attrs"].get("lr_finder"),
                      "fail_reason": r["attrs"].get("fail_reason")} for r in rows],
        "machine": machine(),
        "command": f"python bench/study_nips.py --budget {args.budget:g}" + "".join(f" --set {s}" for s in args.set),
    })


if __name__ == "__main__":
    main()
