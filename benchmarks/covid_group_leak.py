"""How many COVID-CT figures a per-image split puts in both train and test, against the group split.

``python -m benchmarks.covid_group_leak [--root DIR] [--seeds 0 1 2]``: lists the class folders as
``ImageFolderDataModule`` does, groups images by the config's ``group_pattern`` (a figure's crops ``name%0`` ..
``name%15``), and counts the groups found in train and in test under ``stratified_split`` (per image) and under
``group_split`` (per group) at the module's default fractions. Results: docs/benchmarks.md (COVID-CT split)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

PATTERN = r"^(.+?)(?:%\d+)?$"   # experiments/configs/data/covid_ct.yaml: group_pattern


def main(argv: list[str] | None = None) -> None:
    from datamodules.digits import stratified_split
    from datamodules.image_folder import EXTS, ImageFolderDataModule, group_split

    shared = os.environ.get("FEDMED_SHARED_DATA", str(Path(__file__).resolve().parents[1].parent / "shared/data"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=f"{shared}/covid-ct-ucsd-cropped")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    dm = ImageFolderDataModule(args.root, classes=["CT_NonCOVID", "CT_COVID"], group_pattern=PATTERN)
    files, labels = [], []
    for k, c in enumerate(dm.classes):
        found = [p for p in sorted((dm.root / c).iterdir()) if p.suffix.lower() in EXTS and not p.name.startswith(".")]
        files += found
        labels += [k] * len(found)
    labels_arr = np.asarray(labels)
    groups = np.asarray([dm._group(p.stem) for p in files])
    print(f"{len(files)} images in {len(set(groups))} groups ({args.root})")
    for seed in args.seeds:
        for name, parts in (("per image", stratified_split(labels_arr, dm.val_fraction, dm.test_fraction, seed)),
                            ("per group", group_split(labels_arr, groups.tolist(), dm.val_fraction,
                                                      dm.test_fraction, seed))):
            both = set(groups[parts["train"]]) & set(groups[parts["test"]])
            print(f"seed {seed} {name}: {len(both)} groups in train and test "
                  f"({sum(np.isin(groups[parts['test']], sorted(both)))} of {len(parts['test'])} test images)")


if __name__ == "__main__":
    main()
