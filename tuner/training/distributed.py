"""Several devices inside one trial: DDP ranks that the trial's own process spawns and waits for.

A study file asks for this with ``[trainer] devices = N`` (N > 1) and ``strategy = "ddp"`` (or
``"auto"``). The trial's process (a ``tuner run`` worker) samples the trial's settings, builds the model
and data, and calls ``fit``; the trainer then spawns N fresh processes, one rank per device, sends them
the model and data module by pickle, and waits for them. Only the trial's process talks to Optuna:

- Sampling happens once, before the ranks exist, so every rank trains the same settings and the same
  initial weights. Each rank's fingerprint of both is recorded on the trial (user attribute
  ``ddp_ranks``) as evidence.
- At each validation, rank 0 sends the value to the trial's process over a pipe; that process reports
  it to the trial and asks the pruner, and rank 0 broadcasts the answer. A pruned trial stops every rank
  together (``trainer.should_stop``), and ``fit`` raises ``optuna.TrialPruned`` in the trial's process once
  the ranks have exited. The user never calls ``check_pruned()``.
- What the callbacks recorded on rank 0 (validation history, best checkpoint, epochs) comes back to the
  trial's process through the callbacks' ``state_dict``, as it would through a checkpoint, so the
  objective reads its callbacks after ``fit`` as it does on one device. An exception on a rank comes back
  as itself (a ``TrialFailed`` stays one), with the rank's traceback chained.

Why not Lightning's default ``ddp``: its launcher re-runs the command line (``sys.argv``) once per extra
rank, so every rank of ``tuner run`` would open the study and ask for a trial of its own, sampling its own
settings (optuna-integration issue #59), and a library call or a test would re-run its whole program.
optuna-integration's answer, ``TorchDistributedTrial``, keeps that re-run and makes every Optuna call a
collective, which every caller then has to get right. Spawning keeps one process per trial, whatever
started it. ``spawn`` rather than ``fork``: the trial's process may already hold a CUDA context (the LR
finder runs there) and has threads (database heartbeat, this module's pipe), and neither survives a fork.

The price of spawning: each rank imports torch and the model's libraries afresh (seconds per trial),
and the model and data module must pickle. The ranks run on this machine; a trial never spans machines.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
import torch.multiprocessing as mp
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.fabric.plugins.environments.lightning import find_free_network_port
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import Strategy
from typing_extensions import override

from tuner._compat.lightning import DDPStrategyHooks, SpawnLauncherHooks
from tuner.config.schema import TrainerConfig
from tuner.errors import TunerError
from tuner.keys import RANKS_ATTR

if TYPE_CHECKING:
    import optuna
log = logging.getLogger(__name__)


def strategy(config: TrainerConfig) -> str | Strategy:
    """The Lightning strategy for ``[trainer]``: Lightning's choice on one device, spawned DDP on several."""
    if config.devices == 1:
        return "auto"
    return SpawnedDDPStrategy()


def one_device(config: TrainerConfig) -> TrainerConfig:
    """``config`` on one device, for work whose results must stay in this process (the LR finder)."""
    return replace(config, devices=1, strategy="auto")


class SpawnedDDPStrategy(DDPStrategyHooks):
    """DDP whose ranks this process spawns, with a line from rank 0 back to this process.

    Rank 0's callback states, the trainer's epoch count and every rank's fingerprint come back when the
    ranks exit (see :class:`_SpawnLauncher`).
    """

    def __init__(self) -> None:
        # find_unused_parameters: some backbones carry parts the head never reads (BERT's pooler), whose
        # gradients DDP would otherwise wait for
        super().__init__(cluster_environment=_LocalRanks(), start_method="spawn", find_unused_parameters=True)
        self._channel = _Channel()
        self._fingerprint: dict[str, Any] = {}
        self.ranks: list[dict[str, Any]] = []

    @override
    def make_launcher(self) -> _SpawnLauncher:
        return _SpawnLauncher(self)

    @override
    def setup(self, trainer: pl.Trainer) -> None:
        # before DDP wraps the module, which copies rank 0's weights to every rank
        self._fingerprint = fingerprint(trainer)
        super().setup(trainer)

    def ask(self, question: Any) -> Any:
        """On every rank: rank 0 asks this strategy's launching process, and every rank gets the answer."""
        answer = self._channel.ask(question) if self.global_rank == 0 else None
        return self.broadcast(answer)

    def answering(self, handler: Callable[[Any], Any]) -> Any:
        """In the launching process, around ``fit``: answer rank 0's questions with ``handler``."""
        return self._channel.answering(handler)

    def gather_ranks(self, trainer: pl.Trainer) -> list[dict[str, Any]]:
        """On every rank, after ``fit``: each rank's fingerprint and where it stopped, in rank order."""
        mine = {**self._fingerprint, "global_step": trainer.global_step, "epochs": trainer.current_epoch}
        gathered: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, mine)
        return gathered


