"""How long `tuner report` takes on a study of 2,000 trials.

    python bench/report.py [--trials 2000]

Writes a synthetic study into a fresh SQLite file: trials with 2 to 8 validations each on 3
backbones and 2 batch sizes, 4 workers on 2 hosts, pruned trials, failures (some stale, with
their retries, some interrupted), and an LR-finder curve per (backbone, batch size). Then times
the report as a library call (read the storage, compute, draw, write the file) and as the
`tuner report` command in a fresh process. Writes ``bench/results/report.json``.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
from _common import machine, write_results
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from tuner.report.page import write_report
from tuner.storage.rdb import open_storage

BACKBONES = ["minilm-l6", "minilm-l6[num_hidden_layers=3]", "distilroberta"]
DISTRIBUTIONS = {"learning_rate": FloatDistribution(1e-5, 2e-4, log=True),
                 "backbone": CategoricalDistribution(BACKBONES), "batch_size": CategoricalDistribution([8, 16]),
                 "lr_multiplier": FloatDistribution(0.01, 1.0, log=True)}


def synthetic_trials(n: int, seed: int = 0) -> list[FrozenTrial]:
    """``n`` trials as tuner records them, ending in every state a real study sees."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, 8, 0)
    clocks = {f"{host}/{worker}": start for host in ("gpu-a", "gpu-b") for worker in ("0", "1")}
    trials: list[FrozenTrial] = []
    for number in range(n):
        lane = min(clocks, key=clocks.__getitem__)
        host, worker = lane.split("/")
        params = {"learning_rate": 10 ** rng.uniform(-5, -3.7), "backbone": rng.choice(BACKBONES),
                  "batch_size": rng.choice([8, 16]), "lr_multiplier": 10 ** rng.uniform(-2, 0)}
        quality = 0.75 - 0.1 * BACKBONES.index(params["backbone"]) - 0.05 * abs(params["lr_multiplier"] - 0.3)
        roll = rng.random()
        state = TrialState.COMPLETE if roll < 0.55 else TrialState.PRUNED if roll < 0.9 else TrialState.FAIL
        validations = 8 if state == TrialState.COMPLETE else rng.randint(1, 7)
        taus = [quality * (1 - 0.6 * 0.7 ** (i + 1)) + rng.gauss(0, 0.02) for i in range(validations)]
        minutes = validations * rng.uniform(2.0, 4.0)
        attrs: dict[str, Any] = {
            "worker": worker, "host": host, "pid": 1000 + int(worker), "wall_s": minutes * 60,
            "fit_s": minutes * 57, "setup_s": 3.0, "epochs": validations // 2,
            "history": [{"epoch": i // 2, "step": 50 * (i + 1), "val_kendall_tau": t, "val_pmr": t / 4,
                         "val_acc": t / 2, "val_loss": 0.7 - t / 3} for i, t in enumerate(taus)],
            "lr_used": 1e-3 * params["lr_multiplier"],
            "lr_finder": {"mode": "scale", "key": f"lr_finder:{params['backbone']}|{params['batch_size']}",
                          "cached": number > 6, "suggestion": 1e-3, "reliable": True, "reason": "loss dropped 31%",
                          "used": "suggestion x multiplier", "multiplier": params["lr_multiplier"]},
        }
        if state == TrialState.COMPLETE:
            attrs.update(val_kendall_tau=max(taus), val_pmr=max(taus) / 4)
        if state == TrialState.FAIL:
            attrs["fail_reason"] = rng.choice(["stale: no heartbeat for 120 s", "interrupted (SIGTERM)",
                                               "out of memory (infeasible): CUDA out of memory"])
        failed_before = trials[-1] if trials else None
        if failed_before is not None and str(failed_before.user_attrs.get("fail_reason", "")).startswith("stale"):
            attrs["retry_of"] = number - 1  # trials get their numbers when added, in this order
        made = optuna.trial.create_trial(
            state=state, value=None if state == TrialState.FAIL else max(taus), params=params,
            distributions=DISTRIBUTIONS, user_attrs=attrs, intermediate_values=dict(enumerate(taus)))
        made.datetime_start = clocks[lane]
        made.datetime_complete = clocks[lane] + timedelta(minutes=minutes)
        clocks[lane] = made.datetime_complete + timedelta(seconds=5)
        trials.append(made)
    return trials


def finder_curve(backbone: str, batch: int) -> dict[str, Any]:
    lrs = [1e-6 * 10 ** (i / 10) for i in range(41)]
    losses = [0.69 - 0.2 * min(i, 28) / 28 + (0.4 if i > 34 else 0) + 0.01 * (batch / 16) for i in range(41)]
    return {"lr": lrs, "loss": losses, "suggestion": 1e-3, "reliable": True, "reason": "loss dropped 29%",
            "seconds": 140.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-report-"))
    url = f"sqlite:///{folder / 'study.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    study = optuna.create_study(study_name="synthetic", storage=open_storage(url), direction="maximize")
    study.set_user_attr("metric", "val_kendall_tau")
    for backbone in BACKBONES:
        for batch in (8, 16):
            study.set_user_attr(f"lr_finder:{backbone}|{batch}", finder_curve(backbone, batch))
    study.add_trials(synthetic_trials(args.trials))
    print(f"wrote {args.trials} synthetic trials in {time.perf_counter() - started:.0f} s")

    path, seconds = write_report("synthetic", folder / "report.html", storage=url)
    size_mb = path.stat().st_size / 1e6
    print(f"report of {args.trials} trials: {seconds:.2f} s ({size_mb:.1f} MB)")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tuner.cli", "report", "--study", "synthetic", "--storage", url,
                    "-o", str(folder / "cli.html")], check=True, capture_output=True)
    cli_seconds = time.perf_counter() - started
    print(f"`tuner report` in a fresh process: {cli_seconds:.2f} s")
    write_results("report.json", {
        f"seconds_{args.trials}_trials": seconds, "seconds_cli": cli_seconds, "trials": args.trials,
        "html_mb": size_mb, "target_s": 10.0, "machine": machine(),
        "command": f"python bench/report.py --trials {args.trials}",
    })


if __name__ == "__main__":
    main()
