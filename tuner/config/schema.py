"""The schema of a study file: one frozen dataclass per section, each checking its own values.

A study file has the sections ``[data]``, ``[model]``, ``[trainer]``, ``[study]`` and ``[search]``.
Each dataclass validates its values in ``__post_init__`` and names the key it rejects; the allowed
choices (formats, samplers, pruners, precisions) are the tuples below. Reading TOML into these
classes is :mod:`tuner.config.loader`'s job.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tuner.errors import ConfigError
from tuner.keys import LOSSES, OBJECTIVE, PAIRWISE

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover - exercised on 3.10 only
    pass


MINILM = "sentence-transformers/all-MiniLM-L6-v2"
FORMATS = ("auto", "lines", "csv", "jsonl", "text")


BUILTINS = ("python-docs",)
STRATEGIES = ("auto", "ddp")


PRECISIONS = ("auto", "32", "32-true", "bf16-mixed", "16-mixed", "bf16-true")


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


@dataclass(frozen=True)
class BackboneSpec:
    """A pretrained encoder: a hub name or local path, with optional config overrides.

    ``config`` overrides keys of the backbone's Hugging Face config, e.g. ``{num_hidden_layers = 3}``
    keeps only the first three layers of a pretrained model.
    """

    name: str
    config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """A short, stable name for reports: ``name`` or ``name[key=value,...]``."""
        if not self.config:
            return self.name
        overrides = ",".join(f"{k}={v}" for k, v in sorted(self.config.items()))
        return f"{self.name}[{overrides}]"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "config": dict(self.config)}


@dataclass(frozen=True)
class DataConfig:
    """Where documents come from, how they are split, and how they are batched."""

    # Given splits: one file each.
    train: str | None = None
    validation: str | None = None
    test: str | None = None
    # Or one file, with validation and test carved out by a seeded split.
    path: str | None = None
    split: tuple[float, float] = (0.1, 0.1)
    # Or a Hugging Face hub data set.
    hub: str | None = None
    hub_config: str | None = None
    hub_splits: tuple[str, str, str] = ("train", "validation", "test")
    # Or a corpus built from text an installed package carries (no network, no files).
    builtin: str | None = None

    format: str = "auto"
    separator: str = "\t"
    sentences_column: str = "sentences"
    text_column: str = "text"
    sentence_columns: tuple[str, ...] = ()
    ending_columns: tuple[str, ...] = ()
    answer_column: str | None = None

    min_sentences: int = 2
    max_sentences: int = 16
    overflow: Literal["truncate", "skip"] = "truncate"
    max_documents: int | None = None
    max_length: int = 512
    batch_size: int = 16
    bucket: bool = True
    num_workers: int = 0
    seed: int = 0
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        sources = [k for k in ("train", "path", "hub", "builtin") if getattr(self, k) is not None]
        _check(
            len(sources) == 1,
            "data",
            "give exactly one source: 'train' (with 'validation' and 'test'), 'path' (split "
            f"automatically), 'hub' or 'builtin'; got {sources or 'none'}",
        )
        if self.train is not None:
            _check(self.validation is not None, "data.validation", "required with data.train")
        else:
            _check(self.validation is None and self.test is None, "data.validation",
                   "only goes with data.train")
        val, test = self.split
        _check(0 <= val < 1 and 0 <= test < 1 and val + test < 1, "data.split",
               f"fractions of validation and test must be in [0, 1) and sum below 1, got {list(self.split)}")
        _check(self.format in FORMATS, "data.format", f"unknown format {self.format!r}; use one of {FORMATS}")
        _check(self.builtin is None or self.builtin in BUILTINS, "data.builtin",
               f"unknown corpus {self.builtin!r}; use one of {BUILTINS}")
        _check(self.separator != "", "data.separator", "must not be empty")
        _check(self.min_sentences >= 2, "data.min_sentences", "must be at least 2")
        _check(self.max_sentences >= self.min_sentences, "data.max_sentences",
               "must be at least data.min_sentences")
        _check(self.max_documents is None or self.max_documents > 0, "data.max_documents", "must be positive")
        _check(self.max_length >= 8, "data.max_length", "must be at least 8 tokens")
        _check(self.batch_size > 0, "data.batch_size", "must be positive")
        _check(self.num_workers >= 0, "data.num_workers", "must be 0 or more")
        _check(not self.ending_columns or bool(self.sentence_columns), "data.ending_columns",
               "goes with data.sentence_columns")
        _check((self.answer_column is None) == (not self.ending_columns), "data.answer_column",
               "data.answer_column and data.ending_columns go together")


@dataclass(frozen=True)
class ModelConfig:
    """The backbone, the loss and the optimiser."""

    backbone: BackboneSpec = field(default_factory=lambda: BackboneSpec(MINILM))
    loss: str = PAIRWISE
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup: float = 0.1
    schedule: Literal["linear", "constant"] = "linear"
    dropout: float = 0.1
    pooling: Literal["marker", "mean"] = "mean"

    def __post_init__(self) -> None:
        _check(self.loss in LOSSES, "model.loss", f"unknown loss {self.loss!r}; use one of {LOSSES}")
        _check(self.learning_rate > 0, "model.learning_rate", "must be positive")
        _check(self.weight_decay >= 0, "model.weight_decay", "must be 0 or more")
        _check(0 <= self.warmup < 1, "model.warmup", "is a fraction of the training steps, in [0, 1)")
        _check(0 <= self.dropout < 1, "model.dropout", "must be in [0, 1)")


@dataclass(frozen=True)
class TrainerConfig:
    """Lightning ``Trainer`` settings and where runs are written."""

    max_epochs: int = 3
    # "auto": decided per process from its hardware (tuner.hardware.best_precision)
    precision: str = "auto"
    accelerator: str = "auto"
    # One device per trial by default: trials run side by side through workers, and several devices
    # per trial run DDP ranks that the trial spawns itself (see tuner.training.distributed).
    devices: int = 1
    strategy: str = "auto"
    seed: int = 0
    # "auto": several validations an epoch where it is long enough (tuner.training.trainer.validation_interval)
    val_check_interval: float | Literal["auto"] = 1.0
    limit_train_batches: float = 1.0
    limit_val_batches: float = 1.0
    gradient_clip_val: float = 1.0
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 10
    early_stopping_patience: int | None = None
    output_dir: str = "runs"

    def __post_init__(self) -> None:
        _check(self.max_epochs > 0, "trainer.max_epochs", "must be positive")
        _check(self.devices > 0, "trainer.devices",
               f"is the number of devices per trial, 1 or more, got {self.devices}")
        _check(self.strategy in STRATEGIES, "trainer.strategy",
               f"unknown strategy {self.strategy!r}; use 'auto' (DDP when devices > 1) or 'ddp' (each trial spawns "
               "one rank per device and only the trial's own process talks to the study)")
        _check(self.precision in PRECISIONS, "trainer.precision",
               f"unknown precision {self.precision!r}; use 'auto' (the best for the hardware), 'bf16-mixed', "
               "'16-mixed' or '32-true'")
        _check(self.val_check_interval == "auto" or 0 < self.val_check_interval, "trainer.val_check_interval",
               "must be positive, or 'auto'")
        _check(0 < self.limit_train_batches, "trainer.limit_train_batches", "must be positive")
        _check(0 < self.limit_val_batches, "trainer.limit_val_batches", "must be positive")
        _check(self.gradient_clip_val >= 0, "trainer.gradient_clip_val", "must be 0 or more")
        _check(self.accumulate_grad_batches > 0, "trainer.accumulate_grad_batches", "must be positive")
        _check(self.early_stopping_patience is None or self.early_stopping_patience > 0,
               "trainer.early_stopping_patience", "must be positive")


SAMPLERS = ("tpe", "random", "gp", "grid")
PRUNERS = ("median", "percentile", "successive_halving", "hyperband", "patient", "none")


LR_FINDER_MODES = ("off", "suggest", "scale")
LR_FINDER_SCOPES = ("study", "config")


@dataclass(frozen=True)
class SamplerConfig:
    """An Optuna sampler: its ``type``, ``seed`` and any constructor ``options``."""

    type: str = "tpe"
    seed: int | None = 0
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(self.type in SAMPLERS, "study.sampler.type", f"unknown sampler {self.type!r}; use one of {SAMPLERS}")


@dataclass(frozen=True)
class PrunerConfig:
    """An Optuna pruner: its ``type`` and constructor ``options``."""

    type: str = "hyperband"
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(self.type in PRUNERS, "study.pruner.type", f"unknown pruner {self.type!r}; use one of {PRUNERS}")


@dataclass(frozen=True)
class LRFinderConfig:
    """Lightning's learning-rate finder, and how far its suggestion is trusted.

    ``mode``: ``off`` uses the sampled learning rate; ``suggest`` uses the finder's suggestion;
    ``scale`` caches the finder's curve in the study and samples a log-uniform ``multiplier`` of the
    suggestion. ``scope``: ``study`` scales every trial's rate from the first reliable suggestion, so the
    finder runs once, or again for a new (backbone, batch size) while none is reliable; ``config`` runs it
    once per (backbone, batch size). A finder whose smoothed loss did not drop by at least ``min_drop`` (a
    fraction of its starting loss) is unreliable: the sampled learning rate is used. The finder runs only
    where its ``num_training`` steps are at most ``max_cost`` times the training steps of the trial that
    would run it; otherwise that trial keeps its sampled learning rate. The baseline trial runs the finder
    and trains at its suggestion times the middle of ``multiplier``. Why these defaults:
    docs/studies.md#learning-rate-finder.
    """

    mode: str = "scale"
    scope: str = "study"
    num_training: int = 150
    min_lr: float = 1e-6
    max_lr: float = 1e-2
    multiplier: tuple[float, float] = (1.0, 3.0)
    min_drop: float = 0.1
    max_cost: float = 1.0

    @property
    def baseline_multiplier(self) -> float:
        """The baseline trial's multiplier of the suggestion: the middle of ``multiplier``, in log-rate."""
        return math.sqrt(self.multiplier[0] * self.multiplier[1])

    def __post_init__(self) -> None:
        _check(self.mode in LR_FINDER_MODES, "study.lr_finder.mode",
               f"unknown mode {self.mode!r}; use one of {LR_FINDER_MODES}")
        _check(self.scope in LR_FINDER_SCOPES, "study.lr_finder.scope",
               f"unknown scope {self.scope!r}; use one of {LR_FINDER_SCOPES}")
        _check(self.num_training >= 20, "study.lr_finder.num_training", "must be at least 20 steps")
        _check(0 < self.min_lr < self.max_lr, "study.lr_finder.min_lr", "must be positive and below max_lr")
        low, high = self.multiplier
        _check(0 < low <= high, "study.lr_finder.multiplier", f"needs 0 < low <= high, got {list(self.multiplier)}")
        _check(0 < self.min_drop < 1, "study.lr_finder.min_drop", "must be in (0, 1)")
        _check(self.max_cost > 0, "study.lr_finder.max_cost", "must be positive (a share of a trial's training steps)")


