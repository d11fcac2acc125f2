"""The command that continues (or runs again) a stopped run, and a run's saved overrides as data.

A stopped run prints one line with the command to paste (:func:`interrupted_line`); a sweep, the command that
continues the whole sweep (:func:`sweep_continue_command`). The overrides come from the run's own
``.hydra/overrides.yaml``, read as bounded data; one that could make a pasted command run code is left out and
named (:func:`saved_overrides`). Split from :mod:`engine.run_match`, which compares configs.
"""
from __future__ import annotations

import functools
import logging
import re
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.run_files import plain_text, run_yaml

log = logging.getLogger(__name__)

__all__ = ["saved_overrides", "canonical_override", "holds_run", "interrupted_line", "sweep_continue_command",
           "continue_command", "hydra_value"]

#: overrides a continued run must not repeat: its folder comes from ``resume=``, Hydra's own from Hydra
_NOT_REPEATED = ("resume=", "hydra.", "ckpt_path=")
#: an override that names code to build (a ``_target_`` or another Hydra instantiate key, in its key or value)
#: or extends the allow-list of what a file may build
_CODE = re.compile(r"_(target|args|partial|recursive|convert)_|allow_targets", re.IGNORECASE)


def _names_code(override: str) -> bool:
    """Whether a saved override could make a pasted command run code: :data:`_CODE` anywhere, a flag
    (``--config-dir``, ``-cd``, ``--run``: another config tree, whose YAMLs may build anything) or a key of
    Hydra's own (``hydra/callbacks=...``, ``hydra.callbacks...``), which the run's folder does not need. An
    augmentation pipeline whose every ``_target_`` is an albumentations transform is data (a review: left out,
    the suggested command composed no pipeline, and the resume it offered was refused for that)."""
    text = override.strip()
    key = text.lstrip("+~").split("=", 1)[0].strip().lower()
    if text.startswith("-") or key.startswith("hydra"):
        return True
    return bool(_CODE.search(text)) and not _augmentation_only(key, text)


def _augmentation_only(key: str, text: str) -> bool:
    """``<...>.augmentation=[...]`` whose value, parsed as Hydra parses the command line, holds no interpolation,
    no instantiate key but ``_target_`` and no ``allow_targets``, and whose every ``_target_`` is an albumentations
    transform (:func:`_albumentations_only`); a value Hydra does not parse, or a sweep, is not."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if key != "augmentation" and not key.endswith(".augmentation"):
        return False
    try:
        override = OverridesParser.create().parse_overrides([text])[0]
    except Exception:  # noqa: BLE001 - Hydra's parse errors have no common base: not data then
        return False
    return not override.is_sweep_override() and _albumentations_only(override.value())


def _albumentations_only(node: Any) -> bool:
    """Whether a parsed override value is plain data whose ``_target_``s are all albumentations transforms."""
    from lightning_modules.errors import ConfigError
    from lightning_modules.targets import is_augmentation

    if isinstance(node, str):
        return "${" not in node
    if node is None or isinstance(node, (bool, int, float)):
        return True
    if isinstance(node, list):
        return all(_albumentations_only(v) for v in node)
    if not isinstance(node, dict) or not all(isinstance(k, str) for k in node):
        return False
    if any(_CODE.search(k) and k != "_target_" for k in node):  # _args_, _partial_, allow_targets...
        return False
    target = node.get("_target_")
    try:
        if target is not None and not (isinstance(target, str) and is_augmentation(target)):
            return False
    except ConfigError:  # a name that does not resolve here
        return False
    return all(_albumentations_only(v) for v in node.values())


def saved_overrides(run: Path) -> list[str]:
    """The command-line overrides the run was started with (``.hydra/overrides.yaml``), to be shown, never
    applied; ``resume=``, ``hydra.*`` and ``ckpt_path=`` ones left out, and those naming code (a ``_target_``,
    ``allow_targets``): the folder may come from elsewhere, and a user pastes the command shown (an audit:
    ``+callbacks.x._target_=shutil.rmtree`` in a handed-over folder was offered as the command to run). Those
    are named in one warning."""
    got = run_yaml(run / ".hydra" / "overrides.yaml", run)  # not a link elsewhere, bounded (an audit: /dev/zero)
    if not isinstance(got, list):
        return []
    # an override is a string; anything else (an alias bomb's nested lists) is shown bounded, never expanded
    kept = [o if isinstance(o, str) else plain_text(o, 200) for o in got]
    kept = [o for o in kept if not o.lstrip("+~").startswith(_NOT_REPEATED)]
    code = [o for o in kept if _names_code(o)]
    if code:
        log.warning("%s names code in %d override(s), left out of the command shown (check them before "
                    "repeating any): %s", run / ".hydra" / "overrides.yaml", len(code), "; ".join(code)[:300])
    return [o for o in kept if o not in code]


@functools.lru_cache(maxsize=1)
def _override_parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def canonical_override(text: str) -> str:
    """``text`` as Hydra parses it, for comparing runs' overrides (``x=true`` and a sweep job's ``x=True`` are one
    override: found comparing a resumed run with its sweep, which ``experiments.report`` and
    ``federation.curves`` split into two methods); as typed when Hydra cannot parse it."""
    try:
        o = _override_parser().parse_overrides([text])[0]
        if o.is_delete() and o.value() is None:
            return o.get_key_element()
        return f"{o.get_key_element()}={o.get_value_element_as_str()}"
    except Exception:  # noqa: BLE001 - a hand-edited overrides.yaml: keep the text
        return text


def holds_run(run: Path | str) -> bool:
    """Whether ``run`` holds a run to continue: a centralised or distillation run's ``checkpoints/``, a
    federation's ``server.pt``, a distillation stopped in its ``teacher/`` stage, a federated distillation's
    site arms (``sites/<site>/<arm>/`` with a checkpoint or its finished ``student.pt``/``teacher.pt``: one run with
    local arms only has no other; a bare ``sites/`` folder is none: a review)."""
    run = Path(run)
    return ((run / "checkpoints").is_dir() or (run / "server.pt").is_file() or (run / "teacher").is_dir()
            or any(next((run / "sites").glob(f"*/*/{name}"), None) is not None
                   for name in ("checkpoints", "student.pt", "teacher.pt")))


def interrupted_line(signame: str, overrides: Iterable[str], run: Path | str) -> str:
    """The one line a stopped run prints: the command that continues it, or, when nothing it holds can be
    continued yet, the command that runs it again (a review: the suggested ``resume=<dir>`` was refused)."""
    if holds_run(run):
        return f"error: interrupted by {signame}; continue with: {continue_command(overrides, run)}"
    return (f"error: interrupted by {signame} before anything was saved to continue; run it again: "
            f"{continue_command(overrides, run, resume=False)}")


def sweep_continue_command(typed: Iterable[str], sweep_dir: Path | str) -> str:
    """The shell command that continues a whole stopped sweep: its typed overrides (the ``a,b`` values with them),
    ``resume=true`` (each job continues its own folder; a finished one is left as it is) and the sweep's folder. A
    walkthrough: Ctrl-C in a sweep was told only the stopped job's command, without ``-m`` and the other jobs."""
    # its flags stay, with their values (-cn other, --config-dir x: a review), but -m, written first
    kept = [str(a) for a in typed if str(a) not in ("-m", "--multirun")
            and not str(a).lstrip("+~").startswith(("resume=", "hydra.sweep.dir="))]
    tail = ["resume=true", f"hydra.sweep.dir={hydra_value(str(sweep_dir))}"]
    return " ".join(["python -m experiments.run -m", *(shlex.quote(a) for a in [*kept, *tail])])


