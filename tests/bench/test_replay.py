"""The replay of search policies against a learning-curve table: costs, pairing, pruning and statistics, on a
synthetic table whose answer is known."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bench.lc_table import config_key, log_grid
from bench.replay import (
    BUDGET_POINTS,
    Policy,
    Table,
    _evaluated,
    compute_to,
    default_policies,
    paired_speedup,
    parse_variant,
    regret_png,
    render_markdown,
    replay,
    run_table,
    search_parts,
)

BACKBONES = ["small", "large"]
RATES = log_grid(1e-6, 1e-2, 12)


def _curve(backbone: str, batch_size: int, rate: float, seed: int, evals: int = 8) -> list[dict[str, Any]]:
    """Validation tau rising towards a peak that is highest at the grid's 7th rate on the large backbone at
    batch 8."""
    peak = 0.7 - 0.12 * abs(math.log10(rate) - math.log10(RATES[6]))
    peak -= (0.05 if backbone == "small" else 0) + 0.02 * (batch_size == 16)
    peak = max(0.0, peak) + 0.01 * seed
    step_cost = (2.0 if backbone == "large" else 1.0) * (batch_size / 8)
    steps = 40 if batch_size == 8 else 20
    return [{"step": (i + 1) * steps // evals, "epoch": i // 4, "tokens": 100 * (i + 1) * steps // evals,
             "train_cpu_s": round(step_cost * (i + 1) * steps / evals, 3), "val_cpu_s": 0.5 * (i + 1),
             "test_cpu_s": 0.5 * (i + 1), "val_kendall_tau": round(peak * (i + 1) / evals, 5),
             "test_kendall_tau": round(peak * (i + 1) / evals - 0.01, 5), "val_pmr": 0.0, "val_acc": 0.0,
             "val_loss": 0.6, "test_pmr": 0.0, "test_acc": 0.0, "test_loss": 0.6} for i in range(evals)]


def synthetic_table(folder: Path, drop: int = 0) -> Path:
    configs = {}
    for seed in (0, 1):
        for backbone in BACKBONES:
            for batch_size in (8, 16):
                for rate in RATES:
                    key = config_key(backbone, batch_size, rate, seed)
                    configs[key] = {"backbone": backbone, "batch_size": batch_size, "learning_rate": rate,
                                    "seed": seed, "curve": _curve(backbone, batch_size, rate, seed),
                                    "steps_per_epoch": 20 if batch_size == 8 else 10, "diverged_at": None,
                                    "train_loss": []}
    for key in list(configs)[:drop]:
        del configs[key]
    finder = {f"{b}|{s}": [{"suggestion": 1e-3, "reliable": True, "num_training": 100, "cpu_s": 30.0}]
              for b in BACKBONES for s in (8, 16)}
    # built from the demo study with these backbones: the replay reads their order from the study file
    order = ", ".join(f'"{b}"' for b in BACKBONES)
    table = {"settings": {"learning_rate_range": [1e-6, 1e-2], "epochs": 2, "evals_per_epoch": 4, "study": "demo",
                          "overrides": [f"search.backbone=[{order}]", "search.batch_size=[8, 16]"]},
             "configs": configs, "finder": finder, "sittings": [{"machine": {"cpu": "synthetic"}}],
             "fixed_costs": {"import_cpu_s": 5.0, "backbones": {b: {"load_cpu_s": 1.0, "tokenize_cpu_s": 3.0,
                                                                     "tokenize_cached_cpu_s": 0.1}
                                                                 for b in BACKBONES}}}
    path = folder / "lc_table_synthetic.json"
    path.write_text(json.dumps(table))
    return path


@pytest.fixture()
def table(tmp_path: Path) -> Table:
    return Table.load(synthetic_table(tmp_path))


def test_a_table_missing_configurations_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="3 configurations of the grid are missing"):
        Table.load(synthetic_table(tmp_path, drop=3))


def test_the_best_configuration_and_the_snapped_rate(table: Table) -> None:
    tau_star, best = table.best_config()
    assert best == ("large", 8, RATES[6])
    assert math.isclose(tau_star, 0.705, abs_tol=1e-6)  # the mean of seeds 0 and 1
    assert table.snap(RATES[6] * 1.3) == table.snap(RATES[6] / 1.3) == best[2]
    assert table.backbones == ["small", "large"]  # the study's order: the baseline's backbone first


def test_a_rate_between_grid_rates_interpolates_in_log_rate(tmp_path: Path) -> None:
    path = synthetic_table(tmp_path)
    snapped, interpolated = Table.load(path), Table.load(path, interpolate=True)
    low, high = RATES[5], RATES[6]
    rate = low ** 0.25 * high ** 0.75  # three quarters of the way up in log-rate: nearer the higher rate
    below, above = snapped.curve("large", 8, low, 1), snapped.curve("large", 8, high, 1)
    assert snapped.at("large", 8, rate, 1) is above
    config = interpolated.at("large", 8, rate, 1)
    assert config["learning_rate"] == rate
    for point, a, b in zip(config["curve"], below["curve"], above["curve"], strict=True):
        for key in ("val_kendall_tau", "test_kendall_tau"):
            assert point[key] == pytest.approx(0.25 * a[key] + 0.75 * b[key])
        assert (point["step"], point["tokens"]) == (b["step"], b["tokens"])  # the nearer rate's steps and costs
    # a grid rate, or one outside the grid, is that rate's curve
    assert interpolated.at("large", 8, high, 1) is interpolated.curve("large", 8, high, 1)
    assert interpolated.at("large", 8, 1e-7, 1) is interpolated.curve("large", 8, RATES[0], 1)
    # the replay trains a trial at the interpolated curve and records the rate it sampled
    policy = Policy("random", sampler="random", pruner="none")
    trials = replay(interpolated, policy, seed=0, budget=400.0)["trials"]
    assert any(t["rate"] not in RATES for t in trials)
    assert all(t["rate"] in RATES for t in replay(snapped, policy, seed=0, budget=400.0)["trials"])


def test_a_policy_pays_for_the_validations_it_runs_only(table: Table) -> None:
    config = table.curve("large", 8, RATES[0], 0)
    assert _evaluated(config["curve"], "epoch", 4) == [3, 7]
    assert _evaluated(config["curve"], "all", 4) == list(range(8))
    # at the end of epoch 1: 20 steps trained at 2 CPU s, and one validation of 0.5 s (not the four the table ran)
    assert table.cost(config, [3, 7], 0) == pytest.approx(40.0 + 0.5)
    assert table.cost(config, list(range(8)), 3) == pytest.approx(40.0 + 2.0)


def test_a_configuration_measured_on_a_busy_machine_is_charged_at_the_table_median(tmp_path: Path) -> None:
    path = synthetic_table(tmp_path)
    raw = json.loads(path.read_text())
    slow = raw["configs"][config_key("large", 8, RATES[0], 0)]
    for record in slow["curve"]:
        record["train_cpu_s"] *= 3
    path.write_text(json.dumps(raw))
    table = Table.load(path)
    assert table.cost(table.curve("large", 8, RATES[0], 0), [3, 7], 0) == pytest.approx(40.0 + 0.5)


def test_a_table_resumed_on_another_machine_keeps_the_first_machine_s_prices(tmp_path: Path) -> None:
    path = synthetic_table(tmp_path)
    raw = json.loads(path.read_text())
    raw["sittings"].append({"machine": {"cpu_model": "faster", "precision": "bf16-mixed"}})
    for config in raw["configs"].values():
        config["sitting"] = 1 if config["seed"] == 1 else 0
        for record in config["curve"]:
            record["train_cpu_s"] /= 1 if config["seed"] == 0 else 4  # the second machine is 4x faster
    path.write_text(json.dumps(raw))
    table = Table.load(path)
    assert table.cost(table.curve("large", 8, RATES[0], 1), [3, 7], 0) == pytest.approx(40.0 + 0.5)

    for config in raw["configs"].values():
        config["sitting"] = 1 if config["batch_size"] == 16 else 0
    path.write_text(json.dumps(raw))
    with pytest.raises(SystemExit, match="was trained on the table's first machine"):
        Table.load(path)


def test_random_search_without_pruning_is_charged_whole_trials(table: Table) -> None:
    result = replay(table, default_policies()["random"], seed=3, budget=1000.0)
    assert all(t["state"] == "COMPLETE" for t in result["trials"][:-1]) and result["trials"][-1]["state"] == "BUDGET"
    first = result["trials"][0]
    full = table.curve(first["backbone"], first["batch_size"], first["rate"], first["seed"])
    expected = 5.0 + 1.0 + 3.0 + table.cost(full, [3, 7], 1)  # import, load, tokenise, train and validate
    assert first["cpu_s"] == pytest.approx(expected, abs=0.1)
    assert result["spent"] == pytest.approx(1000.0)
    assert [e[0] for e in result["events"]] == sorted(e[0] for e in result["events"])


def test_seed_i_gives_every_policy_the_same_training_seeds(table: Table) -> None:
    runs = [replay(table, policy, seed=7, budget=600.0) for policy in default_policies().values()]
    for run in runs:
        assert len(run["trials"]) >= 4
    seeds = [[t["seed"] for t in run["trials"][:4]] for run in runs]
    assert all(s == seeds[0] for s in seeds), seeds
    again = replay(table, default_policies()["tuner"], seed=7, budget=600.0)
    assert again == runs[-1]  # deterministic: no clock anywhere


def test_tuner_starts_with_its_baseline_and_caches_tokenisation(table: Table) -> None:
    result = replay(table, default_policies()["tuner"], seed=0, budget=2000.0)
    first = result["trials"][0]
    assert (first["backbone"], first["batch_size"]) == ("small", 8) and math.isclose(first["rate"], table.snap(5e-5))
    no_cache = replay(table, Policy("uncached", sampler="tuner", pruner="none", baseline=True), seed=0, budget=2000.0)
    cached = replay(table, Policy("cached", sampler="tuner", pruner="none", baseline=True, cache=True), seed=0,
                    budget=2000.0)

    def fixed_costs(result: dict[str, Any]) -> list[tuple[str, float]]:
        """What each trial cost beyond its curve, with its backbone."""
        found, before = [], 5.0  # the import
        for trial in result["trials"][:-1]:
            config = table.curve(trial["backbone"], trial["batch_size"], trial["rate"], trial["seed"])
            found.append((trial["backbone"], round(trial["cpu_s"] - before - table.cost(config, [3, 7], 1), 1)))
            before = trial["cpu_s"]
        return found

    seen: set[str] = set()
    for (backbone, paid), (_, paid_cached) in zip(fixed_costs(no_cache), fixed_costs(cached), strict=False):
        assert paid == 1.0 + 3.0  # load and tokenise, every trial
        assert paid_cached == (1.0 + 0.1 if backbone in seen else 1.0 + 3.0)
        seen.add(backbone)
    assert len(seen) == 2


def test_pruning_stops_trials_and_charges_what_they_trained(table: Table) -> None:
    policy = Policy("sha", sampler="random", pruner="successive_halving", evals="all")
    result = replay(table, policy, seed=1, budget=3000.0)
    pruned = [t for t in result["trials"] if t["state"] == "PRUNED"]
    assert pruned and all(t["validations"] < 8 for t in pruned)


def test_hf_searches_each_backbone_with_half_the_budget(table: Table) -> None:
    result = replay(table, default_policies()["hf"], seed=2, budget=1200.0)
    backbones = [t["backbone"] for t in result["trials"]]
    switch = backbones.index("large")
    assert set(backbones[:switch]) == {"small"} and set(backbones[switch:]) == {"large"}
    assert result["trials"][switch - 1]["cpu_s"] <= 5.0 + (1200.0 - 5.0) / 2 + 1e-6


def test_hf_searches_cuts_of_one_backbone_together() -> None:
    cuts = ["m[num_hidden_layers=2]", "m[num_hidden_layers=3]"]
    assert search_parts(cuts) == [cuts]  # one tokenizer: one search, model_init draws the cut
    assert search_parts(["m", "other"]) == [["m"], ["other"]]


def test_variants_change_tuner_defaults_by_name() -> None:
    policy = parse_variant("fast:evals=all,pruner=hyperband,pruner.reduction_factor=2", default_policies())
    assert (policy.name, policy.evals, policy.pruner, policy.pruner_options) == ("fast", "all", "hyperband",
                                                                                {"reduction_factor": 2})
    assert policy.baseline and policy.cache  # the rest stays tuner's
    with pytest.raises(SystemExit, match="unknown key 'nope'"):
        parse_variant("bad:nope=1", default_policies())


def test_compute_to_target_and_the_paired_speedup() -> None:
    events = [(10.0, 0.3, 0.3), (50.0, 0.6, 0.6), (90.0, 0.7, 0.7)]
    assert compute_to(events, 0.6) == 50.0 and compute_to(events, 0.8) is None
    faster = paired_speedup([10.0] * 12, [30.0] * 12, budget=100.0)
    assert faster["median_ratio"] == pytest.approx(3.0) and faster["faster_in"] == 12 and faster["p_value"] < 0.01
    missed = paired_speedup([None] * 3, [20.0] * 3, budget=100.0)  # a miss counts as the whole budget
    assert missed["median_ratio"] == pytest.approx(0.2) and missed["slower_in"] == 3


def test_a_whole_table_summarises_every_policy(tmp_path: Path) -> None:
    path = synthetic_table(tmp_path)
    policies = [default_policies()[name] for name in ("random", "tuner")]
    result = run_table(path, policies, seeds=6, budget_trials=8, workers=1)
    assert result["target"] == pytest.approx(result["tau_star"] - 0.01)
    assert set(result["policies"]) == {"random", "tuner"} and result["speedup"]["tuner"]["random"]["seeds"] == 6
    regret = result["policies"]["tuner"]["regret"]
    assert 0.0 <= regret["1.0"][0] <= regret["0.05"][0] <= 1.0  # regret falls as the budget grows


def test_the_section_and_the_figure_report_every_policy_of_every_table(tmp_path: Path) -> None:
    path = synthetic_table(tmp_path)
    policies = [default_policies()[name] for name in ("random", "tuner")]
    result = run_table(path, policies, seeds=4, budget_trials=8, workers=1)
    section = render_markdown([result, result])
    assert section.count("#### synthetic") == 2 and section.count("| random |") == 2
    tuner = result["policies"]["tuner"]
    assert f"| tuner | {tuner['regret']['0.1'][0]:.3f} [" in section
    assert f"- random: {result['speedup']['tuner']['random']['median_ratio']:.2f}x" in section
    regret_png([result, result], tmp_path / "replay.png")
    assert (tmp_path / "replay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_targets_are_read_from_the_speedup_the_regret_and_the_test_tau(tmp_path: Path) -> None:
    path = synthetic_table(tmp_path)
    policies = [default_policies()[name] for name in ("random", "optuna_example", "tuner")]
    result = run_table(path, policies, seeds=6, budget_trials=8, workers=1)
    found, speedup = result["targets"], result["speedup"]["tuner"]["optuna_example"]
    assert found["speedup_vs_optuna_example"]["median_ratio"] == speedup["median_ratio"]
    assert found["speedup_vs_optuna_example"]["p_value"] == speedup["p_value"]
    assert found["speedup_vs_optuna_example"]["met"] == (speedup["median_ratio"] >= 3 and speedup["p_value"] < 0.01)
    reach = {n: result["policies"][n]["compute_to_target"]["median_cpu_s"] for n in ("optuna_example", "tuner")}
    assert found["speedup_vs_optuna_example"]["ratio_of_medians"] == pytest.approx(reach["optuna_example"] /
                                                                                    reach["tuner"])
    for peer in ("random", "optuna_example"):
        budgets = result["regret_versus"]["tuner"][peer]["budgets"]
        assert found["behind_at"][peer] == [f for f, v in budgets.items() if not v["not_behind"]]
    assert found["never_behind"] == (not any(found["behind_at"].values()))
    assert set(found["test_tau"]) == {"random", "optuna_example", "tuner"}
    assert "Targets: " in render_markdown([result])


def test_regret_against_each_peer_is_paired_per_budget(tmp_path: Path) -> None:
    path = synthetic_table(tmp_path)
    base = default_policies()
    worse = replace(base["tuner"], name="worse", lr_range=(1e-6, 2e-6))  # a prior far from the peak
    result = run_table(path, [base["random"], base["tuner"], worse], seeds=6, budget_trials=8, workers=1)
    assert set(result["regret_versus"]) == {"tuner", "worse"}  # only non-peers are compared with the peers
    versus = result["regret_versus"]["worse"]["random"]
    assert set(versus["budgets"]) == {str(f) for f in BUDGET_POINTS if f >= 0.1}
    low, high = versus["budgets"]["1.0"]["mean_difference"][1:]
    assert 0 < low <= high and not versus["never_behind"]  # a prior that excludes the peak is behind random


def test_a_study_wide_finder_is_paid_once_and_scales_every_trial(table: Table) -> None:
    policy = replace(default_policies()["tuner"], finder_max_cost=10.0, finder_scope="study",
                     finder_multiplier=(1.0, 1.0), baseline=False)
    trials = replay(table, policy, seed=0, budget=400.0)["trials"]
    assert {t["rate"] for t in trials} == {table.snap(1e-3)}  # the finder's 1e-3, times 1
    per_config = replay(table, replace(policy, finder_scope="config"), seed=0, budget=400.0)
    assert per_config["trials"][0]["cpu_s"] == trials[0]["cpu_s"]  # the first finder costs the same


def test_the_baseline_trains_at_its_own_multiplier_where_one_is_given(table: Table) -> None:
    policy = replace(default_policies()["tuner"], finder_max_cost=10.0, finder_multiplier=(1.0, 6.0))
    assert table.snap(1e-3) != table.snap(6**0.5 * 1e-3)
    middle = replay(table, policy, seed=0, budget=200.0)["trials"][0]
    assert middle["rate"] == table.snap(6**0.5 * 1e-3)  # the finder's 1e-3 times the middle of [1, 6]
    own = replay(table, replace(policy, finder_baseline=1.0), seed=0, budget=200.0)["trials"][0]
    assert own["rate"] == table.snap(1e-3)


def test_each_replay_seed_draws_one_of_the_table_s_finder_curves(tmp_path: Path) -> None:
    path = synthetic_table(tmp_path)
    raw = json.loads(path.read_text())
    for key, curves in raw["finder"].items():  # a second seed whose curve the judge did not trust
        raw["finder"][key] = [*curves, {**curves[0], "reliable": False}]
    path.write_text(json.dumps(raw))
    table = Table.load(path)
    policy = replace(default_policies()["tuner"], finder_max_cost=10.0, finder_scope="study",
                     finder_multiplier=(1.0, 1.0), baseline=False)
    trusted, untrusted = (replay(table, policy, seed=seed, budget=400.0)["trials"] for seed in (0, 1))
    assert {t["rate"] for t in trusted} == {table.snap(1e-3)}
    assert len({t["rate"] for t in untrusted}) > 1  # sampled rates, as a live trial keeps when its finder fails
    raw["finder"] = {key: curves[0] for key, curves in raw["finder"].items()}  # a table from before finder seeds
    path.write_text(json.dumps(raw))
    assert {t["rate"] for t in replay(Table.load(path), policy, seed=1, budget=400.0)["trials"]} == {table.snap(1e-3)}


def test_a_warm_start_seeds_the_sampler_with_the_other_table_s_trials(tmp_path: Path) -> None:
    path = synthetic_table(tmp_path)
    table = Table.load(path)
    policy = replace(default_policies()["tuner"], warm_start=str(path), baseline=False)
    warm = replay(table, policy, seed=3, budget=300.0, budget_trials=4, keep=True)
    cold = replay(table, replace(policy, warm_start=None), seed=3, budget=300.0, keep=True)
    seeded = [t for t in warm["study_trials"] if t.user_attrs.get("warm_start")]
    assert seeded and all(t.value is not None for t in seeded)
    assert len(warm["study_trials"]) == len(seeded) + len(warm["trials"])
    assert [t["backbone"] for t in warm["trials"]] != [t["backbone"] for t in cold["trials"]] or \
        [t["sampled_rate"] for t in warm["trials"]] != [t["sampled_rate"] for t in cold["trials"]]


def test_the_oracle_trains_the_best_configuration_every_time(table: Table) -> None:
    result = replay(table, default_policies()["oracle"], seed=5, budget=800.0)
    _, (backbone, batch_size, rate) = table.best_config()
    assert len(result["trials"]) > 2
    assert {(t["backbone"], t["batch_size"], t["rate"]) for t in result["trials"]} == {(backbone, batch_size, rate)}
