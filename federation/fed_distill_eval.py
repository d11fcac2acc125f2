"""Cross-site evaluation of a federated-distillation run (issue 15; :mod:`federation.fed_distill`).

Every model - each site's arms (``none``, ``teacher_local``, ``hlfd_local``, ``hlfd_fed``), the federated
students (``fed_none``, ``fed_hlfd``) and the federated teacher as that site receives them (``teacher_fed``;
with FedBN the site's own BN entries) - is tested on every site's test set with the
run's protocol (``module.eval_slices``, ``module.fg_threshold``: paper 001's protocol a by default) and
per-volume Dice (:mod:`lightning_modules.metrics`). Written into the run dir: ``fed_distill.csv``,
``fed_distill.md`` (one row per site x model: parameters, inference ms per volume, Dice on each site's
test set, on its own and the mean over the other sites) and ``fed_distill.png``.
"""
from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from engine import artifacts
from engine.builders import build_datamodule
from federation.fed_distill_weights import site_student, site_teacher
from federation.fed_distill_config import site_cfg, site_names
from engine.fit import output_dir
from lightning_modules.atomic import atomic_output
from lightning_modules.base import build
from lightning_modules.checkpoints import CheckpointError, load_checkpoint, load_net
from lightning_modules.distill_setup import main_output
from lightning_modules.inference import VolumePredictor
from lightning_modules.losses.hybrid import class_probabilities
from lightning_modules.metrics import PerCaseConfusion, case_scores, foreground_slices, summarise

MODEL_ORDER = ("none", "teacher_local", "hlfd_local", "hlfd_fed", "fed_none", "fed_hlfd", "teacher_fed")
LABELS = {"none": "student (no KD)", "teacher_local": "local teacher", "hlfd_local": "student + HLFD (local teacher)",
          "hlfd_fed": "student + HLFD (federated teacher)", "fed_none": "federated student (no KD)",
          "fed_hlfd": "federated student + HLFD", "teacher_fed": "federated teacher"}


def model_labels(method: Any) -> dict[str, str]:
    """:data:`LABELS` naming the KD method the arms used (``distill=at``: "student + AT (local teacher)"; a review
    found every table saying HLFD whatever ``distill`` was)."""
    name = "HLFD" if not method else str(method).upper().replace("_", " ")
    return {k: v.replace("HLFD", name) for k, v in LABELS.items()}


def eval_device(cfg: DictConfig) -> torch.device:
    """The GPU when there is one and ``trainer.accelerator`` is not cpu (a review: seven nets x sites x test sets
    were scored on the CPU of a GPU run, and its ms per volume were CPU times)."""
    accel = str(OmegaConf.select(cfg, "trainer.accelerator", default="auto") or "auto")
    return torch.device("cuda") if accel != "cpu" and torch.cuda.is_available() else torch.device("cpu")


def state_net(model_cfg: Any, path: Path, what: str) -> nn.Module:
    """The net of ``model_cfg`` with the bare state dict in ``path`` (federation weights) loaded strictly."""
    net = build(OmegaConf.to_container(model_cfg, resolve=True), what=what)
    try:
        net.load_state_dict(load_checkpoint(path, f"{what} weights"))
    except RuntimeError as err:
        raise CheckpointError(f"{what} weights {path} do not fit its model config: {str(err).splitlines()[0]}") from err
    return net


def teacher_net(cfg: DictConfig, path: Path) -> nn.Module:
    """The teacher net (``distill.teacher.model``) with the bare state dict in ``path`` loaded strictly."""
    return state_net(cfg.distill.teacher.model, path, "teacher")


def arm_net(cfg: DictConfig, run_dir: Path, arm: str) -> nn.Module:
    return teacher_net(cfg, run_dir / "teacher.pt") if arm == "teacher_local" else load_net(run_dir / "student.pt")


