"""Prediction of NIfTI volumes with trained checkpoints: one file or a folder (nnU-Net style), ensembles,
sliding windows, mirror TTA, predictions written back on each input's own grid, per-case metrics.

Everything is checked before the first volume is read (inputs are NIfTI, labels exist, checkpoints are
segmentation checkpoints of matching classes, the output is writable), so a bad input leaves nothing
behind; each prediction is written atomically.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
import torch

from datamodules.collate import pad_as_batched
from datamodules.errors import DataError
from datamodules.nifti_checks import affine_mm
from datamodules.spatial import label_orientation, on_image_grid, voxel_spacing
from datamodules.volumes import check_labels, load_nifti
from lightning_modules.atomic import atomic_output
from lightning_modules.inference import VolumePredictor
from lightning_modules.metrics import case_scores, confusion_matrix, surface_scores, summarise
from engine.predict_models import Models, load_models  # noqa: F401 - predict loads its nets there
from engine.predict_cases import PredictCase
from engine.predict_output import PREDICT_SIGNATURE

def predict_case(case: PredictCase, dm, predictor: VolumePredictor, threshold: float | None,
                 with_probabilities: bool = False) -> tuple[nib.Nifti1Image, np.ndarray | None]:
    """Segment one case on the working grid, map the class probabilities back onto the input's own grid
    (:func:`datamodules.volumes.restore_label_map`) and take the labels there, all on predict's device; where
    that device runs out of memory, the case again with the probabilities stitched on the CPU (nnU-Net's
    fallback). ``(labels as NIfTI, float32 [K, *volume shape] probabilities or None)``."""
    x, grid = dm.preprocess_volume(case.images if len(case.images) > 1 else case.images[0])
    out = None
    try:
        out = _labels_on_source_grid(x, grid, dm, predictor, threshold, True, with_probabilities)
    except RuntimeError as err:  # torch.OutOfMemoryError, and cuDNN/cuBLAS failing to allocate its workspace
        if not is_out_of_memory(err):
            raise
        # retried below, outside the handler: its traceback would keep the failed try's tensors alive
    if out is None:
        if predictor.device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"warning: {case.case_id}: out of memory on {predictor.device}; the case again with its class "
              f"probabilities on the CPU")
        out = _labels_on_source_grid(x, grid, dm, predictor, threshold, False, with_probabilities)
    volume, prob = out if with_probabilities else (out, None)
    src = nib.load(str(case.images[0]))
    if volume.shape != src.shape and volume_shape(src.shape) == volume.shape:  # (H, W, D, 1): the input's own
        volume = volume.reshape(src.shape)
        prob = None if prob is None else prob.reshape(len(prob), *src.shape)
    header = label_header(src.header)
    header["descrip"] = PREDICT_SIGNATURE  # a rerun may overwrite it (claim_output_file)
    return nib.Nifti1Image(volume, src.affine, header), prob


def label_header(source: Any) -> Any:
    """The input's header for a label map: uint8, no display window, intent ``label`` (a review: the CT's
    ``cal_min/cal_max`` of -1000/1000 showed the 0..K labels as black in FSLeyes, and its intent code stayed)."""
    header = source.copy()
    header.set_data_dtype(np.uint8)
    if "cal_min" in header:
        header["cal_min"], header["cal_max"] = 0, 0
    if callable(getattr(header, "set_intent", None)):
        header.set_intent("label")
    return header


_ALLOC_FAILED = ("CUDNN_STATUS_ALLOC_FAILED", "CUBLAS_STATUS_ALLOC_FAILED", "CUDA error: out of memory")


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is the device running out of memory: the caching allocator's ``torch.OutOfMemoryError``,
    or a library's allocation inside a kernel (cuDNN / cuBLAS workspaces, raised as a plain RuntimeError with
    the status in its message; nnU-Net's predictor catches every RuntimeError there, which would also hide
    real bugs, so only these are matched)."""
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and any(s in str(err) for s in _ALLOC_FAILED))


def _labels_on_source_grid(x: torch.Tensor, grid, dm, predictor: VolumePredictor, threshold: float | None,
                           on_device: bool, with_probabilities: bool):
    """Labels of one preprocessed case on its source grid (and its probabilities there), the probabilities kept
    ``on_device`` or on the CPU."""
    if predictor.spatial_dims == 3:  # [K, H, W, D] -> [D, K, H, W]
        prob = predictor.probabilities(x.permute(1, 2, 3, 0), on_device).permute(3, 0, 1, 2)
    else:  # padded as training and test batches are (PadCollate), then cropped back
        h, w = x.shape[-2:]
        prob = predictor.probabilities(pad_as_batched(x, dm), on_device)[..., :h, :w]  # [D, K, h, w]
    return dm.restore_labels(prob, grid, lambda p: VolumePredictor.labels(p, threshold, class_dim=0),
                             with_probabilities)


