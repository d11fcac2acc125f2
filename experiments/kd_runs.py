"""The distillation runs under a folder, for :mod:`experiments.kd_report`: one record per run (method, dataset, seed,
beta, lambda, the setting that makes runs comparable, DSC and RVD), the failed runs with their error line, and
how many debug runs and federated-distillation arms were left out. Run folders are data: every value read from
them is bounded text or a number (:mod:`engine.run_files`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.finished_run import failed_last
from engine.run_files import as_number, debug_run, plain_text, run_config
from experiments.report_runs import json_object
from experiments.run_folder import set_aside

DATASETS = {"kits": "KiTS", "lits": "LiTS"}


def number(value: Any) -> float | None:
    """A number from a run file (``None`` for anything else: a crafted file is data)."""
    return as_number(value)



def _load_config(run: Path) -> dict:
    return run_config(run)  # a run folder from elsewhere: {} when its config does not parse as a mapping


def _dataset(cfg: dict) -> str:
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    layout = plain_text(data.get("layout") or "", 100).lower()  # bounded: an audit's YAML alias bomb
    exp = plain_text(cfg.get("exp_name", "?"), 100)
    # a 2D folder has no layout: the experiment names the dataset (a walkthrough: data=kits_slices, the real KiTS19
    # slices of docs/benchmarks.md, was the row "kits_hlfd", with none of the paper's KiTS figures beside it)
    name = DATASETS.get(layout, layout or DATASETS.get(exp.split("_")[0].lower(), exp))
    target = data.get("target")
    return name if target in (None, "tumor") else f"{name} ({plain_text(target, 100)})"


def _rvd(metrics: dict) -> float | None:
    """The tumour's RVD, else the first other class's, read by :func:`number` (an audit's ``1`` and 400 zeros was an
    OverflowError in ``float``)."""
    if number(metrics.get("test/rvd_tumor")) is not None:
        return number(metrics["test/rvd_tumor"])
    for k in sorted(metrics):
        if k.startswith("test/rvd_") and not k.endswith("_std") and number(metrics[k]) is not None:
            return number(metrics[k])
    return None


def collect(root: Path, include_debug: bool = False) -> tuple[list[dict], list[dict], int, int]:
    """``(runs, failed, debug, arms)``: one record per run dir (method, dataset, seed, beta, lam, setting, dsc,
    rvd), how many debug runs were left out (all of them kept with ``include_debug``), and how many arms of
    federated distillations (``distill/arm``: their table is ``experiments.report``'s)."""
    runs, failed, debug, arms = [], [], 0, 0
    for path in sorted(root.rglob("failed.json")):
        if set_aside(path) or not failed_last(path.parent):  # moved aside by a later run, or stale (resumed to end)
            continue
        info = json_object(path) or {"error": "failed.json does not parse"}
        overrides = info.get("overrides") if isinstance(info.get("overrides"), list) else []
        failed.append({"run": plain_text(path.parent.relative_to(root)) or ".", "error": plain_text(info.get("error", "?")),
                       "overrides": plain_text(" ".join(map(str, overrides)))})
    for path in sorted(root.rglob("metrics.json")):
        if set_aside(path) or failed_last(path.parent):  # failed after it tested: listed among the failed
            continue
        metrics = json_object(path) or {}  # a crafted or cut file is no run
        method = metrics.get("distill/method")
        if not method or not isinstance(method, str):  # e.g. the teacher pre-training inside a run dir
            continue
        method = plain_text(method, 100)
        cfg = _load_config(path.parent)
        if debug_run(metrics, cfg) and not include_debug:  # any debug mode: not a result (report's own test)
            debug += 1
            continue
        if metrics.get("distill/arm"):  # an arm of a federated distillation: one site's run, not a seed of a
            arms += 1  # method (a review: hlfd_local and hlfd_fed of three sites pooled into one "HLFD" row)
            continue
        distill = cfg.get("distill") if isinstance(cfg.get("distill"), dict) else {}
        loss = distill.get("loss") if isinstance(distill.get("loss"), dict) else {}
        dice = number(metrics.get("test/dice"))
        protocol = plain_text(metrics.get("distill/protocol", ""), 40)
        runs.append({
            "run": plain_text(path.parent.relative_to(root)) or ".", "method": method,
            "dataset": plain_text(_dataset(cfg), 100), "seed": cfg.get("seed") if isinstance(cfg.get("seed"), int) else None,
            "beta": number(loss.get("beta")), "lam": number(loss.get("lam")), "protocol": protocol,
            "setting": _setting(cfg, distill, loss, protocol),
            "dsc": None if dice is None else 100.0 * dice, "rvd": _rvd(metrics)})
    return runs, failed, debug, arms


def _init(cfg: dict) -> str:
    """``fresh``, the ``init_weights=`` file, or ``<init_weights_module> from <file>`` (another setting; first, so
    a long path cut short still shows it), with the file's recorded SHA-256 prefix first too: two files saved at one
    path one after the other are two settings, not seeds of one."""
    path, module, sha = cfg.get("init_weights"), cfg.get("init_weights_module"), cfg.get("init_weights_sha256")
    if not path:
        return "fresh"
    text = plain_text(path if module in (None, "") else f"{plain_text(module, 60)} from {plain_text(path)}", 200)
    return f"{plain_text(sha, 80)[:12]} {text}"[:200] if sha else text


def _net(node: Any) -> str:
    """A net config as ``<class>`` or ``<class>(width=w)``, from a run's config (data, bounded)."""
    if not isinstance(node, dict):
        return "?"
    name = plain_text(str(node.get("_target_", "?")).rsplit(".", 1)[-1], 60)
    return f"{name}(width={plain_text(node['width'], 20)})" if "width" in node else name


def _setting(cfg: dict, distill: dict, loss: dict, protocol: str) -> dict[str, str]:
    """What besides method, dataset and seed makes two runs comparable: a review found D-Net -> U-Net runs of
    ``distill=hlfd_dnet_unet`` averaged into the paper's HLFD row, and protocol a with protocol b."""
    teacher = distill.get("teacher") if isinstance(distill.get("teacher"), dict) else {}
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    trainer = cfg.get("trainer") if isinstance(cfg.get("trainer"), dict) else {}
    module = cfg.get("module") if isinstance(cfg.get("module"), dict) else {}
    kd = {k: v for k, v in loss.items() if k not in ("beta", "lam")}
    # a later review: phantoms and real KiTS (data.root), 20 and 100 epochs, 64 and 128 px were pooled as seeds
    # a walkthrough: HLFD students of teachers trained 1 and 12 epochs were pooled as seeds of one row
    # (a given teacher file is no key: one file per seed would make one-run rows, a review)
    trained = {k: teacher.get(k) for k in ("max_epochs", "loss", "data") if teacher.get(k) is not None}
    return {"protocol": protocol, "teacher": _net(teacher.get("model")), "student": _net(cfg.get("model")),
            "teacher training": plain_text(json.dumps(trained, sort_keys=True, default=str), 300),
            "train_cases": plain_text(data.get("train_cases"), 20),
            "kd loss": plain_text(json.dumps(kd, sort_keys=True, default=str), 300),
            "data": plain_text(data.get("root") or ("synthetic" if data.get("synthetic") else ""), 200),
            "epochs": plain_text(trainer.get("max_epochs"), 20), "size": plain_text(data.get("image_size"), 20),
            "optimizer": plain_text(json.dumps(module.get("optimizer"), sort_keys=True, default=str), 300),
            "init": _init(cfg)}  # a student fine-tuned from init_weights=
