"""User-facing errors raised inside modules (shown as one line by experiments.run)."""
from __future__ import annotations


class ConfigError(ValueError):
    """A config value that cannot work, named by its key."""


class CheckpointError(ValueError):
    """A checkpoint that does not exist, does not load, or holds another model."""


def one_line(err: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    msg = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
    return f"{type(err).__name__}: {msg}"


__all__ = ["ConfigError", "CheckpointError", "one_line"]
