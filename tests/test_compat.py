"""One door to other packages' internals: only ``tuner._compat`` touches a private name of Optuna,
optuna-integration, Lightning, torch or transformers, so that an upgrade that moves one breaks one file.
What counts as touching one: ``tests/private_reach.py``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from private_reach import ROOT, reaches


def _modules() -> list[Path]:
    return sorted(p for p in (ROOT / "tuner").rglob("*.py") if "_compat" not in p.relative_to(ROOT).parts)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_only_the_compat_package_reaches_into_other_packages() -> None:
    found = [f"{path.relative_to(ROOT)}:{line}: {name}"
             for path in _modules() for line, name in reaches(path.read_text(), _module_name(path))]
    assert not found, ("private names of other packages, outside tuner._compat (give each a named function "
                       "there, and an entry in tests/test_private_names.py):\n" + "\n".join(found))


# each kind of reach, as tuner once wrote it: the scan must find every one
OLD = {
    "a study's thread-local state": ("study._thread_local.in_optimize_loop = True", "study._thread_local"),
    "a study's storage through a trial": ("storage = trial.study._storage", "trial.study._storage"),
    "a trial's id": ("trial._trial_id", "trial._trial_id"),
    "the fit loop's data fetcher": ("loop = trainer.fit_loop\nloop._data_fetcher", "loop._data_fetcher"),
    "a private method of the epoch loop": ("trainer.fit_loop.epoch_loop._should_check_val_fx(None)",
                                           "trainer.fit_loop.epoch_loop._should_check_val_fx"),
    "a private module": ("from optuna.storages._grpc.client import GrpcClientCache",
                         "optuna.storages._grpc.client.GrpcClientCache"),
    "a private module, imported whole": ("from optuna.storages._rdb import models", "optuna.storages._rdb.models"),
    "a private name of a public module": ("from optuna.storages._heartbeat import BaseHeartbeat",
                                          "optuna.storages._heartbeat.BaseHeartbeat"),
    "a private function of a module": ("import torch\ntorch.cpu._is_amx_tile_supported()",
                                       "torch.cpu._is_amx_tile_supported"),
    "a private method of an upstream class": (
        "from optuna.storages import RDBStorage\nRDBStorage._get_stale_trial_ids(view, 1)",
        "optuna.storages.RDBStorage._get_stale_trial_ids"),
    "a cache's private state, in a subclass": (
        "from optuna.storages import _CachedStorage\nclass C(_CachedStorage):\n"
        "    def f(self, i):\n        with self._lock:\n            return i in self._trial_id_to_study_id_and_number",
        "self._trial_id_to_study_id_and_number"),
    "a private hook overridden": (
        "from optuna.storages import RDBStorage\nclass S(RDBStorage):\n    def _get_prepared_new_trial(self): ...",
        "def _get_prepared_new_trial (overrides an upstream private name)"),
    "a private name by getattr": ('backend = getattr(storage, "_backend", storage)', "storage._backend"),
    "a private method named in a string": ('RETRIED = ("get_trial", "_get_trials")', "'_get_trials'"),
}


@pytest.mark.parametrize(("source", "name"), OLD.values(), ids=OLD.keys())
def test_the_scan_finds_each_kind_of_reach(source: str, name: str) -> None:
    assert name in [found for _, found in reaches(source, "tuner.example")]


def test_the_scan_lets_tuners_own_private_names_be() -> None:
    source = ("from optuna.storages import RDBStorage\nclass S(RDBStorage):\n    def __init__(self):\n"
              "        self._creating = {}\n    def _mine(self):\n        return self._creating\n"
              "def f(signals):\n    return signals._deferred\n")
    assert reaches(source, "tuner.example") == []


def test_retry_links_are_written_as_optunas_readers_read_them() -> None:
    from optuna.storages import RetryFailedTrialCallback
    from optuna.trial import TrialState, create_trial

    from tuner._compat.optuna import retried_trial_number, retry_history, retry_system_attrs

    first = create_trial(state=TrialState.FAIL, system_attrs={"mine": 1})
    first.number = 3
    second = create_trial(state=TrialState.FAIL, system_attrs=retry_system_attrs(first))
    second.number = 8
    third = create_trial(state=TrialState.WAITING, system_attrs=retry_system_attrs(second))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert RetryFailedTrialCallback.retry_history(third) == [3, 8]
        assert RetryFailedTrialCallback.retried_trial_number(third) == 3
    assert third.system_attrs["mine"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna's readers are experimental, and say so at every call: not here
        assert retry_history(third) == [3, 8] and retried_trial_number(third) == 3
        assert retry_history(first) == [] and retried_trial_number(first) is None
