"""Which way a metric improves, by its name: one rule for the best-of summaries (:mod:`callbacks.best_metric`)
and the report's bold best (:mod:`experiments.report`); free of Lightning so the report stays light."""
from __future__ import annotations

#: metric names where lower is better (|RVD| for the relative volume difference; surface distances in mm)
LOWER_IS_BETTER = ("loss", "hd95", "hd", "hausdorff", "rvd", "asd", "assd", "error", "seconds", "peak_memory",
                   "ece", "brier",  # calibration errors (a review: val/ece was taken as higher-is-better)
                   "ms_per", "latency")  # inference time (a review: fed_distill/*/ms_per_volume's slowest was bold)


def goal(key: str) -> str:
    """``min`` or ``max``: which way ``key`` improves (``test/hd95_tumor``: min; ``test/nsd``: max)."""
    name = key.rsplit("/", 1)[-1]
    return "min" if any(name.startswith(s) or f"_{s}" in name for s in LOWER_IS_BETTER) else "max"
