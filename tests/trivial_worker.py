"""A worker process with a trivial objective on ``tuner``'s worker loop, for the concurrency tests.

    python tests/trivial_worker.py URL STUDY BUDGET [SECONDS_PER_TRIAL]

Prints one JSON line with what it did; exits 0 unless something escaped the loop.
"""

from __future__ import annotations

import json
import sys
import time

import optuna

from tuner.storage.lock import SlotLock
from tuner.storage.rdb import open_storage
from tuner.study.loop import work
from tuner.training.stopping import StopSignals

HEARTBEAT_S, GRACE_S = 1, 10


def open_trivial_study(url: str, name: str) -> optuna.Study:
    with SlotLock(url, "schema")(retry=False):
        storage = open_storage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                               sampler=optuna.samplers.RandomSampler())


def main(url: str, name: str, budget: int, seconds: float = 0.0) -> None:
    study = open_trivial_study(url, name)

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -10, 10)
        time.sleep(seconds)
        return x * x

    with StopSignals() as signals:
        result = work(study, objective, budget, lock=SlotLock(url, name), signals=signals)
    print(json.dumps({"ran": result.ran, "interrupted": result.interrupted}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]) if len(sys.argv) > 4 else 0.0)
