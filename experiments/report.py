"""Compare finished runs without a network: ``python -m experiments.report <multirun dir or glob> [...]``.

Collects every run dir (one with ``metrics.json``, or ``failed.json`` for a job that failed) below the
given paths, groups runs by their Hydra overrides minus ``seed``, and writes a comparison table — one row
per method, mean ± std over seeds, the best value per column in bold — as Markdown and CSV, plus
learning-curve PNGs. Failed jobs are listed with their error line; no runs at all is an error.
A federation's evaluation matrix (paper 003 Table 1, ``federation.evaluation_matrix=true``) enters as
``matrix/<row>/<test set>`` keys, so ``--keys 'matrix/FL_global/*'`` gives that row over seeds per strategy
(``--keys`` takes shell-style patterns).

Only results count by default: debug runs (``trainer.fast_dev_run``, marked ``"debug": true`` in
``metrics.json``), crashed runs (``failed.json``) and unfinished ones (a run dir with ``.hydra/`` or
``config.yaml`` but neither file) stay out of the tables; they are counted in one line, and ``--all``
puts debug runs in the tables and lists the crashed and unfinished ones. Runs whose ``metrics.json`` is
unreadable or holds no number are left out too, and listed with the reason.
"""
from __future__ import annotations

import argparse
import csv
import difflib
import fnmatch
import glob
import math
import html
import io
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from callbacks.metric_goal import goal
from engine.artifacts import atomic_write_text, console
from engine.run_files import MAX_RUN_FILE_BYTES, as_number, csv_text, md_code, md_text, plain_text, run_config
from experiments.report_curves import CURVE_KEYS, completed, curve_key, plot_curves, read_curves  # noqa: F401
from experiments.report_html import write_html
from experiments.report_overrides import MAX_OVERRIDE_CHARS, MAX_OVERRIDES, overrides_beyond_caps
from experiments.report_runs import (environment_differences, find_runs, find_unfinished, is_debug,  # noqa: F401
                                     json_object, label_parts, method_contexts, run_labels, seeds_counted_twice)

#: the columns a report shows by default, those present in the runs (surface metrics and the best validation
#: score, what a sweep selects on, included: a walkthrough missed them)
DEFAULT_KEYS = ("test/dice", "test/miou", "test/hd95", "test/nsd", "val/dice_best", "val/auc_best", "test/accuracy",
                "test/auc", "test/acc")
#: columns with no better end (when the best came, clients dropped, sizes and counts): never bold (a review);
#: matched against the key's last part, so a site or class named ``rounds_b`` is still ranked
UNRANKED = ("_best_step", "dropped_total", "rounds", "parameters", "gflops_per_image", "num_cases", "best_round",
            "num_clients", "shared_pool")  # a review: fed_distill/*/parameters, fed/num_clients were ranked
#: whole groups of such columns: ``init_weights/loaded``, ``/kept``, ``/unused`` (what the file gave, counts)
UNRANKED_GROUPS = ("init_weights/",)


def unranked(key: str) -> bool:
    last = key.rsplit("/", 1)[-1]
    return (last.endswith(UNRANKED) or key.startswith(UNRANKED_GROUPS)) and not key.startswith("matrix/")


def default_keys(runs: list[Path]) -> tuple[str, ...]:
    """:data:`DEFAULT_KEYS` and each run's own ``<module.monitor>_best``, the score its sweep selects on (a
    walkthrough: a ``val/acc``-monitored classification sweep showed ``val/auc_best`` but not ``val/acc_best``)."""
    monitors = []
    for run in runs:
        module = run_config(run).get("module")
        monitor = module.get("monitor") if isinstance(module, dict) else None  # a damaged config: no column
        if isinstance(monitor, str) and monitor and f"{monitor}_best" not in monitors:
            monitors.append(f"{monitor}_best")
    return tuple(dict.fromkeys([*DEFAULT_KEYS[:4], *monitors, *DEFAULT_KEYS[4:]]))


