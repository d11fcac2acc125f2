"""A sweep keeps every job in one folder, whatever its jobs' experiment names (``hydra.sweep.dir``)."""
from __future__ import annotations

from pathlib import Path

from tests.cli import run_in_process

ROOT = Path(__file__).resolve().parents[1]


def test_a_sweep_over_experiments_keeps_one_folder_and_counts_its_failed_job(tmp_path):
    """Found by a review: the sweep folder was named by each job's ``exp_name`` (``logs/<exp>/multiruns/...``), so a
    sweep over experiments (or over ``data.flag`` of ``+exp=medmnist``, whose name follows it) spread its jobs over
    one folder per experiment; the failed-job count read the first folder only and the command exited 0 with a
    failed job. Here ``medmnist_breast`` fails (no MedMNIST file in the empty data folder)."""
    logs = tmp_path / "logs"
    proc = run_in_process("experiments.run", [
        "-m", "+exp=digits_cnn,medmnist_breast", "++trainer.fast_dev_run=true", "logger=csv",
        f"paths.log_dir={logs}", f"paths.data_dir={tmp_path / 'data'}", f"paths.root_dir={tmp_path}"], ROOT)
    assert proc.returncode == 2, proc.stderr[-3000:]
    sweeps = sorted(p for p in logs.glob("*/multiruns/*") if p.is_dir())
    assert len(sweeps) == 1, sweeps
    jobs = sorted(p.name for p in sweeps[0].iterdir() if (p / ".hydra").is_dir())
    assert len(jobs) == 2, jobs
    assert proc.stderr.strip().splitlines()[-1].startswith("error: 1 of 2 sweep jobs failed"), proc.stderr[-2000:]