@torch.no_grad()
def evaluate_net(net: nn.Module, loader: Any, class_names: list[str], fg_threshold: float | None,
                 eval_slices: str, max_batches: int | None = None,
                 device: torch.device | None = None) -> dict[str, float]:
    """Per-volume Dice (mean over test cases) and net-forward milliseconds per volume (all its slices) on
    ``device`` (default CPU); ``max_batches``: stop after that many batches (``trainer.fast_dev_run``)."""
    device = device or torch.device("cpu")
    cuda = device.type == "cuda"
    net.to(device).eval()
    cases = PerCaseConfusion(len(class_names))
    seconds, volumes, warm = 0.0, set(), False
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        image, mask = batch["image"].to(device), batch["mask"]
        if not warm:  # untimed forwards of the first batch itself: first-call allocations are not inference time (a
            for _ in range(2):  # review: one forward of image[:1] left the first full batch ~30 % slower, timed)
                net(image)
            warm = True
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        logits = main_output(net(image))
        if cuda:
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - t0
        logits = logits.cpu()
        volumes.update(batch["case_id"])
        keep = torch.ones(len(mask), dtype=torch.bool)
        if eval_slices == "foreground":  # as SegmentationModule's test: the ignore label (255) is no foreground
            keep = foreground_slices(mask, len(class_names))
        if keep.any():
            pred = VolumePredictor.labels(class_probabilities(logits.float()), fg_threshold)
            valid = batch.get("valid")  # padded mixed-size batches: only each slice's own pixels count (a review)
            cases.update(pred[keep], mask[keep], [c for c, k in zip(batch["case_id"], keep.tolist()) if k],
                         None if valid is None else valid[keep])
    matrices = cases.compute() if cases.update_count else {}  # no scored slice (max_batches, foreground)
    per_case = {cid: case_scores(cm, class_names) for cid, cm in matrices.items()}
    dice = summarise(per_case).get("dice", math.nan) if per_case else math.nan
    return {"dice": dice, "ms_per_volume": 1000.0 * seconds / max(len(volumes), 1), "volumes": len(volumes)}


def _test_loaders(cfg: DictConfig) -> dict[str, Any]:
    loaders = {}
    for site in site_names(cfg):
        dm = build_datamodule(OmegaConf.create(OmegaConf.to_container(site_cfg(cfg, site, "eval").data)))
        dm.prepare_data()
        dm.setup("test")
        loaders[site] = dm.test_dataloader()
    return loaders


def evaluate_run(cfg: DictConfig, runs: dict[str, dict[str, Path]], fed_teacher: Path | None,
                 fed_runs: dict[str, Path] | None = None) -> dict[str, Any]:
    """The cross-site table (module docstring); returns summary metrics for ``metrics.json``.
    ``fed_runs``: the federated students' run dirs by arm (their weights, per site with FedBN)."""
    sites = site_names(cfg)
    loaders = _test_loaders(cfg)
    class_names = [str(c) for c in cfg.data.class_names]
    fg, slices = cfg.module.get("fg_threshold"), str(cfg.module.get("eval_slices", "all"))
    fdr = cfg.get("trainer", {}).get("fast_dev_run")
    limit = (1 if fdr is True else int(fdr)) if fdr else None  # a smoke run: one batch per test set, as Lightning
    rows: list[dict[str, Any]] = []
    device = eval_device(cfg)
    for site in sites:
        models = {arm: arm_net(cfg, d, arm) for arm, d in runs[site].items()}
        models.update({arm: state_net(cfg.model, site_student(cfg, d, site), "student") for arm, d in (fed_runs or {}).items()})
        if fed_teacher is not None:
            models["teacher_fed"] = teacher_net(cfg, site_teacher(cfg, fed_teacher, site))
        for name in [m for m in MODEL_ORDER if m in models]:
            net = models[name]
            row: dict[str, Any] = {"site": site, "model": name,
                                   "parameters": sum(p.numel() for p in net.parameters())}
            scores = {test: evaluate_net(net, loaders[test], class_names, fg, slices, limit, device) for test in sites}
            net.cpu()
            row["ms_per_volume"] = float(np.mean([s["ms_per_volume"] for s in scores.values()]))
            row.update({f"dice_{test}": s["dice"] for test, s in scores.items()})
            row["dice_own"] = scores[site]["dice"]
            others = [scores[t]["dice"] for t in sites if t != site and math.isfinite(scores[t]["dice"])]
            row["dice_other"] = float(np.mean(others)) if others else math.nan
            rows.append(row)
    out = output_dir(cfg)
    labels = model_labels(cfg.distill.get("method"))
    write_tables(rows, sites, out, debug=limit is not None, labels=labels)
    debug = " (fast_dev_run: not a result)" if limit is not None else ""
    plot(rows, out / "fed_distill.png", title=f"{cfg.get('exp_name', 'fed_distill')}: Dice by test site{debug}",
         labels=labels)
    return {**summary(rows), "fed_distill/method": str(cfg.distill.get("method")), "fed_distill/device": device.type}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over sites of each model's own-site and other-site Dice, its parameters and ms per volume."""
    out: dict[str, Any] = {}
    for name in dict.fromkeys(r["model"] for r in rows):
        sel = [r for r in rows if r["model"] == name]
        for key in ("dice_own", "dice_other", "ms_per_volume", "parameters"):
            vals = [float(r[key]) for r in sel if math.isfinite(float(r[key]))]
            out[f"fed_distill/{name}/{key}"] = float(np.mean(vals)) if vals else math.nan
    return out


