"""What the CLI asks of a study: its trials, its best trial and checkpoint, and recording test metrics.

Reads open the storage read-only (:func:`tuner.storage.studies.read_study`); only
:func:`record_test` writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuner.config.schema import StudyFile
from tuner.errors import TunerError
from tuner.keys import TEST_ATTR
from tuner.storage.records import TrialRow, best_row, trial_row
from tuner.storage.studies import read_study
from tuner.study.open import open_study


def trials(run: StudyFile, storage: str | None = None) -> list[TrialRow]:
    return [trial_row(t, run) for t in read_study(run, storage).get_trials(deepcopy=False)]


def best(run: StudyFile, storage: str | None = None) -> TrialRow:
    row = best_row(read_study(run, storage), run)
    if row is None:
        raise TunerError(f"study {run.name!r} has no complete trial yet")
    return row


def record_test(run: StudyFile, metrics: dict[str, Any], storage: str | None = None) -> None:
    """Keep the best trial's test metrics in the study (attribute ``test:NUMBER``) for reports.

    A finished trial's own attributes can no longer change in Optuna, so they go on the study.
    """
    study = open_study(run, storage, create=False)
    row = best_row(study, run)
    if row is not None:
        study.set_user_attr(f"{TEST_ATTR}{row.number}", metrics)


def best_checkpoint(run: StudyFile, storage: str | None = None) -> str:
    row = best(run, storage)
    path = row.attrs.get("checkpoint")
    if not path or not Path(path).is_file():
        raise TunerError(f"the best trial ({row.number}) of study {run.name!r} has no checkpoint on this machine "
                         f"(recorded: {path})")
    return str(path)
