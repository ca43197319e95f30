"""A learning-curve table of a study's search space: every configuration trained once per seed, its validations
recorded with their cost, so that search policies can be replayed against it (``bench/replay.py``).

    python -m bench.lc_table --study studies/nips.toml [--set KEY=VALUE ...] [--train-docs N] [--val-docs N]
                             [--test-docs N] [--lr-values 12] [--seeds 2] [--epochs E] [--evals-per-epoch 4]
                             [--finder-seeds 3] [--output PATH] [--max-hours H]
    make bench-table          # the NIPS and ROCStories tables

The grid is the study's ``[search]``: every backbone, every batch size, and ``--lr-values`` learning rates
log-spaced over ``search.learning_rate`` (both ends included), each trained with ``--seeds`` training seeds for
``--epochs`` epochs (the largest of ``search.max_epochs``, else ``trainer.max_epochs``), with the study's own
model and trainer settings (loss, pooling, warm-up and decay, gradient clipping, precision). The linear decay
runs over the whole training, so a curve cut at a step is what a trial pruned there would have trained; a
trial with fewer epochs would have decayed sooner, which the table does not hold.

Each configuration validates ``--evals-per-epoch`` times an epoch. Every validation records validation tau,
PMR, accuracy and loss, the test split's metrics on the same weights (so that a replayed search's chosen
configuration has a test figure at the point where its trial stopped), the optimiser steps and training tokens
so far, and the CPU seconds (``time.process_time()``, every thread) spent training and validating so far;
test evaluation is timed apart and never charged. The training loss of every step is kept, so a policy that
stops on divergence can be replayed. Also measured: ``--finder-seeds`` LR-finder curves per (backbone, batch
size), one per data-order seed from ``trainer.seed`` on, each with its suggestion, verdict and cost (a list
per configuration; a replayed search draws one by its seed); and each fixed cost once (importing the stack,
loading each backbone, tokenising the data with and without tuner's cache).

The results file is written after every configuration and a stopped run resumes where it stopped; each
sitting records its machine, and each configuration names the sitting it ran in. Only curves are written,
never weights.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench._common import RESULTS, ROOT, machine

ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
for _key, _value in ENV.items():
    os.environ.setdefault(_key, _value)

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402

from tuner import hardware  # noqa: E402
from tuner.config.schema import StudyFile  # noqa: E402
from tuner.data.batching import Collate, DocumentBatchSampler  # noqa: E402
from tuner.data.encoding import encode_cached, encode_documents  # noqa: E402
from tuner.data.module import SentenceOrderingData  # noqa: E402
from tuner.data.readers import load_documents  # noqa: E402
from tuner.errors import TunerError  # noqa: E402
from tuner.hpo.lr_finder import run_finder  # noqa: E402
from tuner.model.orderer import SentenceOrderer  # noqa: E402
from tuner.study.open import load_study_file  # noqa: E402
from tuner.training.trainer import build_trainer, quiet_lightning  # noqa: E402

EVAL_BATCH = 32
SPLITS = ("validation", "test")


def log_grid(low: float, high: float, count: int) -> list[float]:
    """``count`` learning rates log-spaced over ``[low, high]``, both ends included, to 4 significant digits."""
    if count == 1:
        return [low]
    step = (math.log(high) - math.log(low)) / (count - 1)
    return [float(f"{math.exp(math.log(low) + i * step):.4g}") for i in range(count)]


def grid(run: StudyFile, lr_values: int, seeds: int) -> list[dict[str, Any]]:
    """Every configuration of the study's search space, seed by seed (a partial table has whole seeds first)."""
    backbones = run.search.backbone or (run.model.backbone,)
    batch_sizes = run.search.batch_size or (run.data.batch_size,)
    rates = log_grid(*run.search.learning_rate, lr_values)
    return [{"key": config_key(b.label, size, lr, seed), "backbone": b.label, "batch_size": size,
             "learning_rate": lr, "seed": seed}
            for seed in range(seeds) for b in backbones for size in batch_sizes for lr in rates]


