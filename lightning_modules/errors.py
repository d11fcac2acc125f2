"""User-facing errors raised inside the library (shown as one line, exit code 2, by experiments.run).

:class:`UserError` is the common base: any package below the command line (federation, engine, ...)
subclasses it for its own user errors, so ``engine.errors`` recognises them without importing those
packages.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (a path, key, value or file), reported as one line naming it."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work, named by its key."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that does not exist, does not load, or holds another model."""


def one_line(err: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    msg = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
    return f"{type(err).__name__}: {msg}"


__all__ = ["UserError", "ConfigError", "CheckpointError", "one_line"]
