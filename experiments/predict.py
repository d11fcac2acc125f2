"""Segment NIfTI volumes (or 2D image files) with trained checkpoints; outputs open aligned in 3D Slicer /
ITK-SNAP.

``python -m experiments.predict ckpt=<run>/checkpoints/best.ckpt input=volume.nii.gz output=seg.nii.gz``
``python -m experiments.predict ckpt=[a.ckpt,b.ckpt] input=<dir> output=<dir> labels=<dir> tta=true``

Preprocessing is the training run's own (orientation, spacing, HU window, resize -- read from the run's
``config.yaml``; the CT normalisation statistics of ``data.normalization=ct`` from the checkpoint); predictions are mapped back onto each input's own voxel grid and written with its
affine and header. A checkpoint trained on 2D image files (``data=folder2d``...) takes ``.png``/``.jpg``/``.npy``
files and writes PNGs of class indices on each file's own pixel grid (:mod:`engine.predict_images`). The work is
in :mod:`engine.predict` and :mod:`engine.predict_images`; this is the command line only.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, ListConfig
from rich.progress import Progress

from engine.artifacts import print_case_table, write_json
from engine.builders import build_datamodule
from engine.errors import ConfigError, one_line
from experiments.config_help import exit_with_help_if_asked
from experiments.hydra_checks import run_cli, user_command
from engine.predict import (check_label_shapes, load_case_label, load_models, predict_case, save_nifti,
                            save_probabilities, score_case, summary_of)
from engine.predict_cases import check_case_channels, net_in_channels, plan_cases
from engine.predict_images import (check_image_label_sizes, is_image, plan_images, predict_image, save_png,
                                   score_image)
from engine.predict_output import (check_writable, claim_output_file, claim_output_folder, is_nifti,
                                   mark_output_folder, remove_if_left_empty, stale_beside)
from datamodules.errors import DataError
from lightning_modules import targets
from lightning_modules.inference import VolumePredictor
from lightning_modules.kinds import is_whole



def run_setting(given: Any, trained: Any, key: str, default: float) -> float:
    """A predict setting: the command's, else the run's ``module.<key>`` (its hparams), else ``default``. Reviews:
    a run trained with ``module.overlap=0`` was predicted at 0.5 (``0 or 0.5``), and one tested at
    ``nsd_tolerance_mm=2`` was scored at predict's own 1 mm."""
    if given is not None:
        return float(given)
    return default if trained.get(key) is None else float(trained[key])


def tta_axes(tta: Any, dims: int) -> tuple[int, ...]:
    """``tta``: ``true`` (flip every spatial axis), ``false``/``null`` (none) or a list of spatial axes."""
    if tta is True:
        return tuple(range(dims))
    if tta in (None, False):
        return ()
    axes = list(tta) if isinstance(tta, (list, tuple, ListConfig)) else None
    if axes is None or not all(is_whole(a) and 0 <= a < dims for a in axes) \
            or len(set(axes)) != len(axes):  # a walkthrough: [0, 0] was a torch traceback
        raise ConfigError(f"tta={tta!r} must be true, false or a list of distinct spatial axes in 0..{dims - 1} "
                          f"(the checkpoint's net is {dims}D)")
    return tuple(axes)


def check_numbers(cfg: DictConfig) -> None:
    """``batch_size`` a whole number >= 1 and ``nsd_tolerance_mm`` a number >= 0, before anything loads (a
    walkthrough: 0 and -3 were tracebacks, and a negative tolerance reported NSD 0)."""
    bs = cfg.get("batch_size")
    if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
        raise ConfigError(f"batch_size={bs!r} must be a whole number >= 1 (windows per forward pass)")
    tol = cfg.get("nsd_tolerance_mm")
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0):
        raise ConfigError(f"nsd_tolerance_mm={tol!r} must be a number of millimetres >= 0")


