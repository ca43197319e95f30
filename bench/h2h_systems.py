"""One cell of the head-to-head benchmark, in a process of its own: one system's search, or a test evaluation.

    python -m bench.h2h_systems SPEC.json

Started by ``bench/head_to_head.py``, never by hand. ``SPEC.json`` names the system, the seed, the data
files, the search space and the CPU-time budget. The search's clock is this process's CPU time
(``time.process_time()``: every thread, the trainer's and the tokenizer's), started after the imports,
so every system pays for its own data loading, tokenisation, LR finder and checkpoints, and none for
importing torch. A watchdog thread ends the process the moment the budget is spent, wherever the
search is: what was measured after the budget would not count anyway.

Every system is observed the same way: at the end of each validation (a Lightning callback; for the
Hugging Face ``Trainer`` a ``TrainerCallback.on_evaluate``) one line goes to ``events.jsonl`` with the
CPU seconds so far and the validation's tau and PMR, and the weights of the best validation so far go
to ``best.pt``, which the ``test`` mode then evaluates on the test split. For ``tuner`` the callback is
added to the callbacks its objective gives its trainer; nothing else of ``tuner`` is changed.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
import torch
from torch import nn

from tuner import hardware
from tuner.config.loader import data_config, parse_backbone
from tuner.config.schema import BackboneSpec, DataConfig, TrainerConfig
from tuner.data.batching import collate
from tuner.data.encoding import encode_documents
from tuner.data.module import SentenceOrderingData
from tuner.data.readers import load_documents
from tuner.model.metrics import ordering_metrics
from tuner.model.orderer import SentenceOrderer
from tuner.training.trainer import build_trainer, quiet_lightning, split_metrics

METRIC = "val_kendall_tau"


class EventLog:
    """The cell's validations as they happen (``events.jsonl``) and the best one's weights (``best.pt``).

    Args:
        folder: the cell's folder; a second search of the same cell (Hugging Face, another backbone)
            appends to the same files and keeps the best across both.
        offset: CPU seconds the cell had spent before this process started (the earlier searches).
    """

    def __init__(self, folder: Path, offset: float = 0.0) -> None:
        self.events = folder / "events.jsonl"
        self.weights = folder / "best.pt"
        self.offset = offset
        self.start = time.process_time()
        self.best = max((e["tau"] for e in read_events(self.events)), default=-math.inf)

    def cpu_s(self) -> float:
        return self.offset + time.process_time() - self.start

    def record(self, trial: str, tau: float, pmr: float, epoch: int, params: dict[str, Any], orderer: SentenceOrderer
               ) -> None:
        line = {"cpu_s": self.cpu_s(), "wall_time": time.time(), "trial": trial, "tau": tau, "pmr": pmr,
                "epoch": epoch, "params": params}
        if tau > self.best:
            self.best = tau
            temporary = self.weights.with_suffix(".tmp")
            torch.save({"backbone": orderer.spec.to_dict(), "state_dict": orderer.state_dict(), "tau": tau,
                        "trial": trial}, temporary)
            os.replace(temporary, self.weights)  # a process ended by the budget never leaves half a file
        with self.events.open("a") as out:
            out.write(json.dumps(line) + "\n")

    def end(self, reason: str) -> None:
        with self.events.open("a") as out:
            out.write(json.dumps({"end": reason, "cpu_s": self.cpu_s()}) + "\n")


def read_events(path: Path) -> list[dict[str, Any]]:
    """The validations in an ``events.jsonl`` (a last line cut short by the budget is skipped)."""
    if not path.is_file():
        return []
    found = []
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "tau" in event:
            found.append(event)
    return found


def start_watchdog(log: EventLog, budget_s: float) -> None:
    """End this process as soon as the search has used ``budget_s`` CPU seconds."""

    def watch() -> None:
        while log.cpu_s() < budget_s:
            time.sleep(0.2)
        log.end("budget")
        sys.stdout.flush()
        os._exit(0)

    threading.Thread(target=watch, name="budget", daemon=True).start()


class Observer(pl.Callback):
    """Records every validation of a Lightning fit in the cell's :class:`EventLog`."""

    def __init__(self, log: EventLog, trial: str) -> None:
        self.events = log  # not `log`: a Lightning callback's name for its own logging
        self.trial = trial

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or METRIC not in trainer.callback_metrics:
            return
        assert isinstance(pl_module, SentenceOrderer)
        datamodule = trainer.datamodule  # type: ignore[attr-defined]
        params = {"backbone": pl_module.spec.label, "batch_size": datamodule.config.batch_size,
                  "learning_rate": float(pl_module.learning_rate)}
        self.events.record(self.trial, float(trainer.callback_metrics[METRIC]),
                        float(trainer.callback_metrics.get("val_pmr", math.nan)), trainer.current_epoch, params,
                        pl_module)


