"""Stopping a trial at once: on a signal inside a long forward or backward pass, and when it was abandoned."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from optuna.trial import TrialState
from processes import tiny_study, wait_for

from tuner.errors import ForceQuit, Interrupted, TrialAbandoned
from tuner.training.stopping import StopMidStep, StopOnSignal, StopSignals


def slow_backward_orderer(layers: int = 100, rows: int = 4096, width: int = 4096) -> type:
    """The sentence orderer with a backward pass that runs for seconds inside the autograd engine.

    Each extra layer is a view of a view of its input: no work forward, and backward a (rows x width)
    zero-fill and sum, in C++ with no Python in between, like a transformer's backward on a CPU (26 s for
    a 3-layer MiniLM with bf16 autocast where the CPU has no native bf16)."""
    import torch

    from tuner.model.orderer import SentenceOrderer

    class View(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.expand(rows, width)[::rows]

    class SlowBackwardOrderer(SentenceOrderer):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            self.slow_input = torch.nn.Parameter(torch.zeros(1, width))
            self.slow = torch.nn.Sequential(*[View() for _ in range(layers)])

        def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return super().score(batch) + 0 * self.slow(self.slow_input).sum()

    return SlowBackwardOrderer


def main_thread_in(*names: str) -> bool:
    """Whether the main thread is inside functions of all these names (as the innermost Python frames see it)."""
    frame = sys._current_frames().get(threading.main_thread().ident or 0)
    found = set()
    while frame is not None:
        found.add(frame.f_code.co_name)
        frame = frame.f_back
    return set(names) <= found


@pytest.mark.parametrize(("phase", "finder", "limit"), [("run_finder", "suggest", 2.5), ("_train", "off", 4.5)])
def test_sigint_inside_a_long_backward_pass_ends_the_run_in_seconds(
        study_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], phase: str, finder: str,
        limit: float) -> None:
    """SIGINT while the main thread is in the autograd engine, in the LR finder or in training: the run ends
    within seconds (training: after the grace a step gets to end with a checkpoint), not after the backward."""
    from tuner.cli import main
    from tuner.hpo import objective
    from tuner.training.stopping import STOP_GRACE_S

    assert limit < STOP_GRACE_S + 3
    monkeypatch.chdir(study_dir)
    monkeypatch.setattr(objective, "SentenceOrderer", slow_backward_orderer())
    sent: list[float] = []

    def interrupt() -> None:
        wait_for(lambda: main_thread_in("_engine_run_backward", phase), f"a backward pass in {phase}")
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    code = main(["run", "--study", "tiny", "--set", "study.n_trials=1", "--set", "study.baseline=false",
                 # max_cost: the finder runs even where it costs more than this tiny trial (12 steps at batch 16)
                 "--set", f'study.lr_finder={{mode="{finder}", num_training=20, max_cost=100}}',
                 "--set", 'study.pruner="none"'])
    ended = time.monotonic()
    assert sent, "no SIGINT was sent"
    assert code == 128 + signal.SIGINT
    assert ended - sent[0] < limit
    assert "tuner: stopped by SIGINT" in capsys.readouterr().err
    interrupted, queued = tiny_study(study_dir).trials
    assert interrupted.state == TrialState.FAIL and queued.state == TrialState.WAITING
    assert interrupted.user_attrs["fail_reason"] == "interrupted by SIGINT; queued for retry"


def test_an_abandoned_trial_stops_at_once_without_a_checkpoint(tmp_path: Path) -> None:
    # another worker failed the trial and queued its retry, which may be reading last.ckpt already
    signals = StopSignals()
    stop = StopOnSignal(signals, tmp_path / "last.ckpt", None)  # type: ignore[arg-type]
    saved: list[Any] = []
    trainer = SimpleNamespace(save_checkpoint=saved.append)
    stop.on_train_batch_end(trainer, None, None, None, 0)  # type: ignore[arg-type]  # nothing yet: trains on
    signals.abandon()
    with pytest.raises(TrialAbandoned):
        stop.on_train_batch_end(trainer, None, None, None, 1)  # type: ignore[arg-type]
    with pytest.raises(TrialAbandoned):  # inside a step too, without the grace a signal gives it
        StopMidStep(signals, grace=3600)._on_gradient(None)  # type: ignore[arg-type]
    assert saved == []


def test_a_second_signal_raises_at_once_even_where_signals_are_deferred() -> None:
    with StopSignals() as signals:
        with signals.deferred():
            signal.raise_signal(signal.SIGINT)  # recorded: training stops at its next batch
            assert signals.name == "SIGINT" and not signals.forced
            with pytest.raises(ForceQuit):
                signal.raise_signal(signal.SIGTERM)
        assert signals.forced and signals.dropped
        with pytest.raises(ForceQuit), signals.deferred():
            signal.raise_signal(signal.SIGINT)  # and every one after
    with StopSignals(), pytest.raises(Interrupted) as first:
        signal.raise_signal(signal.SIGTERM)  # not deferred: the first one raises at once
    assert not isinstance(first.value, ForceQuit)


class _Finalized:
    """An object whose finalizer runs when the signal arrives, as the garbage collector's callbacks do."""

    def __init__(self, signum: int) -> None:
        self.signum = signum

    def __del__(self) -> None:
        signal.raise_signal(self.signum)  # the handler runs, and raises, inside the finalizer


def test_a_signal_inside_a_finalizer_is_not_printed_and_stops_at_the_next_check(
        capsys: pytest.CaptureFixture[str]) -> None:
    # Python cannot raise out of a finalizer or a weakref callback: it prints "Exception ignored in"
    # with a traceback and goes on. The signal must still stop the worker, without that traceback.
    hook = sys.unraisablehook
    with StopSignals() as signals:
        finalized = _Finalized(signal.SIGTERM)
        del finalized
        assert signals.name == "SIGTERM"
        with pytest.raises(Interrupted) as raised:
            signals.check()
        assert not isinstance(raised.value, ForceQuit)
        finalized = _Finalized(signal.SIGINT)
        del finalized  # a second signal, swallowed the same way, still forces the quit
        with pytest.raises(ForceQuit):
            signals.check()
    assert "Traceback" not in capsys.readouterr().err
    assert sys.unraisablehook is hook  # given back
