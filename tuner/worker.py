"""A worker's loop over a shared study: take a slot, run a trial under a heartbeat, end it cleanly.

Any number of workers, on one machine or many, run :func:`work` against one storage; they share
nothing else. The rules that keep the study whole:

- Slots. The budget ``n_trials`` counts every trial except a failed one that was retried (its retry
  holds the slot). A worker checks the count and starts its trial under the study's lock
  (:class:`tuner.storage.SlotLock`), so finished trials end equal to ``n_trials`` whatever the number
  of workers.
- Heartbeats. A running trial's worker records a heartbeat every ``heartbeat_interval`` seconds. A
  trial whose heartbeat is older than ``grace_period`` belongs to a dead worker (SIGKILL, power
  loss, a lost node): the next worker to look fails it, with the reason, and queues a retry with
  Optuna's ``RetryHeartbeatStaleTrialCallback`` up to ``max_retries`` times. A worker whose budget is
  spent waits while other workers' trials run, so a trial orphaned late is still retried.
- Signals. SIGTERM and SIGINT (preemption, Ctrl+C) end the running trial as FAIL with the reason,
  queue its retry, and stop the worker; Optuna alone leaves such a trial RUNNING for ever.
- Errors of the study itself. A :class:`tuner.errors.TunerError` raised inside a trial (a data file
  gone, a backbone that cannot load) is a property of the study, not of the trial's settings: the trial
  is failed with ``study_error`` set, does not use the budget, is queued again with the same settings,
  and the error stops the worker. The same failure ``SAME_FAILURES_TO_STOP`` times in a row stops it too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import Interrupted, TunerError
from tuner.storage import SlotLock

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
IDLE_FIRST_LOOK_S = 0.1  # an idle worker's first wait for others' trials; it doubles up to the poll interval
# how long a signal lets a training step run on, so that it ends at the batch's end with a checkpoint,
# before the step is abandoned (see tuner.objective.StopMidStep)
STOP_GRACE_S = 2.0
SAME_FAILURES_TO_STOP = 3  # this many trials in a row failing with the same error stop the worker
STUDY_ERROR_ATTR = "study_error"  # user attribute of a trial failed by an error of the study itself


class StopSignals:
    """SIGTERM/SIGINT handling for one worker, as a context manager (main thread only).

    The first signal is recorded and raises :class:`Interrupted` at once, unless the worker is inside
    :meth:`deferred` code (training, where a callback stops at the next batch, or storing a result),
    which calls :meth:`check` when it can stop. Later signals are only recorded.

    Python runs a signal handler only between bytecodes of the main thread: while the main thread is
    in one long call into C (a backward pass is one), the handler waits for it to return.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.received_at: float | None = None  # time.monotonic() when the signal arrived
        self._deferred = 0
        self._previous: dict[int, Any] = {}
        self._wake = threading.Event()

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            return
        self.signum = signum
        self.received_at = time.monotonic()
        self._wake.set()
        log.warning("%s received: ending the current trial and stopping", signal.Signals(signum).name)
        if not self._deferred:
            raise Interrupted(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferred += 1
        try:
            yield
        finally:
            self._deferred -= 1

    def check(self, grace: float = 0.0) -> None:
        """Raise :class:`Interrupted` if a signal arrived (at least ``grace`` seconds ago)."""
        if self.signum is None:
            return
        if grace <= 0 or self.received_at is None or time.monotonic() - self.received_at >= grace:
            raise Interrupted(self.signum)

    def sleep(self, seconds: float) -> None:
        """Sleep, waking early when a signal arrives."""
        self._wake.wait(seconds)
        self.check()


def retry_history(trial: FrozenTrial) -> list[int]:
    """The numbers of the trials this one retries, oldest first (empty for a first attempt)."""
    return list(trial.system_attrs.get("retry_history", []))


def is_study_error(trial: FrozenTrial) -> bool:
    """Whether ``trial`` failed because of an error of the study itself (bad data, an unusable backbone),
    not of its own settings."""
    return trial.state == TrialState.FAIL and bool(trial.user_attrs.get(STUDY_ERROR_ATTR))


def used_slots(trials: list[FrozenTrial]) -> int:
    """How much of the budget ``trials`` use: all of them but failed trials that have a retry, and trials
    failed by an error of the study itself (which would otherwise spend the budget until it is fixed)."""
    retried = {retry_history(t)[-1] for t in trials if retry_history(t)}
    return sum(1 for t in trials
               if not (t.state == TrialState.FAIL and (t.number in retried or is_study_error(t))))


def _retries_left(trial: FrozenTrial, max_retries: int) -> bool:
    return len(retry_history(trial)) < max_retries


def requeue(study: optuna.Study, trial: FrozenTrial, max_retries: int) -> bool:
    """Queue a retry of the failed ``trial`` (same parameters, its reports inherited) unless it used up
    ``max_retries``. Returns whether a retry was queued."""
    if not _retries_left(trial, max_retries):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=max_retries, inherit_intermediate_values=True)(study, trial)
    return True


