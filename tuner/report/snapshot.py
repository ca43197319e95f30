"""A study as the report sees it: read once, read-only, from its storage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from tuner.keys import METRIC_ATTR, OBJECTIVE
from tuner.storage.reader import open_reader
from tuner.storage.studies import find_study_id, locate_study
from tuner.storage.urls import mask

DEFAULT_LABEL = "(study default)"


@dataclass(frozen=True)
class StudySnapshot:
    """A study as read once from its storage: what every figure is computed from.

    Args:
        defaults: the study file's fixed settings where it is known (``backbone``, ``batch_size``,
            ``max_epochs``), for trials that did not sample them.
        taken_at: when it was read; running trials are drawn up to this time.
    """

    name: str
    storage: str
    direction: str = "maximize"
    metric: str = OBJECTIVE
    trials: Sequence[FrozenTrial] = ()
    user_attrs: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    taken_at: datetime = field(default_factory=datetime.now)


def load_snapshot(study: str, storage: str | None = None) -> StudySnapshot:
    """Read a study (a study file's name or path, or a study name in the storage) without writing to it."""
    name, url, run = locate_study(study, storage)
    backend = open_reader(url)
    find_study_id(backend, name, url)
    loaded = optuna.load_study(study_name=name, storage=backend)
    defaults: dict[str, Any] = {}
    if run is not None:
        defaults = {"backbone": run.model.backbone.label, "batch_size": run.data.batch_size,
                    "max_epochs": run.trainer.max_epochs}
    attrs = loaded.user_attrs
    return StudySnapshot(name=name, storage=mask(url), direction=loaded.direction.name.lower(),
                         metric=str(attrs.get(METRIC_ATTR, OBJECTIVE)),
                         trials=loaded.get_trials(deepcopy=False), user_attrs=attrs, defaults=defaults)
