"""MedMNIST 2D datamodule over the official ``.npz`` files (paper 002, MedMNIST Classification Decathlon).

The ten datasets of the paper's Table 1 are described in :data:`MEDMNIST_INFO` (task type, number of
classes/labels, channels; class names as in MedMNIST's ``medmnist/info.py``). Any other MedMNIST 2D file
in the same format (``bloodmnist.npz``, ``tissuemnist.npz``, ...) loads too: its task, classes and
channels are inferred from the arrays unless given. Nothing is downloaded: a missing file raises
:class:`MissingDataFileError` naming the file and where to get it.

Each file holds ``{train,val,test}_{images,labels}``; images are ``uint8 (N, 28, 28)`` (grey) or
``(N, 28, 28, 3)``, labels ``(N, 1)`` (``(N, 14)`` for ChestMNIST). Labels stored 1-D ``(N,)`` are
accepted too (the BreastMNIST copy in ``../shared/data`` has them so). Like MedMNIST's reference code,
pixels are mapped to ``[-1, 1]`` (``Normalize(mean=.5, std=.5)``) and, for the 224 setting of §3.1,
resized from 28 with nearest-neighbour interpolation.

Its :func:`table_value` is the OmegaConf resolver ``${medmnist:<flag>,<key>[,<as_rgb>]}`` (registered by
:func:`engine.resolvers.register_resolvers`) with keys ``task``, ``num_classes``, ``in_channels``,
``class_names``, used by ``configs/data/medmnist.yaml``.
"""
from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from omegaconf import ListConfig

from datamodules.classification import (
    ArrayClassificationDataset,
    ClassificationDataModule,
    check_labels,
    default_class_names,
)
from datamodules.errors import DataError
from lightning_modules.tasks import normalize_task

log = logging.getLogger(__name__)

SOURCE_HINT = ("get it from https://medmnist.com (Zenodo record https://zenodo.org/records/10519652) "
               "and put it in that folder; nothing is downloaded automatically")
SPLITS = ("train", "val", "test")
KEYS = tuple(f"{s}_{k}" for s in SPLITS for k in ("images", "labels"))


class MissingDataFileError(DataError, FileNotFoundError):
    """A data file that is not there; the message names it and where to obtain it."""


@dataclass(frozen=True)
class MedMNISTInfo:
    """One row of paper 002's Table 1 (+ class names from MedMNIST's ``info.py``)."""

    name: str
    task: str
    num_classes: int
    channels: int
    class_names: tuple[str, ...]
    files: tuple[str, ...]  # accepted file stems; v2 renamed OrganMNIST_{Axial,Coronal,Sagittal}


_ORGANS = ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver",
           "lung-left", "lung-right", "pancreas", "spleen")

#: The ten datasets of the Decathlon, in the order of the paper's Tables 1 and 2.
MEDMNIST_INFO: dict[str, MedMNISTInfo] = {
    "pathmnist": MedMNISTInfo("PathMNIST", "multi-class", 9, 3, (
        "adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle", "normal colon mucosa",
        "cancer-associated stroma", "colorectal adenocarcinoma epithelium"), ("pathmnist",)),
    "chestmnist": MedMNISTInfo("ChestMNIST", "multi-label", 14, 1, (
        "atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia",
        "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural", "hernia"),
        ("chestmnist",)),
    "dermamnist": MedMNISTInfo("DermaMNIST", "multi-class", 7, 3, (
        "actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
        "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
        "vascular lesions"), ("dermamnist",)),
    "octmnist": MedMNISTInfo("OCTMNIST", "multi-class", 4, 1, (
        "choroidal neovascularization", "diabetic macular edema", "drusen", "normal"), ("octmnist",)),
    "pneumoniamnist": MedMNISTInfo("PneumoniaMNIST", "binary", 2, 1, ("normal", "pneumonia"),
                                   ("pneumoniamnist",)),
    "retinamnist": MedMNISTInfo("RetinaMNIST", "ordinal-regression", 5, 3, ("0", "1", "2", "3", "4"),
                                ("retinamnist",)),
    "breastmnist": MedMNISTInfo("BreastMNIST", "binary", 2, 1, ("malignant", "normal, benign"),
                                ("breastmnist",)),
    "organmnist_axial": MedMNISTInfo("OrganMNIST_Axial", "multi-class", 11, 1, _ORGANS,
                                     ("organamnist", "organmnist_axial")),
    "organmnist_coronal": MedMNISTInfo("OrganMNIST_Coronal", "multi-class", 11, 1, _ORGANS,
                                       ("organcmnist", "organmnist_coronal")),
    "organmnist_sagittal": MedMNISTInfo("OrganMNIST_Sagittal", "multi-class", 11, 1, _ORGANS,
                                        ("organsmnist", "organmnist_sagittal")),
}
DECATHLON: tuple[str, ...] = tuple(MEDMNIST_INFO)
_ALIASES = {stem: flag for flag, info in MEDMNIST_INFO.items() for stem in info.files}