def report(trainer: pl.Trainer, trial: optuna.Trial | None, value: float, step: int, reason: str) -> None:
    """Report a validation value to the trial and prune if the pruner says so.

    In one process, pruning raises ``optuna.TrialPruned`` at once. Under :class:`SpawnedDDPStrategy`
    every rank calls this (``trial`` is ``None`` there: ranks never touch the study); rank 0 asks the
    trial's process, and every rank stops at the end of this step. :func:`fit` raises ``TrialPruned``.
    """
    import optuna  # here, not at the top: `tuner train` (one run, no study) imports this module too

    if isinstance(trainer.strategy, SpawnedDDPStrategy):
        if trainer.strategy.ask((value, step, reason)):
            trainer.should_stop = True
        return
    assert trial is not None
    if _Judge(trial)((value, step, reason)):
        raise optuna.TrialPruned(reason)


def fit(trainer: pl.Trainer, model: pl.LightningModule, datamodule: pl.LightningDataModule,
        trial: optuna.Trial, ckpt_path: str | None = None) -> None:
    """``trainer.fit`` for a trial, on one device or several.

    Under :class:`SpawnedDDPStrategy`, rank 0's reports reach ``trial`` while the ranks run, every
    rank's fingerprint is recorded as the user attribute ``ddp_ranks``, and a pruned trial raises
    ``optuna.TrialPruned`` here once the ranks have stopped.
    """
    import optuna

    strategy = trainer.strategy
    if not isinstance(strategy, SpawnedDDPStrategy):
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        return
    judge = _Judge(trial)
    try:
        with strategy.answering(judge):
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    finally:
        if strategy.ranks:
            trial.set_user_attr(RANKS_ATTR, strategy.ranks)
    if judge.pruned is not None:
        raise optuna.TrialPruned(judge.pruned)


def fingerprint(trainer: pl.Trainer) -> dict[str, Any]:
    """What this rank is about to train: its settings and initial weights, hashed, and a few in clear."""
    module = trainer.lightning_module
    data = trainer.datamodule  # type: ignore[attr-defined]  # set by the trainer, not declared
    settings = {"model": dict(module.hparams), "data": dict(data.hparams) if data is not None else {}}
    weights = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        weights.update(name.encode())
        weights.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    backbone = settings["model"].get("backbone")
    return {
        "rank": trainer.global_rank,
        "pid": os.getpid(),
        "learning_rate": settings["model"].get("learning_rate"),
        "backbone": backbone.get("name") if isinstance(backbone, dict) else backbone,
        "batch_size": settings["data"].get("data", {}).get("batch_size"),
        "settings": hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16],
        "weights": weights.hexdigest()[:16],
    }


