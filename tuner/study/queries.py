"""What the CLI asks of a study: its trials, its best trial and checkpoint, and evaluating it.

Reads open the storage read-only (:func:`tuner.storage.studies.read_study`); only :func:`record_test`
writes, when :func:`evaluate` evaluated the best trial on its test split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tuner.config.schema import StudyFile, TrainerConfig
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


def evaluate(
    checkpoint: str | Path | None = None,
    *,
    study: StudyFile | None = None,
    storage: str | None = None,
    split: str = "test",
    files: Sequence[str | Path] = (),
    data_overrides: Mapping[str, Any] | None = None,
    trainer: TrainerConfig | None = None,
) -> dict[str, dict[str, float]]:
    """``tuner evaluate``: the metrics of ``checkpoint``, or of ``study``'s best trial's checkpoint, on a split
    of its data or on each of ``files`` (see :func:`tuner.training.inference.evaluate_checkpoint`).

    A study's best trial evaluated on its own test split has its metrics recorded in the study
    (:func:`record_test`), where reports show them; other splits and other files record nothing.

    Args:
        study: the study file whose best trial to evaluate, in ``storage``; give it or ``checkpoint``.
        data_overrides: ``[data]`` settings read differently from the checkpoint's (``--set data.KEY=VALUE``).
        trainer: the precision and device to evaluate with (default: the best for the hardware here).
    """
    if checkpoint is not None and study is not None:
        raise TunerError("evaluate takes a checkpoint or a study, not both")
    if study is not None:
        checkpoint = best_checkpoint(study, storage)
    if checkpoint is None:
        raise TunerError("evaluate needs a checkpoint or a study")
    from tuner.training.inference import evaluate_checkpoint  # imported here: trials and best need no torch

    results = evaluate_checkpoint(checkpoint, split=split, files=files, data_overrides=data_overrides,
                                  trainer=trainer)
    if study is not None and not files and split == "test":
        record_test(study, results["test"], storage)
    return results
