"""Per-case segmentation metrics (Dice, IoU, mIoU Eq. 5, accuracy Eq. 3, RVD) against hand computations."""
import math

import numpy as np
import pytest
import torch

from lightning_modules.metrics import (
    PerCaseConfusion,
    case_scores,
    confusion_matrix,
    mean_iou,
    pixel_accuracy,
    relative_volume_difference,
    summarise,
)


def test_confusion_matrix_counts():
    pred = torch.tensor([[[0, 1], [1, 1]]])
    target = torch.tensor([[[0, 1], [0, 1]]])
    cm = confusion_matrix(pred, target, 2)[0].numpy()
    assert cm.tolist() == [[1, 1], [0, 2]]  # rows: truth, cols: prediction


def test_scores_by_hand():
    cm = np.array([[1, 1], [0, 2]])  # TP(fg)=2, FP=1, FN=0, TN=1
    s = case_scores(cm, ["bg", "fg"])
    assert s["dice_fg"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 0))
    assert s["iou_fg"] == pytest.approx(2 / 3)
    assert mean_iou(cm) == pytest.approx((1 / 2 + 2 / 3) / 2)  # background IoU = 1/(1+1+0)
    assert pixel_accuracy(cm) == pytest.approx(3 / 4)
    assert relative_volume_difference(cm)[1] == pytest.approx((3 - 2) / 2)
    assert math.isnan(case_scores(np.array([[4, 0], [0, 0]]), ["bg", "fg"])["dice_fg"])  # absent class


def test_per_case_reassembles_slices_across_batches():
    m = PerCaseConfusion(2)
    # case a: two slices in two batches; case b: one slice
    m.update(torch.tensor([[[1, 0]]]), torch.tensor([[[1, 1]]]), ["a"])
    m.update(torch.tensor([[[1, 1]], [[0, 0]]]), torch.tensor([[[1, 0]], [[0, 1]]]), ["a", "b"])
    per = {k: case_scores(v, ["bg", "fg"]) for k, v in m.compute().items()}
    # case a: truth fg = 3 px, predicted fg = 3 px, overlap 2 -> Dice 2*2/(3+3)
    assert per["a"]["dice_fg"] == pytest.approx(4 / 6)
    assert per["b"]["dice_fg"] == pytest.approx(0.0)
    summary = summarise(per)
    assert summary["dice"] == pytest.approx((4 / 6 + 0) / 2)
    assert summary["dice_std"] == pytest.approx(np.std([4 / 6, 0]))
    assert summary["num_cases"] == 2


