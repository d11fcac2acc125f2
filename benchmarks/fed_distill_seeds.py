"""Seed spread of federated-distillation runs (issue 15): other-site and own-site Dice per model.

    for s in 1 2 3; do python -m experiments.run +exp=fed_kits_hlfd_claim seed=$s hydra.run.dir=runs/fdc/s$s; done
    python benchmarks/fed_distill_seeds.py runs/fdc/s1 runs/fdc/s2 runs/fdc/s3

Prints a Markdown table: per model, Dice (mean over sites) on the other sites' and on the own site's test
sets for every run, mean ± std, and the gain of HLFD from the federated teacher over the student without KD.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

MODELS = ("none", "teacher_local", "hlfd_local", "hlfd_fed", "fed_none", "fed_hlfd", "teacher_fed")  # as fed_distill_eval


def main(dirs: list[str]) -> int:
    runs = [json.loads((Path(d) / "metrics.json").read_text()) for d in dirs]
    print("| model | Dice other sites (per run) | mean ± std | Dice own site (per run) | mean ± std |")
    print("|---|---|---|---|---|")
    for m in MODELS:
        if f"fed_distill/{m}/dice_other" not in runs[0]:
            continue
        cells = []
        for key in ("dice_other", "dice_own"):
            v = np.array([r[f"fed_distill/{m}/{key}"] for r in runs], dtype=float)
            cells += [" / ".join(f"{x:.3f}" for x in v), f"{v.mean():.3f} ± {v.std():.3f}"]
        print(f"| {m} | " + " | ".join(cells) + " |")
    if "fed_distill/hlfd_fed/dice_other" in runs[0]:
        gain = np.array([r["fed_distill/hlfd_fed/dice_other"] - r["fed_distill/none/dice_other"] for r in runs])
        print(f"\nhlfd_fed - none, other sites: {' / '.join(f'{g:+.3f}' for g in gain)} "
              f"(mean {gain.mean():+.3f}, min {gain.min():+.3f})")
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print("usage: python benchmarks/fed_distill_seeds.py <run dir> [<run dir> ...]", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1:]))