def _retry_note(trial: FrozenTrial, max_retries: int) -> str:
    if _retries_left(trial, max_retries):
        return "queued for retry"
    return f"not retried: retry limit of {max_retries} reached"


def _owner(trial: FrozenTrial) -> str:
    attrs = trial.user_attrs
    return f"worker {attrs.get('worker', '?')} on {attrs.get('host', '?')}, pid {attrs.get('pid', '?')}"


def _heartbeat_interval(study: optuna.Study) -> int | None:
    return getattr(study._storage, "get_heartbeat_interval", lambda: None)()


def _stale_ids(study: optuna.Study) -> list[int]:
    """Ids of the RUNNING trials whose heartbeat is older than the grace period (none without heartbeats)."""
    if not _heartbeat_interval(study):
        return []
    # Optuna keeps this query private; its public fail_stale_trials cannot record a failure's reason
    return list(study._storage._get_stale_trial_ids(study._study_id))  # type: ignore[attr-defined]


def fail_stale(study: optuna.Study, max_retries: int) -> list[int]:
    """Fail the RUNNING trials whose heartbeat stopped, record why, and queue their retries.

    Optuna's ``fail_stale_trials`` does the same but cannot record a reason (a finished trial's
    attributes are read-only), so the reason is written while the trial still runs. Several workers
    may race here; the storage lets exactly one change each trial's state. Returns the trials failed.
    """
    storage = study._storage
    failed = []
    for trial_id in _stale_ids(study):
        trial = storage.get_trial(trial_id)
        if trial.state != TrialState.RUNNING:
            continue
        reason = f"stale: the heartbeat of {_owner(trial)} stopped; {_retry_note(trial, max_retries)}"
        try:
            storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # its worker, or another worker, finished it first
        log.warning("trial %d failed: %s", trial.number, reason)
        requeue(study, storage.get_trial(trial_id), max_retries)
        failed.append(trial.number)
    return failed


def reap(study: optuna.Study, max_retries: int, older_than: float | None = None) -> list[dict[str, Any]]:
    """Fail stale RUNNING trials by hand, for storages without heartbeats or with no worker left.

    A RUNNING trial is stale when its heartbeat stopped, when its worker's process is gone from this
    machine, or, with ``older_than``, when it started more than that many seconds ago. Each is
    failed with the reason and retried like a crashed trial. Returns what was done, per trial.
    """
    stale_by_heartbeat = set(_stale_ids(study))
    host, now = socket.gethostname(), time.time()
    reaped = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        why = None
        if trial._trial_id in stale_by_heartbeat:
            why = f"the heartbeat of {_owner(trial)} stopped"
        elif trial.user_attrs.get("host") == host and not _alive(trial.user_attrs.get("pid")):
            why = f"{_owner(trial)} is no longer running"
        elif older_than is not None and trial.datetime_start is not None and (
                now - trial.datetime_start.timestamp() > older_than):
            why = f"running for more than {older_than:.0f} s (reaped by hand)"
        if why is None:
            continue
        reason = f"stale: {why}; {_retry_note(trial, max_retries)}"
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
            if not study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue
        retried = requeue(study, study._storage.get_trial(trial._trial_id), max_retries)
        reaped.append({"number": trial.number, "reason": reason, "retried": retried})
    return reaped


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # unknown: not evidence of death
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Heartbeat:
    """Records a trial's heartbeat every ``interval`` seconds in a thread while the trial runs.

    A failed write (the database restarting) is logged and tried again at the next beat: the thread
    must outlive outages, or a live trial would look dead to the other workers.
    """

    def __init__(self, storage: Any, trial_id: int, interval: int | None) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> None:
        if self.interval:
            self._beat()
            self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.trial_id}", daemon=True)
            self._thread.start()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        assert self.interval
        while not self._stop.wait(self.interval):
            self._beat()

    def _beat(self) -> None:
        try:
            self.storage.record_heartbeat(self.trial_id)
        except Exception as err:  # noqa: BLE001 - logged; the next beat tries again
            log.warning("heartbeat of trial %d not recorded: %s", self.trial_id, str(err).splitlines()[0])


