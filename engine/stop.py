"""SIGTERM (a scheduler's preemption, ``timeout``, ``docker stop``) stops a run at a safe point, with the line
that continues it (``experiments.run`` prints it on Lightning's ``SIGTERMException``).

Where the signal lands decides how: outside Lightning's fit the handler raises at once; inside it, Lightning's
own handler is the one installed and calls this one too, which then only records the request, and Lightning
raises after the batch (raising mid-batch left a federation hanging at exit once in CI); a federation also
checks the request after each client and each round (:func:`check`), for a signal that came as a client's fit
was ending.
"""
from __future__ import annotations

import signal
import threading
from typing import Any

from pytorch_lightning.utilities.exceptions import SIGTERMException

__all__ = ["install", "restore", "check", "requested"]

_requested = {"sigterm": False}


def _handler(signum: int, frame: Any) -> None:
    _requested["sigterm"] = True
    if signal.getsignal(signal.SIGTERM) is _handler:  # not inside Lightning's fit (its handler calls us)
        raise SIGTERMException()


def install() -> Any:
    """Install the handler for this run; returns the one to put back with :func:`restore` (``None`` off the
    main thread, where Python sets no handler)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    _requested["sigterm"] = False
    return signal.signal(signal.SIGTERM, _handler)


def restore(previous: Any) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
    _requested["sigterm"] = False


def requested() -> bool:
    """Whether a SIGTERM came during this run (an error raised while it was being acted on is the interruption:
    a SIGTERM raised inside OmegaConf once surfaced as a client's ConfigKeyError, and the run ended as a user
    error, exit 2)."""
    return _requested["sigterm"]


def check() -> None:
    """Raise ``SIGTERMException`` if a SIGTERM came and nothing has acted on it yet (a safe point)."""
    if _requested["sigterm"]:
        raise SIGTERMException()
