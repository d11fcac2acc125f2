"""Which exceptions are the user's (bad path, key, value, file) and how they are shown: one clear line."""
from __future__ import annotations

import errno

from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf.errors import OmegaConfBaseException

from datamodules.errors import DataError
from lightning_modules.errors import CheckpointError, ConfigError, UserError, one_line

__all__ = ["USER_ERRORS", "MACHINE_ERRNOS", "CheckpointError", "ConfigError", "DataError", "UserError", "find_user_error", "one_line"]

USER_ERRORS: tuple[type[BaseException], ...] = (
    DataError,
    ConfigError,
    CheckpointError,
    UserError,  # e.g. federation.errors.FederationError (engine does not import federation)
    FileNotFoundError,
    OmegaConfBaseException,
    MisconfigurationException,  # Lightning's own one-line config errors (e.g. trainer.max_epochs=-2)
)


#: write failures the machine's state causes (full disk or quota, file-size limit, read-only or forbidden
#: folder): one line naming the errno, not a traceback from wherever the write happened to be
MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM})


def find_user_error(err: BaseException) -> BaseException | None:
    """The user error behind ``err`` (Hydra wraps constructor errors in InstantiationException)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, USER_ERRORS) or (isinstance(err, OSError) and err.errno in MACHINE_ERRNOS):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
