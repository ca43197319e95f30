"""The learning-curve table: its grid, and a whole tiny table built, resumed and refused with other settings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import synthetic_documents, write_lines

from bench.lc_table import grid, log_grid, main
from tuner.study.open import load_study_file


def test_the_learning_rates_are_log_spaced_with_both_ends() -> None:
    rates = log_grid(1e-6, 1e-2, 13)
    assert rates[0] == 1e-6 and rates[-1] == 1e-2 and 1e-4 in rates and len(rates) == 13
    ratios = [b / a for a, b in zip(rates, rates[1:], strict=False)]
    assert max(ratios) / min(ratios) < 1.001


def test_the_grid_covers_every_choice_seed_by_seed(study_dir: Path, tiny_bert: str) -> None:
    run = load_study_file(str(study_dir / "studies" / "tiny.toml"),
                          ["search.batch_size=[4, 8]", "search.learning_rate=[1e-5, 1e-3]"])
    configs = grid(run, lr_values=3, seeds=2)
    assert len(configs) == 2 * 3 * 2 and len({c["key"] for c in configs}) == 12
    assert [c["seed"] for c in configs] == [0] * 6 + [1] * 6  # a partial table holds whole seeds first
    assert {c["learning_rate"] for c in configs} == {1e-5, 1e-4, 1e-3}


def test_a_tiny_table_is_built_resumed_and_kept_to_its_settings(study_dir: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    write_lines(study_dir / "test.lower", synthetic_documents(16, seed=12))
    output = tmp_path / "lc_table_tiny.json"
    args = ["--study", str(study_dir / "studies" / "tiny.toml"), "--set", 'data.test="../test.lower"',
            "--set", "search.batch_size=[8]", "--set", "search.learning_rate=[1e-4, 1e-3]",
            "--set", 'study.lr_finder={mode="scale", num_training=20}', "--set", "trainer.seed=5",
            "--train-docs", "32", "--val-docs", "16", "--lr-values", "2", "--seeds", "1", "--finder-seeds", "2",
            "--epochs", "1", "--output", str(output), "--work", str(tmp_path)]
    main([*args, "--max-hours", "0"])  # measures the fixed costs, then starts nothing
    table = json.loads(output.read_text())
    assert not table["configs"] and not table["finder"] and table["documents"]["train"] == 32
    main(args)
    table = json.loads(output.read_text())
    assert table["documents"] == {"train": 32, "validation": 16, "test": 16}
    assert len(table["configs"]) == 2 and len(table["finder"]) == 1 and len(table["sittings"]) == 2
    config = next(iter(table["configs"].values()))
    assert config["steps_per_epoch"] == 4 and len(config["train_loss"]) == 4
    curve = config["curve"]
    assert [r["step"] for r in curve] == [1, 2, 3, 4]  # four validations an epoch
    for earlier, later in zip(curve, curve[1:], strict=False):
        assert later["train_cpu_s"] > earlier["train_cpu_s"] and later["val_cpu_s"] > earlier["val_cpu_s"]
        assert later["tokens"] > earlier["tokens"]
    assert all(-1 <= r["val_kendall_tau"] <= 1 and -1 <= r["test_kendall_tau"] <= 1 for r in curve)
    curves = next(iter(table["finder"].values()))
    assert [c["seed"] for c in curves] == [5, 6]  # one curve per data-order seed
    assert all(len(c["lr"]) == len(c["loss"]) == 20 and c["cpu_s"] > 0 for c in curves)
    assert table["fixed_costs"]["import_cpu_s"] > 0
    assert not any(math.isnan(v) for v in config["train_loss"])

    capsys.readouterr()
    main(args)  # resumed: nothing left to train
    assert "2/2 configurations done" in capsys.readouterr().out
    assert json.loads(output.read_text())["configs"] == table["configs"]
    with pytest.raises(SystemExit, match="was built with other settings"):
        main([*args, "--evals-per-epoch", "2"])
