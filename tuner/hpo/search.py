"""The search space: Optuna samplers and pruners from the study file, and sampling one trial's settings."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import optuna

from tuner.config.schema import PrunerConfig, SamplerConfig, StudyFile
from tuner.errors import ConfigError

# The baseline trial's learning rate, enqueued as trial 0: the recipe's rate for the whole job, not one tuned to
# short trials (bench/results/head_to_head_320_docs.json).
BASELINE_LEARNING_RATE = 5e-5
# Optuna's median pruner waits for 5 finished trials before it prunes: in a study of 5 to 20 trials that is
# most of the budget unpruned. tuner's median (and patient) pruner waits for 3 unless the study file says.
MEDIAN_STARTUP_TRIALS = 3
# Optuna's TPE samples at random until 10 trials have finished (pruned ones count): a study of 5 to 20
# fine-tuning trials is then mostly random search. tuner's TPE models the results from its 6th trial on (the
# baseline and 4 random draws before it) unless the study file says.
TPE_STARTUP_TRIALS = 5
# Independent TPE, not Optuna 5's multivariate one, which kept drawing the rates that had failed
# (BENCHMARKS.md#head-to-head-tuners-tpe-independent-against-multivariate); workers asking at once get fewer
# distinct choices (tests/hpo).
TPE_MULTIVARIATE = False


def build_sampler(config: SamplerConfig, run: StudyFile) -> optuna.samplers.BaseSampler:
    """The configured sampler. TPE is independent (:data:`TPE_MULTIVARIATE`) with a constant liar (parallel
    workers spread out) and samples at random for its first :data:`TPE_STARTUP_TRIALS` trials unless
    ``n_startup_trials`` is given; ``multivariate = true`` among its options brings Optuna's joint model back."""
    options = dict(config.options)
    try:
        if config.type == "tpe":
            options.setdefault("multivariate", TPE_MULTIVARIATE)
            options.setdefault("constant_liar", True)
            options.setdefault("n_startup_trials", TPE_STARTUP_TRIALS)
            return optuna.samplers.TPESampler(seed=config.seed, **options)
        if config.type == "random":
            return optuna.samplers.RandomSampler(seed=config.seed, **options)
        if config.type == "gp":
            return optuna.samplers.GPSampler(seed=config.seed, **options)
        return optuna.samplers.GridSampler(_grid(run, options.pop("learning_rate", None)), seed=config.seed, **options)
    except TypeError as err:
        raise ConfigError(f"study.sampler: {config.type} does not take these options: {err}") from None


def _grid(run: StudyFile, learning_rates: Any) -> dict[str, list[Any]]:
    if not isinstance(learning_rates, list) or not learning_rates:
        raise ConfigError("study.sampler: the grid sampler needs learning_rate = [values, ...] among its options")
    grid: dict[str, list[Any]] = {"learning_rate": [float(v) for v in learning_rates]}
    for key, values in choices(run).items():
        grid[key] = list(values)
    return grid


def build_pruner(config: PrunerConfig) -> optuna.pruners.BasePruner:
    """The configured pruner; ``patient`` wraps a median pruner. Median pruners wait for
    :data:`MEDIAN_STARTUP_TRIALS` trials unless ``n_startup_trials`` is given."""
    options = dict(config.options)
    try:
        if config.type == "median":
            options.setdefault("n_startup_trials", MEDIAN_STARTUP_TRIALS)
            return optuna.pruners.MedianPruner(**options)
        if config.type == "percentile":
            return optuna.pruners.PercentilePruner(options.pop("percentile", 25.0), **options)
        if config.type == "successive_halving":
            return optuna.pruners.SuccessiveHalvingPruner(**options)
        if config.type == "hyperband":
            return optuna.pruners.HyperbandPruner(**options)
        if config.type == "patient":
            median = optuna.pruners.MedianPruner(n_startup_trials=options.pop("n_startup_trials",
                                                                              MEDIAN_STARTUP_TRIALS))
            return optuna.pruners.PatientPruner(median, patience=options.pop("patience", 1), **options)
        return optuna.pruners.NopPruner()
    except TypeError as err:
        raise ConfigError(f"study.pruner: {config.type} does not take these options: {err}") from None


def choices(run: StudyFile) -> dict[str, tuple[Any, ...]]:
    """The categorical parameters searched, with backbones as their labels."""
    space = run.search
    found: dict[str, tuple[Any, ...]] = {}
    if space.backbone:
        found["backbone"] = tuple(b.label for b in space.backbone)
    for key in ("batch_size", "loss", "max_epochs"):
        if getattr(space, key):
            found[key] = tuple(getattr(space, key))
    return found


def baseline_params(run: StudyFile) -> dict[str, Any]:
    """The baseline: :data:`BASELINE_LEARNING_RATE` with the first of every choice."""
    params: dict[str, Any] = {"learning_rate": BASELINE_LEARNING_RATE}
    params.update({key: values[0] for key, values in choices(run).items()})
    return params


def sample(trial: optuna.Trial, run: StudyFile) -> StudyFile:
    """The trial's settings: ``run`` with every searched key replaced by a sampled value.

    The learning rate is sampled here too; :mod:`tuner.hpo.lr_finder` may replace it with the LR
    finder's result (see ``study.lr_finder.mode``).
    """
    space = run.search
    model, data, trainer = run.model, run.data, run.trainer
    picked = {key: trial.suggest_categorical(key, values) for key, values in choices(run).items()}
    if "backbone" in picked:
        model = replace(model, backbone=next(b for b in space.backbone if b.label == picked["backbone"]))
    if "loss" in picked:
        model = replace(model, loss=picked["loss"])
    if "batch_size" in picked:
        data = replace(data, batch_size=picked["batch_size"])
    if "max_epochs" in picked:
        trainer = replace(trainer, max_epochs=picked["max_epochs"])
    if space.weight_decay is not None:
        model = replace(model, weight_decay=trial.suggest_float("weight_decay", *space.weight_decay))
    if space.warmup is not None:
        model = replace(model, warmup=trial.suggest_float("warmup", *space.warmup))
    learning_rate = trial.suggest_float("learning_rate", *space.learning_rate, log=True)
    model = replace(model, learning_rate=learning_rate)
    return replace(run, model=model, data=data, trainer=trainer)
