"""Progress of slow data preparation as log lines (Hydra's ``run.log`` and a non-TTY stdout see them,
where a rich bar writes nothing): about ten lines per loop plus a final one, each with the elapsed time."""
from __future__ import annotations

import logging
import time
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")


def log_progress(items: Iterable[T], total: int, what: str, log: logging.Logger,
                 detail: Callable[[], str] | None = None, lines: int = 10) -> Iterator[T]:
    """Yield ``items``, logging ``<what>: i/total (<detail()>) <s> s`` every ``total/lines`` items and at the end."""
    every = max(1, total // max(1, lines))
    t0 = time.perf_counter()
    i = 0
    for i, item in enumerate(items, 1):
        yield item
        if i % every == 0 or i == total:
            extra = f" ({detail()})" if detail is not None else ""
            log.info("%s: %d/%d%s %.1f s", what, i, total, extra, time.perf_counter() - t0)
