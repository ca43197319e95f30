"""The pre-flight check: a study that cannot work fails in one line, in seconds, before it creates anything."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import huggingface_hub.constants
import pytest

from tuner.cli import main
from tuner.study.open import load_study_file
from tuner.study.preflight import check


def write_bad_files(folder: Path) -> None:
    (folder / "latin1.lower").write_bytes(b"first caf\xe9 . <eos> second one .\n")
    (folder / "table.csv").write_text("id,story\n1,first one. second one.\n", encoding="utf-8")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ('data.train="../missing.lower"', "missing.lower does not exist"),
        ('data.train="../latin1.lower"', "latin1.lower:1: not valid UTF-8 (byte 0xe9 at column 10)"),
        ('data.validation="../table.csv"', "table.csv: unknown column: neither 'sentences'"),
        ('model.backbone="/nowhere/tiny-bert"', "model.backbone: backbone folder /nowhere/tiny-bert does not exist"),
        ('model.backbone="nobody/no-such-model"',
         "model.backbone: backbone 'nobody/no-such-model' is not in the Hugging Face cache, and HF_HUB_OFFLINE is set"),
        ('search.backbone=["TINY", "nobody/no-such-model"]', "search.backbone[1]: backbone 'nobody/no-such-model'"),
        ('study.metric="val_nope"', "study.metric: the model never logs 'val_nope'; it logs val_acc, val_kendall_tau"),
        ("data.max_sentences=80", "data.max_length 96 cannot hold data.max_sentences 80"),
    ],
)
@pytest.mark.parametrize("workers", [1, 2])
def test_a_broken_study_fails_before_creating_anything(study_dir: Path, tiny_bert: str, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str], override: str, message: str,
                                                       workers: int) -> None:
    monkeypatch.chdir(study_dir)
    write_bad_files(study_dir)
    started = time.monotonic()
    code = main(["run", "--study", "tiny", "--workers", str(workers), "--set", override.replace("TINY", tiny_bert)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("tuner: error: ") and message in err, err
    assert not (study_dir / "study.db").exists()  # no study, no trial: nothing spent
    assert not (study_dir / "runs").exists()
    assert time.monotonic() - started < 30


def test_an_unreachable_hub_is_asked_once(study_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Without the network, loading a hub backbone retries for most of a minute; the check asks once."""
    monkeypatch.chdir(study_dir)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}")  # nothing listens there
    started = time.monotonic()
    code = main(["run", "--study", "tiny", "--set", 'model.backbone="nobody/no-such-model"'])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "cannot look up backbone 'nobody/no-such-model' on the Hugging Face hub" in err and err.count("\n") == 1
    assert time.monotonic() - started < 10
    assert not (study_dir / "study.db").exists()


def test_a_signal_during_the_check_stops_the_command_and_creates_nothing(
        study_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from tuner.study import preflight

    def interrupted(config: object) -> object:
        os.kill(os.getpid(), signal.SIGTERM)  # handled at once: no trial to end
        raise AssertionError("the signal did not stop the check")

    monkeypatch.chdir(study_dir)
    monkeypatch.setattr(preflight, "load_documents", interrupted)
    assert main(["run", "--study", "tiny"]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err == "tuner: stopped by SIGTERM\n"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back
    assert not (study_dir / "study.db").exists()


def test_the_check_reads_every_split_and_the_logged_metrics(study_dir: Path, tiny_bert: str,
                                                            tiny_roberta: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(study_dir)
    run = load_study_file("tiny", [f'search.backbone=["{tiny_roberta}", "{tiny_bert}"]', 'study.metric="val_pmr"',
                                   "trainer.limit_val_batches=0.01"])  # less than one batch: the check runs one anyway
    result = check(run)
    assert result.documents == {"train": 96, "validation": 32}
    assert result.backbones == (tiny_roberta, tiny_bert)
    assert result.metrics == ("val_acc", "val_kendall_tau", "val_loss", "val_pmr")
    assert result.seconds < 30
    assert not (study_dir / "study.db").exists() and not (study_dir / "runs").exists()
