"""The objective, through real studies on SQLite: failures recorded, a missing metric, finder results kept."""

from __future__ import annotations

import math
import signal
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

from tuner.data.module import SentenceOrderingData
from tuner.errors import ConfigError, DataError
from tuner.hpo import search
from tuner.hpo.objective import training_steps
from tuner.model import losses
from tuner.storage.records import retry_history
from tuner.study.open import load_study_file, open_study
from tuner.study.recovery import requeue
from tuner.study.run import run_study


def test_failures_are_recorded_and_the_study_goes_on(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def nan_loss(scores: torch.Tensor, gold: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return scores.sum() * math.nan

    def broken(scores: torch.Tensor, gold: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the loss exploded on purpose")

    monkeypatch.setitem(losses.LOSSES, "mse", nan_loss)
    monkeypatch.setitem(losses.LOSSES, "listmle", broken)
    monkeypatch.chdir(study_dir)
    run = load_study_file("tiny", ['study.sampler={type="grid", learning_rate=[2e-3]}', "study.baseline=false",
                                   'search.loss=["pairwise", "mse", "listmle"]', "search.batch_size=[8]",
                                   "study.n_trials=3"])
    run_study(run, progress=False)
    by_loss = {t.params["loss"]: t for t in open_study(run).trials}
    assert by_loss["pairwise"].state == optuna.trial.TrialState.COMPLETE
    assert by_loss["mse"].state == optuna.trial.TrialState.FAIL
    assert by_loss["mse"].user_attrs["fail_reason"].startswith("training loss is nan")
    assert by_loss["listmle"].state == optuna.trial.TrialState.FAIL
    assert by_loss["listmle"].user_attrs["fail_reason"] == "RuntimeError: the loss exploded on purpose"


@pytest.mark.parametrize("mode", ["suggest", "scale"])
def test_lr_finder_results_are_recorded(study_dir: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    monkeypatch.chdir(study_dir)
    run = load_study_file("tiny", [f'study.lr_finder={{mode="{mode}", num_training=20, max_cost=1}}',
                                   "study.n_trials=3", "search.batch_size=[8]", 'study.pruner="none"'])
    run_study(run, progress=False)
    study = open_study(run)
    finders = [t.user_attrs["lr_finder"] for t in study.trials]
    # the baseline runs the finder too, and trains at its suggestion where it is reliable
    assert finders[0]["used"] == ("suggestion" if finders[0]["reliable"] else "baseline (finder unreliable)")
    assert "lr_multiplier" not in study.trials[0].params
    for info, trial in zip(finders, study.trials, strict=True):
        assert info["mode"] == mode and "reliable" in info and "suggestion" in info
        # in suggest mode no study attribute holds the curve: the trial keeps it, for reports
        assert ("lr" in info and len(info["lr"]) == len(info["loss"]) > 0) == (mode == "suggest")
        expected = trial.params["learning_rate"] if not info["reliable"] else info["suggestion"] * info.get(
            "multiplier", 1.0)
        assert trial.user_attrs["lr_used"] == pytest.approx(expected)
    cached = [k for k in study.user_attrs if k.startswith("lr_finder:")]
    assert len(cached) == (1 if mode == "scale" else 0)
    if cached:
        curve: dict[str, Any] = study.user_attrs[cached[0]]
        assert len(curve["lr"]) == len(curve["loss"]) > 0


def test_a_missing_metric_fails_the_trial(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(study_dir)
    run = load_study_file("tiny", ['study.metric="val_tau"', "study.n_trials=1"])
    with pytest.raises(ConfigError, match="study.metric: the model never logs 'val_tau'"):
        run_study(run, progress=False)  # the pre-flight check finds it before any trial
    run_study(run, progress=False, check=False)  # a worker of `--workers` does not check again
    trial = open_study(run).trials[0]
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs["fail_reason"].startswith("metric 'val_tau' was not logged")


def test_a_signal_after_training_lets_the_trial_complete_then_stops(study_dir: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # training ended: a SIGTERM while the objective records what it did must not fail and requeue the trial
    set_user_attr = optuna.Trial.set_user_attr

    def recording(trial: optuna.Trial, key: str, value: Any) -> None:
        if key == "fit_s":  # the first thing recorded after the fit
            signal.raise_signal(signal.SIGTERM)
        set_user_attr(trial, key, value)

    monkeypatch.setattr(optuna.Trial, "set_user_attr", recording)
    monkeypatch.chdir(study_dir)
    run = load_study_file("tiny", ["study.n_trials=2", "study.baseline=false", 'study.pruner="none"',
                                   "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                                   "trainer.limit_val_batches=1"])
    summary = run_study(run, progress=False, check=False)
    assert summary.interrupted == "SIGTERM" and summary.trials_run == 1
    [trial] = open_study(run).trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.user_attrs["epochs"] == 1


def test_a_retry_trains_with_the_seed_of_the_first_attempt(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A retry replays the trial it replaces: the same settings and the same seed, not one of its own number."""
    monkeypatch.chdir(study_dir)
    (study_dir / "train.lower").rename(study_dir / "train.away")  # an error of the study: each attempt is retried
    run = load_study_file("tiny", ["study.n_trials=1", "trainer.seed=7"])
    for _ in range(3):
        with pytest.raises(DataError):
            run_study(run, progress=False, check=False)
    trials = open_study(run).trials
    assert [retry_history(t) for t in trials] == [[], [0], [0, 1]]
    assert [t.user_attrs["seed"] for t in trials] == [7, 7, 7]


def test_a_retry_that_starts_over_reports_its_own_validations(study_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A retry without a checkpoint to resume trains from scratch: its reports are its own, not its
    predecessor's (Optuna ignores a report at a step already present)."""
    monkeypatch.chdir(study_dir)
    run = load_study_file("tiny", ["study.n_trials=1", 'study.pruner="none"', "trainer.max_epochs=2",
                                   "trainer.val_check_interval=1.0", "trainer.limit_train_batches=2",
                                   "trainer.limit_val_batches=1"])
    study = open_study(run)
    study.enqueue_trial(search.baseline_params(run))
    crashed = study.ask()
    search.sample(crashed, run)
    crashed.set_user_attr("trial_dir", str(study_dir / "on-a-lost-machine"))  # no checkpoint to resume
    for step in range(3):
        crashed.report(-0.5, step)
    requeue(study, study.tell(crashed, state=optuna.trial.TrialState.FAIL), max_retries=2)
    run_study(run, progress=False, check=False)
    retry = open_study(run).trials[1]
    assert retry.state == optuna.trial.TrialState.COMPLETE and retry.user_attrs["retry_of"] == 0
    assert "resumed_from" not in retry.user_attrs
    taus = [record["val_kendall_tau"] for record in retry.user_attrs["history"]]
    assert len(taus) == 2 and retry.intermediate_values == dict(enumerate(taus))


def test_a_retry_that_resumes_takes_over_the_reports_of_the_checkpoints_trial(tmp_path: Path) -> None:
    from trivial_worker import open_trivial_study

    from tuner.hpo.objective import _resume_point

    study = open_trivial_study(f"sqlite:///{tmp_path / 's.db'}", "resume")
    crashed = study.ask()
    crashed.suggest_float("x", -10, 10)
    last = tmp_path / "trial-0000" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    # saved after two validations; the third was reported, and the worker killed before its checkpoint
    torch.save({"callbacks": {"ReportingPruningCallback": {"reports": 2}}}, last)
    crashed.set_user_attr("trial_dir", str(tmp_path / "trial-0000"))
    crashed.report(0.1, 0)
    crashed.report(0.2, 1)
    crashed.report(0.3, 2)
    requeue(study, study.tell(crashed, state=optuna.trial.TrialState.FAIL), max_retries=2)
    retry = study.ask()
    assert retry.number == 1 and not study.trials[1].intermediate_values  # not inherited when queued
    retry.set_user_attr("retry_of", 0)  # as the worker labels it
    assert _resume_point(retry) == last
    assert study.trials[1].intermediate_values == {0: 0.1, 1: 0.2}


def test_a_finder_costing_more_than_a_trial_is_not_run(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(study_dir)
    # 12 batches of 8 over 2 epochs: 24 training steps, so a 20-step finder costs 0.83 of a trial
    run = load_study_file("tiny", ['study.lr_finder={mode="scale", num_training=20, max_cost=0.5}', "study.n_trials=2",
                                   "search.batch_size=[8]", 'study.pruner="none"', "study.baseline=false"])
    data = SentenceOrderingData(run.data, run.model.backbone.name)
    data.setup("fit")
    assert training_steps(run, data) == 24
    run_study(run, progress=False)
    study = open_study(run)
    for trial in study.trials:
        info = trial.user_attrs["lr_finder"]
        assert info["used"] == "sampled (finder too costly)"
        assert info["reason"] == "its 20 steps would cost more than 0.5 x this trial's 24 training steps"
        assert trial.user_attrs["lr_used"] == trial.params["learning_rate"] and "lr_multiplier" not in trial.params
    assert not [k for k in study.user_attrs if k.startswith("lr_finder:")]


def _fake_finder(monkeypatch: pytest.MonkeyPatch, reliable_for: set[int]) -> list[int]:
    """Replace the LR finder with one that records the batch size it ran for, suggests 1e-3 x that batch
    size, and is reliable for the batch sizes in ``reliable_for``."""
    from tuner.hpo import objective

    calls: list[int] = []

    def finder(run: Any, model: Any, data: Any, root: Path, signals: Any = None) -> dict[str, Any]:
        calls.append(run.data.batch_size)
        reliable = run.data.batch_size in reliable_for
        return {"suggestion": 1e-3 * run.data.batch_size, "reliable": reliable, "reason": "fake",
                "lr": [1e-5, 1e-4], "loss": [0.7, 0.6], "seconds": 0.5}

    monkeypatch.setattr(objective, "run_finder", finder)
    return calls


@pytest.mark.parametrize("scope", ["study", "config"])
def test_the_finder_runs_once_per_study_or_once_per_batch_size(study_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                               scope: str) -> None:
    monkeypatch.chdir(study_dir)
    calls = _fake_finder(monkeypatch, reliable_for={8, 16})
    run = load_study_file("tiny", [f'study.lr_finder={{mode="scale", scope="{scope}", num_training=20, max_cost=10}}',
                                   "study.n_trials=6", 'study.pruner="none"', "trainer.max_epochs=1",
                                   "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"])
    run_study(run, progress=False)
    trials = open_study(run).trials
    sizes = [t.params["batch_size"] for t in trials]
    assert set(sizes) == {8, 16}  # the random draws reach both batch sizes
    # the baseline (batch size 8, the first) runs the finder and trains at its suggestion times the middle of
    # the multiplier's range, sqrt(1 * 3)
    assert trials[0].user_attrs["lr_finder"]["used"] == "suggestion" and "lr_multiplier" not in trials[0].params
    assert trials[0].user_attrs["lr_used"] == pytest.approx(8e-3 * 3**0.5)
    assert calls == ([8] if scope == "study" else [8, 16])
    for trial in trials[1:]:
        served = 8 if scope == "study" else trial.params["batch_size"]
        info = trial.user_attrs["lr_finder"]
        assert info["key"].endswith(f"|{served}") and info["cached"] == (trial.number > sizes.index(served))
        assert 1.0 <= trial.params["lr_multiplier"] <= 3.0
        assert trial.user_attrs["lr_used"] == pytest.approx(1e-3 * served * trial.params["lr_multiplier"])


def test_a_study_wide_finder_runs_again_until_one_is_reliable(study_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(study_dir)
    calls = _fake_finder(monkeypatch, reliable_for={16})
    run = load_study_file("tiny", ['study.lr_finder={mode="scale", num_training=20, max_cost=10}', "study.n_trials=6",
                                   'study.pruner="none"', "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                                   "trainer.limit_val_batches=1"])
    run_study(run, progress=False)
    trials = open_study(run).trials
    first_16 = [t.params["batch_size"] for t in trials].index(16)
    assert calls == [8, 16]  # batch size 8's curve is unreliable, so the first trial of 16 runs its own
    baseline = trials[0]
    assert baseline.user_attrs["lr_finder"]["used"] == "baseline (finder unreliable)"
    assert baseline.user_attrs["lr_used"] == search.BASELINE_LEARNING_RATE
    for trial in trials[1:first_16]:  # batch size 8, before any curve was reliable: the sampled rate
        assert trial.user_attrs["lr_finder"]["used"] == "sampled (finder unreliable)"
        assert trial.user_attrs["lr_used"] == trial.params["learning_rate"]
    for trial in trials[first_16:]:  # from then on, 16's suggestion serves every batch size
        assert trial.user_attrs["lr_finder"]["key"].endswith("|16")
        assert trial.user_attrs["lr_used"] == pytest.approx(16e-3 * trial.params["lr_multiplier"])


def test_a_baseline_whose_finder_costs_too_much_trains_at_its_own_rate(study_dir: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(study_dir)
    calls = _fake_finder(monkeypatch, reliable_for={8, 16})
    run = load_study_file("tiny", ['study.lr_finder={mode="scale", num_training=20, max_cost=0.5}', "study.n_trials=1",
                                   'study.pruner="none"', "search.batch_size=[8]"])
    run_study(run, progress=False)
    [baseline] = open_study(run).trials
    assert not calls
    assert baseline.user_attrs["lr_finder"]["used"] == "baseline (finder too costly)"
    assert baseline.user_attrs["lr_used"] == search.BASELINE_LEARNING_RATE


def test_auto_validates_a_long_epoch_four_times_and_reports_each(study_dir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(study_dir)
    run = load_study_file("tiny", ['trainer.val_check_interval="auto"', "trainer.max_epochs=1", "study.n_trials=1",
                                   "search.batch_size=[2]", "data.batch_size=2", 'study.pruner="none"',
                                   "trainer.limit_val_batches=1"])
    data = SentenceOrderingData(run.data, run.model.backbone.name)
    data.setup("fit")
    assert training_steps(run, data) == 48
    run_study(run, progress=False)
    [trial] = open_study(run).trials
    assert [record["step"] for record in trial.user_attrs["history"]] == [12, 24, 36, 48]
    assert sorted(trial.intermediate_values) == [0, 1, 2, 3]
