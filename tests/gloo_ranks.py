"""Two CPU ranks (gloo on 127.0.0.1) for tests of code that syncs across DDP ranks: :func:`spawn_two` runs
``fn(rank, *args)`` in each, between ``init_process_group`` and ``destroy_process_group``.

A rank whose ``fn`` returned leaves with ``os._exit(0)`` after the teardown. Measured here (torch 2.14.1, 2-core
CI machine): in 4 of about 195 launches of two ranks that ran one collective and tore down, rank 0 (the host of
the rendezvous TCPStore) or rank 1 died of SIGABRT ("terminate called without an active exception") in interpreter
finalisation, after ``destroy_process_group`` had returned (faulthandler: no Python frame) — a teardown race in
PyTorch's C++ objects, after the rank's result files were closed, and outside what these tests check (CI of
2413de4 failed on it; 0 of 52 launches with a barrier before the teardown and ``os._exit(0)`` after it). A rank
whose ``fn`` raised still fails the test: the exception reaches ``mp.spawn``."""
from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        # no barrier after fn (a review): a rank waiting in one failed with a gloo read error when its peer's fn
        # raised, and mp.spawn often reported that error instead of the real one
        fn(rank, *args)
    finally:
        dist.destroy_process_group()
    os._exit(0)  # reached only when fn returned (see the module docstring)


def spawn_two(fn: Callable[..., None], *args: Any, limit_s: float = 120.0) -> None:
    """``fn(rank, *args)`` on two gloo ranks; a hang fails the test after ``limit_s`` instead of stalling the suite."""
    ctx = mp.spawn(_rank, args=(free_port(), fn, args), nprocs=2, join=False)
    try:
        deadline = time.monotonic() + limit_s
        while not ctx.join(timeout=max(1.0, deadline - time.monotonic())):  # join returns False while one runs
            if time.monotonic() > deadline:
                pytest.fail(f"a rank still runs after {limit_s:.0f} s (a collective that never matched?)")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
