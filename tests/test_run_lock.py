"""One run at a time in a run folder (experiments/run_lock.py): a second run started in a folder whose run still
runs is refused in one line before Hydra writes there; a run that ended (even killed) blocks nothing."""
from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.cli import run_in_process

ROOT = Path(__file__).resolve().parents[1]
HOLD = ("import os, sys, time; from experiments import run_lock; assert run_lock.hold(sys.argv[1]) is None; "
        "child = os.fork() if len(sys.argv) > 2 else -1; child == 0 or print(child, flush=True); time.sleep(120)")
ASK = "import sys; from experiments import run_lock; print(run_lock.holder(sys.argv[1]))"
ARGS = ["+exp=digits_cnn", "++trainer.fast_dev_run=true", "logger=csv"]


def _holding(folder: Path, fork: bool = False) -> tuple[subprocess.Popen, int]:
    """A process holding ``folder``'s lock (``fork``: with a forked child, as a DataLoader worker is); its pid
    and its child's (-1: none)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), *(["fork"] * fork)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def _in_use(key: str, folder: Path, pid: int) -> str:
    return (f"error: {key}={folder} is in use by a run still running there (pid {pid} on {socket.gethostname()}); "
            f"wait for it to end, or give this run another folder")


def test_a_second_run_in_a_folder_whose_run_still_runs_is_refused(tmp_path):
    """Found by a review: two plain runs started at once in one ``hydra.run.dir`` had no lock between them (the
    second moved the first's files to ``earlier/`` and both wrote checkpoints, CSV rows and a W&B run there); a
    resume of a running run's folder continued from its half-written state. Both are refused now (the review of
    that fix: also a sweep's job resuming it, and a resume whose ``hydra.run.dir`` is the live run's), and once the
    holder is gone (here: SIGKILL, the lock file left behind) the folder is free again."""
    run, other = tmp_path / "run", tmp_path / "other"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    args = [*ARGS, f"paths.root_dir={tmp_path}"]
    live, _ = _holding(run)
    try:
        plain = run_in_process("experiments.run", [*args, f"hydra.run.dir={run}"], ROOT)
        assert plain.returncode == 2, plain.stderr[-2000:]
        assert plain.stderr.strip().splitlines()[-1] == _in_use("hydra.run.dir", run, live.pid)
        assert not (run / ".hydra").exists() and (run / "metrics.json").is_file() and not (run / "earlier").exists()
        resumed = run_in_process("experiments.run", [*args, f"resume={run}", f"hydra.run.dir={other}"], ROOT)
        assert resumed.returncode == 2 and _in_use("resume", run, live.pid) in resumed.stderr, resumed.stderr[-2000:]
        assert not other.exists()
        swept = run_in_process("experiments.run", ["-m", *args, f"resume={run}", f"hydra.sweep.dir={other}"], ROOT)
        assert swept.returncode == 2 and "1 of 1 sweep jobs failed" in swept.stderr, swept.stderr[-2000:]
        assert _in_use("resume", run, live.pid)[len("error: "):] in next(other.glob("0_*/failed.json")).read_text()
        assert not (run / "failed.json").exists()
    finally:
        live.kill()
        live.wait()
    assert (run / ".run.lock").is_file()  # left by the killed holder: it blocks nothing
    again = run_in_process("experiments.run", [*args, f"hydra.run.dir={run}"], ROOT)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (run / "metrics.json").is_file() and list((run / "earlier").glob("*/metrics.json"))


def test_a_resume_into_a_live_runs_hydra_folder_is_refused(tmp_path):
    """``resume=<a finished run> hydra.run.dir=<a live run's folder>``: Hydra would write its ``.hydra/`` and
    ``run.log`` into the live run's folder (a review)."""
    done, live_dir = tmp_path / "done", tmp_path / "live"
    args = [*ARGS, f"paths.root_dir={tmp_path}"]
    assert run_in_process("experiments.run", [*args, f"hydra.run.dir={done}"], ROOT).returncode == 0
    (done / "checkpoints").mkdir(exist_ok=True)
    live, _ = _holding(live_dir)
    try:
        proc = run_in_process("experiments.run", [*args, f"resume={done}", f"hydra.run.dir={live_dir}"], ROOT)
        assert proc.returncode == 2 and _in_use("hydra.run.dir", live_dir, live.pid) in proc.stderr, proc.stderr
        assert sorted(p.name for p in live_dir.iterdir()) == [".run.lock"]
    finally:
        live.kill()
        live.wait()


def test_the_lock_is_this_processs_until_let_go_and_not_its_forked_childrens(tmp_path, monkeypatch):
    """Taking it twice in one process is no conflict; another process sees the holder until it lets go; a forked
    child (a DataLoader worker) does not keep it once its parent is killed (a review: an ``flock`` did, for the
    seconds the workers outlived it); a DDP rank > 0 (started by Lightning in rank 0's folder) takes none."""
    from experiments import run_lock
    from experiments.run_folder import main_process

    folder = tmp_path / "new" / "run"
    assert run_lock.holder(folder) is None and not folder.exists()  # asking creates nothing
    assert run_lock.hold(folder) is None and run_lock.hold(folder) is None and run_lock.holder(folder) is None
    seen = subprocess.run([sys.executable, "-c", ASK, str(folder)], cwd=ROOT, capture_output=True, text=True)
    assert f"is in use by a run still running there (pid {os.getpid()} on " in seen.stdout, seen.stderr
    run_lock.release_all()
    seen = subprocess.run([sys.executable, "-c", ASK, str(folder)], cwd=ROOT, capture_output=True, text=True)
    assert seen.stdout.strip() == "None", seen.stderr
    parent, child = _holding(folder, fork=True)
    try:
        assert "is in use" in run_lock.holder(folder)
        parent.kill()
        parent.wait()
        os.kill(child, 0)  # the child lives on, its copy of the descriptor open
        assert run_lock.holder(folder) is None
    finally:
        os.kill(child, signal.SIGKILL)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not main_process()


