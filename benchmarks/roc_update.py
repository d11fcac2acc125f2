"""Cost of the test-time ROC/AUC update per test batch: torchmetrics' binned ``MulticlassROC`` +
``MulticlassAUROC`` (what the segmentation module ran before) against
:class:`lightning_modules.roc.BinnedMulticlassROC`.

    python benchmarks/roc_update.py                       # 16 slices of 128 px (KiTS), 8 of 64 px x 3 classes
    python benchmarks/roc_update.py --batch 16 --size 256 --classes 3 --thresholds 200

Each case runs in a fresh process (its peak memory is its own); the counts of the two are checked equal.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from timing import in_fresh_process  # noqa: E402


def measure(impl: str, batch: int, size: int, classes: int, thresholds: int, repeats: int) -> dict:
    import resource

    import torch
    from torchmetrics.classification import MulticlassAUROC, MulticlassROC

    from lightning_modules.roc import BinnedMulticlassROC

    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(batch * size * size, classes, generator=gen), 1)
    target = torch.randint(0, classes, (batch * size * size,), generator=gen)
    metrics = ([BinnedMulticlassROC(classes, thresholds=thresholds)] if impl == "binned" else
               [MulticlassROC(classes, thresholds=thresholds),
                MulticlassAUROC(classes, average=None, thresholds=thresholds)])
    start = time.perf_counter()
    for _ in range(repeats):
        for metric in metrics:
            metric.update(probs, target)
    seconds = (time.perf_counter() - start) / repeats
    return {"impl": impl, "seconds_per_batch": seconds, "confmat_sum": int(metrics[0].confmat.sum()),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[16, 8])
    ap.add_argument("--size", type=int, nargs="+", default=[128, 64])
    ap.add_argument("--classes", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--thresholds", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--one", nargs=4, metavar=("IMPL", "BATCH", "SIZE", "CLASSES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        impl, batch, size, classes = args.one[0], *map(int, args.one[1:])
        print(json.dumps(measure(impl, batch, size, classes, args.thresholds, args.repeats)))
        return
    print("| batch x size², classes | torchmetrics ROC + AUROC (s / batch, peak MiB) | binned (s / batch, peak MiB) |")
    print("|---|---|---|")
    for batch, size, classes in zip(args.batch, args.size, args.classes):
        res = {impl: in_fresh_process(__file__, ["--one", impl, batch, size, classes, "--thresholds", args.thresholds,
                                                 "--repeats", args.repeats], f"{impl} {batch}x{size}")
               for impl in ("torchmetrics", "binned")}
        assert res["torchmetrics"]["confmat_sum"] == res["binned"]["confmat_sum"]
        tm, bn = res["torchmetrics"], res["binned"]
        print(f"| {batch} x {size}², {classes} | {tm['seconds_per_batch']:.3f}, {tm['peak_rss_mib']:.0f} | "
              f"{bn['seconds_per_batch']:.4f}, {bn['peak_rss_mib']:.0f} |")


if __name__ == "__main__":
    main()
