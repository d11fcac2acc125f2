"""User-facing errors raised inside the library (shown as one line, exit code 2, by experiments.run).

:class:`UserError` is the common base: any package below the command line (federation, engine, ...)
subclasses it for its own user errors, so ``engine.errors`` recognises them without importing those
packages.
"""
from lightning_modules.checkpoints import CheckpointError, one_line


class UserError(Exception):
    """A problem the user can fix (a path, key, value or file), reported as one line naming it."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work, named by its key."""


__all__ = ["UserError", "ConfigError", "CheckpointError", "one_line"]
