"""Nested U-Net / UNet++ (Zhou et al., "UNet++: A Nested U-Net Architecture for Medical Image
Segmentation", DLMIA 2018), from scratch; the HLFD teacher of paper 001 (Sec. 3, "UNet++ ... 36.1M").

Node ``X^{i,j}`` (module ``conv{i}_{j}``) is a VGG block (two 3x3 conv + BN + ReLU) over the
concatenation of ``X^{i,0..j-1}`` (dense skip pathway, Zhou et al. Sec. 2, Eq. 1) and the bilinearly
up-sampled ``X^{i+1,j-1}``; ``X^{i,0}`` is the encoder (2x2 max pooling between levels).  Filters
[64, 128, 256, 512, 1024] in the ``paper`` preset.  Deep supervision (Sec. 2, "Deep supervision"):
1x1 conv heads ``final1..final4`` on ``X^{0,1..4}``.

Stable module paths for feature hooks (distillation): encoder ``conv0_0``, ``conv1_0``, ``conv2_0``,
``conv3_0``, ``conv4_0``; nested nodes ``conv{i}_{j}`` (i + j <= 4), decoder output ``conv0_4``;
heads ``final1``..``final4`` (all four always exist, so checkpoints do not depend on the flag).

Outputs (``head_names``): ``["x0_4", "x0_1", "x0_2", "x0_3"]`` (module ``final4``, ``final1``, ...) - the
main head ``X^{0,4}`` first.  A list only when ``self.training and self.deep_supervision``, else the
main head's tensor.  ``paper`` preset at ``in_channels=1, classes=2``: 36,628,936 parameters (paper 001
reports 36.1M).  Any input size works (zero-padded to a multiple of 16, logits cropped back).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import DoubleConv, crop_to, freeze_side_heads, init_weights, pad_to_multiple, resolve_filters
from .registry import register_model

__all__ = ["NestedUNet"]


@register_model("nested_unet")
class NestedUNet(nn.Module):
    """UNet++ with optional deep supervision.

    Args:
        in_channels: input image channels.
        classes: output channels (logits).
        preset: ``"paper"`` (64..1024), ``"small"`` (16..256) or ``"tiny"`` (8..128).
        width: base channels overriding the preset.
        filters: explicit 5 per-level channel counts (overrides ``width``/``preset``).
        deep_supervision: return the four heads (main ``X^{0,4}`` first) in training mode.
    """

    levels = 5

    def __init__(self, in_channels: int = 3, classes: int = 1, preset: str = "paper",
                 width: int | None = None, filters: Sequence[int] | None = None,
                 deep_supervision: bool = True) -> None:
        super().__init__()
        self.filters = f = resolve_filters(preset, width, filters, self.levels)
        self.in_channels, self.classes, self.deep_supervision = in_channels, classes, deep_supervision
        self.size_multiple = 2 ** (self.levels - 1)
        self.pool = nn.MaxPool2d(2, 2)
        for i in range(self.levels):
            for j in range(self.levels - i):
                # X^{i,0}: previous level (or the image); X^{i,j}: j same-level maps + up-sampled X^{i+1,j-1}
                cin = (in_channels if i == 0 else f[i - 1]) if j == 0 else j * f[i] + f[i + 1]
                self.add_module(f"conv{i}_{j}", DoubleConv(cin, f[i]))
        for j in range(1, self.levels):
            self.add_module(f"final{j}", nn.Conv2d(f[0], classes, kernel_size=1))
        n = self.levels - 1
        self.head_names: list[str] = [f"x0_{n}"] + [f"x0_{j}" for j in range(1, n)]
        init_weights(self)
        freeze_side_heads({f"final{j}": getattr(self, f"final{j}") for j in range(1, n + 1)}, f"final{n}",
                          deep_supervision)

    @staticmethod
    def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x, size = pad_to_multiple(x, self.size_multiple)
        L = self.levels
        nodes: dict[tuple[int, int], torch.Tensor] = {}
        # column by column (anti-diagonals): X^{i,0} ... then each X^{i,j} once its inputs exist
        for k in range(L):
            nodes[k, 0] = getattr(self, f"conv{k}_0")(x if k == 0 else self.pool(nodes[k - 1, 0]))
            for j in range(1, k + 1):
                i = k - j
                inputs = [nodes[i, t] for t in range(j)] + [self._up(nodes[i + 1, j - 1], nodes[i, 0])]
                nodes[i, j] = getattr(self, f"conv{i}_{j}")(torch.cat(inputs, dim=1))
        n = L - 1
        if not (self.training and self.deep_supervision):
            return crop_to(getattr(self, f"final{n}")(nodes[0, n]), size)
        order = [n, *range(1, n)]
        return [crop_to(getattr(self, f"final{j}")(nodes[0, j]), size) for j in order]
