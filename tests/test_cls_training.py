"""End to end: the digits default learns, MedMNIST configs compose, the Decathlon report reads a sweep."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from experiments import decathlon_report
from engine.fit import train_and_test
from hydra_helpers import compose_run

FAST = ["logger=csv", "callbacks.rich_progress_bar=null", "trainer.enable_progress_bar=false",
        "+trainer.enable_model_summary=false"]


@pytest.mark.slow
def test_digits_small_cnn_reaches_90_percent(tmp_path):
    # one thread (conftest resets it per test): tiny convolutions gain nothing from more threads and
    # lose a lot to contention on a busy shared CPU
    torch.set_num_threads(1)
    cfg = compose_run(["+exp=digits_cnn", "seed=0", *FAST], tmp_path)
    metrics = train_and_test(cfg)
    assert metrics["test/acc"] >= 0.90, metrics
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["test/acc"] == pytest.approx(metrics["test/acc"]) and "val/auc_best" in saved
    assert (tmp_path / "run" / "confusion_matrix_test.png").stat().st_size > 0


def test_medmnist_configs_compose(tmp_path):
    cfg = compose_run(["+exp=medmnist", "data.flag=chestmnist", "model=resnet50", "data.size=224"], tmp_path)
    assert cfg.module.task == "multi-label" and cfg.module.num_classes == 14
    assert cfg.model.in_channels == 1 and cfg.model.resolution == 224
    assert cfg.module.optimizer.lr == 1e-3 and cfg.data.batch_size == 128 and cfg.trainer.max_epochs == 100
    breast = compose_run(["+exp=medmnist_breast"], tmp_path)
    assert breast.data.flag == "breastmnist" and breast.module.class_names[0] == "malignant"


def test_medmnist_run_on_tiny_file(tmp_path):
    from test_cls_data import write_npz

    write_npz(tmp_path / "npz", "retinamnist.npz", channels=3, n_classes=5)
    cfg = compose_run(["+exp=medmnist", "data.flag=retinamnist", f"data.root={tmp_path / 'npz'}", "model=small_cnn",
                       "trainer.max_epochs=1", *FAST], tmp_path)
    metrics = train_and_test(cfg)
    assert {"test/auc", "test/acc", "val/auc", "val/loss", "train/loss"} <= set(metrics)


@pytest.mark.parametrize("flag, channels, labels_shape, n", [("breastmnist", 1, (1,), 2),
                                                            ("retinamnist", 3, (1,), 5),
                                                            ("chestmnist", 1, (14,), 2)])
def test_a_classifier_writes_its_test_roc_and_learning_curves(tmp_path, flag, channels, labels_shape, n):
    """A classification review: a MedMNIST run wrote its confusion matrix but no ROC and no learning curves,
    which a segmentation run writes. Each class one-vs-rest (per label; the positive class of a binary task),
    its AUC in the legend; the mean of the drawn curves' AUCs is the logged test AUC."""
    from lightning_modules.classification import ClassificationModule
    from test_cls_data import write_npz

    rng = np.random.default_rng(0)  # multi-label: labels that vary within each column (the writer's do not)
    labels = {f"{s}_labels": rng.integers(0, 2, (k, 14)).astype(np.uint8)
              for s, k in (("train", 12), ("val", 4), ("test", 6))} if labels_shape == (14,) else {}
    write_npz(tmp_path / "npz", f"{flag}.npz", channels=channels, labels_shape=labels_shape, n_classes=n, **labels)
    cfg = compose_run(["+exp=medmnist", f"data.flag={flag}", f"data.root={tmp_path / 'npz'}", "model=small_cnn",
                       "trainer.max_epochs=2", *FAST], tmp_path)
    seen = {}
    real = ClassificationModule.on_test_epoch_end

    def keep(self):
        real(self)
        seen.update(self.roc_curves)

    ClassificationModule.on_test_epoch_end = keep
    try:
        metrics = train_and_test(cfg)
    finally:
        ClassificationModule.on_test_epoch_end = real
    run = tmp_path / "run"
    assert (run / "test_roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert seen and abs(sum(c[2] for c in seen.values()) / len(seen) - metrics["test/auc"]) < 1e-4


def _job(root, num, flag, metrics=None, error=None, debug=False, size=28):
    job = root / f"{num}_resnet18_s42"
    (job / ".hydra").mkdir(parents=True)
    cfg = {"data": {"flag": flag, "size": size}, "model": {"_target_": "lightning_modules.nets.classifiers.ResNet18"}}
    if debug:
        cfg["trainer"] = {"fast_dev_run": True}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    if metrics:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if error:
        (job / "failed.json").write_text(json.dumps({"error": error}))


def test_decathlon_report_flags_missing_datasets(tmp_path, capsys):
    _job(tmp_path, 0, "breastmnist", metrics={"test/auc": 0.9, "test/acc": 0.8})
    _job(tmp_path, 1, "retinamnist", metrics={"test/auc": 0.7, "test/acc": 0.5})
    _job(tmp_path, 2, "pathmnist", error="MissingDataFileError: MedMNIST file pathmnist.npz not found in /x")
    _job(tmp_path, 3, "organcmnist", error="DataError: /x/organcmnist.npz [train]: images contain NaN")
    rows = decathlon_report.report(tmp_path)
    by = {r["dataset"]: r for r in rows}
    assert by["BreastMNIST"]["auc"] == 0.9 and by["BreastMNIST"]["paper ResNet-18 AUC"] == 0.897
    assert by["PathMNIST"]["status"] == "missing" and by["OrganMNIST_Coronal"]["status"] == "failed"
    assert by["ChestMNIST"]["status"] == "not run"
    assert by["mean"]["auc"] == pytest.approx(0.8) and by["mean"]["status"] == "2/10 ok"
    # the paper's mean over the same two datasets (a walkthrough: over all ten, 0.806, beside ours over two)
    assert by["mean"]["paper ResNet-18 ACC"] == pytest.approx((0.859 + 0.515) / 2)
    assert by["mean"]["paper ResNet-18 AUC"] == pytest.approx((0.897 + 0.727) / 2)
    assert "| ResNet18 (28) | RetinaMNIST | 0.700 | 0.500 | 0.727 | 0.515 |" in (tmp_path / "decathlon.md").read_text()
    assert (tmp_path / "decathlon.csv").read_text().count("\n") == 12


def test_decathlon_report_exits_1_when_every_run_failed(tmp_path, capsys):
    """A walkthrough: "0/10 ok" exited 0, which a script reads as success (kd_report already exited 1)."""
    _job(tmp_path, 0, "pathmnist", error="MissingDataFileError: MedMNIST file pathmnist.npz not found in /x")
    assert decathlon_report.main([str(tmp_path)]) == 1
    assert "no finished run to report under" in capsys.readouterr().err  # (1 failed or missed their data)
    _job(tmp_path, 1, "breastmnist", metrics={"test/auc": 0.9, "test/acc": 0.8})
    assert decathlon_report.main([str(tmp_path)]) == 0
    (tmp_path / "empty").mkdir()
    assert decathlon_report.main([str(tmp_path / "empty")]) == 2


def test_decathlon_report_leaves_out_debug_runs(tmp_path):
    """A fast_dev_run decathlon was listed beside the paper's Table 2 as a result (found by a walkthrough)."""
    _job(tmp_path, 0, "breastmnist", metrics={"test/auc": 0.9, "test/acc": 0.8})
    _job(tmp_path, 1, "retinamnist", metrics={"test/auc": 0.6, "test/acc": 0.3, "debug": True})
    _job(tmp_path, 2, "pathmnist")
    (tmp_path / "2_resnet18_s42" / "metrics.json").write_text("{cut")  # a killed write: incomplete, no traceback
    by = {r["dataset"]: r for r in decathlon_report.report(tmp_path)}
    # a walkthrough: "not run" for a dataset that ran as a debug job only; it says it was left out now
    assert by["RetinaMNIST"]["status"] == "debug, left out" and by["mean"]["status"] == "1/10 ok"
    assert by["PathMNIST"]["status"] == "incomplete"
    by = {r["dataset"]: r for r in decathlon_report.report(tmp_path, include_debug=True)}
    assert by["RetinaMNIST"]["auc"] == 0.6 and by["mean"]["status"] == "2/10 ok"


def test_a_debug_decathlon_still_says_which_datasets_are_missing(tmp_path, capsys):
    """A walkthrough's fast_dev_run decathlon read "not run" for all ten datasets: the nine whose file is not
    here were left out with the debug runs. A debug job's numbers are left out; its failure is not."""
    _job(tmp_path, 0, "retinamnist", metrics={"test/auc": 0.6, "test/acc": 0.3, "debug": True}, debug=True)
    _job(tmp_path, 1, "pathmnist", error="MissingDataFileError: MedMNIST file pathmnist.npz not found in /x",
         debug=True)
    by = {r["dataset"]: r for r in decathlon_report.report(tmp_path)}
    assert by["PathMNIST"]["status"] == "missing" and by["RetinaMNIST"]["status"] == "debug, left out"
    # a walkthrough: the exit line said "every run ... failed", the finished debug run included
    assert decathlon_report.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no finished run to report under" in err and "(1 failed or missed their data)" in err


def test_decathlon_report_keeps_other_settings_apart(tmp_path):
    """A review: a learning-rate sweep of one model was averaged into one "ours" per dataset."""
    for num, (lr, auc) in enumerate([("0.1", 0.9), ("0.001", 0.5)]):
        _job(tmp_path, num, "breastmnist", metrics={"test/auc": auc, "test/acc": 0.5})
        (tmp_path / f"{num}_resnet18_s42" / ".hydra" / "overrides.yaml").write_text(
            f"- data.flag=breastmnist\n- module.optimizer.lr={lr}\n- seed=42\n")
    rows = [r for r in decathlon_report.report(tmp_path) if r["dataset"] == "BreastMNIST"]
    assert sorted(r["auc"] for r in rows) == [0.5, 0.9] and all("module.optimizer.lr=" in r["model"] for r in rows)


def test_a_first_nan_validation_score_is_not_kept_as_the_best():
    """A classification review: a one-class validation split gives AUC NaN, and a NaN first epoch stayed
    ``val/auc_best`` for good (``new > nan`` is always false)."""
    from lightning_modules.classification import ClassificationModule

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x

    module = ClassificationModule(net=Identity(), task="binary", num_classes=2)
    module.log_dict = lambda *a, **k: None
    seen = []
    for y in (torch.zeros(8, dtype=torch.long), torch.tensor([0, 1] * 4)):  # one class (NaN AUC), then AUC 1
        module._step({"image": torch.stack([-y.float(), y.float()], 1) * 3, "label": y}, "val")
        module._epoch_end("val")
        seen.append(module.results["val/auc_best"] if "val/auc_best" in module.results else None)
    assert seen == [None, 1.0]


def test_decathlon_report_compares_a_224_run_with_the_papers_224_rows(tmp_path):
    """A review: a 224 px run stood beside the paper's 28 px numbers only (BreastMNIST 0.897 / 0.859), and read as
    above the paper where its own ResNet-18 (224) row is higher (0.915 / 0.878). The paper's columns now follow the
    run's resolution; ResNet-50 (224)'s illegible BreastMNIST cell is left empty."""
    _job(tmp_path, 0, "breastmnist", metrics={"test/auc": 0.91, "test/acc": 0.87}, size=224)
    by = {r["dataset"]: r for r in decathlon_report.report(tmp_path)}
    assert by["BreastMNIST"]["paper ResNet-18 AUC"] == 0.915 and by["BreastMNIST"]["paper ResNet-18 ACC"] == 0.878
    assert by["BreastMNIST"]["paper ResNet-50 AUC"] is None and by["PathMNIST"]["paper ResNet-50 AUC"] == 0.978
    assert "| ResNet18 (224) | BreastMNIST | 0.910 | 0.870 | 0.915 | 0.878 |" in (tmp_path / "decathlon.md").read_text()
