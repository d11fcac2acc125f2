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

_requested = {"sigterm": False, "sigint": False}
#: the SIGINT handler to hand Ctrl-C on to (Python's default raises KeyboardInterrupt)
_previous_int: list[Any] = [signal.default_int_handler]


def _int_handler(signum: int, frame: Any) -> None:
    """Ctrl-C as before (the handler that was there, Python's KeyboardInterrupt by default), recorded first: a
    KeyboardInterrupt raised inside OmegaConf between clients surfaced as a client's ConfigKeyError, and the run
    ended as a user error, exit 2 (CI, once), as a SIGTERM had."""
    _requested["sigint"] = True
    previous = _previous_int[0]
    if callable(previous):
        previous(signum, frame)
    else:  # SIG_DFL / SIG_IGN as the previous: Python's own behaviour for Ctrl-C
        raise KeyboardInterrupt


def _handler(signum: int, frame: Any) -> None:
    _requested["sigterm"] = True
    if signal.getsignal(signal.SIGTERM) is _handler:  # not inside Lightning's fit (its handler calls us)
        raise SIGTERMException()


def install() -> Any:
    """Install the handler for this run; returns the one to put back with :func:`restore` (``None`` off the
    main thread, where Python sets no handler)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    _requested.update(sigterm=False, sigint=False)
    current = signal.getsignal(signal.SIGINT)
    if current is not signal.SIG_IGN and current is not _int_handler:  # a Ctrl-C the process ignores stays so
        _previous_int[0] = current
        signal.signal(signal.SIGINT, _int_handler)
    return signal.signal(signal.SIGTERM, _handler), current


def restore(previous: Any) -> None:
    if previous is not None:
        term, interrupt = previous
        signal.signal(signal.SIGTERM, term)
        if signal.getsignal(signal.SIGINT) is _int_handler and interrupt is not None:
            signal.signal(signal.SIGINT, interrupt)
    _requested.update(sigterm=False, sigint=False)


def requested(signame: str = "sigterm") -> bool:
    """Whether a SIGTERM (``signame="sigint"``: a Ctrl-C) came during this run (an error raised while it was being
    acted on is the interruption: a SIGTERM raised inside OmegaConf once surfaced as a client's ConfigKeyError,
    and the run ended as a user error, exit 2; a SIGINT did the same in CI later)."""
    return _requested[signame]


def check() -> None:
    """Raise ``SIGTERMException`` if a SIGTERM came and nothing has acted on it yet (a safe point); and
    ``KeyboardInterrupt`` for a Ctrl-C whose own one was swallowed (CI, once: it landed in a profiler's
    ``__del__``, where Python ignores exceptions, and the federation ran on to exit 0)."""
    if _requested["sigterm"]:
        raise SIGTERMException()
    if _requested["sigint"]:
        raise KeyboardInterrupt