def save_probabilities(prob: np.ndarray, class_names: Sequence[str], threshold: float | None, path: Path) -> None:
    """``<case>.npz`` beside a prediction (as nnU-Net's ``--save_probabilities``, not its format): ``probabilities``
    float32 ``[K, *the NIfTI's shape]`` in the NIfTI's own voxel order (x, y, z), ``class_names`` and
    ``fg_threshold`` (NaN when the labels are the arg-max; else, two classes, ``probabilities[1] > fg_threshold``,
    as :meth:`VolumePredictor.labels` takes them).
    Plain arrays that ``np.load(..., allow_pickle=False)`` reads (no pickle of properties: a file is data, not
    code); uncompressed, as zlib took ~30 s a CT for ~10 % (a review's measurement)."""
    with atomic_output(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, probabilities=prob.astype(np.float32, copy=False),
                 class_names=np.array([str(c) for c in class_names]),
                 fg_threshold=np.float32(np.nan if threshold is None or len(prob) != 2 else threshold))


def save_nifti(img: nib.Nifti1Image, path: Path) -> None:
    with atomic_output(path, suffix="".join(path.suffixes) or ".nii.gz") as tmp:
        nib.save(img, str(tmp))


def volume_shape(dims: Sequence[int]) -> tuple[int, ...]:
    """The 3D shape of a NIfTI of ``dims``: one time point (``(H, W, D, 1)``) is a volume, as
    :func:`datamodules.volumes.load_nifti` reads it."""
    dims = tuple(int(d) for d in dims)
    return dims[:3] if len(dims) == 4 and dims[3] == 1 else dims


def _grid(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """A NIfTI file's volume shape and affine (mm), from its header."""
    try:
        img = nib.load(str(path))
        return volume_shape(tuple(int(d) for d in img.shape)), affine_mm(img)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for a damaged file
        raise DataError(f"cannot read NIfTI file {path}: {type(exc).__name__}: {exc}") from None


def check_label_shapes(cases: Sequence[PredictCase]) -> None:
    """Every label lies on its input's voxel grid (its shape and affine, or a reorientation of them:
    :func:`~datamodules.spatial.label_orientation`), read from the headers before any case is segmented (a
    folder's bad label stopped the run after earlier cases were written, and their scores were lost)."""
    for case in cases:
        if case.label is None:
            continue
        (shape, affine), (image_shape, image_affine) = _grid(case.label), _grid(case.images[0])
        if len(shape) != 3 or len(image_shape) != 3:  # not a volume: load_nifti refuses it, naming the file
            if shape != image_shape:
                raise DataError(f"label {case.label} is {shape} but input {case.images[0]} is {image_shape}")
            continue
        label_orientation(shape, affine, image_shape, image_affine, case.label, case.images[0])


def load_case_label(case: PredictCase, dm) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A case's label on its input's voxel grid (read by its own affine), checked against the data's classes,
    as the scores read it: ``(target, the input's spacing mm)``. Read before the case's prediction is
    written, so a bad label leaves no output behind."""
    raw, affine, _ = load_nifti(case.label)
    shape, image_affine = _grid(case.images[0])
    raw = on_image_grid(raw, affine, image_affine, shape, case.label, case.images[0])
    return dm.label_fn()(check_labels(raw, dm.params.labels, case.label)), voxel_spacing(image_affine)




def score_case(pred: np.ndarray, case: PredictCase, label: tuple[np.ndarray, tuple[float, float, float]],
               class_names: Sequence[str], tolerance_mm: float) -> dict[str, float]:
    """Dice/IoU/RVD, HD95 and NSD of one prediction against its label (:func:`load_case_label`), on the
    input's grid (mm)."""
    target, spacing = label
    pred = pred.reshape(volume_shape(pred.shape))
    if target.shape != pred.shape:
        raise DataError(f"label {case.label} is {target.shape} but input {case.images[0]} is {pred.shape}")
    k = len(class_names)
    cm = confusion_matrix(torch.from_numpy(pred.astype(np.int64))[None],
                          torch.from_numpy(target.astype(np.int64))[None], k)[0].numpy()
    return {**case_scores(cm, class_names), **surface_scores(pred, target, class_names, spacing, tolerance_mm)}


def summary_of(per_case: dict[str, dict[str, float]]) -> dict[str, float]:
    return summarise(per_case) if per_case else {}
