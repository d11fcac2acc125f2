"""3D patch training (MONAI transforms), SegResNetVAE's VAE loss in the training loss, a tiny
+exp=pancreas_3d run with HD95/NSD in metrics.json, and sliding-window predict of a 3D checkpoint."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import torch
from omegaconf import OmegaConf

from engine.builders import build_datamodule, build_module
from experiments.predict import predict
from experiments.run import dispatch
from tests.hydra_helpers import compose_run
from tests.volumetric_helpers import TINY_3D, make_run, phantom


def test_patches_foreground_oversampling_and_vae_loss(tmp_path):
    cfg = compose_run(TINY_3D, tmp_path)
    dm = build_datamodule(cfg.data)
    dm.prepare_data()
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (1, 16, 16, 16) and batch["mask"].shape[1:] == (16, 16, 16)
    # pos = neg = 1: about half the patches are centred on foreground; over a few draws most hold some
    fg = [bool((dm.train_dataset[i % len(dm.train_dataset)][0]["mask"] > 0).any()) for i in range(8)]
    assert sum(fg) >= 3
    whole = dm.test_dataset[0]
    assert whole["image"].ndim == 4 and np.allclose(whole["spacing"].numpy(), 1.0, atol=0.05)  # ~1 mm grid
    # a whole volume's labels travel as uint8 (int64 was 8 of its 12 bytes a voxel) and the module widens them
    assert whole["mask"].dtype == torch.uint8 and batch["mask"].dtype == torch.int64
    module = build_module(cfg)
    sent = {"image": whole["image"][None], "mask": whole["mask"][None]}
    assert module.on_after_batch_transfer(sent, 0)["mask"].dtype == torch.int64
    module.train()
    loss = module.training_step(batch, 0)
    aux = module.net.auxiliary_losses()
    assert set(aux) == {"vae"} and torch.isfinite(aux["vae"]) and aux["vae"] > 0
    loss.backward()
    assert module.net.vae_fc1.weight.grad is not None and module.net.vae_fc1.weight.grad.abs().sum() > 0


def test_pancreas_3d_tiny_run_reports_hd95_nsd(tmp_path):
    cfg = compose_run([*TINY_3D, "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                       "trainer.limit_val_batches=1"], tmp_path)
    dispatch(cfg)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("test/dice", "test/hd95", "test/nsd", "test/hd95_organ", "test/nsd_organ"):
        assert key in saved, key
    assert saved["test/nsd"] is None or 0 <= saved["test/nsd"] <= 1
    # found by a walkthrough: 3D runs wrote no figure, and callbacks=segmentation crashed (a whole volume was
    # fed to the net without the sliding window); the overlay shows each test volume's most-foreground slice
    assert (tmp_path / "run" / "test_overlays.png").is_file() and (tmp_path / "run" / "test_roc.png").is_file()


def test_predict_3d_checkpoint_sliding_window(tmp_path):
    ckpt = make_run(tmp_path, base=TINY_3D)
    root = phantom(tmp_path, shape=(36, 30, 8))
    out = tmp_path / "seg3d.nii.gz"
    cfg = OmegaConf.create(dict(ckpt=str(ckpt), input=str(root / "volume-0.nii.gz"), output=str(out), labels=None,
                                run_config=None, batch_size=4, roi_size=None, overlap=0.25, mode="gaussian",
                                tta=[0], nsd_tolerance_mm=1.0, device="cpu"))
    predict(cfg)
    src, seg = nib.load(root / "volume-0.nii.gz"), nib.load(out)
    assert seg.shape == src.shape and np.allclose(seg.affine, src.affine)
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2}


def test_patch_sizes_a_3d_net_cannot_take_are_one_config_line():
    """Found by an audit: ``model=unet3d data.patch_size=[24,24,24]`` ended in torch's instance-norm shape
    error, ``segresnet_vae`` with 40³ in a view error; both now name data.patch_size and what fits."""
    import pytest

    from lightning_modules.errors import ConfigError
    from lightning_modules.nets.monai3d import SegResNetVAE3D, UNet3D

    with pytest.raises(ConfigError, match=r"segresnet_vae .*multiple of 16.*\[40, 40, 40\]"):
        SegResNetVAE3D(patch_size=(40, 40, 40))
    SegResNetVAE3D(patch_size=(16, 32, 48))
    with pytest.raises(ConfigError, match=r"unet3d .*\[24, 24, 24\] are too small.*data.patch_size"):
        UNet3D()(torch.zeros(1, 1, 24, 24, 24))
    assert UNet3D().eval()(torch.zeros(1, 1, 32, 16, 16)).shape == (1, 2, 32, 16, 16)


def test_sliding_window_fills_past_the_edge_with_the_volumes_lowest_value():
    """Validation/test windows past a volume's edge hold its lowest value (air after the HU rescale), as
    predict's windows and the training patches' padding do; MONAI's default 0 is mid-window tissue. The
    net here scores each voxel by its window's mean, so the fill value shows in every output voxel."""
    from lightning_modules.segmentation import SegmentationModule

    class WindowMean(torch.nn.Module):
        def forward(self, x):
            m = x.mean(dim=(1, 2, 3, 4), keepdim=True).expand_as(x)
            return torch.cat([-m, m], 1)

    module = SegmentationModule(WindowMean(), {"_target_": "lightning_modules.losses.hybrid.HybridCEDiceLoss"},
                                num_classes=2, roi_size=(8, 8, 8), overlap=0.0)
    image = torch.full((1, 1, 8, 8, 4), 0.5)
    image[..., 0] = -1.0  # the lowest value: 64 of 256 voxels
    logits = module.forward_eval(image)
    expected = (image.sum() + 256 * -1.0) / 512  # the 8x8x8 window: the volume plus 256 voxels of -1
    assert torch.allclose(logits[:, 1], torch.full_like(logits[:, 1], float(expected)), atol=1e-5)


