"""Which project code a process runs, as one fingerprint the driver (or server) compares with its workers' (Ray)
or sites' (Flower): each host imports its own checkout (Flower ships no code; Ray does only with
``federation.executor.ship_code``, whose copy then passes this check)."""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

__all__ = ["CODE_PACKAGES", "ROOT", "code_fingerprint"]

#: the project's packages whose code a client runs
CODE_PACKAGES = ("callbacks", "datamodules", "engine", "experiments", "federation", "lightning_modules")
#: the checkout (or install prefix) this process imports the project from
ROOT = Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=4)
def code_fingerprint(root: Path = ROOT) -> str:
    """SHA-256 over the ``.py`` files (relative path and bytes) of :data:`CODE_PACKAGES` under ``root``. A review:
    a Ray node holding another commit (or an edited file) trained with it unseen, and its updates were averaged
    with the others'."""
    digest = hashlib.sha256()
    for path in sorted(p for pkg in CODE_PACKAGES for p in (root / pkg).rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
