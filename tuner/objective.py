"""One Optuna trial: sample settings, find a learning rate, train with pruning, record everything."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from optuna_integration import PyTorchLightningPruningCallback

from tuner import distributed, hardware, search
from tuner.config import LRFinderConfig, RunConfig
from tuner.data import SentenceOrderingData
from tuner.errors import Interrupted
from tuner.model import SentenceOrderer
from tuner.train import ValidationHistory, build_trainer
from tuner.worker import STOP_GRACE_S, StopSignals

log = logging.getLogger(__name__)

FINDER_ATTR = "lr_finder:"  # study user attribute prefix of cached finder results (scale mode)


class TrialFailed(Exception):
    """A trial that cannot give a value, with the reason recorded on the trial."""


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
        distributed.report(trainer, self._trial, value, step,
                           f"pruned after validation {step} (epoch {trainer.current_epoch})")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Nothing: under DDP, :mod:`tuner.distributed` carries reports and decisions, not the base class's
        storage side channel (which needs a manual ``check_pruned()`` after ``fit``)."""

    def __getstate__(self) -> dict[str, Any]:
        # spawned DDP ranks never touch the trial: rank 0 asks the trial's own process
        return {**self.__dict__, "_trial": None}


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
        self.signals.check(self.grace)
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(self._on_gradient)

    def _on_gradient(self, gradient: torch.Tensor) -> None:
        self.signals.check(self.grace)  # returns None: the gradient is left as it is


