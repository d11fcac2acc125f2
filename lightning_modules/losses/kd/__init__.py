"""Knowledge-distillation losses: HLFD (paper 001) and the baselines it is compared with.

Every loss is an ``nn.Module`` (a :class:`KDLoss`) called as ``loss(inputs)`` where ``inputs`` is a
role dictionary ``{role: Tensor | list[Tensor]}`` (roles in :data:`ROLES`, see ``attention.py``)
and returning ``{term_name: scalar Tensor, ..., "total_kd": scalar Tensor}``.
"""
from lightning_modules.losses.kd.adapters import (
    ChannelAdapter, channel_adapter, infer_channels, infer_shapes, predictive_head,
    predictive_heads, role_channels,
)
from lightning_modules.losses.kd.attention import (
    LIST_ROLES, MASK, ROLES, STUDENT_EARLY, STUDENT_LATE, STUDENT_LOGITS, STUDENT_MID,
    TEACHER_EARLY, TEACHER_LATE, TEACHER_MID, TEACHER_PRED_LATE, TEACHER_PRED_MID, KDLoss,
    attention_loss, attention_map, get_role, pixel_kl, resize, smallest_size,
)
from lightning_modules.losses.kd.baselines import (
    AttentionTransferLoss, DKDLoss, HIFDLoss, IFDBaselineLoss, PixelKDLoss, SKDLoss,
    pairwise_similarity_loss, region_affinity_loss,
)
from lightning_modules.losses.kd.hlfd import (
    HLFDLoss, hlfd_total, ifd_loss, ipd_loss, ufd_loss, unify_features, unify_predictions, upd_loss,
)

#: config name -> loss class (``distill.method`` in the Hydra configs may use these names).
KD_LOSSES: dict[str, type[KDLoss]] = {
    "hlfd": HLFDLoss,
    "pixel_kd": PixelKDLoss,
    "at": AttentionTransferLoss,
    "skd": SKDLoss,
    "dkd": DKDLoss,
    "ifd": IFDBaselineLoss,
    "hifd": HIFDLoss,
}

__all__ = [
    "KD_LOSSES", "ROLES", "LIST_ROLES", "KDLoss", "HLFDLoss", "PixelKDLoss", "AttentionTransferLoss",
    "SKDLoss", "DKDLoss", "IFDBaselineLoss", "HIFDLoss", "ChannelAdapter", "channel_adapter",
    "predictive_head", "predictive_heads", "infer_shapes", "infer_channels", "role_channels",
    "attention_map", "attention_loss", "pixel_kl", "resize", "smallest_size", "get_role",
    "unify_features", "unify_predictions", "ufd_loss", "ifd_loss", "upd_loss", "ipd_loss",
    "hlfd_total", "pairwise_similarity_loss", "region_affinity_loss",
    "STUDENT_EARLY", "STUDENT_MID", "STUDENT_LATE", "STUDENT_LOGITS", "TEACHER_EARLY",
    "TEACHER_MID", "TEACHER_LATE", "TEACHER_PRED_MID", "TEACHER_PRED_LATE", "MASK",
]
