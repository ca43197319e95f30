"""End to end: the real ``tuner`` command as a subprocess on a tiny backbone and learnable documents."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy
from conftest import ORDINALS, require_server, synthetic_documents, write_lines
from processes import run_tuner

from tuner.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_bert: str) -> dict[str, object]:
    """One ``tuner train --json`` run shared by the tests below."""
    folder = tmp_path_factory.mktemp("e2e")
    train = write_lines(folder / "train.lower", synthetic_documents(192, seed=10))
    val = write_lines(folder / "val.lower", synthetic_documents(32, seed=11))
    test = write_lines(folder / "test.lower", synthetic_documents(32, seed=12))
    study = folder / "tiny.toml"
    study.write_text(f"""
[data]
train = "{train.name}"
validation = "{val.name}"
test = "{test.name}"
separator = " <eos> "
max_length = 96
batch_size = 8

[model]
backbone = "{tiny_bert}"
learning_rate = 1e-3
warmup = 0.0

[trainer]
max_epochs = 5
precision = "32-true"
accelerator = "cpu"
output_dir = "{folder / 'runs'}"
""")
    result = run_tuner("train", "--study", str(study), "--json", "--set", "trainer.seed=1")
    assert result.returncode == 0, result.stderr
    return {"result": json.loads(result.stdout), "folder": folder, "study": study}


def test_train_learns_and_saves_the_best_checkpoint(trained: dict) -> None:
    result = trained["result"]
    assert result["validation"]["kendall_tau"] > 0.5  # random order averages 0
    assert result["test"]["kendall_tau"] > 0.5
    assert 0 <= result["test"]["pmr"] <= 1 and 0 <= result["test"]["acc"] <= 1
    assert Path(result["best_checkpoint"]).is_file()
    assert result["epochs"] == 5
    assert (Path(result["run_dir"]) / "logs" / "metrics.csv").is_file()


def test_evaluate_in_the_training_precision_reproduces_the_test_metrics(trained: dict) -> None:
    # the run trained and tested in 32-true; evaluate's default, auto, may pick bf16 on this machine, and
    # a near tie between two sentences' scores can then flip
    result = trained["result"]
    out = run_tuner("evaluate", "--checkpoint", result["best_checkpoint"], "--precision", "32-true", "--json")
    assert out.returncode == 0, out.stderr
    metrics = json.loads(out.stdout)["test"]
    assert metrics["kendall_tau"] == pytest.approx(result["test"]["kendall_tau"], abs=1e-6)
    assert metrics["loss"] == pytest.approx(result["test"]["loss"], abs=1e-6)
    assert metrics["documents"] == 32


def test_evaluate_rejects_an_unknown_precision(trained: dict) -> None:
    out = run_tuner("evaluate", "--checkpoint", trained["result"]["best_checkpoint"], "--precision", "fp8")
    assert out.returncode == 2
    assert "invalid choice: 'fp8'" in out.stderr


def test_evaluate_runs_in_the_precision_best_here_not_the_checkpoints(
        trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from tuner import hardware
    from tuner.training import inference

    # a checkpoint trained in bf16 on a machine with native bf16, evaluated on a CPU without it
    stored = torch.load(trained["result"]["best_checkpoint"], map_location="cpu", weights_only=False)
    stored["tuner_run"]["trainer"]["precision"] = "bf16-mixed"
    checkpoint = tmp_path / "bf16.ckpt"
    torch.save(stored, checkpoint)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    used = []
    build = inference.build_trainer

    def spy(*args: object, **kwargs: object) -> object:
        trainer = build(*args, **kwargs)  # type: ignore[arg-type]
        used.append(trainer.precision)
        return trainer

    monkeypatch.setattr(inference, "build_trainer", spy)
    metrics = inference.evaluate_checkpoint(checkpoint)["test"]
    assert used == ["32-true"] and hardware.best_precision("cpu") == "32-true"
    assert metrics["kendall_tau"] == pytest.approx(trained["result"]["test"]["kendall_tau"], abs=1e-4)


def test_evaluate_on_other_files_with_reader_options(trained: dict, tmp_path: Path) -> None:
    tsv = write_lines(tmp_path / "more.tsv", synthetic_documents(20, seed=99), separator=" | ")  # --set wins
    bar = write_lines(tmp_path / "more.txt.lines", synthetic_documents(20, seed=99), separator=" | ")
    out = run_tuner("evaluate", "--checkpoint", trained["result"]["best_checkpoint"], "--data", str(tsv),
                "--data", str(bar), "--set", "data.separator= | ", "--json")
    assert out.returncode == 0, out.stderr
    metrics = json.loads(out.stdout)
    assert metrics[str(tsv)]["documents"] == metrics[str(bar)]["documents"] == 20
    assert metrics[str(tsv)]["kendall_tau"] == pytest.approx(metrics[str(bar)]["kendall_tau"])
    assert metrics[str(tsv)]["kendall_tau"] > 0.5


def test_evaluate_from_python_records_a_studys_test_metrics_as_the_cli_does(trained: dict, tmp_path: Path) -> None:
    """``evaluate(study=...)`` is ``tuner evaluate --study``: on the test split, the best trial's metrics go into
    the study (``test:NUMBER``) whichever of the two evaluates it; on another split, nothing is recorded."""
    import optuna

    from tuner import evaluate, load_study_file
    from tuner.config.schema import TrainerConfig
    from tuner.study.open import open_study

    run = load_study_file(str(trained["study"]))
    urls = {how: f"sqlite:///{tmp_path / how}.db" for how in ("python", "cli")}
    for url in urls.values():  # the same study in each: one complete trial, its checkpoint the one trained
        open_study(run, url).add_trial(optuna.trial.create_trial(
            value=0.5, user_attrs={"checkpoint": trained["result"]["best_checkpoint"]}))
    exact = TrainerConfig(precision="32-true")
    evaluate(study=run, storage=urls["python"], split="validation", trainer=exact)
    assert not open_study(run, urls["python"], create=False).user_attrs.get("test:0")
    from_python = evaluate(study=run, storage=urls["python"], trainer=exact)
    out = run_tuner("evaluate", "--study", str(trained["study"]), "--storage", urls["cli"], "--precision", "32-true",
                    "--json")
    assert out.returncode == 0, out.stderr
    from_cli = json.loads(out.stdout)
    recorded = {how: open_study(run, url, create=False).user_attrs.get("test:0") for how, url in urls.items()}
    assert recorded["python"] == from_python["test"] and recorded["cli"] == from_cli["test"]
    assert recorded["python"] == pytest.approx(recorded["cli"], abs=1e-4)
    assert recorded["python"]["kendall_tau"] == pytest.approx(trained["result"]["test"]["kendall_tau"], abs=1e-4)


def test_order_puts_a_shuffled_document_in_order(trained: dict, tmp_path: Path) -> None:
    document = synthetic_documents(1, seed=1234, sizes=(5, 5))[0]
    shuffled = [document[i] for i in (3, 0, 4, 2, 1)]
    out = run_tuner("order", "--checkpoint", trained["result"]["best_checkpoint"], stdin="\n".join(shuffled) + "\n")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert sorted(lines) == sorted(document)
    assert [line.split()[0] for line in lines][:2] == ORDINALS[:2]
    path = tmp_path / "doc.txt"
    path.write_text("\n".join(shuffled))
    assert run_tuner("order", "--checkpoint", trained["result"]["best_checkpoint"], str(path)).stdout == out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("train", "--study", "no-such-study"), "no study named 'no-such-study'"),
        (("train", "--study", "demo", "--set", "model.loss=hinge"), "model.loss: unknown loss 'hinge'"),
        (("evaluate", "--checkpoint", "missing.ckpt"), "checkpoint missing.ckpt does not exist"),
        (("order", "--checkpoint", "x.ckpt", "missing.txt"), "cannot read missing.txt"),
    ],
)
def test_bad_input_is_one_clear_line(args: tuple[str, ...], message: str) -> None:
    out = run_tuner(*args, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_train_on_a_bad_data_file_names_the_line(tmp_path: Path, tiny_bert: str) -> None:
    bad = tmp_path / "bad.lower"
    bad.write_bytes(b"a . <eos> b .\n\xc3\x28 broken . <eos> c .\n")
    study = tmp_path / "s.toml"
    study.write_text(f'[data]\ntrain = "bad.lower"\nvalidation = "bad.lower"\nseparator = " <eos> "\n'
                     f'[model]\nbackbone = "{tiny_bert}"\n')
    out = run_tuner("train", "--study", str(study))
    assert out.returncode == 2
    assert f"{bad}:2: not valid UTF-8" in out.stderr


# ------------------------------------------------------------------------------------ bad input, in process


def one_line_error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    """Run the command in this process; it must fail with status 2 and one ``tuner: error:`` line."""
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("tuner: error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture()
def study_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TUNER_STORAGE", raising=False)
    path = tmp_path / "s.toml"
    path.write_text('[data]\nbuiltin = "python-docs"\n')
    return path


@pytest.mark.parametrize("command", [["trials"], ["best"], ["reap"], ["report", "-o", "r.html"], ["dashboard"],
                                     ["evaluate"]])
def test_read_only_commands_create_no_database(capsys: pytest.CaptureFixture[str], study_file: Path,
                                               command: list[str]) -> None:
    for db in (study_file.parent / "missing.db", study_file.parent / "nope" / "missing.db"):
        err = one_line_error(capsys, [*command, "--study", str(study_file), "--storage", f"sqlite:///{db}"])
        assert f"no database at {db}" in err and "run the study first" in err
        assert sorted(p.name for p in study_file.parent.iterdir()) == ["s.toml"]
    assert "(folder " in err and "nope does not exist)" in err


def test_run_with_a_database_in_a_missing_folder(capsys: pytest.CaptureFixture[str], study_file: Path) -> None:
    db = study_file.parent / "nope" / "x.db"
    err = one_line_error(capsys, ["run", "--study", str(study_file), "--storage", f"sqlite:///{db}"])
    assert f"folder {db.parent} does not exist" in err
    assert sorted(p.name for p in study_file.parent.iterdir()) == ["s.toml"]


def test_studies_lists_files_without_creating_a_database(capsys: pytest.CaptureFixture[str],
                                                         study_file: Path) -> None:
    assert main(["studies", "--storage", f"sqlite:///{study_file.parent / 'missing.db'}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["studies"] == []
    assert sorted(p.name for p in study_file.parent.iterdir()) == ["s.toml"]


def _not_a_checkpoint(path: Path, kind: str) -> None:
    import zipfile

    import torch

    if kind == "text":
        path.write_text("these are not the weights you are looking for\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("notes.txt", "hello")
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "weights":
        torch.save({"weight": torch.zeros(3)}, path)
    else:  # another model's Lightning checkpoint
        torch.save({"state_dict": {"weight": torch.zeros(3)}, "hyper_parameters": {"hidden": 3},
                    "pytorch-lightning_version": "2.4.0"}, path)


@pytest.mark.parametrize("kind", ["text", "empty", "zip", "tensor", "weights", "lightning"])
def test_a_file_that_is_not_a_checkpoint(capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str) -> None:
    path = tmp_path / "model.ckpt"
    _not_a_checkpoint(path, kind)
    document = tmp_path / "doc.txt"
    document.write_text("Second.\nFirst.\n")
    for command in (["evaluate"], ["order", str(document)]):
        err = one_line_error(capsys, [*command, "--checkpoint", str(path)])
        assert f"checkpoint {path} is not a tuner checkpoint: " in err


def test_order_checks_the_checkpoint_even_for_one_sentence(capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    document = tmp_path / "doc.txt"
    document.write_text("Only one.\n")
    err = one_line_error(capsys, ["order", "--checkpoint", str(tmp_path / "missing.ckpt"), str(document)])
    assert f"checkpoint {tmp_path / 'missing.ckpt'} does not exist" in err
    _not_a_checkpoint(tmp_path / "bad.ckpt", "text")
    err = one_line_error(capsys, ["order", "--checkpoint", str(tmp_path / "bad.ckpt"), str(document)])
    assert "is not a tuner checkpoint" in err


@pytest.mark.parametrize("command", [["evaluate"], ["order", "-"]])
def test_a_directory_is_not_a_checkpoint(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, command: list[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"Second.\nFirst.\n")))
    err = one_line_error(capsys, [*command, "--checkpoint", str(tmp_path)])
    assert f"checkpoint {tmp_path} is a directory, not a file" in err


def test_set_errors_name_the_set_item(capsys: pytest.CaptureFixture[str], study_file: Path) -> None:
    err = one_line_error(capsys, ["run", "--study", str(study_file), "--set", "trainer.nope=1"])
    assert "--set trainer.nope=1: [trainer] unknown key 'nope'" in err and str(study_file) not in err
    err = one_line_error(capsys, ["evaluate", "--checkpoint", "x.ckpt", "--set", "model.x=1"])
    assert "--set model.x=1: only data.* keys apply to tuner evaluate" in err


def test_order_refuses_stdin_that_is_not_utf8(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(b"First.\nSecond \xff.\n"), encoding="utf-8", errors="surrogateescape")
    monkeypatch.setattr("sys.stdin", stdin)
    err = one_line_error(capsys, ["order", "--checkpoint", "missing.ckpt"])
    assert "standard input:2: not valid UTF-8 (byte 0xff at column 8); re-encode it as UTF-8" in err


def test_bad_cli_flags_and_storage(study_dir: Path) -> None:
    out = run_tuner("run", "--study", "tiny", "--n-trials", "zero", cwd=study_dir)
    assert out.returncode == 2 and "expected a whole number, got 'zero'" in out.stderr
    out = run_tuner("run", "--study", "tiny", "--storage", "postgresql://u:hunter2@127.0.0.1:1/x", cwd=study_dir)
    assert out.returncode == 2 and "cannot open storage postgresql://u:***@127.0.0.1:1/x" in out.stderr
    assert "hunter2" not in out.stderr + out.stdout


def _serve(url: str | None, *args: str, env: dict[str, str] | None = None
           ) -> tuple[subprocess.Popen[str], str, str]:
    """``tuner storage serve`` of ``url`` (without it, of the one ``env`` gives) on any free port; returns
    the process, its ``grpc://`` address, and the line it prints once it listens, which names both."""
    storage = ["--storage", url] if url else []
    proxy = subprocess.Popen([sys.executable, "-m", "tuner.cli", "storage", "serve", *storage, "--port", "0", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    assert proxy.stdout is not None
    line = proxy.stdout.readline()
    assert "listening on grpc://" in line, proxy.communicate()[1]
    return proxy, line.split("listening on ")[1].split()[0], line


def test_storage_serve_serves_the_studies_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    import optuna

    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="served", storage=url).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    proxy, address, _ = _serve(url)
    try:
        listed = run_tuner("studies", "--storage", address, "--json")
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout)["studies"][0] == {"name": "served", "trials": 2,
                                                          "best_value": pytest.approx(
                                                              optuna.load_study(study_name="served",
                                                                                storage=url).best_value)}
        assert json.loads(listed.stdout)["storage"] == address
    finally:
        proxy.send_signal(signal.SIGTERM)
        out, err = proxy.communicate(timeout=60)
    assert proxy.returncode == 0, err
    assert "storage proxy stopped" in out and "Traceback" not in err


