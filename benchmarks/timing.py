"""What the benchmarks share: the timed training loop (warm-up steps, then wall time per step and peak
memory) and a case run in a fresh process of its own (so its peak memory is its own)."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def in_fresh_process(script: str, args: Sequence[object], what: str) -> dict:
    """Run ``python script *args`` (the script's own one-case mode) from the repository root with W&B offline;
    returns the JSON object on its last stdout line. A failure exits with one line naming ``what``."""
    proc = subprocess.run([sys.executable, script, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "WANDB_MODE": "offline"})
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed: {(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
