"""The timed training loop the benchmarks share: warm-up steps, then wall time per step and peak memory."""
from __future__ import annotations

import resource
import time
from collections.abc import Callable


def time_steps(step: Callable[[int], None], steps: int, warmup: int, device: str) -> tuple[float, float]:
    """Run ``step(i)`` ``warmup + steps`` times; returns (seconds for the timed steps, peak MiB): CUDA max
    allocated on ``cuda`` (reset before), else this process's max RSS (run each case in its own process)."""
    import torch

    cuda = device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        step(i)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return seconds, peak
