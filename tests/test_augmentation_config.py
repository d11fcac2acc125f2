"""``data.augmentation``: a slice datamodule's 2D pipeline as albumentations ``_target_`` configs (replacing the
paper's rotation and flips), checked in one line before Hydra builds it, and allowed in configs read from files
or the network only as albumentations transform classes."""
from __future__ import annotations

import albumentations as A
import numpy as np
import torch
import pytest

from datamodules.errors import DataError
from datamodules.augmentation_checks import check_augmentation
from engine.builders import build_datamodule
from lightning_modules.errors import ConfigError
from tests.hydra_helpers import compose_run

TINY = ["+exp=lits_dnet", "data.image_size=32", "data.batch_size=4", "data.synthetic.n_cases=4",
        "data.synthetic.shape=[40,40,8]"]
BRIGHTNESS = "{_target_: albumentations.RandomBrightnessContrast, brightness_limit: [0.3, 0.3], contrast_limit: 0, p: 1}"


def _train_images(tmp_path, name, *overrides):
    import pytorch_lightning as pl

    cfg = compose_run([*TINY, *overrides], tmp_path / name)
    dm = build_datamodule(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    pl.seed_everything(0, verbose=False)
    items = [dm.train_dataset[i] for i in range(4)]
    return dm, np.stack([it["image"].numpy() for it in items]), np.stack([it["mask"].numpy() for it in items])


def test_the_configured_pipeline_replaces_the_default_and_augments_only_the_image(tmp_path):
    dm, plain, masks = _train_images(tmp_path, "none", "data.augment=false")
    aug, images, aug_masks = _train_images(tmp_path, "bright", f"data.augmentation=[{BRIGHTNESS}]")
    ops = aug.train_dataset.augment.compose.transforms
    assert [type(t) for t in ops] == [A.RandomBrightnessContrast]  # no rotation, no flips: the config's alone
    assert np.array_equal(masks, aug_masks)  # a brightness change leaves the masks as they were
    lit = plain > 0.05  # brightness + 0.3 of the maximum, clipped to [0, 1]
    assert lit.any() and np.allclose(images[lit], np.clip(plain[lit] + 0.3 * plain.max(), 0, 1), atol=0.02)
    default, _, _ = _train_images(tmp_path, "default")  # data.augmentation: null keeps the paper's pipeline
    assert [type(t) for t in default.train_dataset.augment.compose.transforms] == [A.Rotate, A.HorizontalFlip,
                                                                                   A.VerticalFlip]


@pytest.mark.parametrize("items, says", [
    ([{"_target_": "albumentations.HorizontalFlp"}], "data.augmentation[0] _target_ 'albumentations.HorizontalFlp' "
                                                      "does not resolve"),
    ([{"_target_": "albumentations.HorizontalFlip", "q": 0.5}], "data.augmentation[0] (albumentations.HorizontalFlip) "
                                                               "takes no q; it takes p"),
    ([{"_target_": "albumentations.HorizontalFlip", "p": "high"}], "data.augmentation[0] (albumentations.HorizontalFlip)"
                                                                  ": 1 validation error"),
    ([{"_target_": "os.system", "command": "true"}], "data.augmentation[0]: 'os.system' is not an albumentations"),
    ([{"_target_": "albumentations.Lambda"}], "data.augmentation[0]: 'albumentations.Lambda' is not an"),
    ([{"_target_": "albumentations.OneOf", "transforms": [{"_target_": "builtins.print"}]}],
     "data.augmentation[0].transforms[0]: 'builtins.print' is not an albumentations"),
    ({"_target_": "albumentations.HorizontalFlip"}, "must be a list of albumentations transforms"),
])
def test_a_bad_item_is_one_line_naming_it(items, says):
    with pytest.raises((DataError, ConfigError)) as err:
        check_augmentation(items)
    assert says in str(err.value) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize("pipeline, says", [
    ("[{_target_: albumentations.HorizontalFlip, q: 0.5}]", "data.augmentation[0] (albumentations.HorizontalFlip) "
                                                            "takes no q"),
    # a review: each of these passed the config check and damaged the data or failed in the first batch
    ("[{_target_: albumentations.GaussianBlur, p: 1}]", "data.augmentation clips a training slice"),
    ("[{_target_: albumentations.RandomGamma, p: 1}]", "data.augmentation makes NaN or inf values"),
    ("[{_target_: albumentations.Resize, height: 16, width: 16}]", "data.augmentation makes a training slice "
                                                                   "(32x32, values"),
    ("[{_target_: albumentations.RandomCrop, height: 64, width: 64}]", "data.augmentation fails on a training slice"),
])
def test_a_bad_pipeline_exits_2_with_one_line_before_training(tmp_path, pipeline, says):
    from tests.cli import run_in_process

    run = tmp_path / "run"
    proc = run_in_process("experiments.run", [*TINY, "model.width=4", "data.out_range=[-1,1]", f"hydra.run.dir={run}",
                                              f"paths.data_dir={tmp_path / 'data'}", f"data.augmentation={pipeline}"],
                          tmp_path)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert says in errors[0], errors[0]
    assert not (run / "metrics.json").exists() and not (run / "wandb_id.txt").exists()


def test_augment_false_says_the_pipeline_is_not_used(tmp_path, caplog):
    with caplog.at_level("WARNING"):
        dm, _, _ = _train_images(tmp_path, "off", "data.augment=false", f"data.augmentation=[{BRIGHTNESS}]")
    assert dm.train_dataset.augment is None and "data.augmentation is not used: data.augment=false" in caplog.text


def test_a_nested_transform_anywhere_is_checked_before_anything_is_built(capsys):
    """A review: ``OneOrOther``'s ``first``/``second`` were built unchecked (``Lambda`` trained; a ``_target_`` in
    an argument ran before the error)."""
    for items, says in [
        ([{"_target_": "albumentations.OneOrOther", "first": {"_target_": "albumentations.Lambda"}}],
         "data.augmentation[0].first: 'albumentations.Lambda' is not an albumentations transform"),
        ([{"_target_": "albumentations.OneOrOther", "first": {"_target_": "albumentations.HorizontalFlip", "q": 1}}],
         "data.augmentation[0].first (albumentations.HorizontalFlip) takes no q"),
        ([{"_target_": "albumentations.HorizontalFlip", "p": {"_target_": "builtins.print", "_args_": ["ran"]}}],
         "data.augmentation[0].p: 'builtins.print' is not an albumentations transform"),
        (["albumentations.HorizontalFlip"], "is a name, not a transform config: write {_target_: albumentations"),
    ]:
        with pytest.raises((DataError, ConfigError)) as err:
            check_augmentation(items)
        assert says in str(err.value), str(err.value)
    assert "ran" not in capsys.readouterr().out


def test_a_multi_site_pipeline_is_set_per_site_or_for_all(tmp_path):
    from datamodules.augmentation_checks import check_augmentations

    bad = [{"_target_": "albumentations.HorizontalFlip", "q": 1}]
    with pytest.raises(DataError, match=r"^data.site_defaults.augmentation\[0\] \(albumentations.HorizontalFlip\)"):
        check_augmentations({"sites": {"a": {}}, "site_defaults": {"augmentation": bad}})
    with pytest.raises(DataError, match="a multi-site datamodule takes its pipeline per site"):
        check_augmentations({"sites": {"a": {}}, "augmentation": [{"_target_": "albumentations.HorizontalFlip"}]})


def test_a_teachers_pipeline_is_named_as_set_before_it_trains(tmp_path):
    from engine.distill import teacher_data

    cfg = compose_run(["+exp=kits_hlfd", "+distill.teacher.data.augmentation=[{_target_: albumentations.Flip}]"],
                      tmp_path)
    with pytest.raises((DataError, ConfigError), match=r"^distill.teacher.data.augmentation\[0\] _target_ "
                                                      r"'albumentations.Flip' does not resolve"):
        teacher_data(cfg)


def test_configs_read_from_files_or_the_network_may_name_albumentations_transforms_only():
    from federation.received import check_received_target
    from lightning_modules.targets import check_data_target, check_targets

    data = {"_target_": "datamodules.segmentation.VolumeSegmentationDataModule",
            "augmentation": [{"_target_": "albumentations.OneOf", "transforms": [
                {"_target_": "albumentations.HorizontalFlip"}, {"_target_": "albumentations.Rotate", "limit": 10}]}]}
    check_targets(data, "run config data", check_data_target)
    check_targets(data, "received config", check_received_target)
    for bad in ("albumentations.Lambda", "albumentations.core.serialization.load", "albumentations.BboxParams"):
        with pytest.raises(ConfigError, match="refused"):
            check_data_target(bad, "run config data")
        with pytest.raises(ConfigError, match="refused"):
            check_received_target(bad)


def test_3d_patches_refuse_a_2d_pipeline(tmp_path):
    from datamodules.patches3d import PatchVolumeDataModule

    with pytest.raises(DataError, match="data.augmentation is a 2D slice pipeline"):
        PatchVolumeDataModule(str(tmp_path), augmentation=[A.HorizontalFlip()])


def test_a_sites_pipeline_is_checked_and_named_by_its_site(tmp_path):
    """A multi-site datamodule builds its sites itself: a site's bad item names ``data.sites.<site>``."""
    cfg = compose_run(["+exp=fed_lits_dnet",
                       "+data.sites.hospital_b.augmentation=[{_target_: albumentations.HorizontalFlip, q: 1}]"], tmp_path)
    with pytest.raises(DataError, match=r"data.sites.hospital_b.augmentation\[0\] \(albumentations.HorizontalFlip\) "
                                        r"takes no q"):
        build_datamodule(cfg.data).prepare_data()


def test_classification_data_takes_the_same_key(tmp_path):
    """MedMNIST (and the image-folder datamodule) take ``data.augmentation`` as the slice data does: one compose
    for the training images only, tried on one before training."""
    from datamodules.medmnist import MedMNISTDataModule
    from tests.test_cls_data import write_npz

    write_npz(tmp_path, "breastmnist.npz")
    flip = [A.HorizontalFlip(p=1.0)]
    dm = MedMNISTDataModule(root=str(tmp_path), flag="breastmnist", batch_size=4, augmentation=flip)
    dm.setup("fit")
    plain = MedMNISTDataModule(root=str(tmp_path), flag="breastmnist", batch_size=4)
    plain.setup("fit")
    assert torch.equal(dm.train_dataset[0]["image"], plain.train_dataset[0]["image"].flip(-1))
    assert torch.equal(dm.val_dataset[0]["image"], plain.val_dataset[0]["image"])  # training images only
    for ops, says in (([A.RandomCrop(height=64, width=64)], r"fails on a training image \(28x28x1\)"),
                      ([A.ToRGB(p=1.0)], r"makes a training image \(28x28x1\) 28x28x3: the net takes 1 channel")):
        bad = MedMNISTDataModule(root=str(tmp_path), flag="breastmnist", augmentation=ops)
        with pytest.raises(DataError, match=says):
            bad.setup("fit")
    # drawn on the image as training hands it over (a review: as_rgb's grey-to-RGB came after the check)
    grey = MedMNISTDataModule(root=str(tmp_path), flag="breastmnist", as_rgb=True,
                              augmentation=[A.ToGray(num_output_channels=1, p=1.0)])
    with pytest.raises(DataError, match=r"makes a training image \(28x28x3\) 28x28(x1)?: the net takes 3 channel"):
        grey.setup("fit")
