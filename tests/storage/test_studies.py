"""Finding a study by its file or by its name in a storage."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuner.errors import ConfigError
from tuner.storage.studies import locate_study


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
