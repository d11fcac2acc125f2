"""Slices/s of the volume pipeline: cold (NIfTI decode + window + resize) vs cached (memory-mapped .npy).

    python benchmarks/data_pipeline.py --cases 8 --shape 256 256 64 --size 128
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from datamodules.layouts import find_cases
from datamodules.synthetic import write_phantom_dataset
from datamodules.volume_cache import VolumeCache
from datamodules.volumes import PreprocessParams


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--shape", type=int, nargs=3, default=[256, 256, 64])
    p.add_argument("--size", type=int, default=128)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_phantom_dataset(Path(tmp) / "lits", "lits", n_cases=a.cases, shape=tuple(a.shape), seed=0)
        cases = find_cases(root, "lits")
        params = PreprocessParams((-40.0, 160.0), (0.0, 1.0), a.size, (0, 1, 2))
        rows = []
        for label in ("cold", "cached"):
            cache = VolumeCache(Path(tmp) / "cache", params)
            t0 = time.perf_counter()
            n = 0
            for c in cases:
                vol = cache.load(c.image, c.label, c.case_id)
                n += int(sum(float(s.sum()) >= 0 for s in vol.image))  # touch every slice
            dt = time.perf_counter() - t0
            rows.append((label, n, dt, cache.decode_count))
    print("| pass | slices | seconds | slices/s | NIfTI decodes |")
    print("|---|---|---|---|---|")
    for label, n, dt, dec in rows:
        print(f"| {label} | {n} | {dt:.2f} | {n / dt:.0f} | {dec} |")


if __name__ == "__main__":
    main()