def numeric_metrics(metrics: dict) -> dict[str, float]:
    """A run's numeric metrics, with its evaluation matrix ({row: {test set: value}}) flattened to
    ``matrix/<row>/<test set>``."""
    flat = {plain_text(k, 200): as_number(v) for k, v in metrics.items()}
    matrix = metrics.get("evaluation_matrix")
    for row, cols in (matrix.items() if isinstance(matrix, dict) else ()):  # a crafted file: any shape
        if isinstance(cols, dict):
            flat.update({plain_text(f"matrix/{row}/{col}", 200): as_number(v) for col, v in cols.items()})
    return {k: v for k, v in flat.items() if v is not None and math.isfinite(v)}  # NaN: no value (a review)


def collect(runs: list[Path], keys: tuple[str, ...] | None, siblings: list[Path] = (),
            goal_keys: dict[str, str] | None = None) -> tuple[dict[str, dict[str, list[float]]], list[str]]:
    """Values per method and key; ``keys`` are names or shell-style patterns (``matrix/FL_global/*``),
    ordered as given, each pattern's matches in the order first met. Methods as :func:`run_labels` names them.
    ``goal_keys`` is filled with the metric whose goal a column has when its name does not say it: an evaluation
    matrix column's, ``test/<federation.matrix_metric>`` (a review: an HD95 matrix bolded the worst row)."""
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    found: list[str] = []
    labels, _ = run_labels(runs, siblings)
    for run in runs:
        label = labels[run]
        metrics = json_object(run / "metrics.json") or {}
        metric = metrics.get("evaluation_matrix_metric")
        for key, value in numeric_metrics(metrics).items():
            if goal_keys is not None and key.startswith("matrix/") and isinstance(metric, str):
                goal_keys[key] = f"test/{plain_text(metric, 100)}"
            if keys is None or any(fnmatch.fnmatchcase(key, k) for k in keys):
                groups[label][key].append(value)
                if key not in found:
                    found.append(key)
    ordered = [f for k in keys for f in found if fnmatch.fnmatchcase(f, k)] if keys else found
    return groups, list(dict.fromkeys(ordered))


def table(groups: dict[str, dict[str, list[float]]], keys: list[str],
          contexts: dict[str, str] | None = None, goal_keys: dict[str, str] | None = None) -> tuple[str, str]:
    """Markdown and CSV tables: mean ± std (population, over seeds) per method and key; the best mean per
    column in bold (within each experiment of ``contexts``), every method tied with it at the 4 digits shown
    too. One run has no spread: the CSV's ``_std`` cell is empty, not 0. A method whose key is missing in some of its
    runs (``(n=k)``) is not ranked in that column (a review: a method whose other seeds gave NaN took the bold with
    its one finite seed)."""
    contexts = contexts or {}
    runs_of = {m: max((len(v) for v in vals.values()), default=0) for m, vals in groups.items()}
    best: dict[str, set[str]] = {}
    for key in keys:
        best[key] = set()
        for context in set(contexts.get(m, "") for m in groups):
            means = {m: np.mean(v[key]) for m, v in groups.items()
                     if v.get(key) and len(v[key]) == runs_of[m] and contexts.get(m, "") == context}
            if means and not unranked(key):
                named = (goal_keys or {}).get(key, key)  # the metric a column holds
                pick = min if goal(named) == "min" or key.endswith("_std") else max
                score = (lambda m: abs(means[m])) if "rvd" in named else (lambda m: means[m])
                top = f"{score(pick(means, key=score)):.4f}"
                best[key] |= {m for m in means if f"{score(m):.4f}" == top}
    md = ["| " + " | ".join(["method", "n", *map(md_text, keys)]) + " |", "|---|---|" + "---|" * len(keys)]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["method", "n", *[csv_text(c) for k in keys for c in (f"{k}_mean", f"{k}_std")]])
    for method, vals in sorted(groups.items(), key=lambda mv: (contexts.get(mv[0], ""), mv[0])):
        n = runs_of[method]
        cells, row = [], [method, n]
        for key in keys:
            v = vals.get(key, [])
            if not v:
                cells.append("–")
                row += ["", ""]
                continue
            mean, std = float(np.mean(v)), float(np.std(v))
            cell = f"{mean:.4f} ± {std:.4f}" if len(v) > 1 else f"{mean:.4f}"  # one run: no spread to show
            cell = f"**{cell}**" if method in best.get(key, ()) else cell
            # a review: a metric missing (NaN, e.g. HD95 with no lesion) in some runs was averaged over the others
            # under the method's full n (it is not ranked either, above)
            cells.append(cell if len(v) == n else f"{cell} (n={len(v)})")
            row += [f"{mean:.6f}", f"{std:.6f}" if len(v) > 1 else ""]
        row[0] = csv_text(method)  # labels come from run folders: no spreadsheet formula
        md.append(f"| {md_text(method)} | {n} | " + " | ".join(cells) + " |")
        writer.writerow(row)
    return "\n".join(md) + "\n", buf.getvalue()


