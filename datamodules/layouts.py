"""Where the files of each dataset layout are, nothing more (no reading of voxels here).

* ``lits``: ``volume-N.nii[.gz]`` + ``segmentation-N.nii[.gz]`` anywhere below root (the LiTS
  release spreads them over "Training Batch 1/2"); labels 0 background, 1 liver, 2 tumour.
* ``kits``: ``case_XXXXX/imaging.nii.gz`` + ``case_XXXXX/segmentation.nii.gz`` (KiTS19);
  labels 0 background, 1 kidney, 2 tumour.
* ``msd``: Medical Segmentation Decathlon task folder: ``imagesTr/*.nii.gz``, ``labelsTr/*.nii.gz``
  and ``dataset.json`` whose ``"labels"`` map gives the classes; macOS ``._*`` files are ignored.
* ``nnunet``: nnU-Net v2 raw dataset: ``imagesTr/<case>_<XXXX>.nii.gz`` (one file per input channel,
  ``XXXX`` = 0000, 0001, ...), ``labelsTr/<case>.nii.gz`` and ``dataset.json`` with ``channel_names``
  (``{"0": "CT"}``) and ``labels`` (``{"background": 0, "liver": 1}``; region lists are not supported).
* ``covid_stack``: MedSeg COVID-19 CT ``tr_im.nii.gz`` + ``tr_mask.nii.gz``, one stack of unrelated
  2D slices; each slice is its own case unless ``stack_group_size`` groups consecutive slices.
  Labels 0 background, 1 ground-glass, 2 consolidation, 3 pleural effusion.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib

from datamodules.errors import DataError, missing_root
from datamodules.jsonfile import read_json

log = logging.getLogger(__name__)

LAYOUTS = ("lits", "kits", "msd", "nnunet", "covid_stack")

#: Classes of each layout (label value -> name); msd reads its own from dataset.json.
DEFAULT_CLASSES: dict[str, dict[int, str]] = {
    "lits": {0: "background", 1: "liver", 2: "tumor"},
    "kits": {0: "background", 1: "kidney", 2: "tumor"},
    "covid_stack": {0: "background", 1: "ground_glass", 2: "consolidation", 3: "pleural_effusion"},
}

_PATTERNS = {
    "lits": "volume-<N>.nii[.gz] with segmentation-<N>.nii[.gz]",
    "kits": "case_XXXXX/imaging.nii.gz with case_XXXXX/segmentation.nii.gz",
    "msd": "imagesTr/*.nii.gz with labelsTr/*.nii.gz and dataset.json",
    "nnunet": "imagesTr/<case>_0000.nii.gz with labelsTr/<case>.nii.gz and dataset.json",
    "covid_stack": "tr_im.nii.gz with tr_mask.nii.gz",
}


@dataclass(frozen=True)
class Case:
    """One patient: image file, label file (None when unlabelled) and, for a stack of unrelated
    slices (``covid_stack``), the slice indices of the stack that belong to this case."""

    case_id: str
    image: Path
    label: Path | None
    slices: tuple[int, ...] | None = None
    channels: tuple[Path, ...] | None = None  # nnU-Net: every channel file, image == channels[0]

    @property
    def images(self) -> Path | tuple[Path, ...]:
        """The image file, or one file per channel."""
        return self.channels if self.channels and len(self.channels) > 1 else self.image


def _nii_stem(p: Path) -> str:
    return re.sub(r"\.nii(\.gz)?$", "", p.name)


def _file(p: Path) -> bool:
    """``p.is_file()``, but a link to a missing file is one line naming it, not skipped (a walkthrough: ``ln -sf``
    to a missing source gave "no nnunet cases found ... expected imagesTr/<case>_0000.nii.gz" beside those names)."""
    if p.is_symlink() and not p.exists():
        raise DataError(f"{p} is a link to a missing file {os.readlink(p)}")
    return p.is_file()


def _is_nifti(p: Path) -> bool:
    return not p.name.startswith("._") and re.search(r"\.nii(\.gz)?$", p.name) is not None and _file(p)


def _tree(root: Path) -> list[Path]:
    """Every file name under ``root``, through linked folders (``rglob`` does not follow them before Python 3.13: a
    walkthrough's LiTS batches linked in were silently left out), each real folder once; a link to a missing folder
    or file is a warning naming it (a LiTS case in it is missing; a dangling ``volume-*`` is an error, ``_file``).
    Hidden folders (the slice ``.cache``, perhaps linked to a scratch disk) and links to a folder above ``root``
    (its sibling datasets) are not walked (a review); folders are walked in name order, so the same link wins on
    every machine."""
    files, seen, top = [], set(), os.path.realpath(root)
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen or (top.startswith(real + os.sep) if real != top else False):  # walked, or above root
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            path = Path(folder) / name
            if path.is_symlink() and not path.exists() and not name.startswith(("volume-", "segmentation-")):
                log.warning("skipped: %s is a link to a missing file or folder %s", path, os.readlink(path))
            files.append(path)
    return sorted(files)


def _lits(root: Path) -> list[Case]:
    files = _tree(root)
    labels = {m.group(1): p for p in files if p.name.startswith("segmentation-") and _is_nifti(p)
              and (m := re.fullmatch(r"segmentation-(\d+)", _nii_stem(p)))}
    cases = [Case(f"volume-{m.group(1)}", p, labels.get(m.group(1)))
             for p in files if p.name.startswith("volume-") and _is_nifti(p)
             and (m := re.fullmatch(r"volume-(\d+)", _nii_stem(p)))]
    return sorted(cases, key=lambda c: int(c.case_id.split("-")[1]))


def _kits(root: Path) -> list[Case]:
    cases = []
    for d in sorted(root.glob("case_*")):
        if d.is_symlink() and not d.exists():  # a walkthrough: one case fewer, without a word
            raise DataError(f"{d} is a link to a missing folder {os.readlink(d)}")
        img = next((p for p in (d / "imaging.nii.gz", d / "imaging.nii") if _file(p)), None)
        if img is not None:
            seg = next((p for p in (d / "segmentation.nii.gz", d / "segmentation.nii") if _file(p)), None)
            cases.append(Case(d.name, img, seg))
    return cases


def _msd(root: Path) -> list[Case]:
    cases = []
    for p in sorted((root / "imagesTr").glob("*.nii*")):
        if _is_nifti(p):
            lab = root / "labelsTr" / p.name
            cases.append(Case(_nii_stem(p), p, lab if _file(lab) else None))
    return cases


def _nnunet_json(root: Path) -> dict:
    path = root / "dataset.json"
    ds = read_json(path, "nnU-Net dataset.json")
    if not isinstance(ds, dict):
        raise DataError(f"{path} must be a JSON object (nnU-Net v2 dataset.json)")
    for key in ("channel_names", "labels"):
        if not isinstance(ds.get(key), dict) or not ds[key]:
            raise DataError(f"{path} has no {key!r} map (nnU-Net v2 dataset.json)")
    bad = [k for k in ds["channel_names"] if not str(k).isdigit()]
    if bad:
        raise DataError(f"{path}: channel_names key {bad[0]!r} is not a channel index (\"0\", \"1\", ...)")
    return ds


def nnunet_channels(root: str | Path) -> list[str]:
    """Channel names of an nnU-Net v2 dataset, in channel order."""
    names = _nnunet_json(Path(root))["channel_names"]
    return [str(names[k]) for k in sorted(names, key=int)]


def _nnunet(root: Path) -> list[Case]:
    ds = _nnunet_json(root)
    n = len(ds["channel_names"])
    ending = str(ds.get("file_ending", ".nii.gz"))
    groups: dict[str, dict[int, Path]] = {}
    for p in sorted((root / "imagesTr").glob(f"*{ending}")):
        m = re.fullmatch(r"(.+)_(\d{4})", p.name[: -len(ending)])
        if _is_nifti(p) and m:
            groups.setdefault(m.group(1), {})[int(m.group(2))] = p
    cases = []
    for case, chans in sorted(groups.items()):
        missing = [f"{case}_{c:04d}{ending}" for c in range(n) if c not in chans]
        if missing:
            raise DataError(f"nnU-Net case {case} lacks channel file(s) {missing} in {root / 'imagesTr'} "
                            f"(dataset.json declares {n} channel(s))")
        lab = root / "labelsTr" / f"{case}{ending}"
        files = tuple(chans[c] for c in range(n))
        cases.append(Case(case, files[0], lab if _file(lab) else None, channels=files))
    return cases


def nnunet_classes(root: str | Path) -> dict[int, str]:
    """Label value -> class name from an nnU-Net v2 ``dataset.json`` (``{"name": value}``)."""
    path = Path(root) / "dataset.json"
    labels = _nnunet_json(Path(root))["labels"]
    if isinstance(labels, dict) and "ignore" in labels:  # nnU-Net v2's sparse annotation: no class to learn
        raise DataError(f"{path} \"labels\" has nnU-Net v2's \"ignore\" label ({labels['ignore']}): sparse "
                        f"annotation is not supported here (it would be trained and scored as a class, and "
                        f"target=organ would count it as organ)")
    if not isinstance(labels, dict):
        raise DataError(f"{path} \"labels\" is a {type(labels).__name__}, not a map of class name to label value")
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            raise DataError(f"{path} \"labels\" uses regions ({name}: {value}); only integer labels are supported")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            # a trust review: 1.5, "1" and true were each taken as class 1
            raise DataError(f"{path} \"labels\".{name}={value!r} is not a label value (a whole number >= 0)")
    return {v: str(k) for k, v in sorted(labels.items(), key=lambda kv: kv[1])}


def _covid_stack(root: Path, group_size: int) -> list[Case]:
    img, lab = root / "tr_im.nii.gz", root / "tr_mask.nii.gz"
    if not _file(img):
        return []
    try:
        depth = nib.load(str(img)).shape[2]  # header only, no voxel decoding
    except Exception as exc:
        raise DataError(f"cannot read NIfTI header of {img}: {exc}") from None
    return [Case(f"slice-{s:03d}", img, lab if _file(lab) else None,
                 tuple(range(s, min(s + group_size, depth)))) for s in range(0, depth, group_size)]


def msd_classes(root: str | Path) -> dict[int, str]:
    """Label value -> class name from an MSD ``dataset.json`` ``"labels"`` map."""
    path = Path(root) / "dataset.json"
    ds = read_json(path, "MSD dataset.json")
    try:
        labels = ds["labels"]
        return {int(k): str(v) for k, v in sorted(labels.items(), key=lambda kv: int(kv[0]))}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"{path} has no valid \"labels\" map ({exc})") from None


def layout_classes(root: str | Path, layout: str) -> dict[int, str]:
    """Declared classes (label value -> name) of a dataset; a ``dataset.json`` whose label values are not
    0..K-1 is one line naming it, as nnU-Net requires consecutive labels (a walkthrough: 0, 1, 3 failed
    mid-training with "mask values outside [0, 2]", naming no dataset.json)."""
    if layout not in ("nnunet", "msd"):
        return DEFAULT_CLASSES[layout]
    classes = nnunet_classes(root) if layout == "nnunet" else msd_classes(root)
    if sorted(classes) != list(range(len(classes))):
        raise DataError(f"{Path(root) / 'dataset.json'} \"labels\" has values {sorted(classes)}; they must run "
                        f"0..{len(classes) - 1} with no gap (as nnU-Net requires)")
    if len(classes) > 256:  # labels are stored and written as uint8 (a review: class 299 came back as 43)
        raise DataError(f"{Path(root) / 'dataset.json'} declares {len(classes)} classes; at most 256 are supported")
    return classes


def find_cases(root: str | Path, layout: str, stack_group_size: int = 1) -> list[Case]:
    """All cases of ``layout`` below ``root``, sorted by case id.

    Raises :class:`DataError` when root is missing, the layout unknown or no case is found.
    """
    if layout not in LAYOUTS:
        raise DataError(f"data.layout={layout!r} is not one of {list(LAYOUTS)}")
    root = Path(root)
    if not root.is_dir():
        raise missing_root(root)
    if layout == "covid_stack":
        if stack_group_size < 1:
            raise DataError(f"data.stack_group_size must be >= 1, got {stack_group_size}")
        cases = _covid_stack(root, stack_group_size)
    else:
        cases = {"lits": _lits, "kits": _kits, "msd": _msd, "nnunet": _nnunet}[layout](root)
    if not cases:
        raise DataError(f"no {layout} cases found in data.root {root}: expected {_PATTERNS[layout]}")
    seen: dict[str, Case] = {}
    for case in cases:  # a review: volume-0.nii in a/ and volume-0.nii.gz in b/ failed later naming nothing
        if case.case_id in seen:
            raise DataError(f"data.root {root}: case {case.case_id} found twice ({seen[case.case_id].image} and "
                            f"{case.image}); keep one")
        seen[case.case_id] = case
    return cases
