"""Synthetic abdominal CT phantoms written as real NIfTI files: the embedded default dataset.

Each case is an (H, W, D) HU volume in nibabel (x, y, z) order with a proper affine (voxel spacing
on the diagonal): air (-1000 HU) outside an elliptic body with a subcutaneous fat ring (-100 HU),
a muscle wall (40 HU), an abdomen of fat and bowel-like soft tissue, the spine (700 HU), liver
(60 HU), spleen (50 HU), pancreas (40 HU), contrast-enhanced kidneys (150 HU) and hypo-dense tumours
(liver ~20 HU, kidney ~80 HU). Organ sizes, positions and blobby outlines vary per case,
deterministically by seed. :class:`SiteParams` models per-site scanner differences (intensity
offset/scale, noise, voxel spacing) for non-IID federated sites.

The liver is large and homogeneous on purpose, so a small net learns it in a few CPU minutes.
"""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from datamodules.errors import DataError
from datamodules.phantom_anatomy import STRUCTURES, SiteParams, label_volume, make_phantom
from lightning_modules.atomic import atomic_output, file_sha256

LAYOUT_LABELS = {"lits": ("liver", "liver_tumor"), "kits": ("kidney", "kidney_tumor"),
                 "msd": ("liver", "liver_tumor")}
MANIFEST = "phantom_manifest.json"
LOCK = ".phantom.lock"
TMP_PREFIX = ".phantom-tmp-"


