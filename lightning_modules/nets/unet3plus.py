"""UNet 3+ (Huang et al., "UNet 3+: A Full-Scale Connected UNet for Medical Image Segmentation",
ICASSP 2020), own implementation following the authors' reference code (``UNet_3Plus_DeepSup``).

* Encoder (Sec. 2.1): 5 levels of two 3x3 conv + BN + ReLU, 2x2 max pooling between levels;
  filters [64, 128, 256, 512, 1024] in the ``paper`` preset.
* Full-scale skip connections (Sec. 2.1, Fig. 2): decoder node ``X_De^i`` aggregates the encoder
  maps of levels ``<= i`` (max-pooled), the decoder maps of levels ``> i`` and the bottom encoder map
  (bilinearly up-sampled); each branch 3x3 conv -> CatChannels (64) + BN + ReLU, concatenation of the
  5 branches, fusion 3x3 conv -> UpChannels (5 x 64 = 320) + BN + ReLU.
* Full-scale deep supervision (Sec. 2.2): a plain 3x3 conv -> ``classes`` on every decoder stage and
  on the bottom encoder stage, bilinearly up-sampled to the input size.  No sigmoid (the loss applies
  it) and no classification-guided module (not used by paper 000).

``paper`` preset at ``in_channels=3, classes=1``: 26,989,637 parameters; without the four auxiliary
heads (the reference ``UNet_3Plus`` without deep supervision) 26,971,777 - the 26.97M paper 000 cites.

Outputs (``head_names``): ``["de0", "de1", "de2", "de3", "en4"]`` - main head (full-resolution decoder
node) first, then the coarser decoder stages, then the bottom encoder stage.  A list is returned only
when ``self.training and self.deep_supervision``; otherwise the main head's tensor.
Any input size works (zero-padded to a multiple of 16, logits cropped back; see ``blocks``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .blocks import (DoubleConv, FullScaleNode, SideHead, crop_to, freeze_side_heads, init_weights,
                     pad_to_multiple, resolve_filters)
from .registry import register_model

__all__ = ["UNet3PlusEncoder", "FullScaleDecoder", "UNet3Plus"]


class UNet3PlusEncoder(nn.Module):
    """Plain U-Net encoder ``X_En^{i,0}``; module paths ``stages.0`` .. ``stages.{L-1}``."""

    def __init__(self, in_channels: int, filters: Sequence[int]) -> None:
        super().__init__()
        chans = [in_channels, *filters]
        self.stages = nn.ModuleList(DoubleConv(chans[i], chans[i + 1]) for i in range(len(filters)))
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, stage in enumerate(self.stages):
            x = stage(x if i == 0 else self.pool(x))
            feats.append(x)
        return feats


class FullScaleDecoder(nn.Module):
    """UNet3+ full-scale decoder over ``len(skip_channels) + 1`` levels.

    Node ``i`` (``nodes.{prefix}{i}``, built from coarse to fine) aggregates ``skips[0..i]``
    (max pooling / same scale), the already computed decoder nodes ``i+1..`` and ``bottom``
    (bilinear up-sampling).  With ``skip_channels = filters[:4]``, ``bottom_channels = filters[4]``
    this is UNet3+'s decoder; D-Net reuses it for its three-layer decoder (2 skips, ``out_channels = cat``) and for its five-layer
    decoder whose level-0/1 skips are the middle-decoder nodes.

    ``forward`` returns the decoder maps ``[de0, de1, ..., de{n-1}]`` (finest first).
    """

    def __init__(self, skip_channels: Sequence[int], bottom_channels: int, cat_channels: int,
                 out_channels: int | None = None, prefix: str = "de") -> None:
        super().__init__()
        self.prefix = prefix
        n = len(skip_channels)
        levels = n + 1
        self.out_channels = levels * cat_channels if out_channels is None else out_channels
        self.nodes = nn.ModuleDict()
        for i in reversed(range(n)):
            coarser = [self.out_channels] * (n - 1 - i) + [bottom_channels]
            self.nodes[f"{prefix}{i}"] = FullScaleNode([*skip_channels[: i + 1], *coarser],
                                                       cat_channels, self.out_channels)

    def forward(self, skips: Sequence[torch.Tensor], bottom: torch.Tensor) -> list[torch.Tensor]:
        n = len(skips)
        decoded: dict[int, torch.Tensor] = {}
        for i in reversed(range(n)):
            coarser = [decoded[k] for k in range(i + 1, n)] + [bottom]
            decoded[i] = self.nodes[f"{self.prefix}{i}"]([*skips[: i + 1], *coarser], skips[i].shape[-2:])
        return [decoded[i] for i in range(n)]


@register_model("unet3plus")
class UNet3Plus(nn.Module):
    """UNet 3+ with full-scale deep supervision (Huang et al. 2020).

    Args:
        in_channels: input image channels.
        classes: output channels (logits).
        preset: ``"paper"`` (filters 64..1024, CatChannels 64), ``"small"`` (16..256) or ``"tiny"`` (8..128).
        width: base channels overriding the preset (filters ``width * 2**i``).
        filters: explicit 5 per-level channel counts (overrides ``width``/``preset``).
        cat_channels: branch width (``CatChannels``); default ``filters[0]`` (64 for ``paper``).
        deep_supervision: return all heads (main first) in training mode.

    Module paths: ``encoder.stages.{0..4}`` (``X_En^i``), ``decoder.nodes.de{3,2,1,0}`` (``X_De^i``,
    each with ``branches.{k}`` and ``fuse``), ``heads.<name>``.
    """

    levels = 5

    def __init__(self, in_channels: int = 3, classes: int = 1, preset: str = "paper",
                 width: int | None = None, filters: Sequence[int] | None = None,
                 cat_channels: int | None = None, deep_supervision: bool = True) -> None:
        super().__init__()
        self.filters = resolve_filters(preset, width, filters, self.levels)
        self.cat_channels = int(cat_channels or self.filters[0])
        self.up_channels = self.levels * self.cat_channels
        self.in_channels, self.classes, self.deep_supervision = in_channels, classes, deep_supervision
        self.size_multiple = 2 ** (self.levels - 1)

        self.encoder = UNet3PlusEncoder(in_channels, self.filters)
        self.decoder = FullScaleDecoder(self.filters[:-1], self.filters[-1], self.cat_channels,
                                        self.up_channels)
        self.head_names: list[str] = [f"de{i}" for i in range(self.levels - 1)] + [f"en{self.levels - 1}"]
        self.heads = nn.ModuleDict(
            {name: SideHead(self.up_channels, classes, 3) for name in self.head_names[:-1]})
        self.heads[self.head_names[-1]] = SideHead(self.filters[-1], classes, 3)
        init_weights(self)
        freeze_side_heads(self.heads, "de0", deep_supervision)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x, size = pad_to_multiple(x, self.size_multiple)
        full = x.shape[-2:]
        feats = self.encoder(x)
        decoded = self.decoder(feats[:-1], feats[-1])
        if not (self.training and self.deep_supervision):
            return crop_to(self.heads["de0"](decoded[0], full), size)
        maps = [*decoded, feats[-1]]
        return [crop_to(self.heads[name](m, full), size) for name, m in zip(self.head_names, maps)]
