"""Where runs write: a sweep keeps every job in one folder, whatever its jobs' experiment names (``hydra.sweep.dir``), and
a second run in a used ``hydra.run.dir`` is said to mix with the first."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli import run_in_process

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("launcher", ["basic", "submitit_local"])
def test_a_sweep_over_experiments_keeps_one_folder_and_counts_its_failed_job(tmp_path, launcher):
    """Found by a review: the sweep folder was named by each job's ``exp_name`` (``logs/<exp>/multiruns/...``), so a
    sweep over experiments (or over ``data.flag`` of ``+exp=medmnist``, whose name follows it) spread its jobs over
    one folder per experiment; the failed-job count read the first folder only and the command exited 0 with a
    failed job. Here ``medmnist_breast`` fails (no MedMNIST file in the empty data folder). Under submitit too,
    whose jobs run in processes of their own (a review doubted that they resolve the default ``hydra.sweep.dir``,
    uid suffix included, as the sweep's process does: they do, as this shows)."""
    logs = tmp_path / "logs"
    proc = run_in_process("experiments.run", [
        "-m", f"hydra/launcher={launcher}", "+exp=digits_cnn,medmnist_breast", "++trainer.fast_dev_run=true",
        "logger=csv", f"paths.log_dir={logs}", f"paths.data_dir={tmp_path / 'data'}", f"paths.root_dir={tmp_path}"],
        ROOT)
    assert proc.returncode == 2, proc.stderr[-3000:]
    sweeps = sorted(p for p in logs.glob("*/multiruns/*") if p.is_dir())
    assert len(sweeps) == 1 and sweeps[0].parent.parent.name == "digits_cnn+medmnist_breast", sweeps
    jobs = sorted(p.name for p in sweeps[0].iterdir() if (p / ".hydra").is_dir())
    assert len(jobs) == 2, jobs
    assert proc.stderr.strip().splitlines()[-1].startswith("error: 1 of 2 sweep jobs failed"), proc.stderr[-2000:]


def test_a_second_run_in_a_used_run_dir_is_warned_about(tmp_path):
    """Found by a review: a second run given the same ``hydra.run.dir`` without ``resume`` mixed its csv rows, W&B
    run and checkpoints (best-v1.ckpt) with the first's, without a word; it is said now (resume=true continues)."""
    args = ["+exp=digits_cnn", "++trainer.fast_dev_run=true", "logger=csv", f"hydra.run.dir={tmp_path / 'run'}",
            f"paths.root_dir={tmp_path}"]
    first = run_in_process("experiments.run", args, ROOT)
    assert first.returncode == 0 and "holds an earlier run" not in first.stderr, first.stderr[-2000:]
    second = run_in_process("experiments.run", args, ROOT)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"warning: hydra.run.dir={tmp_path / 'run'} holds an earlier run (metrics.json)" in second.stderr
    assert not (tmp_path / "run" / "metrics.json").is_file() or list((tmp_path / "run" / "earlier").glob("*/metrics.json"))


def test_a_new_run_in_a_used_run_dir_moves_the_earlier_results_aside(tmp_path):
    """A review: a second run in a pinned ``hydra.run.dir`` that did not finish left the first run's metrics.json
    beside its own config, and experiments.report showed that score as the second run's. Here the second run
    fails on a bad value: the folder says it failed, and the first run's results are in earlier/<time>/."""
    from experiments.report import find_runs

    run = tmp_path / "run"
    args = ["+exp=digits_cnn", "++trainer.fast_dev_run=true", "logger=csv", f"hydra.run.dir={run}",
            f"paths.root_dir={tmp_path}"]
    assert run_in_process("experiments.run", args, ROOT).returncode == 0
    first = (run / "metrics.json").read_text()
    second = run_in_process("experiments.run", [*args, "data.batch_size=0"], ROOT)
    assert second.returncode == 2, second.stderr[-2000:]
    assert not (run / "metrics.json").exists() and (run / "failed.json").is_file()
    (kept,) = (run / "earlier").glob("*/metrics.json")
    assert kept.read_text() == first
    assert find_runs([str(tmp_path)]) == ([], [run])
    # the review of that fix: resume=true with nothing to continue starts afresh too, so it moves them as well
    assert not (run / "checkpoints").is_dir()  # fast_dev_run saves no checkpoint
    (run / "failed.json").unlink()
    kept.rename(run / "metrics.json")
    again = run_in_process("experiments.run", [*args, "resume=true", "data.batch_size=0"], ROOT)
    assert again.returncode == 2 and not (run / "metrics.json").exists(), again.stderr[-2000:]
    assert len(list((run / "earlier").glob("*/metrics.json"))) == 1


def test_a_new_run_in_a_used_run_dir_starts_afresh(tmp_path):
    """A review: a second run in a pinned ``hydra.run.dir`` that finished appended its rows to the first run's
    ``csv/metrics.csv`` (its learning curve showed both runs' epochs), logged into the first's W&B run
    (``wandb_id.txt``) and left the first's ``checkpoints/best.ckpt`` beside its own ``best-v1.ckpt`` (predict on
    ``best.ckpt`` took the first run's model). All of the first run's files are in ``earlier/<time>/`` now."""
    run = tmp_path / "run"
    args = ["+exp=digits_cnn", "logger=csv", "trainer.max_epochs=1", "++trainer.limit_train_batches=2",
            "++trainer.limit_val_batches=1", "++trainer.limit_test_batches=1", "model.width=4",
            f"hydra.run.dir={run}", f"paths.root_dir={tmp_path}"]
    assert run_in_process("experiments.run", args, ROOT).returncode == 0
    (run / "wandb_id.txt").write_text("firstrun0001\n")  # as a W&B logger leaves it
    rows = (run / "csv" / "metrics.csv").read_text().splitlines()
    first_best = (run / "checkpoints" / "best.ckpt").read_bytes()
    second = run_in_process("experiments.run", args, ROOT)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "its files (checkpoints, logs, results, W&B id) are moved to earlier/<time>/" in second.stderr
    (earlier,) = (run / "earlier").iterdir()
    assert (earlier / "csv" / "metrics.csv").read_text().splitlines() == rows
    assert (run / "csv" / "metrics.csv").read_text().splitlines()[1:] != [] and len(
        (run / "csv" / "metrics.csv").read_text().splitlines()) == len(rows)  # its own rows only
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert (earlier / "checkpoints" / "best.ckpt").read_bytes() == first_best
    assert (earlier / "wandb_id.txt").is_file() and not (run / "wandb_id.txt").exists()
    assert (run / "metrics.json").is_file() and (earlier / "metrics.json").is_file()


def test_every_stage_of_an_earlier_run_is_set_aside(tmp_path):
    """A review: a federated distillation reused the finished stages (``teacher/``, the arms) of an earlier run in
    its folder whatever its own settings; a federation's client store under a name of its own is moved as well.
    What the next run rewrites (``.hydra/``, ``config.yaml``, its log) and what no run writes stay."""
    from experiments.run_folder import earlier_run, set_aside, set_aside_run

    run = tmp_path / "run"
    for rel in (".hydra/config.yaml", "config.yaml", "run.log", "notes.txt", "teacher/metrics.json",
                "fed_hlfd/metrics.json", "sites/a/teacher_fed.pt", "my_store/c0.pt", "server.pt"):
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text("x")
    assert earlier_run(run) == "teacher"
    from omegaconf import OmegaConf

    moved = set_aside_run(run, OmegaConf.create({"federation": {"store_dir": "my_store"}}))
    assert sorted(p.name for p in run.iterdir()) == [".hydra", "config.yaml", "earlier", "notes.txt", "run.log"]
    assert sorted(p.name for p in moved.iterdir()) == ["fed_hlfd", "my_store", "server.pt", "sites", "teacher"]
    assert set_aside(moved / "teacher" / "metrics.json") and set_aside(moved / "sites" / "a" / "teacher_fed.pt")
    assert not set_aside(run / "teacher" / "metrics.json")
    assert set_aside_run(run, OmegaConf.create({"federation": {"store_dir": "../elsewhere"}})) is None
    assert earlier_run(run) is None


def test_what_the_new_run_names_moves_with_it_and_a_live_launcher_refuses(tmp_path):
    """The review of that change: a test-only run of the folder's own ``checkpoints/best.ckpt`` (``train=false
    ckpt_path=...``, the documented command) found it moved away (and keeping its folder kept the earlier
    ``last.ckpt``, which a resume then took: a second review; pointing the config at the moved file made the run's
    own overrides refuse its resume: a third); a second run in the folder moved a running Flower rehearsal's
    ``server.pt`` and client store (or, once those were kept, mixed its files with them); a nested ``store_dir``
    stayed. Now the named files alone stay (a link as a link), and the run beside a live rehearsal is refused."""
    import json
    import subprocess

    from omegaconf import OmegaConf

    from engine.continue_command import holds_run
    from experiments.run_folder import set_aside_run
    from federation.transports.flower.launcher_record import _started_at

    run = tmp_path / "run"
    for rel in ("checkpoints/best.ckpt", "checkpoints/last.ckpt", "csv/metrics.csv", "stores/x/c0.pt", "server.pt",
                "metrics.json", "teacher/checkpoints/last.ckpt"):
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text("x")
    (tmp_path / "elsewhere.ckpt").write_text("t")
    (run / "teacher" / "checkpoints" / "best.ckpt").symlink_to(tmp_path / "elsewhere.ckpt")
    cfg = OmegaConf.create({"ckpt_path": str(run / "checkpoints" / "best.ckpt"),
                            "federation": {"store_dir": "stores/x"},
                            "paths": {"output_dir": str(run)}, "callbacks": {"dirpath": f"{run}/checkpoints"},
                            "later": "${paths.output_dir}/checkpoints/best.ckpt",
                            "distill": {"teacher": {"ckpt": str(run / "teacher" / "checkpoints" / "best.ckpt")}}})
    live = subprocess.Popen(["sleep", "60"])
    try:
        (run / "flower").mkdir()
        (run / "flower" / "launcher.json").write_text(json.dumps({"pid": live.pid, "started": _started_at(live.pid)}))
        assert set_aside_run(run, cfg) is None and (run / "server.pt").is_file()
        proc = run_in_process("experiments.run", ["+exp=digits_cnn", "++trainer.fast_dev_run=true", "logger=csv",
                                                  f"hydra.run.dir={run}", f"paths.root_dir={tmp_path}"], ROOT)
        assert proc.returncode == 2 and f"its Flower rehearsal is still run by launcher pid {live.pid}" in proc.stderr
        assert not (run / ".hydra").exists() and (run / "metrics.json").read_text() == "x"
    finally:
        live.kill()
        live.wait()
    moved = set_aside_run(run, cfg)
    assert sorted(p.name for p in moved.iterdir()) == ["checkpoints", "csv", "metrics.json", "server.pt", "stores",
                                                         "teacher"]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["best.ckpt"]  # named: it stays, and only it
    assert [p.name for p in (moved / "checkpoints").iterdir()] == ["last.ckpt"]
    assert (run / "teacher" / "checkpoints" / "best.ckpt").is_symlink() and (run / "flower").is_dir()
    assert (moved / "teacher" / "checkpoints" / "last.ckpt").is_file()
    assert cfg.ckpt_path == str(run / "checkpoints" / "best.ckpt")  # the config is left as given
    arms = tmp_path / "arms"  # a federated distillation with local arms only
    (arms / "sites" / "a" / "none").mkdir(parents=True)
    assert not holds_run(arms)  # a bare sites/ folder holds no run (a review)
    (arms / "sites" / "a" / "none" / "checkpoints").mkdir()
    assert holds_run(arms)


def test_a_narrow_mask_takes_any_ignore_index():
    """The review of the uint8 volume masks: partial labels turned ``ignore_index=-100`` into 156 in a uint8 mask,
    which the loss then refused as a class."""
    import numpy as np
    import torch

    from federation.core.partial_labels import mask_unannotated

    out = mask_unannotated(torch.tensor([0, 1, 2], dtype=torch.uint8), [1], ignore_index=-100)
    assert out.tolist() == [0, 1, -100]
    assert mask_unannotated(torch.tensor([0, 2], dtype=torch.uint8), [1], ignore_index=255).dtype == torch.uint8
    assert mask_unannotated(np.array([0, 2], np.uint8), [1], ignore_index=-100).tolist() == [0, -100]
    assert mask_unannotated(torch.tensor([0, 2]), [1], ignore_index=-100).tolist() == [0, -100]


def test_only_a_runs_own_earlier_folder_is_set_aside(tmp_path):
    """The review of that fix: any folder named ``earlier`` was skipped, so every job of a sweep under
    ``.../earlier/`` was left out of reports without a word."""
    from experiments.run_folder import set_aside, set_aside_run

    run = tmp_path / "earlier" / "run1"
    (run / ".hydra").mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    assert not set_aside(run / "metrics.json") and not set_aside(tmp_path / "multirun" / "earlier" / "0" / "m.json")
    moved = set_aside_run(run)
    assert set_aside(moved / "metrics.json") and moved.parent == run / "earlier"


def test_no_earlier_run_warning_for_a_ddp_rank_or_a_slurm_requeue(monkeypatch):
    """A review: Lightning starts DDP ranks > 0 in rank 0's run dir, and SLURM reruns a requeued job in its own;
    neither is another run in a used folder."""
    from experiments.run_folder import first_start

    for key in ("LOCAL_RANK", "RANK", "SLURM_PROCID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(key, raising=False)
    assert first_start()
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert first_start()
    for key, value in (("LOCAL_RANK", "1"), ("SLURM_RESTART_COUNT", "1")):
        monkeypatch.setenv(key, value)
        assert not first_start()
        monkeypatch.delenv(key)


def test_a_given_wandb_id_in_a_sweep_is_refused(tmp_path):
    """A review: ``+logger.wandb.id=<id>`` in a sweep would log every job into that one W&B run."""
    proc = run_in_process("experiments.run", [
        "-m", "+exp=digits_cnn", "seed=1,2", "++trainer.fast_dev_run=true", "logger=wandb", "+logger.wandb.id=one",
        f"paths.log_dir={tmp_path / 'logs'}", f"paths.root_dir={tmp_path}"], ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "logger.wandb.id=one: a sweep's jobs are one W&B run each" in proc.stderr
    assert not list((tmp_path / "logs").rglob("offline-run-*"))


def test_a_fine_tune_of_a_checkpoint_in_the_folder_it_would_write_is_refused(tmp_path):
    """Found before (kept open for a session): ``train=true ckpt_path=<run>/checkpoints/best.ckpt`` started in that
    run's own folder kept the named ``best.ckpt`` there (it is the config's) and saved its own best as
    ``best-v1.ckpt`` beside it, so predict on ``best.ckpt`` took the earlier model. Now one line before anything
    moves; a test-only run of it (``train=false``) and a fine-tune in another folder go on."""
    run = tmp_path / "run"
    args = ["+exp=digits_cnn", "logger=csv", "trainer.max_epochs=1", "++trainer.limit_train_batches=2",
            "++trainer.limit_val_batches=1", "++trainer.limit_test_batches=1", "model.width=4",
            f"paths.root_dir={tmp_path}"]
    assert run_in_process("experiments.run", [*args, f"hydra.run.dir={run}"], ROOT).returncode == 0
    best = run / "checkpoints" / "best.ckpt"
    before = sorted(p.name for p in run.iterdir())
    tune = run_in_process("experiments.run", [*args, f"hydra.run.dir={run}", f"ckpt_path={best}",
                                              "trainer.max_epochs=2"], ROOT)
    assert tune.returncode == 2, tune.stderr[-2000:]
    assert tune.stderr.strip().splitlines()[-1] == (
        f"error: {best}, which this run's config names, is where this new run (train=true) saves its own "
        f"checkpoint: copy it elsewhere first, or give this run another folder (train=false only tests it; "
        f"resume=true continues the run that is there)")
    assert sorted(p.name for p in run.iterdir()) == before
    (tmp_path / "link").symlink_to(run)  # a review: the folder through a link was not seen as the same
    linked = run_in_process("experiments.run", [*args, f"hydra.run.dir={tmp_path / 'link'}", f"ckpt_path={best}",
                                                "trainer.max_epochs=2"], ROOT)
    assert linked.returncode == 2 and "is where this new run (train=true) saves" in linked.stderr, linked.stderr[-2000:]
    assert sorted(p.name for p in run.iterdir()) == before
    tested = run_in_process("experiments.run", [*args, f"hydra.run.dir={run}", f"ckpt_path={best}", "train=false"],
                            ROOT)
    assert tested.returncode == 0, tested.stderr[-2000:]
    elsewhere = run_in_process("experiments.run", [*args, f"hydra.run.dir={tmp_path / 'tuned'}", f"ckpt_path={best}",
                                                   "trainer.max_epochs=2"], ROOT)  # Lightning goes on from epoch 1
    assert elsewhere.returncode == 0, elsewhere.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "tuned" / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_a_clash_is_found_where_the_checkpoints_really_go(tmp_path):
    """The review of that check: a ``callbacks.*.dirpath`` override moved the run's checkpoints elsewhere (the
    named earlier ``best.ckpt`` there was overwritten, unrefused), and ``distill=teacher`` with the folder's own
    teacher checkpoint only tests it (refused as if it trained). Named files reached through a link stay put."""
    from omegaconf import OmegaConf

    from experiments.named_files import checkpoint_clash, named_files

    run, ckpts = tmp_path / "run", tmp_path / "run" / "ckpts"
    ckpts.mkdir(parents=True)
    (ckpts / "best.ckpt").write_text("x")
    callbacks = {"model_checkpoint": {"dirpath": "${paths.output_dir}/ckpts", "filename": "best"},
                 "last_checkpoint": {"dirpath": "${paths.output_dir}/ckpts", "filename": "last"}}
    cfg = OmegaConf.create({"train": True, "ckpt_path": str(ckpts / "best.ckpt"), "callbacks": callbacks})
    assert "is where this new run (train=true) saves its own checkpoint" in checkpoint_clash(run, cfg)
    cfg.callbacks.model_checkpoint.dirpath = "${paths.output_dir}/checkpoints"  # they go elsewhere: no clash
    assert checkpoint_clash(run, cfg) is None
    teacher = OmegaConf.create({"train": True, "callbacks": {"m": {"dirpath": str(ckpts), "filename": "best"}},
                                "distill": {"method": "teacher", "teacher": {"ckpt": str(ckpts / "best.ckpt")}}})
    assert checkpoint_clash(run, teacher) is None  # tests the given teacher, trains nothing
    teacher.distill.method = "hlfd"
    assert checkpoint_clash(run, teacher) is not None  # a student trained into the teacher's file
    (tmp_path / "link").symlink_to(run)
    named = OmegaConf.create({"ckpt_path": str(tmp_path / "link" / "ckpts" / "best.ckpt")})
    assert named_files(named, run) == {str(ckpts / "best.ckpt")}
    for callbacks in (None, {}, [1, 2]):  # a review: ~callbacks (as the error for callbacks=null says) raised
        assert checkpoint_clash(run, OmegaConf.create({"train": True, "ckpt_path": str(ckpts / "best.ckpt"),
                                                       "callbacks": callbacks})) is None
