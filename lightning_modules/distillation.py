"""Teacher-student knowledge distillation: a frozen teacher, a trainable student, a KD loss over
intermediate features read by forward hooks (paper 001, HLFD, Eq. 5: ``L_H = L_seg + KD total``).

The student is ``self.net``, so validation, test, per-case metrics and prediction are exactly those of
:class:`~lightning_modules.segmentation.SegmentationModule`.  The teacher is built from its config,
loaded from one of the framework's own SegmentationModule checkpoints, frozen (``requires_grad`` off,
eval mode whatever Lightning asks, run under ``torch.no_grad``) and never handed to the optimiser.

Taps (torchdistill spirit) are declared in the config as a list of entries
``{role, teacher: <module path> | null, student: <module path> | null, index: int | null,
head: <module path> | null}``: exactly one of ``teacher``/``student`` is set; the output of that
module (element ``index`` when it returns a tuple) fills the KD role (``student_mid``,
``teacher_mid`` and ``teacher_pred_mid`` are lists, in declaration order).  ``head`` (teacher side
only) names a module of the same net applied to the tapped tensor, e.g. ``teacher: conv0_1,
head: final1`` is the teacher's deep-supervision map X^{0,1} -> logits, which a UNet++ in eval mode
never computes itself.  ``student_logits`` / ``teacher_pred_late`` default to the nets' main outputs
and ``mask`` to the batch's ground truth.

Construction checks and inference live in :mod:`lightning_modules.distill_setup`.
Adapters (the students' predictive heads of HLFD/HIFD) are owned by the KD loss, created once at
construction with channel counts inferred by a dry forward pass on a dummy ``example_size`` input,
and optimised with the student (see ``losses/kd/adapters.py`` for the reference-code defect this fixes).
"""
from __future__ import annotations

import logging
import re
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn

