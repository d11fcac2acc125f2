"""SegmentationOverlays picks each case's slice by ground-truth area during testing and runs the net
once per figure, on the chosen slices only, at the end of the test epoch."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from callbacks.overlays import SegmentationOverlays
from lightning_modules.losses.hybrid import HybridCEDiceLoss
from lightning_modules.segmentation import SegmentationModule


class CountingThreshold(nn.Module):
    """A fixed 'net' (class-1 logit = image - 0.5) that records the batch size of every forward call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return torch.cat([torch.zeros_like(x), (x - 0.5) * 8], dim=1)


def _batches(sizes=((32, 32),) * 6, cases=("a", "b", "c", "d", "e"), per_batch=3, seed=0):
    """Test batches whose slices cycle through ``cases``; each case's slices have different mask areas."""
    g = torch.Generator().manual_seed(seed)
    out, k = [], 0
    for h, w in sizes:
        ids = [cases[(k + j) % len(cases)] for j in range(per_batch)]
        k += per_batch
        image = torch.rand(per_batch, 1, h, w, generator=g)
        mask = (torch.rand(per_batch, h, w, generator=g) > torch.rand(per_batch, 1, 1, generator=g)).long()
        out.append({"image": image, "mask": mask, "case_id": ids})
    return out


def _run(callback, module, batches, tmp_path):
    trainer = SimpleNamespace(default_root_dir=str(tmp_path), loggers=[], is_global_zero=True)
    module.eval()
    callback.on_test_epoch_start(trainer, module)
    for i, b in enumerate(batches):
        callback.on_test_batch_end(trainer, module, None, b, i)
    callback.on_test_epoch_end(trainer, module)
    return tmp_path / callback.filename


def test_net_runs_once_per_figure_on_the_largest_slices(tmp_path):
    net = CountingThreshold()
    module = SegmentationModule(net, HybridCEDiceLoss(), num_classes=2)
    batches = _batches()
    callback = SegmentationOverlays(num_cases=4)
    png = _run(callback, module, batches, tmp_path)
    assert png.stat().st_size > 1000
    assert net.calls == [4], net.calls  # one forward pass, on the four chosen slices; none per test batch

    # the chosen slice of each of the first four cases is its largest ground-truth foreground
    slices = [(c, b["image"][i], b["mask"][i]) for b in batches for i, c in enumerate(b["case_id"])]
    assert sorted(callback._best) == ["a", "b", "c", "d"]
    for case, (area, image, mask, pad) in callback._best.items():
        assert pad is None  # 2D slices: no sliding window, nothing to pad
        best = max(((int(m.sum()), im, m) for c, im, m in slices if c == case), key=lambda s: s[0])
        assert area == best[0] and torch.equal(image, best[1]) and np.array_equal(mask, best[2].numpy())
    preds = callback._predict(module, sorted(callback._best))
    for case, (_, image, _, _) in callback._best.items():
        assert np.array_equal(preds[case], (image[0] > 0.5).numpy())


def test_mixed_size_slices_one_pass_per_size(tmp_path):
    net = CountingThreshold()
    module = SegmentationModule(net, HybridCEDiceLoss(), num_classes=2)
    batches = _batches(sizes=((32, 32), (64, 32), (32, 32), (64, 32)), cases=("a", "b"), per_batch=1)
    png = _run(SegmentationOverlays(num_cases=4), module, batches, tmp_path)
    assert png.stat().st_size > 1000
    assert sorted(net.calls) == [1, 1], net.calls  # 'a' (32x32) and 'b' (64x32): one pass per image size
