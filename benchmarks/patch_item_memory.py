"""Peak memory and time of one 3D training item (``datamodules.patches3d.PatchDataset``) on a large volume.

``OMP_NUM_THREADS=1 python -m benchmarks.patch_item_memory [--shape D H W] [--patch 96]``: writes a float32 volume
and a label (a box of foreground) as ``.npy`` in a temporary folder, reads them memory-mapped as the slice cache
does, and cuts one item (``samples_per_volume`` patches) once. Results: docs/data.md (3D patches)."""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> None:
    from datamodules.patches3d import PatchDataset
    from datamodules.slices import SliceCase, TargetMap

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[500, 350, 350], help="D H W of the volume")
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--samples", type=int, default=2)
    args = parser.parse_args(argv)
    d, h, w = args.shape
    with tempfile.TemporaryDirectory() as tmp:
        img, lab = np.zeros((d, h, w), np.float32), np.zeros((d, h, w), np.uint8)
        lab[d // 3: 2 * d // 3, h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1
        np.save(Path(tmp) / "img.npy", img)
        np.save(Path(tmp) / "lab.npy", lab)
        del img, lab
        img = np.load(Path(tmp) / "img.npy", mmap_mode="r")
        lab = np.load(Path(tmp) / "lab.npy", mmap_mode="r")
        case = SliceCase("c", img, lab, list(range(d)), list(range(d)), (1.0, 1.0, 1.0))
        ds = PatchDataset([case], TargetMap("organ"), (args.patch,) * 3, args.samples, 1.0, 1.0, 0.0, True)
        ds.set_random_state(0)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0 = time.perf_counter()
        ds[0]
        seconds = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0 = time.perf_counter()
        ds[0]  # the case's foreground voxels are kept after its first item (datamodules.patches3d.FG_KEPT)
        again = time.perf_counter() - t0
    print(f"volume {d}x{h}x{w} ({d * h * w * 4 / 2**20:.0f} MiB float32); one item ({args.samples} patches of "
          f"{args.patch}^3): peak RSS +{after - before:.0f} MiB, {seconds:.2f} s; the case's next item {again:.3f} s")


if __name__ == "__main__":
    main()
