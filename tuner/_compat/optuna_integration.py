"""optuna-integration's private names that tuner uses (see :mod:`tuner._compat`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from optuna_integration import PyTorchLightningPruningCallback


def pruning_trial(callback: PyTorchLightningPruningCallback) -> optuna.Trial:
    """The trial that optuna-integration's Lightning pruning callback reports to: it keeps it private."""
    trial: optuna.Trial = callback._trial
    return trial


def state_without_trial(callback: PyTorchLightningPruningCallback) -> dict[str, Any]:
    """The callback's state to pickle for a spawned DDP rank, without its trial (a rank never touches the
    study; see tuner.training.distributed)."""
    return {**callback.__dict__, "_trial": None}
