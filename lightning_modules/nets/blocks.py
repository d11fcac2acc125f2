"""Shared building blocks of the own segmentation nets (UNet3+, D-Net, Attention U-Net, UNet++).

* :class:`ConvBNReLU` / :class:`DoubleConv` - the conv units of U-Net / UNet3+ / UNet++
  (``unetConv2`` and ``VGGBlock`` in the reference code; conv bias kept as in the references so the
  parameter counts match the published ones).
* :class:`FullScaleNode` - one UNet3+ decoder node (Huang et al. 2020, Sec. 2.1, Fig. 2): every source
  map is resampled to the node's scale (non-overlapping max pooling from finer maps, bilinear
  up-sampling from coarser maps), passed through a 3x3 conv -> ``cat_channels`` + BN + ReLU, the
  branches are concatenated and fused by a 3x3 conv -> ``out_channels`` + BN + ReLU.
* :class:`SideHead` - a deep-supervision head (conv -> ``classes`` then bilinear up-sampling to the
  input size); 3x3 for UNet3+'s full-scale supervision, 1x1 for UNet++-style heads.
* :func:`freeze_side_heads` - side heads frozen when deep supervision is off.
* :func:`resolve_filters`, :func:`pad_to_multiple`, :func:`crop_to` - width presets and the input-size
  policy shared by all own nets.

Input-size policy: the own nets accept any ``H, W``.  Inputs are zero-padded (bottom/right) to the
next multiple of ``2 ** (levels - 1)`` (16 for the 5-level nets) and the logits are cropped back, so
outputs always have the input resolution.  Inputs already divisible are untouched.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from lightning_modules.errors import ConfigError

__all__ = [
    "PRESETS", "resolve_filters", "pad_to_multiple", "crop_to", "resample",
    "ConvBNReLU", "DoubleConv", "FullScaleNode", "SideHead", "freeze_side_heads", "init_weights",
]

#: base width (channels of the first level) per preset; filters double per level.
PRESETS: dict[str, int] = {"paper": 64, "small": 16, "tiny": 8}


def resolve_filters(preset: str = "paper", width: int | None = None,
                    filters: Sequence[int] | None = None, levels: int = 5) -> list[int]:
    """Per-level channel counts.

    Priority: explicit ``filters`` > ``width`` (base channels, doubled per level) > ``preset``
    (``"paper"`` = [64, 128, 256, 512, 1024]; ``"small"`` = 16..256; ``"tiny"`` = 8..128).
    """
    if filters is not None:
        out = [int(f) for f in filters]
        if len(out) != levels or min(out) < 1:
            raise ValueError(f"filters must be {levels} positive ints, got {list(filters)}")
        return out
    if preset not in PRESETS:  # checked even when width wins, so a typo is never silently ignored
        raise ConfigError(f"model.preset={preset!r} is not one of {sorted(PRESETS)}")
    if width is None:
        width = PRESETS[preset]
    if int(width) < 1:
        raise ConfigError(f"model.width={width} must be >= 1")
    return [int(width) * 2 ** i for i in range(levels)]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad ``x`` at the bottom/right so H and W are multiples of ``multiple``.

    Returns the padded tensor and the original ``(H, W)`` for :func:`crop_to`.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    return x, (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop the bottom/right padding added by :func:`pad_to_multiple`."""
    h, w = size
    if x.shape[-2:] == (h, w):
        return x
    return x[..., :h, :w]


#: the most elements one bilinear up-sampling writes at once: CUDA's backward of a larger one stopped with
#: "invalid argument" (UNet3+/D-Net at paper width, 512², batch 8: 8 x 1024 x 512² = 2^31 elements from the
#: deepest encoder map; torch 2.11 on an H200, docs/benchmarks.md "GPU")
MAX_UPSAMPLE_NUMEL = 2**30


