"""Seconds to read a large .nii.gz: ``load_nifti`` (header checks + read) against nibabel's plain read.

    python benchmarks/nifti_read.py --shape 512 512 600 --repeats 2

A gzip file whose header claims more than ``STREAM_CHECK_BYTES`` (256 MiB) is decompressed by the size check;
``load_nifti`` takes the voxels from that pass, so it should cost about one nibabel read, not two.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from datamodules.nifti_checks import STREAM_CHECK_BYTES
from datamodules.volumes import load_nifti


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=[512, 512, 600])
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ct.nii.gz"
        noisy = np.random.default_rng(0).normal(0, 300, a.shape).astype(np.int16)  # compresses as CT does
        nib.save(nib.Nifti1Image(noisy, np.diag([0.7, 0.7, 1.0, 1.0])), str(path))
        del noisy
        claim = int(np.prod(a.shape)) * 2
        plain = best_of(lambda: np.asarray(nib.load(str(path)).dataobj, dtype=np.float32), a.repeats)
        ours = best_of(lambda: load_nifti(path), a.repeats)
        print(f"{a.shape} int16: {claim / 2**20:.0f} MiB claimed ({'above' if claim > STREAM_CHECK_BYTES else 'below'} "
              f"the {STREAM_CHECK_BYTES // 2**20} MiB stream check), {path.stat().st_size / 2**20:.0f} MiB on disk")
        print("| read | seconds (best of {}) |".format(a.repeats))
        print("|---|---|")
        print(f"| nibabel, np.asarray(img.dataobj, float32) | {plain:.2f} |")
        print(f"| load_nifti (checks + read) | {ours:.2f} |")


if __name__ == "__main__":
    main()
