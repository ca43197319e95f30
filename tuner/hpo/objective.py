"""One Optuna trial: sample settings, find a learning rate, train with pruning, record everything.

:class:`Objective` is what a worker calls with each trial. It resumes a retried trial from its
checkpoint, records the settings, the hardware and the validation history as user attributes, and
turns a trial that cannot give a value into :class:`tuner.errors.TrialFailed`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger

from tuner import hardware
from tuner._compat.optuna import as_asked, storage_of, study_id
from tuner.config.schema import StudyFile
from tuner.data.module import SentenceOrderingData
from tuner.errors import Interrupted, TrialFailed, first_line
from tuner.hpo import search
from tuner.hpo.lr_finder import run_finder
from tuner.hpo.pruning import ReportingPruningCallback
from tuner.keys import BASELINE_ATTR, FAIL_REASON_ATTR, FINDER_ATTR, RETRY_OF_ATTR
from tuner.model.orderer import SentenceOrderer
from tuner.storage.records import retry_history
from tuner.training import distributed
from tuner.training.stopping import StopOnSignal, StopSignals
from tuner.training.trainer import ValidationHistory, build_trainer, train_batches

log = logging.getLogger(__name__)


class NaNGuard(Callback):
    """Stop a trial as soon as the training loss is NaN or infinite."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not torch.isfinite(loss).all():
            raise TrialFailed(f"training loss is {float(loss)} at step {trainer.global_step}")


class Objective:
    """``trial -> best validation tau``, for ``study.optimize``.

    Args:
        run: the study file's settings (with ``[study]`` and ``[search]``).
        output_dir: where each trial's folder is made (``trial-0007/``).
        progress: show Lightning's progress bar inside each trial.
        signals: the worker's signal handling; training stops cleanly at the next batch on a signal.
    """

    def __init__(self, run: StudyFile, output_dir: Path, progress: bool = False,
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
            if not self.signals.dropped:
                trial.set_user_attr("wall_s", time.perf_counter() - started)
            raise
        except TrialFailed as err:
            self._fail(trial, str(err), started)
            raise
        except torch.cuda.OutOfMemoryError as err:
            self._fail(trial, f"out of memory (infeasible): {first_line(err)}", started)
            raise
        except Exception as err:
            if self.signals.signum is not None:
                # stopped by the signal in its own way (Lightning's SIGTERMException, a DDP rank's error)
                raise Interrupted(self.signals.signum) from err
            message = first_line(err)
            reason = f"{type(err).__name__}: {message}"
            if "out of memory" in message.lower():
                reason = f"out of memory (infeasible): {message}"
            self._fail(trial, reason, started)
            raise

    def _fail(self, trial: optuna.Trial, reason: str, started: float) -> None:
        trial.set_user_attr(FAIL_REASON_ATTR, reason)  # the worker logs it as it stores the failure
        trial.set_user_attr("wall_s", time.perf_counter() - started)

    def _train(self, trial: optuna.Trial, root: Path, started: float, resume: Path | None) -> float:
        run = search.sample(trial, self.run)
        # a retry replays its first attempt (same settings, same seed), so that resuming its checkpoint
        # continues the same run and starting over repeats it
        attempts = retry_history(as_asked(trial))
        seed = run.trainer.seed + (attempts[0] if attempts else trial.number)
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
                                logger=_loggers(root), progress=self.progress,
                                batches_per_epoch=train_batches(run, data))
        if resume is not None:
            trial.set_user_attr("resumed_from", str(resume))
        fit_started = time.perf_counter()
        # deferred to the end: once training has ended, a signal lets the worker store the outcome first
        with self.signals.deferred():
            try:
                # trainer.fit, with pruning across DDP ranks
                distributed.fit(trainer, model, data, trial, ckpt_path=str(resume) if resume else None)
                self.signals.check()  # a signal during training cut it short
            finally:
                if not self.signals.dropped:  # a force-quit stores nothing more, nor may an abandoned trial
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

    def _learning_rate(self, trial: optuna.Trial, run: StudyFile, data: SentenceOrderingData,
                       root: Path) -> tuple[float, dict[str, Any]]:
        """The learning rate to train with, by ``study.lr_finder`` (its rules: :class:`LRFinderConfig`), and
        what the finder said. The baseline trial trains at the suggestion times the middle of the multiplier
        range, else (no reliable suggestion) at its own rate."""
        sampled = run.model.learning_rate
        config = run.study.lr_finder
        mode = config.mode
        if mode == "off":
            return sampled, {"mode": mode, "used": "sampled"}
        fallback = "baseline" if trial.user_attrs.get(BASELINE_ATTR) else "sampled"
        key = f"{FINDER_ATTR}{run.model.backbone.label}|{run.data.batch_size}"
        cached = None
        if mode == "scale":
            found = trial.study.user_attrs
            if config.scope == "study":  # the first reliable curve, by key, serves every trial
                key = next((k for k in sorted(found) if k.startswith(FINDER_ATTR) and found[k]["reliable"]), key)
            cached = found.get(key)
        ran_here = cached is None
        if cached is None:
            steps = training_steps(run, data)  # only a finder about to run is weighed: a cached one is paid for
            if config.num_training > config.max_cost * steps:
                reason = (f"its {config.num_training} steps would cost more than {config.max_cost:g} x this "
                          f"trial's {steps} training steps")
                log.info("LR finder not run for %s: %s; using the %s learning rate %.3g", key, reason, fallback,
                         sampled)
                return sampled, {"mode": mode, "key": key, "reason": reason, "used": f"{fallback} (finder too costly)"}
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
            log.warning("LR finder unreliable for %s (%s); using the %s learning rate %.3g",
                        key, cached["reason"], fallback, sampled)
            return sampled, {**info, "used": f"{fallback} (finder unreliable)"}
        if mode == "suggest":
            return float(cached["suggestion"]), {**info, "used": "suggestion"}
        if fallback == "baseline":
            multiplier = config.baseline_multiplier
            return float(cached["suggestion"]) * multiplier, {**info, "used": "suggestion", "multiplier": multiplier}
        multiplier = trial.suggest_float("lr_multiplier", *config.multiplier, log=True)
        return float(cached["suggestion"]) * multiplier, {**info, "used": "suggestion x multiplier",
                                                            "multiplier": multiplier}