def _data(spec: dict[str, Any], batch_size: int = 16) -> DataConfig:
    """The cell's ``[data]`` settings: its subset files, NIPS's separator, the tokenised-data cache in the cell."""
    return data_config({"train": spec["data"]["train"], "validation": spec["data"]["validation"],
                        "test": spec["data"]["test"], "separator": " <eos> ", "max_length": spec["max_length"],
                        "batch_size": batch_size, "cache_dir": str(Path(spec["folder"]) / "tokenized")})


def _backbones(spec: dict[str, Any]) -> list[BackboneSpec]:
    return [parse_backbone(b) for b in spec["backbones"]]


# --- tuner, with its defaults ------------------------------------------------------------------------------

def tuner_study(spec: dict[str, Any]) -> str:
    """The study file ``tuner`` gets: the shared task and search space; every other setting is its default
    (TPE, Hyperband, the study-wide LR finder in ``scale`` mode, the baseline trial, cached tokenisation)."""
    data = _data(spec)
    backbones = ", ".join(_toml_backbone(b) for b in _backbones(spec))
    low, high = spec["learning_rate"]
    return "\n".join([
        "[data]",
        f"train = {json.dumps(data.train)}", f"validation = {json.dumps(data.validation)}",
        f"test = {json.dumps(data.test)}", f"separator = {json.dumps(data.separator)}",
        f"max_length = {data.max_length}", f"cache_dir = {json.dumps(data.cache_dir)}",
        "[model]", f"backbone = {_toml_backbone(_backbones(spec)[0])}",
        "[trainer]", f"max_epochs = {spec['max_epochs']}", 'precision = "auto"', f"seed = {spec['training_seed']}",
        f"output_dir = {json.dumps(str(Path(spec['folder']) / 'runs'))}",
        "[study]", f"sampler = {{ type = \"tpe\", seed = {spec['sampler_seed']} }}",
        f"storage = {json.dumps('sqlite:///' + str(Path(spec['folder']) / 'tuner.db'))}",
        "[search]", f"learning_rate = [{low}, {high}]", f"batch_size = {json.dumps(spec['batch_sizes'])}",
        f"backbone = [{backbones}]", "",
    ])


def _toml_backbone(backbone: BackboneSpec) -> str:
    if not backbone.config:
        return json.dumps(backbone.name)
    config = ", ".join(f"{k} = {json.dumps(v)}" for k, v in sorted(backbone.config.items()))
    return f"{{ name = {json.dumps(backbone.name)}, config = {{ {config} }} }}"


def run_tuner(spec: dict[str, Any], log: EventLog) -> None:
    from tuner.hpo import objective
    from tuner.study.open import load_study_file
    from tuner.study.run import run_study

    study_file = Path(spec["folder"]) / "h2h.toml"
    study_file.write_text(tuner_study(spec))
    plain = objective.build_trainer

    def observed(config: TrainerConfig, root: Path, callbacks: Sequence[pl.Callback] = (), **kwargs: Any
                 ) -> pl.Trainer:
        trial = next(c._trial for c in callbacks if hasattr(c, "_trial"))
        # the observer first: a trial pruned at a validation has that validation recorded before the pruning
        # callback ends it
        return plain(config, root, [Observer(log, str(trial.number)), *callbacks], **kwargs)

    objective.build_trainer = observed  # type: ignore[assignment]
    run_study(load_study_file(str(study_file)), n_trials=100_000, progress=False)


# --- plain Optuna, as the optuna-examples Lightning example; and random search --------------------------------

class UncachedData(SentenceOrderingData):
    """tuner's data module, tokenising afresh in every trial, as a data module written for one run does."""

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        for name, documents in load_documents(self.config).items():
            self.datasets[name] = self.make_dataset(encode_documents(documents, self.tokenizer, self.max_length), name)


