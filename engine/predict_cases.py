"""Which volumes a predict reads and where each prediction goes (nnU-Net style): one NIfTI file or a folder of
them (``<case>_0000.nii.gz`` channels grouped into one case, or a LiTS/KiTS training layout), each case's label
(``labels=``), and the checks that the cases fit the net's input channels, before any volume is read."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from datamodules.errors import DataError
from datamodules.layouts import find_cases
from lightning_modules.errors import ConfigError
from engine.predict_output import is_nifti, nifti_stem, refuse_input_folder, refuse_overwrite

_CHANNEL = re.compile(r"^(.+)_(\d{4})$")


@dataclass
class PredictCase:
    """One volume to segment: its channel file(s), where the prediction goes, its label (optional)."""

    case_id: str
    images: list[Path]
    output: Path
    label: Path | None = None


def _label_names(case_id: str, first: Path) -> list[str]:
    """Where a case's label may be: ``<case>.nii[.gz]``, the layouts' own names (LiTS ``volume-N`` ->
    ``segmentation-N``, KiTS ``imaging`` -> ``segmentation``), then the image's own file name (a labels folder
    mirroring the images folder)."""
    stem = nifti_stem(first)
    layout = re.sub(r"^volume-", "segmentation-", stem) if stem.startswith("volume-") else \
        ("segmentation" if stem == "imaging" else None)
    names = [f"{case_id}.nii.gz", f"{case_id}.nii"]
    if layout is not None:
        names += [f"{layout}.nii.gz", f"{layout}.nii"]
    return [*names, first.name]


def _label_for(case_id: str, first: Path, labels: Path) -> Path:
    for name in _label_names(case_id, first):
        path = labels / name
        # a review: the input's own folder given as labels= found the CT itself and scored it as a label
        if path.is_file() and not (first.is_file() and path.resolve() == first.resolve()):
            return path
    raise DataError(f"no label for case {case_id} in labels={labels} (expected {case_id}.nii.gz)")


def single_case_id(src: Path) -> str:
    """A single file's case: KiTS ``case_00002/imaging.nii.gz`` -> ``case_00002``; nnU-Net's first channel
    ``liver_001_0000.nii.gz`` -> ``liver_001`` (as a folder of them names it); else the file's stem."""
    stem = nifti_stem(src)
    if stem == "imaging":
        return src.parent.name
    m = _CHANNEL.match(stem)
    return m.group(1) if m is not None and m.group(2) == "0000" else stem


def plan_cases(input: str | Path, output: str | Path, labels: str | Path | None = None) -> list[PredictCase]:
    """The cases of ``input`` (a NIfTI file, or a folder of them: nnU-Net ``<case>_0000.nii.gz``
    channel files are grouped per case) and their output paths (``output/<case>.nii.gz`` for a folder)."""
    src, out = Path(input), Path(output)
    lab = None if labels in (None, "") else Path(labels)
    if not src.exists():
        raise DataError(f"input {src} does not exist")
    if lab is not None and not lab.exists():
        raise DataError(f"labels {lab} does not exist")
    if src.is_file():
        if not is_nifti(src):
            # a walkthrough: a TIFF given to a checkpoint trained on PNGs was "not a NIfTI file"
            raise DataError(f"input {src} is neither a NIfTI volume (.nii/.nii.gz) nor a 2D image file "
                            f"(.png/.jpg/.jpeg/.npy): convert a TIFF or DICOM to one of them first")
        case_id = single_case_id(src)
        # named by its case (a review: two KiTS cases' imaging.nii.gz both wrote output/imaging.nii.gz)
        target = out / f"{case_id}.nii.gz" if out.is_dir() else out
        if not is_nifti(target):
            raise ConfigError(f"output={out} must end in .nii.gz or .nii (or be an existing folder)")
        label = None if lab is None else (lab if lab.is_file() else _label_for(case_id, src, lab))
        refuse_overwrite([target], [p for p in (src, label) if p is not None])
        return [PredictCase(case_id, [src], target, label)]
    layout = _training_layout(src)
    if layout is not None:  # a folder in a layout the framework trains on: its images, its labels if asked
        return _layout_plan(src, out, lab, layout)
    files = sorted(p for p in src.iterdir() if p.is_file() and is_nifti(p))
    if not files:
        others = sorted(p.name for p in src.iterdir())[:3]
        raise DataError(f"input folder {src} holds no NIfTI volume (.nii/.nii.gz) nor 2D image (.png/.jpg/.npy)"
                        f"{'; found ' + ', '.join(others) if others else ' (it is empty)'}")
    if is_nifti(out) or out.is_file():
        raise ConfigError(f"output={out} must be a folder when input={src} is a folder")
    groups = _channel_groups(files)
    if lab is not None and not lab.is_dir():
        raise ConfigError(f"labels={lab} must be a folder when input={src} is a folder")
    refuse_input_folder(out, [src, lab])
    cases = [PredictCase(c, ps, out / f"{c}.nii.gz", None if lab is None else _label_for(c, ps[0], lab))
             for c, ps in sorted(groups.items())]
    refuse_overwrite([c.output for c in cases], [p for c in cases for p in (*c.images, c.label) if p is not None])
    return cases


