"""The command line, two ways: in the test process, or as a real ``python -m`` process.

Each ``python -m experiments.run`` started by a test pays ~10 s of imports (torch, Lightning, torchmetrics)
before it reads its first override; the bad-input tests (~60 cases that each end within a second of reading
the bad value) spent ~9 of every 10 minutes of their CI time there. :func:`run_in_process` runs the same
``__main__`` of the module (``runpy``, the path ``python -m`` takes) with the same argv, cwd and environment,
captures stdout/stderr and the exit status, and then puts back what a run changes in the process: argv, cwd,
the environment (the ``allow_targets`` list lives there), Hydra's global state, the root logger's handlers,
torch's determinism flag and the random generators' states. :func:`run_subprocess` is the real process, kept
for a few cases per file so that what only a whole interpreter shows (an exit-time traceback, a stray write at
shutdown) is still covered.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import runpy
import subprocess
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
#: what every CLI run in the tests gets: offline W&B, one thread, the repository importable
BASE_ENV = {"PYTHONPATH": str(REPO), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


def run_subprocess(module: str, args: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None,
                   timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` as its own process."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **BASE_ENV, **(env or {})})


def run_in_process(module: str, args: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None,
                   timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` in this process: its exit status, stdout and stderr as a
    :class:`subprocess.CompletedProcess` (``timeout`` is accepted for the same signature and not enforced)."""
    from hydra.core.global_hydra import GlobalHydra

    saved_argv, saved_cwd, saved_env = list(sys.argv), os.getcwd(), dict(os.environ)
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_deterministic = torch.are_deterministic_algorithms_enabled()
    saved_rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())  # runs seed_everything
    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    GlobalHydra.instance().clear()
    os.environ.update({**BASE_ENV, **(env or {})})
    os.chdir(cwd)
    sys.argv = [module, *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            # a test module that imported experiments.run already: runpy runs a fresh copy as __main__, as
            # ``python -m`` does, and says so
            warnings.filterwarnings("ignore", message=".*found in sys.modules", category=RuntimeWarning)
            try:
                runpy.run_module(module, run_name="__main__", alter_sys=True)
            except SystemExit as exc:
                code = exc.code
    finally:
        wandb = sys.modules.get("wandb")
        if wandb is not None:  # its service process ends with the run, as at a real process's exit: started in
            with contextlib.suppress(Exception):  # the test's tmp_path, it was reaped as a leftover mid-suite
                wandb.teardown()
            # a teardown that ended this process's own service (one an earlier in-process test may have
            # started) dropped its token: restoring the token would send the next run to a dead socket
            if "WANDB_SERVICE" not in os.environ:
                saved_env.pop("WANDB_SERVICE", None)
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        GlobalHydra.instance().clear()
        for handler in root.handlers:
            if handler not in saved_handlers:
                handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        torch.use_deterministic_algorithms(saved_deterministic)
        random.setstate(saved_rng[0]), np.random.set_state(saved_rng[1]), torch.set_rng_state(saved_rng[2])
    status = 0 if code is None else code if isinstance(code, int) else 1
    if isinstance(code, str):  # sys.exit("message") prints the message and exits 1
        err.write(code + "\n")
    return subprocess.CompletedProcess([module, *map(str, args)], status, out.getvalue(), err.getvalue())


def last_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a run's ``checkpoints/last.ckpt`` (what the resume and requeue tests compare)."""
    return torch.load(Path(run_dir) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
