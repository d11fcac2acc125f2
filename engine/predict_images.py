"""Prediction of 2D image files (PNG, JPG, NPY) with checkpoints trained on image folders (``data=folder2d``,
``liver_slices``, ``kits_slices``...): one file or a folder, ensembles and mirror TTA as for volumes.

Each image goes through the training run's own preprocessing (grey [0, 1], ``data.window``,
``data.image_size``; :meth:`datamodules.folder2d.FolderSegmentationDataModule.preprocess_image`), is padded at the
bottom/right to a multiple of 32 with the run's fill value (as training batches of mixed sizes are), and its
class probabilities are resampled back to the file's own pixel grid before the labels are taken (as volumes
are). The output is a single-channel 8-bit PNG whose pixel values are the class indices (nnU-Net's 2D export:
0 = background, 1, 2, ... as in the run's ``class_names``), written atomically; with ``labels=<dir>`` each image
is scored (Dice, IoU, RVD per class) against its mask, decoded as training decodes masks.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from datamodules.collate import pad_as_batched
from datamodules.errors import DataError
from datamodules.image_files import EXTENSIONS, strip_suffix
from engine.predict_output import PREDICT_SIGNATURE, is_image, refuse_input_folder, refuse_overwrite
from lightning_modules.atomic import atomic_output
from lightning_modules.errors import ConfigError
from lightning_modules.inference import VolumePredictor
from lightning_modules.metrics import case_scores, confusion_matrix

log = logging.getLogger("experiments.predict")

__all__ = ["ImageCase", "is_image", "plan_images", "predict_image", "save_png", "score_image"]



@dataclass
class ImageCase:
    """One image to segment: the file, where its PNG goes, its mask (optional)."""

    case_id: str
    image: Path
    output: Path
    label: Path | None = None


def _mask_for(case: str, labels: Path, suffix: str) -> Path:
    for p in sorted(labels.iterdir()):
        if is_image(p) and p.stem == f"{case}{suffix}":
            return p
    raise DataError(f"no mask for image {case} in labels={labels} (expected {case}{suffix}.png/.jpg/.npy)")


def plan_images(input: str | Path, output: str | Path, labels: str | Path | None = None,
                mask_suffix: str = "", image_suffix: str = "") -> list[ImageCase]:
    """The images of ``input`` (a file or a folder of them) and their outputs (``output/<case>.png`` for a
    folder); as in training, ``<case><image_suffix>`` pairs with the mask ``<case><mask_suffix>`` in
    ``labels``. An output that would replace an input or a mask is refused."""
    src, out = Path(input), Path(output)
    lab = None if labels in (None, "") else Path(labels)
    if lab is not None and not lab.exists():
        raise DataError(f"labels {lab} does not exist")

    def case_of(p: Path) -> str:
        return strip_suffix(p.stem, image_suffix)

    if src.is_file():
        target = out / f"{case_of(src)}.png" if out.is_dir() else out
        if target.suffix.lower() != ".png":
            raise ConfigError(f"output={out} must end in .png (or be an existing folder)")
        label = None if lab is None else (lab if lab.is_file() else _mask_for(case_of(src), lab, mask_suffix))
        cases = [ImageCase(case_of(src), src, target, label)]
    else:
        files = sorted(p for p in src.iterdir() if p.is_file() and is_image(p))
        if not files:
            raise DataError(f"input folder {src} holds no image file ({'/'.join(EXTENSIONS)})")
        others = sorted(p.name for p in src.iterdir() if p.is_file() and not is_image(p) and not p.name.startswith("."))
        if others:  # a walkthrough: a TIFF among the PNGs was skipped without a word
            log.warning("input folder %s: %d file(s) not %s are not predicted: %s", src, len(others),
                        "/".join(EXTENSIONS), ", ".join(others[:5]) + (", ..." if len(others) > 5 else ""))
        if out.is_file() or (not out.is_dir() and (is_image(out) or out.name.lower().endswith((".nii", ".nii.gz")))):
            # a walkthrough: output=p4.nii.gz made a folder of that name and filled it with PNGs
            raise ConfigError(f"output={out} must be a folder when input={src} is a folder")
        if lab is not None and not lab.is_dir():
            raise ConfigError(f"labels={lab} must be a folder when input={src} is a folder")
        refuse_input_folder(out, [src, lab])
        ids = [case_of(p) for p in files]
        twice = sorted({c for c in ids if ids.count(c) > 1})
        if twice:
            raise DataError(f"input folder {src} holds several images of {twice[0]} (.png/.jpg/.npy): one output each")
        cases = [ImageCase(c, p, out / f"{c}.png", None if lab is None else _mask_for(c, lab, mask_suffix))
                 for c, p in zip(ids, files)]
    refuse_overwrite([c.output for c in cases], [p for c in cases for p in (c.image, c.label) if p is not None])
    _refuse_name_twins(cases)
    return cases


def _refuse_name_twins(cases: Sequence[ImageCase]) -> None:
    """One line when the output folder holds another image of a prediction's name (``x.jpg`` beside ``x.png``):
    a folder read pairs files by name, so a walkthrough's predictions written into a folder of ground-truth
    masks were later paired with its images in training."""
    held: dict[Path, dict[str, list[Path]]] = {}
    for c in cases:
        folder = c.output.parent
        if folder not in held:
            held[folder] = {}
            for q in (folder.iterdir() if folder.is_dir() else ()):
                if is_image(q):
                    held[folder].setdefault(q.stem, []).append(q)
        twin = next((q for q in held[folder].get(c.output.stem, []) if q != c.output), None)
        if twin is not None:
            raise ConfigError(f"output={folder} holds {twin.name}, of the name of the prediction {c.output.name}: "
                              f"a folder read pairs files by name (is it a mask folder?); give another folder")


def predict_image(case: ImageCase, dm, predictor: VolumePredictor, threshold: float | None) -> np.ndarray:
    """uint8 class indices ``[H, W]`` on the file's own pixel grid."""
    x, shape = dm.preprocess_image(case.image)                                   # [1, 1, h, w]
    h, w = x.shape[-2:]
    prob = predictor.probabilities(pad_as_batched(x, dm))[..., :h, :w]  # [1, K, h, w]
    source = torch.from_numpy(dm.restore_image_probabilities(prob, shape))      # [K, H, W]
    return VolumePredictor.labels(source, threshold, class_dim=0).numpy().astype(np.uint8)


