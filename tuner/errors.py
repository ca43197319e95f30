"""Errors a user can cause, each with a message that says what to fix."""

from __future__ import annotations


class TunerError(Exception):
    """A problem with the user's input: printed as one clear message, without a traceback."""


class ConfigError(TunerError):
    """A bad study file, key or value."""


class DataError(TunerError):
    """A bad data file, line, column or data set."""


class BackboneError(TunerError):
    """A backbone that cannot be found or loaded."""
