"""Errors that are the user's to fix: the CLI prints them without a traceback and exits 2."""

from __future__ import annotations


class ConfigError(ValueError):
    """A recipe or command line that cannot be run as written."""


class DataError(ValueError):
    """A dataset that cannot be used as given; the message names the file, row and field."""


USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, DataError)
