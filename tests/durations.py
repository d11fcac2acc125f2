"""Longest test files first, so that pytest-xdist's two workers finish together.

``make test`` runs ``--dist loadfile``: a worker takes a whole file at a time, the next one whenever it is almost
out of work. xdist queues the files by their number of tests, which put single-test files of two minutes (the
claims tests) last, where one worker ran them while the other sat idle. :func:`order` queues the files by their
measured seconds instead, longest first (the classic longest-processing-time rule), with the few-second files
filling the end; ``make test`` passes ``--no-loadscope-reorder`` so xdist keeps that order.

The seconds live in ``tests/durations.json`` (one worker's summed setup + call + teardown per file). Refresh it
from a JUnit report of a whole run: ``pytest ... --junitxml=run.xml`` then ``python -m tests.durations run.xml``.
A file it does not list yet sorts as :data:`UNKNOWN_S`.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TABLE = Path(__file__).with_name("durations.json")
#: seconds assumed for a test file the table does not list yet
UNKNOWN_S = 20.0


def load(path: Path = TABLE) -> dict[str, float]:
    """``{"tests/test_x.py": seconds}``; empty when the table is absent."""
    return json.loads(path.read_text()) if path.is_file() else {}


def order(files: Iterable[str], seconds: Mapping[str, float]) -> dict[str, int]:
    """Rank of each file, longest first; ties keep their first-seen order."""
    unique = list(dict.fromkeys(files))
    ranked = sorted(unique, key=lambda f: -seconds.get(f, UNKNOWN_S))
    return {f: rank for rank, f in enumerate(ranked)}


def file_of(classname: str) -> str | None:
    """``tests.test_x`` or ``tests.test_x.TestClass`` -> ``tests/test_x.py`` (the shortest prefix that is a file)."""
    parts = classname.split(".")
    for end in range(1, len(parts) + 1):
        candidate = "/".join(parts[:end]) + ".py"
        if (REPO / candidate).is_file():
            return candidate
    return None


def from_junit(report: Path) -> dict[str, float]:
    """Summed test time (setup + call + teardown) per file from a JUnit XML report."""
    totals: dict[str, float] = defaultdict(float)
    for case in ET.parse(report).getroot().iter("testcase"):
        path = file_of(case.get("classname", ""))
        if path:
            totals[path] += float(case.get("time", 0) or 0)
    if not totals:
        raise ValueError(f"{report}: no <testcase> with a classname")
    return {f: round(s, 1) for f, s in sorted(totals.items(), key=lambda kv: -kv[1])}


def write(table: Mapping[str, float], path: Path = TABLE) -> None:
    """Write the table through a temporary file and a rename, so a reader never sees half of it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".durations.", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(dict(table), f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.durations <junit.xml>")
    try:
        write(from_junit(Path(sys.argv[1])))
    except (OSError, ET.ParseError, ValueError) as exc:
        sys.exit(f"tests.durations: {exc}")
    print(f"wrote {TABLE}")
