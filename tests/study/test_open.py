"""Opening a study: a study file checked as it loads, and a study in storage refused when it disagrees."""

from __future__ import annotations

import uuid
from pathlib import Path

import optuna
import pytest

from tuner.cli import main
from tuner.errors import ConfigError, TunerError
from tuner.keys import HEARTBEAT_ATTR
from tuner.storage.urls import mask
from tuner.study.open import load_study_file, open_study
from tuner.study.queries import trials

QUICK = ["--set", "trainer.max_epochs=1", "--set", "trainer.limit_train_batches=2", "--set",
         "trainer.limit_val_batches=1", "--set", 'study.pruner="none"']


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


