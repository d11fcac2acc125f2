"""``python -m experiments.predict`` on 2D image files with a checkpoint trained on image folders: each image
goes through the run's preprocessing (grey, window, image_size), is padded to a multiple of 32 as training
batches are, and comes back as a PNG of class indices on the file's own pixel grid."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.folder2d import FolderSegmentationDataModule
from engine.predict_cases import plan_cases
from engine.predict_images import ImageCase, plan_images, predict_image
from lightning_modules.metrics import case_scores, confusion_matrix
from tests.cli import run_in_process
from tests.volumetric_helpers import make_run


class IntensityNet:
    """A stand-in predictor whose foreground probability is the pixel's grey value: the labels it gives are
    the image thresholded at 0.5, so any shift or stretch on the way to the net and back shows."""

    spatial_dims = 2

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([1 - x, x], dim=1)


def _ellipse(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (((yy - 0.45 * h) / (0.3 * h)) ** 2 + ((xx - 0.6 * w) / (0.25 * w)) ** 2 < 1).astype(np.uint8)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.mark.parametrize("image_size, min_dice", [(None, 1.0), (32, 0.95)])
def test_labels_come_back_on_the_files_own_grid(tmp_path, image_size, min_dice):
    """``image_size=None``: padded to 64 x 96 and cropped back, exact. ``image_size=32``: 50 x 70 -> 32 x 32
    -> 50 x 70 through the probabilities, measured Dice 0.998 on this ellipse (0.95 asserted)."""
    truth = _ellipse(50, 70)
    Image.fromarray(truth * 200 + 20).save(tmp_path / "a.png")
    dm = FolderSegmentationDataModule(str(tmp_path), image_size=image_size)
    pred = predict_image(ImageCase("a", tmp_path / "a.png", tmp_path / "out.png"), dm, IntensityNet(), None)
    assert pred.shape == (50, 70) and pred.dtype == np.uint8
    assert _dice(pred.astype(bool), truth.astype(bool)) >= min_dice


def test_window_applies_before_the_net(tmp_path):
    """``data.window=[0.5, 1]`` maps grey 0.6 to 0.2: the stand-in net calls it background."""
    Image.fromarray(np.full((40, 40), 153, np.uint8)).save(tmp_path / "g.png")  # grey 0.6
    plain = FolderSegmentationDataModule(str(tmp_path), image_size=None)
    windowed = FolderSegmentationDataModule(str(tmp_path), image_size=None, window=[0.5, 1.0])
    case = ImageCase("g", tmp_path / "g.png", tmp_path / "o.png")
    assert predict_image(case, plain, IntensityNet(), None).min() == 1
    assert predict_image(case, windowed, IntensityNet(), None).max() == 0


def test_plan_pairs_masks_by_stem_and_refuses_ambiguous_names(tmp_path):
    (tmp_path / "in").mkdir(), (tmp_path / "masks").mkdir()
    for name in ("x.png", "y.jpg"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "in" / name)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "masks" / name.replace(".", "_mask."))
    cases = plan_images(tmp_path / "in", tmp_path / "out", tmp_path / "masks", mask_suffix="_mask")
    assert [(c.case_id, c.output.name, c.label.name) for c in cases] == [("x", "x.png", "x_mask.png"),
                                                                        ("y", "y.png", "y_mask.jpg")]
    np.save(tmp_path / "in" / "x.npy", np.zeros((8, 8), np.float32))
    with pytest.raises(Exception, match="several images of x"):
        plan_images(tmp_path / "in", tmp_path / "out")


def test_predictions_never_share_a_name_with_a_masks_file_and_a_folder_output_is_a_folder(tmp_path):
    """A walkthrough: predict wrote ``x.png`` beside the ground truth ``x.jpg`` (nothing overwritten, so no
    refusal), and training then paired each image with the prediction; ``output=p4.nii.gz`` for a folder input
    made a folder of that name."""
    (tmp_path / "in").mkdir(), (tmp_path / "masks").mkdir()
    for name in ("x.jpg", "y.jpg"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "in" / name)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "masks" / "y.jpg")
    with pytest.raises(Exception, match=r"holds y\.jpg, of the name of the prediction y\.png"):
        plan_images(tmp_path / "in", tmp_path / "masks")
    with pytest.raises(Exception, match=r"holds y\.jpg"):
        plan_images(tmp_path / "in" / "y.jpg", tmp_path / "masks" / "y.png")
    for name in ("p4.nii.gz", "p4.png", "p4.jpg"):
        with pytest.raises(Exception, match="must be a folder when input"):
            plan_images(tmp_path / "in", tmp_path / name)
    assert not list(tmp_path.glob("p4*"))
    assert len(plan_images(tmp_path / "in", tmp_path / "out")) == 2  # a new folder, or one of predictions only


def test_cli_segments_a_folder_of_mixed_images_and_scores_them(tmp_path):
    """A checkpoint of a run on image folders (``data=liver_slices``, image_size 32; an untrained seeded D-Net:
    the test is about the plumbing, the geometry is the test above) predicts PNG, JPG and NPY files of three
    sizes; each output is an 8-bit PNG of the input's size, and ``labels=`` scores every image."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    sizes = {"p1": (50, 70), "p2": (64, 64), "p3": (33, 41)}
    for stem, (h, w) in sizes.items():
        m = _ellipse(h, w)
        grey = (m * 180 + 30).astype(np.uint8)
        if stem == "p3":
            np.save(images / f"{stem}.npy", grey.astype(np.float32) / 255)
        else:
            Image.fromarray(grey).save(images / f"{stem}.{'png' if stem == 'p1' else 'jpg'}", quality=95)
        Image.fromarray(m * 255).save(masks / f"{stem}.png")
    ckpt = make_run(tmp_path, base=["+exp=lits_dnet", "data=liver_slices", f"data.root={tmp_path}",
                                    "data.image_size=32", "model.width=4", "logger=csv"])
    out = tmp_path / "pred"
    proc = run_in_process("experiments.predict", [f"ckpt={ckpt}", f"input={images}", f"output={out}",
                                                  f"labels={masks}", "tta=true", "device=cpu"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stem, shape in sizes.items():
        with Image.open(out / f"{stem}.png") as im:
            assert im.mode == "L" and im.size == shape[::-1]
            assert np.asarray(im).max() <= 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics["per_case"]) == sorted(sizes)
    assert {"dice_liver", "iou_liver", "rvd_liver"} <= set(metrics["per_case"]["p1"])
    # the scores are those of the written PNGs against the masks as training decodes them (> 127)
    with Image.open(out / "p2.png") as im:
        pred = torch.from_numpy(np.asarray(im).astype(np.int64))[None]
    truth = torch.from_numpy(_ellipse(64, 64).astype(np.int64))[None]
    expected = case_scores(confusion_matrix(pred, truth, 2)[0].numpy(), ["background", "liver"])
    for key, value in expected.items():
        got = metrics["per_case"]["p2"][key]
        assert (np.isnan(value) and np.isnan(got)) or got == pytest.approx(value), key
    # one file: its scores go beside its output under its own name, never over a folder's metrics.json
    one = ckpt.parent.parent / "p1_seg.png"
    proc = run_in_process("experiments.predict", [f"ckpt={ckpt}", f"input={images / 'p1.png'}", f"output={one}",
                                                  f"labels={masks}", "device=cpu"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert one.is_file() and (one.parent / "p1_seg.metrics.json").is_file()
    assert not (one.parent / "metrics.json").exists()
    # a mask of another size than its image is one line before any PNG is written (a review: five PNGs first)
    Image.fromarray(_ellipse(40, 30) * 255).save(masks / "p3.png")
    bad = tmp_path / "pred_bad"
    proc = run_in_process("experiments.predict", [f"ckpt={ckpt}", f"input={images}", f"output={bad}",
                                                  f"labels={masks}", "device=cpu"], tmp_path)
    assert proc.returncode == 2 and "is (40, 30) but image" in proc.stderr and not bad.exists(), proc.stderr[-2000:]



def test_output_never_replaces_an_input_and_image_suffix_pairs_as_in_training(tmp_path):
    """Found by an audit: ``output=`` the input folder replaced ``b.png`` with its segmentation, and
    ``data.image_suffix`` was not stripped, so ``c1_img`` looked for the mask ``c1_img_mask``."""
    (tmp_path / "in").mkdir(), (tmp_path / "lab").mkdir()
    for name in ("a.jpg", "b.png"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "in" / name)
    with pytest.raises(Exception, match="is the input folder"):
        plan_images(tmp_path / "in", tmp_path / "in")
    with pytest.raises(Exception, match="would overwrite the input"):
        plan_images(tmp_path / "in" / "b.png", tmp_path / "in" / "b.png")
    # a second audit: JPG inputs have no .png namesake, so their folder took the predictions among them
    (tmp_path / "jpg").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "jpg" / "a.jpg")
    for out, lab, name in ((tmp_path / "jpg", None, "input"), (tmp_path / "lab", tmp_path / "lab", "labels")):
        with pytest.raises(Exception, match=f"is the {name} folder"):  # a walkthrough: labels= was called "input"
            plan_images(tmp_path / "jpg", out, lab)
    (tmp_path / "vols").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.eye(4)), str(tmp_path / "vols" / "v.nii.gz"))
    with pytest.raises(Exception, match="is the input folder"):
        plan_cases(tmp_path / "vols", tmp_path / "vols")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "in" / "c1_img.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "lab" / "c1_mask.png")
    (case,) = plan_images(tmp_path / "in" / "c1_img.png", tmp_path, tmp_path / "lab", "_mask", "_img")
    assert (case.case_id, case.output.name, case.label.name) == ("c1", "c1.png", "c1_mask.png")


def test_image_files_read_as_training_reads_them(tmp_path):
    """16-bit PNGs are scaled by their bit depth (they were left at 0..65535), a [C, H, W] NPY is
    channels-first (a [1, H, W] array was read as a 1 x H image), and a palette mask's indices are its
    classes (they were read as the red channel of their colours). Found by an audit."""
    from datamodules.image_files import decode_mask, load_image

    grey = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    assert np.allclose(load_image(tmp_path / "g16.png"), grey / 65535.0, atol=1e-6)
    img = np.random.default_rng(0).random((3, 12, 20)).astype(np.float32)
    np.save(tmp_path / "chw.npy", img)
    np.save(tmp_path / "c1.npy", img[:1])
    assert load_image(tmp_path / "chw.npy").shape == (12, 20)
    assert np.allclose(load_image(tmp_path / "c1.npy"), img[0])
    labels = np.array([[0, 1], [2, 1]], np.uint8)
    pal = Image.fromarray(labels, mode="P")
    pal.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
    pal.save(tmp_path / "pal.png")
    assert np.array_equal(decode_mask(tmp_path / "pal.png", 127, None, None), labels)
