"""A worker's loop over a shared study: take a slot, run a trial under a heartbeat, end it cleanly.

Any number of workers, on one machine or many, run :func:`work` against one storage; they share
nothing else. The rules that keep the study whole:

- Slots. A worker counts the budget's slots (the rule: :func:`tuner.study.recovery.slot_holders`) and
  starts its trial under the study's lock (:class:`tuner.storage.lock.SlotLock`), and admits the trial by
  its place (:func:`_admitted`), even when a lock is lost with its database session, or there is none
  (the storage proxy: :mod:`tuner.storage.proxy`).
- Heartbeats. A running trial's worker records a heartbeat every ``heartbeat_interval`` seconds. A
  trial whose heartbeat is older than ``grace_period`` belongs to a dead worker (SIGKILL, power
  loss, a lost node): the next worker to look fails it, with the reason, and queues a retry up to
  ``max_retries`` times (:func:`tuner.study.recovery.fail_and_retry`). A worker whose budget is spent waits
  while other workers' trials run, so a trial orphaned late is still retried.
- Signals. SIGTERM and SIGINT (preemption, Ctrl+C) end the running trial as FAIL with the reason,
  queue its retry, and stop the worker; Optuna alone leaves such a trial RUNNING for ever. A signal once
  the objective has returned lets its outcome be stored first. A second signal quits at once and stores
  nothing more: the trial stays RUNNING until the stale check fails and retries it.
- Errors of the study itself. A :class:`tuner.errors.TunerError` raised inside a trial (a data file
  gone, a backbone that cannot load) is a property of the study, not of the trial's settings: the trial
  is failed with ``study_error`` set and queued again with the same settings, and the error stops the
  worker. The same failure ``SAME_FAILURES_TO_STOP`` times in a row stops it too.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner._compat.optuna import (
    as_asked,
    enter_optimize_loop,
    forget_trials,
    leave_optimize_loop,
    stop_requested,
    storage_of,
    study_id,
    trial_id,
)
from tuner.errors import ForceQuit, Interrupted, TrialAbandoned, TunerError, first_line
from tuner.keys import (
    FAIL_REASON_ATTR,
    HOST_ATTR,
    NOT_ADMITTED_ATTR,
    PID_ATTR,
    RETRY_OF_ATTR,
    STUDY_ERROR_ATTR,
    WORKER_ATTR,
)
from tuner.storage.lock import SlotLock
from tuner.storage.rdb import beats_when_started, new_trial_template
from tuner.storage.records import lineage, retry_history
from tuner.study.heartbeat import Heartbeat
from tuner.study.recovery import (
    fail_and_retry,
    fail_stale,
    heartbeat_interval,
    retry_admitted,
    retry_note,
    slot_holders,
    used_slots,
)
from tuner.training.stopping import StopSignals

log = logging.getLogger(__name__)


IDLE_FIRST_LOOK_S = 0.1  # an idle worker's first wait for others' trials; it doubles up to the poll interval
SAME_FAILURES_TO_STOP = 3  # this many trials in a row failing with the same error stop the worker


@dataclass
class WorkResult:
    """What one call of :func:`work` did."""

    ran: int = 0
    interrupted: str | None = None  # the signal's name when a signal stopped the worker
    forced: bool = False  # a second signal stopped it at once, leaving its trial RUNNING (see StopSignals)
    timed_out: bool = False
    repeated_failure: str | None = None  # why the worker stopped after failures with the same error


def work(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    budget: int,
    *,
    lock: SlotLock,
    signals: StopSignals,
    max_retries: int = 2,
    timeout: float | None = None,
    worker: str = "0",
    on_start: Callable[[int], None] | None = None,
    on_end: Callable[[FrozenTrial], None] | None = None,
    poll_s: float | None = None,
    same_failures: int = SAME_FAILURES_TO_STOP,
    stall_timeout: float | None = None,
) -> WorkResult:
    """Run trials of ``study`` until it holds ``budget`` finished trials, a signal, ``timeout``, or
    ``same_failures`` trials in a row failed with the same error.

    Args:
        objective: ``trial -> value``; raising ``optuna.TrialPruned`` prunes the trial, any other
            exception fails it with the message as ``fail_reason`` (unless the objective set one). A
            :class:`tuner.errors.TunerError` fails it as an error of the study (see the module
            docstring), queues it again and is raised here.
        lock: the study's lock; see the module docstring.
        signals: the installed signal handlers; a signal ends the running trial and returns.
        timeout: seconds after which no new trial starts (the running one finishes).
        worker: this worker's label, recorded on its trials with its host and pid.
        on_start: called with the trial number as each trial starts.
        on_end: called with each finished trial.
        poll_s: the longest an idle worker waits between looks for ended or orphaned trials (default: the
            heartbeat interval). It looks again after ``IDLE_FIRST_LOOK_S``, then at doubling waits up to
            this, so it ends soon after short trials and looks rarely while long ones run.
        same_failures: stop after this many trials in a row failed with the same exception type and
            message (the study is likely broken; 0: never), with ``repeated_failure`` saying so.
        stall_timeout: a trial that runs no forward pass for this many seconds while its worker lives (a
            hung data loader) is failed as stalled, its retry queued, and left to its worker to drop if it
            ever wakes (needs heartbeats; ``study.stall_timeout``).
    """
    result = WorkResult()
    started = time.monotonic()
    labels = {WORKER_ATTR: worker, HOST_ATTR: socket.gethostname(), PID_ATTR: os.getpid()}
    interval = heartbeat_interval(study)
    trial: optuna.Trial | None = None
    idle_wait = IDLE_FIRST_LOOK_S
    last_error: str | None = None  # the exception that failed the last trial, as "Type: message"
    repeats = 0  # how many trials in a row failed with it
    enter_optimize_loop(study)  # a sampler may end the study (the grid sampler, once its grid is spent)
    try:
        while not stop_requested(study):
            signals.check()
            if timeout is not None and time.monotonic() - started >= timeout:
                log.info("timeout of %.0f s reached after %d trials", timeout, result.ran)
                result.timed_out = True
                break
            with signals.deferred():
                with lock():
                    fail_stale(study, max_retries)
                    trials = study.get_trials(deepcopy=False)
                    waiting = any(t.state == TrialState.WAITING for t in trials)
                    running = sum(t.state == TrialState.RUNNING for t in trials)
                    trial = _ask(study, waiting, labels) if waiting or used_slots(trials) < budget else None
                    if trial is not None and not _admitted(study, trial, trials, budget):
                        _withdraw(study, trial)
                        trial = None
                        continue
                if trial is not None:
                    result.ran += 1
                    _label(trial, labels)
                    if on_start is not None:
                        on_start(trial.number)
            if trial is None:
                if running and interval:
                    # other workers' trials may still die and need a retry; a dead worker's trial is
                    # only noticed by a live one
                    idle_wait = min(idle_wait, poll_s or interval)
                    signals.sleep(idle_wait)
                    idle_wait *= 2
                    continue
                break
            idle_wait = IDLE_FIRST_LOOK_S
            frozen, error = _run_trial(study, trial, objective, signals, max_retries, interval, stall_timeout)
            trial = None
            if on_end is not None:
                on_end(frozen)
            repeats = repeats + 1 if error is not None and error == last_error else int(error is not None)
            last_error = error
            if same_failures and repeats >= same_failures:
                reason = frozen.user_attrs.get(FAIL_REASON_ATTR) or error
                result.repeated_failure = f"{repeats} trials in a row failed with the same error: {reason}"
                break
    except Interrupted as err:
        result.interrupted = signal.Signals(err.signum).name
        result.forced = isinstance(err, ForceQuit)
        if trial is not None and not result.forced:
            with signals.deferred():
                _end_interrupted(study, trial, err, max_retries)
    finally:
        leave_optimize_loop(study)
    return result


def _ask(study: optuna.Study, waiting: bool, labels: Mapping[str, Any] | None = None) -> optuna.Trial:
    """``study.ask()``, which looks for a queued retry only when ``waiting`` (the trials just read hold one).

    Optuna's ask reads the study's trials again to look for one; under the slot lock every other worker
    waits for that read, a fifth of the time the lock is held (bench/storage.py). A retry queued since
    the read (by a worker that failed a trial of the study's own error, which queues outside the lock) is
    taken by the next ask. A new trial carries ``labels`` as user attributes from its creation, in the
    same transaction.
    """
    if waiting:
        return study.ask()
    forget_trials(study)  # what study.ask does before it creates a trial
    template = new_trial_template(labels) if labels else None
    return optuna.Trial(study, storage_of(study).create_new_trial(study_id(study), template))


def _admitted(study: optuna.Study, trial: optuna.Trial, seen: list[FrozenTrial], budget: int) -> bool:
    """Whether ``trial``, just asked for after counting ``seen``, is within the budget.

    The count and the ask run under the study lock, but a lock held by a database session is freed by
    the server when that session's connection drops, while its holder carries on: two workers may then
    both count a free slot. So admission rests on the order the storage gives trials as it creates them
    (their numbers), not on the lock: a new trial is within the budget when fewer than ``budget`` of
    the trials that hold slots began before it. Where nothing was created between the count and the
    ask (the trial's number is the count), the count already says so; only otherwise is the study read
    again. A trial enqueued by hand (the baseline) already holds its slot; a retry is admitted by its
    first attempt's place (:func:`tuner.study.recovery.retry_admitted`).
    """
    if retry_history(as_asked(trial)):
        return retry_admitted(study, as_asked(trial), budget)
    if trial.number < len(seen):
        return True  # enqueued (the baseline): it holds its slot
    if trial.number == len(seen):
        return used_slots(seen) < budget
    # a retry holds the slot of the trial it retries: count each holder at its first attempt's place
    ahead = sum(1 for t in slot_holders(study.get_trials(deepcopy=False)) if lineage(t) < trial.number)
    return ahead < budget


def _withdraw(study: optuna.Study, trial: optuna.Trial) -> None:
    """Fail a trial created past the budget before it runs; it uses no slot (see slot_holders)."""
    trial.set_user_attr(NOT_ADMITTED_ATTR, True)
    trial.set_user_attr(FAIL_REASON_ATTR, "not admitted: the budget was spent by trials started at the same time")
    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    log.warning("trial %d not run: the budget was spent by trials started at the same time", trial.number)


def _label(trial: optuna.Trial, labels: Mapping[str, Any]) -> None:
    """Record who runs ``trial`` (``labels``), where its creation did not; a retry, which starts as a copy
    of the failed trial's attributes, is linked to that trial and its failure cleared."""
    stored = as_asked(trial).user_attrs
    for key, value in labels.items():
        if stored.get(key) != value:
            trial.set_user_attr(key, value)
    history = retry_history(as_asked(trial))
    if history:
        trial.set_user_attr(RETRY_OF_ATTR, history[-1])
        trial.set_user_attr(FAIL_REASON_ATTR, None)
        if as_asked(trial).user_attrs.get(STUDY_ERROR_ATTR):
            trial.set_user_attr(STUDY_ERROR_ATTR, None)


def _end_interrupted(study: optuna.Study, trial: optuna.Trial, err: Interrupted, max_retries: int) -> FrozenTrial:
    """Fail an interrupted trial with the signal as its reason, its retry queued first (see
    :func:`tuner.study.recovery.fail_and_retry`: no lock is needed for a worker counting meanwhile)."""
    current = storage_of(study).get_trial(trial_id(trial))
    if current.state != TrialState.RUNNING:
        return current
    reason = f"interrupted by {signal.Signals(err.signum).name}; {retry_note(current, max_retries)}"
    frozen = fail_and_retry(study, trial_id(trial), reason, max_retries, trial=trial)
    if frozen is None:
        return storage_of(study).get_trial(trial_id(trial))
    log.warning("trial %d failed: %s", trial.number, reason)
    return frozen


def _run_trial(study: optuna.Study, trial: optuna.Trial, objective: Callable[[optuna.Trial], float],
               signals: StopSignals, max_retries: int, interval: int | None,
               stall_timeout: float | None = None) -> tuple[FrozenTrial, str | None]:
    """Run ``objective`` on ``trial`` under a heartbeat and store its outcome.

    From the objective's end until its outcome is stored, the heartbeat's end included, signals are
    deferred: a signal there lets the outcome be stored, and the worker stops at its next check.
    Returns the stored trial and, when an exception failed it, that exception's type and message.
    Re-raises :class:`Interrupted` once the trial is stored as failed, a
    :class:`tuner.errors.TunerError` once the trial is stored as an error of the study and queued again,
    and :class:`tuner.errors.ForceQuit` at once, storing nothing.
    A trial that another worker failed while it ran (as stale, queuing its retry: see
    :class:`tuner.study.heartbeat.Heartbeat`) is stopped and returned as that worker stored it.
    """
    value: float | None = None
    state = TrialState.FAIL
    reason: str | None = None
    study_error: TunerError | None = None
    interrupted: Interrupted | None = None
    signals.progress()

    def stalled() -> bool:
        """Whether the trial ran no forward pass for ``stall_timeout``; if so it is failed here."""
        if stall_timeout is None or time.monotonic() - signals.progressed_at <= stall_timeout:
            return False
        current = storage_of(study).get_trial(trial_id(trial))
        reason = (f"stalled: no forward pass for {stall_timeout:g} s while its worker lives (study.stall_timeout); "
                  f"{retry_note(current, max_retries)}")
        if fail_and_retry(study, trial_id(trial), reason, max_retries) is not None:
            log.error("trial %d failed: %s", trial.number, reason)
        signals.abandon()  # if training ever wakes, it stops at its next check and stores nothing more
        return True

    with signals.deferred():
        with Heartbeat(storage_of(study), trial_id(trial), interval, on_ended=signals.abandon,
                       first_stored=beats_when_started(storage_of(study)), stalled=stalled):
            try:
                with signals.allowed():  # the objective defers signals itself where it stops cleanly
                    signals.check()
                    value = objective(trial)
                state = TrialState.COMPLETE
            except optuna.TrialPruned:
                state = TrialState.PRUNED
            except TrialAbandoned:
                pass
            except ForceQuit:
                raise
            except (Interrupted, SystemExit) as err:
                # Lightning answers SIGTERM with its own SIGTERMException, a SystemExit, when it sees the
                # signal before the objective's own check does
                if not isinstance(err, Interrupted) and signals.signum is None:
                    raise
                interrupted = err if isinstance(err, Interrupted) else Interrupted(signals.signum or signal.SIGTERM)
            except Exception as err:  # noqa: BLE001 - a failed trial must not stop the study (its errors do: below)
                reason = f"{type(err).__name__}: {first_line(err)}"
                if isinstance(err, TunerError):
                    study_error = err
        ended = _ended_elsewhere(study, trial, state, signals)
        if ended is not None:
            return ended, None
        if interrupted is not None:
            _end_interrupted(study, trial, interrupted, max_retries)
            raise interrupted from None
        if state == TrialState.FAIL:
            # the objective's own reason, when it gave one, says more than the exception's type
            recorded = trial.user_attrs.get(FAIL_REASON_ATTR)
            if not recorded:
                trial.set_user_attr(FAIL_REASON_ATTR, reason)
            if study_error is None:  # an error of the study is raised, and reported by the caller
                log.warning("trial %d failed: %s", trial.number, recorded or reason)
        if state == TrialState.COMPLETE:
            return study.tell(trial, value, skip_if_finished=True), None
        if study_error is not None:
            # not counted (see used_slots) and run again once the study is fixed: the same settings, and
            # the baseline stays the baseline
            fail_and_retry(study, trial_id(trial), str(trial.user_attrs.get(FAIL_REASON_ATTR) or reason),
                           max_retries, study_error=True, trial=trial)
            raise study_error
        frozen = study.tell(trial, state=state, skip_if_finished=True)
    return frozen, reason


def _ended_elsewhere(study: optuna.Study, trial: optuna.Trial, state: TrialState,
                     signals: StopSignals) -> FrozenTrial | None:
    """``trial`` as stored, if another worker ended it while it ran (it takes no more writes); else ``None``.

    Its heartbeat tells (``signals.abandoned``), or, when the objective failed before the heartbeat looked
    (writing to the ended trial fails), the stored state."""
    if not signals.abandoned and state != TrialState.FAIL:
        return None  # a result's tell skips a trial ended meanwhile by itself
    signals.forget_abandoned()
    stored = storage_of(study).get_trial(trial_id(trial))
    if stored.state == TrialState.RUNNING:
        return None
    log.warning("trial %d was ended by another worker while it ran, and not stored here: %s", trial.number,
                stored.user_attrs.get(FAIL_REASON_ATTR) or stored.state.name)
    return stored
