"""The federation's user-facing error (shown as one line by ``experiments.run``, exit code 1)."""
from __future__ import annotations


class FederationError(RuntimeError):
    """The federation cannot go on: a partition that does not fit the data, a resume from another
    federation, or fewer than ``federation.min_clients`` clients reporting after a retry."""
