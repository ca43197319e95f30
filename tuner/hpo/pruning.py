"""Optuna's Lightning pruning callback, made to report what it saw and to fail loudly on a missing metric."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
import torch
from optuna_integration import PyTorchLightningPruningCallback

from tuner._compat.optuna_integration import pruning_trial, state_without_trial
from tuner.errors import TrialFailed
from tuner.training import distributed

log = logging.getLogger(__name__)


class ReportingPruningCallback(PyTorchLightningPruningCallback):
    """Optuna's Lightning pruning callback, reporting every validation at its own step.

    The stock callback reports with ``step = epoch`` (Optuna issue #2932), so several validations per
    epoch overwrite each other, and it only warns when the metric is missing. Here each validation
    is reported at the next step number (0, 1, 2, ...), and a missing metric is an error.
    """

    def __init__(self, trial: optuna.Trial, monitor: str) -> None:
        super().__init__(trial, monitor)
        self.reports = 0

    # the report count is checkpointed, so a resumed trial goes on reporting where it stopped
    def state_dict(self) -> dict[str, Any]:
        return {"reports": self.reports}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.reports = int(state_dict["reports"])

    @classmethod
    def reports_in(cls, checkpoint: Path) -> int:
        """How many validations the callback had reported when ``checkpoint`` was saved (none if it was absent)."""
        stored = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
        return int(stored.get("callbacks", {}).get(cls.__qualname__, {}).get("reports", 0))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        logged = trainer.callback_metrics.get(self.monitor)
        if logged is None:
            raise TrialFailed(f"metric {self.monitor!r} was not logged; logged: {sorted(trainer.callback_metrics)}")
        value = float(logged)
        if math.isnan(value):
            raise TrialFailed(f"{self.monitor} is NaN at epoch {trainer.current_epoch}")
        step, self.reports = self.reports, self.reports + 1
        distributed.report(trainer, pruning_trial(self), value, step,
                           f"pruned after validation {step} (epoch {trainer.current_epoch})")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Nothing: under DDP, :mod:`tuner.training.distributed` carries reports and decisions, not the base class's
        storage side channel (which needs a manual ``check_pruned()`` after ``fit``)."""

    def __getstate__(self) -> dict[str, Any]:
        # spawned DDP ranks never touch the trial: rank 0 asks the trial's own process
        return state_without_trial(self)