def lightning_objective(spec: dict[str, Any], log: EventLog) -> Callable[[optuna.Trial], float]:
    """The optuna-examples Lightning objective (``pytorch/pytorch_lightning_simple.py``) on this task: sample,
    build the module and data module, fit with ``PyTorchLightningPruningCallback`` on validation tau at each
    epoch's end, no checkpointing, return the last validation's tau. Gradients are clipped at 1.0, the recipe
    every system trains with."""
    from optuna_integration import PyTorchLightningPruningCallback

    choices = {b.label: b for b in _backbones(spec)}

    def objective(trial: optuna.Trial) -> float:
        backbone = choices[trial.suggest_categorical("backbone", list(choices))]
        batch_size = trial.suggest_categorical("batch_size", spec["batch_sizes"])
        learning_rate = trial.suggest_float("learning_rate", *spec["learning_rate"], log=True)
        pl.seed_everything((spec["training_seed"] + trial.number) % 2**31, verbose=False)
        model = SentenceOrderer(backbone=backbone.to_dict(), learning_rate=learning_rate)
        data = UncachedData(replace(_data(spec, batch_size), cache_dir=None), backbone.name)
        trainer = pl.Trainer(
            logger=True, enable_checkpointing=False, max_epochs=spec["max_epochs"], accelerator="auto", devices=1,
            precision=hardware.best_precision(),  # type: ignore[arg-type]
            default_root_dir=str(Path(spec["folder"]) / "lightning"), enable_progress_bar=False, gradient_clip_val=1.0,
            callbacks=[Observer(log, str(trial.number)), PyTorchLightningPruningCallback(trial, monitor=METRIC)],
        )
        trainer.fit(model, datamodule=data)
        return float(trainer.callback_metrics[METRIC].item())

    return objective


def run_optuna(spec: dict[str, Any], log: EventLog, sampler: optuna.samplers.BaseSampler,
               pruner: optuna.pruners.BasePruner, n_trials: int = 100_000) -> optuna.Study:
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    study.optimize(lightning_objective(spec, log), n_trials=n_trials)
    return study


# --- Hugging Face Trainer.hyperparameter_search ---------------------------------------------------------------

class HFOrderer(nn.Module):
    """tuner's SentenceOrderer as a ``transformers`` model: keyword inputs in, ``{"loss", "logits"}`` out.

    ``labels`` are the gold positions, -1 on padded sentence slots.
    """

    def __init__(self, orderer: SentenceOrderer) -> None:
        super().__init__()
        self.orderer = orderer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, markers: torch.Tensor,
                slots: torch.Tensor, sentence_mask: torch.Tensor, labels: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        scores = self.orderer(input_ids, attention_mask, markers, slots)
        out = {"logits": scores}
        if labels is not None:
            out["loss"] = self.orderer.loss_fn(scores, labels.clamp(min=0), sentence_mask)
        return out


class HFCollator:
    """tuner's collate, with the gold positions as ``labels`` (-1 where a document has no sentence)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = collate(items, self.pad_id)
        batch.pop("index")
        batch["labels"] = batch.pop("gold").masked_fill(~batch["sentence_mask"], -1)
        return batch


class EpochDataset(torch.utils.data.Dataset):
    """A training split that draws a fresh sentence order every epoch, as tuner's batch sampler asks for."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.dataset[(index, self.epoch)]  # type: ignore[no-any-return]


def hf_metrics(prediction: Any) -> dict[str, float]:
    """``compute_metrics``: tuner's ordering metrics over the evaluation set. The Trainer pads scores and
    labels across batches with -100, and the collator marks empty slots -1: both are masked out."""
    scores = torch.as_tensor(prediction.predictions, dtype=torch.float32)
    labels = torch.as_tensor(prediction.label_ids, dtype=torch.long)
    mask = labels >= 0
    return {name: float(values.mean()) for name, values in ordering_metrics(scores, labels.clamp(min=0), mask).items()}


