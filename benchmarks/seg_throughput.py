"""Training images/s and peak memory of segmentation nets at equal width and input size.

    python benchmarks/seg_throughput.py --models dnet unet3plus attention_unet unet --width 16 --size 128

The MedMNIST classifiers (paper 002) go through the same loop with cross-entropy on random labels:

    python benchmarks/seg_throughput.py --models resnet18 resnet50 --size 28 --batch 128
    python benchmarks/seg_throughput.py --models resnet18 --size 224 --batch 32

On a GPU, ``--precision bf16`` or ``fp16`` runs the step under autocast (fp16 with a gradient scaler), as
``trainer.precision=bf16-mixed|16-mixed`` does; ``--width 0`` keeps each net's paper width.

Each model is measured in a fresh subprocess so its peak memory (CPU max-RSS, or CUDA max allocated) is
its own. Output: one Markdown row per model (paste into docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import in_fresh_process, time_steps  # noqa: E402


CLASSIFIERS = {"resnet18": "ResNet18", "resnet50": "ResNet50"}


def measure(name: str, width: int | None, size: int, batch: int, steps: int, warmup: int, device: str,
            precision: str = "fp32") -> dict:
    import torch

    from lightning_modules.losses.deep_supervision import DeepSupervisionLoss
    from lightning_modules.losses.hybrid import HybridCEDiceLoss
    from lightning_modules.nets import build_model, count_parameters

    torch.manual_seed(0)
    if name in CLASSIFIERS:  # paper 002: 28 px (MedMNIST stem) or 224 px (ImageNet stem), 3 channels
        from lightning_modules.nets import classifiers

        net = getattr(classifiers, CLASSIFIERS[name])(in_channels=3, num_classes=2, resolution=size).to(device).train()
        loss_fn, width = torch.nn.CrossEntropyLoss(), None
        x = torch.randn(batch, 3, size, size, device=device)
        y = torch.randint(0, 2, (batch,), device=device)
    else:
        kwargs = {"in_channels": 1, "classes": 2}
        if name not in ("unet", "unetpp", "resnet18_unet", "resnet18_student"):
            kwargs.update(preset="paper", width=width)
        net = build_model(name, **kwargs).to(device).train()
        loss_fn = DeepSupervisionLoss(HybridCEDiceLoss())
        x = torch.randn(batch, 1, size, size, device=device)
        y = torch.randint(0, 2, (batch, size, size), device=device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")

    def step(_i: int) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(net(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    seconds, peak = time_steps(step, steps, warmup, device)
    return {"model": name, "params_M": count_parameters(net) / 1e6, "images_per_s": steps * batch / seconds,
            "peak_MiB": peak, "device": device, "width": width, "size": size, "batch": batch,
            "precision": precision}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["dnet", "unet3plus", "attention_unet", "unet"])
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(measure(a.one, a.width or None, a.size, a.batch, a.steps, a.warmup, a.device, a.precision)))
        return
    print("| model | params (M) | train images/s | peak memory (MiB) | device | precision | width | input | batch |")
    print("|---|---|---|---|---|---|---|---|---|")
    failed = 0
    for name in a.models:
        try:
            r = in_fresh_process(__file__, ["--one", name, "--width", a.width, "--size", a.size, "--batch", a.batch,
                                            "--steps", a.steps, "--warmup", a.warmup, "--device", a.device,
                                            "--precision", a.precision], name)
        except SystemExit as exc:  # one model's failure (e.g. out of memory) leaves the others measured
            print(f"| {name} | failed: {str(exc).split(' failed: ', 1)[-1]} | | | {a.device} | {a.precision} | | {a.size}² | {a.batch} |")
            failed += 1
            continue
        width = "smp resnet34" if name in ("unet", "unetpp") else ("—" if name in CLASSIFIERS else r["width"] or "paper")
        print(f"| {name} | {r['params_M']:.2f} | {r['images_per_s']:.1f} | {r['peak_MiB']:.0f} | {r['device']} | {a.precision} | "
              f"{width} | {r['size']}² | {r['batch']} |")
    if failed:
        raise SystemExit(f"{failed} of {len(a.models)} models failed")


if __name__ == "__main__":
    main()
