"""The private names of Optuna, Lightning and torch that tuner relies on, each with why no public route
does the job. A release that drops one fails here, by name, rather than deep inside a worker."""

from __future__ import annotations

import importlib
import inspect

import pytest

PRIVATE = [
    # (module, attribute path, why no public API does it)
    ("optuna.study", "Study._storage", "the worker loop reads and writes trials through the study's own "
     "cached storage; a second handle would see a stale cache"),
    ("optuna.study", "Study._study_id", "the storage API takes the study's id; the public Study has no accessor"),
    ("optuna.study", "Study._stop_flag", "a sampler ends a study with study.stop(), allowed only inside "
     "Optuna's optimize loop, whose part the worker loop plays (GridSampler.is_exhausted covers the grid only)"),
    ("optuna.trial", "Trial._trial_id", "storage calls (heartbeats, states) take the trial's id"),
    ("optuna.trial", "Trial._cached_frozen_trial", "the trial as ask() read it: reading it again costs a "
     "query per trial under the study lock"),
    ("optuna.storages", "RDBStorage._create_new_trial", "Optuna's cached storage creates trials through it; "
     "the creation token must ride inside it"),
    ("optuna.storages", "RDBStorage._get_prepared_new_trial", "the one place where the new trial's row and "
     "its token can be written in one transaction"),
    ("optuna.storages", "RDBStorage._get_stale_trial_ids", "the public fail_stale_trials fails a trial "
     "without a reason, and a finished trial's attributes can no longer be written"),
    ("optuna.storages._rdb.storage", "_create_scoped_session", "a claim of a queued trial and its token, and a "
     "first heartbeat and start, are written in one transaction; the database's clock is read through it"),
    ("optuna.storages._rdb.models", "TrialModel", "the rows those transactions write"),
    ("optuna.storages._rdb.models", "TrialSystemAttributeModel", "the token and start rows"),
    ("optuna.storages._rdb.models", "TrialHeartbeatModel", "the first heartbeat row"),
    ("optuna.storages._rdb.models", "StudyUserAttributeModel", "the study's heartbeat settings, read in the "
     "transaction that makes a trial RUNNING"),
    ("optuna.storages._cached_storage", "_CachedStorage._backend", "the tests inject faults beneath the cache"),
    ("lightning.pytorch.strategies.launchers.multiprocessing", "_MultiProcessingLauncher._wrapping_function",
     "DDP ranks spawned by the trial's own process report back to it (tuner.training.distributed)"),
    ("lightning.pytorch.strategies.launchers.multiprocessing",
     "_MultiProcessingLauncher._collect_rank_zero_results", "the same"),
    ("torch.cpu", "_is_amx_tile_supported", "the only runtime check of AMX, which makes bf16 fast on a CPU"),
    ("torch.cpu", "_is_avx512_bf16_supported", "the only runtime check of AVX512-BF16"),
]


@pytest.mark.parametrize(("module", "path", "why"), PRIVATE, ids=[f"{m}:{p}" for m, p, _ in PRIVATE])
def test_a_private_name_tuner_relies_on_still_exists(module: str, path: str, why: str) -> None:
    target: object = importlib.import_module(module)
    for part in path.split("."):
        if part in ("_storage", "_study_id", "_stop_flag", "_trial_id", "_cached_frozen_trial", "_backend"):
            # instance attributes: set in __init__, so looked for in the class's source
            assert part in inspect.getsource(target), f"{module}.{path} is gone; tuner uses it because {why}"
            return
        assert hasattr(target, part), f"{module}.{path} is gone; tuner uses it because {why}"
        target = getattr(target, part)
