"""Learnable adapters for knowledge distillation, built once at set-up and trained with the student.

* :class:`ChannelAdapter` - 1x1 conv + BatchNorm mapping student channels to teacher channels.
* :func:`predictive_head` - 1x1 conv "predictive head" mapping a student feature to ``classes``
  logits, giving the student's intermediate predictive maps p_early^s / p_mid_j^s of HLFD Eqs. 3-4.

Deliberate deviation from the public HLFD reference code: that code instantiates fresh random 1x1
convolutions *inside the loss at every step*, so those projections are never optimised (and not even
in the optimizer).  Here the adapters are registered ``nn.Module`` s created once (sizes inferred by a
dry forward pass, :func:`infer_channels`), so they are owned by the loss module, saved in checkpoints
and updated by the student's optimizer.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from lightning_modules.hooks import FeatureTap, IndexSpec


class ChannelAdapter(nn.Sequential):
    """1x1 conv (no bias) + BatchNorm mapping ``in_channels`` student channels to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
                         nn.BatchNorm2d(out_channels))
        self.in_channels, self.out_channels = in_channels, out_channels


def channel_adapter(in_channels: int, out_channels: int, identity_if_equal: bool = False) -> nn.Module:
    """A :class:`ChannelAdapter`, or ``nn.Identity`` when asked and the channel counts already match."""
    if identity_if_equal and in_channels == out_channels:
        return nn.Identity()
    return ChannelAdapter(in_channels, out_channels)


def predictive_head(in_channels: int | None, classes: int) -> nn.Module:
    """1x1 conv head to ``classes`` logits; ``None`` means the tapped tensor already holds logits
    (e.g. a student deep-supervision head), giving ``nn.Identity``."""
    if in_channels is None:
        return nn.Identity()
    return nn.Conv2d(in_channels, classes, kernel_size=1)


def predictive_heads(channels: Sequence[int | None], classes: int) -> nn.ModuleList:
    """One :func:`predictive_head` per student layer."""
    return nn.ModuleList(predictive_head(c, classes) for c in channels)


@torch.no_grad()
def infer_shapes(model: nn.Module, paths: Sequence[str], example: Tensor | Sequence[int],
                 index: IndexSpec = None) -> dict[str, torch.Size]:
    """Shapes of the outputs at ``paths`` from one dry forward pass on ``example`` (a tensor, or an
    input shape such as ``(1, 1, 64, 64)`` filled with zeros).  Runs in eval mode (BatchNorm with a
    batch of one) and restores the previous training flags; hooks are removed afterwards."""
    if not isinstance(example, Tensor):
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        example = torch.zeros(tuple(example), device=device)
    modes = {name: m.training for name, m in model.named_modules()}
    model.eval()
    try:
        with FeatureTap(model, paths, index=index) as tap:
            model(example)
            shapes = {path: tap[path].shape for path in paths}
    finally:
        for name, m in model.named_modules():
            m.training = modes.get(name, m.training)
    return shapes


def infer_channels(teacher: nn.Module, student: nn.Module, teacher_paths: Sequence[str],
                   student_paths: Sequence[str], example: Tensor | Sequence[int],
                   teacher_index: IndexSpec = None, student_index: IndexSpec = None,
                   ) -> tuple[dict[str, int], dict[str, int]]:
    """Channel counts at the tapped paths of teacher and student, by a dry forward pass of each on
    the same dummy input; returns ``(teacher_channels, student_channels)`` as ``path -> C``."""
    t = infer_shapes(teacher, teacher_paths, example, teacher_index)
    s = infer_shapes(student, student_paths, example, student_index)
    return {p: int(v[1]) for p, v in t.items()}, {p: int(v[1]) for p, v in s.items()}


def role_channels(role_paths: Mapping[str, str | Sequence[str]],
                  channels: Mapping[str, int]) -> dict[str, int | list[int]]:
    """Map ``{role: path | [paths]}`` and ``{path: C}`` to ``{role: C | [C, ...]}``."""
    out: dict[str, int | list[int]] = {}
    for role, paths in role_paths.items():
        out[role] = channels[paths] if isinstance(paths, str) else [channels[p] for p in paths]
    return out