def left_out(runs: list[Path]) -> dict[Path, str]:
    """The runs whose files leave them out of the tables, with why: a ``metrics.json`` that is no readable JSON
    object (a killed write; a link, too large), one with no number (``{}``, debug runs aside), an
    ``overrides.yaml`` beyond :data:`MAX_OVERRIDES`."""
    left = {}
    for run in runs:
        metrics = json_object(run / "metrics.json")
        if overrides_beyond_caps(run):
            left[run] = (f"unreadable: .hydra/overrides.yaml holds over {MAX_OVERRIDES} overrides or one over "
                         f"{MAX_OVERRIDE_CHARS} characters")
        elif metrics is None:
            left[run] = (f"unreadable: metrics.json is not a readable JSON object (a link, over "
                         f"{MAX_RUN_FILE_BYTES >> 20} MB, or not one)")
        elif not numeric_metrics(metrics) and not is_debug(run):
            left[run] = "no metrics: metrics.json holds no number"
    return left


def failures(failed: list[Path]) -> list[str]:
    """One Markdown list line per failed run: its folder and ``failed.json``'s error."""
    lines = []
    for run in failed:
        info = json_object(run / "failed.json") or {"error": "failed.json does not parse"}
        # its metrics.json, written before it failed, is no result (a walkthrough: it was pooled as one)
        kept = " (its metrics.json, written before it failed, is left out)" if (run / "metrics.json").is_file() else ""
        lines.append(f"- `{md_code(run)}`: {md_text(info.get('error', '?'), cell=False)}{kept}")
    return lines


def glob_root(path: str) -> Path:
    """The folder a path or glob names before its first wildcard (``sweep/*/`` -> ``sweep``): the report's
    default ``--out``; a review: ``report 'sweep/*'`` wrote into a folder literally named ``*``."""
    parts = Path(path).parts
    plain = parts[:next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))]
    return Path(*plain) if plain else Path(".")


def common_lines(runs: list[Path], failed: list[Path]) -> str:
    """The settings left out of the labels: those common to every run, then, over several experiments, those
    common to every run of one (a walkthrough: each experiment's own ``trainer.max_epochs`` was nowhere)."""
    _, common, by_experiment = label_parts(runs, failed)
    lines = [f"Common to every run: `{md_code(' '.join(common))}`"] if common else []
    lines += [f"Common to the runs of `{md_code(name)}`: `{md_code(' '.join(shared))}`"
              for name, shared in by_experiment.items()]
    return "".join(f"{line}\n\n" for line in lines)


def matrix_note(runs: list[Path], ordered: list[str]) -> str:
    """What the ``matrix/*`` columns hold: ``test/<federation.matrix_metric>``, which the keys do not name (a
    walkthrough: ``--keys 'matrix/FL_global/*'`` gave a table of numbers without saying Dice), and a warning when
    the runs' matrices hold different metrics, which one column then mixes."""
    if not any(k.startswith("matrix/") for k in ordered):
        return ""
    held: dict[str, list[str]] = defaultdict(list)
    for run in runs:
        metrics = json_object(run / "metrics.json") or {}
        metric = metrics.get("evaluation_matrix_metric")
        if isinstance(metric, str) and isinstance(metrics.get("evaluation_matrix"), dict):
            held[f"test/{plain_text(metric, 100)}"].append(run.name)
    if len(held) == 1:
        return f"\n`matrix/*` cells: each run's evaluation matrix of `{md_code(next(iter(held)))}`.\n"
    if len(held) > 1:
        said = "; ".join(f"`{md_code(m)}`: {md_text(', '.join(names[:5]), 400, cell=False)}"
                         for m, names in held.items())
        return (f"\n**The runs' evaluation matrices hold different metrics** ({said}): a `matrix/*` column mixes them "
                f"and its bold follows one of them; report them apart.\n")
    return ""