def _device(name: str) -> torch.device:
    """``device``: ``auto`` (CUDA when there is one), ``cpu``, ``cuda`` or ``cuda:N`` of a GPU this machine has."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(str(name))
    except (RuntimeError, ValueError):
        raise ConfigError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device={name!r} but this machine has {torch.cuda.device_count()} CUDA GPU(s); "
                          f"use device=auto or device=cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={name!r}: predict runs on cpu or cuda")
    return device


def _site_weights(path: Path, state: dict, run_cfg: Any, run_dir: Path, site: str | None,
                  filled: list[Path] | None = None) -> dict:
    """A federation's global weights with the entries its clients kept (FedBN's BN layers) filled in from
    the client store of the run whose config built them; ``path`` is added to ``filled`` when any were."""
    from federation.deploy import deployed_state

    state, what = deployed_state(path, run_dir, run_cfg, state, site)
    if what:
        print(f"{path.name}: {what}")
        if filled is not None:
            filled.append(path)
    return state


def _warn_if_debug(weights: Path) -> None:
    """One line when the weights come from a ``fast_dev_run`` (its run's ``metrics.json`` says ``debug``): they
    saw a batch or so, and segment as an untrained net would."""
    from engine.run_files import run_json

    for run in (weights.resolve().parent, weights.resolve().parent.parent):
        # bounded, no link (a review: a handed-over run whose metrics.json linked to /dev/zero filled the memory)
        metrics = run_json(run / "metrics.json", root=run)
        if not isinstance(metrics, dict):
            continue
        if metrics.get("debug") is True:
            print(f"warning: {weights} is from a debug run (trainer.fast_dev_run, {run / 'metrics.json'}): "
                  f"its net saw a batch or so")
        return


def _bare(name: str) -> str:
    """An output file name without its extension (``seg.nii.gz`` -> ``seg``, ``a.b.png`` -> ``a.b``)."""
    return re.sub(r"\.(nii\.gz|nii|png)$", "", name, flags=re.IGNORECASE)


def _is_image_input(src: Path) -> bool:
    """``input`` names 2D image files (a .png/.jpg/.npy file, or a folder holding some and no NIfTI)."""
    if src.is_file():
        return is_image(src)
    return src.is_dir() and any(is_image(p) for p in src.iterdir()) and not any(is_nifti(p) for p in src.iterdir())


def predict(cfg: DictConfig) -> dict:
    targets.allow(cfg.get("allow_targets"))  # a review: predict.yaml offered the key and nothing applied it
    ckpts = list(cfg.ckpt) if isinstance(cfg.ckpt, (list, ListConfig)) else [cfg.ckpt]
    if not ckpts:
        raise ConfigError("ckpt=[] names no checkpoint")
    src = Path(str(cfg.input))
    if not src.exists():
        raise DataError(f"input {src} does not exist")
    images = _is_image_input(src)
    keep_prob = cfg.get("save_probabilities", False)
    if not isinstance(keep_prob, bool):
        raise ConfigError(f"save_probabilities={keep_prob!r} must be true or false")
    if not isinstance(cfg.get("overwrite", False), bool):
        raise ConfigError(f"overwrite={cfg.get('overwrite')!r} must be true or false")
    check_numbers(cfg)
    if images and keep_prob:
        raise ConfigError(f"save_probabilities=true writes volumes' class probabilities; input={src} holds 2D image "
                          f"files")
    cases = None if images else plan_cases(cfg.input, cfg.output, cfg.labels)
    site = None if cfg.get("site") is None else str(cfg.site)
    # whose kept entries (FedBN) fill the global weights: a site is its own client (partition=by_site); a
    # federation over pooled data has clients client_0.. and one data set, so it is named apart from the site;
    # client=mean takes the clients' mean also where site= chooses the preprocessing
    given = None if cfg.get("client") is None else str(cfg.client)
    client = site if given is None else (None if given == "mean" else given)
    filled: list[Path] = []
    models = load_models(ckpts, cfg.run_config, site, fill_weights=lambda path, state, run_cfg, run_dir: _site_weights(
        path, state, run_cfg, run_dir, client, filled))
    if given is not None and not filled:
        print(f"warning: client={given} is not used: no checkpoint is a federation's global weights whose clients "
              f"keep entries of their own (FedBN)")
    for path in models.paths:
        _warn_if_debug(path)
    dims = models.spatial_dims
    # the test step's own window unless the command sets one (a review: a run trained with module.overlap=0.25
    # or a roi_size other than its patch size was tested with one window and predicted with another)
    trained = models.hparams
    roi = cfg.roi_size or ((trained.get("roi_size") or models.run_cfg.data.get("patch_size")) if dims == 3 else None)
    overlap = run_setting(cfg.get("overlap"), trained, "overlap", 0.5)
    axes = tta_axes(cfg.tta, dims)
    try:
        predictor = VolumePredictor(models.nets, dims, roi, overlap, cfg.mode, axes, cfg.batch_size,
                                    _device(cfg.device))
    except ValueError as err:
        raise ConfigError(f"predict settings: {err}") from None
    for net in models.nets if predictor.roi_size else ():  # a window the net cannot take: one line, nothing read
        getattr(net, "check_roi_size", lambda size: None)(predictor.roi_size)
    for net in models.nets:
        net.to(predictor.device)
    data_kind = str(models.run_cfg.data.get("_target_", "")).rsplit(".", 1)[-1]
    no_phantoms = {"synthetic": None} if "synthetic" in models.run_cfg.data else {}  # never write phantoms here
    try:
        dm = build_datamodule(models.run_cfg.data, **no_phantoms, **models.data_overrides())
    except InstantiationException as err:  # a value the run's config.yaml holds (a trust review: image_size "abc"
        cause = err.__cause__ or err  # was Hydra's multi-line error naming neither file nor key)
        raise ConfigError(f"the run's config.yaml data ({data_kind}) does not build: {one_line(cause)[:200]}") \
            from None
    if callable(getattr(dm, "fill_value", None)):  # windows past the edge padded as training padded
        predictor.pad_value = float(dm.fill_value())
    _check_input_kind(images, dm, src, ckpts[0], data_kind)
    if images:
        data = models.run_cfg.data
        cases = plan_images(cfg.input, cfg.output, cfg.labels, str(data.get("mask_suffix") or ""),
                            str(data.get("image_suffix") or ""))
    if not images:
        check_case_channels(cases, net_in_channels(models.nets[0]))
        check_label_shapes(cases)  # before any folder is made (a walkthrough: a bad labels= left an empty output/)
    else:
        check_image_label_sizes(cases)
    folders, created = _claim_outputs(cases, src, keep_prob, cfg.get("overwrite") is True)
    class_names = models.hparams.get("class_names") or dm.class_names
    threshold = models.hparams.get("fg_threshold")
    out = cases[0].output
    scores_file = "metrics.json" if src.is_dir() else f"{_bare(out.name)}.metrics.json"
    stale_beside(out, scores_file)  # an earlier predict's scores: not of what this one writes
    try:
        tolerance = run_setting(cfg.get("nsd_tolerance_mm"), models.hparams, "nsd_tolerance_mm", 1.0)
        per_case = _segment(cases, images, dm, predictor, threshold, keep_prob, class_names, tolerance,
                            marked=folders if src.is_dir() else [])
    except BaseException:
        remove_if_left_empty(created)
        raise
    print(f"wrote {len(cases)} prediction(s): {out if len(cases) == 1 else out.parent}")
    if per_case:
        summary = summary_of(per_case)
        print_case_table(per_case, summary, "per-case metrics" if not images else "per-image metrics")
        # a folder's scores go in it; one file's beside it under its own name, never over a run's metrics.json
        where = out.with_name(scores_file)
        write_json(where, {"summary": summary, "per_case": per_case, "checkpoints": [str(c) for c in ckpts]})
        print(f"scores: {where}")
        return summary
    return {}


def _check_input_kind(images: bool, dm: Any, src: Path, ckpt: Any, data_kind: str) -> None:
    """2D image files for a net trained on image files, NIfTI volumes for one trained on volumes: one line else."""
    if images and not callable(getattr(dm, "preprocess_image", None)):
        raise ConfigError(f"input={src} holds 2D image files, but checkpoint {ckpt} was trained on {data_kind} "
                          f"(volumes): give it NIfTI volumes (.nii/.nii.gz)")
    if not images and not callable(getattr(dm, "preprocess_volume", None)):
        raise ConfigError(f"input={src} holds NIfTI volumes, but checkpoint {ckpt} was trained on {data_kind} "
                          f"(2D image files): give it image files (.png/.jpg/.npy), or a checkpoint trained on "
                          f"volumes (data=lits, kits, msd, nnunet...)")


def _claim_outputs(cases: list, src: Path, keep_prob: bool, overwrite: bool) -> tuple[list[Path], list[Path]]:
    """Check and claim the output folders (or the one output file) before anything is written; returns the folders
    and those this call creates (removed again if a failure leaves them empty)."""
    folders = sorted({c.output.parent for c in cases})
    created = [f for f in folders if not f.exists()]
    for folder in folders:
        check_writable(folder)
    if src.is_dir():
        outputs = [c.output for c in cases] + ([c.output.with_name(f"{_bare(c.output.name)}.npz") for c in cases]
                                               if keep_prob else [])
        for folder in folders:  # each folder its outputs go to (a reread: the first one only was checked)
            claim_output_folder(folder, [o for o in outputs if o.parent == folder], overwrite)
    else:
        claim_output_file(cases[0].output, overwrite)
    return folders, created


def _segment(cases, images: bool, dm, predictor: VolumePredictor, threshold, keep_prob: bool, class_names,
             tolerance_mm: float, marked: list[Path]) -> dict[str, dict]:
    """Segment (and score) every case, writing its outputs; ``marked``: folders marked as predict's once the
    first output is written there (:func:`engine.predict_output.mark_output_folder`)."""
    per_case = {}
    with Progress() as progress:
        task = progress.add_task(f"segmenting {len(cases)} {'image' if images else 'volume'}(s)", total=len(cases))
        for case in cases:
            if images:
                pred = predict_image(case, dm, predictor, threshold)
                scores = score_image(pred, case, dm, class_names) if case.label is not None else None  # before writing
                marked = _mark(marked)
                save_png(pred, case.output)
                if scores is not None:
                    per_case[case.case_id] = scores
            else:
                label = load_case_label(case, dm) if case.label is not None else None  # before anything is written
                img, prob = predict_case(case, dm, predictor, threshold, keep_prob)
                scores = score_case(np.asarray(img.dataobj), case, label, class_names, tolerance_mm) \
                    if label is not None else None
                marked = _mark(marked)
                save_nifti(img, case.output)
                if prob is None:
                    stale_beside(case.output, f"{_bare(case.output.name)}.npz")
                else:
                    save_probabilities(prob, class_names, threshold,
                                       case.output.with_name(f"{_bare(case.output.name)}.npz"))
                if scores is not None:
                    per_case[case.case_id] = scores
            progress.advance(task)
    return per_case


def _mark(folders: list[Path]) -> list[Path]:
    """Mark ``folders`` as predict's (before their first output); what is left to mark: nothing."""
    for folder in folders:
        mark_output_folder(folder)
    return []


@hydra.main(version_base="1.3", config_path="configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    user_command(predict, cfg, "predict")


if __name__ == "__main__":
    exit_with_help_if_asked("predict")  # its keys with their comments, not Hydra's list of training groups
    run_cli(main)