def test_sliding_window_pads_as_training_padded_and_predict_blends_as_test_does(tmp_path):
    """Found by a review of the 3D path: z-scored volumes were padded with their minimum by the test's and
    predict's sliding windows but with 0 (``fill_value()``) by the training patches; and predict blended
    probabilities where the test blended logits (7 of 4800 voxels labelled differently). Now every whole volume
    carries the training padding as ``pad_value`` and both paths blend logits: their probabilities agree."""
    from lightning_modules.inference import VolumePredictor
    from lightning_modules.segmentation import SegmentationModule

    cfg = compose_run([*TINY_3D, "data.normalization=zscore"], tmp_path)
    dm = build_datamodule(cfg.data)
    dm.prepare_data()
    dm.setup()
    item = dm.test_dataset[0]
    assert float(item["pad_value"]) == dm.fill_value() == 0.0 and float(item["image"].min()) < -0.5
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv3d(4, 2, 5, padding=2)).eval()
    module = SegmentationModule(net, {"_target_": "lightning_modules.losses.hybrid.HybridCEDiceLoss"},
                                num_classes=2, roi_size=(8, 8, 8), overlap=0.5).eval()
    image = torch.randn(1, 1, 20, 20, 6)  # smaller than the window along the last axis: padded
    with torch.no_grad():
        tested = module.probabilities(module.forward_eval(image, torch.tensor([0.0])))
        mins = module.probabilities(module.forward_eval(image))
    predicted = VolumePredictor([net], 3, (8, 8, 8), overlap=0.5, pad_value=0.0).probabilities(image[0])
    assert torch.allclose(tested[0], predicted, atol=1e-5)
    assert not torch.allclose(tested, mins, atol=1e-3)  # the pad value reaches the net


def test_3d_patches_refuse_the_covid_stack_layout(tmp_path):
    """Found by a review: ``covid_stack`` (one stack of unrelated 2D slices) gave every 3D case, train and test,
    the whole stack: the test scored the training data."""
    import pytest

    from datamodules.errors import DataError
    from datamodules.patches3d import PatchVolumeDataModule

    with pytest.raises(DataError, match="covid_stack .* 2D"):
        PatchVolumeDataModule(str(tmp_path), layout="covid_stack", patch_size=(8, 8, 8))


def test_a_site_view_centres_foreground_patches_on_its_own_classes_only():
    """A 3D review: patch centres were drawn from the full label, so a partially annotated site that does not
    label the tumour still had patches centred on tumour voxels. Organ and tumour here lie in opposite corners,
    farther apart than a patch: a patch centred on the tumour holds no organ. Unrestricted, some foreground
    patches are tumour-centred; the site's view (``restricted_to([1])``, as ``SubsetDataModule`` builds it from
    ``PartialLabels.foreground_classes``) centres every one on the organ. Fails on the old code (no view)."""
    from datamodules.patches3d import PatchDataset
    from datamodules.slices import SliceCase
    from datamodules.subset import SubsetDataModule
    from federation.core.partial_labels import PartialLabels

    label = np.zeros((24, 24, 24), np.int64)
    label[1:5, 1:5, 1:5] = 1
    label[19:23, 19:23, 19:23] = 2
    case = SliceCase("c0", np.zeros((24, 24, 24), np.float32), label, list(range(24)), list(range(24)))
    ds = PatchDataset([case], lambda lab: lab, (8, 8, 8), samples=6, pos=1.0, neg=0.0, fill=0.0, flip=False)
    ds.set_random_state(0)

    def kinds(dataset):
        return [(bool((p["mask"] == 1).any()), bool((p["mask"] == 2).any())) for _ in range(5) for p in dataset[0]]

    full = kinds(ds)
    assert (False, True) in full and (True, False) in full          # both classes centre patches
    fn = PartialLabels([1], num_classes=3, unannotated="background")
    assert fn.foreground_classes == [1]

    class Base:
        train_dataset, val_dataset, test_dataset, num_classes = ds, None, ds, 3

    site = SubsetDataModule(Base(), [0], train_item_fn=fn)
    assert site.train_dataset.dataset.centre_classes == (1,) and ds.centre_classes is None  # the base is shared
    view = site.train_dataset.dataset
    assert all(organ and not tumour for organ, tumour in kinds(view))
    patches = site.train_dataset[0]                                  # and the site's labels are reduced as before
    assert all(not (p["mask"] == 2).any() and p["label_mask"].tolist() == [True, True, False] for p in patches)


