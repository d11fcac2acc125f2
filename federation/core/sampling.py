"""Who trains when, and with which seed: pure functions of (seed, round, client), independent of order.

A resumed run, a Ray worker and a Flower SuperNode all derive the same client sample and client seeds
from these, which is what makes every transport give the same model for the same seed.
"""
from __future__ import annotations

import math
import zlib

import numpy as np

__all__ = ["sample_clients", "client_seed", "round_half_up", "clients_per_round"]


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def clients_per_round(n: int, per_round: int | float | None) -> int:
    """How many of ``n`` clients a round samples: all (None), an int count, or a float fraction in (0, 1]."""
    if per_round is None:
        k = n
    elif isinstance(per_round, float) and per_round <= 1.0:
        k = max(1, int(round_half_up(per_round * n)))
    else:
        k = int(per_round)
    return max(1, min(n, k))


def sample_clients(client_ids: list[str], per_round: int | float | None, seed: int, round: int) -> list[str]:
    """The round's clients: ``per_round`` (an int count, or a float fraction in (0, 1]) drawn without
    replacement by a generator seeded by (seed, round); returned in ``client_ids`` order."""
    n = len(client_ids)
    k = clients_per_round(n, per_round)
    chosen = set(np.random.default_rng([int(seed), 7919, int(round)]).choice(n, size=k, replace=False).tolist())
    return [c for i, c in enumerate(client_ids) if i in chosen]


def client_seed(seed: int, round: int, client_id: str, salt: str = "") -> int:
    """Seed depending only on (seed, round, client, salt): independent of execution order/process."""
    return int(zlib.crc32(f"{int(seed)}|{int(round)}|{client_id}|{salt}".encode()) & 0x7FFFFFFF)
