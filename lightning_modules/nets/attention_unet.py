"""Attention U-Net (Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas", MIDL 2018),
own implementation.

* Encoder: U-Net VGG blocks (two 3x3 conv + BN + ReLU), filters [64, 128, 256, 512, 1024] in the
  ``paper`` preset, 2x2 max pooling.
* Additive attention gates on the skips (Oktay et al. Sec. 2, Eq. 1-2, Fig. 2, grid attention as in the
  authors' code): the skip ``x`` (level ``i``) is projected by a 2x2 stride-2 conv ``W_x`` to the grid of
  the gating signal ``g`` (the coarser decoder feature, level ``i+1``), ``g`` by a 1x1 conv ``W_g``;
  ``alpha = sigmoid(psi(relu(W_x x + W_g g)))`` with ``psi`` a 1x1 conv to one channel, bilinearly
  resampled to ``x``'s grid; the gate output is ``W(alpha * x)`` with ``W`` a 1x1 conv + BN.
  Intermediate channels ``F_int = F_l / 2``.
* Decoder step: bilinear up-sampling of ``g`` + 3x3 conv -> ``F_l`` + BN + ReLU, concatenation with
  the gated skip, VGG block ``2 F_l -> F_l``; final 1x1 conv -> ``classes`` (logits, no activation).

No deep supervision (single output).  ``paper`` preset at ``in_channels=3, classes=1``: 35,923,525
parameters (the plain U-Net part 34,527,041, gates 1,396,484; paper 000 cites 39.45M for its Attention
U-Net).  Module paths: ``encoder.stages.{0..4}``, ``ups.{k}``, ``gates.{k}``, ``decoders.{k}`` for
``k = 0..3`` from coarse to fine (``k = 0`` produces level 3), ``head``.
Any input size works (zero-padded to a multiple of 16, logits cropped back).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import ConvBNReLU, DoubleConv, crop_to, init_weights, pad_to_multiple, resolve_filters
from .registry import register_model
from .unet3plus import UNet3PlusEncoder

__all__ = ["AttentionGate", "AttentionUNet"]


class AttentionGate(nn.Module):
    """Additive grid attention gate (Oktay et al. 2018, Eq. 1-2)."""

    def __init__(self, skip_channels: int, gate_channels: int, inter_channels: int | None = None) -> None:
        super().__init__()
        inter = inter_channels or max(1, skip_channels // 2)
        self.theta = nn.Conv2d(skip_channels, inter, kernel_size=2, stride=2, bias=False)  # W_x
        self.phi = nn.Conv2d(gate_channels, inter, kernel_size=1)                          # W_g
        self.psi = nn.Conv2d(inter, 1, kernel_size=1)
        self.out = nn.Sequential(nn.Conv2d(skip_channels, skip_channels, 1), nn.BatchNorm2d(skip_channels))

    def attention(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Attention coefficients ``alpha`` in [0, 1], shape ``[B, 1, H_x, W_x]``."""
        theta = self.theta(x)
        phi = F.interpolate(self.phi(g), size=theta.shape[-2:], mode="bilinear", align_corners=False)
        alpha = torch.sigmoid(self.psi(F.relu(theta + phi)))
        return F.interpolate(alpha, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self.out(self.attention(x, g) * x)


@register_model("attention_unet")
class AttentionUNet(nn.Module):
    """Attention U-Net.

    Args:
        in_channels: input image channels.
        classes: output channels (logits).
        preset: ``"paper"`` (64..1024), ``"small"`` (16..256) or ``"tiny"`` (8..128).
        width: base channels overriding the preset.
        filters: explicit 5 per-level channel counts (overrides ``width``/``preset``).
    """

    levels = 5

    def __init__(self, in_channels: int = 3, classes: int = 1, preset: str = "paper",
                 width: int | None = None, filters: Sequence[int] | None = None) -> None:
        super().__init__()
        self.filters = f = resolve_filters(preset, width, filters, self.levels)
        self.in_channels, self.classes = in_channels, classes
        self.size_multiple = 2 ** (self.levels - 1)
        self.encoder = UNet3PlusEncoder(in_channels, f)
        coarse_to_fine = list(reversed(range(self.levels - 1)))  # skip levels 3, 2, 1, 0
        self.gates = nn.ModuleList(AttentionGate(f[i], f[i + 1]) for i in coarse_to_fine)
        self.ups = nn.ModuleList(ConvBNReLU(f[i + 1], f[i]) for i in coarse_to_fine)
        self.decoders = nn.ModuleList(DoubleConv(2 * f[i], f[i]) for i in coarse_to_fine)
        self.head = nn.Conv2d(f[0], classes, kernel_size=1)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, size = pad_to_multiple(x, self.size_multiple)
        feats = self.encoder(x)
        d = feats[-1]
        for k, (gate, up, dec) in enumerate(zip(self.gates, self.ups, self.decoders)):
            skip = feats[-2 - k]
            gated = gate(skip, d)
            d = up(F.interpolate(d, size=skip.shape[-2:], mode="bilinear", align_corners=False))
            d = dec(torch.cat([gated, d], dim=1))
        return crop_to(self.head(d), size)