@dataclass
class WorkResult:
    """What one call of :func:`work` did."""

    ran: int = 0
    interrupted: str | None = None  # the signal's name when a signal stopped the worker
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
    """
    result = WorkResult()
    started = time.monotonic()
    interval = _heartbeat_interval(study)
    trial: optuna.Trial | None = None
    idle_wait = IDLE_FIRST_LOOK_S
    last_error: str | None = None  # the exception that failed the last trial, as "Type: message"
    repeats = 0  # how many trials in a row failed with it
    # Samplers end a study through `study.stop()` (the grid sampler, once its grid is spent), which
    # Optuna allows only inside its own optimize loop; this loop plays that part.
    study._thread_local.in_optimize_loop, study._stop_flag = True, False
    try:
        while not study._stop_flag:
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
                    trial = _ask(study, waiting) if waiting or used_slots(trials) < budget else None
                if trial is not None:
                    result.ran += 1
                    _label(trial, worker)
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
            frozen, error = _run_trial(study, trial, objective, signals, max_retries, interval)
            trial = None
            if on_end is not None:
                on_end(frozen)
            repeats = repeats + 1 if error is not None and error == last_error else int(error is not None)
            last_error = error
            if same_failures and repeats >= same_failures:
                reason = frozen.user_attrs.get("fail_reason") or error
                result.repeated_failure = f"{repeats} trials in a row failed with the same error: {reason}"
                break
    except Interrupted as err:
        result.interrupted = signal.Signals(err.signum).name
        if trial is not None:
            with signals.deferred():
                _end_interrupted(study, trial, err, max_retries)
    finally:
        study._thread_local.in_optimize_loop = False
    return result


def _ask(study: optuna.Study, waiting: bool) -> optuna.Trial:
    """``study.ask()``, which looks for a queued retry only when ``waiting`` (the trials just read hold one).

    Optuna's ask reads the study's trials again to look for one; under the slot lock every other worker
    waits for that read, a fifth of the time the lock is held (bench/storage.py). A retry queued since
    the read (by an interrupted worker, which queues outside the lock) is taken by the next ask.
    """
    if waiting:
        return study.ask()
    study._thread_local.cached_all_trials = None  # what study.ask does before it creates a trial
    return optuna.Trial(study, study._storage.create_new_trial(study._study_id))


def _label(trial: optuna.Trial, worker: str) -> None:
    """Record who runs ``trial``; a retry, which starts as a copy of the failed trial's attributes, is
    linked to that trial and its failure cleared."""
    # the trial as `ask` read it, after popping a queued retry: reading it again costs a query per trial
    history = retry_history(trial._cached_frozen_trial)
    trial.set_user_attr("worker", worker)
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    if history:
        trial.set_user_attr("retry_of", history[-1])
        trial.set_user_attr("fail_reason", None)
        if trial._cached_frozen_trial.user_attrs.get(STUDY_ERROR_ATTR):
            trial.set_user_attr(STUDY_ERROR_ATTR, None)


def _end_interrupted(study: optuna.Study, trial: optuna.Trial, err: Interrupted, max_retries: int) -> FrozenTrial:
    """Fail an interrupted trial with the signal as its reason and queue its retry."""
    storage = study._storage
    current = storage.get_trial(trial._trial_id)
    if current.state != TrialState.RUNNING:
        return current
    reason = f"interrupted by {signal.Signals(err.signum).name}; {_retry_note(current, max_retries)}"
    trial.set_user_attr("fail_reason", reason)
    frozen = study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    log.warning("trial %d failed: %s", trial.number, reason)
    requeue(study, storage.get_trial(trial._trial_id), max_retries)
    return frozen


def _run_trial(study: optuna.Study, trial: optuna.Trial, objective: Callable[[optuna.Trial], float],
               signals: StopSignals, max_retries: int, interval: int | None) -> tuple[FrozenTrial, str | None]:
    """Run ``objective`` on ``trial`` under a heartbeat and store its outcome.

    Returns the stored trial and, when an exception failed it, that exception's type and message.
    Re-raises :class:`Interrupted` once the trial is stored as failed, and a
    :class:`tuner.errors.TunerError` once the trial is stored as an error of the study and queued again.
    """
    value: float | None = None
    state = TrialState.FAIL
    reason: str | None = None
    study_error: TunerError | None = None
    with _Heartbeat(study._storage, trial._trial_id, interval):
        try:
            signals.check()
            value = objective(trial)
            state = TrialState.COMPLETE
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except (Interrupted, SystemExit) as err:
            # Lightning answers SIGTERM with its own SIGTERMException, a SystemExit, when it sees the
            # signal before the objective's own check does
            if not isinstance(err, Interrupted) and signals.signum is None:
                raise
            interrupted = err if isinstance(err, Interrupted) else Interrupted(signals.signum or signal.SIGTERM)
            with signals.deferred():
                _end_interrupted(study, trial, interrupted, max_retries)
            raise interrupted from None
        except Exception as err:  # noqa: BLE001 - a failed trial must not stop the study (its errors do: below)
            message = str(err).splitlines()[0] if str(err) else ""
            reason = f"{type(err).__name__}: {message}"
            if isinstance(err, TunerError):
                study_error = err
    with signals.deferred():
        if state == TrialState.FAIL:
            # the objective's own reason, when it gave one, says more than the exception's type
            recorded = trial.user_attrs.get("fail_reason")
            if not recorded:
                trial.set_user_attr("fail_reason", reason)
            if study_error is not None:
                trial.set_user_attr(STUDY_ERROR_ATTR, True)
            else:  # an error of the study is raised, and reported by the caller
                log.warning("trial %d failed: %s", trial.number, recorded or reason)
        if state == TrialState.COMPLETE:
            return study.tell(trial, value, skip_if_finished=True), None
        frozen = study.tell(trial, state=state, skip_if_finished=True)
        if study_error is not None:
            # not counted (see used_slots) and run again once the study is fixed: the same settings, and
            # the baseline stays the baseline
            requeue(study, study._storage.get_trial(trial._trial_id), max_retries)
            raise study_error
    return frozen, reason
