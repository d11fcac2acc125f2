"""A run stopped by SIGTERM (a job scheduler's preemption, ``timeout``, ``docker stop``) exits non-zero and
continues with ``resume=<run dir>``; ``resume=`` also takes a federation's run dir (``server.pt``) and a
distillation stopped in its teacher stage (``teacher/``). Found by an audit: Lightning turns SIGTERM into a
``SystemExit`` without a code, so the run exited 0, and ``resume=<dir>`` accepted only ``checkpoints/``."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from experiments.run_folder import resumable
from tests.cli import BASE_ENV


def test_resumable_run_dirs(tmp_path):
    kinds = {"central": "checkpoints/", "federation": "server.pt", "distill": "teacher/", "empty": None}
    for name, marker in kinds.items():
        run = tmp_path / name
        run.mkdir()
        if marker and marker.endswith("/"):
            (run / marker).mkdir()
        elif marker:
            (run / marker).write_bytes(b"")
    assert [resumable(str(tmp_path / k)) for k in kinds] == [True, True, True, False]
    assert resumable("true") is None and resumable(None) is None and resumable(str(tmp_path / "nope")) is False


def _sigterm_when(args: list[str], cwd, ready, sig: int = signal.SIGTERM) -> tuple[int, str]:
    """Start ``args``, send ``sig`` once ``ready()`` holds, and return its exit code and stderr (the process is
    killed if it outlives the test). SIGINT as in a terminal: a harness running pytest in the background passes
    it down as ignored, and a Python started so never raises KeyboardInterrupt."""
    proc = subprocess.Popen(args, cwd=cwd, env={**os.environ, **BASE_ENV}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while not ready():
            assert proc.poll() is None and time.monotonic() < deadline, "not ready before the run ended"
            time.sleep(0.2)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


def test_sigterm_exits_143_and_the_run_resumes(tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "experiments.run", "+exp=digits_cnn", "logger=csv", "trainer.max_epochs=200",
            f"hydra.run.dir={run}"]
    env = {**os.environ, **BASE_ENV}
    returncode, err = _sigterm_when(args, tmp_path, lambda: (run / "checkpoints" / "last.ckpt").is_file())
    assert returncode == 143, err[-2000:]
    assert [ln for ln in err.splitlines() if ln.startswith("error")] == [
        f"error: interrupted by SIGTERM; continue with: python -m experiments.run +exp=digits_cnn logger=csv "
        f"trainer.max_epochs=200 resume={run}"]
    assert not (run / "metrics.json").exists()
    done = subprocess.run([sys.executable, "-m", "experiments.run", "+exp=digits_cnn", "logger=csv",
                           "trainer.max_epochs=3", f"resume={run}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((run / "metrics.json").read_text())["test/acc"] > 0.5
    # found by an audit: the steps logged after the last checkpoint were in metrics.csv twice after the resume
    import csv

    with open(run / "csv" / "metrics.csv", newline="") as fh:
        logged = [(r["step"], tuple(sorted(k for k, v in r.items() if v and k not in ("step", "epoch"))))
                  for r in csv.DictReader(fh)]
    assert len(logged) == len(set(logged)), sorted(x for x in logged if logged.count(x) > 1)[:4]


@pytest.mark.parametrize("marker", ["server.pt", "teacher"])
def test_resume_accepts_federation_and_teacher_stage_dirs(tmp_path, marker):
    """The gate before Hydra makes a run dir: such a folder is not refused as 'not a run dir'."""
    from tests.cli import run_in_process

    run = tmp_path / "old"
    run.mkdir()
    (run / marker).mkdir() if marker == "teacher" else (run / marker).write_bytes(b"")
    proc = run_in_process("experiments.run", ["+exp=digits_cnn", "logger=csv", f"resume={run}",
                                              "++trainer.fast_dev_run=true"], tmp_path)
    assert "is not a run dir" not in proc.stderr, proc.stderr[-1500:]
    assert proc.returncode == 0, proc.stderr[-1500:]


@pytest.mark.parametrize("executor", ["sequential", "ray"])
def test_sigterm_between_federation_clients_is_reported(tmp_path, executor):
    """Found by an audit: SIGTERM outside Lightning's fit (between clients, in the server's aggregation or
    evaluation) killed a federation with no line; it now prints the command that continues it, exit 143.
    With Ray (found by a review), ``ray.init`` replaced the run's handler with its own ``sys.exit``."""
    if executor == "ray":
        pytest.importorskip("ray")
    run = tmp_path / "run"
    over = ["+exp=fed_digits_datashare", "model.width=4", "federation.progress=false", "trainer.limit_train_batches=2",
            "federation.rounds=200", "federation.num_clients=4", "federation.clients_per_round=2",
            "federation.local_epochs=1", "logger=csv", f"federation/executor={executor}"]
    if executor == "ray":
        over += ["federation.executor.gpus_per_client=0", "federation.executor.num_workers=1"]
    rounds = run / "rounds.csv"
    returncode, err = _sigterm_when([sys.executable, "-m", "experiments.run", *over, f"hydra.run.dir={run}"], tmp_path,
                                    lambda: rounds.is_file() and len(rounds.read_text().splitlines()) >= 3)
    assert returncode == 143, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("error")]
    assert lines == [f"error: interrupted by SIGTERM; continue with: python -m experiments.run {' '.join(over)} "
                     f"resume={run}"], err[-2000:]


