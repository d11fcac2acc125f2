"""Progress of slow data preparation as log lines (Hydra's ``run.log`` and a non-TTY stdout see them,
where a rich bar writes nothing): about ten lines per slow loop plus a final one, each with the elapsed time;
a loop done within ``quiet_s`` (volumes read back from the cache) logs its final line only."""
from __future__ import annotations

import logging
import time
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")


def log_progress(items: Iterable[T], total: int, what: str, log: logging.Logger,
                 detail: Callable[[], str] | None = None, lines: int = 10, quiet_s: float = 2.0) -> Iterator[T]:
    """Yield ``items``, logging ``<what>: i/total (<detail()>) <s> s`` every ``total/lines`` items once
    ``quiet_s`` seconds have passed, and always at the end."""
    every = max(1, total // max(1, lines))
    t0 = time.perf_counter()
    i = 0
    for i, item in enumerate(items, 1):
        yield item
        elapsed = time.perf_counter() - t0
        if i == total or (i % every == 0 and elapsed >= quiet_s):
            extra = f" ({detail()})" if detail is not None else ""
            log.info("%s: %d/%d%s %.1f s", what, i, total, extra, elapsed)
