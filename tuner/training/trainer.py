"""One training run with fixed hyperparameters: the Lightning trainer every run, trial and check builds."""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger

from tuner import hardware
from tuner.config.schema import StudyFile, TrainerConfig
from tuner.data.module import SentenceOrderingData
from tuner.errors import TunerError
from tuner.keys import METRICS, OBJECTIVE
from tuner.model.orderer import SentenceOrderer
from tuner.training import distributed

log = logging.getLogger(__name__)


def quiet_lightning() -> None:
    """Drop Lightning's advice that does not apply to this pipeline (workers, log steps, tips)."""
    for pattern in (
        r".*does not have many workers.*",
        r".*The number of training batches.*is smaller than the logging interval.*",
        r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


# trainer.val_check_interval = "auto": up to this many validations an epoch, at least this many batches apart
AUTO_VALIDATIONS_PER_EPOCH = 4
AUTO_BATCHES_BETWEEN_VALIDATIONS = 10


def validation_interval(setting: float | str, batches_per_epoch: int | None) -> float:
    """Lightning's ``val_check_interval`` for ``trainer.val_check_interval``: a number as it is; ``auto``
    validates :data:`AUTO_VALIDATIONS_PER_EPOCH` times an epoch where the epoch is long enough, so that a
    pruner judges a trial early and often (docs/studies.md#pruning), and once an epoch otherwise."""
    if setting != "auto":
        return float(setting)
    count = min(AUTO_VALIDATIONS_PER_EPOCH, (batches_per_epoch or 0) // AUTO_BATCHES_BETWEEN_VALIDATIONS)
    return 1.0 / count if count > 1 else 1.0


def build_trainer(
    config: TrainerConfig,
    root: Path,
    callbacks: Sequence[Callback] = (),
    logger: Logger | Sequence[Logger] | bool | None = None,
    progress: bool | None = None,
    max_epochs: int | None = None,
    batches_per_epoch: int | None = None,
) -> pl.Trainer:
    """A Lightning trainer writing under ``root``; ``progress=None`` shows a bar only on a terminal;
    ``batches_per_epoch`` (after ``limit_train_batches``) sizes ``val_check_interval = "auto"``."""
    quiet_lightning()
    if logger is None:
        logger = CSVLogger(str(root), name="logs", version="")
    return pl.Trainer(
        accelerator=config.accelerator,
        devices=config.devices,
        strategy=distributed.strategy(config),
        use_distributed_sampler=False,  # the data module shards its own batches (DocumentBatchSampler)
        precision=hardware.resolve_precision(config.precision, config.accelerator),  # type: ignore[arg-type]
        max_epochs=max_epochs or config.max_epochs,
        val_check_interval=validation_interval(config.val_check_interval, batches_per_epoch),
        limit_train_batches=config.limit_train_batches,
        limit_val_batches=config.limit_val_batches,
        gradient_clip_val=config.gradient_clip_val or None,
        accumulate_grad_batches=config.accumulate_grad_batches,
        log_every_n_steps=config.log_every_n_steps,
        callbacks=list(callbacks),
        logger=list(logger) if isinstance(logger, Sequence) else logger,
        default_root_dir=str(root),
        enable_progress_bar=sys.stderr.isatty() if progress is None else progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


class ValidationHistory(Callback):
    """Every validation's metrics, in order, with the epoch and global step it ran at."""

    def __init__(self) -> None:
        self.records: list[dict[str, float]] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
        self.records.append({"epoch": trainer.current_epoch, "step": trainer.global_step, **values})

    def state_dict(self) -> dict[str, Any]:
        # checkpointed, so a resumed run keeps the validations before it; also how the records leave
        # spawned DDP ranks (tuner.training.distributed)
        return {"records": list(self.records)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.records = list(state_dict["records"])

    def best(self, metric: str = OBJECTIVE) -> dict[str, float]:
        """The record with the highest ``metric`` (the first one on ties)."""
        scored = [r for r in self.records if metric in r]
        if not scored:
            raise TunerError(f"no validation logged {metric!r}; the model's validation_step must log it")
        return max(scored, key=lambda r: r[metric])


@dataclass(frozen=True)
class TrainResult:
    """What one run produced: metrics per split, the best checkpoint and the run's folder.

    ``validation`` holds the metrics of the validation with the best tau, the one whose weights
    ``best_checkpoint`` holds; ``test`` those of that checkpoint on the test split.
    """

    validation: dict[str, float]
    test: dict[str, float]
    best_checkpoint: str
    run_dir: str
    epochs: int
    wall_s: float
    data_fingerprint: str | None


def split_metrics(values: Mapping[str, Any], prefix: str) -> dict[str, float]:
    return {name: float(values[f"{prefix}_{name}"]) for name in METRICS if f"{prefix}_{name}" in values}


def train_batches(run: StudyFile, data: SentenceOrderingData) -> int:
    """The training batches of one epoch of ``run`` on its set-up ``data``, after ``limit_train_batches``."""
    batches = len(data.train_dataloader())
    limit = run.trainer.limit_train_batches
    return min(batches, int(limit)) if limit > 1 else max(1, int(batches * limit))


def train(run: StudyFile, output_dir: str | Path | None = None, progress: bool | None = None) -> TrainResult:
    """Train once with the study's settings, keep the best checkpoint by validation tau, test it."""
    pl.seed_everything(run.trainer.seed, workers=True, verbose=False)
    root = Path(output_dir or Path(run.trainer.output_dir) / run.name / time.strftime("%Y%m%d-%H%M%S"))
    root.mkdir(parents=True, exist_ok=True)
    data = SentenceOrderingData(run.data, run.model.backbone.name)
    data.setup("fit")
    model = SentenceOrderer.from_config(run.model)
    model.run_settings = {"study": run.name, "trainer": asdict(run.trainer)}
    checkpoint = ModelCheckpoint(
        dirpath=str(root / "checkpoints"), filename="best", monitor=OBJECTIVE, mode="max", save_top_k=1
    )
    history = ValidationHistory()
    callbacks: list[Callback] = [checkpoint, history]
    if run.trainer.early_stopping_patience:
        callbacks.append(EarlyStopping(OBJECTIVE, mode="max", patience=run.trainer.early_stopping_patience))
    trainer = build_trainer(run.trainer, root, callbacks, progress=progress, batches_per_epoch=train_batches(run, data))
    started = time.perf_counter()
    trainer.fit(model, datamodule=data)
    wall = time.perf_counter() - started
    best = checkpoint.best_model_path
    if not best:
        raise TunerError(f"training produced no checkpoint in {root}: no validation ran (check trainer settings)")
    validation = split_metrics(history.best(), "val")
    test: dict[str, float] = {}
    if data.datasets.get("test"):
        best_model = SentenceOrderer.load_from_checkpoint(best, map_location="cpu")
        tester = build_trainer(run.trainer, root, logger=False, progress=progress)
        test = split_metrics(tester.test(best_model, datamodule=data, verbose=False)[0], "test")
    return TrainResult(validation, test, best, str(root), trainer.current_epoch, wall, data.fingerprint)