def _pixel_size(path: Path) -> tuple[int, int] | None:
    """``(H, W)`` of an image file from its header (PIL formats; an ``.npy`` of 2 or 3 dims by its shape), or None."""
    try:
        if path.suffix.lower() == ".npy":
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
            return (int(shape[0]), int(shape[1])) if len(shape) in (2, 3) else None
        with Image.open(path) as im:
            return int(im.size[1]), int(im.size[0])
    except Exception:  # noqa: BLE001 - unreadable here: its reader says why when the image is segmented
        return None


def check_image_label_sizes(cases: Sequence[ImageCase]) -> None:
    """Every mask has its image's size, before anything is written (a review: PNGs of earlier images were written
    and their scores lost when a later mask's size was found wrong); volumes are checked alike."""
    for case in cases:
        if case.label is None:
            continue
        image, mask = _pixel_size(case.image), _pixel_size(case.label)
        if image is not None and mask is not None and image != mask:
            raise DataError(f"mask {case.label} is {mask} but image {case.image} is {image}")


def save_png(labels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", PREDICT_SIGNATURE)  # a rerun may overwrite it (engine.predict_output.claim_output_file)
    with atomic_output(path, suffix=".png") as tmp:
        Image.fromarray(labels.astype(np.uint8)).save(tmp, format="PNG", pnginfo=info)


def score_image(pred: np.ndarray, case: ImageCase, dm, class_names: Sequence[str]) -> dict[str, float]:
    """Dice/IoU/RVD per class of one prediction against its mask, on the file's pixel grid."""
    target = dm.label_fn()(dm.read_label(case.label))
    if target.shape != pred.shape:
        raise DataError(f"mask {case.label} is {target.shape} but image {case.image} is {pred.shape}")
    cm = confusion_matrix(torch.from_numpy(pred.astype(np.int64))[None],
                          torch.from_numpy(target.astype(np.int64))[None], len(class_names))[0].numpy()
    return case_scores(cm, class_names)