class _Judge:
    """The trial's side of the line: report rank 0's value and ask the pruner."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.pruned: str | None = None

    def __call__(self, question: tuple[float, int, str]) -> bool:
        value, step, reason = question
        self.trial.report(value, step=step)
        if self.trial.should_prune():
            self.pruned = reason
            return True
        return False


class _Channel:
    """Questions from rank 0 to the launching process and its answers: pipes the spawned ranks inherit."""

    def __init__(self) -> None:
        context = mp.get_context("spawn")
        self._questions = context.SimpleQueue()
        self._answers = context.SimpleQueue()

    def ask(self, question: Any) -> Any:
        self._questions.put(("ask", question))
        ok, answer = self._answers.get()
        if not ok:
            raise TunerError(f"the trial's process could not answer rank 0: {answer}")
        return answer

    @contextmanager
    def answering(self, handler: Callable[[Any], Any]) -> Iterator[None]:
        def serve() -> None:
            while (message := self._questions.get())[0] == "ask":
                try:
                    self._answers.put((True, handler(message[1])))
                except Exception as err:  # noqa: BLE001 - rank 0 raises it, and the trial fails with it
                    log.exception("answering rank 0 failed")
                    self._answers.put((False, f"{type(err).__name__}: {err}"))

        thread = threading.Thread(target=serve, name="tuner-rank0-answers", daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._questions.put(("stop", None))
            thread.join()


class _LocalRanks(LightningEnvironment):
    """Ranks on this machine on a free port of their own.

    Never a cluster's: a ``tuner run`` worker started by Slurm or torchrun sees ``LOCAL_RANK``,
    ``NODE_RANK`` or ``MASTER_PORT`` meant for something else, and two workers on one machine must not
    share a port.
    """

    def __init__(self) -> None:
        super().__init__()
        self._port: int | None = None

    @property
    @override
    def creates_processes_externally(self) -> bool:
        return False

    @property
    @override
    def main_address(self) -> str:
        return "127.0.0.1"

    @property
    @override
    def main_port(self) -> int:
        if self._port is None:
            self._port = find_free_network_port()
        return self._port

    @override
    def node_rank(self) -> int:
        return 0


class _SpawnLauncher(SpawnLauncherHooks):
    """Lightning's spawn launcher, bringing back more than the best checkpoint path and callback metrics.

    Rank 0's callback states, the epoch count and every rank's fingerprint come back in the extra
    results; an exception raised on a rank is re-raised here as itself. A rank that finished destroys
    its process group before it exits.
    """

    def __init__(self, strategy: SpawnedDDPStrategy) -> None:
        super().__init__(strategy, start_method="spawn")
        self._spawned = strategy
        self._errors = mp.get_context("spawn").SimpleQueue()
        self._ranks: list[dict[str, Any]] = []

    @override
    def launch(self, function: Callable, *args: Any, trainer: pl.Trainer | None = None, **kwargs: Any) -> Any:
        try:
            return super().launch(function, *args, trainer=trainer, **kwargs)
        except mp.ProcessRaisedException as failed:
            if self._errors.empty():
                raise
            raise pickle.loads(self._errors.get()) from failed

    @override
    def run_rank(self, process_idx: int, *args: Any, **kwargs: Any) -> None:
        try:
            super().run_rank(process_idx, *args, **kwargs)
        except Exception as err:
            try:
                self._errors.put(pickle.dumps(err))
            except Exception:  # noqa: BLE001 - an exception that does not pickle comes back as its traceback
                log.debug("rank %d: %s does not pickle", process_idx, type(err).__name__)
            raise
        # Past the last collective (gather_ranks). Lightning destroys only NCCL groups, so a gloo group
        # would live until the interpreter's exit, while its worker threads may still be releasing the
        # last collectives' tensors, which takes the GIL: Python 3.11 ends a thread that does so during
        # finalization with pthread_exit, which aborts the rank (SIGABRT, "terminate called without an
        # active exception"; pytorch/pytorch#190489) and fails a finished trial. Lightning's teardown has
        # dropped the DDP wrapper, so destroying the group frees it and joins those threads here.
        # Not on an error: a group with a collective still waiting for a peer would wait out its timeout.
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    @override
    def collect_rank_zero_results(self, trainer: pl.Trainer, results: Any) -> Any:
        self._ranks = self._spawned.gather_ranks(trainer)  # a collective: every rank takes part
        return super().collect_rank_zero_results(trainer, results)

    @override
    def get_extra_results(self, trainer: pl.Trainer) -> dict[str, Any]:
        extra = super().get_extra_results(trainer)
        state = {
            "callbacks": {cb.state_key: cb.state_dict() for cb in _callbacks(trainer)},
            "epoch_progress": trainer.fit_loop.epoch_progress.state_dict(),
            "ranks": self._ranks,
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)  # as bytes, like the callback metrics: no tensor memory shared across processes
        extra["tuner_state"] = buffer.getvalue()
        return extra

    @override
    def update_main_process_results(self, trainer: pl.Trainer, extra: dict[str, Any]) -> None:
        super().update_main_process_results(trainer, extra)
        state = torch.load(io.BytesIO(extra["tuner_state"]), weights_only=True)
        for callback in _callbacks(trainer):
            if state["callbacks"].get(callback.state_key):
                callback.load_state_dict(state["callbacks"][callback.state_key])
        trainer.fit_loop.epoch_progress.load_state_dict(state["epoch_progress"])
        self._spawned.ranks = state["ranks"]


def _callbacks(trainer: pl.Trainer) -> list[Callback]:
    return trainer.callbacks  # type: ignore[attr-defined]  # set by the trainer, not declared
