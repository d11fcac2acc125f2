"""Text and figures read from run folders that may come from elsewhere, made safe for the reports.

A report (``experiments.report``, ``kd_report``, ``federation.curves``) reads folders a collaborator handed
over: their error lines, overrides, method names and figures are data. A security audit found a figure linked
to ``/proc/self/environ`` embedded (secrets and all) in ``report.html``, terminal escapes and rich markup from
``failed.json`` reaching the terminal (a ``[/bold]`` stopped the report), raw HTML in ``report.md`` and
spreadsheet formulas (``=HYPERLINK(...)``) in the CSV tables. Every such string and figure goes through here.
A second audit found reports following a ``metrics.json`` or ``rounds.csv`` linked to a file elsewhere,
tracebacks on a JSON or YAML nested 200,000 deep, and a YAML alias bomb expanded by ``str()``: run files are
read by :func:`run_file_text`, :func:`run_json` and :func:`run_yaml`, and non-text values shown bounded.
"""
from __future__ import annotations

import html
import json
import re
import reprlib
from pathlib import Path
from typing import Any

import yaml

#: control characters (C0 but tab/newline, which become spaces, DEL, C1): terminal escapes start with ESC
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
#: a CSV cell starting with one of these is a formula to a spreadsheet
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: the largest figure embedded in report.html (ours are ~50-300 kB)
MAX_FIGURE_BYTES = 20 * 2**20
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


#: the largest run file (JSON, YAML, CSV) a report reads; ours are kilobytes
MAX_RUN_FILE_BYTES = 64 * 2**20
#: a bounded repr of containers read from run files (a YAML alias bomb's ``str()`` would not end)
_BOUNDED = reprlib.Repr()  # Python 3.11's takes no keywords
_BOUNDED.maxlevel, _BOUNDED.maxstring, _BOUNDED.maxother = 4, 200, 200
_BOUNDED.maxdict = _BOUNDED.maxlist = _BOUNDED.maxtuple = _BOUNDED.maxset = 8


def run_file_text(path: str | Path, root: str | Path | None = None) -> str | None:
    """The text of a run file that is what it is named: a regular file, not a link, inside ``root`` when
    given, at most :data:`MAX_RUN_FILE_BYTES`, UTF-8; else ``None`` (a report leaves it out as unreadable)."""
    path = Path(path)
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_RUN_FILE_BYTES:
            return None
        if root is not None and not path.resolve().is_relative_to(Path(root).resolve()):
            return None
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def run_json(path: str | Path, root: str | Path | None = None) -> Any:
    """A run file's JSON value, or ``None`` (unreadable as :func:`run_file_text` says, or not JSON)."""
    text = run_file_text(path, root)
    try:
        return None if text is None else json.loads(text)
    except (ValueError, RecursionError):  # ValueError: JSONDecodeError, and ints past Python's digit limit
        return None


class NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` refusing aliases (``*a``): the YAML this framework, Hydra and OmegaConf write holds none,
    and a crafted file's nested aliases (a "billion laughs") expand to gigabytes where a value is used (a
    verification: predict's ``OmegaConf.load`` of such a ``config.yaml`` ran out of memory)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError(f"an alias (*{self.peek_event().anchor}) at {self.peek_event().start_mark}: "
                                 f"this framework's YAML files hold none")
        return super().compose_node(parent, index)


def load_yaml_data(text: str) -> Any:
    """YAML ``text`` as data: safe types only, no aliases (:class:`NoAliasLoader`)."""
    return yaml.load(text, Loader=NoAliasLoader)  # noqa: S506 - a SafeLoader subclass


def run_yaml(path: str | Path, root: str | Path | None = None) -> Any:
    """A run file's YAML value (:func:`load_yaml_data`), or ``None`` as :func:`run_json`."""
    text = run_file_text(path, root)
    try:
        return None if text is None else load_yaml_data(text)
    except (yaml.YAMLError, ValueError, RecursionError):
        return None


def as_number(value: Any) -> float | None:
    """A number read from a run file as a float, else ``None``: bools, text, and ints too large for a float
    (an audit's ``1`` followed by 400 zeros was an OverflowError traceback)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def plain_text(value: Any, limit: int = 500) -> str:
    """``value`` as one line of printable text: control characters dropped, line breaks and tabs as spaces;
    a container read from a run file is shown bounded (:data:`_BOUNDED`), never expanded whole."""
    raw = value if isinstance(value, str) else _BOUNDED.repr(value) if isinstance(
        value, (dict, list, tuple, set)) else str(value)
    text = _CONTROL.sub("", raw.replace("\r", " ").replace("\n", " ").replace("\t", " "))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def md_text(value: Any, limit: int = 500, cell: bool = True) -> str:
    """:func:`plain_text` for Markdown: ``<``/``>``/``&`` as entities (no raw HTML for a viewer to render or
    fetch), ``[``/``]`` escaped (no image a viewer fetches, no link: a second audit found
    ``![t](https://attacker/leak.png)`` from a crafted overrides.yaml rendered in report.md) and, in a table
    ``cell``, ``|`` escaped (no extra cell)."""
    text = html.escape(plain_text(value, limit), quote=False).replace("[", "\\[").replace("]", "\\]")
    return text.replace("|", "\\|") if cell else text


def md_code(value: Any, limit: int = 500) -> str:
    """:func:`plain_text` for a Markdown code span (wrap it in backticks): a viewer shows a span's content as it
    is -- no HTML, link or image -- so only a backtick, which would end the span, is replaced; :func:`md_text`'s
    escapes would show as typed there (a walkthrough: ``data.synthetic.shape=\\[32,32,8\\]``)."""
    return plain_text(value, limit).replace("`", "'")


def csv_text(value: Any) -> str:
    """:func:`plain_text` for a CSV text cell, quoted with ``'`` where a spreadsheet would run it: a leading
    ``=`` or ``@``, or a leading ``+``/``-`` with a call, DDE pipe or sheet reference (``(``, ``|``, ``!``).
    A run label such as ``+distill.loss.beta=0.5`` stays as written, so report.csv and report.md agree."""
    text = plain_text(value)
    risky = text.startswith(_FORMULA_START) and (not text.startswith(("+", "-")) or re.search(r"[(|!]", text))
    return "'" + text if risky else text


def run_figure(run: Path, name: str) -> Path | None:
    """``run/name`` if it is a PNG that lies in the run folder: a regular file, not a link, at most
    :data:`MAX_FIGURE_BYTES`, with the PNG signature; else ``None``."""
    path = Path(run) / name
    try:
        if path.is_symlink() or not path.is_file() or not path.resolve().is_relative_to(Path(run).resolve()):
            return None
        if path.stat().st_size > MAX_FIGURE_BYTES:
            return None
        with path.open("rb") as fh:
            return path if fh.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE else None
    except OSError:
        return None


def run_config(run: Path) -> dict:
    """A run's composed config: ``config.yaml``, else Hydra's ``.hydra/config.yaml``; ``{}`` when neither parses."""
    for path in (run / "config.yaml", run / ".hydra" / "config.yaml"):
        cfg = run_yaml(path, run)  # a .hydra/ linked elsewhere is not read
        if isinstance(cfg, dict) and cfg:
            return cfg
    return {}


def debug_run(metrics: dict | None, cfg: dict) -> bool:
    """A debug run (``fast_dev_run`` or any ``debug=`` mode), from its parsed ``metrics.json`` and config: its
    numbers are not results (a review: a ``debug=limit`` job was pooled as a second seed of its method). One test
    for ``experiments.report``, ``kd_report``, ``decathlon_report`` and ``federation.curves``."""
    trainer = cfg.get("trainer") if isinstance(cfg.get("trainer"), dict) else {}
    debug = cfg.get("debug") if isinstance(cfg.get("debug"), dict) else {}
    return bool((metrics or {}).get("debug") or trainer.get("fast_dev_run") or debug.get("mode"))
