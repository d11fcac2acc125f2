"""Distillation report: ``python -m experiments.kd_report <multirun dir> [--out DIR]``.

Collects every run under the directory (a run dir holds ``metrics.json`` with a ``distill/method`` key,
or ``failed.json``) with its ``config.yaml``, and writes, atomically, beside the runs (or in ``--out``):

* ``kd_table1.csv`` / Table 1 of ``kd_report.md``: method x dataset, DSC (test Dice x 100) mean ± std
  over seeds and mean RVD, with paper 001's Table 1 figures beside ours (HLFD rows: only runs at the
  paper's beta=0.9, lambda=0.1);
* ``kd_table2.csv`` / Table 2: HLFD's beta, lambda sensitivity, DSC mean ± std, with paper 001's Table 2;
* the failed runs with their error line.

Std is the population std over seeds (``numpy.std``, ddof=0); the paper does not say which it used.
No run found (or not a folder) -> a message on stderr and exit status 2; only failed runs -> the report, then exit 1.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from engine.artifacts import atomic_write_text
from engine.run_files import csv_text, md_text
from experiments.kd_runs import collect

#: paper 001 Table 1 ("Quantitative Results (beta=0.9 and lambda=0.1)"), transcribed from the paper text:
#: method -> dataset -> (DSC mean, DSC std, RVD). Pixel KD and AT are not in the paper's table (blank).
PAPER_TABLE1: dict[str, dict[str, tuple[float, float, float]]] = {
    "teacher": {"KiTS": (64.50, 1.45, -0.203), "LiTS": (57.84, 1.55, 1.434)},
    "none": {"KiTS": (41.30, 2.30, -0.421), "LiTS": (41.19, 1.65, 0.701)},
    "skd": {"KiTS": (38.71, 2.53, -0.411), "LiTS": (42.09, 2.01, 0.018)},
    "ifd": {"KiTS": (46.79, 1.25, -0.275), "LiTS": (45.36, 1.20, 0.122)},
    "dkd": {"KiTS": (40.21, 2.35, -0.496), "LiTS": (43.72, 0.87, 0.234)},
    "hifd": {"KiTS": (42.50, 1.25, -0.434), "LiTS": (44.20, 1.22, 0.187)},
    "hlfd": {"KiTS": (52.18, 2.55, -0.176), "LiTS": (48.75, 2.23, 0.173)},
}
#: paper 001 Table 2 ("Impact of beta and lambda on DSC"): (beta, lambda) -> dataset -> (DSC mean, std).
PAPER_TABLE2: dict[tuple[float, float], dict[str, tuple[float, float]]] = {
    (0.9, 0.1): {"KiTS": (52.18, 2.55), "LiTS": (48.75, 2.23)},
    (1.8, 0.1): {"KiTS": (51.58, 1.25), "LiTS": (48.18, 1.63)},
    (0.9, 0.2): {"KiTS": (51.95, 2.35), "LiTS": (48.48, 2.05)},
}
METHOD_ORDER = ["teacher", "none", "skd", "ifd", "dkd", "hifd", "hlfd", "pixel_kd", "at"]
METHOD_NAMES = {"teacher": "Teacher", "none": "Student (w/o KD)", "skd": "SKD", "ifd": "IFD", "dkd": "DKD",
                "hifd": "HIFD", "hlfd": "HLFD", "pixel_kd": "Pixel KD", "at": "AT"}
DEFAULT_BETA_LAM = (0.9, 0.1)


def _variants(sel: list[dict]) -> list[tuple[str, list[dict]]]:
    """``sel`` split by setting: one ``("", runs)`` when they agree, else one part per setting, labelled with
    the keys that differ (``[student=UNet, protocol=b (all slices)]``)."""
    keys = [json.dumps(r["setting"], sort_keys=True) for r in sel]
    if len(set(keys)) <= 1:
        return [("", sel)]
    differ = [k for k in sel[0]["setting"] if len({r["setting"][k] for r in sel}) > 1]
    parts: dict[str, list[dict]] = {}
    for key, r in zip(keys, sel):
        parts.setdefault(key, []).append(r)
    return [(" [" + ", ".join(f"{k}={runs[0]['setting'][k]}" for k in differ) + "]", runs)
            for _, runs in sorted(parts.items())]


def _stats(values: list[float | None]) -> tuple[float, float, int]:
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    return (float(v.mean()), float(v.std()), int(v.size)) if v.size else (math.nan, math.nan, 0)


def _pm(mean: float, std: float, n: int | None = None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    return f"{mean:.2f} ± {std:.2f}" + (f" (n={n})" if n is not None else "")


def _num(x: float | None, digits: int = 3) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _is_default(r: dict) -> bool:
    if r["method"] != "hlfd" or r["beta"] is None:
        return True
    if r["lam"] is None:  # beta without lam (a hand-made or older config; a review: float(None) crashed)
        return False
    return (round(float(r["beta"]), 6), round(float(r["lam"]), 6)) == DEFAULT_BETA_LAM


def table1(runs: list[dict]) -> tuple[list[str], list[list[str]], list[dict]]:
    datasets = sorted({r["dataset"] for r in runs}) or ["KiTS", "LiTS"]
    methods = sorted({r["method"] for r in runs}, key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else 99, m))
    header = ["Method"]
    for d in datasets:
        header += [f"{d} DSC (ours)", f"{d} RVD (ours)", f"{d} DSC (paper)", f"{d} RVD (paper)"]
    rows, records = [], []
    for m in methods:
        chosen = [r for r in runs if r["method"] == m and _is_default(r)]
        for label, part in _variants(chosen):
            row = [METHOD_NAMES.get(m, m) + label]
            for d in datasets:
                sel = [r for r in part if r["dataset"] == d]
                dsc = _stats([r["dsc"] for r in sel])
                rvd = _stats([r["rvd"] for r in sel])
                paper = PAPER_TABLE1.get(m, {}).get(d)
                row += [_pm(*dsc) if dsc[2] else "", _num(rvd[0]), _pm(paper[0], paper[1]) if paper else "",
                        _num(paper[2]) if paper else ""]
                records.append({"method": m + label, "dataset": d, "n_seeds": dsc[2], "dsc_mean": dsc[0],
                                "dsc_std": dsc[1], "rvd_mean": rvd[0], "paper_dsc_mean": paper[0] if paper else "",
                                "paper_dsc_std": paper[1] if paper else "", "paper_rvd": paper[2] if paper else ""})
            rows.append(row)
    return header, rows, records


def repeated_seeds(runs: list[dict]) -> list[str]:
    """One note per Table 1 cell where a seed counts more than once (a run re-made beside its first): ``n`` is
    then more than the seeds."""
    notes = []
    for m in sorted({r["method"] for r in runs}):
        for label, part in _variants([r for r in runs if r["method"] == m and _is_default(r)]):
            for d in sorted({r["dataset"] for r in part}):
                seeds = [r["seed"] for r in part if r["dataset"] == d]
                twice = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
                if twice:
                    notes.append(f"{METHOD_NAMES.get(m, m)}{label} on {d}: seed(s) {', '.join(map(str, twice))} "
                                 f"more than once")
    return notes


def table2(runs: list[dict]) -> tuple[list[str], list[list[str]], list[dict]]:
    """The beta/lambda sensitivity (paper 001 Table 2), one block per setting as Table 1 splits them (a review:
    protocols, sizes and nets were pooled into one cell)."""
    hl = [r for r in runs if r["method"] == "hlfd" and r["beta"] is not None and r["lam"] is not None]
    datasets = sorted({r["dataset"] for r in hl}) or ["KiTS", "LiTS"]
    variants = _variants(hl) if hl else [("", [])]
    split = any(label for label, _ in variants)
    header = ["β", "λ", *(["setting"] if split else [])] + [c for d in datasets for c in (f"{d} DSC (ours)",
                                                                                             f"{d} DSC (paper)")]
    rows, records = [], []
    for label, part in variants:
        keys = sorted({(round(float(r["beta"]), 6), round(float(r["lam"]), 6)) for r in part} | set(PAPER_TABLE2))
        for beta, lam in keys:
            row = [f"{beta:g}", f"{lam:g}", *([label.strip(" []")] if split else [])]
            for d in datasets:
                sel = [r for r in part if r["dataset"] == d
                       and (round(float(r["beta"]), 6), round(float(r["lam"]), 6)) == (beta, lam)]
                dsc = _stats([r["dsc"] for r in sel])
                paper = PAPER_TABLE2.get((beta, lam), {}).get(d)
                row += [_pm(*dsc) if dsc[2] else "", _pm(*paper) if paper else ""]
                records.append({"beta": beta, "lam": lam, "setting": label.strip(" []"), "dataset": d,
                                "n_seeds": dsc[2], "dsc_mean": dsc[0], "dsc_std": dsc[1],
                                "paper_dsc_mean": paper[0] if paper else "",
                                "paper_dsc_std": paper[1] if paper else ""})
            rows.append(row)
    return header, rows, records


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(map(md_text, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(md_text, r)) + " |" for r in rows]
    return "\n".join(lines)


def _csv(records: list[dict]) -> str:
    if not records:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(records[0]))
    writer.writeheader()
    writer.writerows({k: ("" if isinstance(v, float) and math.isnan(v) else csv_text(v) if isinstance(v, str) else v)
                      for k, v in r.items()} for r in records)
    return buf.getvalue()


def report(root: Path, out: Path | None = None, include_debug: bool = False) -> dict[str, Any]:
    """Write ``kd_report.md``, ``kd_table1.csv``, ``kd_table2.csv``; returns the tables' records."""
    runs, failed, debug, arms = collect(root, include_debug)
    out = out or root
    h1, r1, rec1 = table1(runs)
    h2, r2, rec2 = table2(runs)
    protocols = sorted({r["protocol"] for r in runs if r["protocol"]})
    md = [f"# Distillation report: {root}", "",
          f"{len(runs)} run(s), {len(failed)} failed. DSC = test Dice x 100 (mean ± population std over seeds, "
          f"n = seeds), RVD = mean over seeds of the per-case mean signed RVD. Evaluation protocol: "
          f"{', '.join(protocols) or 'unknown'}. Paper figures: paper 001 (HLFD) Tables 1-2, transcribed; "
          "Pixel KD and AT are not in the paper's tables (blank).", "",
          "## Table 1 (β = 0.9, λ = 0.1)", "", _markdown(h1, r1), "",
          "## Table 2: impact of β and λ on DSC (HLFD)", "", _markdown(h2, r2), ""]
    if debug:
        md += [f"Left out: {debug} debug (fast_dev_run, debug=) run(s); `--all` includes them.", ""]
    if arms:
        md += [f"Left out: {arms} arm(s) of federated distillation runs (one site each; `python -m "
               f"experiments.report` tables them).", ""]
    twice = repeated_seeds(runs)
    if twice:
        md += ["Runs counted as seeds more than once: " + "; ".join(twice) + ".", ""]
    if failed:
        md += ["## Failed runs", "", _markdown(["run", "error", "overrides"],
                                               [[f["run"], f["error"], f["overrides"]] for f in failed]), ""]
    atomic_write_text(out / "kd_report.md", "\n".join(md))
    atomic_write_text(out / "kd_table1.csv", _csv(rec1))
    atomic_write_text(out / "kd_table2.csv", _csv(rec2))
    return {"runs": runs, "failed": failed, "table1": rec1, "table2": rec2, "markdown": "\n".join(md)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a multirun (or run) directory")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: root)")
    parser.add_argument("--all", action="store_true", help="also debug (fast_dev_run, debug=) runs in the tables")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"error: {args.root} is not a directory", file=sys.stderr)
        return 2
    runs, failed, debug, arms = collect(args.root, args.all)
    if not runs and not failed and arms:
        print(f"error: the {arms} run(s) under {args.root} are arms of federated distillations (one site each): "
              f"python -m experiments.report tables them", file=sys.stderr)
        return 2
    if not runs and not failed and debug:
        print(f"error: all {debug} run(s) under {args.root} are debug (fast_dev_run, debug=) runs, whose numbers are not "
              "results; --all includes them", file=sys.stderr)
        return 2
    if not runs and not failed:
        print(f"error: no distillation runs (metrics.json with distill/method, or failed.json) under {args.root}",
              file=sys.stderr)
        return 2  # a folder without runs is a wrong argument, as for experiments.report
    result = report(args.root, args.out, args.all)
    print(result["markdown"])
    if not runs:
        print(f"error: every run under {args.root} failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
