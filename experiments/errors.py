"""Which exceptions are the user's (bad path, key, value, file) and how they are shown: one clear line."""
from __future__ import annotations

from omegaconf.errors import OmegaConfBaseException

from experiments.builders import ConfigError

try:
    from datamodules.errors import DataError
except ImportError:  # pragma: no cover - datamodules always ships errors.py
    class DataError(ValueError):
        pass


class CheckpointError(ValueError):
    """A checkpoint that does not load or belongs to another model."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    DataError,
    ConfigError,
    CheckpointError,
    FileNotFoundError,
    OmegaConfBaseException,
)


def one_line(err: BaseException) -> str:
    """The error as one line: its type and the first line of its message."""
    msg = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
    return f"{type(err).__name__}: {msg}"


def find_user_error(err: BaseException) -> BaseException | None:
    """The user error behind ``err`` (Hydra wraps constructor errors in InstantiationException)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, USER_ERRORS):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