def test_binned_roc_counts_and_auc_equal_torchmetrics_also_under_deterministic_algorithms():
    """lightning_modules.roc counts the binned ROC state by sorting instead of comparing every pixel with every
    threshold: the same [T, C, 2, 2] counts and per-class AUC as torchmetrics' MulticlassROC / MulticlassAUROC,
    probabilities exactly on a threshold (0 and 1) included, and it runs under deterministic algorithms
    (``trainer.deterministic=true``) without lifting the flag."""
    import torch
    from torchmetrics.classification import MulticlassAUROC, MulticlassROC

    from lightning_modules.roc import BinnedMulticlassROC

    gen = torch.Generator().manual_seed(0)
    for classes, pixels, bins in ((2, 4096, 200), (3, 20000, 50), (4, 999, 7)):
        p = torch.softmax(3 * torch.randn(pixels, classes, generator=gen), 1)
        p[:8] = torch.nn.functional.one_hot(torch.arange(8) % classes, classes).float()
        t = torch.randint(0, classes, (pixels,), generator=gen)
        ref, ref_auc = MulticlassROC(classes, thresholds=bins), MulticlassAUROC(classes, average=None, thresholds=bins)
        ref.update(p, t), ref_auc.update(p, t)
        mine = BinnedMulticlassROC(classes, thresholds=bins)
        torch.use_deterministic_algorithms(True)
        try:
            mine.update(p[: pixels // 2], t[: pixels // 2]), mine.update(p[pixels // 2:], t[pixels // 2:])
        finally:
            torch.use_deterministic_algorithms(False)
        assert torch.equal(mine.confmat, ref.confmat), classes
        assert torch.equal(mine.auroc(), ref_auc.compute()), classes
        for a, b in zip(mine.compute(), ref.compute()):
            assert torch.equal(a, b)


def test_binned_auc_is_nan_for_a_class_without_positive_pixels():
    """AUC is undefined for a class absent from the test set: NaN (left out of means), not torchmetrics' 0.0."""
    import math

    from lightning_modules.roc import BinnedMulticlassROC

    p = torch.softmax(torch.randn(500, 3, generator=torch.Generator().manual_seed(0)), 1)
    t = torch.arange(500) % 2  # classes 0 and 1 only
    roc = BinnedMulticlassROC(3, thresholds=50)
    roc.update(p, t)
    auc = roc.auroc()
    assert math.isnan(float(auc[2])) and all(0.0 < float(a) < 1.0 for a in auc[:2])

def test_an_epoch_without_a_scored_slice_computes_no_metric_and_reports_no_case(recwarn):
    """fast_dev_run with ``eval_slices: foreground`` can give val/test a batch without foreground: no metric is
    updated, so none is computed (torchmetrics warned 'compute ... called before the update method' for
    PerCaseConfusion and BinnedMulticlassROC); no case, no ROC curve, AUC NaN (not logged), val/dice 0.0 as
    before (the monitor needs the key)."""
    from torch import nn

    from lightning_modules.losses.hybrid import HybridCEDiceLoss
    from lightning_modules.segmentation import SegmentationModule

    class Zero(nn.Module):
        def forward(self, x):
            return torch.cat([x, -x], 1)

    module = SegmentationModule(Zero(), HybridCEDiceLoss(), num_classes=2, eval_slices="foreground")
    logged = {}
    module.log = lambda key, value, **k: logged.__setitem__(key, value)
    batch = {"image": torch.rand(2, 1, 8, 8), "mask": torch.zeros(2, 8, 8, dtype=torch.long), "case_id": ["a", "a"]}
    module.roc_curves["class_1"] = ("stale", "stale")
    for stage, cases, end in (("val", module.val_cases, module.on_validation_epoch_end),
                              ("test", module.test_cases, module.on_test_epoch_end)):
        module._evaluate(batch, stage, cases)
        end()
    assert not [w for w in recwarn if "before the ``update`` method" in str(w.message)], \
        [str(w.message) for w in recwarn]
    assert module.val_summary == {} and module.test_per_case == {} and module.roc_curves == {}
    assert math.isnan(module.test_summary["auc_class_1"]) and module.confusion is None
    assert logged["val/dice"] == 0.0 and not [k for k in logged if k.startswith("test/") and k != "test/loss"]
    # and with a scored slice the metrics are computed as before
    batch["mask"][0, :2, :2] = 1
    module._evaluate(batch, "test", module.test_cases)
    module.on_test_epoch_end()
    assert list(module.test_per_case) == ["a"] and 0.0 <= module.test_summary["auc_class_1"] <= 1.0
    assert set(module.roc_curves) == {"class_1"}


def test_a_test_without_a_scored_pixel_leaves_no_earlier_roc_figure(tmp_path):
    """A test epoch whose ROC got no pixel draws no curve; a test_roc.png from an earlier test in the same run
    dir (the report's HTML page shows it) is removed rather than left to stand for this one."""
    from types import SimpleNamespace

    from callbacks.curves import SegmentationCurves

    (tmp_path / "test_roc.png").write_bytes(b"\x89PNG stale")
    trainer = SimpleNamespace(is_global_zero=True, default_root_dir=str(tmp_path), loggers=[])
    SegmentationCurves().on_test_end(trainer, SimpleNamespace(roc_curves={}, test_summary={}))
    assert not (tmp_path / "test_roc.png").exists()
    module = SimpleNamespace(roc_curves={"liver": ([0.0, 0.5, 1.0], [0.0, 0.8, 1.0])}, test_summary={"auc_liver": 0.8})
    SegmentationCurves().on_test_end(trainer, module)
    assert (tmp_path / "test_roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_auxiliary_losses_are_logged_with_the_batch_size():
    """SegResNetVAE's ``train/vae`` was logged without ``batch_size``, so Lightning guessed it from the batch
    dict and warned "Trying to infer the batch_size from an ambiguous collection" (pancreas_3d, every fit)."""
    from torch import nn

    from lightning_modules.losses.hybrid import HybridCEDiceLoss
    from lightning_modules.segmentation import SegmentationModule

    class WithAux(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 1)

        def forward(self, x):
            return self.conv(x)

        def auxiliary_losses(self):
            return {"vae": self.conv.weight.sum() * 0}

    module = SegmentationModule(WithAux(), HybridCEDiceLoss(), num_classes=2)
    logged = {}
    module.log = lambda key, value, **k: logged.__setitem__(key, k)
    batch = {"image": torch.rand(3, 1, 8, 8), "mask": torch.zeros(3, 8, 8, dtype=torch.long), "case_id": ["a"] * 3}
    module.training_step(batch, 0)
    assert logged["train/vae"]["batch_size"] == 3
    assert logged["train/loss_step"]["batch_size"] == logged["train/loss_epoch"]["batch_size"] == 3
    # train/loss stays in callback_metrics for a callback or scheduler monitoring it, not sent to the loggers
    assert logged["train/loss"]["logger"] is False and logged["train/loss"]["on_epoch"] is True


def test_the_spread_of_one_case_is_not_a_number():
    """Found by a walkthrough: a test set of one volume reported dice_std 0 (a spread of zero, not no spread)."""
    from lightning_modules.metrics import summarise

    one = summarise({"a": {"dice": 0.7}})
    assert one["dice"] == 0.7 and np.isnan(one["dice_std"]) and one["num_cases"] == 1
    assert summarise({"a": {"dice": 0.7}, "b": {"dice": 0.5}})["dice_std"] == pytest.approx(0.1)


def test_the_per_case_table_never_cuts_a_case_name(monkeypatch):
    """Found by a walkthrough: a 3-class 3D run's per-case table showed ``case_0…`` in an 80-column terminal."""
    import io

    from rich.console import Console

    from engine import artifacts

    out = io.StringIO()
    monkeypatch.setattr(artifacts, "console", Console(file=out, width=80))
    scores = {k: 0.5 for k in ("dice", "dice_organ", "dice_tumor", "iou_organ", "iou_tumor", "hd95", "nsd", "rvd")}
    artifacts.print_case_table({"case_00012": scores, "case_00013": scores}, {k: 0.5 for k in scores}, "test")
    assert "case_00012" in out.getvalue() and "case_00013" in out.getvalue()


def test_a_validation_epoch_of_empty_cases_predicted_empty_is_perfect_not_zero():
    """A 3D review: a validation split of tumour-free cases predicted empty logged ``val/dice`` 0.0, as low as one
    full of false positives (its cases' Dice are undefined, NaN), so the checkpoint and early stopping on
    ``val/dice`` ranked the perfect epoch with the worst. Now 1.0 (only a perfect epoch is all NaN); false
    positives still give 0.0. Fails on the old code (0.0 for both)."""
    from torch import nn

    from lightning_modules.losses.hybrid import HybridCEDiceLoss
    from lightning_modules.segmentation import SegmentationModule

    class Fixed(nn.Module):
        def __init__(self, fg):
            super().__init__()
            self.fg = fg

        def forward(self, x):
            logits = torch.zeros(x.shape[0], 2, *x.shape[2:])
            logits[:, 0] = 1.0
            logits[:, 1, :2, :2] = 5.0 if self.fg else -5.0
            return logits

    batch = {"image": torch.rand(2, 1, 8, 8), "mask": torch.zeros(2, 8, 8, dtype=torch.long), "case_id": ["a", "b"]}
    values = {}
    for fg in (False, True):
        module = SegmentationModule(Fixed(fg), HybridCEDiceLoss(), num_classes=2)
        logged = {}
        module.log = lambda key, value, **k: logged.__setitem__(key, value)
        module._evaluate(batch, "val", module.val_cases)
        module.on_validation_epoch_end()
        values[fg] = logged["val/dice"]
        assert module.summary_metrics()["val/dice"] == logged["val/dice"]  # metrics.json says what was monitored
        # and so for each class's (a review: val/dice_<class> was logged 1.0 and written NaN)
        assert module.summary_metrics()["val/dice_class_1"] == logged["val/dice_class_1"]
    assert values == {False: 1.0, True: 0.0}
