"""MedMNIST Classification Decathlon report: our runs beside paper 002's Table 2.

    python -m experiments.decathlon_report <multirun dir> [--out DIR] [--all]

Collects every finished job under the multirun directory (``metrics.json`` + ``config.yaml``, or Hydra's
``.hydra/config.yaml``), and prints test AUC / ACC per dataset in the layout of the paper's Table 2, next
to the paper's ResNet-18 and ResNet-50 numbers at the run's resolution (28 or 224), with the mean over the datasets (the
Decathlon's summary score, paper 002 §3.3). Jobs that wrote ``failed.json`` are flagged, datasets whose
file is missing locally as ``missing``, rather than failing the report. Writes ``decathlon.md`` and
``decathlon.csv`` (atomically) into ``--out`` (default: the multirun directory). Debug runs
(``trainer.fast_dev_run``: one batch, not a result) are left out, as in ``experiments.report``, unless they
failed (a dataset missing here is worth saying in any run); ``--all`` includes them. A folder holding no MedMNIST
job is an error (exit 2) and gets nothing written.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from datamodules.medmnist import DECATHLON, MEDMNIST_INFO, medmnist_info
from engine.artifacts import atomic_write_text, console, fmt
from engine.run_files import as_number, csv_text, debug_run, md_text, plain_text, run_config
from experiments.report_overrides import run_overrides
from experiments.report_runs import json_object

#: Paper 002, Table 2, test (AUC, ACC) of the ResNet baselines at resolutions 28 and 224, transcribed from the paper
#: text (``../shared/papers/002_f37f0d617c9b1b40.txt``; its rows: R18 (28), R18 (224), R50 (28), R50 (224), ...).
#: Left out rather than guessed: ResNet-50 (28) on OrganMNIST_Coronal ("0.000 0.803", an OCR error) and ResNet-50
#: (224) on the last five datasets (that row is garbled in the text).
PAPER_TABLE2: dict[str, dict[str, tuple[float, float] | None]] = {
    "ResNet-18 (28)": {
        "pathmnist": (0.972, 0.844), "chestmnist": (0.706, 0.947), "dermamnist": (0.899, 0.721),
        "octmnist": (0.951, 0.758), "pneumoniamnist": (0.957, 0.843), "retinamnist": (0.727, 0.515),
        "breastmnist": (0.897, 0.859), "organmnist_axial": (0.995, 0.921),
        "organmnist_coronal": (0.990, 0.889), "organmnist_sagittal": (0.967, 0.762),
    },
    "ResNet-18 (224)": {
        "pathmnist": (0.978, 0.860), "chestmnist": (0.713, 0.948), "dermamnist": (0.896, 0.727),
        "octmnist": (0.960, 0.752), "pneumoniamnist": (0.970, 0.861), "retinamnist": (0.721, 0.543),
        "breastmnist": (0.915, 0.878), "organmnist_axial": (0.997, 0.931),
        "organmnist_coronal": (0.991, 0.907), "organmnist_sagittal": (0.974, 0.777),
    },
    "ResNet-50 (28)": {
        "pathmnist": (0.979, 0.864), "chestmnist": (0.692, 0.947), "dermamnist": (0.886, 0.710),
        "octmnist": (0.939, 0.745), "pneumoniamnist": (0.949, 0.857), "retinamnist": (0.719, 0.490),
        "breastmnist": (0.879, 0.853), "organmnist_axial": (0.995, 0.916),
        "organmnist_coronal": None, "organmnist_sagittal": (0.968, 0.746),
    },
    "ResNet-50 (224)": {
        "pathmnist": (0.978, 0.848), "chestmnist": (0.706, 0.947), "dermamnist": (0.895, 0.719),
        "octmnist": (0.951, 0.750), "pneumoniamnist": (0.968, 0.896), "retinamnist": None,
        "breastmnist": None, "organmnist_axial": None, "organmnist_coronal": None, "organmnist_sagittal": None,
    },
}
#: the paper's two baselines, each shown at the resolution of the run beside it (a review: a 224 px run stood beside
#: the 28 px numbers only, and read as above the paper where it was below its own 224 px row)
PAPER_ARCHS = ("ResNet-18", "ResNet-50")


def _model_label(cfg: dict[str, Any]) -> str:
    target = str((cfg.get("model") or {}).get("_target_", "?")).rsplit(".", 1)[-1]
    size = (cfg.get("data") or {}).get("size", 28)
    return f"{target} ({size})"


def read_run(run_dir: Path) -> dict[str, Any] | None:
    """One job: flag, model label, status (``ok`` | ``missing`` | ``failed`` | ``incomplete``), AUC, ACC."""
    cfg = run_config(run_dir)
    info = medmnist_info(str((cfg.get("data") or {}).get("flag", "")))
    if info is None:
        return None
    flag = next(k for k, v in MEDMNIST_INFO.items() if v is info)
    run: dict[str, Any] = {"flag": flag, "model": _model_label(cfg), "dir": str(run_dir), "auc": None, "acc": None,
                           "size": (cfg.get("data") or {}).get("size", 28)}
    metrics, failed = json_object(run_dir / "metrics.json"), json_object(run_dir / "failed.json")
    run["debug"] = debug_run(metrics, cfg)
    if metrics is not None:
        run.update(status="ok", auc=metrics.get("test/auc"), acc=metrics.get("test/acc"))
    elif failed is not None:
        error = str(failed.get("error", ""))
        missing = "MissingDataFileError" in error or "not found" in error
        run.update(status="missing" if missing else "failed", error=error)
    else:
        run["status"] = "incomplete"
    return run


def collect_runs(root: str | Path) -> list[dict[str, Any]]:
    """Every MedMNIST job below ``root`` (a job dir holds ``config.yaml`` or ``.hydra/config.yaml``), debug
    (fast_dev_run) jobs included: each run's ``debug`` says which."""
    root = Path(root)
    dirs = {p.parent for p in root.rglob("config.yaml") if p.parent.name != ".hydra"}
    dirs |= {p.parent.parent for p in root.rglob(".hydra/config.yaml")}
    runs = [r for r in (read_run(d) for d in sorted(dirs)) if r is not None]
    # a review: runs of one model at other settings (a learning-rate or epoch sweep, federated and centralised)
    # were averaged into one "ours"; the overrides that differ between runs, but the dataset's and the seed's,
    # now name the model's variant
    ovs = {r["dir"]: [o for o in run_overrides(Path(r["dir"])) if not o.lstrip("+~").startswith("data")]
           for r in runs}
    common = set.intersection(*(set(v) for v in ovs.values())) if ovs else set()
    for r in runs:
        setting = " ".join(o for o in ovs[r["dir"]] if o not in common)
        r["model"] = f"{r['model']} [{setting}]" if setting else r["model"]
    return runs


