"""Finding a study: by study file or by name in a storage, and listing the studies there."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from tuner.config.loader import find_study_file, read_study_file
from tuner.config.schema import StudyFile
from tuner.errors import ConfigError, TunerError
from tuner.storage.reader import open_reader
from tuner.storage.urls import NoDatabase, mask, resolve_url

log = logging.getLogger(__name__)


def read_study(run: StudyFile, storage: str | None = None) -> optuna.Study:
    """The run's study, opened read-only (:func:`tuner.storage.reader.open_reader`): nothing is created or written."""
    url = resolve_url(storage, run.study.storage)
    backend = open_reader(url)
    find_study_id(backend, run.name, url)
    return optuna.load_study(study_name=run.name, storage=backend)


@dataclass(frozen=True)
class StoredStudy:
    """A study in a storage: its name, how many trials it holds, and its best value (``None`` before one completed)."""

    name: str
    trials: int
    best_value: float | None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "trials": self.trials, "best_value": self.best_value}


@dataclass(frozen=True)
class StudyListing:
    """What ``tuner studies`` shows: the study files under ``studies/`` and the studies in the (masked) storage."""

    files: list[str]
    storage: str
    studies: list[StoredStudy]

    def to_json(self) -> dict[str, Any]:
        """As ``tuner studies --json`` prints it."""
        return {"files": self.files, "storage": self.storage, "studies": [s.to_json() for s in self.studies]}


def list_studies(storage: str | None = None, root: Path | None = None) -> StudyListing:
    """Study files under ``studies/`` and the studies in the storage, with trial counts."""
    folder = (root or Path.cwd()) / "studies"
    files = sorted(str(p) for p in folder.glob("*.toml")) if folder.is_dir() else []
    url = resolve_url(storage)
    try:
        summaries = optuna.study.get_all_study_summaries(open_reader(url))
    except NoDatabase:  # none yet: the study files are still worth listing
        summaries = []
    stored = [StoredStudy(s.study_name, s.n_trials, s.best_trial.value if s.best_trial else None) for s in summaries]
    return StudyListing(files, mask(url), stored)


def locate_study(study: str, storage: str | None = None) -> tuple[str, str, StudyFile | None]:
    """Where ``--study`` lives: its name, its storage URL, and its study file's settings where there is one.

    ``study`` is a study file's name or path (as for ``tuner run``), or else the name of a study in
    the storage (``--storage``, ``$TUNER_STORAGE`` or the default), for studies whose file is elsewhere.
    """
    try:
        path = find_study_file(study)
    except ConfigError:
        given = Path(study).expanduser()
        if given.suffix == ".toml" or (given.parent != Path(".") and given.exists()):  # a path, not a name
            raise
        return study, resolve_url(storage), None
    run = read_study_file(path)
    return run.name, resolve_url(storage, run.study.storage), run


def find_study_id(storage: Any, name: str, url: str) -> int:
    """The id of study ``name`` in an opened storage, or an error that lists the studies there."""
    try:
        return int(storage.get_study_id_from_name(name))
    except KeyError:
        names = sorted(s.study_name for s in storage.get_all_studies())
        raise TunerError(f"no study {name!r} in {mask(url)}; studies there: {names or 'none'}") from None
