"""A SLURM job stopped before its end (preemption, the time limit) is requeued and continues its run.

SLURM sends the job ``USR2`` (``--signal``, which ``hydra/launcher=slurm`` sets ``signal_delay_s`` before the
limit, and at a preemption); submitit catches it, checkpoints Hydra's launcher call and requeues the job, which
runs the same overrides into the same run dir. The run then continues from ``last.ckpt``: by ``resume=true``
on the submitted command, and by itself when ``SLURM_RESTART_COUNT`` says the job is a requeue
(docs/experiments.md, "Sweeps"). Submitit's local executor requeues as SLURM does, so the first test runs the
whole path here; the second shows the ``SLURM_RESTART_COUNT`` rule alone. With no SLURM here, the last test
submits through ``hydra/launcher=slurm`` to a stand-in ``sbatch`` that keeps the job script and refuses it."""
from __future__ import annotations

import contextlib
import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.cli import BASE_ENV, last_weights, run_in_process, run_subprocess

TINY = ["+exp=lits_dnet", "model.width=4", "data.image_size=32", "data.batch_size=8", "data.synthetic.n_cases=6",
        "data.synthetic.shape=[48,48,10]", "logger=csv", "test=false", "~callbacks.rich_progress_bar", "seed=1"]


def _saved_epoch(sweep: Path) -> int:
    """The epoch of the sweep job's ``last.ckpt``; -1 while there is none (or it is being written)."""
    for ckpt in sweep.glob("0_*/checkpoints/last.ckpt"):
        try:
            return int(torch.load(ckpt, weights_only=True)["epoch"])
        except Exception:  # noqa: BLE001 - read while Lightning replaces it
            return -1
    return -1


