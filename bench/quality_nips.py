"""Quality on NIPS: fine-tune a backbone on NIPS train, report Kendall's tau and PMR on NIPS test.

    python bench/quality_nips.py [--set model.learning_rate=1e-4 ...] [--output bench/results/quality_nips.json]

Published test results on this benchmark: ATTOrderNet tau 0.67 / PMR 16.25, B-TSort (BERT-base, GPU)
tau 0.81 / PMR 32.59.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict
from pathlib import Path

from _common import ROOT, machine, require_shared, write_results

from tuner.config.loader import read_study_file
from tuner.training.trainer import train

RECIPE = [
    'model.loss="pairwise"',
    'model.pooling="mean"',
    "model.learning_rate=5e-5",
    "model.warmup=0.1",
    "data.batch_size=16",
    "trainer.max_epochs=6",
    'trainer.precision="auto"',
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], help="extra study overrides")
    parser.add_argument("--output", default="quality_nips.json", help="results file name in bench/results/")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("tuner").setLevel(logging.INFO)
    nips = require_shared("nips_abstracts")
    overrides = [
        *RECIPE,
        f'data.train="{nips / "train.lower"}"',
        f'data.validation="{nips / "val.lower"}"',
        f'data.test="{nips / "test.lower"}"',
        *args.set,
    ]
    run = read_study_file(ROOT / "studies" / "nips.toml", overrides)
    started = time.perf_counter()
    result = train(run, output_dir=Path("runs") / "bench-quality" / time.strftime("%Y%m%d-%H%M%S"), progress=False)
    total = time.perf_counter() - started
    print(f"validation: {result.validation}")
    print(f"test:       {result.test}")
    print(f"train wall: {result.wall_s:.0f} s over {result.epochs} epochs (whole run {total:.0f} s)")
    write_results(args.output, {
        "test_kendall_tau": result.test["kendall_tau"],
        "test_pmr": result.test["pmr"],
        "test_acc": result.test["acc"],
        "val_kendall_tau": result.validation["kendall_tau"],
        "train_wall_s": result.wall_s,
        "total_wall_s": total,
        "epochs": result.epochs,
        "params": {"model": asdict(run.model), "data": {"batch_size": run.data.batch_size,
                   "max_sentences": run.data.max_sentences, "max_length": run.data.max_length},
                   "trainer": asdict(run.trainer)},
        "data_fingerprint": result.data_fingerprint,
        "machine": machine(),
        "command": "python bench/quality_nips.py " + " ".join(f"--set {s}" for s in args.set),
    })


if __name__ == "__main__":
    main()
