"""One run at a time in a run folder (experiments/run_lock.py): a second run started in a folder whose run still
runs is refused in one line before Hydra writes there; a run that ended (even killed) blocks nothing."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.cli import run_in_process

ROOT = Path(__file__).resolve().parents[1]
HOLD = "import sys, time; from experiments import run_lock; assert run_lock.hold(sys.argv[1]) is None; " \
       "print('held', flush=True); time.sleep(120)"


def _holding(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_in_a_folder_whose_run_still_runs_is_refused(tmp_path):
    """Found by a review: two plain runs started at once in one ``hydra.run.dir`` had no lock between them (the
    second moved the first's files to ``earlier/`` and both wrote checkpoints, CSV rows and a W&B run there); a
    resume of a running run's folder continued from its half-written state. Both are refused now, and once the
    holder is gone (here: SIGKILL, the lock file left behind) the folder is free again."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    args = ["+exp=digits_cnn", "++trainer.fast_dev_run=true", "logger=csv", f"paths.root_dir={tmp_path}"]
    live = _holding(run)
    try:
        plain = run_in_process("experiments.run", [*args, f"hydra.run.dir={run}"], ROOT)
        assert plain.returncode == 2, plain.stderr[-2000:]
        assert plain.stderr.strip().splitlines()[-1] == (
            f"error: hydra.run.dir={run} is in use by a run still running there (pid {live.pid} on "
            f"{__import__('socket').gethostname()}); wait for it to end, or give this run another folder")
        assert not (run / ".hydra").exists() and (run / "metrics.json").is_file() and not (run / "earlier").exists()
        resumed = run_in_process("experiments.run", [*args, f"resume={run}", f"hydra.run.dir={tmp_path / 'other'}"],
                                 ROOT)
        assert resumed.returncode == 2 and f"error: resume={run} is in use by a run" in resumed.stderr
        assert not (tmp_path / "other").exists()
    finally:
        live.kill()
        live.wait()
    assert (run / ".run.lock").is_file()  # left by the killed holder: it blocks nothing
    again = run_in_process("experiments.run", [*args, f"hydra.run.dir={run}"], ROOT)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (run / "metrics.json").is_file() and list((run / "earlier").glob("*/metrics.json"))


def test_the_lock_is_this_processs_until_let_go(tmp_path, monkeypatch):
    """Taking it twice in one process is no conflict; another process sees the holder until it lets go; a DDP
    rank > 0 (started by Lightning in rank 0's folder) takes none."""
    from experiments import run_lock
    from experiments.run_folder import main_process

    folder = tmp_path / "new" / "run"
    assert run_lock.holder(folder) is None and not folder.exists()  # asking creates nothing
    assert run_lock.hold(folder) is None and run_lock.hold(folder) is None and run_lock.holder(folder) is None
    ask = "import sys; from experiments import run_lock; print(run_lock.holder(sys.argv[1]))"
    seen = subprocess.run([sys.executable, "-c", ask, str(folder)], cwd=ROOT, capture_output=True, text=True)
    assert f"is in use by a run still running there (pid {__import__('os').getpid()} on " in seen.stdout, seen.stderr
    run_lock.release(folder)
    seen = subprocess.run([sys.executable, "-c", ask, str(folder)], cwd=ROOT, capture_output=True, text=True)
    assert seen.stdout.strip() == "None", seen.stderr
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not main_process()


def test_a_linked_lock_file_is_not_written_through(tmp_path):
    """A folder whose ``.run.lock`` is a link (a handed-over folder: ``.run.lock -> ~/.bashrc``) is not opened
    through it: the lock is refused, naming the file, and the link's target stays as it was."""
    from experiments import run_lock

    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".run.lock").symlink_to(target)
    assert run_lock.holder(tmp_path / "run") is None
    assert run_lock.hold(tmp_path / "run").startswith("has a .run.lock that cannot be opened (Too many levels of")
    assert target.read_text() == "keep me"