def _job_pids(sweep: Path) -> list[int]:
    """The submitit job processes of this sweep (their command line names its ``.submitit`` folder)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if "submitit.core._submit" in cmd and str(sweep) in cmd:
            pids.append(int(proc.name))
    return pids


def _children(pids: list[int]) -> list[int]:
    """The processes whose parent is one of ``pids`` (a job's loader workers)."""
    kids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid in pids:
            kids.append(int(proc.name))
    return kids


def _epochs_logged(run_dir: Path) -> list[str]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as fh:
        return [r["epoch"] for r in csv.DictReader(fh) if r.get("val/dice")]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the job process through /proc")
def test_preempted_sweep_job_is_requeued_and_ends_as_the_uninterrupted_run(tmp_path):
    args = [*TINY, "trainer.max_epochs=12", "resume=true", "data.num_workers=2", f"paths.data_dir={tmp_path / 'data'}"]
    sweep = tmp_path / "sweep"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "experiments.run", "-m", "hydra/launcher=submitit_local", *args,
         f"hydra.sweep.dir={sweep}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **BASE_ENV}, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while _saved_epoch(sweep) < 1 and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        jobs = _job_pids(sweep)
        assert jobs and _saved_epoch(sweep) < 11, "the job ended (or never saved) before it could be stopped"
        for pid in {*jobs, *_children(jobs)}:  # what SLURM's --signal sends, to every process of the task
            with contextlib.suppress(ProcessLookupError):  # a child that ended in between
                os.kill(pid, signal.SIGUSR2)
        _, err = launcher.communicate(timeout=600)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    assert launcher.returncode == 0, err[-3000:]
    job_logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))
    assert "Requeued job" in job_logs, job_logs[-3000:]
    caught = set(re.findall(r"submitit WARNING \(([^)]*)\) - Caught signal SIGUSR2", job_logs))
    assert len(caught) == 1, job_logs[-3000:]  # by the job's main process only: its loader workers leave it alone
    (run,) = sweep.glob("0_*")
    assert "resume: " + str(run / "checkpoints" / "last.ckpt") in (run / "run.log").read_text()

    whole = tmp_path / "whole"
    done = run_subprocess("experiments.run", [*args, f"hydra.run.dir={whole}"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = last_weights(run), last_weights(whole)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _epochs_logged(run) == [str(e) for e in range(12)]  # the epochs after last.ckpt are not logged twice


def test_a_slurm_requeue_continues_the_run_without_resume(tmp_path):
    """``SLURM_RESTART_COUNT`` > 0: the same command into the same run dir continues it (Lightning restores its
    own checkpoint on a requeue too); outside a requeue the run starts afresh, as before."""
    run_dir, fresh = tmp_path / "run", tmp_path / "fresh"
    args = [*TINY, "trainer.max_epochs=2", f"paths.data_dir={tmp_path / 'data'}"]
    stop = "+callbacks.stop_after={_target_: tests.test_exact_resume.StopAfter, epoch: 0}"  # a preempted job
    assert run_in_process("experiments.run", [*args, stop, f"hydra.run.dir={run_dir}"], tmp_path).returncode == 0
    (run_dir / "metrics.json").unlink()  # a preempted job writes none (a requeued finished job is left as it is)
    done = run_in_process("experiments.run", [*args, f"hydra.run.dir={run_dir}"], tmp_path,
                          env={"SLURM_RESTART_COUNT": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    text = (run_dir / "run.log").read_text()
    assert "SLURM requeue 1 of this job: resume=true" in text
    assert "resume: " + str(run_dir / "checkpoints" / "last.ckpt") in text
    assert _epochs_logged(run_dir) == ["0", "1"]
    assert run_in_process("experiments.run", [*args, f"hydra.run.dir={fresh}"], tmp_path).returncode == 0
    assert "SLURM requeue" not in (fresh / "run.log").read_text()


def _stand_in(bin_dir: Path, name: str, body: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
    (bin_dir / name).chmod(0o755)


def test_slurm_launcher_submits_the_job_script_requeue_needs_or_says_why_not(tmp_path):
    """``hydra/launcher=slurm`` as configured reaches ``sbatch`` with the signal that requeues a job
    (``USR2`` 120 s before the limit), the array of the sweep's jobs and the resources of slurm.yaml; a refused
    submission (or no ``srun`` on this machine) is one line naming the cause and exit 2, not a traceback."""
    bin_dir, script = tmp_path / "bin", tmp_path / "job.sh"
    _stand_in(bin_dir, "srun", "exit 1")
    _stand_in(bin_dir, "sbatch", f'cp "$1" {script}\necho "sbatch: error: invalid partition specified: gpu" >&2\nexit 1')
    args = ["-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", *TINY, "seed=1,2",
            f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    path = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = run_subprocess("experiments.run", args, tmp_path, env=path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert [ln for ln in done.stderr.splitlines() if ln.startswith("error")] == [
        "error: hydra/launcher could not submit the jobs: FailedJobError: sbatch: error: invalid partition specified: "
        f"gpu (nothing ran; the sweep folder {tmp_path / 'sweep'} this command made is removed)"]
    assert not (tmp_path / "sweep").exists()  # a review: a refused sweep left a folder holding multirun.yaml only
    text = script.read_text()
    for line in ("#SBATCH --signal=USR2@120", "#SBATCH --array=0-1%2", "#SBATCH --partition=gpu",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --time=240"):
        assert line in text.splitlines(), (line, text)
    assert "-m submitit.core._submit" in text
    (bin_dir / "srun").unlink()  # not on a cluster at all
    done = run_subprocess("experiments.run", args, tmp_path, env=path)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "srun" in done.stderr.splitlines()[-1], done.stderr
    (tmp_path / "sweep" / "0").mkdir(parents=True)  # a sweep folder that was there before: kept
    done = run_subprocess("experiments.run", args, tmp_path, env=path)
    assert done.returncode == 2 and (tmp_path / "sweep" / "0").is_dir() and "removed" not in done.stderr


class _SignalSeen(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN,
                             signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN])


def test_loader_workers_leave_the_requeue_signals_to_the_main_process():
    """A worker forked from a submitit (or Lightning-on-SLURM) job inherits its requeue handler; SLURM signals
    the worker too, and every worker then checkpointed and requeued the job (the test above, before the fix)."""
    from datamodules.loaders import SplitLoadersMixin

    class Data(SplitLoadersMixin):
        batch_size, num_workers, seed, train_dataset = 2, 1, 0, _SignalSeen()

    before = signal.signal(signal.SIGUSR2, lambda *_: None)  # as submitit's handler in the job process
    try:
        (batch,) = list(Data().train_dataloader())
    finally:
        signal.signal(signal.SIGUSR2, before)
    assert batch.all(), batch