def config_key(backbone: str, batch_size: int, learning_rate: float, seed: int) -> str:
    return f"{backbone}|{batch_size}|{learning_rate:.4g}|{seed}"


class SubsetData(SentenceOrderingData):
    """The study's data, each split cut to its first N documents; validation and test evaluated together."""

    def __init__(self, run: StudyFile, backbone_name: str, sizes: dict[str, int | None],
                 splits: tuple[str, ...] = SPLITS) -> None:
        super().__init__(run.data, backbone_name)
        self.sizes = sizes
        self.splits = splits

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        for name, documents in load_documents(self.config).items():
            kept = documents[: self.sizes.get(name)]
            encoded = encode_cached(kept, self.tokenizer, self.max_length,
                                    Path(self.config.cache_dir) if self.config.cache_dir else None)
            self.datasets[name] = self.make_dataset(encoded, name)

    def _eval_loader(self, split: str) -> torch.utils.data.DataLoader:
        dataset = self.datasets[split]
        sampler = DocumentBatchSampler(dataset.lengths, EVAL_BATCH, shuffle=False, bucket=True, seed=self.config.seed)
        return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=Collate(self.pad_id))

    def val_dataloader(self) -> list[torch.utils.data.DataLoader]:  # type: ignore[override]
        return [self._eval_loader(split) for split in self.splits]


class TableOrderer(SentenceOrderer):
    """tuner's model, validating on the validation and the test split at each validation."""

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "val")


