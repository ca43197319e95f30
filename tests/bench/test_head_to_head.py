"""The head-to-head benchmark's pure parts: curves, time to match, the median with misses, resume, markdown."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.head_to_head import (
    QUICK,
    SETTINGS,
    SYSTEMS,
    best_curve,
    cell_key,
    cell_seeds,
    curves_png,
    hf_parts,
    median_or_none,
    pending_cells,
    render_markdown,
    replace_section,
    resume_refused,
    reusable_cells,
    same_settings,
    summarize,
    time_to_reach,
)


def _events(*pairs: tuple[float, float]) -> list[dict[str, float]]:
    return [{"cpu_s": t, "tau": tau} for t, tau in pairs]


def test_curve_keeps_improvements_within_the_budget_in_time_order() -> None:
    events = _events((30, 0.5), (10, 0.4), (20, 0.3), (40, 0.5), (50, 0.6), (120, 0.9))
    assert best_curve(events, budget_s=100) == [[10, 0.4], [30, 0.5], [50, 0.6]]
    assert best_curve([], budget_s=100) == []


def test_time_to_reach_is_the_first_point_at_or_above_the_target() -> None:
    curve = [[10.0, 0.4], [30.0, 0.5], [50.0, 0.6]]
    assert time_to_reach(curve, 0.5) == 30.0
    assert time_to_reach(curve, 0.45) == 30.0
    assert time_to_reach(curve, 0.61) is None


def test_every_cell_has_seeds_of_its_own() -> None:
    seeds = {cell_seeds(system, seed) for system in SYSTEMS for seed in range(5)}
    assert len(seeds) == 20 and len({s for pair in seeds for s in pair}) == 40
    assert cell_seeds("tuner", 3) == cell_seeds("tuner", 3)  # a rerun draws the same


def test_hf_searches_every_backbone_at_once_when_they_share_a_tokenizer() -> None:
    cuts = [{"name": "m", "config": {"num_hidden_layers": 3}}, {"name": "m", "config": {"num_hidden_layers": 2}}]
    assert hf_parts(cuts) == [cuts]
    assert hf_parts(["m", "other"]) == [["m"], ["other"]]


def test_median_ranks_misses_above_every_number() -> None:
    assert median_or_none([0.2, None, 0.4]) == 0.4
    assert median_or_none([0.2, None, None]) is None
    assert median_or_none([0.3, 0.1]) == pytest.approx(0.2)
    assert median_or_none([]) is None


def test_resume_skips_finished_cells_seed_by_seed() -> None:
    done = {cell_key("hf", 0): {}, cell_key("optuna", 0): {}, cell_key("tuner", 1): {}}
    assert pending_cells(done, ["hf", "optuna", "tuner"], [0, 1]) == [("tuner", 0), ("hf", 1), ("optuna", 1)]
    assert pending_cells({}, ["tuner"], [2]) == [("tuner", 2)]


def test_settings_match_as_the_results_file_stores_them() -> None:
    import json
    from dataclasses import asdict

    settings = {"quick": True, "sizing": asdict(QUICK), "systems": list(SYSTEMS)}
    assert same_settings(json.loads(json.dumps(settings)), settings)
    assert not same_settings(json.loads(json.dumps({**settings, "quick": False})), settings)
    assert not same_settings(None, settings)


def test_a_run_resumes_only_with_its_settings_and_on_a_machine_that_reads_the_same() -> None:
    import json
    from dataclasses import asdict

    machine = {"cpu_model": "AMD EPYC", "cpu_capability": "AVX512", "cores": 2, "torch": "2.13.0+cpu",
               "torch_threads": 2, "precision": "bf16-mixed"}
    settings = {"quick": False, "sizing": asdict(QUICK), "systems": list(SYSTEMS), "peers": SETTINGS}
    previous = {"settings": json.loads(json.dumps(settings)), "machine": machine, "cells": {"hf/0": {"curve": []}}}
    assert resume_refused(previous, settings, dict(machine)) is None
    assert resume_refused(previous, {**settings, "quick": True}, machine) == "holds a run with other settings"
    # a CPU-second budget on an AMX machine is not one on the machine that ran the other cells
    other = {**machine, "cpu_model": "Intel Xeon", "cpu_capability": "AMX"}
    assert resume_refused(previous, settings, other) == (
        "holds cells measured on another machine (cpu_model, cpu_capability differ)")
    assert resume_refused({**previous, "cells": {}}, settings, other) is None  # nothing measured yet


def test_reuse_takes_the_cells_of_systems_whose_settings_are_unchanged() -> None:
    import json
    from dataclasses import asdict

    machine = {"cpu_model": "AMD EPYC", "cpu_capability": "AVX2", "cores": 2, "torch": "2.13.0+cpu",
               "torch_threads": 2, "precision": "32-true"}
    settings = {"quick": False, "sizing": asdict(QUICK), "systems": list(SYSTEMS),
                "peers": {**SETTINGS, "tuner": "tuner with new defaults"}}
    previous = {"settings": json.loads(json.dumps({**settings, "peers": SETTINGS})), "machine": machine,
                "cells": {"hf/0": {"curve": []}, "optuna/0": {"curve": []}, "tuner/0": {"curve": []}}}
    # tuner's settings changed: its cell runs again, the peers' are taken
    assert sorted(reusable_cells(previous, settings, machine)) == ["hf/0", "optuna/0"]
    assert sorted(reusable_cells(previous, {**settings, "peers": SETTINGS}, machine)) == ["hf/0", "optuna/0",
                                                                                          "tuner/0"]
    with pytest.raises(ValueError, match="another mode or sizing"):
        reusable_cells(previous, {**settings, "sizing": {**asdict(QUICK), "budget_cpu_s": 1.0}}, machine)
    with pytest.raises(ValueError, match=r"another machine \(cpu_capability, precision differ\)"):
        reusable_cells(previous, settings, {**machine, "cpu_capability": "AVX512", "precision": "bf16-mixed"})


def _cells() -> dict[str, dict]:
    test = {"kendall_tau": 0.6, "pmr": 0.1}
    return {
        "hf/0": {"curve": [[100.0, 0.5], [200.0, 0.6]], "test": test, "trials": 4},
        "optuna/0": {"curve": [[50.0, 0.55]], "test": test, "trials": 5},
        "random/0": {"curve": [[80.0, 0.4]], "test": {"kendall_tau": 0.3, "pmr": 0.0}, "trials": 6},
        "tuner/0": {"curve": [[40.0, 0.58], [150.0, 0.7]], "test": {"kendall_tau": 0.7, "pmr": 0.2}, "trials": 3},
        "hf/1": {"curve": [[100.0, 0.8]], "test": test, "trials": 4},
        "optuna/1": {"curve": [[60.0, 0.5]], "test": test, "trials": 5},
        "random/1": {"curve": [], "test": {"error": "nothing"}, "trials": 0},
        "tuner/1": {"curve": [[30.0, 0.5]], "test": {"kendall_tau": 0.5, "pmr": 0.1}, "trials": 2},
    }


def test_summary_targets_the_best_median_and_pairs_tuner_with_each_peer() -> None:
    summary = summarize(_cells(), SYSTEMS, [0, 1], budget_s=300.0)
    # median best validation tau: hf 0.7, optuna 0.525, random 0.4 (one seed), tuner 0.6
    assert summary["target_val_kendall_tau"] == pytest.approx(0.69)
    assert summary["systems"]["hf"]["cpu_s_to_target"] == [None, 100.0]
    assert summary["systems"]["hf"]["cpu_s_to_target_median"] == pytest.approx((300.0 + 100.0) / 2)
    assert summary["systems"]["tuner"]["cpu_s_to_target"] == [150.0, None]
    hf = summary["speedup_tuner_vs"]["hf"]  # seed 0: 300 / 150 = 2; seed 1: 100 / 300
    assert hf["median_ratio"] == pytest.approx((2 + 1 / 3) / 2) and (hf["faster_in"], hf["slower_in"]) == (1, 1)
    assert summary["speedup_tuner_vs"]["optuna"]["seeds"] == 2
    assert summary["test_kendall_tau"]["tuner"] == pytest.approx(0.6)
    assert summary["systems"]["random"]["test_kendall_tau"]["n"] == 1


def test_markdown_names_every_system_the_nulls_and_the_settings() -> None:
    results = {
        "cells": _cells(),
        "summary": summarize(_cells(), SYSTEMS, [0, 1], budget_s=300.0),
        "settings": {"quick": True, "sizing": {**QUICK.__dict__, "seeds": (0, 1)}, "systems": list(SYSTEMS),
                     "peers": SETTINGS},
        "machine": {"summary": "AMD EPYC (AVX2, no native bf16), 2 cores", "precision": "32-true"},
        "command": "python -m bench.head_to_head --quick",
        "output": "bench/results/head_to_head_quick.json",
    }
    text = render_markdown(results)
    assert "### Head-to-head (quick)" in text and "; 2 seed(s), a budget" in text
    assert "| tuner (defaults) | 0.600 [0.500, 0.700] | 0.600 [0.500, 0.700] |" in text
    assert "CPU s to validation tau 0.690" in text and "| 200 (1 of 2 never) |" in text  # hf
    assert "- HF Trainer.hyperparameter_search: 1.17x; tuner faster in 1, slower in 1 of 2 seeds; p = 1" in text
    for system in SYSTEMS:
        assert SETTINGS[system] in text
    assert "head_to_head_quick.html" in text and "(bench/results/head_to_head_quick.png)" in text
    assert "--reuse" not in text
    cells = {**_cells(), "hf/0": {**_cells()["hf/0"], "reused_from": "bench/results/earlier.json"},
             "hf/1": {**_cells()["hf/1"], "reused_from": "bench/results/earlier.json"}}
    text = render_markdown({**results, "cells": cells})
    assert "Taken from `bench/results/earlier.json`" in text and "the cells hf/0, hf/1." in text
    stopped = {key: cell for key, cell in _cells().items() if key != "tuner/1"}
    assert "1 of 2 seeds finished (a stopped run; it resumes)" in render_markdown({**results, "cells": stopped})


def test_the_curves_are_drawn_as_a_png(tmp_path: Path) -> None:
    results = {"cells": _cells(), "settings": {"sizing": {"budget_cpu_s": 300.0}}}
    path = tmp_path / "curves.png"
    curves_png(results, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1080, 660)  # 9 x 5.5 inches at 120 dpi
    curves_png({**results, "cells": {}}, tmp_path / "empty.png")
    assert (tmp_path / "empty.png").read_bytes() != data  # the curves are drawn, not just the axes


def test_section_is_replaced_in_place_or_appended() -> None:
    first = replace_section("# Benchmarks\n\nintro\n", "h2h", "one")
    assert first == "# Benchmarks\n\nintro\n\n<!-- h2h:start -->\none\n<!-- h2h:end -->\n"
    second = replace_section(first + "\nafter\n", "h2h", "two")
    assert "one" not in second and "<!-- h2h:start -->\ntwo\n<!-- h2h:end -->" in second and second.endswith("after\n")
    assert replace_section("", "h2h", "x") == "<!-- h2h:start -->\nx\n<!-- h2h:end -->\n"
