"""FolderSegmentationDataModule on tiny generated PNG/NPY folders and (skippable) real slices."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from data_fixtures import real_data
from PIL import Image

from datamodules.errors import DataError
from datamodules.folder2d import FolderSegmentationDataModule


def _write_png_folder(root, n_cases=4, n_slices=3, mask_suffix="", red_mask=False):
    (root / "imgs").mkdir(parents=True)
    (root / "msks").mkdir(parents=True)
    for c in range(n_cases):
        for s in range(n_slices):
            stem = f"{'flipped' if s % 2 else 'mirrored'}_{100 + c}_{s * 5}"
            grey = np.full((20, 24), 30 + 10 * c, np.uint8)
            grey[5:12, 6:14] = 220
            Image.fromarray(np.stack([grey] * 3, -1)).save(root / "imgs" / f"{stem}.png")
            m = np.zeros((20, 24), np.uint8)
            m[5:12, 6:14] = 255
            mask = np.stack([m, np.zeros_like(m), np.zeros_like(m)], -1) if red_mask else m
            Image.fromarray(mask).save(root / "msks" / f"{stem}{mask_suffix}.png")
    return root


def test_png_pairs_grouped_by_patient(tmp_path):
    root = _write_png_folder(tmp_path, mask_suffix="_mask", red_mask=True)
    dm = FolderSegmentationDataModule(str(root), image_dir="imgs", mask_dir="msks", mask_suffix="_mask",
                                      mask_channel=0, image_size=16, batch_size=4, augment=False)
    dm.setup()
    assert (dm.in_channels, dm.num_classes) == (1, 2)
    assert sorted(dm.case_ids("train") + dm.case_ids("val") + dm.case_ids("test")) == ["100", "101", "102", "103"]
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (3, 1, 16, 16) and batch["mask"].dtype == torch.int64
    assert batch["slice_index"].tolist() == [0, 5, 10] and len(set(batch["case_id"])) == 1
    assert batch["image"].max() <= 1.0 and batch["mask"].sum() > 0
    fg = batch["mask"] == 1
    assert batch["image"][:, 0][fg].mean() > batch["image"][:, 0][~fg].mean() + 0.3, "mask aligned to image"


def test_npy_pairs_label_map_and_no_pattern(tmp_path):
    for d in ("images", "masks"):
        (tmp_path / d).mkdir()
    for i in range(3):
        np.save(tmp_path / "images" / f"s{i}.npy", np.random.rand(8, 8).astype(np.float32))
        np.save(tmp_path / "masks" / f"s{i}.npy", np.tile(np.array([0, 128, 255, 0], np.uint8), (8, 2)))
    dm = FolderSegmentationDataModule(str(tmp_path), image_dir="images", mask_dir="masks", case_pattern=None,
                                      label_map={0: 0, 128: 1, 255: 2}, class_names=None, augment=False)
    dm.setup()
    assert dm.num_classes == 3 and len(dm.train_dataset) == 1
    assert set(dm.test_dataset[0]["mask"].unique().tolist()) == {0, 1, 2}
    bad = FolderSegmentationDataModule(str(tmp_path), image_dir="images", mask_dir="masks", case_pattern=None,
                                       label_map={0: 0, 128: 1}, class_names=None)
    with pytest.raises(DataError, match=r"s0\.npy.*255"):
        bad.setup()


def test_unmatched_and_missing_folders(tmp_path):
    root = _write_png_folder(tmp_path, n_cases=3)
    (root / "msks" / "flipped_100_5.png").unlink()
    dm = FolderSegmentationDataModule(str(root), image_dir="imgs", mask_dir="msks")
    with pytest.raises(DataError, match="without a matching mask.*flipped_100_5"):
        dm.setup()
    with pytest.raises(DataError, match="does not exist"):
        FolderSegmentationDataModule(str(root), image_dir="nope", mask_dir="msks").setup()


def test_two_masks_of_one_name_are_refused(tmp_path):
    """A walkthrough: predict wrote ``x.png`` beside the ground truth ``x.jpg``, and training paired each image
    with the prediction (the last extension won), exit 0 and Dice 0."""
    root = _write_png_folder(tmp_path, n_cases=3)
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(root / "msks" / "flipped_101_5.jpg")
    with pytest.raises(DataError, match=r"flipped_101_5\.jpg.*flipped_101_5\.png|flipped_101_5\.png.*flipped_101_5\.jpg"):
        FolderSegmentationDataModule(str(root), image_dir="imgs", mask_dir="msks").setup()


@pytest.mark.parametrize("values, which", [(1, "all"), (1, "one"), (0, "all")])
def test_masks_with_no_foreground_once_decoded_are_refused(tmp_path, values, which):
    """A walkthrough: 0/1 PNG masks under the default ``mask_threshold: 127`` decoded to background everywhere
    and trained to Dice 0 with exit 0; a verification: one such mask among 0/255 ones was trained on as blank."""
    root = _write_png_folder(tmp_path, n_cases=3)
    masks = sorted((root / "msks").iterdir())
    for m in masks if which == "all" else masks[:1]:
        Image.fromarray((np.asarray(Image.open(m)) > 0).astype(np.uint8) * values).save(m)
    match = "at or below data.mask_threshold=127.*data.mask_threshold=0" if values else "has any foreground once"
    with pytest.raises(DataError, match=match) as err:
        FolderSegmentationDataModule(str(root), image_dir="imgs", mask_dir="msks").setup()
    assert values or "mask_threshold" not in str(err.value)
    if values and which == "all":
        FolderSegmentationDataModule(str(root), image_dir="imgs", mask_dir="msks", mask_threshold=0).setup()


def test_shape_mismatch(tmp_path):
    root = _write_png_folder(tmp_path, n_cases=3)
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(root / "msks" / "mirrored_101_0.png")
    with pytest.raises(DataError, match=r"mirrored_101_0\.png.*mirrored_101_0\.png"):
        FolderSegmentationDataModule(str(root), image_dir="imgs", mask_dir="msks").setup()


@pytest.mark.realdata
def test_real_liver_slices_patient_level(tmp_path):
    root = real_data("liver-tumor-msd-slices")
    dm = FolderSegmentationDataModule(str(root), image_size=32, batch_size=8)
    dm.setup()
    splits = {s: set(dm.case_ids(s)) for s in ("train", "val", "test")}
    assert not (splits["train"] & splits["val"] or splits["train"] & splits["test"] or splits["val"] & splits["test"])
    assert sum(map(len, splits.values())) == 122
    for name, ds in (("val", dm.val_dataset), ("test", dm.test_dataset)):
        assert {ds.cases[c].case_id for c, _ in ds.items} == splits[name]
    vol = re.compile(r"_(\d+)_\d+$")
    files = sorted(p.stem for p in (root / "test" / "images").iterdir())
    assert {vol.search(f).group(1) for f in files} == set().union(*splits.values())
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 1, 32, 32) and set(batch["mask"].unique().tolist()) <= {0, 1}


@pytest.mark.realdata
def test_real_kits_slices_red_channel(tmp_path):
    root = real_data("kidney-tumor-kits19-slices")
    dm = FolderSegmentationDataModule(str(root), image_dir="mini_test/images", mask_dir="mini_test/masks",
                                      mask_channel=0, class_names=["background", "tumor"], image_size=32,
                                      val_fraction=0.2, test_fraction=0.2)
    dm.setup()
    masks = torch.stack([dm.train_dataset[i]["mask"] for i in range(len(dm.train_dataset))])
    assert 0.0 < masks.float().mean() < 0.2


def test_case_shards_are_disjoint_sites_and_window_rewindows(tmp_path):
    """``case_shard=[i, n]`` splits one folder into n disjoint sites of whole cases (natural order of the
    case ids); ``window=[lo, hi]`` re-windows the grey image (clip((x - lo) / (hi - lo), 0, 1))."""
    root = _write_png_folder(tmp_path, n_cases=5)
    kw = dict(image_dir="imgs", mask_dir="msks", image_size=None, augment=False, val_fraction=0.0,
              test_fraction=0.0)
    shards = []
    for i in range(2):
        dm = FolderSegmentationDataModule(str(root), case_shard=[i, 2], **kw)
        dm.setup()
        shards.append(set(dm.case_ids("train")))
    assert shards == [{"100", "102", "104"}, {"101", "103"}]
    plain = FolderSegmentationDataModule(str(root), **kw)
    windowed = FolderSegmentationDataModule(str(root), window=[-0.5, 1.0], **kw)
    for dm in (plain, windowed):
        dm.setup()
    x, y = plain.train_dataset[0]["image"], windowed.train_dataset[0]["image"]
    assert torch.allclose(y, (x + 0.5) / 1.5, atol=1e-6)
    assert torch.equal(plain.train_dataset[0]["mask"], windowed.train_dataset[0]["mask"])
    # a review: rotated-in corners and padding held 0.0, which the re-windowed site never holds (its black is
    # 1/3); they now hold the site's own black
    assert plain.fill_value() == 0.0 and windowed.fill_value() == pytest.approx(1 / 3)
    assert windowed.collate_fn(True).fill == pytest.approx(1 / 3)


def test_hu_npy_slices_pad_with_air_given_as_background(tmp_path, caplog):
    """A 2D review: ``.npy`` slices stored in HU were padded and rotated with 0 HU (water: soft tissue at the
    corners and in padded batches). ``data.background`` is the stored air: padding holds it after ``window``, and
    a folder holding values below the background it was given is warned about (where HU meets the default 0)."""
    import logging

    (tmp_path / "imgs").mkdir()
    (tmp_path / "msks").mkdir()
    for c in range(3):
        hu = np.full((16, 16), -1024.0, np.float32)
        hu[4:12, 4:12] = 60.0
        np.save(tmp_path / "imgs" / f"{c}_0.npy", hu)
        m = np.zeros((16, 16), np.uint8)
        m[4:12, 4:12] = 255
        Image.fromarray(m).save(tmp_path / "msks" / f"{c}_0.png")
    kw = dict(image_dir="imgs", mask_dir="msks", image_size=None, augment=False, val_fraction=0.0,
              test_fraction=0.0, window=[-200, 250])
    default = FolderSegmentationDataModule(str(tmp_path), **kw)
    with caplog.at_level(logging.WARNING, logger="datamodules.folder2d"):
        default.setup()
    said = [r.getMessage() for r in caplog.records if "below data.background=0" in r.getMessage()]
    assert len(said) == 1 and "-1024" in said[0] and ".npy" in said[0], said
    assert default.fill_value() == pytest.approx(200 / 450)  # 0 HU, water, in the [-200, 250] window
    caplog.clear()
    air = FolderSegmentationDataModule(str(tmp_path), background=-1024, **kw)
    with caplog.at_level(logging.WARNING, logger="datamodules.folder2d"):
        air.setup()
    assert not [r for r in caplog.records if "data.background" in r.getMessage()]
    assert air.fill_value() == 0.0 and air.collate_fn(True).fill == 0.0
    assert float(air.train_dataset[0]["image"].min()) == 0.0  # the stored air, windowed, is the fill
    # the same slices as uint16 HU + 1024, as CT is often kept: windowed in their stored units (a 2D review: they
    # were divided by 65535 first, and every image was 0)
    for c in range(3):
        hu = np.load(tmp_path / "imgs" / f"{c}_0.npy")
        np.save(tmp_path / "imgs" / f"{c}_0.npy", (hu + 1024).astype(np.uint16))
    kw["window"] = [824, 1274]
    shifted = FolderSegmentationDataModule(str(tmp_path), background=0, **kw)
    shifted.setup()
    image = shifted.train_dataset[0]["image"]
    assert float(image.max()) == pytest.approx(260 / 450) and float(image.min()) == 0.0  # 60 HU, air


def test_one_split_file_serves_every_case_shard(tmp_path):
    """A review: a split file over the whole folder made each ``case_shard`` refuse the other shards' cases as
    "not in the data"; each shard now keeps its own cases of each list, and a typo is still refused."""
    import json

    root = _write_png_folder(tmp_path, n_cases=6)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["100", "101", "102", "103"], "val": ["104"], "test": ["105"]}))
    kw = dict(image_dir="imgs", mask_dir="msks", image_size=None, augment=False, split_file=str(split))
    got = []
    for i in range(2):
        dm = FolderSegmentationDataModule(str(root), case_shard=[i, 2], **kw)
        dm.setup()
        got.append({s: dm.case_ids(s) for s in ("train", "val", "test")})
    assert got == [{"train": ["100", "102"], "val": ["104"], "test": []},
                   {"train": ["101", "103"], "val": [], "test": ["105"]}]
    split.write_text(json.dumps({"train": ["100", "101", "999"]}))
    with pytest.raises(DataError, match=r"split.json lists case\(s\) \['999'\] in 'train' that are not in the"):
        FolderSegmentationDataModule(str(root), case_shard=[0, 2], **kw).setup()


@pytest.mark.parametrize("kw, needle", [
    ({"case_shard": [2, 2]}, r"data.case_shard=\[2, 2\]"), ({"case_shard": [0]}, r"data.case_shard=\[0\]"),
    ({"window": [0.8, 0.2]}, r"data.window=\[0.8, 0.2\]"),
])
def test_bad_shard_or_window_names_the_key(tmp_path, kw, needle):
    with pytest.raises(DataError, match=needle):
        FolderSegmentationDataModule(str(tmp_path), **kw)


@pytest.mark.realdata
def test_real_liver_two_sites_config(tmp_path, monkeypatch):
    """``data=liver_slices_two_sites``: two disjoint sites of whole volumes (even / odd), site_b re-windowed
    (its images are brighter and flatter), every volume in exactly one site."""
    from engine.builders import build_datamodule
    from tests.hydra_helpers import compose_run

    root = real_data("liver-tumor-msd-slices")
    monkeypatch.setenv("FEDMED_SHARED_DATA", str(root.parent))
    cfg = compose_run(["+exp=fed_lits_dnet", "data=liver_slices_two_sites", "data.site_defaults.image_size=32"],
                      tmp_path)
    dm = build_datamodule(cfg.data)
    dm.setup()
    cases = {s: set() for s in ("site_a", "site_b")}
    for ds in (dm.train_dataset, dm.val_dataset, dm.test_dataset):
        for site, case in (c.split("/") for c in set(ds.case_ids.tolist())):
            cases[site].add(case)
    assert not cases["site_a"] & cases["site_b"] and len(cases["site_a"] | cases["site_b"]) == 122
    means = {s: [] for s in cases}
    for i in range(len(dm.train_dataset)):
        item = dm.train_dataset[i]
        means[item["case_id"].split("/")[0]].append(float(item["image"].mean()))
    assert np.mean(means["site_b"]) > np.mean(means["site_a"]) + 0.15


def test_a_folder_config_names_its_classes(tmp_path):
    """``data.class_names`` reaches the 2D folder datamodule (it was dropped with the meta keys, so
    ``data=kits_slices`` called its tumour class "liver" and no folder config could have 3 classes)."""
    from engine.builders import build_datamodule, check_datamodule
    from tests.hydra_helpers import compose_run

    for d in ("images", "masks"):
        (tmp_path / "f" / d).mkdir(parents=True)
    for i in range(5):
        np.save(tmp_path / "f" / "images" / f"s{i}.npy", np.random.rand(8, 8).astype(np.float32))
        np.save(tmp_path / "f" / "masks" / f"s{i}.npy", np.tile(np.array([0, 128, 255, 0], np.uint8), (8, 2)))
    cfg = compose_run(["data=kits_slices", f"data.root={tmp_path / 'f'}", "data.image_dir=images",
                       "data.mask_dir=masks", "data.case_pattern=null", "data.mask_threshold=null",
                       "data.mask_channel=null", "+data.label_map={0: 0, 128: 1, 255: 2}",
                       "data.class_names=[background,organ,core]", "data.num_classes=3", "data.image_size=8"],
                      tmp_path)
    dm = build_datamodule(cfg.data)
    dm.setup("fit")
    check_datamodule(dm)
    assert dm.class_names == ["background", "organ", "core"] and dm.num_classes == 3
    assert build_datamodule(compose_run(["data=kits_slices"], tmp_path / "k").data).class_names == ["background", "tumor"]


def test_train_cases_applies_with_a_test_folder_and_odd_label_values_are_refused(tmp_path):
    """Found by a review of the 2D data: ``data.train_cases`` was ignored when the test split is a folder of its
    own (a KD student's data budget trained on every case); a negative ``label_map`` key wrote the table's last
    entry (class 2 erased); a raw 16-bit label 256 decoded as 0. The first now holds, the others are one line."""
    train = _write_png_folder(tmp_path / "train", n_cases=6)
    test = _write_png_folder(tmp_path / "held_out", n_cases=2)
    for f in [*(test / "imgs").iterdir(), *(test / "msks").iterdir()]:  # cases 200, 201: not the training ones
        f.rename(f.with_name(f.name.replace("_10", "_20")))
    (train / "test_imgs").symlink_to(test / "imgs")
    (train / "test_msks").symlink_to(test / "msks")
    dm = FolderSegmentationDataModule(str(train), image_dir="imgs", mask_dir="msks", test_image_dir="test_imgs",
                                      test_mask_dir="test_msks", val_fraction=0.2, train_cases=2, image_size=16,
                                      augment=False)
    dm.setup()
    assert len(dm.case_ids("train")) == 2 and len(dm.case_ids("test")) == 2, dm.splits
    npy = tmp_path / "npy"
    for d in ("images", "masks"):
        (npy / d).mkdir(parents=True)
    np.save(npy / "images" / "s0.npy", np.random.rand(4, 4).astype(np.float32))
    np.save(npy / "masks" / "s0.npy", np.array([[-1, 0, 1, 2]] * 4, np.int16))
    neg = FolderSegmentationDataModule(str(npy), image_dir="images", mask_dir="masks", case_pattern=None,
                                       label_map={0: 0, 1: 1, 2: 2, -1: 0}, class_names=None, augment=False)
    with pytest.raises(DataError, match=r"s0\.npy: negative mask values"):
        neg.setup()
    np.save(npy / "masks" / "s0.npy", np.array([[0, 1, 256, 2]] * 4, np.int16))
    wide = FolderSegmentationDataModule(str(npy), image_dir="images", mask_dir="masks", case_pattern=None,
                                        mask_threshold=None, class_names=None, augment=False)
    with pytest.raises(DataError, match=r"s0\.npy has values in \[0, 256\]"):
        wide.setup()


def test_float_masks_are_rounded_to_labels_not_truncated(tmp_path):
    """A review: an NPY mask's ``0.99999994`` (float round-off) decoded as background and ``1.9999999`` as class 1
    (truncation toward zero); they are now the nearest label, and a value that is no label is one line."""
    from datamodules.image_files import decode_mask

    np.save(tmp_path / "m.npy", np.array([[0.0, 0.99999994, 1.9999999, 2.0]], np.float32))
    assert decode_mask(tmp_path / "m.npy", None, None, None).tolist() == [[0, 1, 2, 2]]
    assert decode_mask(tmp_path / "m.npy", None, None, {0: 0, 1: 1, 2: 1}).tolist() == [[0, 1, 1, 1]]
    assert decode_mask(tmp_path / "m.npy", 0.5, None, None).tolist() == [[0, 1, 1, 1]]  # thresholded as before
    np.save(tmp_path / "soft.npy", np.array([[0.0, 0.4, 1.0]], np.float32))
    with pytest.raises(DataError, match=r"soft\.npy has non-integer values \(e\.g\. 0\.4\)"):
        decode_mask(tmp_path / "soft.npy", None, None, None)
    assert decode_mask(tmp_path / "soft.npy", 0.5, None, None).tolist() == [[0, 0, 1]]


def test_a_case_pattern_that_misses_the_file_names_is_said(tmp_path, caplog):
    """A review: ``case000_slice000`` missed the default pattern, so each slice was its own case and one
    patient's slices went to train and test without a word. No match at all is one line; some misses a warning."""
    import logging

    for d in ("imgs", "msks"):
        (tmp_path / d).mkdir()
    m = np.zeros((8, 8), np.uint8)
    m[2:5, 2:5] = 255
    for c in range(4):
        for k in range(2):
            Image.fromarray(np.full((8, 8), 40 * c, np.uint8)).save(tmp_path / "imgs" / f"case{c:03d}_slice{k:03d}.png")
            Image.fromarray(m).save(tmp_path / "msks" / f"case{c:03d}_slice{k:03d}.png")
    kw = dict(image_dir="imgs", mask_dir="msks", augment=False, val_fraction=0.25, test_fraction=0.25)
    with pytest.raises(DataError, match=r"data.case_pattern=.* matches no file name in .*imgs \(e\.g\. 'case000_sl"):
        FolderSegmentationDataModule(str(tmp_path), **kw).setup()
    FolderSegmentationDataModule(str(tmp_path), case_pattern=None, **kw).setup()  # each image its own case: said
    dm = FolderSegmentationDataModule(str(tmp_path), case_pattern=r"^case(\d+)_slice(?P<slice>\d+)", **kw)
    dm.setup()
    assert len(dm.train_dataset) == 4  # 2 of 4 cases, 2 slices each
    for k in range(2):
        Image.fromarray(m).save(tmp_path / "imgs" / f"scan_{k}.png")
        Image.fromarray(m).save(tmp_path / "msks" / f"scan_{k}.png")
    with caplog.at_level(logging.WARNING, logger="datamodules.folder2d"):
        FolderSegmentationDataModule(str(tmp_path), case_pattern=r"^case(\d+)_slice(?P<slice>\d+)", **kw).setup()
    assert any("does not match 2 of 10 file names" in r.getMessage() and "'scan_0'" in r.getMessage()
               for r in caplog.records)


def test_images_and_masks_in_one_folder_and_a_bad_empty_slice_fraction(tmp_path):
    """A review: one folder of ``x.png`` and ``x_mask.png`` (a common Kaggle layout) failed with "``0_0_mask.png``
    without a matching mask": the masks were listed as images too. And ``train_slices=-0.25`` kept 75 %."""
    (tmp_path / "all").mkdir()
    m = np.zeros((8, 8), np.uint8)
    m[2:5, 2:5] = 255
    for c in range(3):
        Image.fromarray(np.full((8, 8), 50, np.uint8)).save(tmp_path / "all" / f"{c}_1.png")
        Image.fromarray(m).save(tmp_path / "all" / f"{c}_1_mask.png")
    dm = FolderSegmentationDataModule(str(tmp_path), image_dir="all", mask_dir="all", mask_suffix="_mask",
                                      augment=False, val_fraction=0.34, test_fraction=0.34)
    assert [stem for stem, _, _ in dm.pairs()] == ["0_1", "1_1", "2_1"]
    for c in range(3):  # the mirror layout, x_img.png beside x.png (a later review: "without a matching image")
        (tmp_path / "all" / f"{c}_1.png").rename(tmp_path / "all" / f"{c}_1_img.png")
        (tmp_path / "all" / f"{c}_1_mask.png").rename(tmp_path / "all" / f"{c}_1.png")
    mirror = FolderSegmentationDataModule(str(tmp_path), image_dir="all", mask_dir="all", image_suffix="_img",
                                          mask_suffix="", augment=False, val_fraction=0.34, test_fraction=0.34)
    assert [(stem, i.name, m.name) for stem, i, m in mirror.pairs()] == [
        (f"{c}_1", f"{c}_1_img.png", f"{c}_1.png") for c in range(3)]
    for bad in (-0.25, 1.5):
        with pytest.raises(DataError, match=rf"data.train_slices={bad}: a fraction of the empty slices"):
            FolderSegmentationDataModule(str(tmp_path), image_dir="all", mask_dir="all", train_slices=bad)


def test_colour_and_alpha_masks_are_read_as_they_are_drawn(tmp_path):
    """A 2D data review: a mask with the liver in green and the tumour in red decoded channel 0 alone (the liver
    became background, without a word); a label in the alpha channel could not be picked (RGBA was read as RGB,
    "has 3 channels"). A colour mask without data.mask_channel is one line now; alpha is channel 3."""
    from PIL import Image

    from datamodules.image_files import decode_mask

    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, :2] = (0, 255, 0)                                   # liver, green
    rgb[1, :1] = (255, 0, 0)                                   # tumour, red
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    with pytest.raises(DataError, match=r"colour.png is in colour .*data.mask_channel"):
        decode_mask(tmp_path / "colour.png", 127, None, None)
    assert decode_mask(tmp_path / "colour.png", 127, 1, None).sum() == 2      # the green channel, as chosen
    grey = np.repeat((rgb.max(-1, keepdims=True) > 0).astype(np.uint8) * 255, 3, -1)
    Image.fromarray(grey).save(tmp_path / "grey_as_rgb.png")                  # grey saved as RGB: read as before
    assert decode_mask(tmp_path / "grey_as_rgb.png", 127, None, None).sum() == 3
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[2, :3, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    assert decode_mask(tmp_path / "alpha.png", 127, 3, None).sum() == 3


def test_one_folder_with_one_suffix_for_images_and_masks_is_one_line(tmp_path):
    """A 2D review: ``image_dir == mask_dir`` with equal suffixes paired every file with itself (each image its own
    mask, every mask file an image), without a word."""
    for name in ("c_0.png", "c_0_mask.png"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / name)
    dm = FolderSegmentationDataModule(str(tmp_path), image_dir=".", mask_dir=".", image_size=None)
    with pytest.raises(DataError, match=r"one folder .* each file would be its own mask; set data.mask_suffix"):
        dm.pairs()
    assert [s for s, _, _ in FolderSegmentationDataModule(str(tmp_path), image_dir=".", mask_dir=".",
                                                          mask_suffix="_mask").pairs()] == ["c_0"]


def test_npy_images_and_masks_of_text_are_one_line(tmp_path):
    """A security review: a 2D ``.npy`` of strings was ``ValueError: could not convert string to float`` (an
    image) or a traceback in ``decode_mask`` (a mask); each is now a DataError naming the file."""
    for d in ("images", "masks"):
        (tmp_path / d).mkdir()
    np.save(tmp_path / "images" / "s0.npy", np.full((32, 32), "abc"))
    np.save(tmp_path / "masks" / "s0.npy", np.zeros((32, 32), np.uint8))
    dm = FolderSegmentationDataModule(str(tmp_path), image_dir="images", mask_dir="masks", case_pattern=None,
                                      class_names=None, augment=False)
    with pytest.raises(DataError, match=r"images/s0\.npy has dtype <U3, expected numbers"):
        dm.setup()
    from datamodules.image_files import decode_mask

    np.save(tmp_path / "masks" / "s1.npy", np.full((32, 32), "1"))
    for threshold in (None, 0.5):
        with pytest.raises(DataError, match=r"masks/s1\.npy has dtype <U1, expected numbers"):
            decode_mask(tmp_path / "masks" / "s1.npy", threshold, None, None)


@pytest.mark.parametrize("data", ["liver_slices", "kits_slices"])
def test_the_documented_folder_keys_are_in_the_shipped_configs(data, tmp_path):
    """A walkthrough: ``data=liver_slices data.test_image_dir=...`` (docs/data.md) was "Key 'test_image_dir' is not
    in struct (did you mean data.image_dir?)": only ``+data.test_image_dir=`` worked."""
    import inspect

    from datamodules.folder2d import FolderSegmentationDataModule
    from hydra_helpers import compose_run

    keys = ["test_image_dir=t/i", "test_mask_dir=t/m", "split_file=s.json", "case_shard=[0,2]", "window=[0.1,0.9]"]
    cfg = compose_run(["+exp=lits_dnet", f"data={data}", *(f"data.{k}" for k in keys)], tmp_path)
    assert [cfg.data[k.split("=")[0]] for k in keys[:3]] == ["t/i", "t/m", "s.json"]
    takes = inspect.signature(FolderSegmentationDataModule).parameters
    assert set(cfg.data) - {"_target_", "in_channels", "num_classes"} <= set(takes)
