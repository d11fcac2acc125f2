"""Where predict writes, and what it may overwrite there: an output never replaces an input or lands in the input
or labels folder; a file or folder no predict wrote is not overwritten without ``overwrite=true`` (predict marks its
folders and signs its files); a folder a failure left empty is removed. Which files are inputs (:func:`is_nifti`,
:func:`is_image`) is decided here once, for the readers and for the output checks alike."""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from datamodules.image_files import EXTENSIONS
from engine.artifacts import atomic_write_text
from lightning_modules.errors import ConfigError

__all__ = ["PREDICT_MARKER", "PREDICT_SIGNATURE", "check_writable", "claim_output_file", "claim_output_folder",
           "is_image", "is_nifti", "mark_output_folder", "nifti_stem", "refuse_input_folder", "refuse_overwrite",
           "remove_if_left_empty", "stale_beside",
           "written_by_predict"]


def refuse_overwrite(outputs: Sequence[Path], sources: Sequence[Path]) -> None:
    """One line if an output would replace an input image or label (``output=`` the input folder)."""
    taken = {p.resolve(): p for p in sources}
    for out in outputs:
        if out.resolve() in taken:
            raise ConfigError(f"output {out} would overwrite the input {taken[out.resolve()]}: "
                              f"choose another output file or folder")


def refuse_input_folder(out: Path, folders: Sequence[Path | None]) -> None:
    """One line if the folder of inputs or of labels (``folders``: input, labels) would receive the predictions
    (``input=images/ output=images/``): they would sit among the inputs, and the next run over that folder would
    take them for inputs."""
    for folder, name in zip(folders, ("input", "labels")):
        if folder is not None and out.resolve() == folder.resolve():  # a walkthrough: labels= was called "input"
            raise ConfigError(f"output={out} is the {name} folder {folder}: write the predictions to another folder")


def check_writable(folder: Path) -> None:
    """Create ``folder`` and probe it with a temp file; a one-line ConfigError otherwise."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(f"output folder {folder} is not writable ({type(err).__name__}: "
                          f"{err.strerror or err})") from None


#: written into a folder predict writes predictions to: files there are predict's own, safe to overwrite
PREDICT_MARKER = ".fedmed-predict"
#: what predict writes into its NIfTI headers (``descrip``) and PNG text chunks ("Software"): a single output
#: file holding it is predict's own, safe to overwrite
PREDICT_SIGNATURE = "fedmed predict"


_NII = re.compile(r"\.nii(\.gz)?$")


def nifti_stem(p: Path) -> str:
    return _NII.sub("", p.name)


def is_nifti(p: Path) -> bool:
    """A NIfTI volume predict reads as an input (hidden and ``._`` files are not)."""
    return _NII.search(p.name) is not None and not p.name.startswith(".") and not p.name.startswith("._")


def is_image(p: Path) -> bool:
    """A 2D image file predict reads as an input (:data:`datamodules.image_files.EXTENSIONS`, any case)."""
    return p.suffix.lower() in EXTENSIONS and not p.name.startswith(".")


def _an_input(path: Path) -> bool:
    """A file a later run over the folder would read as an input: the readers' own rule."""
    return is_nifti(path) or is_image(path)


def stale_beside(output: Path, name: str) -> None:
    """Remove ``name`` beside ``output`` (an earlier predict's ``<case>.npz`` or scores a new prediction leaves
    stale) where predict owns it: in a folder marked as predict's, or a single output predict signed. A walkthrough:
    a re-run without ``save_probabilities`` left the earlier ``.npz``, which experiments.ensemble then averaged,
    and one without ``labels`` left the earlier ``metrics.json`` beside predictions it did not score."""
    path = output.with_name(name)
    owned = (output.parent / PREDICT_MARKER).is_file() or written_by_predict(output)
    if owned and path.is_file() and not path.is_symlink() and _predicts_own(path):
        path.unlink()


def _predicts_own(path: Path) -> bool:
    """Whether ``path`` holds what predict writes there: scores (``summary``, ``per_case``, ``checkpoints``) or
    class probabilities (``probabilities``, ``class_names``, ``fg_threshold``); a run's own ``metrics.json`` is not."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as held:
                return set(held.files) == {"probabilities", "class_names", "fg_threshold"}
        if path.stat().st_size > 64 << 20:
            return False
        held = json.loads(path.read_text())
        return isinstance(held, dict) and set(held) == {"summary", "per_case", "checkpoints"}
    except Exception:  # noqa: BLE001 - unreadable: not known to be predict's
        return False


def written_by_predict(path: Path) -> bool:
    """Whether ``path`` is a segmentation predict wrote (its signature in the NIfTI header or PNG text)."""
    try:
        if path.name.endswith((".nii", ".nii.gz")):
            return bytes(nib.load(str(path)).header["descrip"]).rstrip(b"\0").decode(errors="replace") \
                == PREDICT_SIGNATURE
        from PIL import Image

        with Image.open(path) as im:
            return im.info.get("Software") == PREDICT_SIGNATURE
    except Exception:  # noqa: BLE001 - unreadable: not known to be predict's
        return False


def claim_output_file(path: Path, overwrite: bool) -> None:
    """One line if the single output file exists and predict did not write it (a verification: a copy of the
    ground truth given as ``output=`` was replaced), unless ``overwrite``."""
    if path.exists() and not overwrite and not written_by_predict(path):
        raise ConfigError(f"output={path} already exists and no predict wrote it; give another file, or "
                          f"overwrite=true")


def claim_output_folder(folder: Path, outputs: Sequence[Path], overwrite: bool) -> None:
    """Before anything goes into ``folder``: refuse (one line) to overwrite files that no predict wrote there,
    unless ``overwrite`` (a walkthrough: ``output=labelsTs/`` silently replaced the ground truth, as nnU-Net's
    predict would too). :func:`mark_output_folder` marks it as predict's when the first prediction is written,
    so a rerun may overwrite its own files."""
    existing = [p for p in outputs if p.exists() and not written_by_predict(p)]
    if existing and not overwrite and not (folder / PREDICT_MARKER).is_file():
        raise ConfigError(f"output={folder} already holds {len(existing)} file(s) this predict would overwrite "
                          f"(e.g. {existing[0].name}) that no predict wrote; give another folder, or "
                          f"overwrite=true")
    foreign = [] if overwrite or (folder / PREDICT_MARKER).is_file() or not folder.is_dir() else \
        [p for p in sorted(folder.iterdir()) if _an_input(p) and not written_by_predict(p)]
    if foreign:  # a walkthrough: an ensemble into a raw images folder mixed its labels in and marked it predict's
        raise ConfigError(f"output={folder} holds {len(foreign)} image(s) no predict wrote (e.g. {foreign[0].name}): "
                          f"predictions there would be taken for inputs by the next run over it; give another "
                          f"folder, or overwrite=true")


def mark_output_folder(folder: Path) -> None:
    if not (folder / PREDICT_MARKER).is_file():
        atomic_write_text(folder / PREDICT_MARKER, "predictions written here by python -m experiments.predict\n")


def remove_if_left_empty(folders: Sequence[Path]) -> None:
    """The output folders this predict created, removed when a failure left them empty (a verification: a bad
    label value stopped the run after the folder was made)."""
    for folder in folders:
        try:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        except OSError:
            pass
