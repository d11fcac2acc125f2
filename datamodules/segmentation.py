"""Segmentation from NIfTI volumes: :class:`VolumeSegmentationDataModule` (axial slices for 2D nets; the
base of :class:`datamodules.patches3d.PatchVolumeDataModule` for 3D) reads the NIfTI layouts of
:mod:`datamodules.layouts` through the cached pipeline of :mod:`datamodules.volumes`, generating the
synthetic phantom first when asked to (the embedded default). The slice dataset, splits and loaders it
shares with 2D folders are in :mod:`datamodules.slices`.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from collections.abc import Sequence as AbcSequence
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from datamodules.errors import DataError
from datamodules.intensity import CTNormalised, checked_ct_stats, foreground_stats
from datamodules.layouts import find_cases, layout_classes, nnunet_channels
from datamodules.progress import log_progress
from datamodules.slices import TARGETS, SliceCase, SliceDataModule, SliceDataset, TargetMap
from datamodules.spatial import GridMeta, target_spacing
from datamodules.synthetic import needs_phantom, site_params, write_phantom_dataset
from datamodules.volume_cache import VolumeCache, default_cache_dir
from datamodules.volumes import (PreprocessParams, load_on_grid, preprocess_image,
                                 restore_label_map, restore_label_volume, restore_probability_volume)

#: the slice core lives in :mod:`datamodules.slices`; these names stay importable from here
__all__ = ["VolumeSegmentationDataModule", "TARGETS", "SliceCase", "SliceDataModule", "SliceDataset", "TargetMap"]

log = logging.getLogger("datamodules.segmentation")


def _plain(v: Any) -> Any:
    """OmegaConf containers -> plain dicts/tuples (keeps this module free of an OmegaConf import)."""
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, AbcSequence) and not isinstance(v, str):
        return tuple(_plain(x) for x in v)
    return v


def checked_source_classes(value: Any, what: str) -> dict[int, str]:
    """Label value -> class name, as a checkpoint or config carries it: a :class:`DataError` naming ``what`` for
    anything else (a checkpoint from elsewhere is data)."""
    try:
        out = {int(k): str(v) for k, v in dict(value).items()}
    except (TypeError, ValueError):
        raise DataError(f"{what} must map label values to class names, got {str(value)[:200]}") from None
    if not out or not all(0 <= k < 256 for k in out) or 0 not in out:
        raise DataError(f"{what}={out}: label values in [0, 255], background 0 included")
    return out



def _own_slices(array, case) -> np.ndarray:
    """``array`` (a case's image or label, slices along axis 0) restricted to the case's own slices: a COVID
    stack's cases share one stack, and its other cases' slices (validation, test) are no training data (a
    review: CT statistics were computed over the whole stack)."""
    positions = list(case.positions)
    if len(positions) == np.shape(array)[0] and positions == list(range(len(positions))):
        return array
    return np.asarray(array)[positions]

class VolumeSegmentationDataModule(SliceDataModule):
    """Axial-slice segmentation from NIfTI volumes (layouts ``lits``, ``kits``, ``msd``, ``covid_stack``).

    ``window``/``out_range``: HU window and output range (liver -40..160 from paper 001; use
    -200..300 for kidney, and -200..250 -> [-1, 1] for pancreas, paper 003). ``cache_dir`` defaults to
    ``<root>/.cache``. ``synthetic``: None, or keyword arguments of
    :func:`datamodules.synthetic.write_phantom_dataset`; then, when ``root`` holds no case (or holds
    a phantom written earlier), the phantom is generated there first -- the embedded default.
    ``stack_group_size``: consecutive slices per case for ``covid_stack``.
    ``orientation``: axis codes every volume is reoriented to at load (RAS: the last axis is axial
    whatever the file's axis order; ``null`` keeps the stored order; ``covid_stack`` always keeps it, its
    cases are slice indices). ``spacing``: target voxel size in mm (``[1, 1, 1]`` for paper 003) or
    ``null`` for the native grid. ``normalization``: ``window`` (HU window, CT) or ``zscore`` (per image
    and channel, MRI) or ``ct`` (nnU-Net: clip to the training foreground's 0.5/99.5 percentiles, z-score
    with its mean/std; ``ct_stats=[lo, hi, mean, std]`` fixes them, else they are computed from the
    training split). Predictions are mapped back onto each input's own grid (:meth:`restore_prediction`).
    ``class_names``: the classes' names (``data.class_names``), checked against the count ``target`` gives.
    """

    def __init__(self, root: str, layout: str = "lits", window: Sequence[float] = (-40.0, 160.0),
                 out_range: Sequence[float] = (0.0, 1.0), target: str = "organ",
                 image_size: int | None = None, val_fraction: float = 0.2, test_fraction: float = 0.2,
                 seed: int = 0, batch_size: int = 16, num_workers: int = 0, cache_dir: str | None = None,
                 augment: bool = True, rotation_limit: float = 15.0, train_slices: str | float = 0.25,
                 synthetic: Mapping[str, Any] | None = None, stack_group_size: int = 1,
                 orientation: str | None = "RAS", spacing: Sequence[float] | None = None,
                 normalization: str = "window", ct_stats: Sequence[float] | None = None, train_cases: int | None = None,
                 class_names: Sequence[str] | None = None, source_classes: Mapping[Any, str] | None = None,
                 augmentation: Sequence[Any] | None = None) -> None:
        super().__init__(val_fraction, test_fraction, seed, batch_size, num_workers, augment,
                         rotation_limit, train_slices, train_cases, augmentation)
        self.root, self.layout, self.target = Path(root), layout, target
        self.window = tuple(float(v) for v in window)
        self.out_range = tuple(float(v) for v in out_range)
        self.image_size = None if image_size is None else int(image_size)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.root / ".cache"
        self.synthetic = None if synthetic is None else _plain(synthetic)
        self.stack_group_size = stack_group_size
        self.target_map = TargetMap(target)
        self.cache: VolumeCache | None = None
        self.orientation = None if layout == "covid_stack" else orientation
        self.spacing = None if spacing is None else target_spacing(spacing)  # checked before anything is read
        self.normalization = normalization
        # checked here, as data.spacing (data.ct_stats=5 was a TypeError traceback); Hydra passes a ListConfig
        stats = list(ct_stats) if isinstance(ct_stats, AbcSequence) and not isinstance(ct_stats, str) else ct_stats
        self.ct_stats = checked_ct_stats(stats, "data.ct_stats")
        self.declared_names = None if class_names is None else [str(n) for n in class_names]
        self.source_classes = None if not source_classes else checked_source_classes(source_classes, "data.source_classes")

    def prepare_data(self) -> None:
        self._ensure_data()

    def _ensure_data(self) -> None:
        """Generate the synthetic phantom into root when configured and root has no case."""
        if self.synthetic is None:
            return
        kw = dict(self.synthetic)
        if kw.setdefault("layout", self.layout) != self.layout:
            raise DataError(f"data.synthetic.layout={kw['layout']!r} differs from data.layout={self.layout!r}")
        if needs_phantom(self.root, self._has_cases):
            unknown = sorted(set(kw) - {"layout", "n_cases", "shape", "seed", "site", "organs"})
            if unknown:
                raise DataError(f"data.synthetic has unknown keys {unknown}; known: layout, n_cases, shape, "
                                f"seed, site, organs")
            if isinstance(kw.get("site"), Mapping):
                kw["site"] = site_params(kw["site"])
            write_phantom_dataset(self.root, **kw)

    def _has_cases(self) -> bool:
        try:
            return bool(find_cases(self.root, self.layout, self.stack_group_size))
        except DataError:
            return False

    @property
    def in_channels(self) -> int:
        """Input channels: one per nnU-Net channel file, else 1."""
        if self.layout != "nnunet":
            return 1
        self._ensure_data()
        return len(nnunet_channels(self.root))

    @property
    def classes(self) -> dict[int, str]:
        """Declared label values -> names of the source data (before ``target`` mapping); an msd / nnU-Net run's
        are kept in its checkpoints (``source_classes``), so predict needs no ``dataset.json`` of the training data
        (a review: predict failed at the first case once the training folder was gone)."""
        if self.source_classes is not None:
            return dict(self.source_classes)
        if self.layout in ("msd", "nnunet"):
            self._ensure_data()
        return layout_classes(self.root, self.layout)

    @property
    def class_names(self) -> list[str]:
        """``data.class_names`` when given (what the metrics are named by: a pancreas phantom in the kits layout
        is organ/tumor, not kidney/tumor), else the layout's names of the classes ``target`` selects."""
        found = self._layout_names()
        if self.declared_names is not None and len(self.declared_names) != len(found):
            raise DataError(f"data.class_names={self.declared_names} names {len(self.declared_names)} classes but "
                            f"data.target={self.target!r} gives {len(found)} ({found})")
        if self.declared_names is not None:
            self._check_order(found)
        return list(self.declared_names) if self.declared_names is not None else found

    def _check_order(self, found: list[str]) -> None:
        """A declared name the data gives another class is refused (:func:`check_name_order`)."""
        source = self.root / "dataset.json" if self.layout in ("msd", "nnunet") else f"the {self.layout} layout"
        check_name_order(self.declared_names, found, self.classes.values(), f"{source} (data.target={self.target!r})")

    def _layout_names(self) -> list[str]:
        names = self.classes
        if self.target == "multiclass":
            return [names[k] for k in sorted(names)]
        if self.target == "tumor":
            if 2 not in names:
                raise DataError(f"data.target='tumor' needs label 2, but {self.root} declares {names}")
            return ["background", names[2]]
        return ["background", names[1] if len(names) <= 3 else "foreground"]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def params(self) -> PreprocessParams:
        return PreprocessParams(self.window, self.out_range, self.image_size, tuple(sorted(self.classes)),
                                self.orientation, self.spacing, self.normalization)

    def label_fn(self) -> TargetMap:
        return self.target_map

    def fill_value(self) -> float:
        """What air becomes after normalisation, for padding, rotated corners and the sliding windows of test
        and predict (whole volumes carry it as ``pad_value``): the window's low end, or for ``ct`` the clipped lower bound
        ``(lo - mean) / std`` (0 there is the foreground mean: a review found padding that looked like liver
        labelled background). ``zscore`` has no fixed air value (it is per image): 0, its mean, as nnU-Net pads."""
        if self.normalization == "ct" and self.ct_stats is not None:
            lo, _, mean, std = self.ct_stats
            return (lo - mean) / std
        if self.normalization == "zscore":
            return 0.0
        return self.out_range[0]

    def load_cases(self) -> list[SliceCase]:
        self._ensure_data()
        cases = find_cases(self.root, self.layout, self.stack_group_size)
        unlabelled = [c for c in cases if c.label is None]
        if unlabelled:  # never silently train on fewer volumes than the folder holds
            raise DataError(f"volume {unlabelled[0].image} has no label file ({len(unlabelled)} of {len(cases)} "
                            f"cases unlabelled); add the labels or move those volumes out of data.root {self.root}")
        if not cases:
            raise DataError(f"data.root {self.root} has {self.layout} images but no label files")
        if self.cache_dir == self.root / ".cache":
            default_cache_dir(self.root)
        self.cache = VolumeCache(self.cache_dir, self.params)
        out = []
        cache = self.cache
        for c in log_progress(cases, len(cases), f"volumes (cache {self.cache_dir})", log,
                              lambda: f"{cache.decode_count} decoded, the rest from the cache"):
            name = c.case_id if c.slices is None else c.image.name.split(".")[0]
            vol = self.cache.load(c.images, c.label, name)
            positions = list(c.slices) if c.slices is not None else list(range(vol.image.shape[0]))
            if positions[-1] >= vol.image.shape[0]:
                raise DataError(f"case {c.case_id} asks for slice {positions[-1]} of {c.image} "
                                f"which has {vol.image.shape[0]} slices")
            # covid_stack's slices are unrelated images: scored slice by slice in 2D, never stacked (a review: a
            # one-slice case stacked as a volume was all surface: squares 4 px apart, NSD 0.90 / HD95 3 mm, in 2D 0.48 / 4 mm)
            out.append(SliceCase(c.case_id, vol.image, vol.label, positions, positions, vol.slice_spacing(),
                                 stacks=c.slices is None))
        if self.normalization == "ct":
            out = self._ct_normalised(out)
        return out

    def _ct_normalised(self, cases: list[SliceCase]) -> list[SliceCase]:
        multi = next((c for c in cases if np.asarray(c.image[0]).ndim > 2), None)
        if multi is not None:  # [D, C, H, W]: one HU clip and z-score for every channel is no CT normalisation
            raise DataError(f"data.normalization=ct takes one CT channel; case {multi.case_id} has "
                            f"{np.asarray(multi.image[0]).shape[0]} (a review: it crashed on the mask); use "
                            f"zscore (per case) or window")
        if self.ct_stats is None:
            train = set(self.make_splits(sorted(c.case_id for c in cases))["train"])
            chosen = [c for c in cases if c.case_id in train]
            self.ct_stats = foreground_stats([_own_slices(c.image, c) for c in chosen],
                                             [_own_slices(c.label, c) for c in chosen], seed=self.seed)
            print(f"CT normalisation from {len(chosen)} training case(s): data.ct_stats="
                  f"[{', '.join(f'{v:.4g}' for v in self.ct_stats)}]")
        for c in cases:
            c.image = CTNormalised(c.image, self.ct_stats)
        return cases

    def state_dict(self) -> dict[str, Any]:
        """What every checkpoint keeps of the data (Lightning stores it under the class name): with
        ``normalization=ct`` the training foreground statistics as plain floats, so that predict on new
        volumes normalises them exactly as training did (:meth:`preprocess_volume`)."""
        out: dict[str, Any] = {}
        if self.normalization == "ct" and self.ct_stats is not None:
            out["ct_stats"] = [float(v) for v in self.ct_stats]
        if self.layout in ("msd", "nnunet"):  # the dataset.json's label values: predict reads no training folder
            out["source_classes"] = {str(k): str(v) for k, v in self.classes.items()}
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take a checkpoint's CT statistics and source classes unless this datamodule already has its own."""
        if state.get("ct_stats") is not None and self.ct_stats is None:
            self.ct_stats = checked_ct_stats(state["ct_stats"], "the checkpoint's datamodule state ct_stats")
        if state.get("source_classes") and self.source_classes is None:
            self.source_classes = checked_source_classes(state["source_classes"], "the checkpoint's source_classes")

    def preprocess_volume(self, path: str | Path | Sequence[Path]) -> tuple[torch.Tensor, GridMeta]:
        """A NIfTI (or one file per channel) through the same pipeline as training:
        ``(float32 [D, C, H, W] slices on the working grid, grid)``. Use :meth:`restore_probabilities`
        (what ``experiments.predict`` does) or :meth:`restore_prediction` (labels) to map a prediction back
        to the source voxel grid."""
        x, _, grid = load_on_grid(path, self.params)
        slices = preprocess_image(x, self.params)
        if self.normalization == "ct":
            if self.ct_stats is None:
                if not self._has_cases():
                    raise DataError("data.normalization=ct needs data.ct_stats=[lo, hi, mean, std] (printed by the "
                                    "training run and stored in its checkpoints) or the training data at "
                                    f"data.root={self.root}")
                self.load_cases()
            slices = np.asarray(CTNormalised(slices, self.ct_stats))
        slices = torch.from_numpy(slices)
        return (slices[:, None] if slices.ndim == 3 else slices), grid

    @staticmethod
    def restore_probabilities(prob: np.ndarray | torch.Tensor, grid: GridMeta | Sequence[int]) -> np.ndarray:
        """Class probabilities ``[D, K, h, w]`` on the working grid -> float32 ``[K, ...]`` on the source grid."""
        return restore_probability_volume(prob, grid)

    @staticmethod
    def restore_labels(prob: torch.Tensor, grid: GridMeta | Sequence[int],
                       to_labels: Callable[[torch.Tensor], torch.Tensor],
                       with_probabilities: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Class probabilities ``[D, K, h, w]`` -> uint8 labels on the source grid, resampled and taken on
        ``prob``'s device (:func:`datamodules.volumes.restore_label_map`; ``with_probabilities``: and those)."""
        return restore_label_map(prob, grid, to_labels, with_probabilities)

    @staticmethod
    def restore_prediction(pred: np.ndarray | torch.Tensor, grid: GridMeta | Sequence[int]) -> np.ndarray:
        """Predicted labels ``[D, h, w]`` on the working grid -> uint8 volume on the source NIfTI's grid."""
        pred = pred.cpu().numpy() if isinstance(pred, torch.Tensor) else pred
        return restore_label_volume(pred, grid)


def check_name_order(declared: Sequence[str], found: Sequence[str], labels: Iterable[str], source: str) -> None:
    """A declared class name (``data.class_names``) the data gives another class, or a label the target does not
    select, is one :class:`DataError`: a walkthrough's ``[background, tumour, liver]`` on a ``dataset.json`` of
    liver 1, tumour 2 logged each class's Dice under the other's name, and ``[background, liver]`` with
    ``target=tumor`` the tumour's as liver. A name the data does not use (a phantom's ``organ``) is a rename."""
    where = {n.casefold(): i for i, n in enumerate(found)}
    known = {str(n).casefold() for n in labels}
    for i, name in enumerate(declared):
        j = where.get(name.casefold())
        if j == i or (j is None and name.casefold() not in known):
            continue
        said = f"names class {j}" if j is not None else "names a label this target does not select"
        raise DataError(f"data.class_names={list(declared)} names class {i} {name!r}, which {source} {said} "
                        f"(the data gives {list(found)}): leave data.class_names=null to use those names, or list "
                        f"them in that order")
