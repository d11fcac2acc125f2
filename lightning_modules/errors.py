"""User-facing configuration errors raised inside modules (shown as one line by experiments.run)."""
from lightning_modules.checkpoints import CheckpointError, one_line


class ConfigError(ValueError):
    """A config value that cannot work, named by its key."""


__all__ = ["ConfigError", "CheckpointError", "one_line"]
