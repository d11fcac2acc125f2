"""Batches of 2D slices of mixed sizes (``image_size=null``): pad each batch to a common size.

Every slice keeps its aspect ratio and pixels (no resize): the batch is padded at the bottom/right to
its largest height/width, rounded up to ``multiple`` (encoder-decoder nets halve the size 4-5 times);
images are padded with ``fill`` (air after windowing), masks with background (0), so training treats the
padding as background (as nnU-Net does). A padded batch also carries ``valid`` (bool ``[B, H, W]``, True
on each slice's own pixels) so that evaluation counts only real pixels: padding counted as true background
would inflate accuracy (paper 000 Eq. 3) and background IoU (Eq. 5).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import default_collate


#: what the 2D nets' encoders downsample by: batches of mixed sizes are padded to a multiple of it
MULTIPLE = 32


def pad_slices(x: torch.Tensor, fill: float, multiple: int = MULTIPLE) -> torch.Tensor:
    """``[..., h, w]`` padded at the bottom/right to multiples of ``multiple`` with ``fill``, as a training batch
    of that size is (:class:`PadCollate`): what predict feeds a 2D net (a review: it fed unpadded slices, which
    the nets zero-padded, and 0 is not air after ``out_range=[-1, 1]`` or a z-score)."""
    h, w = x.shape[-2:]
    ph, pw = -(-h // multiple) * multiple - h, -(-w // multiple) * multiple - w
    return F.pad(x, (0, pw, 0, ph), value=float(fill)) if ph or pw else x


def pad_as_batched(x: torch.Tensor, dm: Any) -> torch.Tensor:
    """``x`` padded as ``dm``'s test batches are: :func:`pad_slices` with its :class:`PadCollate`'s fill and
    multiple when it pads batches (``image_size=None``), else unpadded (a fixed size went to the net as it is and
    the net padded inside, so predict must not pad either: a review saw 14 pixels of a 100 x 100 image differ)."""
    collate = dm.collate_fn(False) if callable(getattr(dm, "collate_fn", None)) else None
    return pad_slices(x, collate.fill, collate.multiple) if isinstance(collate, PadCollate) else x


class PadCollate:
    """``collate_fn`` padding ``image [C, H, W]`` / ``mask [H, W]`` to one size per batch."""

    def __init__(self, multiple: int = MULTIPLE, fill: float = 0.0) -> None:
        self.multiple, self.fill = int(multiple), float(fill)

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        # an item's own ``pad_value`` (a multi-site batch: each site's air after its own normalisation) wins
        fills = [float(b.get("pad_value", self.fill)) for b in batch]
        batch = [{k: v for k, v in b.items() if k != "pad_value"} for b in batch]
        sizes = {tuple(b["image"].shape[-2:]) for b in batch}
        if len(sizes) == 1 and all(s % self.multiple == 0 for s in next(iter(sizes))):
            return default_collate(batch)
        h = max(s[0] for s in sizes)
        w = max(s[1] for s in sizes)
        h, w = -(-h // self.multiple) * self.multiple, -(-w // self.multiple) * self.multiple
        out = []
        for b, fill in zip(batch, fills):
            dh, dw = h - b["image"].shape[-2], w - b["image"].shape[-1]
            valid = torch.ones(b["image"].shape[-2:], dtype=torch.bool)
            out.append({**b, "image": F.pad(b["image"], (0, dw, 0, dh), value=fill),
                        "mask": F.pad(b["mask"], (0, dw, 0, dh), value=0),
                        "valid": F.pad(valid, (0, dw, 0, dh), value=False)})
        return default_collate(out)
