"""nnU-Net CT normalisation (issue 12 §3): the training set's foreground statistics travel in the checkpoint
(the datamodule's state_dict, plain floats, read with weights_only=True), so predict on new volumes
normalises exactly as training did, even once the training data is gone."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from engine.builders import build_datamodule
from experiments.predict import predict
from experiments.run import dispatch
from engine.predict import load_models
from tests.hydra_helpers import compose_run
from tests.volumetric_helpers import TINY


def test_predict_reuses_the_checkpoints_ct_statistics(tmp_path):
    cfg = compose_run([*TINY, "data.normalization=ct", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
                       "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"], tmp_path)
    dispatch(cfg)
    (tmp_path / "run" / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))  # as experiments.run does
    ckpt_path = tmp_path / "run" / "checkpoints" / "best.ckpt"
    train_dm = build_datamodule(cfg.data)
    train_dm.setup()
    stats = train_dm.ct_stats
    assert stats is not None and stats[2] != 0.0
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert ckpt["VolumeSegmentationDataModule"]["ct_stats"] == list(stats)
    case = train_dm.splits["train"][0]
    trained = next(c for c in train_dm.load_cases() if c.case_id == case)
    expected = np.asarray(trained.image)                     # [D, H, W] as training normalised it
    volume = tmp_path / "new" / "volume-0.nii.gz"           # the same scan, seen as new data
    volume.parent.mkdir()
    src = next(p for p in train_dm.root.iterdir() if p.name.startswith(f"volume-{case.split('-')[-1]}."))
    shutil.copy(src, volume)
    shutil.rmtree(train_dm.root)                            # the training data is gone: only the checkpoint knows

    models = load_models([ckpt_path])
    assert models.data_overrides() == {"ct_stats": list(stats)}
    dm = build_datamodule(models.run_cfg.data, synthetic=None, **models.data_overrides())
    x, _ = dm.preprocess_volume(volume)
    assert np.allclose(x[:, 0].numpy(), expected, atol=1e-5)
    out = tmp_path / "seg.nii.gz"
    predict(OmegaConf.create(dict(ckpt=str(ckpt_path), input=str(volume), output=str(out), labels=None,
                                  run_config=None, batch_size=4, roi_size=None, overlap=0.25, mode="gaussian",
                                  tta=None, nsd_tolerance_mm=1.0, device="cpu")))
    assert out.is_file()


def test_a_test_only_run_on_another_site_normalises_with_the_checkpoints_statistics(tmp_path, capsys):
    """A review: ``train=false ckpt_path=...`` on another site's data recomputed the CT statistics from that site's
    cases (predict used the checkpoint's), so a cross-site test and predict normalised differently."""
    short = ["trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
             "trainer.limit_test_batches=1", "data.normalization=ct"]
    dispatch(compose_run([*TINY, *short], tmp_path / "a"))
    best = tmp_path / "a" / "run" / "checkpoints" / "best.ckpt"
    stats = torch.load(best, map_location="cpu", weights_only=True)["VolumeSegmentationDataModule"]["ct_stats"]
    other = compose_run([*TINY, *short, "data.synthetic.seed=7", "train=false", f"ckpt_path={best}"], tmp_path / "b")
    site_b = build_datamodule(other.data)
    site_b.setup()
    assert site_b.ct_stats != pytest.approx(stats)  # the other site's own statistics differ
    capsys.readouterr()
    metrics = dispatch(other)
    assert "test/dice" in metrics
    out = capsys.readouterr().out
    assert "CT normalisation from" not in out, out  # nothing recomputed: the checkpoint's statistics were taken


@pytest.mark.parametrize("stats", [["x", "y"], [0, 1, 2], [0, 1, float("nan"), 1], 5, [True, 1, 2, 3]])
def test_a_crafted_data_state_is_one_line_before_lightning_restores_it(tmp_path, stats):
    """Found by a security audit: ``ct_stats: ["x", "y"]`` in a resumed checkpoint was a ValueError traceback
    from inside Lightning's restore; the resume check (and the datamodule itself) name the key instead."""
    from datamodules.errors import DataError
    from datamodules.segmentation import VolumeSegmentationDataModule
    from engine.checkpoint_checks import check_trainer_state
    from lightning_modules.errors import CheckpointError

    ckpt = {"pytorch-lightning_version": "2.6.0", "epoch": 1, "state_dict": {},
            "VolumeSegmentationDataModule": {"ct_stats": stats}}
    with pytest.raises(CheckpointError, match=r"c\.ckpt: VolumeSegmentationDataModule\.ct_stats=.* is not \[lo, hi"):
        check_trainer_state(ckpt, tmp_path / "c.ckpt")
    with pytest.raises(DataError, match="ct_stats=.* is not"):
        VolumeSegmentationDataModule(str(tmp_path), normalization="ct").load_state_dict({"ct_stats": stats})


def test_padding_under_ct_normalisation_is_air_not_tissue(tmp_path):
    """Found by a review: padding and rotated corners were filled with ``out_range[0]`` = 0, which nnU-Net's CT
    normalisation maps to the foreground mean (liver-like, labelled background), while predict's sliding
    window pads with the volume's lowest value. Air is the clipped lower bound ``(lo - mean) / std``."""
    dm = build_datamodule(compose_run([*TINY, "data.normalization=ct"], tmp_path).data)
    dm.setup()
    # the statistics themselves (nnU-Net's CTNormalization): the training cases' foreground (label > 0) voxels in
    # raw HU on the working grid the slices are cached on, their 0.5 / 99.5 percentiles, mean / std once clipped
    cases = {c.case_id: c for c in dm.load_cases()}
    fg = np.concatenate([np.asarray(cases[k].image.raw, np.float64)[np.asarray(cases[k].label) > 0]
                         for k in dm.splits["train"]])
    assert 0 < len(dm.splits["train"]) < len(cases) and 0 < fg.size < 1_000_000  # no subsample
    lo, hi = np.percentile(fg, [0.5, 99.5])
    clipped = np.clip(fg, lo, hi)
    assert dm.ct_stats == pytest.approx((lo, hi, clipped.mean(), clipped.std()), rel=1e-9)
    lowest = min(float(np.asarray(c.image).min()) for c in dm.load_cases())
    assert dm.fill_value() == pytest.approx(lowest, abs=1e-5) and dm.fill_value() < -1.0
    window = build_datamodule(compose_run(TINY, tmp_path / "window").data)
    assert window.fill_value() == window.out_range[0]


def test_a_covid_stacks_ct_statistics_come_from_its_training_slices_only(tmp_path):
    """A review: each COVID-stack case holds the whole stack, so the CT statistics were computed over every
    slice, validation and test included (foreground mean 450 where the training slices' is 433)."""
    import nibabel as nib
    import numpy as np

    from datamodules.segmentation import VolumeSegmentationDataModule

    depth = 10
    img = np.full((32, 32, depth), -1000, np.float32)
    lab = np.zeros((32, 32, depth), np.uint8)
    for z in range(depth):
        img[8:20, 8:20, z], lab[8:20, 8:20, z] = 100 * z, 1  # each slice's foreground has its own HU
    nib.save(nib.Nifti1Image(img, np.eye(4)), tmp_path / "tr_im.nii.gz")
    nib.save(nib.Nifti1Image(lab, np.eye(4)), tmp_path / "tr_mask.nii.gz")
    dm = VolumeSegmentationDataModule(str(tmp_path), layout="covid_stack", normalization="ct", val_fraction=0.2,
                                      test_fraction=0.2, cache_dir=str(tmp_path / "cache"), augment=False)
    dm.setup()
    train = [int(c.split("-")[1]) for c in dm.splits["train"]]
    assert len(train) < depth and dm.ct_stats[2] == pytest.approx(np.mean([100 * z for z in train]), abs=1.0)
