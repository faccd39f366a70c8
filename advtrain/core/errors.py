"""The project's one exception type for bad user input.

Every value that comes from a user (a config value, a command-line override, a path, a
checkpoint) is validated where it is used, and a bad one raises :class:`ConfigError` with
one line naming the value and what is allowed. The command-line tools print that line and
exit with code 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad input from the user: one line naming the bad value and what is allowed.

    A subclass of ``ValueError`` so that code (and tests) written against the built-in
    type keep working; the CLI treats only this type (and ``ConfigFileNotFound``) as the
    user's mistake.
    """


class ConfigFileNotFound(ConfigError, FileNotFoundError):
    """A path the user gave (checkpoint, weights, data folder) does not exist."""