def test_a_lock_file_that_is_a_link_or_a_fifo_is_refused_and_no_locks_is_a_warning(tmp_path, monkeypatch, capsys):
    """A handed-over folder's ``.run.lock`` as a link (``-> ~/.bashrc``) is not written through, and as a FIFO it
    does not hang the run (a review: the open blocked for ever): one line each. A file system without locks
    (ENOLCK) lets the run go on, saying so once."""
    import fcntl

    from experiments import run_lock

    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".run.lock").symlink_to(target)
    assert run_lock.holder(tmp_path / "a").startswith("has a .run.lock that cannot be opened (Too many levels of")
    assert run_lock.hold(tmp_path / "a").startswith("has a .run.lock that cannot be opened (Too many levels of")
    assert target.read_text() == "keep me"
    (tmp_path / "b").mkdir()
    os.mkfifo(tmp_path / "b" / ".run.lock")
    assert run_lock.holder(tmp_path / "b") == ("has a .run.lock that is not a plain file; remove it, or give this "
                                               "run another folder")

    def no_locks(fd, how):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
    monkeypatch.setattr(fcntl, "lockf", no_locks)
    assert run_lock.hold(tmp_path / "c") is None and run_lock.holder(tmp_path / "c") is None
    run_lock.release_all()
    assert capsys.readouterr().err.count("has no file locks (No locks available)") == 1


def test_a_sweep_over_a_live_jobs_folder_is_refused_and_a_job_refused_late_counts(tmp_path, monkeypatch):
    """The review of the lock: a sweep's jobs held nothing, so a single run started in a live job's folder moved its
    files aside (the job then crashed); the next reviews: the same sweep launched again rewrote each live job's
    ``.hydra/`` (Hydra writes it before the job can refuse), and a job refused in another process (submitit) was
    lost, the sweep exiting 0. Now a job holds its folder; a sweep whose folder holds a live job is refused before
    any job starts; a job that finds its folder taken after that (a race) is counted from a file in the sweep
    folder, whichever process ran it."""
    from experiments import sweep_jobs

    sweep, job, single = tmp_path / "sweep", tmp_path / "sweep" / "job", tmp_path / "sweep" / "runs" / "x"
    args = ["-m", *ARGS, f"paths.root_dir={tmp_path}", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=job"]
    for folder, mode in ((job, "MULTIRUN"), (single, "RUN")):  # as Hydra writes them
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  mode: {mode}\n")
        os.utime(folder / ".hydra", (1e9, 1e9))  # started long before these sweeps (else counted as their job)
    other, _ = _holding(single)
    live, _ = _holding(job)
    try:
        assert sweep_jobs.live_jobs(tmp_path / "elsewhere") is None
        assert sweep_jobs.live_jobs(single.parent) is None  # a single run's live folder is no job of a sweep
        early = run_in_process("experiments.run", args, ROOT)
        assert early.returncode == 2, early.stderr[-2000:]
        assert early.stderr.strip().splitlines()[-1] == (
            f"error: job folder {job} is in use by a run still running there (pid {live.pid} on "
            f"{socket.gethostname()}); wait for it to end, or give this run another folder")
        assert sorted(p.name for p in job.iterdir()) == [".hydra", ".run.lock"]  # nothing written
        assert (job / ".hydra" / "hydra.yaml").read_text() == "hydra:\n  mode: MULTIRUN\n"  # not rewritten
        monkeypatch.setattr(sweep_jobs, "live_jobs", lambda folder: None)  # the job's folder is taken later
        late = run_in_process("experiments.run", args, ROOT)
    finally:
        for proc in (live, other):
            proc.kill()
            proc.wait()
    assert late.returncode == 2, late.stderr[-2000:]
    assert f"error (job job): hydra.runtime.output_dir={job} is in use by a run still running there" in late.stderr
    assert late.stderr.strip().splitlines()[-1].startswith("error: 1 of 1 sweep jobs failed"), late.stderr[-2000:]
    assert late.stderr.strip().endswith(": job")
    assert not (job / "failed.json").exists() and not (job / "metrics.json").exists()


def test_a_start_check_that_raises_stops_the_run_instead_of_skipping_the_rest(tmp_path, monkeypatch):
    """Hydra turns an exception raised in a callback into a warning and starts the run anyway: a start check that
    raised (here the checkpoint-clash check, as ``~callbacks`` once made it) skipped every later check, the run
    lock among them, and the run trained unlocked. Now it is one line and exit code 2; so for a sweep's checks."""
    from experiments import hydra_checks, sweep_jobs

    def broken(*args, **kwargs):
        raise OSError("cannot read /somewhere/config.yaml")

    monkeypatch.setattr(hydra_checks, "named_file_clash", broken)
    run = tmp_path / "run"
    proc = run_in_process("experiments.run", [*ARGS, f"paths.root_dir={tmp_path}", f"hydra.run.dir={run}"], ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: the checks before the run starts failed (OSError: cannot read /somewhere/config.yaml); the run did "
        "not start")
    assert not (run / ".hydra").exists() and not (run / "metrics.json").exists()
    monkeypatch.setattr(sweep_jobs, "live_jobs", broken)
    sweep = tmp_path / "sweep"
    proc = run_in_process("experiments.run", ["-m", *ARGS, f"paths.root_dir={tmp_path}", f"hydra.sweep.dir={sweep}"],
                          ROOT)
    assert proc.returncode == 2 and "the sweep did not start" in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert not list(sweep.glob("*/.hydra"))