def training_steps(run: StudyFile, data: SentenceOrderingData) -> int:
    """The optimiser steps a trial of ``run`` trains for at most: its batches per epoch (after
    ``limit_train_batches``) over ``max_epochs``, fewer with gradient accumulation."""
    return max(1, train_batches(run, data) // max(1, run.trainer.accumulate_grad_batches)) * run.trainer.max_epochs


def _resume_point(trial: optuna.Trial) -> Path | None:
    """The checkpoint a retry resumes from: the newest ``last.ckpt`` among the trials it replaces, whose
    pruning reports the retry takes over.

    A retry starts with a copy of the failed trial's attributes, so ``trial_dir`` still names the
    failed trial's folder here, and ``resume_dirs`` the folders of earlier attempts.
    """
    attrs = trial.user_attrs
    if RETRY_OF_ATTR not in attrs:
        return None
    folders = [attrs["trial_dir"]] if attrs.get("trial_dir") else []
    folders += [f for f in attrs.get("resume_dirs", []) if f not in folders]
    trial.set_user_attr("resume_dirs", folders)
    for folder in folders:
        last = Path(folder) / "checkpoints" / "last.ckpt"
        if last.is_file():
            _take_over_reports(trial, folder, ReportingPruningCallback.reports_in(last))
            return last
    return None


def _take_over_reports(trial: optuna.Trial, folder: str, covered: int) -> None:
    """Report on ``trial`` what the earlier attempt that ran in ``folder`` reported at its first ``covered``
    steps, those its checkpoint holds.

    A retry is queued without its predecessor's reports (:func:`tuner.study.recovery.requeue`): only here,
    where the retry finds the checkpoint it resumes, is it known whether those reports are its past. One
    that starts over reports afresh from its first validation; inherited reports would be kept instead,
    as Optuna ignores a report at a step already present. The pruning callback, restored from the
    checkpoint, reports on from the step after the checkpoint's last report; a report the earlier attempt made
    after its checkpoint (a worker killed between a validation's report and its checkpoint) is the retry's to
    make again, so it is not taken over.
    """
    storage, study = storage_of(trial.study), study_id(trial.study)
    for number in retry_history(as_asked(trial)):
        earlier = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study, number))
        if earlier.user_attrs.get("trial_dir") == folder:
            for step, value in sorted(earlier.intermediate_values.items()):
                if step < covered:
                    trial.report(value, step)
            return


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
