"""Errors that flcore reports to users.

Every error a user can cause by what they wrote (a config, a plugin name, a command-line value) is a
:class:`UserError`: the CLI prints its message as one paragraph and exits with code 2, without a
traceback. Anything else is a bug or a failure during the run and exits with code 1.
"""

from __future__ import annotations


class FlcoreError(Exception):
    """Base class of flcore's own errors."""


class UserError(FlcoreError):
    """Bad input: the message names the field, the value and what was expected."""

    exit_code = 2


class ConfigError(UserError):
    """A config file or override that does not validate."""


class PluginError(UserError):
    """A component name that is unknown, ambiguous, blocked, or whose plugin failed to load."""


class DataNotFoundError(UserError):
    """Dataset files that are absent and may not be downloaded."""


class RunFailure(FlcoreError):
    """A failure during an experiment, for example an agent whose training diverged."""

    exit_code = 1