def outage_wait_s(heartbeat_interval: int | None, grace_period: int | None) -> int | None:
    """How long a worker may wait out a database outage, with heartbeats on (``None``: they are off).

    A worker coming back from an outage looks for stale trials at once. Another worker's live trial had
    its last heartbeat up to one interval before the outage began, and an idle worker, which looks at the
    storage once an interval, begins waiting up to one interval into it; so after waiting
    ``grace_period - 2 * heartbeat_interval`` at most, it finds that heartbeat at most ``grace_period``
    old: not stale. The live trial's heartbeat thread, waiting out the same outage, beats again within
    seconds. A worker that was training, and came to the storage late in the outage, can still find a
    live trial stale: its worker then drops that trial (see :class:`tuner.study.heartbeat.Heartbeat`).
    """
    if not heartbeat_interval:
        return None
    grace = grace_period if grace_period is not None else 2 * heartbeat_interval  # Optuna's default
    return grace - 2 * heartbeat_interval


@dataclass(frozen=True)
class StudyConfig:
    """The ``[study]`` section: what to optimise, how to sample and prune, and the budget."""

    name: str | None = None
    metric: str = OBJECTIVE
    direction: Literal["maximize", "minimize"] = "maximize"
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    n_trials: int = 20
    timeout: float | None = None
    storage: str | None = None
    objective: Literal["best", "last"] = "best"
    lr_finder: LRFinderConfig = field(default_factory=LRFinderConfig)
    baseline: bool = True
    heartbeat_interval: int | None = 30
    grace_period: int | None = 120
    max_retries: int = 2
    # a trial whose worker is alive but has run no forward pass for this many seconds (a hung data
    # loader, a deadlock) is failed as stalled and retried elsewhere; off by default, and needs heartbeats
    stall_timeout: int | None = None

    def __post_init__(self) -> None:
        _check(self.n_trials > 0, "study.n_trials", "must be positive")
        _check(self.stall_timeout is None or self.stall_timeout > 0, "study.stall_timeout",
               "must be a positive number of seconds")
        _check(self.stall_timeout is None or bool(self.heartbeat_interval), "study.stall_timeout",
               "needs heartbeats (study.heartbeat_interval > 0): the heartbeat thread watches for progress")
        _check(self.heartbeat_interval is None or self.heartbeat_interval >= 0, "study.heartbeat_interval",
               "must be a number of seconds (0 turns heartbeats off)")
        wait = outage_wait_s(self.heartbeat_interval, self.grace_period)
        _check(wait is None or wait > 0, "study.grace_period",
               f"must be more than twice study.heartbeat_interval (2 x {self.heartbeat_interval} s), got "
               f"{self.grace_period}: a worker waits out a database outage for grace_period - 2 x "
               "heartbeat_interval seconds; raise grace_period or lower heartbeat_interval")
        _check(self.max_retries >= 0, "study.max_retries", "must be 0 or more")
        _check(self.timeout is None or self.timeout > 0, "study.timeout", "must be positive (seconds)")
        _check(self.metric.startswith("val_"), "study.metric", "must be a validation metric such as val_kendall_tau")


