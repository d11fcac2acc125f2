"""``report.html`` beside ``report.md``/``report.csv``: one self-contained page (tables, the curves and each
run's figures embedded as base64 PNG, inline CSS, no script or network) to share results without W&B."""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from engine.artifacts import atomic_write_text
from engine.run_files import run_figure

#: per-run figures embedded when present (run dir file names), in this order
RUN_FIGURES = ("learning_curves.png", "test_overlays.png", "test_roc.png", "confusion_matrix_test.png",
               "fed_curves.png", "partition.png", "kd_maps.png", "fed_distill.png")
STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
         "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child"
         "{text-align:left}th{background:#f3f3f3}img{max-width:100%;margin:.5em 0}code{background:#f3f3f3}"
         "details{margin:.5em 0}")


def png_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _inline(text: str) -> str:
    # Markdown's entities, \| and \[ \] (run_files.md_text) read back, then escaped for HTML
    text = html.escape(html.unescape(text.replace("\\|", "|").replace("\\[", "[").replace("\\]", "]")))
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def markdown_to_html(md: str) -> str:
    """The report's Markdown (pipe tables, paragraphs, ``-`` lists, bold, code) as HTML."""
    out, rows = [], []

    def flush() -> None:
        if rows:
            head, body = rows[0], rows[1:]
            out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</table>")
            rows.clear()

    in_list = False

    def close_list() -> None:
        nonlocal in_list
        if in_list:
            out.append("</ul>")
            in_list = False

    for line in md.splitlines():
        if line.startswith("|"):
            close_list()
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]  # not at an escaped \|
            if not all(re.fullmatch(r":?-{3,}:?", c) for c in cells):
                rows.append(cells)
            continue
        flush()
        if line.strip().startswith(("- ", "* ")):  # a review: <li> items were written without their <ul>
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{_inline(line.strip()[2:])}</li>")
            continue
        close_list()
        if line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    flush()
    close_list()
    return "\n".join(out)


def write_html(out: Path, md: str, curve: Path | None, runs: list[Path], labels: dict[Path, str],
               title: str = "fedmed report") -> Path:
    """Write ``out/report.html`` (see the module docstring); returns its path."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p>{len(runs)} runs under <code>{html.escape(str(out))}</code></p>", markdown_to_html(md)]
    if curve is not None and Path(curve).is_file():
        parts += ["<h2>Curves</h2>", png_tag(curve, "curves")]
    # a figure is embedded only if it is a PNG inside its run folder (a link to /proc/self/environ was embedded)
    figures = [(run, [f for f in (run_figure(run, name) for name in RUN_FIGURES) if f is not None]) for run in runs]
    if any(figs for _, figs in figures):
        parts.append("<h2>Runs</h2>")
    for run, figs in figures:
        if figs:
            label = labels.get(run, run.name)
            parts.append(f"<details><summary>{html.escape(label)} <code>{html.escape(run.name)}</code></summary>"
                         + "".join(png_tag(f, f"{label}: {f.name}") for f in figs) + "</details>")
    parts.append("</body></html>")
    path = Path(out) / "report.html"
    atomic_write_text(path, "\n".join(parts))
    return path
