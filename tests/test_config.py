from __future__ import annotations

from pathlib import Path

import pytest

from tuner.config import BackboneSpec, find_study, load_study, parse_study
from tuner.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["demo", "nips", "rocstories"])
def test_shipped_studies_load(name: str) -> None:
    run = load_study(find_study(name, root=ROOT))
    assert run.name == name
    assert run.model.loss in ("pairwise", "listmle", "mse")


def test_relative_data_paths_resolve_against_the_study_file() -> None:
    run = load_study(ROOT / "studies" / "nips.toml")
    assert run.data.train == str((ROOT.parent / "shared/data/nips_abstracts/train.lower").resolve())


def test_demo_trims_minilm() -> None:
    run = load_study(ROOT / "studies" / "demo.toml")
    assert run.model.backbone == BackboneSpec("sentence-transformers/all-MiniLM-L6-v2", {"num_hidden_layers": 3})
    assert run.model.backbone.label == "sentence-transformers/all-MiniLM-L6-v2[num_hidden_layers=3]"


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
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_study(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_overrides_are_validated_like_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "[data]\nbuiltin = 'python-docs'\n")
    run = load_study(path, ["model.learning_rate=5e-5", "trainer.max_epochs=7", "data.separator= <eos> "])
    assert run.model.learning_rate == 5e-5
    assert run.trainer.max_epochs == 7
    assert run.data.separator == " <eos> "
    with pytest.raises(ConfigError, match="model.learning_rate"):
        load_study(path, ["model.learning_rate=-1"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_study(path, ["learning_rate=1"])


def test_missing_study_lists_known_ones(tmp_path: Path) -> None:
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "alpha.toml").write_text("")
    with pytest.raises(ConfigError, match="known studies: alpha"):
        find_study("beta", root=tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        find_study(str(tmp_path / "nothing.toml"))


def test_empty_study_is_the_offline_demo_data() -> None:
    run = parse_study({}, name="x")
    assert run.data.builtin == "python-docs"
