"""The private names of Optuna, optuna-integration, Lightning and torch that tuner relies on, each with why no
public route does the job. All of them pass through ``tuner._compat`` (``tests/test_compat.py`` checks that
no other module reaches one). A release that drops one fails here, by name, rather than deep inside a worker.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest
from private_reach import ROOT, private, reaches

_LOOP = ("a sampler ends a study with study.stop(), allowed only inside Optuna's optimize loop, whose part the "
         "worker loop plays (GridSampler.is_exhausted covers the grid only)")
_CACHE_CALLS = "what Optuna's caching layer calls on the storage beneath it: retried through outages as the rest"
_PROXY_CACHE = ("a proxy's cache sets a parameter of a trial it never read (a proxy restarted mid-study) through "
                "the storage beneath, which checks it itself")
_GRPC_CLIENT = ("the proxy's client opens its channel with reconnect options and makes every call with a "
                "deadline and retries (tuner.storage.proxy)")
_GRPC_SERVER = ("the proxy's server serves Optuna's protocol beside tuner's own service; run_grpc_proxy_server "
                "takes no second service")
_LAUNCHER = "DDP ranks spawned by the trial's own process report back to it (tuner.training.distributed)"
_VALIDATION = ("whether a validation follows the batch that just ended: a checkpoint saved there would be "
               "resumed after it, and the retry would never run it (tuner.training.stopping)")

PRIVATE = [
    # (module, attribute path, why no public API does it)
    ("optuna.study", "Study._storage", "the worker loop reads and writes trials through the study's own "
     "cached storage; a second handle would see a stale cache"),
    ("optuna.study", "Study._study_id", "the storage API takes the study's id; the public Study has no accessor"),
    ("optuna.study", "Study._stop_flag", _LOOP),
    ("optuna.study", "Study._thread_local", _LOOP),
    ("optuna.study.study", "_ThreadLocalStudyAttribute.in_optimize_loop", _LOOP),
    ("optuna.study.study", "_ThreadLocalStudyAttribute.cached_all_trials", "what study.ask drops before it "
     "creates a trial; the worker creates its trials through the storage, with its labels in one write"),
    ("optuna.trial", "Trial._trial_id", "storage calls (heartbeats, states) take the trial's id"),
    ("optuna.trial", "FrozenTrial._trial_id", "the same, for a stored trial (retries, stale trials, reap)"),
    ("optuna.trial", "Trial._cached_frozen_trial", "the trial as ask() read it: reading it again costs a "
     "query per trial under the study lock"),
    ("optuna.storages", "RDBStorage._create_new_trial", "Optuna's cached storage creates trials through it; "
     "the creation token must ride inside it"),
    ("optuna.storages", "RDBStorage._get_prepared_new_trial", "the one place where the new trial's row and "
     "its token can be written in one transaction"),
    ("optuna.storages", "RDBStorage._get_stale_trial_ids", "the public fail_stale_trials fails a trial "
     "without a reason, and a finished trial's attributes can no longer be written"),
    ("optuna.storages", "RDBStorage._get_trials", _CACHE_CALLS),
    ("optuna.storages", "RDBStorage._set_trial_param", _CACHE_CALLS),
    ("optuna.storages", "RDBStorage._get_best_trial_id", _CACHE_CALLS),
    ("optuna.storages._rdb.storage", "_create_scoped_session", "a claim of a queued trial and its token, and a "
     "first heartbeat and start, are written in one transaction; the database's clock is read through it"),
    ("optuna.storages._rdb.models", "TrialModel", "the rows those transactions write"),
    ("optuna.storages._rdb.models", "TrialSystemAttributeModel", "the token and start rows"),
    ("optuna.storages._rdb.models", "TrialUserAttributeModel", "a new trial's labels, in its creating transaction"),
    ("optuna.storages._rdb.models", "TrialHeartbeatModel", "the first heartbeat row"),
    ("optuna.storages._rdb.models", "StudyUserAttributeModel", "the study's heartbeat settings, read in the "
     "transaction that makes a trial RUNNING"),
    ("optuna.storages._cached_storage", "_CachedStorage._backend", "tuner's own storage methods (the "
     "database's clock, first heartbeats) live beneath Optuna's cache"),
    ("optuna.storages._cached_storage", "_CachedStorage._lock", _PROXY_CACHE),
    ("optuna.storages._cached_storage", "_CachedStorage._trial_id_to_study_id_and_number", _PROXY_CACHE),
    ("optuna.storages._heartbeat", "BaseHeartbeat", "the heartbeat protocol Optuna checks a storage for; the "
     "proxy's client takes part"),
    ("optuna.storages", "GrpcStorageProxy._setup", _GRPC_CLIENT),
    ("optuna.storages", "GrpcStorageProxy._host", _GRPC_CLIENT),
    ("optuna.storages", "GrpcStorageProxy._port", _GRPC_CLIENT),
    ("optuna.storages", "GrpcStorageProxy._channel", _GRPC_CLIENT),
    ("optuna.storages", "GrpcStorageProxy._stub", _GRPC_CLIENT),
    ("optuna.storages", "GrpcStorageProxy._cache", _GRPC_CLIENT),
    ("optuna.storages._grpc.client", "GrpcClientCache", _GRPC_CLIENT),
    ("optuna.storages._grpc.auto_generated.api_pb2_grpc", "StorageServiceStub", _GRPC_CLIENT),
    ("optuna.storages._grpc.auto_generated.api_pb2_grpc", "add_StorageServiceServicer_to_server", _GRPC_SERVER),
    ("optuna.storages._grpc.servicer", "OptunaStorageProxyService", _GRPC_SERVER),
    ("optuna_integration", "PyTorchLightningPruningCallback._trial", "the trial the callback reports to: tuner's "
     "reports through its DDP line, and leaves it behind when pickled for a spawned rank"),
    ("lightning.pytorch.loops.fit_loop", "_FitLoop._data_fetcher", _VALIDATION),
    ("lightning.pytorch.loops.training_epoch_loop", "_TrainingEpochLoop._should_check_val_fx", _VALIDATION),
    ("lightning.pytorch", "LightningModule._trainer", "whether a module is attached to a trainer: "
     "module.trainer raises without one"),
    ("lightning.pytorch.strategies", "DDPStrategy._configure_launcher", _LAUNCHER),
    ("lightning.pytorch.strategies", "DDPStrategy._launcher", _LAUNCHER),
    ("lightning.pytorch.strategies.launchers.launcher", "_Launcher", _LAUNCHER),
    ("lightning.pytorch.strategies.launchers.multiprocessing", "_MultiProcessingLauncher._wrapping_function",
     _LAUNCHER),
    ("lightning.pytorch.strategies.launchers.multiprocessing",
     "_MultiProcessingLauncher._collect_rank_zero_results", _LAUNCHER),
    ("torch.cpu", "_is_amx_tile_supported", "the only runtime check of AMX, which makes bf16 fast on a CPU"),
    ("torch.cpu", "_is_avx512_bf16_supported", "the only runtime check of AVX512-BF16"),
]


def _has(target: object, name: str) -> bool:
    """Whether ``target`` has ``name``; for a class, an instance attribute that its methods set counts."""
    if hasattr(target, name):
        return True
    if not isinstance(target, type):
        return False
    sources = []
    for klass in target.__mro__[:-1]:
        try:
            sources.append(inspect.getsource(klass))
        except (OSError, TypeError):
            pass
    return any(re.search(rf"\bself\.{re.escape(name)}\b", source) for source in sources)


@pytest.mark.parametrize(("module", "path", "why"), PRIVATE, ids=[f"{m}:{p}" for m, p, _ in PRIVATE])
def test_a_private_name_tuner_relies_on_still_exists(module: str, path: str, why: str) -> None:
    target: object = importlib.import_module(module)
    parts = path.split(".")
    for i, part in enumerate(parts):
        assert _has(target, part), f"{module}.{path} is gone; tuner uses it because {why}"
        if i < len(parts) - 1:
            target = getattr(target, part)


def test_every_private_name_the_compat_package_reaches_is_listed() -> None:
    listed = {part for module, path, _ in PRIVATE for part in f"{module}.{path}".split(".") if private(part)}
    missing = []
    for source in sorted((ROOT / "tuner" / "_compat").glob("*.py")):
        for line, name in reaches(source.read_text(), f"tuner._compat.{source.stem}"):
            names = set(re.findall(r"\b_[A-Za-z]\w*", name)) - listed
            missing += [f"{Path(source).relative_to(ROOT)}:{line}: {n}" for n in sorted(names)]
    assert not missing, "private names reached by tuner._compat but not listed here, with why:\n" + "\n".join(missing)
