"""ResNet-18 segmentation student for HLFD distillation (paper 001, Sec. 3: "ResNet18 (11.6M
parameters) as the student network").

A thin wrapper around segmentation-models-pytorch: ResNet-18 encoder (He et al. 2016) with a LinkNet
decoder (Chaurasia & Culurciello 2017) by default - 11,657,538 parameters at ``in_channels=1,
classes=2`` (``decoder="unet"`` gives smp's U-Net decoder, ~14.3M).  No pretrained weights unless
``encoder_weights`` is given explicitly (nothing is downloaded by default).

Stable module paths (documented for feature hooks): ``encoder.conv1``, ``encoder.bn1``,
``encoder.layer1`` .. ``encoder.layer4`` (strides 4, 8, 16, 32; channels 64, 128, 256, 512), ``decoder``
(``decoder.blocks.{0..4}`` for LinkNet), ``segmentation_head``.  See :attr:`ResNet18Student.stage_names`.

Input size: any ``H, W``; zero-padded to a multiple of 32 (the encoder's output stride) and the logits
cropped back, so ``forward`` returns ``[B, classes, H, W]`` logits (no activation).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .blocks import crop_to, pad_to_multiple
from .registry import register_model

__all__ = ["ResNet18Student"]


@register_model("resnet18_student")
class ResNet18Student(nn.Module):
    """ResNet-18 encoder + LinkNet (or U-Net) decoder from smp, following the nets' I/O contract.

    Args:
        in_channels: input image channels.
        classes: output channels (logits).
        decoder: ``"linknet"`` (default, ~11.5M parameters) or ``"unet"``.
        encoder_weights: smp encoder weights name (e.g. ``"imagenet"``); ``None`` = random init.
    """

    stage_names: tuple[str, ...] = ("encoder.layer1", "encoder.layer2", "encoder.layer3", "encoder.layer4")
    size_multiple = 32

    def __init__(self, in_channels: int = 1, classes: int = 2, decoder: str = "linknet",
                 encoder_weights: str | None = None) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        archs = {"linknet": smp.Linknet, "unet": smp.Unet}
        if decoder not in archs:
            raise ValueError(f"unknown decoder {decoder!r}; valid: {sorted(archs)}")
        net = archs[decoder](encoder_name="resnet18", encoder_weights=encoder_weights,
                             in_channels=in_channels, classes=classes)
        self.in_channels, self.classes, self.decoder_name = in_channels, classes, decoder
        self.encoder = net.encoder
        self.decoder = net.decoder
        self.segmentation_head = net.segmentation_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, size = pad_to_multiple(x, self.size_multiple)
        logits = self.segmentation_head(self.decoder(self.encoder(x)))
        return crop_to(logits, size)