class _ImageGuard:
    """A cached image that may be sliced but not read whole: what a training item may touch."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.shape, self.ndim = array, array.shape, array.ndim

    def __getitem__(self, index):
        return self.array[index]

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole image was read for one training item")


def test_a_training_item_reads_only_its_patches_and_centres_them_on_their_kind():
    """A performance review: every 3D training item copied its whole volume channel-first and let MONAI index
    every voxel (4.1 s and +1,649 MiB an item of a 500 x 350 x 350 volume). Now only the patches are read, and the
    centres stay MONAI's: a foreground-centred patch has a centre-class voxel at its centre, a background one
    none; a volume shorter than the patch is padded with the fill value along that axis."""
    from datamodules.patches3d import FG_KEPT, PatchDataset
    from datamodules.slices import SliceCase

    rng = np.random.default_rng(0)
    image = rng.random((20, 24, 24)).astype(np.float32)  # [D, H, W] as cached
    label = np.zeros((20, 24, 24), np.uint8)
    label[5:9, 3:7, 10:14] = 1
    label[14:16, 18:20, 2:4] = 2
    case = SliceCase("c0", _ImageGuard(image), label, list(range(20)), list(range(20)))
    for pos, neg, kind in ((1.0, 0.0, "fg"), (0.0, 1.0, "bg")):
        ds = PatchDataset([case], lambda lab: lab, (6, 6, 6), samples=4, pos=pos, neg=neg, fill=-1.0, flip=False)
        ds.set_random_state(0)
        for _ in range(5):
            for p in ds[0]:
                assert p["image"].shape == (1, 6, 6, 6) and p["mask"].shape == (6, 6, 6)
                centre = int(p["mask"][3, 3, 3])
                assert (centre > 0) == (kind == "fg"), (kind, centre)
                # the patch is the image's own voxels, and the mask the labels at the same place ([H, W, D] of a
                # [D, H, W] cache): found by its first voxel, a unique random value
                (h, w, d), = np.argwhere(np.moveaxis(image, 0, -1) == float(p["image"][0, 0, 0, 0]))
                where = np.s_[h:h + 6, w:w + 6, d:d + 6]
                assert np.array_equal(np.moveaxis(image, 0, -1)[where], p["image"][0].numpy())
                assert np.array_equal(np.moveaxis(label, 0, -1)[where], p["mask"].numpy())
    sited = PatchDataset([case], lambda lab: lab, (6, 6, 6), samples=4, pos=1.0, neg=0.0, fill=-1.0,
                         flip=False).restricted_to([2])
    sited.set_random_state(0)
    assert all(int(p["mask"][3, 3, 3]) == 2 for _ in range(5) for p in sited[0])
    assert len(sited.foreground(0)) == 8 and FG_KEPT >= 8
    import datamodules.patches3d as patches3d  # more foreground than it keeps: a sample fixed by the case id

    kept_before, patches3d.FG_KEPT = patches3d.FG_KEPT, 20
    try:
        a, b = (PatchDataset([case], lambda lab: lab, (6, 6, 6), samples=2, pos=1.0, neg=0.0, fill=-1.0,
                             flip=False).foreground(0) for _ in range(2))
    finally:
        patches3d.FG_KEPT = kept_before
    assert len(a) == 20 and np.array_equal(a, b) and bool((np.moveaxis(label, 0, -1).ravel()[a] > 0).all())
    short = SliceCase("c1", _ImageGuard(image[:4]), label[:4], list(range(4)), list(range(4)))
    ds = PatchDataset([short], lambda lab: lab, (6, 6, 6), samples=2, pos=1.0, neg=1.0, fill=-1.0, flip=False)
    ds.set_random_state(0)
    patch = ds[0][0]["image"][0]  # [H, W, D]: depth 4 padded to 6, one plane each side
    assert patch.shape == (6, 6, 6) and bool((patch[..., 0] == -1).all()) and bool((patch[..., 5] == -1).all())
    assert bool((patch[..., 1:5] >= 0).all())
