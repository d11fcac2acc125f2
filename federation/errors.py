"""The federation's user-facing error (shown as one line by ``experiments.run``, exit code 2)."""
from __future__ import annotations

from lightning_modules.errors import UserError


class FederationError(UserError, RuntimeError):
    """The federation cannot go on: a bad ``federation.*`` value, a partition that does not fit the data, a
    resume from another federation or a corrupt ``server.pt``, or fewer than ``federation.min_clients``
    clients reporting after a retry."""
