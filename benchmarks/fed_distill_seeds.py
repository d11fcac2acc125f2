"""Seed spread of federated-distillation runs (issue 15): other-site and own-site Dice per model.

    for s in 1 2 3; do python -m experiments.run +exp=fed_kits_hlfd_claim seed=$s hydra.run.dir=runs/fdc/s$s; done
    python benchmarks/fed_distill_seeds.py runs/fdc/s1 runs/fdc/s2 runs/fdc/s3

Prints a Markdown table: per model, Dice (mean over sites) on the other sites' and on the own site's test
sets for every run, mean ± std, and what HLFD adds off-site: from the federated teacher and from a local teacher
over the local student without KD, and in the federated student over the federated student without KD.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

MODELS = ("none", "teacher_local", "hlfd_local", "hlfd_fed", "fed_none", "fed_hlfd", "teacher_fed")  # as fed_distill_eval
#: (model, its baseline): what distillation adds, off-site; the first pair is the claim of issue 15
GAINS = (("hlfd_fed", "none"), ("hlfd_local", "none"), ("fed_hlfd", "fed_none"))


def _load(d: str) -> dict | None:
    """A run's metrics; None (said on stderr) for a folder without them or a debug (fast_dev_run) run."""
    path = Path(d) / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"skipped {d}: no readable metrics.json ({type(exc).__name__})", file=sys.stderr)
        return None
    if not isinstance(metrics, dict) or metrics.get("debug"):
        print(f"skipped {d}: {'a debug (fast_dev_run) run' if isinstance(metrics, dict) else 'not a metrics dict'}",
              file=sys.stderr)
        return None
    return metrics


def main(dirs: list[str]) -> int:
    runs = [m for m in map(_load, dirs) if m is not None]
    if not runs:
        print("error: no finished federated-distillation run among the folders given", file=sys.stderr)
        return 2
    print("| model | Dice other sites (per run) | mean ± std | Dice own site (per run) | mean ± std |")
    print("|---|---|---|---|---|")
    for m in MODELS:
        if not all(f"fed_distill/{m}/dice_other" in r and f"fed_distill/{m}/dice_own" in r for r in runs):
            continue  # a model every run has (runs made with other fed_distill.arms lack some)
        cells = []
        for key in ("dice_other", "dice_own"):
            v = np.array([r[f"fed_distill/{m}/{key}"] for r in runs], dtype=float)
            cells += [" / ".join(f"{x:.3f}" for x in v), f"{v.mean():.3f} ± {v.std():.3f}"]
        print(f"| {m} | " + " | ".join(cells) + " |")
    for arm, base in GAINS:
        if not all(f"fed_distill/{arm}/dice_other" in r and f"fed_distill/{base}/dice_other" in r for r in runs):
            continue
        gain = np.array([r[f"fed_distill/{arm}/dice_other"] - r[f"fed_distill/{base}/dice_other"] for r in runs])
        print(f"\n{arm} - {base}, other sites: {' / '.join(f'{g:+.3f}' for g in gain)} "
              f"(mean {gain.mean():+.3f}, min {gain.min():+.3f})")
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print("usage: python benchmarks/fed_distill_seeds.py <run dir> [<run dir> ...]", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1:]))
