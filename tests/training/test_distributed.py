"""Several devices per trial: a real study on SQLite whose trials each train on 2 CPU ranks (gloo)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from conftest import synthetic_documents, write_lines
from processes import run_tuner

MAX_EPOCHS = 3


def test_ddp_trials_prune_on_every_rank_and_ranks_agree(tmp_path: Path, tiny_bert: str) -> None:
    write_lines(tmp_path / "train.lower", synthetic_documents(64, seed=10))
    write_lines(tmp_path / "val.lower", synthetic_documents(16, seed=11))
    # A grid over max_epochs gives one trial of each. Successive halving with a bootstrap count above the
    # budget prunes every trial that reaches its first rung (the 3rd validation): the 3-epoch trial is
    # pruned in its 2nd epoch whatever its scores, and the 1-epoch trial (2 validations) completes.
    study = tmp_path / "ddp.toml"
    study.write_text(f"""
[data]
train = "train.lower"
validation = "val.lower"
separator = " <eos> "
max_length = 96
batch_size = 8

[model]
backbone = "{tiny_bert}"
warmup = 0.0

[trainer]
max_epochs = {MAX_EPOCHS}
precision = "32-true"
accelerator = "cpu"
devices = 2
strategy = "ddp"
val_check_interval = 0.5
output_dir = "{tmp_path / 'runs'}"

[study]
n_trials = 2
storage = "sqlite:///{tmp_path / 'study.db'}"
sampler = {{ type = "grid", seed = 0, learning_rate = [1e-3] }}
pruner = {{ type = "successive_halving", min_resource = 2, bootstrap_count = 10 }}
lr_finder = "off"
baseline = false

[search]
learning_rate = [1e-4, 3e-3]
max_epochs = [1, {MAX_EPOCHS}]
""")
    # the real command, whose command line Lightning's default DDP launcher would re-run once per rank
    out = run_tuner("run", "--study", str(study), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]

    trials = optuna.load_study(study_name="ddp", storage=f"sqlite:///{tmp_path / 'study.db'}").trials
    assert len(trials) == 2  # no rank opened a trial of its own
    by_epochs = {t.params["max_epochs"]: t for t in trials}
    pruned, complete = by_epochs[MAX_EPOCHS], by_epochs[1]

    assert pruned.state == optuna.trial.TrialState.PRUNED, pruned.user_attrs.get("fail_reason")
    assert sorted(pruned.intermediate_values) == [0, 1, 2]  # reported by rank 0, through the trial's process
    assert len(pruned.user_attrs["history"]) == 3  # rank 0's callbacks came back to the trial's process
    assert pruned.user_attrs["epochs"] < MAX_EPOCHS
    assert Path(pruned.user_attrs["checkpoint"]).is_file()

    assert complete.state == optuna.trial.TrialState.COMPLETE
    assert complete.value == max(r["val_kendall_tau"] for r in complete.user_attrs["history"])
    assert complete.user_attrs["epochs"] == 1 and len(complete.user_attrs["history"]) == 2

    # 64 documents in batches of 8 are 8 batches, 4 per rank and epoch, with a validation every 2: the pruned
    # trial stopped after its 3rd validation on both ranks, and the complete one ran its 4 steps
    for trial, steps in ((pruned, 6), (complete, 4)):
        ranks = trial.user_attrs["ddp_ranks"]
        assert [r["rank"] for r in ranks] == [0, 1]
        assert len({r["pid"] for r in ranks} | {trial.user_attrs["pid"]}) == 3  # two ranks besides the worker
        for key in ("settings", "weights", "learning_rate", "batch_size", "backbone", "global_step", "epochs"):
            assert ranks[0][key] == ranks[1][key], key
        assert ranks[0]["learning_rate"] == pytest.approx(trial.params["learning_rate"])
        assert ranks[0]["backbone"] == tiny_bert and ranks[0]["batch_size"] == 8
        assert ranks[0]["global_step"] == steps
