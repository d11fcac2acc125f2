"""Whole-volume inference: MONAI sliding windows (Gaussian weighting), mirror TTA, checkpoint ensembles.

nnU-Net's inference recipe (Isensee et al. 2021, §"Inference"): a sliding window with Gaussian importance
weighting and overlap, test-time mirroring along the spatial axes, and the softmax averaged over the
models of an ensemble. Here the sliding window is MONAI's ``sliding_window_inference``; 2D nets see a
volume as its stack of axial slices (each slice is one window unless ``roi_size`` is smaller), 3D nets
see the whole ``[C, H, W, D]`` volume in ``roi_size`` patches.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from lightning_modules.losses.hybrid import class_probabilities


def main_head(out):
    """The main segmentation head of a net's output (deep supervision lists, (seg, aux) tuples)."""
    return out[0] if isinstance(out, (list, tuple)) else out


def mirror_sets(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``axes`` (the empty one = no flip): nnU-Net's mirroring TTA."""
    axes = list(axes)
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


class VolumePredictor:
    """Class probabilities of a volume from one or several nets (mean of probabilities).

    Args:
        nets: networks in eval mode, all predicting the same classes.
        spatial_dims: 2 (slice nets, input ``[D, C, H, W]``) or 3 (input ``[C, H, W, D]``).
        roi_size: window size; ``None`` = the whole slice (2D) -- required for 3D.
        overlap: fraction of overlap between windows (nnU-Net: 0.5).
        mode: ``gaussian`` (nnU-Net) or ``constant`` window weighting.
        mirror_axes: spatial axes (0-based, of the slice or volume) to mirror for TTA; ``()`` = none.
        batch_size: slices per forward (2D) or windows per forward (3D).
        pad_value: what windows past the volume's edge are filled with -- the datamodule's ``fill_value()``,
            as training padded; ``None`` = the volume's lowest value.

    Overlapping windows blend logits and the softmax comes after (nnU-Net v2; as the test's sliding window in
    :meth:`SegmentationModule.forward_eval`, so predict reproduces the test's labels); mirrors and models are
    averaged as probabilities. A review found probabilities blended here and logits in test (7 of 4800 voxels
    labelled differently on a toy volume).
    """

    def __init__(self, nets: Sequence[nn.Module], spatial_dims: int = 2, roi_size: Sequence[int] | None = None,
                 overlap: float = 0.5, mode: str = "gaussian", mirror_axes: Sequence[int] = (),
                 batch_size: int = 16, device: torch.device | str = "cpu", pad_value: float | None = None) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if spatial_dims == 3 and roi_size is None:
            raise ValueError("a 3D net needs roi_size (its training patch size)")
        if roi_size is not None:
            try:
                sizes = [int(r) for r in roi_size]
            except (TypeError, ValueError):
                sizes = []
            if len(sizes) != spatial_dims or min(sizes) <= 0 or sizes != [float(r) for r in roi_size]:
                raise ValueError(f"roi_size={list(roi_size) if isinstance(roi_size, Sequence) else roi_size!r} "
                                 f"must be {spatial_dims} positive whole sizes, one per spatial axis of the net")
        if mode not in ("gaussian", "constant"):
            raise ValueError(f"mode={mode!r} must be gaussian or constant (how overlapping windows are blended)")
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        bad = [a for a in mirror_axes if not 0 <= int(a) < spatial_dims]
        if bad:
            raise ValueError(f"mirror_axes {list(mirror_axes)} must be spatial axes in [0, {spatial_dims - 1}]")
        self.nets, self.spatial_dims = list(nets), spatial_dims
        self.roi_size = None if roi_size is None else tuple(int(r) for r in roi_size)
        self.overlap, self.mode, self.batch_size = float(overlap), mode, int(batch_size)
        self.flips = mirror_sets(int(a) for a in mirror_axes)
        self.device = torch.device(device)
        self.pad_value = None if pad_value is None else float(pad_value)

    def _window(self, x: torch.Tensor, net: nn.Module, roi: Sequence[int], sw_batch: int,
                home: torch.device) -> torch.Tensor:
        """Sliding-window class probabilities, windows run where ``x`` is, stitched on ``home``."""
        from monai.inferers import sliding_window_inference  # heavy import, only when predicting

        def predictor(patch: torch.Tensor) -> torch.Tensor:
            return main_head(net(patch)).float()

        cval = float(x.min()) if self.pad_value is None else self.pad_value
        total = None
        for flip in self.flips:
            dims = [d + 2 for d in flip]
            xi = torch.flip(x, dims) if dims else x
            logits = sliding_window_inference(xi, roi, sw_batch, predictor, overlap=self.overlap, mode=self.mode,
                                              padding_mode="constant", cval=cval, device=home)
            prob = class_probabilities(logits)
            prob = torch.flip(prob, dims) if dims else prob
            total = prob if total is None else total + prob
        return total / len(self.flips)

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor, on_device: bool = False) -> torch.Tensor:
        """``[D, C, H, W]`` slices -> ``[D, K, H, W]`` (2D); ``[C, H, W, D]`` -> ``[K, H, W, D]`` (3D); stitched
        on the CPU (the volume's probabilities never all on the device), or ``on_device`` where the nets ran (what
        comes next runs there too)."""
        home = self.device if on_device else torch.device("cpu")
        total = None
        for net in self.nets:
            if self.spatial_dims == 3:
                prob = self._window(x[None].to(self.device), net, self.roi_size, self.batch_size, home)[0]
            else:
                roi = self.roi_size or tuple(x.shape[-2:])
                chunks = [self._window(x[s:s + self.batch_size].to(self.device), net, roi, self.batch_size, home)
                          for s in range(0, len(x), self.batch_size)]
                prob = torch.cat(chunks)
            total = prob if total is None else total + prob
        return total / len(self.nets)

    @staticmethod
    def labels(prob: torch.Tensor, threshold: float | None = None, class_dim: int = 1) -> torch.Tensor:
        """Arg-max labels, or P(foreground) > ``threshold`` for a binary net trained with one."""
        if threshold is not None and prob.shape[class_dim] == 2:
            return (prob.select(class_dim, 1) > threshold).long()
        return prob.argmax(class_dim)
