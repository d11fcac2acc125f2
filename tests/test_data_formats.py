"""nnU-Net v2 raw layout (multi-channel), 2D folders with explicit test folders / split files, and
mixed slice sizes with image_size=null (issue 12 §6)."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from datamodules.errors import DataError
from datamodules.folder2d import FolderSegmentationDataModule
from datamodules.segmentation import VolumeSegmentationDataModule
from tests.data_fixtures import write_nifti


def _nnunet(root, n_cases=5, channels=2, shape=(24, 20, 6)):
    rng = np.random.default_rng(0)
    (root / "dataset.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {str(c): f"ch{c}" for c in range(channels)},
        "labels": {"background": 0, "liver": 1, "tumor": 2}, "numTraining": n_cases, "file_ending": ".nii.gz"}))
    for i in range(n_cases):
        lab = np.zeros(shape, np.uint8)
        lab[6:16, 5:14, 1:5] = 1
        lab[9:12, 8:11, 2:4] = 2
        for c in range(channels):
            write_nifti(root / "imagesTr" / f"case_{i:03d}_{c:04d}.nii.gz",
                        (rng.normal(0, 1, shape) + 100 * c + 50 * lab).astype(np.float32), (0.8, 0.8, 2.0))
        write_nifti(root / "labelsTr" / f"case_{i:03d}.nii.gz", lab, (0.8, 0.8, 2.0))
    return root


def test_nnunet_layout_multichannel(tmp_path):
    root = _nnunet(tmp_path / "Dataset001_Toy")
    dm = VolumeSegmentationDataModule(str(root), layout="nnunet", normalization="zscore", target="multiclass",
                                      image_size=16, batch_size=4, augment=True, val_fraction=0.2,
                                      test_fraction=0.2)
    assert dm.in_channels == 2 and dm.class_names == ["background", "liver", "tumor"]
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (2, 16, 16) and batch["mask"].shape[1:] == (16, 16)
    assert batch["spacing"].shape[1] == 3
    # per-channel z-score: both channels centred although their raw means differ by 100
    x = torch.stack([dm.test_dataset[i]["image"] for i in range(len(dm.test_dataset))])
    assert abs(float(x[:, 1].mean())) < 0.5 and set(dm.case_ids("test")) <= {f"case_{i:03d}" for i in range(5)}
    x, grid = dm.preprocess_volume([root / "imagesTr" / "case_000_0000.nii.gz", root / "imagesTr" / "case_000_0001.nii.gz"])
    assert x.shape == (6, 2, 16, 16) and grid.source_shape == (24, 20, 6)


def test_nnunet_missing_channel_and_json(tmp_path):
    root = _nnunet(tmp_path / "ds", n_cases=3)
    (root / "imagesTr" / "case_001_0001.nii.gz").unlink()
    with pytest.raises(DataError, match=r"case_001.*case_001_0001\.nii\.gz"):
        VolumeSegmentationDataModule(str(root), layout="nnunet").setup()
    (root / "dataset.json").write_text("{}")
    with pytest.raises(DataError, match="channel_names"):
        VolumeSegmentationDataModule(str(root), layout="nnunet").setup()
    # found by an audit: a channel key that is no index was a ValueError from sorted(key=int)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"zero": "CT"}, "labels": {"background": 0}}))
    with pytest.raises(DataError, match="channel_names key 'zero'"):
        VolumeSegmentationDataModule(str(root), layout="nnunet").setup()


def _png_folder(root, sizes, prefix="p"):
    from PIL import Image
    for i, (h, w) in enumerate(sizes):
        for s in range(2):
            img = np.zeros((h, w), np.uint8)
            img[h // 4: h // 2, w // 4: w // 2] = 200
            (root / "images").mkdir(parents=True, exist_ok=True)
            (root / "masks").mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / "images" / f"{prefix}{i}_{s}.png")
            Image.fromarray(img).save(root / "masks" / f"{prefix}{i}_{s}.png")


def test_folder_explicit_test_dir_split_file_and_mixed_sizes(tmp_path):
    _png_folder(tmp_path / "train", [(40, 52), (48, 48), (36, 60), (40, 40)])
    _png_folder(tmp_path / "test", [(44, 50)], prefix="t")
    kw = dict(image_dir="train/images", mask_dir="train/masks", case_pattern=r"^(\w+?)_(?P<slice>\d+)",
              image_size=None, batch_size=8, augment=False, val_fraction=0.25)
    dm = FolderSegmentationDataModule(str(tmp_path), test_image_dir="test/images", test_mask_dir="test/masks", **kw)
    dm.setup()
    assert dm.case_ids("test") == ["t0"] and len(dm.case_ids("val")) == 1 and len(dm.case_ids("train")) == 3
    batch = next(iter(dm.train_dataloader()))  # mixed sizes: padded per batch, aspect ratio kept
    assert batch["image"].shape[-2] % 32 == 0 and batch["image"].shape[-1] == 64
    assert batch["mask"].shape == batch["image"].shape[:1] + batch["image"].shape[2:]
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["p0", "p1"], "val": ["p2"], "test": ["p3"]}))
    dm = FolderSegmentationDataModule(str(tmp_path), split_file=str(split), **kw)
    dm.setup()
    assert dm.splits == {"train": ["p0", "p1"], "val": ["p2"], "test": ["p3"]}
    split.write_text(json.dumps({"train": ["p0", "nope"]}))
    with pytest.raises(DataError, match=r"split.json.*nope"):
        FolderSegmentationDataModule(str(tmp_path), split_file=str(split), **kw).setup()
    split.write_text(json.dumps({"train": ["p0"], "val": 5}))  # found by an audit: a TypeError
    with pytest.raises(DataError, match=r"split.json must map 'train'"):
        FolderSegmentationDataModule(str(tmp_path), split_file=str(split), **kw).setup()


def test_ct_normalisation_uses_training_foreground(tmp_path):
    root = _nnunet(tmp_path / "ct", n_cases=5, channels=1)
    dm = VolumeSegmentationDataModule(str(root), layout="nnunet", normalization="ct", target="multiclass",
                                      image_size=None, batch_size=4, augment=False)
    dm.setup()
    lo, hi, mean, std = dm.ct_stats
    assert lo < mean < hi and std > 0 and 45 < mean < 110  # foreground = raw + 50 or + 100 (labels 1, 2)
    # nnU-Net's CTNormalization, by hand: the foreground (label > 0) voxels of the training cases only (no
    # resampling or resizing here: the working grid holds the files' voxels, reoriented), their 0.5 / 99.5
    # percentiles, and the mean / std of those voxels clipped to them (far below the subsample cap)
    fg = []
    for case in dm.splits["train"]:
        img = np.asarray(nib.load(root / "imagesTr" / f"{case}_0000.nii.gz").dataobj, np.float64)
        lab = np.asarray(nib.load(root / "labelsTr" / f"{case}.nii.gz").dataobj)
        fg.append(img[lab > 0])
    fg = np.concatenate(fg)
    assert 0 < len(dm.splits["train"]) < 5 and fg.size == 360 * len(dm.splits["train"])
    p_lo, p_hi = np.percentile(fg, [0.5, 99.5])
    clipped = np.clip(fg, p_lo, p_hi)
    assert abs(clipped.std() - fg.std()) > 1e-4 and abs(np.percentile(fg, 90) - p_hi) > 1  # the test can tell
    assert dm.ct_stats == pytest.approx((p_lo, p_hi, clipped.mean(), clipped.std()), rel=1e-9)
    x = np.stack([np.asarray(dm.train_dataset[i]["image"]) for i in range(len(dm.train_dataset))])
    assert x.min() >= (lo - mean) / std - 1e-4 and x.max() <= (hi - mean) / std + 1e-4
    fixed = VolumeSegmentationDataModule(str(root), layout="nnunet", normalization="ct", ct_stats=[0, 100, 50, 10])
    v, _ = fixed.preprocess_volume(root / "imagesTr" / "case_000_0000.nii.gz")
    assert float(v.max()) == pytest.approx(5.0) and float(v.min()) == pytest.approx(-5.0)


def test_declared_class_names_name_the_classes_and_must_count_them(tmp_path):
    """``data.class_names`` reaches the volume datamodules (the partition table and the metrics name the classes
    alike); a list of another length than ``data.target`` gives is one line."""
    kits = dict(root=str(tmp_path), layout="kits", target="multiclass")
    assert VolumeSegmentationDataModule(**kits).class_names == ["background", "kidney", "tumor"]
    named = VolumeSegmentationDataModule(**kits, class_names=["background", "organ", "tumor"])
    assert named.class_names == ["background", "organ", "tumor"] and named.num_classes == 3
    with pytest.raises(DataError, match=r"data\.class_names=\['background', 'tumor'\] names 2 classes but "
                                        r"data\.target='multiclass' gives 3"):
        VolumeSegmentationDataModule(**kits, class_names=["background", "tumor"]).class_names