@pytest.mark.parametrize("where", ["centralised", "federation"])
def test_ctrl_c_exits_130_with_the_line_that_continues_the_run(tmp_path, where):
    """Found by a deployment walkthrough: Ctrl-C ended a run in Lightning's "Detected KeyboardInterrupt" and
    exit 1, with no line saying how to continue (SIGTERM gave one); now the same line, exit 130."""
    run = tmp_path / "run"
    if where == "centralised":
        over = ["+exp=digits_cnn", "logger=csv", "trainer.max_epochs=200"]
        ready = lambda: (run / "checkpoints" / "last.ckpt").is_file()  # noqa: E731
    else:
        over = ["+exp=fed_digits_datashare", "model.width=4", "federation.progress=false",
                "trainer.limit_train_batches=2", "federation.rounds=200", "federation.num_clients=4",
                "federation.clients_per_round=2", "federation.local_epochs=1", "logger=csv"]
        rounds = run / "rounds.csv"
        ready = lambda: rounds.is_file() and len(rounds.read_text().splitlines()) >= 3  # noqa: E731
    returncode, err = _sigterm_when([sys.executable, "-m", "experiments.run", *over, f"hydra.run.dir={run}"],
                                    tmp_path, ready, sig=signal.SIGINT)
    assert returncode == 130 and "Traceback" not in err, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("error")]
    assert lines == [f"error: interrupted by SIGINT; continue with: python -m experiments.run {' '.join(over)} "
                     f"resume={run}"], err[-2000:]


@pytest.mark.parametrize("signame, code", [("sigterm", 143), ("sigint", 130)])
def test_an_error_raised_while_a_sigterm_unwinds_is_the_interruption(tmp_path, monkeypatch, signame, code):
    """Found in CI: a SIGTERM raised inside OmegaConf between clients surfaced as a client's ConfigKeyError (a
    ``finally`` there raised while it unwound), and the run ended as a user error, exit 2, without the line."""
    import engine.fit
    from engine import stop
    from lightning_modules.errors import ConfigError
    from tests.cli import run_in_process

    def masked(*args, **kwargs):
        stop._requested[signame] = True  # the handler ran... (a Ctrl-C so masked ended a CI run as exit 2)
        raise ConfigError("'NoneType' object has no attribute '_invalidate_flags_cache'")  # ...and was masked

    monkeypatch.setattr(engine.fit, "train_and_test", masked)
    proc = run_in_process("experiments.run", ["+exp=digits_cnn", "logger=csv", f"hydra.run.dir={tmp_path / 'run'}"],
                          tmp_path)
    assert proc.returncode == code, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    # nothing was saved (train_and_test never ran): a review found the suggested resume=<dir> refused, so the
    # line says to run the command again
    assert len(lines) == 1 and lines[0].startswith(f"error: interrupted by {signame.upper()} before anything was saved to "
                                                   "continue; run it again: python -m experiments.run"), proc.stderr[-2000:]
    assert "resume=" not in lines[0] and "+exp=digits_cnn" in lines[0]


def test_a_swallowed_ctrl_c_stops_the_federation_at_its_next_safe_point():
    """CI, once: a Ctrl-C landed in a profiler's ``__del__``, where Python ignores the KeyboardInterrupt, and the
    federation ran on to exit 0. Its request is recorded first, so the next safe point (after a client or a round:
    ``engine.stop.check``) raises it again; with no request nothing is raised."""
    from engine import stop

    previous = stop.install()
    try:
        stop.check()
        stop._requested["sigint"] = True  # the handler ran; its KeyboardInterrupt was swallowed
        with pytest.raises(KeyboardInterrupt):
            stop.check()
    finally:
        stop.restore(previous)
    assert not stop.requested("sigint")


def test_ctrl_c_in_predict_or_ensemble_is_one_line_and_130(capsys):
    """A walkthrough: Ctrl-C in a folder's predict printed a 97-line traceback (its outputs were whole)."""
    from omegaconf import OmegaConf

    from experiments.hydra_checks import user_command

    def task(cfg):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as done:
        user_command(task, OmegaConf.create({}))
    assert done.value.code == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("stopped (SIGINT): each output written so far is whole") and "\n" not in err


def test_a_resume_of_a_folder_that_does_not_exist_says_so(tmp_path):
    """A walkthrough: a mistyped ``resume=`` path was "not a run dir to continue (no checkpoints/ ...)"."""
    from experiments.run_folder import not_resumable_line

    assert not_resumable_line(str(tmp_path / "nope")).endswith("nope does not exist: give the run dir to continue "
                                                                 "(logs/<exp>/runs/<run>)")
    assert "is not a run dir to continue" in not_resumable_line(str(tmp_path))
