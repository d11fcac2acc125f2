"""Hierarchical Layer-selective Feedback Distillation (HLFD), paper 001 Sec. 2 (Eqs. 1-5).

Gorade, Mittal, Jha, Bagci, "Rethinking intermediate layers design in knowledge distillation for
kidney and liver tumor segmentation", arXiv:2311.16700.

* Feature level  L_F = L_UFD (Eq. 1) + L_IFD (Eq. 2): attention distances (see ``attention.py``).
* Pixel level    L_P = L_UPD (Eq. 3) + L_IPD (Eq. 4): temperature-softened per-pixel KL. The paper prints
  plain KL (no temperature): T = 4 with the T² factor (Hinton; the EMKD/HLFD code) is our choice, so λ = 0.1
  weighs a term several times the literal one (a review: 2.61 at T = 4 against 0.65 at T = 1 for a confident
  teacher and a random student); ``temperature: 1`` is the literal Eqs. 3-4.
* Eq. 5          L_H = L_seg + beta * L_F + lam * L_P; this module returns ``beta*L_F + lam*L_P``
  as ``total_kd``; the DistillationModule adds L_seg (focal + Dice, ``losses/focal_dice.py``).

Interpretation choices (the paper is terse):

* KL direction.  The paper writes ``KL(A(p^s) || p^t)``.  We read it in PyTorch's argument order
  ``F.kl_div(log p_s, p_t)`` (the HLFD/EMKD code), which computes the standard distillation
  divergence ``KL(p_t || p_s) = sum_k p_t (log p_t - log p_s)`` - teacher distribution first.
* A(.) in Eqs. 3-4 is the "interpolated representation map" of the student: its feature is mapped to
  class logits by a learnable 1x1 predictive head (``adapters.predictive_head``, built once, trained)
  and bilinearly interpolated to the teacher map's size; it is not the attention map of Eqs. 1-2.
* p_mid^t (Eq. 3), the teacher's *unified* middle predictive map: the teacher's middle predictive
  maps p_mid_j^t (logits from its deep-supervision heads or decoder taps) are bilinearly resized to
  the smallest size among them (mirroring z_mid^t in Eq. 1) and their logits averaged; the softmax
  with temperature is taken after averaging. Sec. 2.2 names an early map p_early^t apart, which no
  term uses, so ``distill/hlfd.yaml`` leaves UNet++'s X^{0,1} out of p_mid^t.
* Fig. 1's "input X and augmentation X'": both nets see the same augmented batch (Sec. 3's rotation and
  flips are the augmentation), not two views of it; the caption sends both X and X' through both encoders,
  and no term of Eqs. 1-5 compares two views.
* Layers and heads follow the text, not the authors' public code (``train_kd.py``, ``loss_functions.py``):
  there the pixel terms read the student's *decoder* maps through 1x1 convs created afresh at every step
  (random projections never trained; here ``predictive_head`` is built once and trained), the feature terms
  tap the stem as early layer, each half of L_F and L_P is weighed 0.5, and the learning rate is 1e-2 (the
  text: 1e-3). ``distill/hlfd.yaml`` declares the taps, so another pairing is a config change.
* IFD compares at the teacher late feature's spatial size; the sum over j is kept unnormalised as
  printed in Eq. 2 while IPD is averaged (1/N) as printed in Eq. 4.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_modules.losses.kd.adapters import predictive_head, predictive_heads
from lightning_modules.losses.kd.attention import (
    STUDENT_EARLY, STUDENT_MID, TEACHER_LATE, TEACHER_MID, TEACHER_PRED_LATE, TEACHER_PRED_MID,
    KDLoss, Size2d, attention_loss, get_role, pixel_kl, resize, smallest_size,
)


def unify_features(features: Sequence[Tensor], size: Size2d | None = None) -> Tensor:
    """z_mid^t of Eq. 1: resize the middle maps to the smallest spatial size, concat on channels."""
    size = smallest_size(features) if size is None else tuple(size)
    return torch.cat([resize(f, size) for f in features], dim=1)


def unify_predictions(logits: Sequence[Tensor], size: Size2d | None = None) -> Tensor:
    """p_mid^t of Eq. 3: middle predictive maps resized to the smallest size, logits averaged."""
    size = smallest_size(logits) if size is None else tuple(size)
    return torch.stack([resize(p, size) for p in logits], dim=0).mean(dim=0)


def ufd_loss(student_early: Tensor, teacher_mid: Sequence[Tensor], p: float = 4.0,
             resize_features: bool = True) -> Tensor:
    """Eq. 1, L_UFD = ||A(z_early^s)/||A(z_early^s)||_2 - A(z_mid^t)/||A(z_mid^t)||_2||^2."""
    z_mid_t = unify_features([t.detach() for t in teacher_mid])
    return attention_loss(student_early, z_mid_t, p=p, resize_features=resize_features)


def ifd_loss(student_mid: Sequence[Tensor], teacher_late: Tensor, p: float = 4.0,
             resize_features: bool = True) -> Tensor:
    """Eq. 2, L_IFD = sum_j ||A(z_mid_j^s)/||.||_2 - A(z_late^t)/||.||_2||^2."""
    return torch.stack([attention_loss(s, teacher_late, p=p, resize_features=resize_features)
                        for s in student_mid]).sum()


def upd_loss(student_early_logits: Tensor, teacher_pred_mid: Sequence[Tensor],
             temperature: float = 4.0) -> Tensor:
    """Eq. 3, L_UPD = KL(A(p_early^s) || p_mid^t), computed as T^2 * KL(p_mid^t || p_early^s)."""
    p_mid_t = unify_predictions([t.detach() for t in teacher_pred_mid])
    return pixel_kl(student_early_logits, p_mid_t, temperature=temperature)


def ipd_loss(student_mid_logits: Sequence[Tensor], teacher_pred_late: Tensor,
             temperature: float = 4.0) -> Tensor:
    """Eq. 4, L_IPD = (1/N) sum_j KL(A(p_mid_j^s) || p_late^t), each as T^2 * KL(p_late^t || p_mid_j^s)."""
    return torch.stack([pixel_kl(s, teacher_pred_late, temperature=temperature)
                        for s in student_mid_logits]).mean()


def hlfd_total(feature: Tensor, pixel: Tensor, beta: float = 0.9, lam: float = 0.1) -> Tensor:
    """Eq. 5 without L_seg: beta * L_F + lam * L_P."""
    return beta * feature + lam * pixel


class HLFDLoss(KDLoss):
    """HLFD distillation terms (paper 001 Eqs. 1-5), with learnable student predictive heads.

    Args:
        classes: number of segmentation classes K (teacher logits channels).
        student_early_channels: channels of z_early^s, for the head producing p_early^s; ``None``
            when the tapped tensor already holds K-channel logits (identity head).
        student_mid_channels: channels of each z_mid_j^s (same convention), one per middle layer.
        beta, lam: weights of L_F and L_P in Eq. 5 (paper: 0.9 and 0.1).
        p: attention exponent of A(.) (reference code: 4).
        temperature: softmax temperature T of the pixel-level KL (default 4, T^2 scaling).
        resize_features: resize features before (True) or after (False) the channel reduction.

    ``forward(inputs)`` reads the roles ``student_early``, ``student_mid`` (list),
    ``teacher_mid`` (list), ``teacher_late``, ``teacher_pred_mid`` (list), ``teacher_pred_late`` and
    returns ``{ufd, ifd, upd, ipd, feature, pixel, total_kd}`` (scalar tensors).
    """

    required_roles = (STUDENT_EARLY, STUDENT_MID, TEACHER_MID, TEACHER_LATE,
                      TEACHER_PRED_MID, TEACHER_PRED_LATE)

    def __init__(self, classes: int, student_early_channels: int | None,
                 student_mid_channels: Sequence[int | None], beta: float = 0.9, lam: float = 0.1,
                 p: float = 4.0, temperature: float = 4.0, resize_features: bool = True) -> None:
        super().__init__()
        self.classes = classes
        self.beta, self.lam, self.p, self.temperature = beta, lam, p, temperature
        self.resize_features = resize_features
        self.early_head = predictive_head(student_early_channels, classes)
        self.mid_heads = predictive_heads(list(student_mid_channels), classes)

    def student_predictions(self, student_early: Tensor, student_mid: Sequence[Tensor]
                            ) -> tuple[Tensor, list[Tensor]]:
        """p_early^s and p_mid_j^s: the student's features through the predictive heads."""
        if len(student_mid) != len(self.mid_heads):
            raise ValueError(f"HLFDLoss built for {len(self.mid_heads)} student middle layers, "
                             f"got {len(student_mid)}")
        return self.early_head(student_early), [h(z) for h, z in zip(self.mid_heads, student_mid)]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Tensor]:
        self.check_roles(inputs)
        s_early: Tensor = get_role(inputs, STUDENT_EARLY)
        s_mid: list[Tensor] = get_role(inputs, STUDENT_MID)
        t_late: Tensor = get_role(inputs, TEACHER_LATE)
        ufd = ufd_loss(s_early, get_role(inputs, TEACHER_MID), self.p, self.resize_features)
        ifd = ifd_loss(s_mid, t_late, self.p, self.resize_features)
        p_early_s, p_mid_s = self.student_predictions(s_early, s_mid)
        upd = upd_loss(p_early_s, get_role(inputs, TEACHER_PRED_MID), self.temperature)
        ipd = ipd_loss(p_mid_s, get_role(inputs, TEACHER_PRED_LATE), self.temperature)
        feature, pixel = ufd + ifd, upd + ipd
        return {"ufd": ufd, "ifd": ifd, "upd": upd, "ipd": ipd, "feature": feature,
                "pixel": pixel, "total_kd": hlfd_total(feature, pixel, self.beta, self.lam)}

    def extra_repr(self) -> str:
        return (f"classes={self.classes}, beta={self.beta}, lam={self.lam}, p={self.p}, "
                f"T={self.temperature}")
