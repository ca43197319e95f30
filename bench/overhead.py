"""Orchestration overhead per trial: the time a trial spends outside Lightning's ``fit``.

    python bench/overhead.py [--studies demo nips] [--n-trials 4] [--nips-documents 400]

Runs each study on a fresh SQLite file with the LR finder in ``scale`` mode, then splits every trial's
wall time (Optuna's start to end) into: set-up (data loading, tokenisation or its cache, model
loading), the LR finder (reported separately: it runs once per backbone and batch size), ``fit``, and
the rest (sampling, database writes, checkpoint bookkeeping). ``overhead_fraction`` is
(set-up + rest) / wall over trials whose finder was cached, the worst of the studies measured.
The NIPS study is cut to ``--nips-documents`` training documents and 2 epochs to fit a CPU budget.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT, machine, require_shared, write_results

from tuner.study.open import load_study_file, open_study
from tuner.study.run import run_study


def measure(study: str, overrides: list[str], n_trials: int) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix=f"overhead-{study}-"))
    run = load_study_file(str(ROOT / "studies" / f"{study}.toml"), [
        *overrides, f'study.storage="sqlite:///{folder / "study.db"}"', f'trainer.output_dir="{folder}"',
        f"study.n_trials={n_trials}", "study.baseline=false", 'study.pruner="none"',
    ])
    started = time.perf_counter()
    run_study(run, progress=False)
    total = time.perf_counter() - started
    rows = []
    for trial in open_study(run).trials:
        if trial.datetime_start is None or trial.datetime_complete is None:
            continue
        attrs = trial.user_attrs
        wall = (trial.datetime_complete - trial.datetime_start).total_seconds()
        setup, finder, fit = attrs.get("setup_s", 0.0), attrs.get("finder_s", 0.0), attrs.get("fit_s", 0.0)
        rows.append({"number": trial.number, "state": trial.state.name, "wall_s": wall, "setup_s": setup,
                     "finder_s": finder, "fit_s": fit, "rest_s": max(0.0, wall - setup - finder - fit),
                     "finder_cached": (attrs.get("lr_finder") or {}).get("cached", False)})
    cached = [r for r in rows if r["finder_cached"]]
    fractions = [(r["setup_s"] + r["rest_s"]) / (r["wall_s"] - r["finder_s"]) for r in cached]
    return {
        "study": study, "overrides": overrides, "trials": rows, "total_s": total,
        "overhead_fraction": max(fractions) if fractions else None,
        "median_overhead_fraction": statistics.median(fractions) if fractions else None,
        "finder_s_total": sum(r["finder_s"] for r in rows),
        "parts_s_cached_trials": {k: sum(r[k] for r in cached) for k in ("wall_s", "setup_s", "fit_s", "rest_s")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", nargs="+", default=["demo", "nips"])
    parser.add_argument("--n-trials", type=int, default=4)
    parser.add_argument("--nips-documents", type=int, default=400)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = []
    for study in args.studies:
        overrides = ['search.batch_size=[16]']
        if study == "nips":
            nips = require_shared("nips_abstracts")
            overrides += [f'data.train="{nips / "train.lower"}"', f'data.validation="{nips / "val.lower"}"',
                          f'data.test="{nips / "test.lower"}"', f"data.max_documents={args.nips_documents}",
                          'search.backbone=[{name="sentence-transformers/all-MiniLM-L6-v2", '
                          'config={num_hidden_layers=3}}]', "search.max_epochs=[2]"]
        result = measure(study, overrides, args.n_trials)
        results.append(result)
        print(f"{study}: overhead {result['overhead_fraction']:.3%} of trial time (worst cached-finder trial); "
              f"finder {result['finder_s_total']:.0f} s once; parts {result['parts_s_cached_trials']}")
    worst = max(r["overhead_fraction"] for r in results if r["overhead_fraction"] is not None)
    write_results("overhead.json", {
        "overhead_fraction": worst, "target": 0.05, "studies": results, "machine": machine(),
        "command": "python bench/overhead.py " + " ".join(f"--studies {s}" for s in args.studies),
    })


if __name__ == "__main__":
    main()
