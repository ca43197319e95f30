"""Studies end to end on a temporary SQLite file, with the tiny backbone, and --workers."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from tuner.cli import main
from tuner.study.open import load_study_file, open_study
from tuner.study.run import run_study


def test_run_completes_the_budget_prunes_and_records(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(study_dir)
    run = load_study_file("tiny")
    summary = run_study(run, progress=False)
    assert summary.finished == 5 and summary.trials_run == 5
    study = open_study(run)
    states = [t.state for t in study.trials]
    assert len(states) == 5 and optuna.trial.TrialState.PRUNED in states
    baseline = study.trials[0]
    assert baseline.user_attrs["baseline"] and baseline.params == {"learning_rate": 5e-5, "batch_size": 8}
    for trial in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        attrs = trial.user_attrs
        assert {"val_kendall_tau", "val_pmr", "val_acc", "val_loss", "epochs", "lr_used", "lr_finder", "wall_s",
                "host", "pid", "worker", "seed", "data_fingerprint", "checkpoint", "versions"} <= set(attrs)
        assert attrs["versions"]["optuna"] == optuna.__version__
        # the study asks 32-true; the machine it ran on is recorded with what decided
        assert attrs["hardware"]["precision"] == "32-true" and attrs["hardware"]["precision_asked"] == "32-true"
        assert {"cpu_model", "cpu_capability", "amx", "avx512_bf16", "torch_threads", "gpu"} <= set(attrs["hardware"])
        assert Path(attrs["checkpoint"]).is_file()
        assert trial.value == max(r["val_kendall_tau"] for r in attrs["history"])
        # two validations per epoch, each reported at its own step (no collisions at step = epoch)
        assert sorted(trial.intermediate_values) == list(range(len(attrs["history"])))
        assert len(attrs["history"]) == 2 * attrs["epochs"]
        assert (Path(attrs["trial_dir"]) / "logs" / "metrics.csv").is_file()
    # a second run resumes to the budget and no further
    assert run_study(run, progress=False).trials_run == 0
    assert run_study(run, n_trials=6, progress=False).trials_run == 1
    assert len(open_study(run).trials) == 6


def test_timeout_stops_after_the_current_trial(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(study_dir)
    summary = run_study(load_study_file("tiny"), timeout=0.05, progress=False)  # any trial takes longer
    assert summary.trials_run == 1 and summary.finished == 1


QUICK = ["--set", "trainer.max_epochs=1", "--set", "trainer.limit_train_batches=2", "--set",
         "trainer.limit_val_batches=1", "--set", 'study.pruner="none"']


def test_an_error_of_the_study_in_a_trial_stops_the_run_and_spends_nothing(
        study_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A worker of `--workers` skips the pre-flight check: a data file gone then fails its first trial, and
    stops it. Once the file is back, `tuner run` carries on to the budget, the baseline first."""
    monkeypatch.chdir(study_dir)
    train = study_dir / "train.lower"
    train.rename(study_dir / "train.away")
    code = main(["run", "--study", "tiny", "--worker-id", "w0", "--set", "study.n_trials=2", *QUICK])
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines()[-1] == f"tuner: error: data file {train} does not exist", err
    run = load_study_file("tiny")
    failed, queued = open_study(run).trials
    assert failed.state == optuna.trial.TrialState.FAIL and failed.user_attrs["study_error"]
    assert failed.user_attrs["fail_reason"] == f"DataError: data file {train} does not exist"
    assert queued.state == optuna.trial.TrialState.WAITING and queued.user_attrs["baseline"]

    (study_dir / "train.away").rename(train)
    assert main(["run", "--study", "tiny", "--set", "study.n_trials=2", *QUICK]) == 0
    out = capsys.readouterr().out
    assert "study tiny in sqlite:///" in out and ": 2/2 trials finished, 2 run now" in out
    failed, baseline, sampled = open_study(run).trials
    assert failed.state == optuna.trial.TrialState.FAIL
    assert baseline.user_attrs["retry_of"] == 0 and baseline.params == {"learning_rate": 5e-5, "batch_size": 8}
    assert baseline.state == sampled.state == optuna.trial.TrialState.COMPLETE


def test_the_same_failure_three_times_in_a_row_stops_the_run(
        study_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from tuner.model.orderer import SentenceOrderer

    def broken(self: SentenceOrderer) -> None:
        raise RuntimeError("the optimizer is broken on purpose")

    monkeypatch.chdir(study_dir)
    monkeypatch.setattr(SentenceOrderer, "configure_optimizers", broken)  # training only: the check passes
    code = main(["run", "--study", "tiny", "--set", "study.n_trials=5", *QUICK])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.splitlines()[-1] == ("tuner: error: 3 trials in a row failed with the same error: "
                                             "RuntimeError: the optimizer is broken on purpose; stopping")
    assert "3/5 trials finished, 3 run now" in captured.out
    trials = open_study(load_study_file("tiny")).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL] * 3


def test_a_new_storage_never_overwrites_an_earlier_studys_trials(study_dir: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(study_dir)
    first = load_study_file("tiny", ["study.n_trials=1"])
    run_study(first, progress=False)
    second = load_study_file("tiny", ["study.n_trials=1", f'study.storage="sqlite:///{study_dir / "other.db"}"'])
    run_study(second, progress=False)
    old, new = open_study(first).trials[0].user_attrs, open_study(second).trials[0].user_attrs
    assert old["trial_dir"] != new["trial_dir"] and new["trial_dir"].endswith("trial-0000-2")
    assert Path(old["checkpoint"]).is_file() and Path(new["checkpoint"]).is_file()
