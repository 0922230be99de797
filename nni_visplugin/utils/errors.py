"""The user's mistakes: one exception family, one line each at the command line.

Every error a user can fix (a bad setting, a missing file, an unreadable dataset) is a
:class:`UserError`; ``nni-visplugin`` prints it as ``nni-visplugin: error: <message>`` and exits with
its ``exit_code``. Anything else is a programming error and keeps its traceback.
"""
from __future__ import annotations

__all__ = ["UserError", "ConfigError", "ConfigTypeError", "UnknownNameError", "EXIT_USAGE", "EXIT_FAILED"]

EXIT_FAILED = 1  # the command ran and found problems (``check``), or a stage failed
EXIT_USAGE = 2  # the command was given something wrong: a setting, a file, a name


class UserError(Exception):
    """A mistake the user can fix; the message names the file, key or value and what is accepted."""

    exit_code = EXIT_USAGE


class ConfigError(UserError, ValueError):
    """A setting is wrong; the message names the key and what it accepts."""


class ConfigTypeError(ConfigError, TypeError):
    """A setting has the wrong type or an unknown name."""


class UnknownNameError(ConfigError, KeyError):
    """A name (space, strategy, dataset, experiment) that is not registered or not there."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
