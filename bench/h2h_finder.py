"""What the LR finder costs and says on the head-to-head's task: is it paid back?

    python -m bench.h2h_finder [--layers 6 3] [--batch-size 8]

Runs tuner's finder (``tuner.hpo.lr_finder.run_finder``, the default ``study.lr_finder``: 100 steps, judged
by a 10% drop of the smoothed loss) once per MiniLM cut, on the full head-to-head mode's training subset
(``bench.head_to_head.FULL``), and records its suggestion, the judge's verdict, and its CPU and wall seconds
beside what one trial of that mode trains (its steps). Results: ``bench/results/h2h_finder.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench._common import machine, require_shared, write_results
from bench.h2h_systems import tuner_study
from bench.head_to_head import FULL, write_subset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", nargs="+", type=int, default=[6, 3], help="MiniLM cuts (6: the whole model)")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    from tuner.data.module import SentenceOrderingData
    from tuner.hpo.lr_finder import run_finder
    from tuner.hpo.objective import training_steps
    from tuner.model.orderer import SentenceOrderer
    from tuner.study.open import load_study_file
    from tuner.training.stopping import StopSignals

    sizing = replace(FULL, backbone_layers=tuple(args.layers))
    found = {}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        spec = {"seed": 0, "folder": str(folder), "data": write_subset(require_shared("nips_abstracts"),
                                                                       folder / "data", sizing),
                "backbones": sizing.backbones(), "batch_sizes": [args.batch_size],
                "learning_rate": list(sizing.learning_rate), "max_epochs": sizing.max_epochs,
                "max_length": sizing.max_length}
        (folder / "finder.toml").write_text(tuner_study(spec))
        base = load_study_file(str(folder / "finder.toml"))
        for backbone in base.search.backbone:
            run = replace(base, model=replace(base.model, backbone=backbone),
                          data=replace(base.data, batch_size=args.batch_size))
            data = SentenceOrderingData(run.data, backbone.name)
            data.setup("fit")
            cpu, wall = time.process_time(), time.perf_counter()
            result = run_finder(run, SentenceOrderer.from_config(run.model), data, folder / "root", StopSignals())
            found[backbone.label] = {
                "suggestion": result["suggestion"], "reliable": result["reliable"], "reason": result["reason"],
                "cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall,
                "finder_steps": run.study.lr_finder.num_training, "trial_steps": training_steps(run, data),
            }
            print(backbone.label, found[backbone.label], flush=True)
    write_results("h2h_finder.json", {"command": "python -m bench.h2h_finder", "machine": machine(),
                                      "sizing": {"train_docs": sizing.train_docs, "max_epochs": sizing.max_epochs,
                                                 "batch_size": args.batch_size},
                                      "finders": found})


if __name__ == "__main__":
    main()