def continue_command(overrides: Iterable[str], run: Path | str, resume: bool = True) -> str:
    """The shell command that continues the run in ``run``: ``overrides`` (less those a resume must not
    repeat), each quoted for a POSIX shell (``data.window=[-40,160]`` is a glob there), then ``resume=<run>``
    (without it, ``resume=False``: the command that runs it again from the start, which keeps ``ckpt_path=``:
    a review saw an interrupted fine-tune told to rerun a command that trained from scratch)."""
    # ckpt_path= goes unless the run has its own last.ckpt to continue from (a review: a distillation stopped in
    # its teacher/ stage was told to continue without it, and its student then trained from scratch)
    own = resume and (Path(run) / "checkpoints" / "last.ckpt").is_file()
    skip = _NOT_REPEATED if own else tuple(k for k in _NOT_REPEATED if k != "ckpt_path=")
    # run again: in the folder it was given (a walkthrough: the command dropped the user's hydra.run.dir=)
    kept = [str(o) for o in overrides if not str(o).lstrip("+~").startswith(skip)
            or (not resume and str(o).lstrip("+~").startswith("hydra.run.dir="))]
    kept = [o for o in kept if not o.startswith("-")]  # never a flag: the command is overrides + resume= only
    tail = [f"resume={hydra_value(str(run))}"] if resume else []
    return " ".join(["python -m experiments.run", *(shlex.quote(a) for a in [*kept, *tail])])


def hydra_value(text: str) -> str:
    """``text`` as an override's value that Hydra reads back as that string: as it is when it is, else single-quoted
    (a review: a run folder or file path holding ``=``, ``[`` or ``(`` made a suggested command Hydra refused). A
    ``${...}`` in it is still an interpolation, quoted or not, as for any value typed on Hydra's command line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        if OverridesParser.create().parse_overrides([f"k={text}"])[0].value() == text:
            return text
    except Exception:  # noqa: BLE001 - Hydra's parse error: quoted below
        pass
    # in a quoted value a backslash is itself only before a quote or at the end: doubled there, then \' for '
    escaped = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text)
    return "'" + escaped.replace("'", "\\'") + "'"