def run_hf(spec: dict[str, Any], log: EventLog, n_trials: int = 100_000) -> Any:
    """One ``Trainer.hyperparameter_search`` over the learning rate, the batch size and, in ``model_init(trial)``,
    the backbone (every backbone of a search shares its tokenizer: the data set is tokenised once)."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    choices = {b.label: b for b in _backbones(spec)}
    first = next(iter(choices.values()))
    data = SentenceOrderingData(_data(spec), first.name)
    data.setup("fit")  # tokenised once before the search, as a datasets.map() before it would be
    train = EpochDataset(data.datasets["train"])
    precision = hardware.best_precision()

    class Observe(TrainerCallback):  # type: ignore[misc]
        trials = -1  # hyperparameter_search trains once per trial, in order

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.trials += 1

        def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            train.epoch = int(state.epoch or 0)

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                        model: Any = None, **kwargs: Any) -> None:
            if metrics and "eval_kendall_tau" in metrics:
                params = {"backbone": model.orderer.spec.label, "batch_size": args.per_device_train_batch_size,
                          "learning_rate": args.learning_rate}
                log.record(f"{spec['part']}:{self.trials}", metrics["eval_kendall_tau"],
                           metrics.get("eval_pmr", math.nan), round(state.epoch or 0), params, model.orderer)

    args = TrainingArguments(
        output_dir=str(Path(spec["folder"]) / "hf"), eval_strategy="epoch", num_train_epochs=spec["max_epochs"],
        per_device_eval_batch_size=16, weight_decay=0.01, warmup_steps=0.1, seed=spec["training_seed"],
        bf16=precision == "bf16-mixed", fp16=precision == "16-mixed", use_cpu=not torch.cuda.is_available(),
        train_sampling_strategy="group_by_length", remove_unused_columns=False, report_to="none",
        disable_tqdm=True,
    )
    def model_init(trial: optuna.Trial | None) -> HFOrderer:
        # the Trainer builds one model with no trial when it is made, then one per trial
        label = trial.suggest_categorical("backbone", list(choices)) if trial is not None else first.label
        return HFOrderer(SentenceOrderer(backbone=choices[label].to_dict()))

    trainer = Trainer(
        model_init=model_init, args=args,
        train_dataset=train, eval_dataset=data.datasets["validation"], data_collator=HFCollator(data.pad_id),
        compute_metrics=hf_metrics, callbacks=[Observe()],
    )

    def hp_space(trial: optuna.Trial) -> dict[str, Any]:
        return {"learning_rate": trial.suggest_float("learning_rate", *spec["learning_rate"], log=True),
                "per_device_train_batch_size": trial.suggest_categorical("per_device_train_batch_size",
                                                                         spec["batch_sizes"])}

    return trainer.hyperparameter_search(hp_space=hp_space, compute_objective=lambda m: m["eval_kendall_tau"],
                                         n_trials=n_trials, direction="maximize", backend="optuna",
                                         sampler=optuna.samplers.TPESampler(seed=spec["sampler_seed"]))


# --- the test split ------------------------------------------------------------------------------------------

def run_test(spec: dict[str, Any]) -> dict[str, Any]:
    """Test metrics of the cell's best weights (``best.pt``), as ``tuner evaluate`` computes them."""
    folder = Path(spec["folder"])
    weights = folder / "best.pt"
    if not weights.is_file():
        return {"error": "no validation finished within the budget: nothing to test"}
    stored = torch.load(weights, map_location="cpu", weights_only=False)
    model = SentenceOrderer(backbone=stored["backbone"], pretrained=False)
    model.load_state_dict(stored["state_dict"])
    model.eval()
    data = SentenceOrderingData(_data(spec), model.spec.name)
    data.setup("test")
    tester = build_trainer(TrainerConfig(), folder, logger=False, progress=False)
    values = tester.test(model, dataloaders=data.loader(data.datasets["test"]), verbose=False)[0]
    return {**split_metrics(values, "test"), "documents": len(data.datasets["test"]), "trial": stored["trial"],
            "val_kendall_tau": stored["tau"]}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_lightning()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    hardware.set_threads()  # every system: the machine's cores as intra-op threads, one inter-op thread
    folder = Path(spec["folder"])
    if spec["mode"] == "test":
        (folder / "test.json").write_text(json.dumps(run_test(spec), indent=2))
        return
    log = EventLog(folder, spec.get("offset", 0.0))
    start_watchdog(log, spec["budget_s"])
    system, seed = spec["system"], spec["sampler_seed"]
    if system == "tuner":
        run_tuner(spec, log)
    elif system == "optuna":
        run_optuna(spec, log, optuna.samplers.TPESampler(seed=seed), optuna.pruners.MedianPruner())
    elif system == "random":
        run_optuna(spec, log, optuna.samplers.RandomSampler(seed=seed), optuna.pruners.NopPruner())
    elif system == "hf":
        run_hf(spec, log)
    else:
        raise SystemExit(f"unknown system {system!r}")
    log.end("search finished")


if __name__ == "__main__":
    main()
