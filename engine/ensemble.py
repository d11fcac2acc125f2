"""Ensemble predictions saved with ``experiments.predict ... save_probabilities=true`` (nnU-Net's
``nnUNetv2_ensemble``): the mean of each case's class probabilities over several prediction folders, labels taken
from it as predict takes them, written on the input's grid with the header of the first folder's ``<case>.nii.gz``.

Every ``.npz`` is read as plain arrays (``allow_pickle=False``). Before anything is written, every case is checked
from the files' headers (:func:`check_ensemble`): folders that disagree on a case's shape, class names,
``fg_threshold`` or image affine, a damaged file or a missing reference image, are one line naming them.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import torch

from datamodules.errors import DataError
from engine.predict import label_header, save_nifti, save_probabilities
from lightning_modules.inference import VolumePredictor

__all__ = ["plan_ensemble", "check_ensemble", "ensemble_case"]

#: how far a voxel's saved class probabilities may sum from 1 (float32 softmax and linear resampling: ~1e-6)
_SUM_TOLERANCE = 1e-3


def _npz_cases(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"inputs: {folder} is not a folder of predictions")
    # regular files only: a link counted another folder's file (or the same twice), a FIFO hung the read
    cases = {p.name[:-4]: p for p in sorted(folder.glob("*.npz")) if not p.name.startswith(".")
             and not p.is_symlink() and p.is_file()}
    if not cases:
        raise DataError(f"inputs: {folder} holds no <case>.npz that is a regular file (predict with "
                        f"save_probabilities=true writes them; links and other kinds of file are not read)")
    return cases


def plan_ensemble(inputs: Sequence[str | Path]) -> dict[str, list[Path]]:
    """``{case: [its .npz in every folder]}``; at least two distinct folders, holding the same cases."""
    folders = [Path(p) for p in inputs]
    if len(folders) < 2:
        raise DataError(f"inputs={[str(f) for f in folders]}: an ensemble needs at least two prediction folders")
    seen = [f.resolve() for f in folders]
    twice = next((f for i, f in enumerate(folders) if seen[i] in seen[:i]), None)
    if twice is not None:
        raise DataError(f"inputs: {twice} is named twice (it would weigh double)")
    found = [_npz_cases(f) for f in folders]
    for folder, cases in zip(folders[1:], found[1:]):
        differ = sorted(set(cases) ^ set(found[0]))
        if differ:
            raise DataError(f"inputs: {folder} and {folders[0]} do not hold the same cases (e.g. {differ[0]})")
    return {case: [f[case] for f in found] for case in found[0]}


@dataclass(frozen=True)
class SavedProbabilities:
    """What a ``<case>.npz`` says of itself, read without its probabilities."""

    shape: tuple[int, ...]
    class_names: tuple[str, ...]
    threshold: float | None  # predict's fg_threshold where it took the labels with it (two classes), else None


def _meta(path: Path) -> SavedProbabilities:
    """The header of ``<case>.npz``, refused (one line) unless it is what predict writes: float probabilities
    ``[K, ...]`` of as many classes as ``class_names``, as many bytes stored as the header declares (an audit's
    few-byte file declared 196 TiB), and ``fg_threshold`` NaN or in [0, 1] (an audit's 5.0 made every voxel
    background)."""
    try:
        with zipfile.ZipFile(path) as z:
            packed = [i.filename for i in z.infolist() if i.compress_type != zipfile.ZIP_STORED]
            small = [i.filename for i in z.infolist() if i.filename != "probabilities.npy" and i.file_size > 2**20]
        if packed or small:  # predict stores them uncompressed (a verification: 9 MB deflated to 2 GiB)
            raise ValueError(f"{(packed or small)[0]} is {'compressed' if packed else 'over 1 MB'}, unlike predict's")
        with np.load(path, allow_pickle=False) as f, zipfile.ZipFile(path) as z, z.open("probabilities.npy") as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(fh)
            shape = tuple(int(s) for s in shape)
            stored = z.getinfo("probabilities.npy").file_size - fh.tell()
            names = tuple(str(c) for c in f["class_names"])
            thr = float(f["fg_threshold"])
    except Exception as exc:  # noqa: BLE001 - a truncated zip, a pickle, a foreign .npz or .npy: many types
        raise DataError(f"cannot read saved probabilities {path}: {type(exc).__name__}: {exc}") from None
    problem = ("are not floating point" if dtype.kind != "f" else
               f"hold {shape[0] if shape else 0} classes but class_names names {len(names)}" if not shape
               or shape[0] != len(names) or not names else
               f"declare {int(np.prod(shape)) * dtype.itemsize} bytes but {stored} are stored"
               if int(np.prod(shape)) * dtype.itemsize != stored else
               f"come with fg_threshold {thr}, outside [0, 1]" if not np.isnan(thr) and not 0 <= thr <= 1 else None)
    if problem:
        raise DataError(f"saved probabilities {path} ({dtype} {list(shape)}) {problem}: not a file predict wrote "
                        f"(save_probabilities=true)")
    return SavedProbabilities(shape, names, None if np.isnan(thr) or len(names) != 2 else thr)


def _reference(npz: Path) -> Path | None:
    """The prediction written beside ``<case>.npz``: its NIfTI header and affine are the ensemble's (a regular
    file, not a link elsewhere)."""
    return next((p for p in (npz.with_suffix(".nii.gz"), npz.with_suffix(".nii"))
                 if p.is_file() and not p.is_symlink()), None)


def _load_reference(path: Path) -> nib.Nifti1Image:
    """:func:`_reference`'s image, a damaged one a :class:`DataError` naming it (a verification: a traceback)."""
    try:
        img = nib.load(str(path))
        img.header.get_data_shape()
        return img
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for a damaged file
        raise DataError(f"cannot read the prediction {path}: {type(exc).__name__}: {exc}") from None


