"""Studies end to end on a temporary SQLite file, with the tiny backbone, and --workers."""

from __future__ import annotations

import uuid
from pathlib import Path

import optuna
import pytest

from tuner.cli import main
from tuner.errors import ConfigError, TunerError
from tuner.keys import HEARTBEAT_ATTR
from tuner.storage.urls import mask
from tuner.study.queries import trials
from tuner.study.run import load_study_file, open_study, run_study


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


def test_reopening_with_another_metric_is_refused(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(study_dir)
    open_study(load_study_file("tiny"))
    with pytest.raises(TunerError, match="optimises val_kendall_tau, not val_pmr"):
        open_study(load_study_file("tiny", ['study.metric="val_pmr"']))
    with pytest.raises(TunerError, match="is to maximize, not minimize"):
        open_study(load_study_file("tiny", ['study.direction="minimize"']))
    with pytest.raises(TunerError, match="no study 'other'"):
        trials(load_study_file("tiny", ['study.name="other"']))


def _refusal(storage: str, name: str, wrong: str, fix: str) -> str:
    return (f"study {name!r} in {mask(storage)} has {wrong} (heartbeat settings are fixed when a study is created: "
            f"every worker judges stale trials by them); use {fix}")


def test_reopening_with_other_heartbeat_settings_is_refused(study_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                            storage_url: str) -> None:
    monkeypatch.chdir(study_dir)
    name = f"beat-{uuid.uuid4().hex[:8]}"  # the server databases are shared by the tests
    study = [f'study.name="{name}"']
    open_study(load_study_file("tiny", study), storage_url)
    for override, wrong, fix in [
        ("study.grace_period=70", "grace_period 120, not 70", "--set study.grace_period=120"),
        ("study.heartbeat_interval=10", "heartbeat_interval 30, not 10", "--set study.heartbeat_interval=30"),
        ("study.heartbeat_interval=0", "heartbeat_interval 30, not 0", "--set study.heartbeat_interval=30"),
    ]:
        with pytest.raises(TunerError) as err:
            open_study(load_study_file("tiny", [*study, override]), storage_url)
        assert str(err.value) == _refusal(storage_url, name, wrong, fix)
    with pytest.raises(TunerError) as err:
        open_study(load_study_file("tiny", [*study, "study.heartbeat_interval=20", "study.grace_period=60"]),
                   storage_url)
    assert str(err.value) == _refusal(storage_url, name, "heartbeat_interval 30, not 20, grace_period 120, not 60",
                                      "--set study.heartbeat_interval=30 --set study.grace_period=120")
    # the study keeps its settings, and a worker with the same ones opens it
    reopened = open_study(load_study_file("tiny", study), storage_url)
    assert reopened.user_attrs[HEARTBEAT_ATTR] == {"heartbeat_interval": 30, "grace_period": 120}
    # a command that runs no trial (`tuner reap`, which has no --set) is not refused, and changes nothing
    reaper = open_study(load_study_file("tiny", [*study, "study.heartbeat_interval=0"]), storage_url, create=False)
    assert reaper.user_attrs[HEARTBEAT_ATTR] == {"heartbeat_interval": 30, "grace_period": 120}


def test_a_study_without_heartbeats_refuses_a_worker_with_them(study_dir: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    monkeypatch.chdir(study_dir)
    open_study(load_study_file("tiny", ["study.heartbeat_interval=0", "study.grace_period=5"]))
    # without heartbeats, the grace period does not matter
    open_study(load_study_file("tiny", ["study.heartbeat_interval=0"]))
    with pytest.raises(TunerError) as err:
        open_study(load_study_file("tiny"))
    assert str(err.value) == _refusal(f"sqlite:///{study_dir / 'study.db'}", "tiny", "heartbeat_interval 0, not 30",
                                      "--set study.heartbeat_interval=0")


def test_a_study_from_before_the_settings_were_stored_takes_the_first_workers(
        study_dir: Path, monkeypatch: pytest.MonkeyPatch, storage_url: str) -> None:
    monkeypatch.chdir(study_dir)
    name = f"old-{uuid.uuid4().hex[:8]}"
    old = optuna.create_study(study_name=name, storage=storage_url, direction="maximize")
    old.set_user_attr("metric", "val_kendall_tau")
    first = [f'study.name="{name}"', "study.grace_period=300"]
    assert open_study(load_study_file("tiny", first), storage_url).user_attrs[HEARTBEAT_ATTR] == {
        "heartbeat_interval": 30, "grace_period": 300}
    with pytest.raises(TunerError, match="grace_period 300, not 120"):
        open_study(load_study_file("tiny", [f'study.name="{name}"']), storage_url)


def test_tuner_run_with_other_heartbeat_settings_exits_with_status_2(
        study_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(study_dir)
    open_study(load_study_file("tiny"))
    assert main(["run", "--study", "tiny", "--set", "study.grace_period=70", *QUICK]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["tuner: error: " + _refusal(f"sqlite:///{study_dir / 'study.db'}", "tiny",
                                                            "grace_period 120, not 70", "--set study.grace_period=120")]
    assert open_study(load_study_file("tiny")).trials == []  # nothing ran


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
        load_study_file("tiny", [override])
    assert message in str(err.value) and str(err.value).startswith(f"--set {override}: ")