def _mean(values: list[Any]) -> float | None:
    """The mean of the finite numbers in ``values``; anything else a run file holds (text, a huge int) is skipped."""
    vals = [v for v in map(as_number, values) if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def build_rows(runs: list[dict[str, Any]], left_out: set[tuple[str, str]] = frozenset()) -> list[dict[str, Any]]:
    """One row per (model, dataset) in Table 2 order, plus a mean row per model; runs of one dataset
    (several seeds) are averaged. ``left_out``: the (model, flag) pairs whose only runs were debug ones, left out
    (status "debug, left out", not "not run": a walkthrough)."""
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        by_key[(run["model"], run["flag"])].append(run)
    rows: list[dict[str, Any]] = []
    for model in sorted({r["model"] for r in runs}) or ["(no runs)"]:
        size = next((r["size"] for r in runs if r["model"] == model), 28)  # in the model's label: one per model
        block = []
        for flag in DECATHLON:
            jobs = by_key.get((model, flag), [])
            ok = [j for j in jobs if j["status"] == "ok"]
            status = "ok" if ok else (jobs[0]["status"] if jobs else
                                      "debug, left out" if (model, flag) in left_out else "not run")
            row = {"model": model, "dataset": MEDMNIST_INFO[flag].name, "status": status, "runs": len(ok),
                   "auc": _mean([j["auc"] for j in ok]), "acc": _mean([j["acc"] for j in ok])}
            for arch in PAPER_ARCHS:
                ref = PAPER_TABLE2.get(f"{arch} ({size})", {}).get(flag)
                row[f"paper {arch} AUC"], row[f"paper {arch} ACC"] = ref if ref else (None, None)
            block.append(row)
        n_ok = sum(r["status"] == "ok" for r in block)
        mean = {"model": model, "dataset": "mean", "status": f"{n_ok}/{len(DECATHLON)} ok",
                "runs": sum(r["runs"] for r in block)}
        ran = [r for r in block if r["status"] == "ok"] or block  # the paper's mean over the same datasets
        for key in [k for k in block[0] if k.endswith(("AUC", "ACC")) or k in ("auc", "acc")]:
            mean[key] = _mean([r[key] for r in ran])
        rows += block + [mean]
    return rows


COLUMNS = ["model", "dataset", "auc", "acc", "paper ResNet-18 AUC", "paper ResNet-18 ACC",
           "paper ResNet-50 AUC", "paper ResNet-50 ACC", "runs", "status"]
HEADERS = ["model", "dataset", "ours AUC", "ours ACC", "paper R18 AUC", "paper R18 ACC",
           "paper R50 AUC", "paper R50 ACC", "runs", "status"]


def to_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["# MedMNIST Classification Decathlon (test split; paper 002, Table 2 layout)", "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    # labels come from run folders: no HTML, link or extra cell
    lines += ["| " + " | ".join(md_text(fmt(r.get(c), 3)) for c in COLUMNS) + " |" for r in rows]
    lines += ["", "Each mean row is over the datasets that ran here (all ten when none did), ours and the paper's "
              "alike (a walkthrough: ours over 2 datasets stood beside the paper's over 10); the paper's skips those "
              "it does not report. The paper's columns are its ResNets at the resolution in the model's label (28 or "
              "224; none at another). ResNet-50 (28) OrganMNIST_Coronal and ResNet-50 (224) on the last five datasets "
              "are illegible in the paper text. `missing`: the dataset file is not available locally.", ""]
    return "\n".join(lines)


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(HEADERS)
    # labels come from run folders: no spreadsheet formula
    writer.writerows([["" if r.get(c) is None else csv_text(r.get(c)) if isinstance(r.get(c), str) else r.get(c)
                       for c in COLUMNS] for r in rows])
    return buf.getvalue()


def print_table(rows: list[dict[str, Any]]) -> None:
    """One rich table per model (the model goes in the title, so the table fits 80 columns)."""
    for model in dict.fromkeys(r["model"] for r in rows):
        # the model's label comes from a run's config: plain text, not rich markup ("[/bold]" was a MarkupError)
        table = Table(title=Text(f"Decathlon test AUC / ACC — ours: {plain_text(model)} (paper 002, Table 2)"))
        for h in ("dataset", "AUC", "ACC", "R18 AUC", "R18 ACC", "R50 AUC", "R50 ACC", "status"):
            table.add_column(h, justify="left" if h in ("dataset", "status") else "right")
        for r in (r for r in rows if r["model"] == model):
            style = "bold" if r["dataset"] == "mean" else (None if r["status"] == "ok" else "yellow")
            table.add_row(*[fmt(r.get(c), 3) for c in COLUMNS[1:-2]], str(r["status"]), style=style)
        console.print(table)


def report(root: str | Path, out: str | Path | None = None, include_debug: bool = False,
           runs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Collect (unless ``runs`` are given, as :func:`collect_runs` returns them), print and write ``decathlon.md`` /
    ``decathlon.csv``; returns the rows."""
    runs = collect_runs(root) if runs is None else runs
    # a debug job's numbers are not results; its failure (a dataset missing here) is still news
    debug = [r for r in runs if r["debug"] and r["status"] in ("ok", "incomplete")]
    if debug and not include_debug:
        console.print(f"left out {len(debug)} debug (fast_dev_run, debug=) run(s), whose numbers are not results; "
                      "--all includes them")
        debug_ids = {id(r) for r in debug}  # records are dicts: by identity, in one pass
        runs = [r for r in runs if id(r) not in debug_ids]
    rows = build_rows(runs, {(r["model"], r["flag"]) for r in debug} if not include_debug else set())
    out = Path(out or root)
    atomic_write_text(out / "decathlon.md", to_markdown(rows))
    atomic_write_text(out / "decathlon.csv", to_csv(rows))
    print_table(rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("multirun_dir", help="Hydra multirun directory of +exp=medmnist_decathlon")
    parser.add_argument("--out", default=None, help="where to write decathlon.md/.csv (default: multirun_dir)")
    parser.add_argument("--all", action="store_true", help="also debug (fast_dev_run, debug=) runs")
    args = parser.parse_args(argv)
    if not Path(args.multirun_dir).is_dir():
        parser.error(f"not a directory: {args.multirun_dir}")
    runs = collect_runs(args.multirun_dir)
    if not runs:  # a review: another folder got a decathlon.md of ten "not run" datasets before this was said
        print(f"error: no MedMNIST job (config.yaml with a data.flag) under {args.multirun_dir}: not a decathlon "
              "sweep (+exp=medmnist_decathlon); nothing written", file=sys.stderr)
        return 2
    rows = report(args.multirun_dir, args.out, include_debug=args.all, runs=runs)
    jobs = [r for r in rows if r["dataset"] != "mean"]
    if not any(r["status"] == "ok" for r in jobs):  # a walkthrough: "0/10 ok" exited 0
        ran = [r for r in jobs if r["status"] not in ("not run", "debug, left out")]
        # a walkthrough: "every run failed" where one had finished and was left out as a debug run
        print(f"error: no finished run to report under {args.multirun_dir}"
              + (f" ({len(ran)} failed or missed their data)" if ran else "")
              + " (decathlon.md lists each dataset's status; --all includes debug runs)", file=sys.stderr)
        return 1 if ran else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
