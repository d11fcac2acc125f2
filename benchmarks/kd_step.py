"""Cost of a distillation training step relative to a plain student step at the same batch (paper 001).

    python benchmarks/kd_step.py --methods none pixel_kd at hlfd --teacher-width 8 --size 64 --batch 8
    python benchmarks/kd_step.py --methods none hlfd --paper-teacher --size 128 --batch 8   # 36.6M UNet++

Each method is the ``+exp=kits_hlfd distill=<method>`` module exactly as a run builds it (composed with
Hydra; teacher at its initial weights - the cost does not depend on them), measured in a fresh subprocess
(forward of teacher + student, KD loss, backward, Adam step) so its peak memory (CPU max-RSS, or CUDA max
allocated) is its own. ``none`` is the plain student (L_seg only, no teacher forward): the reference of
the ratios.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from timing import in_fresh_process, time_steps  # noqa: E402


def measure(method: str, size: int, batch: int, steps: int, warmup: int, teacher_width: int | None,
            device: str) -> dict:
    import torch

    from engine.builders import build_module
    from tests.hydra_helpers import compose_run

    over = ["+exp=kits_hlfd", f"distill={method}", "logger=csv", f"data.image_size={size}",
            f"module.example_size={size}"]
    over += (["distill.teacher.model.preset=paper", "distill.teacher.model.width=null"] if teacher_width is None
             else [f"distill.teacher.model.width={teacher_width}"])
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_run(over, Path(tmp))
        if method == "none":  # the plain student run of Table 1, built as engine.distill builds it
            from engine.distill import segmentation_cfg

            cfg = segmentation_cfg(cfg, cfg.model, cfg.module.loss, Path(tmp) / "student")
        torch.manual_seed(0)
        module = build_module(cfg).to(device)
    module.train()
    module.on_fit_start()  # attaches the taps, as Lightning does
    module.log = lambda *a, **k: None  # no Trainer here
    opt = torch.optim.Adam(module.trainable_parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    batch_ = {"image": torch.randn(batch, 1, size, size, generator=g).to(device),
              "mask": (torch.rand(batch, size, size, generator=g) > 0.9).long().to(device),
              "case_id": [f"c{i}" for i in range(batch)]}
    def step(i: int) -> None:
        opt.zero_grad(set_to_none=True)
        module.training_step(batch_, i).backward()
        opt.step()

    seconds, peak = time_steps(step, steps, warmup, device)
    ms = 1000 * seconds / steps
    teacher = getattr(module, "teacher", None)
    return {"method": method, "step_ms": ms, "peak_MiB": peak, "device": device, "size": size, "batch": batch,
            "student_M": sum(p.numel() for p in module.net.parameters()) / 1e6,
            "teacher_M": None if teacher is None else sum(p.numel() for p in teacher.parameters()) / 1e6}


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["none", "pixel_kd", "at", "hlfd"])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--teacher-width", type=int, default=8)
    p.add_argument("--paper-teacher", action="store_true", help="UNet++ filters 64..1024 (36.6M)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    tw = None if a.paper_teacher else a.teacher_width
    if a.one:
        print(json.dumps(measure(a.one, a.size, a.batch, a.steps, a.warmup, tw, a.device)))
        return
    rows = []
    for m in a.methods:
        cmd = ["--one", m, "--size", a.size, "--batch", a.batch, "--steps", a.steps, "--warmup", a.warmup,
               "--device", a.device]
        cmd += ["--paper-teacher"] if a.paper_teacher else ["--teacher-width", a.teacher_width]
        rows.append(in_fresh_process(__file__, cmd, m))
    ref = next((r for r in rows if r["method"] == "none"), rows[0])
    print("| method | step (ms) | × plain student | peak memory (MiB) | × plain student | teacher (M) | device | input | batch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        teacher = "—" if r["teacher_M"] is None else f"{r['teacher_M']:.2f}"
        print(f"| {r['method']} | {r['step_ms']:.0f} | {r['step_ms'] / ref['step_ms']:.2f} | {r['peak_MiB']:.0f} | "
              f"{r['peak_MiB'] / ref['peak_MiB']:.2f} | {teacher} | {r['device']} | {r['size']}² | {r['batch']} |")


if __name__ == "__main__":
    main()
