"""The in-process transport: the round's clients one after the other in this process (CPU or one GPU).

The server passes the base datamodule and the client store as objects (no rebuild, no pickling). A timeout
cannot pre-empt an in-process client: one that took longer than ``timeout_s`` is dropped after the fact.
"""
from __future__ import annotations

import logging
import time
import traceback
from typing import Callable, Sequence

from federation.core.messages import ClientUpdate
from federation.transports import ClientFn, ClientJob, check_update, client_user_error, drop

__all__ = ["SequentialExecutor"]

log = logging.getLogger("federation.transports.inprocess")


class SequentialExecutor:
    """Run clients one after the other in this process (see the module docstring)."""

    in_process = True  # the server may pass live objects (base datamodule, store) in the job kwargs

    def __init__(self, timeout_s: float | None = None) -> None:
        self.timeout_s = None if timeout_s in (None, 0) else float(timeout_s)

    def map(self, fn: ClientFn, jobs: Sequence[ClientJob],
            on_done: Callable[[str, bool], None] | None = None) -> tuple[list[ClientUpdate], dict[str, str]]:
        updates: list[ClientUpdate] = []
        failures: dict[str, str] = {}
        for job in jobs:
            t0 = time.perf_counter()
            try:
                update = fn(job.client_id, **job.kwargs)
            except Exception as exc:  # noqa: BLE001 - a failing client must not stop the round
                fatal = client_user_error(job.client_id, exc)
                if fatal is not None:  # ... unless it is the user's to mend: the same in every round
                    raise fatal from exc
                drop(failures, job.client_id, f"raised {type(exc).__name__}: {exc}")
                log.debug("client %s traceback:\n%s", job.client_id, traceback.format_exc())
                update = None
            if update is not None:
                elapsed = time.perf_counter() - t0
                reason = check_update(job.client_id, update, job)
                if reason is None and self.timeout_s is not None and elapsed > self.timeout_s:
                    reason = f"timed out ({elapsed:.1f} s > {self.timeout_s:.1f} s)"
                if reason is None:
                    updates.append(update)
                else:
                    drop(failures, job.client_id, reason)
            if on_done is not None:
                on_done(job.client_id, job.client_id not in failures)
        return updates, failures

    def shutdown(self) -> None:
        pass