def _channel_groups(files: Sequence[Path]) -> dict[str, list[Path]]:
    """``{case: channel files}``: nnU-Net's ``<case>_0000``, ``<case>_0001``, ... when every file is named so
    and each case's channels run 0000..C-1; else one case per file. A walkthrough: ``scan_0001`` and
    ``scan_0002``, two patients, were stacked as the two channels of one case ``scan``."""
    stems: dict[str, list[str]] = {}
    for p in files:
        stems.setdefault(nifti_stem(p), []).append(p.name)
    twice = next((names for names in stems.values() if len(names) > 1), None)
    if twice:  # a review: a.nii and a.nii.gz, two volumes, were one case and one of them was never segmented
        raise DataError(f"input folder {files[0].parent} holds several volumes of one case: {', '.join(twice)}; "
                        f"keep one")
    groups: dict[str, list[tuple[int, Path]]] = {}
    for p in files:
        m = _CHANNEL.match(nifti_stem(p))
        if m is None:
            return {nifti_stem(f): [f] for f in files}
        groups.setdefault(m.group(1), []).append((int(m.group(2)), p))
    if any(sorted(i for i, _ in chans) != list(range(len(chans))) for chans in groups.values()):
        return {nifti_stem(f): [f] for f in files}
    return {case: [p for _, p in sorted(chans)] for case, chans in groups.items()}


def net_in_channels(net: torch.nn.Module) -> int | None:
    """The input channels of a segmentation net: its first convolution's (None when it has none)."""
    first = next((m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))), None)
    return None if first is None else int(first.in_channels)


def check_case_channels(cases: Sequence[PredictCase], channels: int | None) -> None:
    """Each case gives the net its ``channels`` input channels (one file each), before anything is segmented
    (a walkthrough: a 1-channel folder given to a 2-channel checkpoint was a conv traceback after loading)."""
    if channels is None:
        return
    for case in cases:
        if len(case.images) != channels:
            names = ", ".join(p.name for p in case.images[:3])
            raise DataError(f"the checkpoint takes {channels} input channel(s) per case but case {case.case_id} has "
                            f"{len(case.images)} file(s) ({names}); a case's channels are the files "
                            f"<case>_0000, <case>_0001, ... (nnU-Net naming) in one input folder")


def _training_layout(src: Path) -> str | None:
    """``lits`` (``volume-N`` beside ``segmentation-N``) or ``kits`` (``case_*/imaging.nii.gz``) when the folder
    is in that layout: its label files are then not taken for images (a walkthrough saw LiTS masks segmented)."""
    for layout in ("lits", "kits"):
        if layout == "lits" and not any(p.name.startswith("segmentation-") for p in src.iterdir()):
            continue
        try:
            if find_cases(src, layout):
                return layout
        except DataError:
            continue
    return None


def _layout_plan(src: Path, out: Path, lab: Path | None, layout: str) -> list[PredictCase]:
    """The cases of a ``lits``/``kits`` folder; ``labels=`` the same folder scores each against its own label."""
    if is_nifti(out) or out.is_file():
        raise ConfigError(f"output={out} must be a folder when input={src} is a folder")
    if lab is not None and not lab.is_dir():
        raise ConfigError(f"labels={lab} must be a folder when input={src} is a folder")
    own = lab is not None and lab.resolve() == src.resolve()
    cases = []
    for case in find_cases(src, layout):
        if own and case.label is None:
            raise DataError(f"no label for case {case.case_id} in labels={lab} ({layout} layout)")
        label = case.label if own else (None if lab is None else _label_for(case.case_id, case.image, lab))
        cases.append(PredictCase(case.case_id, [case.image], out / f"{case.case_id}.nii.gz", label))
    refuse_input_folder(out, [src, lab])
    refuse_overwrite([c.output for c in cases], [p for c in cases for p in (*c.images, c.label) if p is not None])
    return cases