def medmnist_info(flag: str) -> MedMNISTInfo | None:
    """Table entry for ``flag`` (paper name, v1 or v2 file name, any case), ``None`` if not one of the ten."""
    key = str(flag).strip().lower().removesuffix(".npz")
    return MEDMNIST_INFO.get(_ALIASES.get(key, key))


def find_npz(root: str | Path, flag: str, image_size: int = 28) -> Path:
    """The ``.npz`` file for ``flag`` in ``root`` (file names matched case-insensitively); for a MedMNIST+ size
    (64, 128, 224) the official ``<flag>_<size>.npz`` first (a review: only ``<flag>.npz`` was looked for)."""
    info = medmnist_info(flag)
    stems = info.files if info else (str(flag).lower().removesuffix(".npz"),)
    names = [f"{stem}_{int(image_size)}.npz" for stem in stems] if int(image_size) != 28 else []
    names += [f"{stem}.npz" for stem in stems]
    root = Path(root).expanduser()
    present = {p.name.lower(): p for p in root.glob("*.npz")} if root.is_dir() else {}
    for name in names:
        if name in present:
            return present[name]
    raise MissingDataFileError(f"MedMNIST file {' or '.join(names[:2])} not found in {root}; {SOURCE_HINT}")


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """All six arrays of an official MedMNIST file; :class:`DataError` if unreadable, a key is missing or holds
    no numbers."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in KEYS if k not in z.files]
            if missing:
                raise DataError(f"{path}: missing keys {', '.join(missing)} (a MedMNIST file has {', '.join(KEYS)})")
            arrays = {k: z[k] for k in KEYS}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from exc
    for key, array in arrays.items():  # text or objects: numpy's min/max on string labels was a traceback (an audit)
        if array.dtype.kind not in "biuf":
            raise DataError(f"{path}: {key} has dtype {array.dtype}; a MedMNIST file holds numbers")
    return arrays


def check_images(images: np.ndarray, channels: int, image_size: int, where: str) -> np.ndarray:
    """``images`` as ``(N, H, W)`` or ``(N, H, W, 3)`` of the expected size and channels, all finite."""
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    got = 1 if images.ndim == 3 else (images.shape[-1] if images.ndim == 4 else None)
    if got != channels or images.shape[1:3] != (image_size, image_size):
        want = f"(N, {image_size}, {image_size})" + ("" if channels == 1 else f" x {channels}")
        raise DataError(f"{where}: images have shape {images.shape}; expected {want} "
                        f"({channels}-channel {image_size}x{image_size})")
    if images.dtype.kind == "f" and not np.isfinite(images).all():
        raise DataError(f"{where}: images contain NaN or infinite values")
    if images.dtype.kind not in "uif":
        raise DataError(f"{where}: images have dtype {images.dtype}; expected uint8 or float")
    return images


def _infer(arrays: dict[str, np.ndarray]) -> tuple[str, int, int]:
    """Task, classes and channels of a file not in the table, read off its training arrays."""
    labels, images = arrays["train_labels"], arrays["train_images"]
    channels = images.shape[-1] if images.ndim == 4 else 1
    if labels.ndim == 2 and labels.shape[1] > 1:
        return "multi-label", labels.shape[1], channels
    n = int(max(int(np.max(arrays[f"{s}_labels"], initial=0)) for s in SPLITS)) + 1
    return ("binary" if n == 2 else "multi-class"), n, channels


class MedMNISTDataModule(ClassificationDataModule):
    """MedMNIST ``flag`` from ``root`` (no download), official train/val/test split (paper 002, §2).

    ``size`` is the network input: ``None`` (the stored ``image_size``), or another size resized to (224 from 28
    as in §3.1, nearest-neighbour at pixel centres as PIL's); ``as_rgb`` repeats grey images to three channels.
    ``task``/``num_classes``/``in_channels`` are the values the config declares (from the ``${medmnist:...}``
    resolver): they must agree with the table, and they set them for files outside it. ``image_size`` is the
    stored size (28; MedMNIST+ files, ``<flag>_<size>.npz``, have 64/128/224).
    """

    def __init__(self, root: str, flag: str, size: int | None = None, batch_size: int = 128, num_workers: int = 0,
                 as_rgb: bool = False, seed: int = 0, task: str | None = None, num_classes: int | None = None,
                 in_channels: int | None = None, image_size: int = 28, train_transform: Any = None,
                 augmentation: Sequence[Any] | None = None) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed, augmentation=augmentation)
        self.image_size, self.train_transform = int(image_size), train_transform
        # a review: a 64 px MedMNIST+ file was shrunk to the 28 px default without a word
        size = self.image_size if size is None else int(size)
        if size < self.image_size:
            log.warning("data.size=%d is below the stored data.image_size=%d: every image is shrunk (drop the "
                        "data.size override: it follows data.image_size)", size, self.image_size)
        self.root, self.flag, self.size, self.as_rgb = Path(root).expanduser(), str(flag), size, bool(as_rgb)
        self.info = medmnist_info(flag)
        self._declared = {"task": task, "num_classes": num_classes, "in_channels": in_channels}
        if self.info is not None:
            self._set_meta(self.info.task, self.info.num_classes, self.info.channels, self.info.class_names)
        self.path: Path | None = None

    def _set_meta(self, task: str, num_classes: int, channels: int, names: Any = None) -> None:
        self.task, self.num_classes, self.channels = normalize_task(task), int(num_classes), int(channels)
        self.in_channels = 3 if self.as_rgb else self.channels
        self.class_names = default_class_names(self.num_classes, names)

    def _check_declared(self) -> None:
        d = self._declared
        actual = {"task": self.task, "num_classes": self.num_classes, "in_channels": self.in_channels}
        for key, value in d.items():
            if value is not None and (normalize_task(value) if key == "task" else int(value)) != actual[key]:
                raise DataError(f"{self.path}: data.{key}={value} but {self.flag} has {key}={actual[key]}")

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        self.path = find_npz(self.root, self.flag, self.image_size)
        arrays = load_npz(self.path)
        if self.info is None:
            task, n, ch = _infer(arrays)
            d = self._declared
            self._set_meta(d["task"] or task, d["num_classes"] or n, ch)
        self._check_declared()
        datasets = {}
        for split in SPLITS:
            where = f"{self.path} [{split}]"
            images = check_images(arrays[f"{split}_images"], self.channels, self.image_size, where)
            labels = check_labels(arrays[f"{split}_labels"], self.task, self.num_classes, where)
            if len(images) != len(labels):
                raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
            datasets[split] = ArrayClassificationDataset(
                images, labels, size=self.size, scale=255.0 if images.dtype.kind != "f" else 1.0,
                mean=0.5, std=0.5, as_rgb=self.as_rgb, interpolation="nearest-exact",
                transform=self.train_augmentation(self.train_transform) if split == "train" else None)
        self.train_dataset, self.val_dataset, self.test_dataset = (datasets[s] for s in SPLITS)
        self.probe_augmentation()


def table_value(flag: str, key: str, as_rgb: Any = False) -> Any:
    """``${medmnist:flag,key[,as_rgb]}``: a table value for the Hydra configs (:mod:`engine.resolvers`)."""
    info = medmnist_info(flag)
    if info is None and key == "class_names":
        return None  # a file outside the table: classes are named 0..n-1 (data.class_names=[...] to name them)
    if info is None:
        raise ValueError(f"{flag!r} is not one of the ten MedMNIST datasets ({', '.join(DECATHLON)}); "
                         "set data.task, data.num_classes and data.in_channels explicitly")
    # a ListConfig, not a list: ``--cfg job --resolve`` refused a resolver's Python list (a review)
    values = {"task": info.task, "num_classes": info.num_classes, "class_names": ListConfig(list(info.class_names)),
              "in_channels": 3 if str(as_rgb).lower() == "true" else info.channels, "name": info.name}
    if key not in values:
        raise ValueError(f"unknown medmnist key {key!r}; expected one of {', '.join(values)}")
    return values[key]