DEBUG_LINE = ("> **fast_dev_run (a debug run): every model trained on one batch and scored on one test batch; "
              "these figures are not results.**")


def write_tables(rows: list[dict[str, Any]], sites: list[str], out: Path, debug: bool = False,
                 labels: dict[str, str] | None = None) -> None:
    labels = labels or LABELS
    cols = ["site", "model", "parameters", "ms_per_volume", *[f"dice_{s}" for s in sites], "dice_own", "dice_other"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    writer.writerows({c: r[c] for c in cols} for r in rows)
    artifacts.atomic_write_text(out / "fed_distill.csv", buf.getvalue())
    head = ["trained at", "model", "params (M)", "ms / volume", *[f"Dice {s}" for s in sites], "own site", "other sites"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["site"], labels.get(r["model"], r["model"]), f"{r['parameters'] / 1e6:.2f}", f"{r['ms_per_volume']:.1f}",
                 *[artifacts.fmt(r[f"dice_{s}"], 3) for s in sites], artifacts.fmt(r["dice_own"], 3),
                 artifacts.fmt(r["dice_other"], 3)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    if debug:
        lines = [DEBUG_LINE, "", *lines]
    artifacts.atomic_write_text(out / "fed_distill.md", "\n".join(lines) + "\n")
    artifacts.console.print("\n".join(lines), soft_wrap=True)


def plot(rows: list[dict[str, Any]], path: Path, title: str, labels: dict[str, str] | None = None) -> Path:
    """Bars: mean Dice over sites on the own site's and on the other sites' test sets; dots: each site."""
    labels = labels or LABELS
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = [m for m in MODEL_ORDER if any(r["model"] == m for r in rows)]
    fig = Figure(figsize=(1.8 * len(models) + 2, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    for j, (key, label, color) in enumerate((("dice_own", "own site", "#4c72b0"), ("dice_other", "other sites", "#dd8452"))):
        for i, m in enumerate(models):
            vals = np.array([float(r[key]) for r in rows if r["model"] == m], dtype=float)
            vals = vals[np.isfinite(vals)]
            x = i + (j - 0.5) * 0.38
            ax.bar(x, vals.mean() if vals.size else 0.0, width=0.36, color=color, label=label if i == 0 else None)
            ax.scatter(np.full(vals.size, x), vals, s=12, color="black", zorder=3)
    ax.set_xticks(range(len(models)), [labels[m].replace(" (", "\n(") for m in models], fontsize=8)
    ax.set_ylabel("Dice (mean over sites; dots: sites)")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path