from lightning_modules.base import to_plain
from lightning_modules.checkpoints import load_net, save_net
from lightning_modules.distill_setup import (
    AUTO_ROLES, Tap, build_kd_loss, build_teacher, check_pair, check_same_padding, check_tapped_heads_trained, dry_run,
    example_shape, main_output, parse_taps,
)
from lightning_modules.errors import ConfigError
from lightning_modules.hooks import FeatureTap, indices_by_path
from lightning_modules.losses.kd.attention import LIST_ROLES, MASK, STUDENT_LOGITS, TEACHER_PRED_LATE
from lightning_modules.segmentation import SegmentationModule

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A KD or segmentation term became NaN/inf; raised before the optimiser step."""


class DistillationModule(SegmentationModule):
    """Student (``net``) trained with ``L_seg`` (``loss``) + the KD loss total, from a frozen teacher.

    Args:
        net: student config (``_target_``) or module.
        teacher: teacher net config or module; ``None`` takes the net config stored in ``teacher_ckpt``.
        teacher_ckpt: a SegmentationModule checkpoint of the teacher (``None``: keep the teacher's
            initial weights - only sensible in tests).
        kd_loss: KD loss config (``_target_`` to a :class:`~lightning_modules.losses.kd.KDLoss`) or
            module; constructor arguments ``classes`` and ``<role>_channels`` (e.g.
            ``student_mid_channels``) that the config leaves out are filled from the dry forward.
        taps: list of tap entries (see the module docstring).
        example_size: dummy input for the dry forward: spatial size ``S`` (input ``[1, C, S, S]``) or a
            full shape.
        method: name logged in metrics (``hlfd``, ``pixel_kd``, ...).
        Other arguments: as :class:`SegmentationModule` (``fg_threshold`` 0.4 and
        ``eval_slices='foreground'`` are paper 001's protocol a).
    """

    #: state entries that never change during fit (the frozen teacher): kept out of checkpoints
    #: (:meth:`on_save_checkpoint`) and of :class:`callbacks.best_weights.BestWeights`' in-memory copies
    frozen_prefixes = ("teacher.",)

    def __init__(
        self,
        net: nn.Module | Mapping,
        teacher: nn.Module | Mapping | None,
        kd_loss: nn.Module | Mapping,
        taps: Sequence[Mapping[str, Any]],
        loss: nn.Module | Mapping,
        num_classes: int,
        teacher_ckpt: str | None = None,
        example_size: int | Sequence[int] = 64,
        method: str = "kd",
        optimizer: Any = None,
        scheduler: Any = None,
        scheduler_interval: str = "epoch",
        class_names: Sequence[str] | None = None,
        fg_threshold: float | None = 0.4,
        eval_slices: str = "foreground",
        roc_thresholds: int = 200,
        monitor: str = "val/dice",
    ) -> None:
        super().__init__(net, loss, num_classes, optimizer, scheduler, scheduler_interval, class_names,
                         fg_threshold, eval_slices, roc_thresholds, monitor)
        teacher_cfg = None if isinstance(teacher, nn.Module) else to_plain(teacher)
        self.save_hyperparameters({
            **dict(self.hparams),
            "teacher": teacher_cfg if teacher_cfg is not None else type(teacher).__name__,
            "teacher_ckpt": None if teacher_ckpt is None else str(teacher_ckpt),
            "kd_loss": to_plain(kd_loss) if not isinstance(kd_loss, nn.Module) else type(kd_loss).__name__,
            "taps": [dict(t) for t in to_plain(taps) or []],
            "example_size": to_plain(example_size),
            "method": method,
            "scheduler_interval": scheduler_interval,
            "roc_thresholds": roc_thresholds,
        })
        self.method = method
        self.teacher, trained_cfg = build_teacher(teacher, teacher_cfg, teacher_ckpt)
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.taps = parse_taps(taps)
        self.example_shape = example_shape(self.net, example_size)
        check_tapped_heads_trained(self.teacher, trained_cfg, self.taps, self.example_shape,
                                   f"teacher checkpoint {teacher_ckpt}" if teacher_ckpt else "the teacher")
        check_pair(self.teacher, self.net)
        shapes = dry_run(self.teacher, self.net, self.taps, self.example_shape, self.device)
        self.kd_loss = build_kd_loss(kd_loss, self.taps, shapes)
        missing = [r for r in getattr(self.kd_loss, "required_roles", ())
                   if r not in {t.role for t in self.taps} | set(AUTO_ROLES)]
        if missing:
            raise ConfigError(f"{type(self.kd_loss).__name__} ({method}) needs roles {missing} that distill.taps "
                              f"does not declare (declared: {sorted({t.role for t in self.taps})})")
        self.student_tap: FeatureTap | None = None
        self.teacher_tap: FeatureTap | None = None

    # ------------------------------------------------------------------ frozen teacher
    def train(self, mode: bool = True) -> "DistillationModule":
        """Lightning switches modules to train mode each epoch; the teacher always stays in eval."""
        super().train(mode)
        teacher = self._modules.get("teacher")
        if teacher is not None:
            teacher.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Student + KD-loss adapters only; the teacher is never optimised."""
        params = list(self.net.parameters()) + list(self.kd_loss.parameters())
        return [p for p in params if p.requires_grad]

    # ------------------------------------------------------------------ federation (federation/runner.py)
    def private_state(self) -> dict[str, Tensor]:
        """What a federated client keeps between rounds beside the federated student (``net``): the KD
        loss's adapters (HLFD's predictive heads) - trained on the site's data, never sent."""
        return dict(self.kd_loss.state_dict())

    def load_private_state(self, state: Mapping[str, Tensor]) -> None:
        self.kd_loss.load_state_dict(dict(state))

    # ------------------------------------------------------------------ hooks
    def attach_taps(self) -> None:
        if self.student_tap is None or not self.student_tap.active:
            s = [t for t in self.taps if t.side == "student"]
            self.student_tap = FeatureTap(self.net, [t.path for t in s], index=indices_by_path((t.path, t.index) for t in s))
        if self.teacher_tap is None or not self.teacher_tap.active:
            t = [t for t in self.taps if t.side == "teacher"]
            self.teacher_tap = FeatureTap(self.teacher, [x.path for x in t], index=indices_by_path((x.path, x.index) for x in t),
                                          detach=True)

    def remove_taps(self) -> None:
        for tap in (self.student_tap, self.teacher_tap):
            if tap is not None:
                tap.remove()
                tap.clear()
        self.student_tap = self.teacher_tap = None

    def on_fit_start(self) -> None:
        self.attach_taps()
        self._quiet_frozen_teacher()

    def on_train_start(self) -> None:
        self._unquiet_frozen_teacher()  # Lightning's check ran just before this hook

    def on_fit_end(self) -> None:
        self._unquiet_frozen_teacher()
        self.remove_taps()

    def teardown(self, stage: str) -> None:
        self._unquiet_frozen_teacher()
        self.remove_taps()

    # Lightning's fit loop warns "Found N module(s) in eval mode at the start of training" between
    # on_fit_start and on_train_start; the frozen teacher is in eval on purpose (all its modules count).
    _EVAL_MODE_WARNING = "Found {} module(s) in eval mode at the start of training."

    def _quiet_frozen_teacher(self) -> None:
        """Ignore that warning for exactly this fit, and only if every eval-mode module is the teacher's:
        the message must name the teacher's module count, so a student (or adapter) left in eval mode
        raises the count and the warning still shows."""
        self._unquiet_frozen_teacher()
        teacher = self._modules.get("teacher")
        if teacher is None:
            return
        in_teacher = {id(m) for m in teacher.modules()}
        eval_modules = [m for m in self.modules() if not m.training]
        if not eval_modules or any(id(m) not in in_teacher for m in eval_modules):
            return
        message = re.escape(self._EVAL_MODE_WARNING.format(len(eval_modules)))
        warnings.filterwarnings("ignore", message=message, category=PossibleUserWarning)
        self._eval_mode_filter = warnings.filters[0]

    def _unquiet_frozen_teacher(self) -> None:
        entry = self.__dict__.pop("_eval_mode_filter", None)
        if entry is not None and entry in warnings.filters:
            # no registry reset needed: an "ignore" filter never records a warning in __warningregistry__
            warnings.filters.remove(entry)

    # ------------------------------------------------------------------ training
    def kd_inputs(self, batch: Mapping[str, Any], student_out: Any, teacher_out: Any) -> dict[str, Any]:
        """The role dictionary the KD loss reads, from the taps' latest outputs."""
        roles: dict[str, Any] = {STUDENT_LOGITS: main_output(student_out), TEACHER_PRED_LATE: main_output(teacher_out),
                                 MASK: batch.get("mask")}
        declared: set[str] = set()
        for t in self.taps:
            x = (self.teacher_tap if t.side == "teacher" else self.student_tap).get(t.path, t.index)
            if t.head is not None:
                with torch.no_grad():
                    x = self.teacher.get_submodule(t.head)(x)
            if t.role in LIST_ROLES:
                roles[t.role] = roles[t.role] + [x] if t.role in declared else [x]
            else:
                roles[t.role] = x
            declared.add(t.role)
        return roles

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.attach_taps()
        self.student_tap.clear(), self.teacher_tap.clear()
        image, mask = batch["image"], batch["mask"]
        check_same_padding(self.teacher, self.net, image.shape[-2:])
        self.teacher.eval()
        with torch.no_grad():
            teacher_out = self.teacher(image)
        student_out = self.net(image)
        seg = self.seg_loss(student_out, batch)
        terms = self.kd_loss(self.kd_inputs(batch, student_out, teacher_out))
        self.student_tap.clear(), self.teacher_tap.clear()
        named = {"seg": seg, **terms}
        finite = torch.stack([torch.isfinite(v).all() for v in named.values()])
        for name, value in ([] if bool(finite.all()) else named.items()):  # one host sync a step, not one a term
            if not torch.isfinite(value).all():
                raise NonFiniteLossError(f"non-finite {'L_seg' if name == 'seg' else 'KD term ' + repr(name)} "
                                         f"({float(value.detach())}) at global step {self.global_step} (epoch "
                                         f"{self.current_epoch}, batch {batch_idx}) of {self.method}; "
                                         f"stopped before the optimizer step")
        loss = seg + terms["total_kd"]
        bs = len(mask)
        extra = self.extra_loss(batch_size=bs)
        if extra is not None:
            loss = loss + extra
        self.log("train/seg", seg.detach(), on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
        for name, value in terms.items():
            self.log(f"train/kd/{name}", value.detach(), on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
        self.log_train_loss(loss, bs)
        return loss

    # ------------------------------------------------------------------ inspection (Fig. 2)
    @torch.no_grad()
    def intermediate_predictions(self, image: Tensor) -> "OrderedDict[str, Tensor]":
        """Student predictive maps (logits resized to the input) through the KD loss's predictive heads
        (``early_head`` / ``mid_heads`` when the loss has them), then the final prediction."""
        s_taps = {t.role: [] for t in self.taps if t.side == "student"}
        for t in self.taps:
            if t.side == "student":
                s_taps[t.role].append(t)
        heads: list[tuple[str, Tap, nn.Module]] = []
        early, mids = getattr(self.kd_loss, "early_head", None), getattr(self.kd_loss, "mid_heads", None)
        if early is not None and s_taps.get("student_early"):
            heads.append(("early", s_taps["student_early"][0], early))
        if mids is not None:
            heads += [(f"mid{j + 1}", t, h) for j, (t, h) in enumerate(zip(s_taps.get("student_mid", []), mids))]
        out: OrderedDict[str, Tensor] = OrderedDict()
        with FeatureTap(self.net, [t.path for _, t, _ in heads],
                        index=indices_by_path((t.path, t.index) for _, t, _ in heads)) as tap:
            logits = main_output(self.net(image))
            # the tapped maps cover the student's padded grid (a review: resized straight to the image, a map at
            # 60 px was shifted ~2 px, ~12 px at 500): resized to that grid, then cropped as the logits are
            m = int(getattr(self.net, "size_multiple", 1) or 1)
            h, w = image.shape[-2:]
            grid = (-(-h // m) * m, -(-w // m) * m)
            for name, t, head in heads:
                z = nn.functional.interpolate(head(tap.get(t.path, t.index)).float(), size=grid, mode="bilinear",
                                              align_corners=False)
                out[f"{name} ({t.path})"] = z[..., :h, :w]
        out["final"] = logits
        return out

    # ------------------------------------------------------------------ checkpoints / export
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Checkpoints hold the student and its adapters, not the (frozen, separately stored) teacher."""
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if not k.startswith(self.frozen_prefixes)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refill the teacher's weights (from ``teacher_ckpt``, already loaded) so strict loading works."""
        state = checkpoint["state_dict"]
        for k, v in self.teacher.state_dict().items():
            state.setdefault(f"teacher.{k}", v)


def save_student(module: SegmentationModule, path: str | Path, method: str | None = None) -> Path:
    """Write ``module``'s student (``net``) as ``student.pt``: weights + net config, no teacher/adapters."""
    return save_net(path, module.net, module.hparams.get("net"), method=getattr(module, "method", method),
                    num_classes=module.num_classes, class_names=module.class_names,
                    fg_threshold=module.fg_threshold)


load_student = load_net

__all__ = ["DistillationModule", "Tap", "parse_taps", "save_student", "load_student", "NonFiniteLossError"]
