"""Attention maps A(.) and helpers shared by every knowledge-distillation loss.

Paper 001 (Gorade et al., "Rethinking intermediate layers design in knowledge distillation for kidney
and liver tumor segmentation", HLFD, arXiv:2311.16700) Sec. 2.1 defines the operation A(.) used by
Eqs. 1-2: the student's representation is first rescaled to the teacher's spatial size, then reduced
over channels ("channel normalization ... the absolute value of a neuron activation signifies its
importance"), i.e. the activation-based attention map of Zagoruyko & Komodakis (ICLR 2017),
``A(z) = mean_c |z_c|^p``.  The HLFD reference code (built on Qin et al.'s EMKD code) uses ``p = 4``;
Zagoruyko & Komodakis use ``p = 2``.

Role dictionary
---------------
Every KD loss takes ONE mapping ``{role: tensor | list[tensor]}`` so that the DistillationModule only
has to map config-declared hook paths to role names (see :data:`ROLES`).  Teacher entries are
detached inside the losses: distillation never sends gradients into the teacher.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.losses.hybrid import class_log_probabilities

# ----------------------------------------------------------------------------- roles
STUDENT_EARLY = "student_early"  # Tensor [B,C,H,W]: z_early^s
STUDENT_MID = "student_mid"  # list[Tensor]: z_mid_j^s, j = 1..N
STUDENT_LATE = "student_late"  # Tensor: z_late^s (terminal representation)
STUDENT_LOGITS = "student_logits"  # Tensor [B,K,H,W]: student's main-head logits
TEACHER_EARLY = "teacher_early"  # Tensor: z_early^t (unused by HLFD, available to baselines)
TEACHER_MID = "teacher_mid"  # list[Tensor]: z_mid_j^t
TEACHER_LATE = "teacher_late"  # Tensor: z_late^t
TEACHER_PRED_MID = "teacher_pred_mid"  # list[Tensor [B,K,h,w]]: p_mid_j^t (logits)
TEACHER_PRED_LATE = "teacher_pred_late"  # Tensor [B,K,H,W]: p_late^t = teacher main-head logits
MASK = "mask"  # int64 [B,H,W] ground truth (needed only by DKD's region affinity term)

ROLES: tuple[str, ...] = (
    STUDENT_EARLY, STUDENT_MID, STUDENT_LATE, STUDENT_LOGITS,
    TEACHER_EARLY, TEACHER_MID, TEACHER_LATE, TEACHER_PRED_MID, TEACHER_PRED_LATE, MASK,
)
LIST_ROLES: frozenset[str] = frozenset({STUDENT_MID, TEACHER_MID, TEACHER_PRED_MID})

Size2d = tuple[int, int]


def get_role(inputs: Mapping[str, Any], role: str) -> Any:
    """Fetch ``inputs[role]``; list roles are returned as lists, a missing role raises a KeyError."""
    if role not in inputs or inputs[role] is None:
        raise KeyError(f"KD loss needs role {role!r}; got roles {sorted(inputs)}")
    value = inputs[role]
    if role in LIST_ROLES:
        value = [value] if isinstance(value, Tensor) else list(value)
        if not value:
            raise KeyError(f"role {role!r} is an empty list")
    return value


class KDLoss(nn.Module):
    """Base class: ``forward(inputs) -> dict`` of named scalar terms, always including ``total_kd``.

    ``required_roles`` lists the roles the loss reads, so the caller can validate its hook config.
    """

    required_roles: tuple[str, ...] = ()

    def check_roles(self, inputs: Mapping[str, Any]) -> None:
        missing = [r for r in self.required_roles if inputs.get(r) is None]
        if missing:
            raise KeyError(f"{type(self).__name__} needs roles {missing}; got {sorted(inputs)}")


# ----------------------------------------------------------------------------- resizing
def spatial_size(x: Tensor) -> Size2d:
    """Spatial size ``(H, W)`` of a ``[B, C, H, W]`` tensor."""
    return int(x.shape[-2]), int(x.shape[-1])


def resize(x: Tensor, size: Size2d) -> Tensor:
    """Bilinear resize of ``[B, C, H, W]`` to ``size`` (no-op when already that size)."""
    if spatial_size(x) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def smallest_size(tensors: Sequence[Tensor]) -> Size2d:
    """The smallest spatial size (by area) among ``tensors``, as used for z_mid^t in HLFD Eq. 1."""
    return min((spatial_size(t) for t in tensors), key=lambda s: (s[0] * s[1], s))


# ----------------------------------------------------------------------------- A(.)
def attention_map(z: Tensor, p: float = 4.0, size: Size2d | None = None,
                  resize_features: bool = True, eps: float = 1e-12) -> Tensor:
    """HLFD Sec. 2.1 operation A(.) (Eqs. 1-2): L2-normalised flattened map of ``mean_c |z_c|^p``.

    Args:
        z: features ``[B, C, H, W]``.
        p: exponent (4 in the HLFD/EMKD reference code, 2 in Zagoruyko & Komodakis 2017).
        size: target spatial size; ``None`` keeps ``z``'s own size.
        resize_features: when ``True`` (default, the paper's wording "A(.) is employed first to
            rescale the student's representation ..., channel normalization is applied to the
            rescaled representation", and the reference code) the features are bilinearly resized
            before the channel reduction; when ``False`` the single-channel map is resized instead
            (cheaper, slightly different because ``|z|^p`` is non-linear).
        Computed in float32 (``|z|^4`` overflows float16).
    Returns:
        ``[B, size_h * size_w]`` with unit L2 norm per sample.
    """
    if z.dim() != 4:
        raise ValueError(f"attention_map expects [B,C,H,W], got shape {tuple(z.shape)}")
    z = z.float()  # |z|^p overflows half precision easily
    if size is not None and resize_features:
        z = resize(z, size)
    a = z.abs().pow(p).mean(dim=1, keepdim=True)
    if size is not None and not resize_features:
        a = resize(a, size)
    return F.normalize(a.flatten(1), p=2, dim=1, eps=eps)


def attention_loss(s: Tensor, t: Tensor, p: float = 4.0, size: Size2d | None = None,
                   resize_features: bool = True) -> Tensor:
    """Attention distance of HLFD Eqs. 1-2, ``mean_b || A(s)/||A(s)||_2 - A(t)/||A(t)||_2 ||_2^2``.

    Reading of the paper: the printed Eqs. 1-2 lost their norm bars; we read them as the *squared*
    L2 distance between the L2-normalised flattened attention maps (summed over the positions, as a
    norm is), averaged over the batch: ``(a_s - a_t).pow(2).sum(1).mean()``.  Both maps are brought
    to ``size`` (default: the teacher's spatial size, "rescale the student's representation to match
    the teacher").  The teacher side is detached.
    """
    size = spatial_size(t) if size is None else tuple(size)
    a_s = attention_map(s, p=p, size=size, resize_features=resize_features)
    a_t = attention_map(t.detach(), p=p, size=size, resize_features=resize_features)
    return (a_s - a_t).pow(2).sum(dim=1).mean()


# ----------------------------------------------------------------------------- pixel KL
def pixel_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0,
             size: Size2d | None = None) -> Tensor:
    """Per-pixel KD divergence ``T^2 * mean_pixels KL(p_t || p_s)`` (Hinton et al. 2015).

    ``p = softmax(logits / T)`` over the class dimension (one channel: ``[σ(-z/T), σ(z/T)]``); the divergence is the standard distillation
    direction ``sum_k p_t (log p_t - log p_s)`` (teacher distribution first), summed over classes and
    averaged over batch and pixels, then scaled by ``T^2`` so gradient magnitudes do not shrink with
    ``T``.  The student logits are bilinearly resized to ``size`` (default: the teacher's size), the
    teacher logits are resized to ``size`` too when needed and are detached; computed in float32.
    """
    if student_logits.shape[1] != teacher_logits.shape[1]:
        raise ValueError(f"class mismatch: student {student_logits.shape[1]} vs teacher "
                         f"{teacher_logits.shape[1]} channels")
    size = spatial_size(teacher_logits) if size is None else tuple(size)
    s = resize(student_logits.float(), size)
    t = resize(teacher_logits.detach().float(), size)
    # one channel is a sigmoid net's foreground logit: [log σ(-z/T), log σ(z/T)] (a review: log_softmax over one
    # channel is 0, so every pixel KD term of a one-channel pair was 0 without a word)
    log_ps = class_log_probabilities(s / temperature)
    log_pt = class_log_probabilities(t / temperature)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1)  # [B, H, W]
    return kl.mean() * temperature ** 2
