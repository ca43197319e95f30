"""Stopping a run on SIGTERM or SIGINT: at once between steps, within seconds inside one.

:class:`StopSignals` is the process's handler (a worker's or a plain run's). :class:`StopOnSignal` is
the Lightning callback that ends the fit at a batch's end once a signal has come, and
:class:`StopMidStep` lets the signal reach the main thread inside a long forward or backward pass.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
import optuna
import torch
from lightning.pytorch.callbacks import Callback

from tuner._compat.lightning import validation_follows
from tuner.errors import ForceQuit, Interrupted, TrialAbandoned

log = logging.getLogger(__name__)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


# how long a signal lets a training step run on, so that it ends at the batch's end with a checkpoint,
# before the step is abandoned (see StopMidStep)
STOP_GRACE_S = 2.0


class StopSignals:
    """SIGTERM/SIGINT handling for one worker, as a context manager (main thread only).

    The first signal is recorded and raises :class:`Interrupted` at once, unless the worker is inside
    :meth:`deferred` code (training, where a callback stops at the next batch, or ending a trial and
    storing its outcome), which calls :meth:`check` when it can stop. A second signal raises
    :class:`ForceQuit` at once, deferred or not: the way out when the clean end hangs (a step that never
    ends, a database outage the storage waits out). The worker then stores nothing more, and its trial is
    left RUNNING: its heartbeat stops, and the stale check fails it and queues its retry.

    Python runs a signal handler only between bytecodes of the main thread: while the main thread is
    in one long call into C (a backward pass is one), the handler waits for it to return.

    :meth:`abandon` stops the running trial the same way, from any thread, with :class:`TrialAbandoned`.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.received_at: float | None = None  # time.monotonic() when the signal arrived
        self.abandoned = False  # the running trial was ended elsewhere: see abandon()
        self.forced = False  # a second signal came: see ForceQuit
        self.progressed_at = time.monotonic()  # the last forward pass (see progress())
        self._deferred = 0
        self._previous: dict[int, Any] = {}
        self._wake = threading.Event()
        self._previous_hook: Any = None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
            self._previous_hook = sys.unraisablehook
            sys.unraisablehook = self._unraisable
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        if self._previous_hook is not None:
            sys.unraisablehook, self._previous_hook = self._previous_hook, None

    def _unraisable(self, unraisable: Any) -> None:
        """A signal that raised inside a finalizer or a weakref callback (the garbage collector runs them
        between any two bytecodes) cannot stop the code around it: Python prints it and goes on. It is
        recorded all the same, and the next :meth:`check` raises it, so it is not printed."""
        if isinstance(unraisable.exc_value, Interrupted):
            log.debug("%s arrived inside %r; it stops the worker at the next check",
                      signal.Signals(unraisable.exc_value.signum).name, unraisable.object)
            return
        assert self._previous_hook is not None
        self._previous_hook(unraisable)

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            log.warning("%s received again: quitting at once", signal.Signals(signum).name)
            self.forced = True
            raise ForceQuit(signum)
        self.signum = signum
        self.received_at = time.monotonic()
        self._wake.set()
        log.warning("%s received: ending the current trial and stopping", signal.Signals(signum).name)
        if not self._deferred:
            raise Interrupted(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferred += 1
        try:
            yield
        finally:
            self._deferred -= 1

    @contextlib.contextmanager
    def allowed(self) -> Iterator[None]:
        """Inside :meth:`deferred` code, a part where a signal raises at once again (a trial's objective)."""
        deferred, self._deferred = self._deferred, 0
        try:
            yield
        finally:
            self._deferred = deferred

    @property
    def dropped(self) -> bool:
        """Whether the running trial takes no more writes: a second signal came, or it was abandoned."""
        return self.forced or self.abandoned

    def progress(self) -> None:
        """Record that the running trial made progress (a forward pass; see ``study.stall_timeout``)."""
        self.progressed_at = time.monotonic()

    def abandon(self) -> None:
        """Stop the running trial at the next :meth:`check`, with :class:`TrialAbandoned` (from any thread)."""
        self.abandoned = True
        self._wake.set()

    def forget_abandoned(self) -> None:
        """Done with the abandoned trial: the next one runs."""
        self.abandoned = False
        if self.signum is None:
            self._wake.clear()

    def check(self, grace: float = 0.0) -> None:
        """Raise :class:`TrialAbandoned` if the trial was abandoned, and :class:`Interrupted` if a signal
        arrived (at least ``grace`` seconds ago)."""
        if self.abandoned:
            raise TrialAbandoned
        if self.signum is None:
            return
        if self.forced:
            raise ForceQuit(self.signum)
        if grace <= 0 or self.received_at is None or time.monotonic() - self.received_at >= grace:
            raise Interrupted(self.signum)

    def sleep(self, seconds: float) -> None:
        """Sleep, waking early when a signal arrives."""
        self._wake.wait(seconds)
        self.check()


class StopMidStep:
    """Lets SIGTERM or SIGINT stop a model inside a forward or backward pass, not only between batches.

    Python runs a signal handler only between bytecodes of the main thread, and a backward pass is
    a single call into the autograd engine: with bf16 autocast on a CPU without native bf16, one
    backward of a 3-layer MiniLM took 26 s, and the signal waited for all of it (in the LR finder,
    before the finder even saw it; in training, before the next batch). Hooks on every submodule run a
    little Python after each module's forward and as each module's gradient arrives in the backward,
    where the handler runs and :meth:`StopSignals.check` can raise. Where signals are deferred (the
    real fit), a step is abandoned only ``grace`` seconds after the signal, so a short step still ends
    at its batch's end with a checkpoint; elsewhere (the LR finder) the handler raises at the next hook.
    Stopping inside a forward or backward pass is safe: the weights change only in the optimizer
    step, which has no hooks.
    """

    def __init__(self, signals: StopSignals, grace: float = STOP_GRACE_S) -> None:
        self.signals = signals
        self.grace = grace
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def attach(self, model: torch.nn.Module) -> None:
        self.detach()
        self._handles = [module.register_forward_hook(self._after_forward) for module in model.modules()]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @contextlib.contextmanager
    def attached(self, model: torch.nn.Module) -> Iterator[None]:
        self.attach(model)
        try:
            yield
        finally:
            self.detach()

    def _after_forward(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        self.signals.progress()
        self.signals.check(self.grace)
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(self._on_gradient)

    def _on_gradient(self, gradient: torch.Tensor) -> None:
        self.signals.check(self.grace)  # returns None: the gradient is left as it is


class StopOnSignal(Callback):
    """End training at the next batch once SIGTERM or SIGINT arrived, saving a checkpoint first.

    Training runs with signals deferred (see :class:`StopSignals`), so the model is
    never stopped half way through an optimizer step; the checkpoint lets the trial's retry resume.
    A step still running :data:`STOP_GRACE_S` after the signal is abandoned inside its
    forward or backward pass (:class:`StopMidStep`); the retry then resumes from the last validation.
    An abandoned trial (:meth:`StopSignals.abandon`) ends at the next batch too, without a checkpoint.
    It also records the step training started at (above 0 when resuming).
    """

    def __init__(self, signals: StopSignals, last: Path, trial: optuna.Trial) -> None:
        self.signals: StopSignals | None = signals
        self.last = last
        self.trial: optuna.Trial | None = trial
        self.mid_step: StopMidStep | None = StopMidStep(signals)

    def __getstate__(self) -> dict[str, Any]:
        # spawned DDP ranks get neither: they receive the signal themselves (Lightning stops them on
        # SIGTERM) and the trial's process records the interruption
        return {**self.__dict__, "signals": None, "trial": None, "mid_step": None}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.mid_step is not None:
            self.mid_step.attach(pl_module)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.mid_step is not None:
            self.mid_step.detach()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.mid_step is not None:
            self.mid_step.detach()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.trial is not None:
            self.trial.set_user_attr("start_step", trainer.global_step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.signals is None:
            return
        # an abandoned trial saves nothing: its retry may be resuming from this checkpoint already. Nor
        # does a batch that a validation follows: Lightning resumes such a checkpoint after that
        # validation, which the retry would never run (its history would lack it); the last
        # validation's checkpoint stands instead.
        if (self.signals.signum is not None and not self.signals.abandoned
                and not validation_follows(trainer)):
            trainer.save_checkpoint(str(self.last))
        self.signals.check()

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.signals is not None and not trainer.sanity_checking:
            self.signals.check()  # the last checkpoint, from the last validation, stands