@dataclass(frozen=True)
class SearchSpace:
    """The ``[search]`` section. Absent keys are not searched: the ``[model]``/``[data]`` value is used.

    ``learning_rate``, ``weight_decay`` and ``warmup`` are ``[low, high]`` ranges (the learning rate
    log-uniform); the others are lists of choices.
    """

    learning_rate: tuple[float, float] = (1e-5, 3e-4)
    backbone: tuple[BackboneSpec, ...] = ()
    batch_size: tuple[int, ...] = ()
    loss: tuple[str, ...] = ()
    weight_decay: tuple[float, float] | None = None
    warmup: tuple[float, float] | None = None
    max_epochs: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        low, high = self.learning_rate
        _check(0 < low <= high, "search.learning_rate", f"needs 0 < low <= high, got {list(self.learning_rate)}")
        for key in ("weight_decay", "warmup"):
            span = getattr(self, key)
            if span is not None:
                _check(0 <= span[0] <= span[1], f"search.{key}", f"needs 0 <= low <= high, got {list(span)}")
        _check(all(b > 0 for b in self.batch_size), "search.batch_size", "choices must be positive")
        _check(all(e > 0 for e in self.max_epochs), "search.max_epochs", "choices must be positive")
        _check(all(loss in LOSSES for loss in self.loss), "search.loss", f"choices must be among {LOSSES}")


@dataclass(frozen=True)
class StudyFile:
    """One study file: a name plus data, model and trainer settings, and the study and its search space."""

    name: str
    data: DataConfig = field(default_factory=lambda: DataConfig(builtin="python-docs"))
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    search: SearchSpace = field(default_factory=SearchSpace)
    source: str | None = None
