"""Opening storages for workers: retries through transient errors, and trials created once under lost replies."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import optuna
import pytest
from conftest import replies_lost
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from tuner.keys import TOKEN_ATTR
from tuner.storage.rdb import open_storage
from tuner.study.loop import _ask


def _create(how: str, study: optuna.Study) -> int:
    """Create a trial the way ``how`` names; returns its id."""
    if how == "create_new_trial":  # the storage itself, no template
        return int(study._storage._backend.create_new_trial(study._study_id))
    if how == "worker":  # tuner's worker: the cached storage's _create_new_trial, no template
        return _ask(study, waiting=False)._trial_id
    if how == "ask":
        return study.ask()._trial_id
    if how == "enqueue":  # a WAITING template, through the public API
        study.enqueue_trial({"x": 1.0})
        return study.get_trials(deepcopy=False)[-1]._trial_id
    # a COMPLETE template, as study.add_trial passes it to the cached storage
    template = optuna.create_trial(params={"x": 1.0}, distributions={"x": FloatDistribution(0, 2)}, value=3.0)
    return int(study._storage.create_new_trial(study._study_id, template))


@pytest.mark.parametrize("how", ["create_new_trial", "worker", "ask", "enqueue", "add_trial"])
@pytest.mark.parametrize("failures", [1, 6], ids=["optuna-retries", "tuner-retries"])
@pytest.mark.usefixtures("no_optuna_backoff")
def test_a_trial_whose_creation_reply_was_lost_is_created_once(tmp_path: Path, how: str, failures: int) -> None:
    # One lost reply is retried by Optuna's own loop in _create_new_trial; after five, Optuna gives up
    # and ResilientRDBStorage's retry takes over. Either must find the trial the first commit made.
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=open_storage(url), study_name="s")
    before = datetime.now()
    with replies_lost(study._storage._backend.engine, failures) as failed:
        trial_id = _create(how, study)
    after = datetime.now()
    assert len(failed) == failures  # the faults happened
    trials = optuna.load_study(study_name="s", storage=open_storage(url, create_schema=False)).trials
    assert [(t.number, t._trial_id) for t in trials] == [(0, trial_id)]
    state = {"enqueue": TrialState.WAITING, "add_trial": TrialState.COMPLETE}.get(how, TrialState.RUNNING)
    assert trials[0].state == state
    if state == TrialState.RUNNING:  # started by the call, as Optuna starts a trial made without a template
        assert trials[0].datetime_start is not None and before <= trials[0].datetime_start <= after
    if how == "enqueue":
        assert trials[0].system_attrs["fixed_params"] == {"x": 1.0}
    if how == "add_trial":
        assert trials[0].params == {"x": 1.0} and trials[0].value == 3.0
    # the study goes on: the next trial is number 1
    assert study._storage._backend.create_new_trial(study._study_id) != trial_id
    assert [t.number for t in study.get_trials(deepcopy=False)] == [0, 1]


def test_creating_a_trial_looks_for_its_token_only_after_a_lost_reply(tmp_path: Path) -> None:
    from sqlalchemy import event

    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "s")
    statements: list[str] = []
    event.listen(storage.engine, "before_cursor_execute", lambda c, cur, statement, *a: statements.append(statement))
    storage.create_new_trial(study_id)
    assert statements and not [s for s in statements if s.lstrip().upper().startswith("SELECT")
                                and "trial_system_attributes" in s]


@pytest.mark.usefixtures("no_optuna_backoff")
def test_a_trial_copied_from_another_gets_a_token_of_its_own(tmp_path: Path) -> None:
    # a retry queued by RetryHeartbeatStaleTrialCallback copies the failed trial's system attributes
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 'study.db'}"), study_name="s")
    failed = study.ask()
    study.tell(failed, state=TrialState.FAIL)
    copied = optuna.create_trial(state=TrialState.WAITING, system_attrs=study.trials[0].system_attrs)
    with replies_lost(study._storage._backend.engine) as lost:
        retry_id = study._storage.create_new_trial(study._study_id, copied)
    assert lost == [1]
    first, retry = study._storage._backend.get_all_trials(study._study_id)
    assert retry._trial_id == retry_id and retry.state == TrialState.WAITING
    assert retry.system_attrs[TOKEN_ATTR] != first.system_attrs[TOKEN_ATTR]