class CurveRecorder(pl.Callback):
    """Each validation's metrics on both splits, with the steps, tokens and CPU seconds spent so far."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.train_loss: list[float] = []
        self.tokens = 0
        self.train_cpu = 0.0
        self.eval_cpu = {split: 0.0 for split in SPLITS}
        self.diverged_at: int | None = None
        self._mark = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._mark = time.process_time()
        self.tokens += int(batch["attention_mask"].sum())

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.train_cpu += time.process_time() - self._mark
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        value = float(loss)
        self.train_loss.append(round(value, 5) if math.isfinite(value) else value)
        if not math.isfinite(value) and self.diverged_at is None:
            self.diverged_at = trainer.global_step
            trainer.should_stop = True  # the weights are gone: later validations say nothing

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        self._mark = time.process_time()

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self.eval_cpu[SPLITS[dataloader_idx]] += time.process_time() - self._mark

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        record: dict[str, Any] = {"step": trainer.global_step, "epoch": trainer.current_epoch,
                                  "tokens": self.tokens, "train_cpu_s": round(self.train_cpu, 3),
                                  "val_cpu_s": round(self.eval_cpu["validation"], 3),
                                  "test_cpu_s": round(self.eval_cpu["test"], 3)}
        for index, split in enumerate(SPLITS):
            prefix = "val" if split == "validation" else "test"
            for name in ("kendall_tau", "pmr", "acc", "loss"):
                value = metrics.get(f"val_{name}/dataloader_idx_{index}")
                record[f"{prefix}_{name}"] = round(value, 5) if value is not None else None
        self.records.append(record)


def train_config(run: StudyFile, config: dict[str, Any], sizes: dict[str, int | None], epochs: int,
                 evals_per_epoch: int, folder: Path) -> dict[str, Any]:
    """One configuration, trained for ``epochs`` epochs without pruning; its curve and costs."""
    backbone = next(b for b in (run.search.backbone or (run.model.backbone,)) if b.label == config["backbone"])
    model_config = replace(run.model, backbone=backbone, learning_rate=config["learning_rate"])
    data_config = replace(run.data, batch_size=config["batch_size"])
    trainer_config = replace(run.trainer, seed=config["seed"], max_epochs=epochs,
                             val_check_interval=1.0 / evals_per_epoch, limit_val_batches=1.0)
    pl.seed_everything(config["seed"], workers=True, verbose=False)
    data = SubsetData(replace(run, data=data_config), backbone.name, sizes)
    data.setup("fit")
    model = TableOrderer.from_config(model_config)
    recorder = CurveRecorder()
    trainer = build_trainer(trainer_config, folder, [recorder], logger=False, progress=False)
    # Lightning's default checkpoint would write the weights every epoch: the table keeps curves only
    trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)]
    started_wall, started_cpu = time.perf_counter(), time.process_time()
    trainer.fit(model, datamodule=data)
    return {**config, "epochs": epochs, "steps_per_epoch": len(data.train_dataloader()),
            "curve": recorder.records, "train_loss": recorder.train_loss, "diverged_at": recorder.diverged_at,
            "fit_cpu_s": round(time.process_time() - started_cpu, 3),
            "fit_wall_s": round(time.perf_counter() - started_wall, 3)}


def finder_curve(run: StudyFile, backbone_label: str, batch_size: int, sizes: dict[str, int | None],
                 folder: Path, seed: int) -> dict[str, Any]:
    """The study's LR finder on the table's data for one (backbone, batch size) under ``seed``, with its CPU
    cost."""
    backbone = next(b for b in (run.search.backbone or (run.model.backbone,)) if b.label == backbone_label)
    trial_run = replace(run, model=replace(run.model, backbone=backbone),
                        data=replace(run.data, batch_size=batch_size))
    pl.seed_everything(seed, workers=True, verbose=False)
    data = SubsetData(trial_run, backbone.name, sizes, splits=("validation",))  # as a trial's finder validates
    data.setup("fit")
    started = time.process_time()
    found = run_finder(trial_run, TableOrderer.from_config(trial_run.model), data, folder)
    return {"backbone": backbone_label, "batch_size": batch_size, "seed": seed,
            "cpu_s": round(time.process_time() - started, 3),
            **{k: found[k] for k in ("suggestion", "reliable", "reason", "lr", "loss", "num_training")}}


def fixed_costs(run: StudyFile, sizes: dict[str, int | None], folder: Path) -> dict[str, Any]:
    """What every trial or system pays besides training: importing the stack (a fresh process), loading each
    backbone, and tokenising the table's data afresh and from tuner's cache. CPU seconds."""
    code = "import time; import lightning, optuna, torch, transformers; print(time.process_time())"
    imports = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                   env={**os.environ, **ENV}).stdout)
    found: dict[str, Any] = {"import_cpu_s": round(imports, 3), "backbones": {}}
    documents = {name: docs[: sizes.get(name)] for name, docs in load_documents(run.data).items()}
    for backbone in run.search.backbone or (run.model.backbone,):
        started = time.process_time()
        SentenceOrderer.from_config(replace(run.model, backbone=backbone))
        load = time.process_time() - started
        tokenizer = SentenceOrderingData(run.data, backbone.name)
        cache = folder / "cache" / backbone.label.replace("/", "_")
        started = time.process_time()
        for docs in documents.values():
            encode_documents(docs, tokenizer.tokenizer, tokenizer.max_length)
        fresh = time.process_time() - started
        for docs in documents.values():
            encode_cached(docs, tokenizer.tokenizer, tokenizer.max_length, cache)  # fills the cache
        started = time.process_time()
        for docs in documents.values():
            encode_cached(docs, tokenizer.tokenizer, tokenizer.max_length, cache)
        cached = time.process_time() - started
        found["backbones"][backbone.label] = {"load_cpu_s": round(load, 3), "tokenize_cpu_s": round(fresh, 3),
                                              "tokenize_cached_cpu_s": round(cached, 3)}
    return found


def _write(path: Path, table: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    os.replace(temporary, path)  # a run stopped mid-write keeps the last whole table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", required=True, help="a study file (or a name under studies/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--train-docs", type=int, default=None, help="first N training documents (default: all)")
    parser.add_argument("--val-docs", type=int, default=None)
    parser.add_argument("--test-docs", type=int, default=None)
    parser.add_argument("--lr-values", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--evals-per-epoch", type=int, default=4)
    parser.add_argument("--finder-seeds", type=int, default=3, help="LR-finder curves per (backbone, batch size)")
    parser.add_argument("--output", type=Path, default=None, help="default: bench/results/lc_table_<study>.json")
    parser.add_argument("--max-hours", type=float, default=None, help="stop starting configurations after this")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: runs/lc_table/<table>)")
    args = parser.parse_args(argv)

    quiet_lightning()
    threads = hardware.set_threads()
    try:
        run = load_study_file(args.study, args.overrides)
    except TunerError as err:
        sys.exit(f"lc_table: error: {err}")
    epochs = args.epochs or max(run.search.max_epochs or (run.trainer.max_epochs,))
    sizes = {"train": args.train_docs, "validation": args.val_docs, "test": args.test_docs}
    output = args.output or RESULTS / f"lc_table_{Path(run.name).stem}.json"
    settings = {"study": run.name, "overrides": args.overrides, "sizes": sizes, "epochs": epochs,
                "evals_per_epoch": args.evals_per_epoch, "lr_values": args.lr_values, "seeds": args.seeds,
                "learning_rate_range": list(run.search.learning_rate), "eval_batch": EVAL_BATCH}
    table: dict[str, Any] = json.loads(output.read_text()) if output.is_file() else {}
    if table and table.get("settings") != settings:
        sys.exit(f"{output} was built with other settings ({table.get('settings')}); pass --output for a new table")
    table.setdefault("settings", settings)
    table.setdefault("configs", {})
    table.setdefault("finder", {})
    for key, found in table["finder"].items():  # a table from before finder seeds: its one curve, at trainer.seed
        if isinstance(found, dict):
            table["finder"][key] = [{**found, "seed": run.trainer.seed}]
    sittings = table.setdefault("sittings", [])
    sitting = len(sittings)
    sittings.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(run.trainer.precision),
                     "torch_threads": threads})
    work = args.work or ROOT / "runs" / "lc_table" / Path(output).stem
    work.mkdir(parents=True, exist_ok=True)
    if "fixed_costs" not in table:
        table["fixed_costs"] = {**fixed_costs(run, sizes, work), "sitting": sitting}
        _write(output, table)
    configs = grid(run, args.lr_values, args.seeds)
    documents = {name: len(docs[: sizes.get(name)]) for name, docs in load_documents(run.data).items()}
    table["documents"] = documents
    _write(output, table)
    deadline = time.monotonic() + args.max_hours * 3600 if args.max_hours is not None else math.inf
    pairs = sorted({(c["backbone"], c["batch_size"]) for c in configs}, key=lambda p: (str(p[0]), p[1]))
    for backbone, batch_size in pairs:
        key = f"{backbone}|{batch_size}"
        while len(table["finder"].get(key, [])) < args.finder_seeds and time.monotonic() < deadline:
            curves = table["finder"].setdefault(key, [])
            seed = run.trainer.seed + len(curves)
            curves.append({**finder_curve(run, backbone, batch_size, sizes, work / "finder", seed),
                           "sitting": sitting})
            _write(output, table)
            print(f"finder {backbone}|{batch_size} seed {seed}: suggestion {curves[-1]['suggestion']} "
                  f"({curves[-1]['reason']}), {curves[-1]['cpu_s']:.0f} CPU s", flush=True)
    missing = [c for c in configs if c["key"] not in table["configs"]]
    print(f"{len(configs) - len(missing)}/{len(configs)} configurations done; {documents} documents", flush=True)
    for number, config in enumerate(missing, 1):
        if time.monotonic() >= deadline:
            print("--max-hours reached; run the same command again to go on")
            break
        result = train_config(run, config, sizes, epochs, args.evals_per_epoch, work / "fit")
        table["configs"][config["key"]] = {**result, "sitting": sitting}
        _write(output, table)
        best = max((r["val_kendall_tau"] for r in result["curve"] if r["val_kendall_tau"] is not None), default=None)
        print(f"[{number}/{len(missing)}] {config['key']}: best val tau {best}, {result['fit_cpu_s']:.0f} CPU s, "
              f"{result['fit_wall_s']:.0f} s", flush=True)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
