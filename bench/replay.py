"""Search policies replayed against a learning-curve table (``bench/lc_table.py``), hundreds of seeds in minutes.

    python -m bench.replay [TABLE.json ...] [--seeds 200] [--budget-trials 30] [--variant NAME:KEY=VALUE,...]
                           [--policies random optuna_example ...] [--rates {snap,interpolate}] [--no-markdown]
    make bench-replay

Each policy is run unchanged through Optuna's ask/tell: its sampler picks a backbone, a batch size and a
learning rate; the trial's result is the table's curve of that configuration, with one of the table's training
seeds drawn at random. ``--rates snap`` (the default) takes the nearest grid rate in log-rate;
``--rates interpolate`` interpolates the validation and test tau in log-rate between the two neighbouring grid
rates, and takes steps, costs and divergence from the nearer one. The trial reports
its validations to the policy's pruner, which may stop it there. Seed ``i`` gives every policy the same draws
of training seeds (its k-th trial gets the k-th draw), so policies are compared pair by pair.

Compute is charged from the table, never from a clock: the training tokens up to where the trial stopped
and its own validations (a policy that validates once an epoch pays for those only), each at the median
CPU seconds per token and per validation of its (backbone, batch size) over the configurations trained on
the table's first machine, so that one configuration measured while the machine was busy does not skew the
rest, and a table resumed on another machine gains curves but keeps one price list; the fixed costs each trial pays
(loading the backbone; tokenising, unless the policy caches it); and the LR finder's measured cost the first
time a policy runs it for a (backbone, batch size). Each replay seed draws one of the table's finder curves
per (backbone, batch size), as a live search's finder runs under its own seed, and pays that curve's cost.
The budget is ``--budget-trials`` times the mean cost of one whole configuration.

Reported per table: the anytime median normalised regret ``(tau* - best) / tau*`` with a bootstrap 95% band
(``tau*``: the best configuration's validation tau, averaged over its training seeds; ``best``: the policy's
best finished trial so far, what ``study.best_value`` would say); the compute each policy needs to come within
0.01 of ``tau*`` (censored at the budget where it never does); every policy's median speed-up over every
other at that target, with a paired Wilcoxon test; and the test tau of the configuration each policy chooses
at the end (its best trial's checkpoint), and whether tuner meets its targets (``targets`` in the JSON).
Results: ``bench/results/replay_<table>.json`` (``replay_<table>_interpolated.json`` with ``--rates
interpolate``), a PNG beside it, and a section of ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import re
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from bench._common import RESULTS, ROOT, replace_section

if TYPE_CHECKING:
    from tuner.config.schema import LRFinderConfig

TARGET_GAP = 0.01  # "within 0.01 tau of the table's best configuration"
BUDGET_POINTS = [round(0.05 * i, 2) for i in range(1, 21)]  # fractions of the budget for the anytime curves
TABLES = ("lc_table_nips.json", "lc_table_rocstories.json")
INTERPOLATED = "_interpolated"  # the results file's suffix where the replay interpolates the rate
PEERS = ("random", "optuna_example", "tpe_hyperband", "hf")  # what users would run instead of tuner


@dataclass(frozen=True)
class Policy:
    """A search policy as the replay runs it.

    Args:
        sampler: ``random``, ``tpe`` (Optuna's ``TPESampler`` with ``sampler_options``), ``tuner`` (the
            sampler ``tuner.hpo.search.build_sampler`` makes from ``study.sampler``'s defaults), or ``oracle``
            (every trial is the table's best configuration: no search can need less compute on average).
        pruner: ``none``, ``median`` (Optuna's ``MedianPruner`` with ``pruner_options``), ``hyperband``,
            ``successive_halving``, or ``tuner`` (``build_pruner`` from ``study.pruner``'s defaults).
        evals: ``epoch`` (a validation at each epoch's end, Lightning's default) or ``all`` (every validation
            the table holds).
        objective: ``last`` (the last validation, as optuna-examples and HF return) or ``best``.
        baseline: the first trial is tuner's baseline (``BASELINE_LEARNING_RATE``, the first of each choice).
        baseline_per_backbone: with ``baseline``, one baseline trial per backbone, in the study file's order.
        baseline_finder: with ``baseline`` and a finder, the baseline runs the finder and trains at its
            suggestion times the middle of the multiplier range where it is reliable, instead of
            ``BASELINE_LEARNING_RATE``.
        finder: ``off``, or ``tuner`` (tuner's LR-finder rule: scale mode, run where it costs at most
            ``max_cost`` of the trial's steps, its suggestion times a sampled multiplier when reliable).
        finder_max_cost, finder_multiplier: override ``LRFinderConfig.max_cost`` and ``.multiplier``.
        finder_baseline: the baseline's multiplier of the suggestion, where it is not the middle of the range.
        finder_scope: ``config`` runs the finder once per (backbone, batch size); ``study`` scales every
            trial's rate from the first reliable suggestion, running the finder for each new (backbone, batch
            size) only until one is reliable.
        lr_range: the sampler's learning-rate range, where it is narrower than the table's (a prior).
        cache: tokenisation is cached across trials (tuner), else paid by every trial.
        per_backbone: HF's ``hyperparameter_search``: its data set is tokenised once, before the search, so
            backbones that share a tokenizer are one search (``model_init(trial)`` draws the backbone) and
            backbones that do not are one search each, with an equal share of the budget.
        stop_diverged: a trial whose training loss is not finite ends at that step (tuner's NaN guard).
        warm_start: another table (a path, or a file name in ``bench/results``): the same policy searches it
            first with the same replay seed, and its finished trials seed this search's sampler, as
            a study seeded with another study's trials would; their compute is not charged.
        backbones_reversed: the study file lists the backbones the other way round (the baseline takes the
            first).
        trial_overhead_cpu_s: CPU seconds every trial pays beyond the table's prices (the system's own set-up,
            checkpoints and bookkeeping between trials), as ``bench.agreement`` measures them on a live run.
    """

    name: str
    sampler: str = "tpe"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    pruner: str = "median"
    pruner_options: dict[str, Any] = field(default_factory=dict)
    evals: str = "epoch"
    objective: str = "last"
    baseline: bool = False
    finder: str = "off"
    baseline_per_backbone: bool = False
    baseline_finder: bool = False
    finder_max_cost: float | None = None
    finder_multiplier: tuple[float, float] | None = None
    finder_baseline: float | None = None
    finder_scope: str = "config"
    lr_range: tuple[float, float] | None = None
    cache: bool = False
    per_backbone: bool = False
    stop_diverged: bool = False
    warm_start: str | None = None
    backbones_reversed: bool = False
    trial_overhead_cpu_s: float = 0.0


def default_policies() -> dict[str, Policy]:
    """The peers as their users run them, and tuner with its defaults (read from tuner's own code)."""
    from tuner.config.schema import StudyConfig, TrainerConfig

    study, trainer = StudyConfig(), TrainerConfig()
    return {
        # the floor: every trial is the table's best configuration, so only the training seed's luck is left
        "oracle": Policy("oracle", sampler="oracle", pruner="none", objective="best", cache=True),
        "random": Policy("random", sampler="random", pruner="none"),
        # optuna-examples pytorch_lightning_simple.py: TPESampler(), MedianPruner(), report at each epoch's end
        "optuna_example": Policy("optuna_example", sampler="tpe", pruner="median"),
        # Optuna's advice for TPE: Hyperband (the pruner's documentation and the benchmarks it links)
        "tpe_hyperband": Policy("tpe_hyperband", sampler="tpe", pruner="hyperband"),
        # Trainer.hyperparameter_search(backend="optuna"): TPE, create_study's MedianPruner, one search a tokenizer
        "hf": Policy("hf", sampler="tpe", pruner="median", per_backbone=True),
        # trainer.val_check_interval="auto" validates 4 times an epoch where it has 40 batches, as the tables do
        "tuner": Policy("tuner", sampler="tuner", pruner="tuner", objective=study.objective, baseline=study.baseline,
                        baseline_finder=True, finder="tuner" if study.lr_finder.mode != "off" else "off",
                        finder_scope=study.lr_finder.scope, evals="all" if trainer.val_check_interval == "auto" else
                        "epoch", cache=True, stop_diverged=True),
    }


def parse_variant(text: str, base: dict[str, Policy]) -> Policy:
    """``NAME:KEY=VALUE,...`` on top of tuner's defaults (``KEY`` a :class:`Policy` field; values are JSON or
    plain strings; ``sampler.X`` and ``pruner.X`` set an option)."""
    name, _, assignments = text.partition(":")
    policy = replace(base["tuner"], name=name)
    for item in filter(None, re.split(r",(?![^\[]*\])", assignments)):  # a list value keeps its commas
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--variant {text!r}: {item!r} is not KEY=VALUE")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if key.startswith(("sampler.", "pruner.")):
            group, option = key.split(".", 1)
            options = dict(getattr(policy, f"{group}_options"))
            options[option] = value
            policy = replace(policy, **{f"{group}_options": options})
        elif key in Policy.__dataclass_fields__ and key != "name":
            policy = replace(policy, **{key: tuple(value) if isinstance(value, list) else value})
        else:
            known = sorted(Policy.__dataclass_fields__)
            raise SystemExit(f"--variant {text!r}: unknown key {key!r}; use one of {known}")
    return policy


# --- the table -------------------------------------------------------------------------------------------------

@dataclass
class Table:
    """A learning-curve table, indexed for the replay."""

    path: Path
    raw: dict[str, Any]
    backbones: list[str]
    batch_sizes: list[int]
    rates: list[float]
    seeds: list[int]
    low: float
    high: float
    epochs: int
    evals_per_epoch: int
    interpolate: bool = False

    @classmethod
    def load(cls, path: Path, interpolate: bool = False) -> Table:
        raw = json.loads(path.read_text())
        configs = list(raw["configs"].values())
        if not configs:
            raise SystemExit(f"{path}: no configuration trained yet")
        settings = raw["settings"]
        order = _study_order(raw)
        table = cls(path, raw, _in_order({c["backbone"] for c in configs}, order.get("backbone", ())),
                    _in_order({c["batch_size"] for c in configs}, order.get("batch_size", ())),
                    sorted({c["learning_rate"] for c in configs}),
                    sorted({c["seed"] for c in configs}), *settings["learning_rate_range"], settings["epochs"],
                    settings["evals_per_epoch"], interpolate)
        missing = [f"{b}|{s}|{lr:.4g}|{seed}" for b in table.backbones for s in table.batch_sizes
                   for lr in table.rates for seed in table.seeds
                   if f"{b}|{s}|{lr:.4g}|{seed}" not in raw["configs"]]
        if missing:
            raise SystemExit(f"{path}: {len(missing)} configurations of the grid are missing (first: {missing[0]}); "
                             "finish the table (run its bench/lc_table.py command again) before replaying")
        return table

    def curve(self, backbone: str, batch_size: int, rate: float, seed: int) -> dict[str, Any]:
        return self.raw["configs"][f"{backbone}|{batch_size}|{rate:.4g}|{seed}"]  # type: ignore[no-any-return]

    def snap(self, learning_rate: float) -> float:
        """The grid's learning rate nearest in log-rate."""
        return min(self.rates, key=lambda r: abs(math.log(r) - math.log(learning_rate)))

    def at(self, backbone: str, batch_size: int, learning_rate: float, seed: int) -> dict[str, Any]:
        """The curve a trial at ``learning_rate`` gets: with :attr:`interpolate`, each validation's taus
        interpolated in log-rate between the two grid rates around it (the same training seed; where one curve
        is longer, the nearer rate's), and the nearer rate's steps, costs and divergence; else the nearest
        grid rate's curve."""
        nearest = self.curve(backbone, batch_size, self.snap(learning_rate), seed)
        if not self.interpolate or learning_rate in self.rates or not self.rates[0] < learning_rate < self.rates[-1]:
            return nearest
        high = next(r for r in self.rates if r >= learning_rate)
        low = self.rates[self.rates.index(high) - 1]
        weight = (math.log(learning_rate) - math.log(low)) / (math.log(high) - math.log(low))
        below, above = self.curve(backbone, batch_size, low, seed), self.curve(backbone, batch_size, high, seed)
        points = []
        for index, point in enumerate(nearest["curve"]):
            point = dict(point)
            if index < min(len(below["curve"]), len(above["curve"])):
                for key in ("val_kendall_tau", "test_kendall_tau"):
                    a, b = _finite(below["curve"][index][key]), _finite(above["curve"][index][key])
                    point[key] = (1 - weight) * a + weight * b
            points.append(point)
        return {**nearest, "learning_rate": learning_rate, "curve": points}

    def config_mean(self, backbone: str, batch_size: int, rate: float) -> float:
        """A configuration's best validation tau, averaged over its training seeds."""
        return statistics.fmean(_best_val(self.curve(backbone, batch_size, rate, s)) for s in self.seeds)

    def finders(self, backbone: str, batch_size: int) -> list[dict[str, Any]]:
        """The LR-finder curves of (backbone, batch size), one per seed; a table from before finder seeds holds
        one curve, not a list."""
        found = self.raw.get("finder", {}).get(f"{backbone}|{batch_size}") or []
        return [found] if isinstance(found, dict) else found  # type: ignore[no-any-return]

    def best_config(self) -> tuple[float, tuple[str, int, float]]:
        if not hasattr(self, "_best"):
            self._best = max((self.config_mean(b, s, r), (b, s, r)) for b in self.backbones
                             for s in self.batch_sizes for r in self.rates)
        return self._best

    def __post_init__(self) -> None:
        # The cost model: a (backbone, batch size)'s median CPU s per training token and per validation over
        # the configurations trained on the table's first machine, so that a configuration trained while the
        # machine was busy is not charged more, and sittings on other machines add curves, not prices.
        sittings = self.raw.get("sittings", [])
        reference = _machine_key(sittings[0]["machine"]) if sittings else None
        groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for config in self.raw["configs"].values():
            sitting = config.get("sitting", 0)
            machine = _machine_key(sittings[sitting]["machine"]) if sitting < len(sittings) else None
            if config["curve"] and machine == reference:
                groups.setdefault((config["backbone"], config["batch_size"]), []).append(config)
        unpriced = {(c["backbone"], c["batch_size"]) for c in self.raw["configs"].values()} - set(groups)
        if unpriced:
            raise SystemExit(f"{self.path}: no configuration of {sorted(unpriced)[0]} was trained on the table's "
                             "first machine, so its cost cannot be priced")
        self.prices = {
            key: (statistics.median(c["curve"][-1]["train_cpu_s"] / max(1, c["curve"][-1]["tokens"]) for c in found),
                  statistics.median(c["curve"][-1]["val_cpu_s"] / len(c["curve"]) for c in found))
            for key, found in groups.items()}

    def cost(self, config: dict[str, Any], evaluated: Sequence[int], upto: int) -> float:
        """CPU seconds of training ``config`` to validation ``evaluated[upto]``, with the validations run so far."""
        per_token, per_validation = self.prices[(config["backbone"], config["batch_size"])]
        return per_token * config["curve"][evaluated[upto]]["tokens"] + per_validation * (upto + 1)

    def full_cost(self, policy: Policy) -> float:
        """Mean CPU seconds of one whole configuration as ``policy`` validates it."""
        costs = []
        for config in self.raw["configs"].values():
            records = _evaluated(config["curve"], policy.evals, self.evals_per_epoch)
            costs.append(self.cost(config, records, len(records) - 1) if records else 0.0)
        return statistics.fmean(costs)


def _machine_key(machine: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two sittings' CPU seconds comparable: the processor, its threads and the precision."""
    return tuple(machine.get(k) for k in ("cpu_model", "cpu_capability", "amx", "torch_threads", "precision"))


def _study_order(raw: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    """The choices (``backbone``, ``batch_size``, ...) in the order of the study file and overrides the table was
    built from, as tuner's baseline takes the first of each; none for a table without one (a test's)."""
    settings = raw["settings"]
    if "study" not in settings:
        return {}
    from tuner.config.loader import read_study_file
    from tuner.hpo.search import choices

    path = ROOT / "studies" / f"{settings['study']}.toml"
    if not path.is_file():
        raise SystemExit(f"{path}: the study file this table was built from is missing")
    return choices(read_study_file(path, settings.get("overrides", [])))


def _in_order(values: set[Any], order: Sequence[Any]) -> list[Any]:
    """``values`` in ``order``, then any it does not list, sorted."""
    return sorted(values, key=lambda value: (order.index(value) if value in order else len(order), value))


def _finite(value: float | None) -> float:
    """A stored tau as the replay scores it: a missing or non-finite one (a diverged run) is 0."""
    return 0.0 if value is None or not math.isfinite(value) else float(value)


def _best_val(config: dict[str, Any]) -> float:
    return max((r["val_kendall_tau"] for r in config["curve"] if r["val_kendall_tau"] is not None), default=0.0)


def _evaluated(curve: Sequence[dict[str, Any]], evals: str, per_epoch: int) -> list[int]:
    """Indices of the table's validations the policy runs."""
    if evals == "all":
        return list(range(len(curve)))
    return [i for i in range(len(curve)) if (i + 1) % per_epoch == 0]


# --- one replay -----------------------------------------------------------------------------------------------

def _sampler(policy: Policy, seed: int) -> optuna.samplers.BaseSampler:
    if policy.sampler in ("random", "oracle"):
        return optuna.samplers.RandomSampler(seed=seed)
    if policy.sampler == "tuner":
        from tuner.config.schema import SamplerConfig
        from tuner.hpo.search import build_sampler

        return build_sampler(SamplerConfig(seed=seed, options=dict(policy.sampler_options)), None)  # type: ignore[arg-type]
    return optuna.samplers.TPESampler(seed=seed, **policy.sampler_options)


def _pruner(policy: Policy) -> optuna.pruners.BasePruner:
    options = dict(policy.pruner_options)
    if policy.pruner == "tuner":
        from tuner.config.schema import PrunerConfig
        from tuner.hpo.search import build_pruner

        return build_pruner(PrunerConfig(type=options.pop("type", PrunerConfig().type), options=options))
    if policy.pruner == "median":
        return optuna.pruners.MedianPruner(**options)
    if policy.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(**options)
    if policy.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(**options)
    return optuna.pruners.NopPruner()


def _finder(table: Table, backbone: str, batch_size: int, seed: int) -> dict[str, Any] | None:
    """The finder curve replay seed ``seed`` gets for (backbone, batch size): one of the table's curves, drawn by
    the seed, as a live search's finder runs under its own."""
    curves = table.finders(backbone, batch_size)
    return curves[seed % len(curves)] if curves else None


def _warm_trials(policy: Policy, seed: int, budget_trials: float, interpolate: bool
                 ) -> list[optuna.trial.FrozenTrial]:
    """The finished trials of ``policy`` on its ``warm_start`` table, as trials another study can take."""
    assert policy.warm_start is not None
    path = Path(policy.warm_start)
    other = _cached_table(path if path.is_file() else RESULTS / path, interpolate)
    cold = replace(policy, warm_start=None)
    found = replay(other, cold, seed, budget_trials * other.full_cost(Policy("full", evals="epoch")), keep=True)
    return [optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=t.value,
                                      user_attrs={"warm_start": True})
            for t in found["study_trials"] if t.state == optuna.trial.TrialState.COMPLETE]


def tokenizer_of(label: str) -> str:
    """The tokenizer of a backbone label (``name[options]``): its model's name; cuts of one model share it."""
    return label.split("[")[0]


def search_parts(backbones: Sequence[str]) -> list[list[str]]:
    """HF's searches over backbone labels: one over all of them where they share a tokenizer, else one per
    backbone (``bench.head_to_head.hf_parts``)."""
    names = {tokenizer_of(label) for label in backbones}
    return [list(backbones)] if len(names) == 1 else [[b] for b in backbones]


def trial_fixed_cost(table: Table, policy: Policy, backbone: str, tokenized: set[str]) -> float:
    """What a trial of ``backbone`` pays besides training: loading it, tokenising (from tuner's cache once this
    search has tokenised it; HF once per tokenizer and search; else afresh), and the policy's per-trial
    overhead. ``tokenized`` is what the search has tokenised so far, and gains this trial's."""
    costs = table.raw["fixed_costs"]["backbones"][backbone]
    paid = costs["load_cpu_s"] + policy.trial_overhead_cpu_s
    if policy.cache and backbone in tokenized:
        paid += costs["tokenize_cached_cpu_s"]
    elif not (policy.per_backbone and tokenizer_of(backbone) in tokenized):
        paid += costs["tokenize_cpu_s"]
    tokenized.update((backbone, tokenizer_of(backbone)))
    return paid


def replay(table: Table, policy: Policy, seed: int, budget: float, budget_trials: float = 30.0, keep: bool = False
           ) -> dict[str, Any]:
    """One search by ``policy`` with replay seed ``seed``: the trials it ran and its anytime best.
    ``budget_trials`` sizes the search on a ``warm_start`` table; ``keep`` returns the Optuna trials too."""
    draws = random.Random(f"draws-{seed}")  # the training seed of each trial: shared by every policy
    seeds = [draws.choice(table.seeds) for _ in range(10_000)]
    fixed = table.raw["fixed_costs"]
    spent = float(fixed["import_cpu_s"])
    events: list[tuple[float, float, float]] = []  # (cpu_s, best value so far, its test tau)
    best = (-math.inf, math.nan)
    trials: list[dict[str, Any]] = []
    listed = table.backbones[::-1] if policy.backbones_reversed else table.backbones
    parts = search_parts(listed) if policy.per_backbone else [listed]
    studies: list[optuna.Study] = []
    for part_index, backbones in enumerate(parts):
        part_budget = spent + (budget - spent) / (len(parts) - part_index)
        study = optuna.create_study(direction="maximize", sampler=_sampler(policy, seed * 10 + part_index),
                                    pruner=_pruner(policy))
        studies.append(study)
        if policy.warm_start:
            study.add_trials(_warm_trials(policy, seed, budget_trials, table.interpolate))
        if policy.baseline:
            from tuner.hpo.search import BASELINE_LEARNING_RATE

            for backbone in backbones if policy.baseline_per_backbone else backbones[:1]:
                study.enqueue_trial({"backbone": backbone, "batch_size": table.batch_sizes[0],
                                     "learning_rate": BASELINE_LEARNING_RATE,
                                     **({"lr_multiplier": policy.finder_baseline
                                         or _finder_config(policy).baseline_multiplier}
                                        if policy.baseline_finder else {})},
                                    user_attrs={"baseline": True})
        finders: dict[str, None] = {}  # the finder curves run so far, in order
        tokenized: set[str] = set()
        low, high = policy.lr_range or (table.low, table.high)
        while spent < part_budget:
            if policy.sampler == "oracle":
                best_backbone, best_batch, best_rate = table.best_config()[1]
                study.enqueue_trial({"backbone": best_backbone, "batch_size": best_batch,
                                     "learning_rate": best_rate})
            trial = study.ask()
            backbone = trial.suggest_categorical("backbone", backbones)
            batch_size = trial.suggest_categorical("batch_size", table.batch_sizes)
            learning_rate = trial.suggest_float("learning_rate", low, high, log=True)
            sampled_rate = learning_rate
            training_seed = seeds[len(trials)]
            spent += trial_fixed_cost(table, policy, backbone, tokenized)
            if policy.finder == "tuner" and (policy.baseline_finder or not trial.user_attrs.get("baseline")):
                learning_rate, finder_cost = _finder_rate(table, policy, trial, backbone, batch_size, learning_rate,
                                                          finders, seed)
                spent += finder_cost
            config = table.at(backbone, batch_size, learning_rate, training_seed)
            rate = config["learning_rate"]
            curve = config["curve"]
            evaluated = _evaluated(curve, policy.evals, table.evals_per_epoch)
            values: list[float] = []
            value: float | None = None
            state = optuna.trial.TrialState.COMPLETE
            for n, index in enumerate(evaluated):
                cost = table.cost(config, evaluated, n)
                if spent + cost > part_budget:
                    state = None  # the budget ran out inside this trial
                    spent = part_budget
                    break
                tau = _finite(curve[index]["val_kendall_tau"])
                values.append(tau)
                trial.report(tau, n)
                if trial.should_prune():
                    state = optuna.trial.TrialState.PRUNED
                    spent += cost
                    break
            else:
                spent += table.cost(config, evaluated, len(evaluated) - 1) if evaluated else 0.0
                if config["diverged_at"] is not None and not policy.stop_diverged:
                    spent += _remaining_cost(config, table)  # a run that diverged trains on to its last epoch
                    values.append(0.0)
            if state is None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            elif state == optuna.trial.TrialState.PRUNED or not values:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED if values else optuna.trial.TrialState.FAIL)
            else:
                value = max(values) if policy.objective == "best" else values[-1]
                chosen = values.index(value) if policy.objective == "best" else len(values) - 1
                study.tell(trial, value)
                if value > best[0]:
                    record = curve[evaluated[chosen]] if chosen < len(evaluated) else curve[-1]
                    best = (value, float(record["test_kendall_tau"] or 0.0))
                    events.append((spent, value, best[1]))
            trials.append({"backbone": backbone, "batch_size": batch_size, "rate": rate, "seed": training_seed,
                           "sampled_rate": sampled_rate, "value": value,
                           "state": state.name if state else "BUDGET", "validations": len(values),
                           "cpu_s": round(spent, 1)})
            if state is None:
                break
    result = {"events": events, "trials": trials, "spent": spent}
    if keep:
        result["study_trials"] = [t for study in studies for t in study.get_trials(deepcopy=False)]
    return result


def _finder_rate(table: Table, policy: Policy, trial: optuna.Trial, backbone: str, batch_size: int,
                 sampled: float, finders: dict[str, None], seed: int) -> tuple[float, float]:
    """tuner's LR-finder rule (``tuner.hpo.objective.Objective._learning_rate``) on the table's finder curve."""
    config = _finder_config(policy)
    key = f"{backbone}|{batch_size}"
    if policy.finder_scope == "study":  # the first reliable curve serves every trial; until then, each its own
        key = next((k for k in finders if (_finder(table, *_split(k), seed) or {}).get("reliable")), key)
        backbone, batch_size = _split(key)
    found = _finder(table, backbone, batch_size, seed)
    if found is None:
        return sampled, 0.0
    steps = next(c["steps_per_epoch"] for c in table.raw["configs"].values() if c["batch_size"] == batch_size)
    if key not in finders and found["num_training"] > config.max_cost * steps * table.epochs:
        return sampled, 0.0
    cost = 0.0 if key in finders else float(found["cpu_s"])
    finders[key] = None
    if not found["reliable"]:
        return sampled, cost
    multiplier = trial.suggest_float("lr_multiplier", *config.multiplier, log=True)
    return float(found["suggestion"]) * multiplier, cost


def _finder_config(policy: Policy) -> LRFinderConfig:
    """tuner's ``LRFinderConfig`` with the policy's overrides of ``max_cost`` and ``multiplier``."""
    from tuner.config.schema import LRFinderConfig

    config = LRFinderConfig()
    return replace(config, max_cost=config.max_cost if policy.finder_max_cost is None else policy.finder_max_cost,
                   multiplier=policy.finder_multiplier or config.multiplier)


def _split(key: str) -> tuple[str, int]:
    backbone, batch_size = key.rsplit("|", 1)
    return backbone, int(batch_size)


def _remaining_cost(config: dict[str, Any], table: Table) -> float:
    """Training CPU seconds a diverged run would have spent after its last recorded validation."""
    curve = config["curve"]
    if not curve or not curve[-1]["step"]:
        return 0.0
    per_token = table.prices[(config["backbone"], config["batch_size"])][0]
    per_step = per_token * curve[-1]["tokens"] / curve[-1]["step"]
    return per_step * max(0, config["steps_per_epoch"] * table.epochs - curve[-1]["step"])


# --- statistics -----------------------------------------------------------------------------------------------

def best_at(events: Sequence[Sequence[float]], cpu_s: float) -> float | None:
    found = None
    for at, value, _ in events:
        if at <= cpu_s:
            found = value
    return found


def compute_to(events: Sequence[Sequence[float]], target: float) -> float | None:
    """CPU seconds at which the best value first reached ``target``; None if it never did."""
    return next((at for at, value, _ in events if value >= target), None)


def bootstrap_median(values: Sequence[float], rounds: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """The median and a 95% bootstrap band around it."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(rounds))
    return statistics.median(values), medians[int(0.025 * rounds)], medians[int(0.975 * rounds) - 1]


def paired_speedup(mine: Sequence[float | None], theirs: Sequence[float | None], budget: float) -> dict[str, Any]:
    """Median over seeds of ``theirs / mine`` in compute to the target, with a bootstrap 95% band, a miss counted
    as the whole budget (which flatters whoever missed), and the Wilcoxon signed-rank test on the paired log
    costs."""
    from scipy.stats import wilcoxon

    a = [budget if v is None else v for v in mine]
    b = [budget if v is None else v for v in theirs]
    ratios = [y / x for x, y in zip(a, b, strict=True)]
    differences = [math.log(y) - math.log(x) for x, y in zip(a, b, strict=True)]
    p = 1.0
    if any(differences):
        p = float(wilcoxon(differences, zero_method="zsplit", alternative="two-sided").pvalue)
    return {"median_ratio": statistics.median(ratios), "median_ratio_band": list(bootstrap_median(ratios, 300)[1:]),
            "p_value": p,
            "faster_in": sum(d > 0 for d in differences), "slower_in": sum(d < 0 for d in differences),
            "seeds": len(ratios)}


def summarize(table: Table, runs: dict[str, list[dict[str, Any]]], budget: float) -> dict[str, Any]:
    tau_star, best = table.best_config()
    target = tau_star - TARGET_GAP
    policies: dict[str, Any] = {}
    reach: dict[str, list[float | None]] = {}
    for name, results in runs.items():
        regret = {}
        for fraction in BUDGET_POINTS:
            values = [best_at(r["events"], fraction * budget) for r in results]
            regret[str(fraction)] = bootstrap_median([(tau_star - (v if v is not None else 0.0)) / tau_star
                                                      for v in values])
        reach[name] = [compute_to(r["events"], target) for r in results]
        finals = [r["events"][-1] if r["events"] else None for r in results]
        reached = [v for v in reach[name] if v is not None]
        policies[name] = {
            "regret": regret,
            "compute_to_target": {"reached": len(reached), "seeds": len(results),
                                  "median_cpu_s": statistics.median([budget if v is None else v
                                                                     for v in reach[name]])},
            "final_val_tau": bootstrap_median([f[1] if f else 0.0 for f in finals]),
            "final_test_tau": bootstrap_median([f[2] if f else 0.0 for f in finals]),
            "trials": statistics.median(len(r["trials"]) for r in results),
            "pruned_share": statistics.fmean(sum(t["state"] == "PRUNED" for t in r["trials"]) / max(1, len(r["trials"]))
                                             for r in results),
        }
    speedups = {a: {b: paired_speedup(reach[a], reach[b], budget) for b in runs if b != a} for a in runs}
    regrets = {name: {f: [(tau_star - (v if v is not None else 0.0)) / tau_star
                          for v in (best_at(r["events"], f * budget) for r in results)] for f in BUDGET_POINTS}
               for name, results in runs.items()}
    versus = {a: {b: regret_versus(regrets[a], regrets[b], policies[b]["regret"]) for b in runs if b in PEERS}
              for a in runs if a not in PEERS and a != "oracle"}
    return {"tau_star": tau_star, "best_config": list(best), "target": target, "budget_cpu_s": budget,
            "policies": policies, "speedup": speedups, "regret_versus": versus}


SPEEDUP_TARGET = 3.0  # tuner's target: at most a third of the optuna-examples recipe's compute to the target


def targets(summary: dict[str, Any]) -> dict[str, Any]:
    """tuner's defaults against the targets they are held to: the speed-up over the optuna-examples recipe (the
    median of the paired ratios, its Wilcoxon p, and the ratio of the medians), the budgets at which tuner's
    median regret is above a peer's band, and whether its final test tau is at least each peer's (its median
    at or above the bottom of the peer's band)."""
    policies, speedup = summary["policies"], summary["speedup"]["tuner"]
    found: dict[str, Any] = {}
    if "optuna_example" in speedup:
        s = speedup["optuna_example"]
        medians = [policies[n]["compute_to_target"]["median_cpu_s"] for n in ("optuna_example", "tuner")]
        found["speedup_vs_optuna_example"] = {
            "median_ratio": s["median_ratio"], "median_ratio_band": s["median_ratio_band"], "p_value": s["p_value"],
            "ratio_of_medians": medians[0] / medians[1],
            "met": s["median_ratio"] >= SPEEDUP_TARGET and s["p_value"] < 0.01}
    versus = summary["regret_versus"].get("tuner", {})
    found["behind_at"] = {peer: [f for f, v in found_peer["budgets"].items() if not v["not_behind"]]
                          for peer, found_peer in versus.items()}
    found["never_behind"] = not any(found["behind_at"].values())
    tuner_test = policies["tuner"]["final_test_tau"][0]
    found["test_tau"] = {name: policies[name]["final_test_tau"][0] for name in [*versus, "tuner"]}
    found["test_tau_at_least_peers"] = all(tuner_test >= policies[peer]["final_test_tau"][1] for peer in versus)
    return found


def regret_versus(mine: dict[float, list[float]], theirs: dict[float, list[float]],
                  their_bands: dict[str, Sequence[float]], rounds: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Per budget from 10% on: the paired mean difference in regret (mine minus theirs) with a bootstrap 95%
    band, and whether my median regret is at or below the top of their median's band (not behind)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    points = {}
    for fraction in (f for f in BUDGET_POINTS if f >= 0.1):
        difference = np.asarray(mine[fraction]) - np.asarray(theirs[fraction])
        means = difference[rng.integers(0, len(difference), (rounds, len(difference)))].mean(axis=1)
        low, high = np.quantile(means, [0.025, 0.975])
        points[str(fraction)] = {"mean_difference": [float(difference.mean()), float(low), float(high)],
                                 "not_behind": statistics.median(mine[fraction]) <= their_bands[str(fraction)][2]}
    return {"budgets": points, "never_behind": all(p["not_behind"] for p in points.values())}


def _replay_one(args: tuple[Path, Policy, int, float, float, bool]) -> tuple[str, int, dict[str, Any]]:
    path, policy, seed, budget, budget_trials, interpolate = args
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    result = replay(_cached_table(path, interpolate), policy, seed, budget, budget_trials)
    return policy.name, seed, result


_TABLES: dict[tuple[str, bool], Table] = {}


def _cached_table(path: Path, interpolate: bool) -> Table:
    """A table loaded once per worker process and rate mode."""
    if (str(path), interpolate) not in _TABLES:
        _TABLES[(str(path), interpolate)] = Table.load(path, interpolate)
    return _TABLES[(str(path), interpolate)]


def run_table(path: Path, policies: Sequence[Policy], seeds: int, budget_trials: float, workers: int,
              interpolate: bool = False) -> dict[str, Any]:
    table = Table.load(path, interpolate)
    budget = budget_trials * table.full_cost(Policy("full", evals="epoch"))
    jobs = [(path, policy, seed, budget, budget_trials, interpolate) for policy in policies
            for seed in range(seeds)]
    runs: dict[str, list[dict[str, Any]]] = {p.name: [{}] * seeds for p in policies}
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for name, seed, result in pool.imap_unordered(_replay_one, jobs, chunksize=4):
            runs[name][seed] = result
    summary = summarize(table, runs, budget)
    if "tuner" in runs:
        summary["targets"] = targets(summary)
    machines = [s["machine"] for s in table.raw["sittings"]]
    return {"table": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
            "table_settings": table.raw["settings"], "table_machines": machines, "seeds": seeds,
            "rates": "interpolate" if interpolate else "snap",
            "budget_trials": budget_trials, "policies": {p.name: _policy_json(p) for p in policies}, **summary,
            "finder_curves": finder_curves(table),
            "trials_seed0": {name: results[0]["trials"] for name, results in runs.items()}}


def finder_curves(table: Table) -> dict[str, Any]:
    """Each (backbone, batch size)'s best grid rate (by mean validation tau over seeds) and, for each of its
    finder curves, the suggestion, the verdict, the cost and how far the best rate lies above the suggestion."""
    found: dict[str, Any] = {}
    for backbone in table.backbones:
        for batch_size in table.batch_sizes:
            best = max(table.rates, key=lambda rate: table.config_mean(backbone, batch_size, rate))
            found[f"{backbone}|{batch_size}"] = {"best_rate": best, "curves": [
                {"seed": c.get("seed"), "suggestion": c["suggestion"], "reliable": c["reliable"],
                 "cpu_s": c["cpu_s"], "best_over_suggestion": best / c["suggestion"] if c["suggestion"] else None}
                for c in table.finders(backbone, batch_size)]}
    return found


def _policy_json(policy: Policy) -> dict[str, Any]:
    return {k: getattr(policy, k) for k in Policy.__dataclass_fields__ if k != "name"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tables", nargs="*", type=Path, help=f"default: {', '.join(TABLES)} in bench/results")
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--budget-trials", type=float, default=30.0)
    parser.add_argument("--policies", nargs="*", default=None)
    parser.add_argument("--variant", action="append", default=[], help="NAME:KEY=VALUE,... on tuner's defaults")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rates", choices=("snap", "interpolate"), default="snap",
                        help="a sampled learning rate takes the nearest grid rate's curve, or one interpolated in "
                             "log-rate between the two around it")
    parser.add_argument("--output", type=Path, default=None, help="with one table: the results file")
    parser.add_argument("--no-markdown", action="store_true", help="leave BENCHMARKS.md and the PNG alone")
    args = parser.parse_args(argv)
    base = default_policies()
    chosen = [base[name] for name in (args.policies or list(base))] + [parse_variant(v, base) for v in args.variant]
    tables = args.tables or [RESULTS / name for name in TABLES]
    interpolate = args.rates == "interpolate"
    for path in tables:
        if not path.is_file():
            print(f"skipped: {path} does not exist (build it with make bench-table)", file=sys.stderr)
            continue
        result = run_table(path, chosen, args.seeds, args.budget_trials, args.workers, interpolate)
        stem = path.stem.removeprefix("lc_table_")
        output = args.output or RESULTS / f"replay_{stem}{INTERPOLATED if interpolate else ''}.json"
        output.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
        print(render(result))
        print(f"wrote {output}")
    if args.no_markdown or args.output or interpolate:
        return
    results = [json.loads(path.read_text()) for path in _result_files()]
    if not results:
        return
    regret_png(results, RESULTS / "replay.png")
    benchmarks = ROOT / "BENCHMARKS.md"
    text = benchmarks.read_text() if benchmarks.is_file() else "# Benchmarks\n"
    benchmarks.write_text(replace_section(text, "replay", render_markdown(results)))
    print(f"wrote {RESULTS / 'replay.png'} and {benchmarks}")


def _result_files() -> list[Path]:
    """The replay results of the standard tables, in :data:`TABLES` order."""
    found = (RESULTS / f"replay_{name.removeprefix('lc_table_').removesuffix('.json')}.json" for name in TABLES)
    return [path for path in found if path.is_file()]


def _task(result: dict[str, Any]) -> str:
    return Path(result["table"]).stem.removeprefix("lc_table_")


def render_markdown(results: Sequence[dict[str, Any]]) -> str:
    """The ``BENCHMARKS.md`` section of the replay: per table, every policy's regret, compute to the target and
    test tau, and tuner's paired speed-up over each peer."""
    lines = ["### Replay on the learning-curve tables", "",
             "Generated by `python -m bench.replay` (`make bench-replay`) from `bench/results/replay_*.json`; "
             "the method is in `bench/replay.py`'s docstring. Regret is `(tau* - best) / tau*`, median over "
             "seeds with a bootstrap 95% band; the target is `tau* - 0.01`; a seed that never reaches it is "
             "charged the whole budget.", "", "![median regret against compute](bench/results/replay.png)", ""]
    for result in results:
        machines = sorted({f"{m.get('cpu_model', '?')} ({m.get('cpu_capability', '?')}, {m.get('precision', '?')})"
                           for m in result["table_machines"]})
        lines += [f"#### {_task(result)}", "",
                  f"`{result['table']}`, built on {', '.join(machines)}. tau* = {result['tau_star']:.3f} "
                  f"({', '.join(map(str, result['best_config']))}); target {result['target']:.3f}; budget "
                  f"{result['budget_cpu_s']:.0f} CPU s ({result['budget_trials']:g} whole trials); "
                  f"{result['seeds']} paired seeds.", "",
                  "| policy | regret @10% | @25% | @50% | @100% | reached target | median CPU s to target "
                  "| test tau | trials |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, p in result["policies"].items():
            cells = [f"{p['regret'][f][0]:.3f} [{p['regret'][f][1]:.3f}, {p['regret'][f][2]:.3f}]"
                     for f in ("0.1", "0.25", "0.5", "1.0")]
            reach = p["compute_to_target"]
            test = p["final_test_tau"]
            lines.append(f"| {name} | {' | '.join(cells)} | {reach['reached']}/{reach['seeds']} | "
                         f"{reach['median_cpu_s']:.0f} | {test[0]:.3f} [{test[1]:.3f}, {test[2]:.3f}] | "
                         f"{p['trials']:.0f} |")
        if "tuner" in result["speedup"]:
            lines += ["", "tuner's compute to the target against each peer's (median of the peer's over tuner's, "
                      "paired Wilcoxon test):", ""]
            versus = result.get("regret_versus", {}).get("tuner", {})
            speedups = result["speedup"]["tuner"]
            variants = [name for name in speedups if name not in default_policies()]
            for peer, s in sorted(speedups.items(), key=lambda item: item[0] in variants):
                if variants and peer == variants[0]:
                    lines += ["", "tuner against itself with one default undone (a ratio above 1: the default "
                              "saves compute):", ""]
                behind = ""
                if peer in versus:
                    lost = [f"{float(f):.0%}" for f, v in versus[peer]["budgets"].items() if not v["not_behind"]]
                    behind = f"; behind it at {', '.join(lost)}" if lost else "; never behind it from 10% of the budget"
                lines.append(f"- {peer}: {s['median_ratio']:.2f}x; tuner faster in {s['faster_in']}, slower in "
                             f"{s['slower_in']} of {s['seeds']} seeds; p = {s['p_value']:.2g}{behind}")
        if "targets" in result:
            lines += ["", f"Targets: {_targets_line(result['targets'])}."]
        interpolated = RESULTS / f"replay_{_task(result)}{INTERPOLATED}.json"
        if interpolated.is_file() and "targets" in (other := json.loads(interpolated.read_text())):
            lines += ["", f"With each sampled rate's curve interpolated in log-rate between the grid's two around "
                      f"it (`--rates interpolate`, `{interpolated.relative_to(ROOT)}`): "
                      f"{_targets_line(other['targets'])}."]
        lines.append("")
    return "\n".join(lines)


def _targets_line(found: dict[str, Any]) -> str:
    """The targets' figures in one sentence."""
    parts = []
    if "speedup_vs_optuna_example" in found:
        s = found["speedup_vs_optuna_example"]
        low, high = s["median_ratio_band"]
        parts.append(f"{s['median_ratio']:.2f}x less compute than the optuna-examples recipe (median of the paired "
                     f"ratios, bootstrap 95% band [{low:.2f}, {high:.2f}]; p = {s['p_value']:.2g}; ratio of the "
                     f"medians {s['ratio_of_medians']:.2f}x): "
                     f"{'met' if s['met'] else 'not met'} (at least {SPEEDUP_TARGET:g}x, p < 0.01)")
    behind = {peer: at for peer, at in found["behind_at"].items() if at}
    parts.append("never behind a peer from 10% of the budget" if not behind else "behind " + "; ".join(
        f"{peer} at {', '.join(f'{float(f):.0%}' for f in at)}" for peer, at in behind.items()))
    parts.append(f"test tau {found['test_tau']['tuner']:.3f}, "
                 f"{'at least' if found['test_tau_at_least_peers'] else 'below'} the peers' "
                 f"({', '.join(f'{v:.3f}' for n, v in found['test_tau'].items() if n != 'tuner')})")
    return "; ".join(parts)


def regret_png(results: Sequence[dict[str, Any]], path: Path) -> None:
    """Median normalised regret against the budget, with its bootstrap band, one panel per table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = set(default_policies())  # the peers and tuner; the variants are in the tables
    figure, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), dpi=110, squeeze=False)
    for axis, result in zip(axes[0], results, strict=True):
        for name, p in ((n, p) for n, p in result["policies"].items() if n in shown):
            fractions = sorted(p["regret"], key=float)
            xs = [float(f) * 100 for f in fractions]
            axis.plot(xs, [p["regret"][f][0] for f in fractions], label=name, linewidth=2 if name == "tuner" else 1)
            axis.fill_between(xs, [p["regret"][f][1] for f in fractions], [p["regret"][f][2] for f in fractions],
                              alpha=0.15)
        axis.set(title=f"{_task(result)}: {result['seeds']} seeds", xlabel="% of the budget",
                 ylabel="median normalised regret", ylim=(0, None))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def render(result: dict[str, Any]) -> str:
    """A plain-text summary: per policy, regret at 25/50/100% of the budget, compute to the target, test tau."""
    lines = [f"tau* {result['tau_star']:.3f} ({result['best_config']}); target {result['target']:.3f}; "
             f"budget {result['budget_cpu_s']:.0f} CPU s; {result['seeds']} seeds"]
    lines.append(f"{'policy':16} {'regret@25%':>11} {'@50%':>6} {'@100%':>6} {'reached':>8} {'median CPU s':>13} "
                 f"{'test tau':>9} {'trials':>7}")
    for name, p in result["policies"].items():
        reach = p["compute_to_target"]
        lines.append(f"{name:16} {p['regret']['0.25'][0]:11.3f} {p['regret']['0.5'][0]:6.3f} "
                     f"{p['regret']['1.0'][0]:6.3f} {reach['reached']:>4}/{reach['seeds']:<3} "
                     f"{reach['median_cpu_s']:13.0f} {p['final_test_tau'][0]:9.3f} {p['trials']:7.0f}")
    if "tuner" in result["speedup"]:
        for peer, s in result["speedup"]["tuner"].items():
            lines.append(f"tuner vs {peer}: median speed-up {s['median_ratio']:.2f}x (faster in {s['faster_in']}, "
                         f"slower in {s['slower_in']} of {s['seeds']}; Wilcoxon p = {s['p_value']:.2g})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