def test_storage_serve_serves_the_database_of_tuner_storage_unless_the_flag_names_one(tmp_path: Path) -> None:
    import optuna

    urls = {name: f"sqlite:///{tmp_path / name}.db" for name in ("from-env", "from-flag")}
    for name, url in urls.items():
        optuna.create_study(study_name=name, storage=url)
    for flag, served in ((None, "from-env"), (urls["from-flag"], "from-flag")):
        proxy, address, _ = _serve(flag, env={"TUNER_STORAGE": urls["from-env"]})
        try:
            listed = run_tuner("studies", "--storage", address, "--json")
        finally:
            proxy.send_signal(signal.SIGTERM)
            _, err = proxy.communicate(timeout=60)
        assert proxy.returncode == 0, err
        assert listed.returncode == 0, listed.stderr
        assert [study["name"] for study in json.loads(listed.stdout)["studies"]] == [served]


def test_storage_serve_warns_off_localhost_and_masks_the_password() -> None:
    url = require_server("postgresql")
    password = sqlalchemy.engine.make_url(url).password
    proxy, address, ready = _serve(url, "--host", "0.0.0.0")
    proxy.send_signal(signal.SIGTERM)
    out, err = proxy.communicate(timeout=60)
    assert proxy.returncode == 0, err
    assert f"anyone who reaches port {address.rpartition(':')[2]} there" in err and "no authentication" in err
    assert password and password not in ready + out + err and ":***@" in ready


def test_a_bad_or_absent_proxy_is_named(tmp_path: Path) -> None:
    bad = run_tuner("studies", "--storage", "grpc://127.0.0.1")
    assert bad.returncode == 2 and "expected grpc://HOST:PORT" in bad.stderr
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    absent = run_tuner("studies", "--storage", f"grpc://127.0.0.1:{port}")
    assert absent.returncode == 2 and "no storage proxy answered" in absent.stderr
    served = run_tuner("storage", "serve", "--storage", f"grpc://127.0.0.1:{port}")
    assert served.returncode == 2 and "a proxy serves a database" in served.stderr
