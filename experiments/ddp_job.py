"""DDP inside a Hydra sweep job: the other ranks run this job, not the sweep again.

Lightning starts ranks > 0 of a DDP fit by running ``python -m <__main__> sys.argv[1:]`` again with
``hydra.run.dir=<HydraConfig run.dir>`` (``lightning_fabric``'s ``_hydra_subprocess_cmd``). In a sweep job
(``-m``) that is the whole sweep's command, ``-m`` and every swept value included, and the run-mode folder: rank
1 ran the whole sweep by itself, joining each job's process group by chance and writing into a sweep dir of its
own (found by running ``-m ... trainer=ddp seed=1,2``). :func:`job_command` points both at the job for the
job's duration: its own overrides, its own output dir, so a rank > 0 runs what a single DDP run's does.

A launcher that runs jobs through its own entry point (submitit's ``python -m submitit.core._submit <folder>``)
would have rank 1 run that entry with the job's overrides; for the job's duration ``__main__.__spec__`` names
this entry point, so the rank runs ``python -m experiments.run`` (on SLURM, srun starts the ranks instead).

After the job it also undoes what the DDP fit left in this process for the next job of a sequential sweep:
the process group (Lightning keeps it) and the ``LOCAL_RANK`` / ``MASTER_PORT`` / ... variables it set, from
which the next job's Trainer would conclude that its ranks were started already and wait for the last job's.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from contextlib import contextmanager
from typing import Iterator

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf, read_write

ENTRY = "experiments.run"
#: what Lightning's DDP launcher sets in the launching process (torchrun's names too)
DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "RANK", "GROUP_RANK",
             "LOCAL_WORLD_SIZE")


@contextmanager
def job_command() -> Iterator[None]:
    """In a sweep job: ``sys.argv`` is the job's command and ``hydra.run.dir`` its output dir; afterwards they,
    the distributed variables and the process group are as before the job."""
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN:
        yield
        return
    saved_argv, saved_dir = list(sys.argv), OmegaConf.to_container(hydra.run)["dir"]  # unresolved, as it was
    saved_env = {k: os.environ.get(k) for k in DIST_VARS}
    main = sys.modules["__main__"]
    saved_spec = getattr(main, "__spec__", None)
    sys.argv = [saved_argv[0], *hydra.overrides.task]
    if saved_spec is not None and saved_spec.name != ENTRY:
        main.__spec__ = importlib.util.find_spec(ENTRY)
    with read_write(hydra):
        hydra.run.dir = hydra.runtime.output_dir
    try:
        yield
    finally:
        sys.argv, main.__spec__ = saved_argv, saved_spec
        with read_write(hydra):
            hydra.run.dir = saved_dir
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