def _paths(root: Path, layout: str, i: int) -> tuple[Path, Path]:
    if layout == "lits":
        return root / f"volume-{i}.nii.gz", root / f"segmentation-{i}.nii.gz"
    if layout == "kits":
        return root / f"case_{i:05d}" / "imaging.nii.gz", root / f"case_{i:05d}" / "segmentation.nii.gz"
    return root / "imagesTr" / f"phantom_{i:03d}.nii.gz", root / "labelsTr" / f"phantom_{i:03d}.nii.gz"


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """An exclusive lock on ``root/.phantom.lock``: two runs generating into the same folder take turns."""
    with open(root / LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def needs_phantom(root: str | Path, has_cases: Callable[[], bool]) -> bool:
    """Whether ``root`` should get (or be checked against) a phantom: it has our manifest, or no case.

    A folder of someone's own cases (no manifest) is left alone. Cases seen without a manifest may be a
    generator's half-moved output (another run of a sweep writing right now): the lock file exists
    before the first case is moved in, so then the answer waits for that run and is decided again.
    """
    root = Path(root)
    if (root / MANIFEST).is_file() or not has_cases():
        return True
    if not (root / LOCK).exists():
        return False
    with _locked(root):
        return (root / MANIFEST).is_file() or not has_cases()


def _own_files(root: Path) -> tuple[dict | None, dict[str, str]]:
    """``(params, {relative path: sha256})`` of the phantom in ``root``, checked to be only what this
    generator wrote; raises :class:`DataError` naming the first thing that is not (a path outside
    ``root``, a file changed since, anything else in the folder)."""
    manifest = root / MANIFEST
    entries = [p for p in root.iterdir() if p.name not in (LOCK, ".cache") and not p.name.startswith(TMP_PREFIX)]
    if not manifest.is_file():
        if entries:
            raise DataError(f"synthetic: {root} holds files the phantom generator did not write "
                            f"(e.g. {entries[0].name}) and no {MANIFEST}; not writing there (use an empty data.root)")
        return None, {}
    try:
        old = json.loads(manifest.read_text())
        params, files = old["params"], old["files"]
        if isinstance(files, list):  # an older version's manifest: names without hashes (usable, not deletable)
            files = {str(n): None for n in files}
        assert isinstance(files, dict) and all(isinstance(v, (str, type(None))) for v in files.values())
    except Exception as err:  # noqa: BLE001 - unreadable: not provably ours
        raise DataError(f"synthetic: {manifest} is not a manifest this generator wrote; "
                        f"delete {root} to regenerate") from err
    real_root = root.resolve()
    for name, digest in files.items():
        path = root / name
        if (Path(name).is_absolute() or ".." in Path(name).parts or path.is_symlink()
                or not path.resolve().is_relative_to(real_root)):
            raise DataError(f"synthetic: {manifest} lists {name!r}, outside {root}; refusing to touch it")
        if path.exists() and digest is not None and file_sha256(path) != digest:
            raise DataError(f"synthetic: {path} changed since the generator wrote it; delete {root} to regenerate")
    listed = {Path(n).parts[0] for n in files} | {MANIFEST}
    foreign = [p.name for p in entries if p.name not in listed]
    if foreign:
        raise DataError(f"synthetic: {root} holds {foreign[0]!r}, which the phantom generator did not write; "
                        f"not writing there (use an empty data.root)")
    return params, files


def _remove(root: Path, files: Mapping[str, str]) -> None:
    """Delete the (checked) files of an earlier phantom and the folders they leave empty."""
    for name in files:
        (root / name).unlink(missing_ok=True)
    for name in files:
        parent = (root / name).parent
        while parent != root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent


def site_params(site: SiteParams | Mapping) -> SiteParams:
    """``data.synthetic.site`` as :class:`SiteParams`; an unknown key or a value of the wrong kind is one line."""
    if isinstance(site, SiteParams):
        return site
    known = set(SiteParams.__dataclass_fields__)
    unknown = sorted(set(site) - known)
    if unknown:
        raise DataError(f"data.synthetic.site has unknown keys {unknown}; known: {sorted(known)}")
    try:
        out = SiteParams(**{k: tuple(float(x) for x in v) if k == "spacing" else float(v) for k, v in site.items()})
    except (TypeError, ValueError) as err:
        raise DataError(f"data.synthetic.site={dict(site)!r}: {err}") from None
    if len(out.spacing) != 3 or min(out.spacing) <= 0 or out.intensity_scale <= 0 or out.noise_std < 0:
        raise DataError(f"data.synthetic.site={dict(site)!r}: spacing must be 3 positive mm values, "
                        f"intensity_scale > 0 and noise_std >= 0")
    return out


def _whole_numbers(key: str, values: Sequence, count: int) -> list[int]:
    """``data.synthetic.<key>``: ``count`` whole numbers >= 1, else one line naming the key."""
    try:
        out = [int(v) for v in values]
        whole = len(out) == count and all(not isinstance(v, bool) and o == float(v) for o, v in zip(out, values))
    except (TypeError, ValueError):
        whole = False
    if not whole or min(out) < 1:
        shown = list(values) if isinstance(values, (list, tuple)) else values
        raise DataError(f"data.synthetic.{key}={shown[0] if count == 1 else shown!r} must be "
                        f"{'a whole number' if count == 1 else f'{count} whole numbers (H, W, D)'} >= 1")
    return out


def write_phantom_dataset(root: str | Path, layout: str = "lits", n_cases: int = 8,
                          shape: Sequence[int] = (96, 96, 24), seed: int = 0,
                          site: SiteParams | dict = SiteParams(),
                          organs: Sequence[str] | None = None) -> Path:
    """Write ``n_cases`` phantoms to ``root`` in the ``lits``, ``kits`` or ``msd`` layout; returns root.

    ``organs`` (msd only) chooses the labelled structures in label order, e.g.
    ``("liver", "spleen", "pancreas", "kidney")`` for a SegViz-like multi-organ set (paper 004);
    default lits: 1 liver, 2 tumour; kits: 1 kidney, 2 tumour; msd: 1 liver, 2 tumour.
    Idempotent: the manifest (written last) records the parameters and every file's SHA-256, and a
    complete dataset with the same parameters is left untouched. It never deletes or overwrites what it
    did not write: regenerating (new parameters) first checks that the folder holds only the manifest's
    files, unchanged and inside ``root``; anything else is a :class:`DataError`. Cases are written into a
    temp folder inside ``root`` and moved into place under a lock (two runs at once take turns).
    """
    root = Path(root)
    site, shape = site_params(site), _whole_numbers("shape", shape, 3)
    n_cases = _whole_numbers("n_cases", [n_cases], 1)[0]
    if layout not in LAYOUT_LABELS:
        raise DataError(f"data.layout={layout!r} (the phantoms' layout) is not one of {list(LAYOUT_LABELS)}")
    if organs is not None and layout != "msd":
        raise DataError(f"synthetic organs={list(organs)} is only supported for layout 'msd', not {layout!r}")
    structures = tuple(organs) if organs is not None else LAYOUT_LABELS[layout]
    unknown = [s for s in structures if s not in STRUCTURES]
    if unknown or not structures:
        raise DataError(f"synthetic organs {unknown or '[]'} not in {list(STRUCTURES)}")
    params = {"layout": layout, "n_cases": int(n_cases), "shape": [int(s) for s in shape],
              "seed": int(seed), "site": {k: list(v) if isinstance(v, tuple) else v
                                          for k, v in asdict(site).items()},
              "structures": list(structures)}
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        raise DataError(f"synthetic: data.root {root} is not a plain folder; not writing there")
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root):
        old_params, old_files = _own_files(root)
        if old_params == params and all((root / f).is_file() for f in old_files):
            return root
        if any(digest is None for digest in old_files.values()):
            raise DataError(f"synthetic: {root / MANIFEST} was written by an older version (no file hashes), "
                            f"so its files cannot be proven unchanged; delete {root} to regenerate")
        with tempfile.TemporaryDirectory(dir=root, prefix=TMP_PREFIX) as tmp:
            files = _generate(Path(tmp), layout, n_cases, shape, seed, site, structures)
            _remove(root, old_files)
            (root / MANIFEST).unlink(missing_ok=True)
            for name in files:
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(Path(tmp) / name, root / name)
        with atomic_output(root / MANIFEST) as tmp:
            tmp.write_text(json.dumps({"params": params, "files": files}, indent=1))
    return root


def _generate(out: Path, layout: str, n_cases: int, shape: Sequence[int], seed: int, site: SiteParams,
              structures: Sequence[str]) -> dict[str, str]:
    """Write the cases (and ``dataset.json`` for msd) under ``out``; returns ``{relative path: sha256}``."""
    affine = np.diag([*map(float, site.spacing), 1.0])
    names = []
    for i in range(n_cases):
        vol, masks = make_phantom(shape, np.random.default_rng([seed, i]), site)
        lab = label_volume(masks, structures)
        for arr, dst in zip((np.rint(vol).astype(np.int16), lab), _paths(out, layout, i)):
            dst.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(arr, affine), str(dst))
            names.append(dst.relative_to(out).as_posix())
    if layout == "msd":
        ds = {"name": "phantom", "modality": {"0": "CT"},
              "labels": {"0": "background", **{str(i + 1): s for i, s in enumerate(structures)}},
              "numTraining": n_cases,
              "training": [{"image": f"./{names[2 * i]}", "label": f"./{names[2 * i + 1]}"}
                           for i in range(n_cases)]}
        (out / "dataset.json").write_text(json.dumps(ds, indent=1))
        names.append("dataset.json")
    return {name: file_sha256(out / name) for name in names}
