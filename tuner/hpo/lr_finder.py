"""Lightning's learning-rate finder, judged before it is trusted.

A finder curve with no clear drop (a flat loss near ln 2, as a ranking loss shows before it learns)
gives a meaningless suggestion, sometimes 80 times too high. :func:`judge_finder` accepts a suggestion
only where the loss fell by ``min_drop``; otherwise the trial keeps its sampled learning rate and the
reason is recorded.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tuner.config.schema import LRFinderConfig, StudyFile
from tuner.data.module import SentenceOrderingData
from tuner.model.orderer import SentenceOrderer
from tuner.training import distributed
from tuner.training.stopping import StopMidStep, StopSignals
from tuner.training.trainer import build_trainer

log = logging.getLogger(__name__)


def judge_finder(lrs: Sequence[float], losses: Sequence[float], suggestion: float | None,
                 config: LRFinderConfig) -> tuple[bool, str]:
    """Whether a finder curve can be trusted, and why not.

    Lightning's smoothed loss starts low (bias correction of the exponential average), so the start
    is read after the first tenth of the curve. The curve must then drop by ``min_drop`` of that loss
    before it diverges, and the suggestion must not sit at the top end of the range.
    """
    finite = [(lr, loss) for lr, loss in zip(lrs, losses, strict=True) if math.isfinite(loss)]
    if suggestion is None or len(finite) < 10:
        return False, "no suggestion (too few finite points)"
    start, lowest, drop = loss_drop([loss for _, loss in finite])
    if drop < config.min_drop:
        return False, f"loss did not drop: {start:.4f} to at best {lowest:.4f} ({drop:.1%} < {config.min_drop:.0%})"
    if suggestion >= finite[-1][0] * 0.5:
        return False, f"suggestion {suggestion:.3g} at the top of the range"
    return True, f"loss dropped {drop:.1%}"


def loss_drop(losses: Sequence[float]) -> tuple[float, float, float]:
    """A finite finder curve's starting loss (read after its first tenth), its lowest loss after that, and the
    drop between them as a fraction of the start."""
    skip = max(1, len(losses) // 10)
    start = sum(losses[skip: 2 * skip]) / len(losses[skip: 2 * skip])
    lowest = min(losses[skip:])
    return start, lowest, (start - lowest) / abs(start) if start else 0.0


def run_finder(run: StudyFile, model: SentenceOrderer, data: SentenceOrderingData, root: Path,
               signals: StopSignals | None = None) -> dict[str, Any]:
    """Lightning's LR finder on a throwaway copy of the trial's model, in the trial's own folder.

    The finder writes a temporary ``.lr_find_*.ckpt`` into ``default_root_dir`` (Lightning issue
    #9574), so each trial runs it under its own directory; and it swaps the trainer's callbacks, so
    this trainer has none of the real fit's callbacks. With ``signals``, SIGTERM or SIGINT stops it
    inside a step (:class:`StopMidStep`): its model is thrown away anyway.
    """
    from lightning.pytorch.tuner import Tuner

    config = run.study.lr_finder
    finder_root = root / "lr_finder"
    finder_root.mkdir(parents=True, exist_ok=True)
    # enough epochs for num_training steps: the finder stops at the trainer's last epoch otherwise
    per_epoch = max(1, len(data.train_dataloader()))
    # on one device: the finder's curve would stay in spawned DDP ranks
    trainer = build_trainer(distributed.one_device(run.trainer), finder_root, logger=False, progress=False,
                            max_epochs=math.ceil(config.num_training / per_epoch) + 1)
    started = time.perf_counter()
    with StopMidStep(signals).attached(model) if signals is not None else contextlib.nullcontext():
        finder = Tuner(trainer).lr_find(
            model, datamodule=data, min_lr=config.min_lr, max_lr=config.max_lr, num_training=config.num_training,
            early_stop_threshold=None, update_attr=False,
        )
    lrs = [float(x) for x in finder.results["lr"]] if finder else []
    losses = [float(x) for x in finder.results["loss"]] if finder else []
    suggestion = finder.suggestion() if finder else None
    reliable, reason = judge_finder(lrs, losses, suggestion, config)
    return {"suggestion": suggestion, "reliable": reliable, "reason": reason, "lr": lrs, "loss": losses,
            "seconds": time.perf_counter() - started, "num_training": config.num_training}
