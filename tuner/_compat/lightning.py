"""Lightning's private names that tuner uses (see :mod:`tuner._compat`)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.launcher import _Launcher
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher


def validation_follows(trainer: pl.Trainer) -> bool:
    """Whether Lightning validates right after the training batch that just ended: its epoch loop decides
    that privately (``_should_check_val_fx``), from the loop's data fetcher."""
    loop = trainer.fit_loop
    return loop._data_fetcher is not None and bool(loop.epoch_loop._should_check_val_fx(loop._data_fetcher))


def attached_trainer(module: pl.LightningModule) -> pl.Trainer | None:
    """The trainer ``module`` is attached to, or ``None``: Lightning's ``module.trainer`` raises without one."""
    return module._trainer


class SpawnLauncherHooks(_MultiProcessingLauncher):
    """Lightning's spawning launcher (private), with the steps a subclass extends given names of tuner's own:
    :meth:`run_rank` (``_wrapping_function``, which runs in each spawned rank) and
    :meth:`collect_rank_zero_results` (``_collect_rank_zero_results``, in each rank after ``fit``)."""

    def _wrapping_function(self, process_idx: int, *args: Any, **kwargs: Any) -> None:
        self.run_rank(process_idx, *args, **kwargs)

    def run_rank(self, process_idx: int, *args: Any, **kwargs: Any) -> None:
        _MultiProcessingLauncher._wrapping_function(self, process_idx, *args, **kwargs)

    def _collect_rank_zero_results(self, trainer: pl.Trainer, results: Any) -> Any:
        return self.collect_rank_zero_results(trainer, results)

    def collect_rank_zero_results(self, trainer: pl.Trainer, results: Any) -> Any:
        return _MultiProcessingLauncher._collect_rank_zero_results(self, trainer, results)


class DDPStrategyHooks(DDPStrategy):
    """Lightning's DDP strategy, whose launcher a subclass makes (:meth:`make_launcher`): Lightning builds it
    in a private hook (``_configure_launcher``) and keeps it in a private attribute."""

    def _configure_launcher(self) -> None:
        self._launcher = self.make_launcher()

    def make_launcher(self) -> _Launcher:
        DDPStrategy._configure_launcher(self)
        assert self._launcher is not None
        return self._launcher
