"""What the LR finder says on the head-to-head's task, seed by seed: how often its judge trusts it, by length.

    python -m bench.h2h_finder [--layers 3] [--batch-size 8] [--train-docs 720] [--steps 100 150] [--seeds 0 1 2 3 4]

Runs tuner's finder (``tuner.hpo.lr_finder.run_finder``, judged by a ``min_drop`` fall of the smoothed loss)
for each MiniLM cut, finder length (``num_training``) and seed, on the first ``--train-docs`` NIPS training
documents, and records its suggestion, the loss drop, the judge's verdict and its CPU and wall seconds beside
what one two-epoch trial trains (its steps). The seed sets the data order, as a trial's seed does; the
backbone's pretrained weights are the same in every run. Results: ``bench/results/h2h_finder.json``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench._common import machine, require_shared, write_results
from bench.h2h_systems import tuner_study
from bench.head_to_head import FULL, write_subset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", nargs="+", type=int, default=[3], help="MiniLM cuts (6: the whole model)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train-docs", type=int, default=720)
    parser.add_argument("--steps", nargs="+", type=int, default=[100, 150], help="finder lengths (num_training)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    args = parser.parse_args()

    import lightning.pytorch as pl

    from tuner.data.module import SentenceOrderingData
    from tuner.hpo.lr_finder import loss_drop, run_finder
    from tuner.hpo.objective import training_steps
    from tuner.model.orderer import SentenceOrderer
    from tuner.study.open import load_study_file
    from tuner.training.stopping import StopSignals

    sizing = replace(FULL, backbone_layers=tuple(args.layers), train_docs=args.train_docs)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        spec = {"training_seed": 0, "sampler_seed": 0, "folder": str(folder),
                "data": write_subset(require_shared("nips_abstracts"),
                                                                       folder / "data", sizing),
                "backbones": sizing.backbones(), "batch_sizes": [args.batch_size],
                "learning_rate": list(sizing.learning_rate), "max_epochs": sizing.max_epochs,
                "max_length": sizing.max_length}
        (folder / "finder.toml").write_text(tuner_study(spec))
        base = load_study_file(str(folder / "finder.toml"))
        for backbone in base.search.backbone:
            for steps in args.steps:
                for seed in args.seeds:
                    run = replace(base, model=replace(base.model, backbone=backbone),
                                  data=replace(base.data, batch_size=args.batch_size),
                                  study=replace(base.study, lr_finder=replace(base.study.lr_finder,
                                                                               num_training=steps)))
                    pl.seed_everything(seed, workers=True, verbose=False)
                    data = SentenceOrderingData(run.data, backbone.name)
                    data.setup("fit")
                    cpu, wall = time.process_time(), time.perf_counter()
                    found = run_finder(run, SentenceOrderer.from_config(run.model), data, folder / "root",
                                       StopSignals())
                    finite = [loss for loss in found["loss"] if math.isfinite(loss)]
                    runs.append({
                        "backbone": backbone.label, "finder_steps": steps, "seed": seed,
                        "suggestion": found["suggestion"], "reliable": found["reliable"], "reason": found["reason"],
                        "drop": round(loss_drop(finite)[2], 4) if len(finite) >= 10 else None,
                        "cpu_s": round(time.process_time() - cpu, 3), "wall_s": round(time.perf_counter() - wall, 3),
                        "trial_steps": training_steps(run, data), "lr": found["lr"], "loss": found["loss"]})
                    print({k: v for k, v in runs[-1].items() if k not in ("lr", "loss")}, flush=True)
    summary = {}
    for backbone in base.search.backbone:
        for steps in args.steps:
            group = [r for r in runs if r["backbone"] == backbone.label and r["finder_steps"] == steps]
            drops = [r["drop"] for r in group if r["drop"] is not None]
            summary[f"{backbone.label}|{args.batch_size}|{steps} steps"] = {
                "reliable": f"{sum(r['reliable'] for r in group)} of {len(group)}",
                "median_drop": statistics.median(drops) if drops else None,
                "drops": drops,
                "suggestions": [r["suggestion"] for r in group],
                "median_cpu_s": statistics.median(r["cpu_s"] for r in group)}
    for key, line in summary.items():
        print(key, line, flush=True)
    command = ("python -m bench.h2h_finder --layers " + " ".join(map(str, args.layers))
               + f" --batch-size {args.batch_size} --train-docs {args.train_docs} --steps "
               + " ".join(map(str, args.steps)) + " --seeds " + " ".join(map(str, args.seeds)))
    write_results("h2h_finder.json", {"command": command, "machine": machine(),
                                      "sizing": {"train_docs": sizing.train_docs, "max_epochs": sizing.max_epochs,
                                                 "batch_size": args.batch_size},
                                      "min_drop": base.study.lr_finder.min_drop,
                                      "summary": summary, "runs": runs})


if __name__ == "__main__":
    main()
