"""Progress where people look: one line per epoch (per client per round in federations) in run.log and on
a non-TTY stdout, and a line while volumes are decoded and cached."""
import logging
import subprocess
import sys

from callbacks.progress_log import epoch_line
from experiments.run import dispatch
from tests.hydra_helpers import compose_run

SITES = ["hospital_a", "hospital_b", "hospital_c"]


def test_run_log_of_a_two_epoch_run_shows_both_epochs(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.run", "+exp=lits_dnet", "model.width=4", "data.image_size=32",
         "data.batch_size=8", "data.synthetic.n_cases=6", "data.synthetic.shape=[48,48,10]",
         "trainer.max_epochs=2", "logger=csv", f"paths.root_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=900)  # stdout is a pipe: not a TTY
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (tmp_path / "run" / "run.log").read_text()
    for line in ("epoch 1/2: ", "epoch 2/2: "):
        assert line in text and line in proc.stdout
    epoch2 = next(ln for ln in text.splitlines() if "epoch 2/2: " in ln)
    assert "val/dice=" in epoch2 and "train/loss=" in epoch2
    assert "volumes (cache" in text and "6/6" in text and "decoded" in text


def test_federation_logs_a_line_per_client_per_round(tmp_path, caplog):
    ov = ["+exp=fed_lits_dnet", "logger=csv", "model.width=4", "federation.progress=false", "federation.rounds=2",
          "trainer.limit_train_batches=1", "federation.evaluation_matrix=false"] + [
        o for s in SITES for o in (f"data.sites.{s}.image_size=32", f"data.sites.{s}.synthetic.n_cases=4",
                                   f"data.sites.{s}.synthetic.shape=[32,32,6]")]
    with caplog.at_level(logging.INFO, logger="federation.loop"):
        dispatch(compose_run(ov, tmp_path))
    lines = [r.getMessage() for r in caplog.records if r.name == "federation.loop"]
    for rnd in (1, 2):
        for site in SITES:
            assert any(m.startswith(f"round {rnd}/2 client {site}: local val ") and "dice=" in m for m in lines)
        assert any(m.startswith(f"round {rnd}/2 global: ") and "val/dice=" in m for m in lines)


def test_epoch_line_format():
    line = epoch_line(1, 6, {"train/loss_epoch": 0.5, "train/loss_step": 0.4, "val/dice": 0.61234,
                             "val/dice_best": 0.7}, 3.21)
    assert line == "epoch 2/6: train/loss=0.5 val/dice=0.6123 (3.2 s)"


def test_epoch_line_shows_a_metric_once():
    """Lightning's callback_metrics hold ``train/loss`` and ``train/loss_epoch`` for an on_step+on_epoch log."""
    line = epoch_line(0, 2, {"train/loss": 1.188, "train/loss_epoch": 1.188, "train/loss_step": 0.9}, 1.0)
    assert line == "epoch 1/2: train/loss=1.188 (1.0 s)"


def test_log_progress_is_quiet_when_fast_and_steady_when_slow(monkeypatch, caplog):
    """A loop done within ``quiet_s`` (volumes from the cache) logs its final line only; a slow one
    (decoding) logs about ``lines`` lines plus the final one."""
    import datamodules.progress as progress

    log = logging.getLogger("test.progress")
    for step_s, want in ((0.01, ["20/20"]), (1.0, [f"{i}/20" for i in range(2, 21, 2)])):
        clock = iter(range(10_000))
        monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock) * step_s)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="test.progress"):
            assert list(progress.log_progress(range(20), 20, "volumes", log, lines=10)) == list(range(20))
        got = [r.getMessage().split()[1] for r in caplog.records]
        assert got == want, (step_s, got)


def test_epoch_lines_of_a_classification_run_show_their_own_epochs_train_loss(tmp_path, caplog):
    """Found by an audit: ClassificationModule computes train/* in its own on_train_epoch_end, which Lightning
    calls after the callbacks', so the line for epoch 2 showed epoch 1's train/loss and epoch 1's none."""
    import csv

    cfg = compose_run(["+exp=digits_cnn", "logger=csv", "trainer.max_epochs=2"], tmp_path)
    with caplog.at_level(logging.INFO, logger="progress"):
        dispatch(cfg)
    lines = [r.getMessage() for r in caplog.records if r.name == "progress" and r.getMessage().startswith("epoch ")]
    assert [ln.split(":")[0] for ln in lines] == ["epoch 1/2", "epoch 2/2"]
    with open(next(tmp_path.rglob("metrics.csv")), newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("train/loss")]
    by_epoch = {int(r["epoch"]): float(r["train/loss"]) for r in rows}
    for epoch, line in enumerate(lines):
        assert f"train/loss={by_epoch[epoch]:.4g}" in line, (line, by_epoch)
