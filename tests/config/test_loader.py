"""Study files: shipped ones load, bad ones are named by file, section, key or --set item."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuner.config.loader import find_study_file, parse_study_file, read_study_file, section_overrides
from tuner.config.schema import BackboneSpec, StudyFile
from tuner.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DEMO_DATA = "[data]\nbuiltin = 'python-docs'\n"


@pytest.mark.parametrize("name", ["demo", "nips", "rocstories"])
def test_shipped_studies_load(name: str) -> None:
    run = read_study_file(find_study_file(name, root=ROOT))
    assert run.name == name
    assert run.model.loss in ("pairwise", "listmle", "mse")


def test_relative_data_paths_resolve_against_the_study_file() -> None:
    run = read_study_file(ROOT / "studies" / "nips.toml")
    assert run.data.train == str((ROOT.parent / "shared/data/nips_abstracts/train.lower").resolve())


def test_demo_trims_minilm() -> None:
    run = read_study_file(ROOT / "studies" / "demo.toml")
    assert run.model.backbone == BackboneSpec("sentence-transformers/all-MiniLM-L6-v2", {"num_hidden_layers": 2})
    assert run.model.backbone.label == "sentence-transformers/all-MiniLM-L6-v2[num_hidden_layers=2]"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[data]\nbuiltin = 'python-docs'\nbatch_sise = 4\n", "unknown key 'batch_sise'"),
        ("[model]\nlearning_rate = 'fast'\n", "model.learning_rate: expected a number"),
        ("[model]\nloss = 'hinge'\n", "model.loss: unknown loss 'hinge'"),
        ("[trainer]\nmax_epochs = 0\n", "trainer.max_epochs: must be positive"),
        ("[trainer]\nmax_epochs = 2.5\n", "trainer.max_epochs: expected a whole number"),
        ("[trainer]\ndevices = 0\n", "trainer.devices: is the number of devices per trial, 1 or more, got 0"),
        ("[trainer]\ndevices = 'auto'\n", "trainer.devices: expected a whole number, got 'auto'"),
        ("[trainer]\nstrategy = 'fsdp'\n", "trainer.strategy: unknown strategy 'fsdp'; use 'auto'"),
        ("[trainer]\nval_check_interval = 'often'\n",
         "trainer.val_check_interval: expected a number or 'auto', got 'often'"),
        ("[trainer]\nval_check_interval = 0\n", "trainer.val_check_interval: must be positive, or 'auto'"),
        ("[study]\nlr_finder = {scope = 'trial'}\n", "study.lr_finder.scope: unknown scope 'trial'; use one of"),
        ("[data]\ntrain = 'a'\n", "data.validation: required with data.train"),
        ("[data]\npath = 'a'\nhub = 'b'\n", "give exactly one source"),
        ("[data]\npath = 'a'\nsplit = [0.6, 0.5]\n", "data.split"),
        ("[data]\npath = 'a'\noverflow = 'drop'\n", "data.overflow: 'drop' is not one of"),
        ("[modle]\n", "unknown section or key 'modle'"),
        ("[model]\nbackbone = {name = 'x', layers = 3}\n", "unknown key 'layers'"),
        ("[model\n", "not valid TOML"),
    ],
)
def test_bad_study_files_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text if "[data]" in text else DEMO_DATA + text)
    with pytest.raises(ConfigError) as err:
        read_study_file(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_overrides_are_validated_like_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, DEMO_DATA)
    run = read_study_file(path, ["model.learning_rate=5e-5", "trainer.max_epochs=7", "data.separator= <eos> "])
    assert run.model.learning_rate == 5e-5
    assert run.trainer.max_epochs == 7
    assert run.data.separator == " <eos> "
    with pytest.raises(ConfigError, match="model.learning_rate"):
        read_study_file(path, ["model.learning_rate=-1"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        read_study_file(path, ["learning_rate=1"])


def test_missing_study_lists_known_ones(tmp_path: Path) -> None:
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "alpha.toml").write_text("")
    with pytest.raises(ConfigError, match="known studies: alpha"):
        find_study_file("beta", root=tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        find_study_file(str(tmp_path / "nothing.toml"))


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "[model]\nloss = 'listmle'\n"])
def test_a_study_without_data_is_refused(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        read_study_file(path)
    assert str(err.value) == (f"study file {path} has no [data] section: give data.path, data.train (with "
                              "data.validation), data.hub, or data.builtin = \"python-docs\" (the offline demo corpus)")
    with pytest.raises(ConfigError, match="give exactly one source"):
        parse_study_file({"data": {}}, name="x")
    assert read_study_file(path, ["data.builtin=python-docs"]).data.builtin == "python-docs"


def test_a_directory_is_not_a_study_file(tmp_path: Path) -> None:
    for folder in (tmp_path / "dir.toml", tmp_path / "dir", tmp_path / "studies" / "named.toml"):
        folder.mkdir(parents=True)
    for given, folder in ((str(tmp_path / "dir.toml"), tmp_path / "dir.toml"),
                          (str(tmp_path / "dir"), tmp_path / "dir"), ("named", tmp_path / "studies" / "named.toml")):
        with pytest.raises(ConfigError) as err:
            find_study_file(given, root=tmp_path)
        assert str(err.value) == f"study file {folder} is a directory, not a file"
    with pytest.raises(ConfigError, match="is a directory, not a file"):
        read_study_file(tmp_path / "dir.toml")


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["trainer.nope=1"], "--set trainer.nope=1: [trainer] unknown key 'nope'; known keys: max_epochs"),
        (["model.learning_rate=1e-4", "model.loss=hinge"], "--set model.loss=hinge: model.loss: unknown loss 'hinge'"),
        (["modle.loss=1"], "--set modle.loss=1: unknown section or key 'modle'"),
        (["data.path=x.lines"], "--set data.path=x.lines: data: give exactly one source"),
        (["trainer.max_epochs=0", "trainer.max_epochs=2"], None),  # the last one wins
        (["trainer.max_epochs=2", "trainer.max_epochs=0"], "--set trainer.max_epochs=0: trainer.max_epochs: must be"),
    ],
)
def test_set_errors_name_the_set_item(tmp_path: Path, items: list[str], message: str | None) -> None:
    path = _write(tmp_path, "[data]\ntrain = 'a'\nvalidation = 'b'\n")
    if message is None:
        assert read_study_file(path, items).trainer.max_epochs == 2
        return
    with pytest.raises(ConfigError) as err:
        read_study_file(path, items)
    assert str(err.value).startswith(message), err.value
    assert str(path) not in str(err.value)


def test_the_file_is_blamed_for_its_own_errors_and_set_can_fix_them(tmp_path: Path) -> None:
    path = _write(tmp_path, DEMO_DATA + "[trainer]\nmax_epochs = 0\n")
    with pytest.raises(ConfigError, match=f"^{path}: trainer.max_epochs: must be positive"):
        read_study_file(path, ["model.learning_rate=1e-4"])
    assert read_study_file(path, ["trainer.max_epochs=1"]).trainer.max_epochs == 1


def test_check_errors_are_blamed_like_the_files(tmp_path: Path) -> None:
    path = _write(tmp_path, DEMO_DATA)

    def check(run: StudyFile) -> None:
        if run.model.loss == "mse":
            raise ConfigError("model.loss: not with this search")

    with pytest.raises(ConfigError, match="^--set model.loss=mse: model.loss: not with this search$"):
        read_study_file(path, ["model.loss=mse"], check=check)
    with pytest.raises(ConfigError, match=f"^{path}: model.loss: not with this search$"):
        read_study_file(_write(tmp_path, DEMO_DATA + "[model]\nloss = 'mse'\n"), check=check)


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["model.dropout=0.2"], "--set model.dropout=0.2: only data.* keys apply to tuner evaluate"),
        (["data.nope=1"], "--set data.nope=1: [data] unknown key 'nope'"),
        (["batch_size=big"], "--set batch_size=big: data.batch_size: expected a whole number, got 'big'"),
    ],
)
def test_section_overrides_name_the_set_item(items: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        section_overrides(items, "data", "tuner evaluate")
    assert str(err.value).startswith(message), err.value


def test_section_overrides_take_short_keys() -> None:
    assert section_overrides(["separator= | ", "data.batch_size=4"], "data", "tuner evaluate") == {
        "separator": " | ", "batch_size": 4}


@pytest.mark.parametrize(("interval", "grace", "ok"), [(30, 120, True), (30, 60, False), (1, 3, True), (1, 2, False),
                                                       (0, 1, True)])
def test_the_grace_period_leaves_room_to_wait_out_an_outage(tmp_path: Path, interval: int, grace: int,
                                                             ok: bool) -> None:
    """A worker waits out a database outage for grace_period - 2 x heartbeat_interval: it must be positive."""
    path = _write(tmp_path, DEMO_DATA + f"[study]\nheartbeat_interval = {interval}\ngrace_period = {grace}\n")
    if ok:
        read_study_file(path)
        return
    with pytest.raises(ConfigError, match=rf"study.grace_period: must be more than twice study.heartbeat_interval"
                                          rf" \(2 x {interval} s\)"):
        read_study_file(path)


@pytest.mark.parametrize(("settings", "message"), [
    ("stall_timeout = 0", "study.stall_timeout: must be a positive number of seconds"),
    ("stall_timeout = 600\nheartbeat_interval = 0", "study.stall_timeout: needs heartbeats"),
])
def test_a_stall_timeout_is_positive_and_needs_heartbeats(tmp_path: Path, settings: str, message: str) -> None:
    path = _write(tmp_path, DEMO_DATA + f"[study]\n{settings}\n")
    with pytest.raises(ConfigError, match=message):
        read_study_file(path)
    assert read_study_file(_write(tmp_path, DEMO_DATA + "[study]\nstall_timeout = 600\n")).study.stall_timeout == 600
