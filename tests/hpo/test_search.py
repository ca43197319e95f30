"""The search space: every sampler and pruner builds, shipped studies' searches are valid, TPE spreads."""

from __future__ import annotations

import statistics
from pathlib import Path

import optuna
import pytest

from tuner.config.loader import read_study_file
from tuner.config.schema import PrunerConfig, SamplerConfig, StudyFile
from tuner.hpo.search import MEDIAN_STARTUP_TRIALS, TPE_STARTUP_TRIALS, build_pruner, build_sampler
from tuner.study.open import load_study_file


def test_tuners_tpe_spreads_trials_that_run_at_once() -> None:
    """Four workers asking at the same moment, simulated by four asks before any tell: with its constant
    liar (tuner's default), TPE gives them different backbones and batch sizes; without, mostly the same.
    Optuna's joint (multivariate) model spreads them further, the price of tuner's independent default."""

    def score(backbone: str, batch_size: int) -> float:
        return {"a": 0.6, "b": 0.5, "c": 0.3}[backbone] + {8: 0.05, 16: 0.1, 32: 0.0}[batch_size]

    def distinct_per_batch(seed: int, **options: object) -> float:
        sampler = build_sampler(SamplerConfig(type="tpe", seed=seed, options={"n_startup_trials": 4, **options}),
                                StudyFile(name="tpe"))
        study = optuna.create_study(direction="maximize", sampler=sampler)

        def ask() -> tuple[optuna.Trial, tuple[str, int]]:
            trial = study.ask()
            return trial, (trial.suggest_categorical("backbone", ["a", "b", "c"]),
                           trial.suggest_categorical("batch_size", [8, 16, 32]))

        for _ in range(4):
            trial, config = ask()
            study.tell(trial, score(*config))
        distinct = []
        for _ in range(4):
            batch = [ask() for _ in range(4)]
            distinct.append(len({config for _, config in batch}))
            for trial, config in batch:
                study.tell(trial, score(*config))
        return sum(distinct) / len(distinct)

    seeds = range(8)
    with_liar = [distinct_per_batch(seed) for seed in seeds]
    without = [distinct_per_batch(seed, constant_liar=False) for seed in seeds]
    joint = [distinct_per_batch(seed, multivariate=True) for seed in seeds]
    assert statistics.mean(with_liar) >= 2.25 and max(without) <= 1.5, (with_liar, without)
    assert statistics.mean(joint) > statistics.mean(with_liar), (joint, with_liar)


def test_shipped_studies_have_valid_search_sections() -> None:
    for path in (Path(__file__).resolve().parents[2] / "studies").glob("*.toml"):
        assert read_study_file(path).study.n_trials > 0


@pytest.mark.parametrize("sampler", ['"tpe"', '"random"', '"gp"', '{type="grid", learning_rate=[1e-4, 1e-3]}'])
@pytest.mark.parametrize("pruner", ["median", "percentile", "successive_halving", "hyperband", "patient", "none"])
def test_every_sampler_and_pruner_builds_and_samples(study_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                     sampler: str, pruner: str) -> None:
    from tuner.hpo import search

    monkeypatch.chdir(study_dir)
    run = load_study_file("tiny", [f"study.sampler={sampler}", f'study.pruner="{pruner}"'])
    study = optuna.create_study(sampler=search.build_sampler(run.study.sampler, run),
                                pruner=search.build_pruner(run.study.pruner), direction="maximize")
    trial = study.ask()
    sampled = search.sample(trial, run)
    assert 1e-5 <= sampled.model.learning_rate <= 3e-3 and sampled.data.batch_size in (8, 16)
    if sampler == '"tpe"':
        assert study.sampler._multivariate is False and study.sampler._constant_liar


def test_tpe_takes_the_joint_model_when_the_study_file_asks(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tuner's TPE is independent (checked with every sampler above); ``multivariate = true`` overrides it."""
    monkeypatch.chdir(study_dir)
    run = load_study_file("tiny", ['study.sampler={type="tpe", multivariate=true}'])
    sampler = build_sampler(run.study.sampler, run)
    assert isinstance(sampler, optuna.samplers.TPESampler) and sampler._multivariate is True


def test_tpe_models_the_results_from_its_sixth_trial_unless_told() -> None:
    """Seeded TPE draws what a random sampler with that seed draws while it starts up: tuner's for 5 trials
    (Optuna's default is 10), then it samples near the best result so far."""

    def draws(config: SamplerConfig, n: int = 10) -> list[float]:
        study = optuna.create_study(direction="maximize", sampler=build_sampler(config, StudyFile(name="tpe")))
        found = []
        for _ in range(n):
            trial = study.ask()
            x = trial.suggest_float("x", 0.0, 1.0)
            study.tell(trial, -abs(x - 0.9))
            found.append(x)
        return found

    assert TPE_STARTUP_TRIALS == 5
    modelled, told = [], []
    for seed in range(6):
        random = draws(SamplerConfig(type="random", seed=seed))
        default = draws(SamplerConfig(type="tpe", seed=seed))
        assert default[:5] == random[:5] and default[5] != random[5]
        assert draws(SamplerConfig(type="tpe", seed=seed, options={"n_startup_trials": 10})) == random
        modelled += default[5:]
        told += random[5:]
    # trials 6 to 10 land nearer the optimum than the random draws a 10-trial start-up would make there
    distance = [sum(abs(x - 0.9) for x in xs) / len(xs) for xs in (modelled, told)]
    assert distance[0] < 0.9 * distance[1], distance


@pytest.mark.parametrize("pruner", ["median", "patient"])
def test_median_pruners_wait_for_three_trials_unless_told(pruner: str) -> None:
    def pruned_at(options: dict[str, int]) -> list[bool]:
        """Three trials ending at 1.0, then two ending at 0.0, each falling over 3 steps (so patient's patience
        runs out), each asked at its last step whether it would be pruned."""
        study = optuna.create_study(direction="maximize", pruner=build_pruner(PrunerConfig(pruner, options)))
        decisions = []
        for value in (1.0, 1.0, 1.0, 0.0, 0.0):
            trial = study.ask()
            for step in range(3):
                trial.report(value + 0.1 * (2 - step), step)
            decisions.append(trial.should_prune())
            study.tell(trial, value)
        return decisions

    assert MEDIAN_STARTUP_TRIALS == 3
    # after 3 finished trials, a trial below their median is pruned (Optuna's own default waits for 5)
    assert pruned_at({}) == [False, False, False, True, True]
    assert pruned_at({"n_startup_trials": 5}) == [False] * 5