class StopOnSignal(Callback):
    """End training at the next batch once SIGTERM or SIGINT arrived, saving a checkpoint first.

    Training runs with signals deferred (see :class:`tuner.worker.StopSignals`), so the model is
    never stopped half way through an optimizer step; the checkpoint lets the trial's retry resume.
    A step still running :data:`tuner.worker.STOP_GRACE_S` after the signal is abandoned inside its
    forward or backward pass (:class:`StopMidStep`); the retry then resumes from the last validation.
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
        if self.signals is not None and self.signals.signum is not None:
            trainer.save_checkpoint(str(self.last))
            self.signals.check()

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.signals is not None and not trainer.sanity_checking:
            self.signals.check()  # the last checkpoint, from the last validation, stands


class NaNGuard(Callback):
    """Stop a trial as soon as the training loss is NaN or infinite."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not torch.isfinite(loss).all():
            raise TrialFailed(f"training loss is {float(loss)} at step {trainer.global_step}")


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
    skip = max(1, len(finite) // 10)
    start = sum(loss for _, loss in finite[skip: 2 * skip]) / len(finite[skip: 2 * skip])
    lowest = min(loss for _, loss in finite[skip:])
    drop = (start - lowest) / abs(start) if start else 0.0
    if drop < config.min_drop:
        return False, f"loss did not drop: {start:.4f} to at best {lowest:.4f} ({drop:.1%} < {config.min_drop:.0%})"
    if suggestion >= finite[-1][0] * 0.5:
        return False, f"suggestion {suggestion:.3g} at the top of the range"
    return True, f"loss dropped {drop:.1%}"


def run_finder(run: RunConfig, model: SentenceOrderer, data: SentenceOrderingData, root: Path,
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


class Objective:
    """``trial -> best validation tau``, for ``study.optimize``.

    Args:
        run: the study file's settings (with ``[study]`` and ``[search]``).
        output_dir: where each trial's folder is made (``trial-0007/``).
        progress: show Lightning's progress bar inside each trial.
        signals: the worker's signal handling; training stops cleanly at the next batch on a signal.
    """

    def __init__(self, run: RunConfig, output_dir: Path, progress: bool = False,
                 signals: StopSignals | None = None) -> None:
        self.run = run
        self.output_dir = output_dir
        self.progress = progress
        self.signals = signals or StopSignals()

    def __call__(self, trial: optuna.Trial) -> float:
        started = time.perf_counter()
        resume = _resume_point(trial)
        root = _fresh_dir(self.output_dir / f"trial-{trial.number:04d}")
        trial.set_user_attr("trial_dir", str(root))
        trial.set_user_attr("versions", _versions())
        try:
            return self._train(trial, root, started, resume)
        except (optuna.TrialPruned, Interrupted):
            trial.set_user_attr("wall_s", time.perf_counter() - started)
            raise
        except TrialFailed as err:
            self._fail(trial, str(err), started)
            raise
        except torch.cuda.OutOfMemoryError as err:
            self._fail(trial, f"out of memory (infeasible): {str(err).splitlines()[0]}", started)
            raise
        except Exception as err:
            if self.signals.signum is not None:
                # stopped by the signal in its own way (Lightning's SIGTERMException, a DDP rank's error)
                raise Interrupted(self.signals.signum) from err
            message = str(err).splitlines()[0] if str(err) else ""
            reason = f"{type(err).__name__}: {message}"
            if "out of memory" in message.lower():
                reason = f"out of memory (infeasible): {message}"
            self._fail(trial, reason, started)
            raise

    def _fail(self, trial: optuna.Trial, reason: str, started: float) -> None:
        trial.set_user_attr("fail_reason", reason)  # the worker logs it as it stores the failure
        trial.set_user_attr("wall_s", time.perf_counter() - started)

    def _train(self, trial: optuna.Trial, root: Path, started: float, resume: Path | None) -> float:
        run = search.sample(trial, self.run)
        seed = run.trainer.seed + trial.number
        pl.seed_everything(seed, workers=True, verbose=False)
        trial.set_user_attr("seed", seed)
        # what the trial ran on, and the precision that decided: figures differ many times between CPUs
        trial.set_user_attr("hardware", hardware.describe(run.trainer.precision, run.trainer.accelerator))
        data = SentenceOrderingData(run.data, run.model.backbone.name)
        data.setup("fit")
        trial.set_user_attr("data_fingerprint", data.fingerprint)
        model = SentenceOrderer.from_config(run.model)
        trial.set_user_attr("setup_s", time.perf_counter() - started)
        if resume is not None and "lr_used" in trial.user_attrs:
            # a retry resuming its predecessor's checkpoint trains on with the same learning rate
            learning_rate, finder = float(trial.user_attrs["lr_used"]), trial.user_attrs.get("lr_finder", {})
        else:
            learning_rate, finder = self._learning_rate(trial, run, data, root)
        model.learning_rate = learning_rate
        model.hparams["learning_rate"] = learning_rate
        trial.set_user_attr("lr_used", learning_rate)
        trial.set_user_attr("lr_finder", finder)
        model.run_settings = {"study": run.name, "trial": trial.number, "trainer": asdict(run.trainer)}

        history = ValidationHistory()
        # `last.ckpt` (every validation, and on a signal) is what a retry of this trial resumes from
        checkpoint = ModelCheckpoint(dirpath=str(root / "checkpoints"), filename="best", save_last=True,
                                     monitor=run.study.metric, mode=run.study.direction[:3], save_top_k=1)
        pruning = ReportingPruningCallback(trial, run.study.metric)
        stop = StopOnSignal(self.signals, root / "checkpoints" / "last.ckpt", trial)
        trainer = build_trainer(run.trainer, root, [checkpoint, history, pruning, NaNGuard(), stop],
                                logger=_loggers(root), progress=self.progress)
        if resume is not None:
            trial.set_user_attr("resumed_from", str(resume))
        fit_started = time.perf_counter()
        try:
            with self.signals.deferred():
                # trainer.fit, with pruning across DDP ranks
                distributed.fit(trainer, model, data, trial, ckpt_path=str(resume) if resume else None)
            self.signals.check()
        finally:
            trial.set_user_attr("fit_s", time.perf_counter() - fit_started)
            trial.set_user_attr("epochs", trainer.current_epoch)
            trial.set_user_attr("history", history.records)
            trial.set_user_attr("checkpoint", checkpoint.best_model_path or None)
            trial.set_user_attr("wall_s", time.perf_counter() - started)
        if not history.records:
            raise TrialFailed("no validation ran; check trainer.limit_val_batches and val_check_interval")
        chosen = history.best(run.study.metric) if run.study.objective == "best" else history.records[-1]
        for key, value in chosen.items():
            if key.startswith("val_"):
                trial.set_user_attr(key, value)
        value = float(chosen[run.study.metric])
        if math.isnan(value):
            raise TrialFailed(f"{run.study.metric} is NaN")
        return value

    def _learning_rate(self, trial: optuna.Trial, run: RunConfig, data: SentenceOrderingData,
                       root: Path) -> tuple[float, dict[str, Any]]:
        """The learning rate to train with, by ``study.lr_finder.mode``, and what the finder said."""
        sampled = run.model.learning_rate
        mode = run.study.lr_finder.mode
        if mode == "off" or trial.user_attrs.get("baseline"):
            # the baseline trial keeps the original design's learning rate, whatever the mode
            return sampled, {"mode": mode, "used": "sampled" if mode == "off" else "baseline"}
        key = f"{FINDER_ATTR}{run.model.backbone.label}|{run.data.batch_size}"
        cached = trial.study.user_attrs.get(key) if mode == "scale" else None
        ran_here = cached is None
        if cached is None:
            cached = run_finder(run, SentenceOrderer.from_config(run.model), data, root, self.signals)
            if mode == "scale":
                trial.study.set_user_attr(key, cached)
        trial.set_user_attr("finder_s", cached["seconds"] if ran_here else 0.0)
        info = {"mode": mode, "key": key, "cached": not ran_here,
                **{k: cached[k] for k in ("suggestion", "reliable", "reason", "seconds")}}
        if mode == "suggest":
            # no study attribute holds this trial's curve: keep it here for `tuner report`
            info.update(lr=cached["lr"], loss=cached["loss"])
        if not cached["reliable"]:
            log.warning("LR finder unreliable for %s (%s); using the sampled learning rate %.3g",
                        key, cached["reason"], sampled)
            return sampled, {**info, "used": "sampled (finder unreliable)"}
        if mode == "suggest":
            return float(cached["suggestion"]), {**info, "used": "suggestion"}
        multiplier = trial.suggest_float("lr_multiplier", *run.study.lr_finder.multiplier, log=True)
        return float(cached["suggestion"]) * multiplier, {**info, "used": "suggestion x multiplier",
                                                            "multiplier": multiplier}


def _resume_point(trial: optuna.Trial) -> Path | None:
    """The checkpoint a retry resumes from: the newest ``last.ckpt`` among the trials it replaces.

    A retry starts with a copy of the failed trial's attributes, so ``trial_dir`` still names the
    failed trial's folder here, and ``resume_dirs`` the folders of earlier attempts.
    """
    attrs = trial.user_attrs
    if "retry_of" not in attrs:
        return None
    folders = [attrs["trial_dir"]] if attrs.get("trial_dir") else []
    folders += [f for f in attrs.get("resume_dirs", []) if f not in folders]
    trial.set_user_attr("resume_dirs", folders)
    for folder in folders:
        last = Path(folder) / "checkpoints" / "last.ckpt"
        if last.is_file():
            return last
    return None


def _fresh_dir(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``... when an earlier study of the same name left files there."""
    candidate, n = path, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("tuner", "torch", "lightning", "optuna", "optuna-integration", "transformers", "datasets"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def _loggers(root: Path) -> list[Logger]:
    """CSV logs always; TensorBoard too when it is installed (one TensorBoard can open the whole study)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    loggers: list[Logger] = [CSVLogger(str(root), name="logs", version="")]
    try:
        loggers.append(TensorBoardLogger(str(root), name="tensorboard", version=""))
    except ModuleNotFoundError:
        log.debug("tensorboard is not installed: CSV logs only")
    return loggers

