"""Training slices/s through the seeded loader (order and augmentation from (seed, epoch, item)) against the
plain seeded loader it replaced, on the same augmented lits_dnet phantom slices.

    python benchmarks/epoch_seeding.py --size 64 --epochs 3 --workers 0 2

Only the loader is timed (no model): the cost of re-seeding per item is at its most visible here.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _datamodule(tmp: Path, size: int, workers: int):
    from engine.builders import build_datamodule
    from tests.hydra_helpers import compose_run

    cfg = compose_run(["+exp=lits_dnet", f"data.image_size={size}", f"data.num_workers={workers}"], tmp)
    dm = build_datamodule(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _slices_per_second(make_loader, epochs: int) -> float:
    n, t0 = 0, time.perf_counter()
    for epoch in range(epochs):
        loader = make_loader(epoch)
        for batch in loader:
            n += len(batch["image"])
    return n / (time.perf_counter() - t0)


def main() -> None:
    import torch
    from torch.utils.data import DataLoader

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    a = p.parse_args()
    print(f"| workers | loader | slices/s | torch threads {torch.get_num_threads()} |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for workers in a.workers:
            dm = _datamodule(Path(tmp), a.size, workers)

            def plain(epoch: int, dm=dm, workers=workers) -> DataLoader:  # the loader before epoch seeding
                gen = torch.Generator().manual_seed(dm.seed + epoch)
                return DataLoader(dm.train_dataset, batch_size=dm.batch_size, shuffle=True, generator=gen,
                                  num_workers=workers, collate_fn=dm.collate_fn(True))

            def seeded(epoch: int, dm=dm) -> DataLoader:
                loader = dm.train_dataloader()
                loader.sampler.set_epoch(epoch)
                return loader

            for name, fn in (("plain (before)", plain), ("epoch-seeded", seeded), ("plain (before)", plain),
                             ("epoch-seeded", seeded)):  # interleaved, twice
                print(f"| {workers} | {name} | {_slices_per_second(fn, a.epochs):.0f} | |")


if __name__ == "__main__":
    main()
