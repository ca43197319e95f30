"""Errors a user can cause, each with a message that says what to fix; and the signal that stops a worker."""

from __future__ import annotations

import signal
from pathlib import Path


def first_line(err: BaseException | str, default: str = "") -> str:
    """The first line of ``err``'s message, blanks around it dropped, or ``default`` when it has none: the one
    line a log, a trial's ``fail_reason`` or an error message shows of an exception."""
    text = str(err).strip()
    return text.splitlines()[0] if text else default


class TunerError(Exception):
    """A problem with the user's input: printed as one clear message, without a traceback."""


class ConfigError(TunerError):
    """A bad study file, key or value."""


class DataError(TunerError):
    """A bad data file, line, column or data set."""


class BackboneError(TunerError):
    """A backbone that cannot be found or loaded."""


def require_file(path: Path, what: str, error: type[TunerError] = TunerError) -> None:
    """Refuse a ``path`` given as a file that does not exist or is a directory, saying which (``what``: its role)."""
    if path.is_dir():
        raise error(f"{what} {path} is a directory, not a file")
    if not path.exists():
        raise error(f"{what} {path} does not exist")


class PreflightError(TunerError):
    """A study that cannot work, found by the pre-flight check before its first trial."""


class Interrupted(BaseException):
    """Not an error: SIGTERM or SIGINT reached a worker (see :class:`tuner.training.stopping.StopSignals`). A
    ``BaseException``, like ``KeyboardInterrupt``, so that code catching ``Exception`` (an objective's
    error handling) lets it through."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class ForceQuit(Interrupted):
    """A second SIGTERM or SIGINT: the worker quits at once, storing nothing more; its running trial stays
    RUNNING until the stale check fails and retries it (see :class:`tuner.training.stopping.StopSignals`)."""


class TrialAbandoned(BaseException):
    """Not an error: another worker ended this worker's running trial (it failed it as stale after a database
    outage, and queued its retry), so this worker stops the trial and stores nothing more on it. A
    ``BaseException``, like :class:`Interrupted`, so that an objective's error handling lets it through."""


class TrialFailed(Exception):
    """A trial that cannot give a value (a NaN loss, a metric never logged), with the reason recorded on the trial.

    Not a :class:`TunerError`: it is the trial's own failure, and the study goes on.
    """
