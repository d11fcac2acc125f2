"""DDP inside a sweep (``-m ... trainer=ddp``), two CPU ranks (gloo) per job through the real command line
(:mod:`experiments.ddp_job`). Found by running it: Lightning started rank 1 of the first job with the whole
sweep's command, so that rank ran the sweep by itself, and with the rank's command fixed the second job waited
for the first job's rank (Lightning's variables and process group were still set in the sweep's process); under
submitit's launcher rank 1 ran submitit's entry point with the job's overrides and died."""
from __future__ import annotations

import pytest
import torch

from tests.cli import last_weights, run_subprocess

DDP = ["+exp=lits_dnet", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32",
       "trainer.sync_batchnorm=false", "trainer.max_epochs=1", "model.width=4", "data.image_size=32",
       "data.synthetic.n_cases=6", "data.synthetic.shape=[32,32,8]", "logger=csv", "~callbacks.rich_progress_bar",
       "test=false"]


@pytest.fixture(scope="module")
def single_run(module_tmp):
    """The single DDP run (seed 2) both launchers' second job must end as, trained once for the module; and the
    data folder they share (written once, under its lock)."""
    root = module_tmp("ddp_single")
    data = f"paths.data_dir={root / 'data'}"
    done = run_subprocess("experiments.run", [*DDP, data, "seed=2", f"hydra.run.dir={root / 'single'}"], root)
    assert done.returncode == 0, done.stderr[-3000:]
    return last_weights(root / "single"), data


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "submitit_local"])
def test_each_sweep_job_trains_on_its_own_ranks_as_a_single_run_does(tmp_path, launcher, single_run):
    """``basic``: the jobs one after the other in the sweep's process; ``submitit_local``: each job in a process
    of submitit's own entry point (``python -m submitit.core._submit``), which rank 1 used to be started with."""
    sweep = tmp_path / "sweep"
    single, data = single_run
    done = run_subprocess("experiments.run", ["-m", f"hydra/launcher={launcher}", *DDP, data, "seed=1,2",
                                              f"hydra.sweep.dir={sweep}"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (done.stdout + done.stderr).count("#1 : ") == 1  # rank 1 no longer runs the sweep again
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0_dnet_s1", "1_dnet_s2"], jobs
    assert all((sweep / j / "train_ddp_process_1.log").is_file() for j in jobs)  # each job's rank 1 wrote there
    a = last_weights(sweep / "1_dnet_s2")  # the second job, after a DDP job in the same process
    assert a.keys() == single.keys() and all(torch.equal(a[k], single[k]) for k in a)
