"""Setting up a distillation pair: declared taps, the frozen teacher, a dry forward and the KD loss.

Everything :class:`~lightning_modules.distillation.DistillationModule` checks and infers before training,
as plain functions: :func:`parse_taps` validates the tap entries of ``distill.taps`` (torchdistill-style:
which layers to distil is config, not code); :func:`build_teacher` loads the teacher from one of the
framework's checkpoints (wrong architecture: one clear error); :func:`dry_run` runs both nets once on
zeros to get every tapped shape (a path that does not fire, or mismatched class counts, fail here, at
start-up); :func:`build_kd_loss` fills the KD loss's ``classes`` and ``<role>_channels`` from those shapes,
so its adapters are created once, as registered sub-modules.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import get_class
from torch import Tensor, nn

from lightning_modules.base import build, to_plain
from lightning_modules.checkpoints import CheckpointError, load_checkpoint, load_strict, net_state
from lightning_modules.errors import ConfigError
from lightning_modules.hooks import FeatureTap, indices_by_path, resolve_module
from lightning_modules.losses.kd.attention import LIST_ROLES, MASK, ROLES, STUDENT_LOGITS, TEACHER_PRED_LATE
from lightning_modules.targets import check_targets

__all__ = ["AUTO_ROLES", "Tap", "parse_taps", "build_teacher", "check_tapped_heads_trained", "example_shape", "check_pair", "check_same_padding",
           "dry_run",
           "build_kd_loss", "main_output"]

#: roles filled automatically when not declared: net outputs and the ground truth.
AUTO_ROLES = (STUDENT_LOGITS, TEACHER_PRED_LATE, MASK)


@dataclass(frozen=True)
class Tap:
    """One declared tap: ``role`` read from ``side`` (teacher | student) at module ``path``."""

    role: str
    side: str
    path: str
    index: int | None = None
    head: str | None = None

    @property
    def key(self) -> str:
        return f"{self.side}:{self.path}" + ("" if self.index is None else f"[{self.index}]")


def parse_taps(taps: Sequence[Mapping[str, Any]]) -> list[Tap]:
    """Validate the declared tap entries (roles, one side each, heads only on the teacher)."""
    out: list[Tap] = []
    seen_single: set[str] = set()
    for i, entry in enumerate(taps or []):
        entry = dict(entry)
        role = entry.get("role")
        where = f"distill.taps[{i}]"
        unknown = set(entry) - {"role", "teacher", "student", "index", "head"}
        if unknown:
            raise ConfigError(f"{where} has unknown keys {sorted(unknown)}; valid: role, teacher, student, index, head")
        if role not in ROLES or role == MASK:
            raise ConfigError(f"{where}.role={role!r} is not a KD role; valid: {[r for r in ROLES if r != MASK]}")
        t_path, s_path = entry.get("teacher"), entry.get("student")
        if (t_path is None) == (s_path is None):
            raise ConfigError(f"{where} ({role}) must set exactly one of teacher/student, got teacher={t_path!r} student={s_path!r}")
        side = "teacher" if t_path is not None else "student"
        if not role.startswith(side):
            raise ConfigError(f"{where}: role {role!r} must be tapped on the {role.split('_')[0]}, not the {side}")
        if entry.get("head") is not None and side != "teacher":
            raise ConfigError(f"{where}: 'head' is only for teacher taps (student heads are the KD loss's adapters)")
        if role not in LIST_ROLES:
            if role in seen_single:
                raise ConfigError(f"{where}: role {role!r} takes one tensor but is declared twice")
            seen_single.add(role)
        index = entry.get("index")
        out.append(Tap(role, side, str(t_path if side == "teacher" else s_path),
                       None if index is None else int(index), entry.get("head")))
    return out


def _first_conv_in_channels(net: nn.Module) -> int | None:
    if isinstance(getattr(net, "in_channels", None), int):
        return int(net.in_channels)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return None


def main_output(output: Any) -> Tensor:
    """The main head of a (possibly deep-supervised) net output."""
    return output[0] if isinstance(output, (list, tuple)) else output


def build_teacher(teacher: Any, teacher_cfg: Mapping | None, ckpt_path: str | None) -> tuple[nn.Module, Any]:
    """``(teacher net, the net config it was trained with)``: built from its config (or the one stored in
    ``ckpt_path``) and loaded strictly from the checkpoint; the second is the checkpoint's stored config when
    there is one (what :func:`check_tapped_heads_trained` reads), else ``teacher``."""
    ckpt = state = stored = None
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path, "teacher checkpoint")
        try:
            state, stored = net_state(ckpt, ckpt_path, teacher_cfg, "teacher checkpoint")
        except CheckpointError as err:  # the default teacher.model (a width-8 UNet++) against another teacher
            if "another architecture" not in str(err):
                raise
            raise CheckpointError(f"{err}; distill.teacher.model=null takes the checkpoint's own net config") from None
        if teacher is None:
            if not isinstance(stored, Mapping):
                raise CheckpointError(f"teacher checkpoint {ckpt_path} stores no net config; set distill.teacher.model")
            teacher = stored
    if teacher is None:
        raise ConfigError("distillation needs a teacher: set distill.teacher.model or distill.teacher.ckpt")
    net = build(teacher, what="teacher")
    if state is not None:
        load_strict(net, state, f"teacher checkpoint {ckpt_path} does not fit the teacher {type(net).__name__}",
                    source=f"teacher checkpoint {ckpt_path}")
    return net, stored if isinstance(stored, Mapping) else teacher


@torch.no_grad()
def check_tapped_heads_trained(teacher: nn.Module, trained_cfg: Any, taps: Sequence[Tap], shape: Sequence[int],
                               where: str) -> None:
    """Refuse teacher ``head`` taps that only deep supervision trains when the teacher was trained without it.

    HLFD's p_mid^t (paper 001 Eq. 3) runs UNet++'s side heads ``final2``/``final3``; its eval forward runs the main
    head only, so the side heads learn only under ``deep_supervision``. A review loaded a teacher trained with
    ``deep_supervision=false`` (the flag is not an architecture key: every head exists either way) and L_UPD
    pulled the student towards a random projection, without a word. A head the eval forward runs is trained
    either way and always allowed."""
    heads = list(dict.fromkeys(t.head for t in taps if t.side == "teacher" and t.head))
    if not heads or not isinstance(trained_cfg, Mapping):
        return
    flag = trained_cfg.get("deep_supervision")
    if flag is None:  # not stored: the constructor's default was what it trained with
        param = inspect.signature(type(teacher).__init__).parameters.get("deep_supervision")
        flag = None if param is None or param.default is inspect.Parameter.empty else param.default
    if flag is None or bool(flag):
        return
    called: set[str] = set()
    hooks = [resolve_module(teacher, h).register_forward_hook(lambda *_, h=h: called.add(h)) for h in heads]
    modes = {m: m.training for m in teacher.modules()}
    try:
        teacher.eval()
        teacher(torch.zeros(tuple(shape), device=next(teacher.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
        for m, mode in modes.items():
            m.training = mode
    untrained = [h for h in heads if h not in called]
    if untrained:
        raise ConfigError(f"distill.taps: teacher head(s) {untrained} learn only under deep supervision, but {where} "
                          f"was trained with deep_supervision=false: their maps would be untrained projections; "
                          f"train the teacher with deep supervision, or tap the main head only")

def example_shape(student: nn.Module, example_size: int | Sequence[int]) -> tuple[int, ...]:
    """The dry forward's input shape: ``[1, C, S, S]`` for an int ``S`` (C from the student's first conv)."""
    in_ch = _first_conv_in_channels(student) or 1
    if isinstance(example_size, int):
        return (1, in_ch, example_size, example_size)
    shape = tuple(int(s) for s in example_size)
    return shape if len(shape) == 4 else (1, in_ch, *shape[-2:])

def check_pair(teacher: nn.Module, student: nn.Module) -> None:
    """Teacher and student must read the same number of input channels."""
    t_in, s_in = _first_conv_in_channels(teacher), _first_conv_in_channels(student)
    if t_in is not None and s_in is not None and t_in != s_in:
        raise ConfigError(f"teacher {type(teacher).__name__} takes in_channels={t_in} but student "
                          f"{type(student).__name__} takes in_channels={s_in}")

def check_same_padding(teacher: nn.Module | None, student: nn.Module, size: Sequence[int]) -> None:
    """Teacher and student must pad an ``H x W`` input to one size: each zero-pads to its own ``size_multiple``
    (the teacher UNet++ to 16, the ResNet-18 student to 32), and at 80 px their maps would cover 80 and 96 px, to
    be resized onto each other, misaligned, with no error (a review found it; no shipped size does it)."""
    t, s = getattr(teacher, "size_multiple", None), getattr(student, "size_multiple", None)
    if t is None or s is None:
        return
    padded = [tuple(-(-int(n) // m) * m for n in size) for m in (int(t), int(s))]
    if padded[0] != padded[1]:
        raise ConfigError(f"distillation at {' x '.join(map(str, size))} px: the teacher pads it to "
                          f"{' x '.join(map(str, padded[0]))} (a multiple of {t}) and the student to "
                          f"{' x '.join(map(str, padded[1]))} (a multiple of {s}), so their maps would be "
                          f"compared misaligned; use a data.image_size that is a multiple of {math.lcm(int(t), int(s))}")


@torch.no_grad()
def dry_run(teacher: nn.Module, student: nn.Module, taps: Sequence[Tap], shape: Sequence[int],
            device: torch.device | str = "cpu") -> dict[str, torch.Size]:
    """Shapes at every tap (``side:path`` keys, after a teacher ``head``) and of both outputs, from
    one forward of each net on zeros; also checks that every tap fires and the class counts agree."""
    shapes: dict[str, torch.Size] = {}
    for side, net in (("teacher", teacher), ("student", student)):
        side_taps = [t for t in taps if t.side == side]
        paths = list(dict.fromkeys(t.path for t in side_taps))
        try:
            with FeatureTap(net, paths, index=indices_by_path((t.path, t.index) for t in side_taps)) as tap:
                modes = {m: m.training for m in net.modules()}
                net.eval()
                try:
                    out = main_output(net(torch.zeros(tuple(shape), device=device)))
                finally:
                    for m, mode in modes.items():
                        m.training = mode
                silent = [p for p in paths if p not in tap.outputs]
                if silent:
                    raise ConfigError(f"distill.taps: {side} {type(net).__name__} module(s) {silent} produced no "
                                      f"output in an eval-mode forward (not called? use 'head' on a tapped "
                                      f"feature for heads that only run in training)")
                for t in side_taps:
                    x = tap.get(t.path, t.index)
                    if t.head is not None:
                        x = _resolve(net, t.head, side)(x)
                    shapes[f"{t.key}>{t.head}" if t.head else t.key] = x.shape
        except ValueError as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(f"distill.taps: bad {side} path for {type(net).__name__}: {err}") from err
        shapes[f"{side}:<output>"] = out.shape
    t_cls, s_cls = shapes["teacher:<output>"][1], shapes["student:<output>"][1]
    if t_cls != s_cls:
        raise ConfigError(f"teacher {type(teacher).__name__} predicts {t_cls} classes but student "
                          f"{type(student).__name__} predicts {s_cls}")
    return shapes

def _resolve(net: nn.Module, path: str, side: str) -> nn.Module:
    try:
        return resolve_module(net, path)
    except ValueError as err:
        raise ConfigError(f"distill.taps: bad {side} head path: {err}") from err

def build_kd_loss(kd_loss: Any, taps: Sequence[Tap], shapes: Mapping[str, torch.Size]) -> nn.Module:
    """Instantiate the KD loss, filling ``classes`` and ``<role>_channels`` from the dry forward."""
    if isinstance(kd_loss, nn.Module):
        return kd_loss
    cfg = dict(to_plain(kd_loss))
    if "_target_" not in cfg:
        raise ConfigError(f"distill.loss has no _target_: {cfg}")
    check_targets(cfg, "distill.loss")  # before get_class imports anything it names (a checkpoint's config is data),
    params = inspect.signature(get_class(cfg["_target_"]).__init__).parameters  # and a typo is one line (a walkthrough)
    if "classes" in params and "classes" not in cfg:
        cfg["classes"] = int(shapes["student:<output>"][1])
    for name in params:
        if not name.endswith("_channels") or name in cfg:
            continue
        role = name[: -len("_channels")]
        chans = [int(shapes[t.key][1]) for t in taps if t.role == role]
        if not chans:
            raise ConfigError(f"{cfg['_target_']} needs {name} but no tap declares role {role!r}")
        cfg[name] = chans if role in LIST_ROLES else chans[0]
    return build(cfg, what="distill.loss")