def with_notes(md: str, runs: list, failed: list, groups: dict, ordered: list, contexts: dict, left: dict,
               debug: list, unfinished: list, show_all: bool) -> str:
    """The report's table with what a reader must know beside it: settings common to every run (and to every run
    of one experiment), how means are taken, mixed experiments, seeds counted twice, differing environments,
    failed, unreadable, debug and unfinished runs."""
    md = common_lines(runs, failed) + md
    if runs and any(len(v) > 1 for vals in groups.values() for v in vals.values()):
        md += "\nmean ± std over a method's runs (population std, numpy's ddof=0; best mean in bold).\n"
    if any(0 < len(vals.get(k, [])) < max(map(len, vals.values())) for vals in groups.values() for k in ordered):
        md += ("\n(n=k): the metric is missing (NaN or absent) in the method's other runs; its mean and std are over "
               "those k runs only, and it is not ranked for the bold.\n")
    if len(set(contexts.values())) > 1:
        md += "\nThe runs are of several experiments (`+exp`, `data`): the best is bold within each, not across.\n"
    md += matrix_note(runs, ordered)
    twice = seeds_counted_twice(runs, failed)
    if twice:  # a review: two overlapping sweeps given together shrank the std without a word
        md += f"\nSeeds counted more than once (the same run made twice?): {md_text('; '.join(twice), 2000, cell=False)}\n"
        print(f"warning: seeds counted more than once: {'; '.join(twice)[:300]}", file=sys.stderr)
    federated = [any(k.startswith("fed/") for k in vals) for vals in groups.values()]
    if any(federated) and not all(federated) and any(k.startswith("test/") for k in ordered):
        md += ("\nA federation's `test/*` is its final global model's; a centralised run's `test/*` is its best "
               "validation checkpoint's (a federation's best round: `fed/best/test/*`).\n")
    differ = environment_differences(runs)
    if differ:
        md += f"\nThe runs' environments differ (env.json; equal settings need not give equal numbers): {md_text('; '.join(differ), 2000, cell=False)}\n"
    fails = failures(failed)
    if fails:
        md += f"\nFailed runs ({len(fails)}):\n" + "\n".join(fails) + "\n"
    if left:  # a review: an unreadable run was a stderr line only, one holding {} went without a word
        md += f"\nLeft out, unreadable or without metrics ({len(left)}):\n" + "\n".join(
            f"- `{md_code(r)}`: {md_text(why, cell=False)}" for r, why in left.items()) + "\n"
    if show_all and unfinished:
        md += f"\nUnfinished runs ({len(unfinished)}):\n" + "\n".join(f"- `{md_code(r)}`" for r in unfinished) + "\n"
    if not show_all and (debug or unfinished):
        md += (f"\nLeft out: {len(debug)} debug (fast_dev_run, debug=) and {len(unfinished)} unfinished run(s); "
               f"`--all` includes them.\n")
    return md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="multirun dirs, run dirs or globs")
    parser.add_argument("--keys", nargs="*", default=None, help=f"metric keys (default: those of {DEFAULT_KEYS} present)")
    parser.add_argument("--out", default=None, help="output folder (default: the first path)")
    parser.add_argument("--curve", default=None,
                        help=f"metric to plot per epoch (default: the first logged of {', '.join(CURVE_KEYS)})")
    parser.add_argument("--all", action="store_true",
                        help="also debug (fast_dev_run, debug=) runs in the tables, and list unfinished runs")
    args = parser.parse_args(argv)
    missing = [p for p in args.paths if not glob.glob(p)]
    if missing:
        print(f"error: {missing[0]} does not exist (report takes multirun dirs, run dirs or globs)", file=sys.stderr)
        return 2
    runs, failed = find_runs(args.paths)
    left = left_out(runs)
    if left:
        print(f"warning: {len(left)} run(s) left out (report.md lists them): "
              f"{'; '.join(f'{r}: {why}' for r, why in list(left.items())[:3])}", file=sys.stderr)
        runs = [r for r in runs if r not in left]
    if not runs and not failed and not left:
        print(f"error: no runs (metrics.json or failed.json) under {' '.join(args.paths)}", file=sys.stderr)
        return 2
    debug = [r for r in runs if is_debug(r)]
    unfinished = find_unfinished(args.paths)
    if not args.all:
        debug_set = set(debug)
        runs = [r for r in runs if r not in debug_set]
    if not runs and not failed and not left:
        print(f"error: all {len(debug)} run(s) under {' '.join(args.paths)} are debug (fast_dev_run, debug=) runs, "
              f"whose numbers are not results; --all includes them", file=sys.stderr)
        return 2
    keys = tuple(args.keys) if args.keys else None
    goal_keys: dict[str, str] = {}
    groups, ordered = collect(runs, keys, failed, goal_keys)
    unknown = [k for k in keys or () if not any(fnmatch.fnmatchcase(f, k) for f in ordered)]
    if unknown:
        known = collect(runs, None)[1]  # ordered holds the requested keys only: suggest from every metric
        close = [k for k in known if any(u.split("/")[0] == k.split("/")[0] for u in unknown)] or known
        print(f"error: --keys {' '.join(unknown)}: no run has such a metric (e.g. {', '.join(close[:4])})",
              file=sys.stderr)
        return 2
    if keys is None:
        ordered = [k for k in default_keys(runs) if k in ordered] or ordered
    curves = read_curves(runs)
    logged = sorted({k for series in curves.values() for k, v in series.items() if v})
    if args.curve and args.curve not in logged:  # a walkthrough: a misspelt --curve was a warning and exit 0
        close = difflib.get_close_matches(args.curve, logged, n=3, cutoff=0.5)  # a review: the list was cut before
        rest = [k for k in logged if k.startswith("val/") and k not in close]  # any val/ key
        print(f"error: --curve {args.curve}: no run logged it per epoch in csv/metrics.csv (they logged e.g. "
              f"{', '.join([*close, *rest])[:300] or 'nothing'})", file=sys.stderr)
        return 2
    contexts = method_contexts(runs, failed)
    md, csv_text = table(groups, ordered, contexts, goal_keys)
    if not runs:  # only failed jobs (the others left out): no table to draw
        md = "No finished run to compare.\n"
    md = with_notes(md, runs, failed, groups, ordered, contexts, left, debug, unfinished, args.all)
    out = Path(args.out) if args.out else glob_root(args.paths[0])
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a review: an existing file or a read-only place was a traceback
        print(f"error: --out {out}: cannot write the report there ({err.strerror or err})", file=sys.stderr)
        return 2
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "report.csv", csv_text)
    key = args.curve or curve_key(curves)
    curve = plot_curves(curves, out / "report_curves.png", key, run_labels(runs, failed)[0]) if key else None
    if curve is None:
        (out / "report_curves.png").unlink(missing_ok=True)  # an earlier report's figure is not this one's
        console.print(f"no learning curve: no run logged {key or ' or '.join(CURVE_KEYS)} per epoch in csv/metrics.csv")
    page = write_html(out, md, curve, runs, run_labels(runs, failed)[0])  # self-contained: tables + figures inline
    # run folders' text is not rich markup; the console shows the characters report.md writes as entities
    console.print(html.unescape(md), markup=False, highlight=False)
    console.print(f"wrote {out / 'report.md'}, {out / 'report.csv'}, {page}" + (f", {curve}" if curve else ""))
    if not runs:  # a walkthrough: exit 0 when every run failed read as success in a script
        print(f"error: every run under {' '.join(args.paths)} failed or was left out ({len(failed)} failed, "
              f"{len(left)} unreadable or without metrics; report.md lists why)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
