"""Opening a study: its study file loaded and checked, its Optuna study opened in its storage and checked
against the file, and the pre-flight check run as a worker runs it.

:func:`load_study_file` is what every command reads a study file with (by name or path: the sections,
the sampler and the pruner checked); :func:`open_study` is the Optuna study of a study file, the one
that workers write.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import optuna

from tuner.config.loader import find_study_file, read_study_file
from tuner.config.schema import StudyFile
from tuner.errors import TunerError
from tuner.hpo import search
from tuner.keys import HEARTBEAT_ATTR, METRIC_ATTR
from tuner.storage.lock import SlotLock
from tuner.storage.rdb import heartbeat_settings, open_storage
from tuner.storage.urls import mask, resolve_url


def load_study_file(study: str, overrides: list[str] | tuple[str, ...] = ()) -> StudyFile:
    """A study file by name or path, validated, with its sampler and pruner checked too."""
    return read_study_file(find_study_file(study), overrides, check=_check_search)


def _check_search(run: StudyFile) -> None:
    """The sampler's and pruner's options are checked by building them."""
    search.build_sampler(run.study.sampler, run)
    search.build_pruner(run.study.pruner)


def open_study(run: StudyFile, storage: str | None = None, create: bool = True, worker_index: int = 0
               ) -> optuna.Study:
    """The run's study in its storage, created if absent (with ``create=False``, refused, and nothing is
    created). A study that exists with another metric or direction is refused rather than mixed. So is one
    with other heartbeat settings, for a worker (``create``: :func:`_check_heartbeat`); a command that runs
    no trial (``tuner reap``, ``tuner evaluate --study``, with ``create=False``) has no heartbeat to
    conflict, and the stale check follows the study's settings whatever its own.

    ``worker_index`` offsets the sampler's seed: workers with one seed would sample the same settings.
    """
    url = resolve_url(storage, run.study.storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    interval = run.study.heartbeat_interval or None
    heartbeat: dict[str, Any] = {"heartbeat_interval": interval,
                                 "grace_period": run.study.grace_period if interval else None}
    if create:
        # creating the schema concurrently on a fresh database races (Optuna issue #4621): one at a time
        with SlotLock(url, "schema")(retry=False):
            backend = open_storage(url, **heartbeat)
    else:
        backend = open_storage(url, create_schema=False, **heartbeat)
    config = run.study.sampler
    if worker_index and config.seed is not None:
        config = dataclasses.replace(config, seed=config.seed + worker_index)
    sampler = search.build_sampler(config, run)
    pruner = search.build_pruner(run.study.pruner)
    names = {s.study_name for s in optuna.study.get_all_study_summaries(backend)}
    if run.name not in names and not create:
        raise TunerError(f"no study {run.name!r} in {mask(url)}; studies there: {sorted(names) or 'none'}")
    study = optuna.create_study(study_name=run.name, storage=backend, sampler=sampler, pruner=pruner,
                                direction=run.study.direction, load_if_exists=True)
    metric = study.user_attrs.get(METRIC_ATTR)
    if metric is None:
        study.set_user_attr(METRIC_ATTR, run.study.metric)
    elif metric != run.study.metric:
        raise TunerError(f"study {run.name!r} in {mask(url)} optimises {metric}, not {run.study.metric}; "
                         "use another study name or storage")
    if study.direction.name.lower() != run.study.direction:
        raise TunerError(f"study {run.name!r} in {mask(url)} is to {study.direction.name.lower()}, "
                         f"not {run.study.direction}; use another study name or storage")
    if create:
        _check_heartbeat(study, run, url)
    return study


def _check_heartbeat(study: optuna.Study, run: StudyFile, url: str) -> None:
    """Refuse a worker whose heartbeat settings differ from those stored with the study when it was created:
    a worker with a shorter grace period would fail other workers' live trials as stale. A study created
    before the settings were stored takes this worker's."""
    asked = heartbeat_settings(run.study.heartbeat_interval, run.study.grace_period)
    kept = study.user_attrs.get(HEARTBEAT_ATTR)
    if kept is None:
        study.set_user_attr(HEARTBEAT_ATTR, asked)
        return
    stored = heartbeat_settings(kept.get("heartbeat_interval"), kept.get("grace_period"))
    if stored == asked:
        return
    given = {"heartbeat_interval": run.study.heartbeat_interval or 0, "grace_period": run.study.grace_period}
    # in a study without heartbeats, the grace period does not matter
    wrong = {key: value for key, value in given.items()
             if stored[key] != value and (key == "heartbeat_interval" or stored["heartbeat_interval"])}
    raise TunerError(f"study {run.name!r} in {mask(url)} has "
                     + ", ".join(f"{key} {stored[key]}, not {value}" for key, value in wrong.items())
                     + " (heartbeat settings are fixed when a study is created: every worker judges stale trials "
                       "by them); use " + " ".join(f"--set study.{key}={stored[key]}" for key in wrong))


def check_study(run: StudyFile) -> None:
    """:func:`tuner.study.preflight.check` with SIGINT and SIGTERM handled as in a worker: a signal raises
    :class:`tuner.errors.Interrupted` rather than Lightning's own exit."""
    from tuner.study.preflight import check
    from tuner.training.stopping import StopSignals  # here: opening a study (tuner trials, reap) needs no torch

    with StopSignals():
        check(run)
