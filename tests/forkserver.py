"""Real ``python -m`` processes without paying the third-party imports each time: a zygote.

Every ``python -m experiments.run`` spends ~12 s of one CPU importing torch, Lightning, torchmetrics,
segmentation-models-pytorch, albumentations and MONAI before it reads its first override, which was ~190 s of
the ``fast_dev_run`` smoke tests' ~570 s. :class:`Zygote` starts one interpreter that imports those
third-party packages (:data:`PRELOAD`, each of which every experiment imports anyway) and nothing of this
repository, then forks one child per run. Each child is its own process: it changes to the run's cwd, takes
the run's environment and argv, writes to its own stdout/stderr files and runs the module as ``__main__``
through ``runpy`` (the path ``python -m`` takes), importing every module of this repository afresh; it exits
through the interpreter's normal shutdown (atexit handlers run), with the status ``python -m`` would give.
No run sees another run's state: each is a fork of the same untouched zygote.

What it does not show that a cold ``python -m`` would: a failure while importing one of :data:`PRELOAD` under
the run's own environment (the zygote imports them with ``OMP_NUM_THREADS=1`` and the test's environment).
Protocol (one JSON object per line): request ``{module, args, cwd, env, stdout, stderr}`` on the zygote's
stdin; replies ``{"pid": ...}`` at the fork and ``{"returncode": ...}`` when the child ended.
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

#: third-party packages every experiment imports; never a module of this repository
PRELOAD = ("torch", "pytorch_lightning", "torchmetrics", "hydra", "omegaconf", "segmentation_models_pytorch",
           "albumentations", "nibabel", "rich", "matplotlib.pyplot", "monai.metrics")


class Zygote:
    """A preloaded interpreter (``preload``: module names) that forks one real process per :meth:`run`;
    ``close()`` ends it."""

    def __init__(self, env: Mapping[str, str], preload: Sequence[str] = PRELOAD) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.forkserver", ",".join(preload)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=dict(env),
                                     cwd=Path(__file__).parents[1], bufsize=0)
        self._pending = b""  # replies read from the pipe and not yet returned

    def _reply(self, timeout: float | None) -> dict:
        """The next reply line; unbuffered reads, so a line already read is never waited for in ``select``."""
        while b"\n" not in self._pending:
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            if not ready:
                raise TimeoutError
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"the zygote ended (exit {self.proc.wait()})")
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return json.loads(line)

    def run(self, module: str, args: Sequence[str], cwd: Path, env: Mapping[str, str],
            timeout: float = 900) -> subprocess.CompletedProcess:
        """``python -m <module> <args>`` in ``cwd`` with exactly ``env``, as a forked child; stdout and stderr
        go to ``cwd/.zygote.{out,err}`` and come back in the result. A run past ``timeout`` is killed."""
        out, err = Path(cwd) / ".zygote.out", Path(cwd) / ".zygote.err"
        request = {"module": module, "args": list(map(str, args)), "cwd": str(cwd), "env": dict(env),
                   "stdout": str(out), "stderr": str(err)}
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        pid = self._reply(600)["pid"]  # the first run waits for the preload: ~20 s idle, minutes on a busy CI
        try:
            code = self._reply(timeout)["returncode"]
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            self._reply(60)
            raise subprocess.TimeoutExpired([module, *args], timeout) from None
        return subprocess.CompletedProcess([module, *args], code, out.read_text(errors="replace"),
                                           err.read_text(errors="replace"))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


def _child(request: dict) -> None:
    """In the forked child: become the run's process, then run its module as ``__main__``; never returns."""
    import runpy

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    os.close(stdin)
    sys.stdin = open(0, closefd=False)
    sys.argv = [request["module"], *request["args"]]
    sys.path.insert(0, request["cwd"])  # ``python -m`` puts the cwd first (the zygote removed its own)
    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    raise SystemExit(0)  # unwinds to the interpreter's normal exit, which runs the atexit handlers


def serve(preload: Sequence[str]) -> None:
    """The zygote: import ``preload``, then fork one child per request line until stdin closes."""
    import importlib

    for name in preload:
        importlib.import_module(name)
    channel = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush(), sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)
        channel.write(json.dumps({"pid": pid}) + "\n")
        channel.flush()
        _, status = os.waitpid(pid, 0)
        channel.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        channel.flush()


if __name__ == "__main__":
    sys.path.pop(0)  # the repository root ``-m`` put first: only the preload is imported here
    serve([name for name in sys.argv[1].split(",") if name])
