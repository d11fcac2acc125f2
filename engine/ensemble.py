"""Ensemble predictions saved with ``experiments.predict ... save_probabilities=true`` (nnU-Net's
``nnUNetv2_ensemble``): the mean of each case's class probabilities over several prediction folders, labels taken
from it as predict takes them, written on the input's grid with the header of the first folder's ``<case>.nii.gz``.

Every ``.npz`` is read as plain arrays (``allow_pickle=False``); folders that disagree on a case's shape, class
names or ``fg_threshold``, or on which cases they hold, are one line naming the folder and the case.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from datamodules.errors import DataError
from engine.predict import save_nifti, save_probabilities

__all__ = ["plan_ensemble", "ensemble_case"]


def _npz_cases(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"inputs: {folder} is not a folder of predictions")
    cases = {p.name[:-4]: p for p in sorted(folder.glob("*.npz")) if not p.name.startswith(".")}
    if not cases:
        raise DataError(f"inputs: {folder} holds no <case>.npz (predict with save_probabilities=true writes them)")
    return cases


def plan_ensemble(inputs: Sequence[str | Path]) -> dict[str, list[Path]]:
    """``{case: [its .npz in every folder]}``; at least two folders, holding the same cases."""
    folders = [Path(p) for p in inputs]
    if len(folders) < 2:
        raise DataError(f"inputs={[str(f) for f in folders]}: an ensemble needs at least two prediction folders")
    found = [_npz_cases(f) for f in folders]
    for folder, cases in zip(folders[1:], found[1:]):
        differ = sorted(set(cases) ^ set(found[0]))
        if differ:
            raise DataError(f"inputs: {folder} and {folders[0]} do not hold the same cases (e.g. {differ[0]})")
    return {case: [f[case] for f in found] for case in found[0]}


def _load(path: Path) -> tuple[np.ndarray, list[str], float]:
    try:
        with np.load(path, allow_pickle=False) as f:
            return f["probabilities"].astype(np.float32), [str(c) for c in f["class_names"]], float(f["fg_threshold"])
    except (OSError, ValueError, KeyError) as exc:  # a truncated file, a pickle, a foreign .npz
        raise DataError(f"cannot read saved probabilities {path}: {type(exc).__name__}: {exc}") from None


def ensemble_case(case: str, files: Sequence[Path], output: Path, keep_probabilities: bool = False) -> np.ndarray:
    """The mean probabilities of ``files`` -> uint8 labels written to ``output/<case>.nii.gz`` (and their
    ``.npz`` with ``keep_probabilities``); returns the labels."""
    total, names, threshold = None, None, None
    for path in files:
        prob, cls, thr = _load(path)
        if total is None:
            total, names, threshold = prob, cls, thr
            continue
        if prob.shape != total.shape or cls != names:
            raise DataError(f"{path}: probabilities {list(prob.shape)} of classes {cls}, but {files[0]} has "
                            f"{list(total.shape)} of {names}")
        if not (thr == threshold or (np.isnan(thr) and np.isnan(threshold))):
            raise DataError(f"{path}: fg_threshold {thr} but {files[0]} has {threshold}: labels taken two ways")
        total += prob
    mean = total / len(files)
    labels = (mean[1] > threshold if not np.isnan(threshold) else mean.argmax(0)).astype(np.uint8)
    ref = next((p for p in (files[0].with_suffix(".nii.gz"), files[0].with_suffix(".nii")) if p.is_file()), None)
    if ref is None:
        raise DataError(f"no {case}.nii.gz beside {files[0]}: its header and affine are the output's")
    src = nib.load(str(ref))
    if tuple(src.shape) != labels.shape:
        raise DataError(f"{ref} is {tuple(src.shape)} but its probabilities {files[0]} are {labels.shape}")
    header = src.header.copy()
    header.set_data_dtype(np.uint8)
    save_nifti(nib.Nifti1Image(labels, src.affine, header), output / f"{case}.nii.gz")
    if keep_probabilities:
        save_probabilities(mean, names, None if np.isnan(threshold) else threshold, output / f"{case}.npz")
    return labels
