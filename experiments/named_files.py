"""Which files of a run folder a new run's config names: those stay when an earlier run's files move aside
(:func:`experiments.run_folder.set_aside_run`), and one where the new run saves its own checkpoints is refused
(:func:`checkpoint_clash`). Paths are compared with their folders resolved (a link to the run folder is that
folder) and their own names kept (a named link stays that link)."""
from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def top_name(path: Path, run: Path, base: Path) -> str | None:
    """The entry at the top of ``run`` that holds ``path`` (a relative one: below ``base``), or None outside it."""
    try:
        rel = (base / path).resolve().relative_to(run.resolve())  # an absolute path stays itself
    except (ValueError, OSError, RuntimeError):
        return None
    return rel.parts[0] if rel.parts else None


def _config_paths(cfg: DictConfig) -> list[str]:
    """Every plain string value of the config as an absolute path (relative values: to the working dir, which
    Hydra leaves unchanged; interpolations and values inside lists are not followed)."""
    out, stack = [], [OmegaConf.to_container(cfg, resolve=False)]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, str) and 0 < len(node) < 4096 and not node.startswith("${") and node != "???":
            out.append(os.path.abspath(Path.cwd() / Path(node).expanduser()))
    return out


def _real(path: str) -> str:
    """``path`` with its folders resolved and its own name kept (a named link stays that link)."""
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def named_files(cfg: DictConfig, run: Path) -> set[str]:
    """The files in ``run`` the config's values name, spelled below ``run`` as given (as :func:`experiments.run_folder.set_aside_run` walks
    it), whichever way the value reaches them (a review: through a link to the run folder, the named checkpoint
    was moved away); links not followed."""
    root = os.path.realpath(run)
    out: set[str] = set()
    for path in _config_paths(cfg):
        real = _real(path)
        if real.startswith(root + os.sep) and (os.path.isfile(real) or os.path.islink(real)):
            out.add(os.path.join(os.path.abspath(run), os.path.relpath(real, root)))
    return out


def _own_checkpoints(cfg: DictConfig, run: Path) -> set[str]:
    """The files this run's checkpoint callbacks write (``callbacks.<name>.dirpath`` / ``filename``.ckpt, with
    ``${paths.output_dir}`` as ``run``), folders resolved; those it cannot tell are left out."""
    out: set[str] = set()
    callbacks = cfg.get("callbacks")  # null, or left out (~callbacks): none (a review: that raised)
    for cb in (OmegaConf.to_container(callbacks, resolve=False) if OmegaConf.is_dict(callbacks) else {}).values():
        if not isinstance(cb, dict) or not isinstance(cb.get("dirpath"), str) or not isinstance(cb.get("filename"), str):
            continue
        folder = cb["dirpath"].replace("${paths.output_dir}", str(run))
        if "${" not in folder and "{" not in cb["filename"]:
            out.add(_real(os.path.join(os.path.abspath(folder), f"{cb['filename']}.ckpt")))
    return out


def checkpoint_clash(run: Path, cfg: DictConfig) -> str | None:
    """For a new run that trains in ``run``: a checkpoint its config names (``ckpt_path=``,
    ``distill.teacher.ckpt=``) where it writes its own (``checkpoints/best.ckpt``, ``last.ckpt``), as one line;
    else None. Such a file stays when the earlier run's move aside (:func:`set_aside_run`), and the new run then
    saved its best as ``best-v1.ckpt`` beside it (predict on ``best.ckpt`` took the earlier model) and replaced its
    ``last.ckpt`` (a later resume of a distillation took its own student as the teacher). A federation writes no
    ``checkpoints/``; ``distill=teacher`` with a teacher checkpoint only tests it (a review)."""
    if not cfg.get("train", True) or cfg.get("federation") is not None or cfg.get("fed_distill") is not None:
        return None
    teacher = OmegaConf.select(cfg, "distill.teacher.ckpt", default=None, throw_on_resolution_failure=False)
    if OmegaConf.select(cfg, "distill.method", default=None) == "teacher" and isinstance(teacher, str) \
            and os.path.isfile(teacher):
        return None
    own = _own_checkpoints(cfg, run)
    clash = sorted(p for p in _config_paths(cfg) if _real(p) in own and os.path.lexists(p))
    if not clash:
        return None
    return (f"{clash[0]}, which this run's config names, is where this new run (train=true) saves its own "
            f"checkpoint: copy it elsewhere first, or give this run another folder (train=false only tests it; "
            f"resume=true continues the run that is there)")

