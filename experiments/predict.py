"""Segment a NIfTI volume with a trained checkpoint; the output opens aligned in 3D Slicer / ITK-SNAP.

``python -m experiments.predict ckpt=<run>/checkpoints/best.ckpt input=volume.nii.gz output=seg.nii.gz``

Preprocessing is the training run's own (HU window, rescale, resize — read from the run's ``config.yaml``),
the prediction is resized back to the input's voxel grid and written with the input's affine and header.
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
import nibabel as nib
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.progress import Progress

from engine.builders import build_datamodule
from engine.errors import CheckpointError, find_user_error, one_line
from lightning_modules.atomic import atomic_output
from lightning_modules.checkpoints import load_checkpoint, net_state
from lightning_modules.base import build
from lightning_modules.losses.hybrid import class_probabilities


def atomic_save_nifti(img: nib.Nifti1Image, path: Path) -> None:
    with atomic_output(path, suffix="".join(path.suffixes) or ".nii.gz") as tmp:
        nib.save(img, str(tmp))


@torch.no_grad()
def predict_volume(cfg: DictConfig) -> Path:
    ckpt_path, in_path, out_path = Path(cfg.ckpt), Path(cfg.input), Path(cfg.output)
    if not in_path.is_file():
        raise FileNotFoundError(f"input {in_path} does not exist")
    ckpt = load_checkpoint(ckpt_path)
    state, net_cfg = net_state(ckpt, ckpt_path)
    if not isinstance(net_cfg, dict):
        raise CheckpointError(f"checkpoint {ckpt_path} stores no net config (not a framework segmentation checkpoint)")
    run_cfg_path = Path(cfg.run_config) if cfg.run_config else ckpt_path.resolve().parent.parent / "config.yaml"
    if not run_cfg_path.is_file():
        raise CheckpointError(f"no run config at {run_cfg_path}; pass run_config=<training run>/config.yaml")
    run_cfg = OmegaConf.load(run_cfg_path)
    net = build(net_cfg, what="net")
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {ckpt_path} does not match its net config: {one_line(err)}") from err
    net.eval()
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    net.to(device)
    dm = build_datamodule(run_cfg.data, synthetic=None)
    slices, original_shape = dm.preprocess_volume(in_path)
    threshold = ckpt["hyper_parameters"].get("fg_threshold")
    labels = []
    with Progress() as progress:
        task = progress.add_task(f"segmenting {in_path.name}", total=len(slices))
        for start in range(0, len(slices), cfg.batch_size):
            batch = slices[start : start + cfg.batch_size].to(device)
            prob = class_probabilities(net(batch).float())
            pred = (prob[:, 1] > threshold).long() if threshold is not None and prob.shape[1] == 2 else prob.argmax(1)
            labels.append(pred.cpu())
            progress.advance(task, len(batch))
    volume = dm.restore_prediction(torch.cat(labels), original_shape).astype(np.uint8)
    src = nib.load(str(in_path))
    header = src.header.copy()
    header.set_data_dtype(np.uint8)
    atomic_save_nifti(nib.Nifti1Image(volume, src.affine, header), out_path)
    print(f"wrote {out_path} {volume.shape} labels {sorted(np.unique(volume).tolist())}")
    return out_path


@hydra.main(version_base="1.3", config_path="configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    try:
        predict_volume(cfg)
    except Exception as exc:  # noqa: BLE001
        err = find_user_error(exc)
        if err is None:
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
