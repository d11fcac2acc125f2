"""A run's Hydra overrides as the reports compare them (``.hydra/overrides.yaml``), bounded and read once per run.
Imports nothing from :mod:`experiments.report`, which groups runs into methods by them."""
from __future__ import annotations

import functools
from pathlib import Path

import yaml

from engine.continue_command import canonical_override
from engine.run_files import load_yaml_data, plain_text, run_file_text

#: what a run's ``.hydra/overrides.yaml`` may hold to be read: a review's crafted file of 20,000 overrides held the
#: report for minutes (Hydra parses each one); a run beyond these is left out, listed as unreadable
MAX_OVERRIDES, MAX_OVERRIDE_CHARS = 200, 500


def run_overrides(run: Path, drop: tuple[str, ...] = ("seed", "resume")) -> list[str]:
    """A run's Hydra overrides (``.hydra/overrides.yaml``), minus the seed, ``resume`` and what says nothing
    about the method (paths, logger, Hydra's own, debug: ``engine.run_overrides.NOT_METHOD``; a review: one seed
    re-run with ``logger=csv`` became a method of its own); none when the file is beyond :data:`MAX_OVERRIDES`."""
    from engine.run_overrides import NOT_METHOD

    overrides = _saved_overrides(run) or ()
    keys = [o.split("=")[0].lstrip("+~") for o in overrides]
    return [o for o, k in zip(overrides, keys) if k not in drop and not k.startswith(NOT_METHOD)]


def overrides_beyond_caps(run: Path) -> bool:
    """Whether the run's ``overrides.yaml`` holds over :data:`MAX_OVERRIDES` overrides or one over
    :data:`MAX_OVERRIDE_CHARS` characters."""
    return _saved_overrides(run) is None


def _saved_overrides(run: Path) -> tuple[str, ...] | None:
    """:func:`_parsed_overrides`, cached per run and version of the file: the report asks ~7 times per run."""
    try:
        stat = (run / ".hydra" / "overrides.yaml").stat()
        stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    except OSError:
        stamp = None
    return _parsed_overrides(run, stamp)


@functools.lru_cache(maxsize=4096)
def _parsed_overrides(run: Path, stamp: tuple | None) -> tuple[str, ...] | None:
    """The overrides as Hydra parses them (:func:`canonical_override`), ``()`` when none are readable, ``None``
    beyond the caps (a file too long for them is not parsed at all)."""
    text = run_file_text(run / ".hydra" / "overrides.yaml", run)
    if text is not None and len(text) > MAX_OVERRIDES * (MAX_OVERRIDE_CHARS + 8):
        return None
    try:
        overrides = load_yaml_data(text) if text is not None else None
    except (yaml.YAMLError, ValueError, RecursionError):
        return ()
    if not isinstance(overrides, list):
        return ()
    strings = [o for o in overrides if isinstance(o, str)]
    if len(overrides) > MAX_OVERRIDES or any(len(o) > MAX_OVERRIDE_CHARS for o in strings):
        return None
    return tuple(canonical_override(plain_text(o, 200)) for o in strings)
