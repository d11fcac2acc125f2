"""D-Net / D-UNet (paper 000, Sec. 4.2 "Image Segmentation Model", Fig. 1), built from UNet3+ blocks.

Stated interpretation (the paper's text is short and partly ambiguous; this is the reading implemented):

* **Shared encoder** - the UNet3+ encoder, five levels ``X_En^{0..4,0}`` (filters 64..1024 in the
  ``paper`` preset), shared by two decoders (Sec. 4.2 (2)).
* **Three-layer ("middle") decoder** over encoder levels 0..2 (Sec. 4.2 A, first paragraph)::

      X_Me^{1,1} = agg(maxpool X_En^{0,0}, X_En^{1,0}, up2 X_En^{2,0})
      X_Me^{0,1} = agg(X_En^{0,0}, up2 X_Me^{1,1}, up4 X_En^{2,0})

  each branch 3x3 conv -> Cat (64) + BN + ReLU; the aggregation that "unif[ies] the number of channels,
  as well as reduce[s] the superfluous information" is a 3x3 conv -> **Cat (64)** channels + BN + ReLU.
  Choosing Cat rather than 3 x Cat output channels is what keeps D-Net only ~0.66M larger than UNet3+,
  as the paper reports.  This is UNet3+'s :class:`FullScaleDecoder` over three levels.
* **Five-layer ("deep") decoder** (Sec. 4.2 A, second paragraph) - UNet3+'s decoder except that its
  low-level skips for levels 0 and 1 come from ``X_Me^{0,1}`` and ``X_Me^{1,1}`` instead of the encoder,
  e.g. ``X_De^{2,1} = agg(maxpool X_Me^{0,1}, maxpool X_Me^{1,1}, X_En^{2,0}, up X_De^{3,1}, up X_En^{4,0})``
  with 64-filter 3x3 branches and a 320-filter 3x3 + BN + ReLU aggregation.
* **Double deep supervision** (Sec. 4.2 B): (1) UNet3+-style full-scale heads - plain 3x3 conv ->
  ``classes`` + bilinear up-sampling - on every non-full-resolution decoder stage ``X_Me^{1,1}``,
  ``X_De^{1,1}``, ``X_De^{2,1}``, ``X_De^{3,1}`` and ``X_En^{4,0}``; (2) UNet++-style 1x1 conv heads with C
  kernels on the two full-resolution nodes ``X_Me^{0,1}`` and ``X_Me^{0,2}``, the latter read as the
  five-layer decoder's full-resolution output ``X_De^{0,1}`` (the second nested output in UNet++
  notation).  The 1x1 head on ``X_De^{0,1}`` is the main head (used at inference).
  No sigmoid/softmax in the net: the hybrid loss (paper 000 Eq. 1-2) applies it.

Outputs (``head_names``), main head first, then the middle decoder's full-resolution 1x1 head, then the
full-scale heads from fine to coarse (middle before deep decoder at equal scale)::

    ["de0", "me0", "me1", "de1", "de2", "de3", "en4"]

A list is returned only when ``self.training and self.deep_supervision``; otherwise the main head's
tensor.  ``paper`` preset at ``in_channels=3, classes=1``: 27,579,079 parameters (paper: 27.63M, -0.2%);
that is 0.59M more than UNet3+ counted alike (both with their side heads, 26,989,637, or both without:
27,560,577 against 26,971,777; the paper reports +0.66M).
Any input size works (zero-padded to a multiple of 16, logits cropped back).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .blocks import SideHead, crop_to, freeze_side_heads, init_weights, pad_to_multiple, resolve_filters
from .registry import register_model
from .unet3plus import FullScaleDecoder, UNet3PlusEncoder

__all__ = ["DNet"]


@register_model("dnet")
class DNet(nn.Module):
    """D-Net (paper 000, Sec. 4.2): UNet3+ encoder shared by a 3-layer and a 5-layer full-scale decoder.

    Args:
        in_channels: input image channels.
        classes: output channels (logits).
        preset: ``"paper"`` (filters 64..1024, Cat 64, Up 320), ``"small"`` or ``"tiny"``.
        width: base channels overriding the preset (filters ``width * 2**i``).
        filters: explicit 5 per-level channel counts (overrides ``width``/``preset``).
        cat_channels: branch / middle-decoder width; default ``filters[0]``.
        deep_supervision: return all 7 heads (main first) in training mode.

    Module paths: ``encoder.stages.{0..4}`` (``X_En^{i,0}``), ``middle.nodes.me{1,0}``
    (``X_Me^{i,1}``), ``deep.nodes.de{3,2,1,0}`` (``X_De^{i,1}``), ``heads.<name>``.
    """

    levels = 5
    middle_levels = 3

    def __init__(self, in_channels: int = 3, classes: int = 1, preset: str = "paper",
                 width: int | None = None, filters: Sequence[int] | None = None,
                 cat_channels: int | None = None, deep_supervision: bool = True) -> None:
        super().__init__()
        self.filters = f = resolve_filters(preset, width, filters, self.levels)
        self.cat_channels = cat = int(cat_channels or f[0])
        self.up_channels = up = self.levels * cat
        self.in_channels, self.classes, self.deep_supervision = in_channels, classes, deep_supervision
        self.size_multiple = 2 ** (self.levels - 1)
        m = self.middle_levels

        self.encoder = UNet3PlusEncoder(in_channels, f)
        # three-layer decoder: skips X_En^{0,0}, X_En^{1,0}; "bottom" X_En^{2,0}; nodes named me1, me0
        self.middle = FullScaleDecoder(f[: m - 1], f[m - 1], cat, out_channels=cat, prefix="me")
        # five-layer decoder: level-0/1 skips are X_Me^{0,1}, X_Me^{1,1}
        self.deep = FullScaleDecoder([cat] * (m - 1) + f[m - 1: -1], f[-1], cat, out_channels=up)

        self.head_names: list[str] = (["de0", "me0"] + [f"me{i}" for i in range(1, m - 1)]
                                      + [f"de{i}" for i in range(1, self.levels - 1)]
                                      + [f"en{self.levels - 1}"])
        self.heads = nn.ModuleDict({
            "de0": SideHead(up, classes, 1),     # UNet++-style on X_De^{0,1} ("X_Me^{0,2}"), main head
            "me0": SideHead(cat, classes, 1),    # UNet++-style on X_Me^{0,1}
            **{f"me{i}": SideHead(cat, classes, 3) for i in range(1, m - 1)},
            **{f"de{i}": SideHead(up, classes, 3) for i in range(1, self.levels - 1)},
            f"en{self.levels - 1}": SideHead(f[-1], classes, 3),
        })
        init_weights(self)
        freeze_side_heads(self.heads, "de0", deep_supervision)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x, size = pad_to_multiple(x, self.size_multiple)
        full = x.shape[-2:]
        enc = self.encoder(x)
        m = self.middle_levels
        me = self.middle(enc[: m - 1], enc[m - 1])
        de = self.deep([*me, *enc[m - 1: -1]], enc[-1])
        if not (self.training and self.deep_supervision):
            return crop_to(self.heads["de0"](de[0], full), size)
        maps = {f"en{self.levels - 1}": enc[-1], **{f"me{i}": t for i, t in enumerate(me)},
                **{f"de{i}": t for i, t in enumerate(de)}}
        return [crop_to(self.heads[name](maps[name], full), size) for name in self.head_names]
