"""Studies end to end on a temporary SQLite file, with the tiny backbone."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from test_cli import tuner

from tuner import losses
from tuner.cli import main
from tuner.config import LRFinderConfig, load_study
from tuner.errors import ConfigError, TunerError
from tuner.objective import judge_finder
from tuner.runner import load_run, locate_study, open_study, record_test, run_study, trials


def test_run_completes_the_budget_prunes_and_records(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(study_dir)
    run = load_run("tiny")
    summary = run_study(run, progress=False)
    assert summary.finished == 5 and summary.trials_run == 5
    study = open_study(run)
    states = [t.state for t in study.trials]
    assert len(states) == 5 and optuna.trial.TrialState.PRUNED in states
    baseline = study.trials[0]
    assert baseline.user_attrs["baseline"] and baseline.params == {"learning_rate": 3e-5, "batch_size": 8}
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


def test_trials_and_best_json_match_the_storage(study_dir: Path) -> None:
    out = tuner("run", "--study", "tiny", "--n-trials", "3", cwd=study_dir)
    assert out.returncode == 0, out.stderr
    assert "best: trial" in out.stdout
    rows = json.loads(tuner("trials", "--study", "tiny", "--json", cwd=study_dir).stdout)
    best = json.loads(tuner("best", "--study", "tiny", "--json", cwd=study_dir).stdout)
    with sqlite3.connect(study_dir / "study.db") as db:
        stored = dict(db.execute("select number, state from trials").fetchall())
        values = dict(db.execute(
            "select t.number, v.value from trials t join trial_values v on v.trial_id = t.trial_id").fetchall())
    assert {r["number"]: r["state"] for r in rows} == stored
    for row in rows:
        assert set(row) >= {"number", "state", "value", "params", "attrs"}
        assert set(row["params"]) >= {"learning_rate", "backbone", "batch_size"}
        if row["state"] == "COMPLETE":
            assert row["value"] == pytest.approx(values[row["number"]])
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    assert best["number"] == max(complete, key=lambda r: r["value"])["number"]
    listed = json.loads(tuner("studies", "--storage", f"sqlite:///{study_dir / 'study.db'}", "--json",
                              cwd=study_dir).stdout)
    assert listed["studies"] == [{"name": "tiny", "trials": 3, "best_value": pytest.approx(best["value"])}]
    assert listed["files"] == [str(study_dir / "studies" / "tiny.toml")]
    order = tuner("order", "--study", "tiny", stdin="second a .\nfirst b .\n", cwd=study_dir)
    assert order.returncode == 0, order.stderr
    assert sorted(order.stdout.splitlines()) == ["first b .", "second a ."]


def test_failures_are_recorded_and_the_study_goes_on(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def nan_loss(scores: torch.Tensor, gold: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return scores.sum() * math.nan

    def broken(scores: torch.Tensor, gold: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the loss exploded on purpose")

    monkeypatch.setitem(losses.LOSSES, "mse", nan_loss)
    monkeypatch.setitem(losses.LOSSES, "listmle", broken)
    monkeypatch.chdir(study_dir)
    run = load_run("tiny", ['study.sampler={type="grid", learning_rate=[2e-3]}', "study.baseline=false",
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
    run = load_run("tiny", [f'study.lr_finder={{mode="{mode}", num_training=20}}', "study.n_trials=3",
                            "search.batch_size=[8]", 'study.pruner="none"'])
    run_study(run, progress=False)
    study = open_study(run)
    finders = [t.user_attrs["lr_finder"] for t in study.trials]
    assert finders[0]["used"] == "baseline"
    for info, trial in zip(finders[1:], study.trials[1:], strict=True):
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


def test_timeout_stops_after_the_current_trial(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(study_dir)
    summary = run_study(load_run("tiny"), timeout=0.05, progress=False)  # any trial takes longer
    assert summary.trials_run == 1 and summary.finished == 1


def test_a_missing_metric_fails_the_trial(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(study_dir)
    run = load_run("tiny", ['study.metric="val_tau"', "study.n_trials=1"])
    with pytest.raises(ConfigError, match="study.metric: the model never logs 'val_tau'"):
        run_study(run, progress=False)  # the pre-flight check finds it before any trial
    run_study(run, progress=False, check=False)  # a worker of `--workers` does not check again
    trial = open_study(run).trials[0]
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs["fail_reason"].startswith("metric 'val_tau' was not logged")


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
    run = load_run("tiny")
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
    assert baseline.user_attrs["retry_of"] == 0 and baseline.params == {"learning_rate": 3e-5, "batch_size": 8}
    assert baseline.state == sampled.state == optuna.trial.TrialState.COMPLETE


def test_the_same_failure_three_times_in_a_row_stops_the_run(
        study_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from tuner.model import SentenceOrderer

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
    trials = open_study(load_run("tiny")).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL] * 3


def test_a_new_storage_never_overwrites_an_earlier_studys_trials(study_dir: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(study_dir)
    first = load_run("tiny", ["study.n_trials=1"])
    run_study(first, progress=False)
    second = load_run("tiny", ["study.n_trials=1", f'study.storage="sqlite:///{study_dir / "other.db"}"'])
    run_study(second, progress=False)
    old, new = open_study(first).trials[0].user_attrs, open_study(second).trials[0].user_attrs
    assert old["trial_dir"] != new["trial_dir"] and new["trial_dir"].endswith("trial-0000-2")
    assert Path(old["checkpoint"]).is_file() and Path(new["checkpoint"]).is_file()


def test_judge_finder_rejects_a_flat_curve() -> None:
    config = LRFinderConfig()
    lrs = [1e-6 * 10 ** (i / 20) for i in range(80)]
    flat = [0.69 + 0.001 * math.sin(i) for i in range(80)]
    assert judge_finder(lrs, flat, 8.6e-3, config)[0] is False
    dropping = [0.69 - 0.3 * min(i, 50) / 50 + (0.5 if i > 70 else 0) for i in range(80)]
    assert judge_finder(lrs, dropping, 1e-4, config) == (True, "loss dropped 37.2%")
    assert judge_finder(lrs, dropping, None, config)[0] is False


def test_reopening_with_another_metric_is_refused(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(study_dir)
    open_study(load_run("tiny"))
    with pytest.raises(TunerError, match="optimises val_kendall_tau, not val_pmr"):
        open_study(load_run("tiny", ['study.metric="val_pmr"']))
    with pytest.raises(TunerError, match="is to maximize, not minimize"):
        open_study(load_run("tiny", ['study.direction="minimize"']))
    with pytest.raises(TunerError, match="no study 'other'"):
        trials(load_run("tiny", ['study.name="other"']))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ('study.sampler="annealing"', "unknown sampler 'annealing'"),
        ('study.pruner="early"', "unknown pruner 'early'"),
        ('study.pruner={type="median", warmup=3}', "study.pruner: median does not take these options"),
        ("search.batch_size=[]", "search.batch_size: the list of choices is empty"),
        ("search.learning_rate=[1e-3, 1e-5]", "search.learning_rate: needs 0 < low <= high"),
        ('study.lr_finder="maybe"', "unknown mode 'maybe'"),
        ("study.n_trials=0", "study.n_trials: must be positive"),
        ("study.colour=1", "unknown key 'colour'"),
    ],
)
def test_bad_study_sections_name_file_and_key(study_dir: Path, monkeypatch: pytest.MonkeyPatch, override: str,
                                              message: str) -> None:
    monkeypatch.chdir(study_dir)
    with pytest.raises(ConfigError) as err:
        load_run("tiny", [override])
    assert message in str(err.value) and str(err.value).startswith(f"--set {override}: ")


def test_bad_cli_flags_and_storage(study_dir: Path) -> None:
    out = tuner("run", "--study", "tiny", "--n-trials", "zero", cwd=study_dir)
    assert out.returncode == 2 and "expected a whole number, got 'zero'" in out.stderr
    out = tuner("run", "--study", "tiny", "--storage", "postgresql://u:hunter2@127.0.0.1:1/x", cwd=study_dir)
    assert out.returncode == 2 and "cannot open storage postgresql://u:***@127.0.0.1:1/x" in out.stderr
    assert "hunter2" not in out.stderr + out.stdout


def test_shipped_studies_have_valid_search_sections() -> None:
    for path in (Path(__file__).resolve().parents[1] / "studies").glob("*.toml"):
        assert load_study(path).study.n_trials > 0


@pytest.mark.parametrize("sampler", ['"tpe"', '"random"', '"gp"', '{type="grid", learning_rate=[1e-4, 1e-3]}'])
@pytest.mark.parametrize("pruner", ["median", "percentile", "successive_halving", "hyperband", "patient", "none"])
def test_every_sampler_and_pruner_builds_and_samples(study_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                     sampler: str, pruner: str) -> None:
    from tuner import search

    monkeypatch.chdir(study_dir)
    run = load_run("tiny", [f"study.sampler={sampler}", f'study.pruner="{pruner}"'])
    study = optuna.create_study(sampler=search.build_sampler(run.study.sampler, run),
                                pruner=search.build_pruner(run.study.pruner), direction="maximize")
    trial = study.ask()
    sampled = search.sample(trial, run)
    assert 1e-5 <= sampled.model.learning_rate <= 3e-3 and sampled.data.batch_size in (8, 16)
    if sampler == '"tpe"':
        assert study.sampler._multivariate and study.sampler._constant_liar


def test_locate_study_by_file_or_by_name(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(study_dir)
    monkeypatch.delenv("TUNER_STORAGE", raising=False)
    name, url, run = locate_study("tiny")
    assert name == "tiny" and url == f"sqlite:///{study_dir / 'study.db'}" and run is not None
    assert locate_study("tiny", "sqlite:///x.db")[1] == "sqlite:///x.db"
    # a study without a file here: its name in the storage given
    assert locate_study("elsewhere </b>", "sqlite:///x.db") == ("elsewhere </b>", "sqlite:///x.db", None)
    with pytest.raises(ConfigError, match="nope.toml does not exist"):
        locate_study("nope.toml")
    (study_dir / "folder").mkdir()
    with pytest.raises(ConfigError, match="study file .*folder is a directory, not a file"):
        locate_study(str(study_dir / "folder"))


def test_record_test_keeps_the_best_trials_test_metrics(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(study_dir)
    run = load_run("tiny")
    study = open_study(run)
    for value in (0.2, 0.6, 0.4):
        study.add_trial(optuna.trial.create_trial(value=value))
    record_test(run, {"kendall_tau": 0.55, "pmr": 0.1})
    assert open_study(run).user_attrs["test:1"] == {"kendall_tau": 0.55, "pmr": 0.1}
