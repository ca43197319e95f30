"""The study lock: a missing folder is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuner.storage.lock import SlotLock
from tuner.storage.urls import StorageError


def test_the_study_lock_in_a_missing_folder_names_it(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"folder .*nope does not exist"):
        SlotLock(f"sqlite:///{tmp_path / 'nope' / 'x.db'}", "s")
    assert list(tmp_path.iterdir()) == []