def check_ensemble(cases: dict[str, list[Path]]) -> None:
    """Every case's files agree (shape, classes, threshold; the affine of the NIfTI beside each), read from their
    headers before the first output is written: a disagreement at the last case no longer leaves the first ones
    written."""
    for case, files in cases.items():
        first = _meta(files[0])
        ref = _reference(files[0])
        if ref is None:
            raise DataError(f"no {case}.nii.gz beside {files[0]}: its header and affine are the output's")
        img = _load_reference(ref)
        if tuple(img.shape) != first.shape[1:]:
            raise DataError(f"{ref} is {tuple(img.shape)} but its probabilities {files[0]} are {list(first.shape)}")
        for path in files[1:]:
            meta = _meta(path)
            if meta.shape != first.shape or meta.class_names != first.class_names:
                raise DataError(f"{path}: probabilities {list(meta.shape)} of classes {list(meta.class_names)}, but "
                                f"{files[0]} has {list(first.shape)} of {list(first.class_names)}")
            if meta.threshold != first.threshold:
                raise DataError(f"{path}: fg_threshold {meta.threshold} but {files[0]} has {first.threshold}: "
                                f"labels taken two ways")
            other = _reference(path)
            if other is not None and not np.allclose(_load_reference(other).affine, img.affine, atol=1e-3):
                raise DataError(f"{other} and {ref} lie on other voxel grids (their affines differ): the "
                                f"probabilities would be averaged voxel by voxel across them")


def ensemble_case(case: str, files: Sequence[Path], output: Path, keep_probabilities: bool = False) -> np.ndarray:
    """The mean probabilities of ``files`` (checked by :func:`check_ensemble`) -> uint8 labels written to
    ``output/<case>.nii.gz`` (and their ``.npz`` with ``keep_probabilities``); returns the labels. The labels are
    predict's: ``P(class 1) > fg_threshold`` for a two-class net that had one, else the arg-max."""
    total = None
    for path in files:
        with np.load(path, allow_pickle=False) as f:
            prob = f["probabilities"].astype(np.float32, copy=False)
        if not np.isfinite(prob).all() or prob.min(initial=0.0) < 0 or prob.max(initial=0.0) > 1 + 1e-4:
            # an audit's NaN, inf and -100 "probabilities" were averaged into labels, exit 0
            raise DataError(f"saved probabilities {path} hold values outside [0, 1] (min {prob.min():g}, max "
                            f"{prob.max():g}): not a file predict wrote (save_probabilities=true)")
        off = float(np.abs(prob.sum(axis=0, dtype=np.float64) - 1).max(initial=0.0))
        if off > _SUM_TOLERANCE:  # predict's are a softmax, resampled linearly: they sum to 1 at every voxel
            raise DataError(f"saved probabilities {path} do not sum to 1 over the classes (off by up to {off:.3g} "
                            f"at a voxel): not a file predict wrote (save_probabilities=true)")
        total = prob if total is None else total + prob
    mean = total / len(files)
    meta = _meta(files[0])
    labels = VolumePredictor.labels(torch.from_numpy(mean), meta.threshold, class_dim=0).numpy().astype(np.uint8)
    src = _load_reference(_reference(files[0]))
    header = label_header(src.header)
    save_nifti(nib.Nifti1Image(labels, src.affine, header), output / f"{case}.nii.gz")
    if keep_probabilities:
        save_probabilities(mean, meta.class_names, meta.threshold, output / f"{case}.npz")
    return labels
