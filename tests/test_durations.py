"""tests/durations.py: the files are queued longest first, and the table is read back from a JUnit report."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.durations import REPO, UNKNOWN_S, from_junit, load, order, write

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
<testcase classname="tests.test_flower" name="test_a" time="100.5"/>
<testcase classname="tests.test_flower" name="test_b" time="20.0"/>
<testcase classname="tests.test_nets" name="test_c" time="1.25"/>
<testcase classname="" name="collect_error" time="0"/>
</testsuite></testsuites>
"""


def test_longest_file_first_unknown_in_between_ties_in_first_seen_order():
    seconds = {"tests/a.py": 5.0, "tests/b.py": 300.0, "tests/c.py": 5.0}
    files = ["tests/a.py", "tests/a.py", "tests/new.py", "tests/c.py", "tests/b.py"]
    assert order(files, seconds) == {"tests/b.py": 0, "tests/new.py": 1, "tests/a.py": 2, "tests/c.py": 3}
    assert seconds["tests/a.py"] < UNKNOWN_S < seconds["tests/b.py"]


def test_table_from_a_junit_report_round_trips(tmp_path):
    report = tmp_path / "run.xml"
    report.write_text(JUNIT)
    table = from_junit(report)
    assert table == {"tests/test_flower.py": 120.5, "tests/test_nets.py": 1.2}
    assert list(table) == ["tests/test_flower.py", "tests/test_nets.py"]  # longest first
    write(table, tmp_path / "durations.json")
    assert load(tmp_path / "durations.json") == table
    assert not list(tmp_path.glob(".durations.*"))  # the temporary file was renamed


def test_committed_table_names_existing_test_files():
    table = load()
    assert table, "tests/durations.json is missing"
    assert all((REPO / f).is_file() and f.startswith("tests/test_") for f in table)
    assert all(isinstance(s, (int, float)) and s >= 0 for s in table.values())


def test_bad_report_is_one_line_exit_nonzero(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<testsuites><testsuite/></testsuites>")
    proc = subprocess.run([sys.executable, "-m", "tests.durations", str(bad)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"tests.durations: {bad}: no <testcase> with a classname"]
    assert json.loads((REPO / "tests" / "durations.json").read_text())  # the committed table is untouched


def test_a_worker_past_its_memory_limit_writes_its_threads_stacks(tmp_path, monkeypatch):
    """The diagnostic for the unexplained OOM kills of loaded CI workers (tests/conftest.py: _memory_watch): a
    worker past its limit writes the running test and every thread's stack, once."""
    import time

    from tests.conftest import _memory_watch

    monkeypatch.setenv("FEDMED_TEST_MEMORY_DIR", str(tmp_path))
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "probe")
    _memory_watch(1, every_s=0.05)  # 1 MB: already past it
    dump = tmp_path / ".pytest-memory-probe.txt"
    deadline = time.monotonic() + 10
    while not (dump.is_file() and "Thread" in dump.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    text = dump.read_text()
    assert text.startswith("worker probe: ") and "limit 1 MB" in text and "test_durations.py" in text, text[:500]
