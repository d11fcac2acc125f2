"""Image classifiers: the MedMNIST baselines ResNet-18/50 (paper 002, §3.1) and a small CNN.

Constructor keywords are ``in_channels`` and ``num_classes`` (``resolution`` for the ResNets);
``forward(x)`` returns logits ``[B, num_classes]``.

ResNets are torchvision's (``weights=None``: nothing is downloaded). Paper 002 trains them at input
resolution 28 or 224 ("resized from 28"). At 28 the stem follows MedMNIST's reference ``models.py``
(adapted from kuangliu/pytorch-cifar): a 3x3 stride-1 convolution and no max-pool, so the 28x28 image
is not reduced to 7x7 before the first block (used for every ``resolution <= 64``). At 224 the standard ImageNet stem is kept (7x7 stride-2
convolution + max-pool), with the first convolution taking ``in_channels``.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision import models

_RESNETS = {18: models.resnet18, 50: models.resnet50}


class ResNetClassifier(nn.Module):
    """torchvision ResNet-``depth`` with an ``in_channels`` stem adapted to ``resolution`` (see module doc)."""

    def __init__(self, depth: int, in_channels: int = 3, num_classes: int = 2, resolution: int = 28) -> None:
        super().__init__()
        if depth not in _RESNETS:
            raise ValueError(f"ResNet depth must be one of {sorted(_RESNETS)}, got {depth}")
        self.resolution = int(resolution)
        net = _RESNETS[depth](weights=None, num_classes=num_classes)
        if self.resolution <= 64:  # MedMNIST's small-image stem (28x28 inputs)
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        else:  # ImageNet stem for 224 inputs
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResNet18(ResNetClassifier):
    """ResNet-18 baseline of paper 002 (Table 2, "ResNet-18 (28)" / "(224)")."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2, resolution: int = 28) -> None:
        super().__init__(18, in_channels, num_classes, resolution)


class ResNet50(ResNetClassifier):
    """ResNet-50 baseline of paper 002 (Table 2, "ResNet-50 (28)" / "(224)")."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2, resolution: int = 28) -> None:
        super().__init__(50, in_channels, num_classes, resolution)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'batch', 'group' or 'none', got {kind!r}")


class SmallCNN(nn.Module):
    """Three conv blocks (``width``, 2x, 4x channels; ~94k parameters at width 32) + global pool + linear.

    For federated simulations and tests. Works on any input size >= 4 (8x8 digits, 28x28 MedMNIST):
    the first two blocks halve the resolution, the last is pooled globally. ``norm='group'`` avoids
    BatchNorm running statistics, which FedAvg averages poorly under non-IID clients.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, norm: str = "batch",
                 dropout: float = 0.0) -> None:
        super().__init__()
        chans = [in_channels, width, 2 * width, 4 * width]
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=norm == "none"),
                       _norm(norm, chans[i + 1]), nn.ReLU(inplace=True)]
            layers.append(nn.MaxPool2d(2) if i < 2 else nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(chans[-1], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
