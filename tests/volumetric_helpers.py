"""A framework segmentation checkpoint + run config without training (seeded random D-Net), and
reoriented copies of a phantom volume: fast fixtures for the predict / orientation / spacing tests."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import torch
from nibabel import orientations as nio
from omegaconf import OmegaConf

from datamodules.synthetic import write_phantom_dataset
from engine.builders import build_module
from tests.hydra_helpers import compose_run

TINY = ["+exp=lits_dnet", "model.width=4", "data.image_size=32", "data.synthetic.n_cases=4",
        "data.synthetic.shape=[40,36,8]", "logger=csv"]


TINY_3D = ["+exp=pancreas_3d", "data.synthetic.n_cases=5", "data.synthetic.shape=[32,32,8]",
           "data.patch_size=[16,16,16]", "data.samples_per_volume=1", "logger=csv"]

#: +exp=fed_pancreas_3d on two tiny phantom sites (16^3 patches, one patch per volume)
TINY_FED_3D = ["data.patch_size=[16,16,16]", "data.site_defaults.samples_per_volume=1",
               *[f"data.sites.{s}.synthetic.{k}" for s in ("site1", "site2")
                 for k in ("n_cases=5", "shape=[32,32,8]")]]


def make_run(tmp_path: Path, overrides: list[str] = (), seed: int = 0, name: str = "run",
             base: list[str] = TINY) -> Path:
    """``<tmp>/<name>/checkpoints/best.ckpt`` + ``<tmp>/<name>/config.yaml``; returns the ckpt path."""
    cfg = compose_run([*base, *overrides], tmp_path / name)
    torch.manual_seed(seed)
    module = build_module(cfg)
    run = tmp_path / name / "run"
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    ckpt = run / "checkpoints" / "best.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, ckpt)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return ckpt


def phantom(tmp_path: Path, n_cases: int = 1, shape=(40, 36, 8)) -> Path:
    root = tmp_path / "phantom"
    write_phantom_dataset(root, layout="lits", n_cases=n_cases, shape=shape, seed=3)
    return root


def reoriented(src: Path, codes: str, dst: Path) -> Path:
    """A copy of ``src`` (stored RAS) with voxel axes in ``codes`` order; same world geometry."""
    img = nib.load(str(src))
    t = nio.ornt_transform(nio.io_orientation(img.affine), nio.axcodes2ornt(codes))
    out = img.as_reoriented(t)
    nib.save(out, str(dst))
    return dst


def to_ras(img: nib.Nifti1Image):
    return nib.as_closest_canonical(img).get_fdata().astype("uint8")