def resample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bring ``x`` to spatial ``size``: non-overlapping max pooling when shrinking (UNet3+'s
    inter encoder-decoder skips), bilinear interpolation when enlarging (intra-decoder skips). An
    up-sampling of more than :data:`MAX_UPSAMPLE_NUMEL` output elements runs in chunks of (sample, channel)
    planes written into one preallocated output (each plane is interpolated on its own: the same values, to
    float rounding; CUDA's bilinear backward fails at 2^31 elements, docs/benchmarks.md "GPU")."""
    h, w = x.shape[-2:]
    th, tw = int(size[0]), int(size[1])
    if (h, w) == (th, tw):
        return x
    if h >= th and w >= tw:
        k = (h // th, w // tw)
        return F.max_pool2d(x, kernel_size=k, stride=k, ceil_mode=True)
    n, c = x.shape[:2]
    if n * c * th * tw <= MAX_UPSAMPLE_NUMEL:
        return F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False)
    planes = x.reshape(n * c, 1, h, w)  # every (sample, channel) plane is interpolated on its own
    step = max(1, MAX_UPSAMPLE_NUMEL // (th * tw))
    # written chunk by chunk: the forward holds the output and one chunk, not twice the output (torch.cat); the
    # backward of each slice write takes one output-sized gradient, freed before the next. Measured on an H200
    # (D-Net, paper width, 512², batch 8): peak 66,298 MiB fp32, twice batch 4's (docs/benchmarks.md "GPU")
    out = None
    for start in range(0, n * c, step):
        part = F.interpolate(planes[start:start + step], size=(th, tw), mode="bilinear", align_corners=False)
        if out is None:  # the chunk's dtype: autocast may have changed it
            out = part.new_empty((n * c, 1, th, tw))
        out[start:start + step] = part
    return out.reshape(n, c, th, tw)


class ConvBNReLU(nn.Sequential):
    """``kxk conv (bias) -> BatchNorm -> ReLU``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """Two :class:`ConvBNReLU` (U-Net's / UNet++'s VGG block)."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None) -> None:
        mid = out_channels if mid_channels is None else mid_channels
        super().__init__(ConvBNReLU(in_channels, mid), ConvBNReLU(mid, out_channels))


class FullScaleNode(nn.Module):
    """UNet3+ full-scale aggregation node (Huang et al. 2020, Sec. 2.1).

    Args:
        in_channels: channels of each source map, in the order they are passed to ``forward``.
        cat_channels: output channels of each branch conv (UNet3+ ``CatChannels``, 64 in the paper).
        out_channels: channels of the fusion conv (UNet3+ ``UpChannels`` = sources x cat = 320).
    """

    def __init__(self, in_channels: Sequence[int], cat_channels: int, out_channels: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(ConvBNReLU(c, cat_channels) for c in in_channels)
        self.fuse = ConvBNReLU(len(in_channels) * cat_channels, out_channels)

    def forward(self, sources: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        if len(sources) != len(self.branches):
            raise ValueError(f"expected {len(self.branches)} source maps, got {len(sources)}")
        feats = [branch(resample(s, size)) for branch, s in zip(self.branches, sources)]
        return self.fuse(torch.cat(feats, dim=1))


class SideHead(nn.Module):
    """Segmentation head: ``kxk conv -> classes`` then bilinear up-sampling to ``size`` (no activation)."""

    def __init__(self, in_channels: int, classes: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, classes, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        x = self.conv(x)
        if size is not None and tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        return x


def freeze_side_heads(heads: Mapping[str, nn.Module], main: str, deep_supervision: bool) -> None:
    """Without deep supervision the side heads (all but ``main``) never reach the loss: frozen, so DDP (no
    unused parameters) can train the net (a review: the second step failed) and the trainable count is what
    trains."""
    for name, head in heads.items():
        head.requires_grad_(deep_supervision or name == main)


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal conv weights, zero biases, BN (1, 0) - as in the UNet3+ reference code."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
