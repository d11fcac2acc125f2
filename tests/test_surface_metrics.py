"""surface_scores (HD95, NSD from one symmetric distance query per class) against MONAI's own
compute_hausdorff_distance(percentile=95) and compute_surface_dice, and its empty-class conventions."""
import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_hausdorff_distance, compute_surface_dice

from lightning_modules.metrics import surface_scores


def monai_reference(pred, target, class_names, spacing, tolerance_mm):
    """The per-class HD95 / NSD of MONAI's two functions (the implementation surface_scores replaced)."""
    spacing = [float(s) for s in spacing][-pred.ndim:]
    out = {}
    for c, name in enumerate(class_names[1:], start=1):
        p, t = pred == c, target == c
        if not (p.any() and t.any()):
            continue
        onehot_p = torch.from_numpy(np.stack([~p, p]))[None].float()
        onehot_t = torch.from_numpy(np.stack([~t, t]))[None].float()
        out[f"hd95_{name}"] = float(compute_hausdorff_distance(onehot_p, onehot_t, percentile=95, spacing=spacing)[0, 0])
        out[f"nsd_{name}"] = float(compute_surface_dice(onehot_p, onehot_t, [tolerance_mm], spacing=spacing)[0, 0])
    return out


def blobs(rng, shape, num_classes):
    """A label map of a few random boxes per class with label noise, so boundaries are irregular."""
    lab = np.zeros(shape, dtype=np.int64)
    for c in range(1, num_classes):
        for _ in range(2):
            lo = [rng.integers(0, n // 2) for n in shape]
            hi = [lo_ + rng.integers(2, n // 2 + 1) for lo_, n in zip(lo, shape)]
            lab[tuple(slice(a, b) for a, b in zip(lo, hi))] = c
    noise = rng.random(shape) < 0.08
    lab[noise] = rng.integers(0, num_classes, size=int(noise.sum()))
    return lab


CASES = [  # (shape, spacing, number of classes incl. background, tolerance in mm)
    ((40, 36), (1.0, 1.0), 2, 1.0),
    ((33, 47), (0.7, 1.9), 3, 1.5),
    ((20, 18, 12), (1.0, 1.0, 1.0), 2, 1.0),
    ((24, 20, 10), (0.8, 0.8, 2.5), 3, 2.0),
    ((16, 22, 9), (1.0, 1.0, 3.0), 4, 1.0),  # a spacing of another length is refused (below)
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape,spacing,num_classes,tol", CASES)
def test_surface_scores_match_monai(seed, shape, spacing, num_classes, tol):
    rng = np.random.default_rng(seed)
    pred, target = blobs(rng, shape, num_classes), blobs(rng, shape, num_classes)
    names = ["background"] + [f"c{c}" for c in range(1, num_classes)]
    got, ref = surface_scores(pred, target, names, spacing, tol), monai_reference(pred, target, names, spacing, tol)
    assert ref, "every case must have at least one class present in both"
    for key, val in ref.items():
        assert got[key] == pytest.approx(val, rel=1e-5, abs=1e-5), key
    assert got["hd95"] == pytest.approx(np.mean([v for k, v in ref.items() if k.startswith("hd95_")]), rel=1e-5)
    assert got["nsd"] == pytest.approx(np.mean([v for k, v in ref.items() if k.startswith("nsd_")]), rel=1e-5)


def test_surface_scores_empty_class_conventions_and_match_on_the_rest():
    rng = np.random.default_rng(5)
    shape, spacing = (30, 26, 8), (0.9, 0.9, 3.0)
    target = blobs(rng, shape, 3)
    pred = blobs(rng, shape, 3)
    pred[pred == 2] = 0  # class 2: in the ground truth only
    target[target == 3] = 0  # class 3 in neither
    names = ["background", "a", "b", "c"]
    got, ref = surface_scores(pred, target, names, spacing, 1.0), monai_reference(pred, target, names, spacing, 1.0)
    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing)))
    assert got["hd95_a"] == pytest.approx(ref["hd95_a"], rel=1e-5, abs=1e-5)
    assert got["nsd_a"] == pytest.approx(ref["nsd_a"], rel=1e-5, abs=1e-5)
    assert got["hd95_b"] == pytest.approx(diagonal) and got["nsd_b"] == 0.0
    assert math.isnan(got["hd95_c"]) and math.isnan(got["nsd_c"])
    assert got["hd95"] == pytest.approx((ref["hd95_a"] + diagonal) / 2, rel=1e-5)
    assert got["nsd"] == pytest.approx(ref["nsd_a"] / 2, rel=1e-5)
    empty = surface_scores(np.zeros(shape, int), np.zeros(shape, int), names, spacing)
    assert all(math.isnan(v) for v in empty.values())


def test_surface_scores_identical_masks():
    rng = np.random.default_rng(7)
    lab = blobs(rng, (28, 28), 2)
    got = surface_scores(lab, lab, ["background", "fg"], (0.5, 0.5), 1.0)
    assert got["hd95_fg"] == 0.0 and got["nsd_fg"] == 1.0


def test_surface_scores_raise_no_deprecation_of_monais_own_making():
    """MONAI 1.5's get_edge_surface_distance passes its own deprecated ``always_return_as_numpy`` on: a
    FutureWarning per class and case in every 3D test run (a walkthrough counted 23 across runs)."""
    import warnings

    a, b = np.zeros((20, 20), int), np.zeros((20, 20), int)
    a[5:12, 5:12], b[6:13, 5:12] = 1, 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert surface_scores(a, b, ["background", "organ"], [1.0, 1.0])["hd95_organ"] == 1.0


def test_a_working_grid_coarser_than_the_nsd_tolerance_is_said_once():
    """A walkthrough: the same checkpoint gave test NSD 0.556 on its 1.2 mm working grid and 0.809 through
    predict on the native 0.8 mm grid, at a 1 mm tolerance, with nothing saying why; the test now warns."""
    import warnings

    from lightning_modules.segmentation import SegmentationModule
    from lightning_modules.surface_collect import SurfaceCollector

    net = {"_target_": "lightning_modules.nets.dnet.DNet", "in_channels": 1, "classes": 2, "width": 4}
    module = SegmentationModule(net, {"_target_": "lightning_modules.losses.hybrid.HybridCEDiceLoss"}, num_classes=2)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:10, 4:10] = 1
    for spacing, warned in (((1.2, 1.2, 2.0), True), ((0.8, 0.8, 2.0), False)):
        surfaces = module.surfaces = SurfaceCollector()
        surfaces.slices, surfaces.spacing = {"c": [(0, mask, mask), (1, mask, mask)]}, {"c": spacing}
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            scored = surfaces.scores(module.class_names, module.nsd_tolerance_mm)
        said = [w for w in seen if "coarser than its tolerance module.nsd_tolerance_mm=1.0" in str(w.message)]
        assert bool(said) == warned and "nsd" in scored["c"]


def test_foreground_protocol_keeps_the_distance_between_its_slices():
    """Found by a review: under ``eval_slices=foreground`` the kept slices were stacked side by side, so two
    lesions 7 slices (35 mm) apart looked adjacent and missing one cost HD95 5 mm; with every slice it is 35 mm.
    Each kept slice now goes at its own index, the dropped ones background in both: the two protocols agree."""
    from lightning_modules.losses.hybrid import HybridCEDiceLoss
    from lightning_modules.segmentation import SegmentationModule

    class Sign(torch.nn.Module):
        def forward(self, x):
            return torch.cat([-x, x], 1) * 10

    depth = 12
    truth = torch.zeros(depth, 16, 16, dtype=torch.long)
    truth[2, 4:8, 4:8] = truth[9, 4:8, 4:8] = 1
    image = -torch.ones(depth, 1, 16, 16)
    image[2, 0, 4:8, 4:8] = 1  # the lesion at slice 2 found, the one at slice 9 missed
    batch = {"image": image, "mask": truth, "case_id": ["a"] * depth, "slice_index": torch.arange(depth),
             "spacing": torch.tensor([[1.0, 1.0, 5.0]] * depth)}
    hd95 = {}
    for protocol in ("all", "foreground"):
        module = SegmentationModule(Sign(), HybridCEDiceLoss(), num_classes=2, class_names=["background", "tumour"],
                                    eval_slices=protocol)
        module.log = lambda *a, **k: None
        module._evaluate(batch, "test", module.test_cases)
        module.on_test_epoch_end()
        hd95[protocol] = module.test_summary["hd95"]
    assert hd95["foreground"] == pytest.approx(hd95["all"]) and hd95["all"] == pytest.approx(35.0), hd95


def test_copies_sharing_a_slice_number_are_all_scored():
    """Found by a review of the 2D data: a folder's ``flipped_``/``mirrored_`` copies of a slice share its case
    and slice number, and the second overwrote the first in the surface metrics' stack (HD95/NSD scored fewer
    slices than Dice). Both now count: a missed lesion in the copy moves HD95 off 0."""
    from lightning_modules.surface_collect import SurfaceCollector

    lesion, empty = np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8)
    lesion[4:10, 4:10] = 1
    surfaces = SurfaceCollector()
    # the first copy's lesion missed, the second found: the overwrite kept only the second (HD95 0)
    surfaces.slices = {"c": [(3, empty, lesion), (3, lesion, lesion)]}
    surfaces.spacing = {"c": (1.0, 1.0, 1.0)}
    assert surfaces.scores(["background", "tumour"], 1.0)["c"]["hd95"] > 0


def test_sampled_slices_of_a_folder_are_scored_slice_by_slice():
    """A review: a folder's slices (``liver_slices``: ~5 per volume, 8 apart on average, flipped copies) were
    stacked as one volume, so slices 81 and 103 were neighbours and each one-slice object was all surface (NSD
    0.955 where each slice's 2D NSD is about 0.5). Items with ``stacks`` False are now scored in 2D per slice,
    each class averaged over the slices; a volume's own slices are still stacked."""
    from lightning_modules.losses.hybrid import HybridCEDiceLoss
    from lightning_modules.metrics import surface_scores
    from lightning_modules.segmentation import SegmentationModule

    class Sign(torch.nn.Module):
        def forward(self, x):
            return torch.cat([-x, x], 1) * 10

    truth = torch.zeros(2, 16, 16, dtype=torch.long)
    truth[:, 4:10, 4:10] = 1
    image = -torch.ones(2, 1, 16, 16)
    image[0, 0, 6:12, 4:10] = 1  # slice 81 found 2 px low
    image[1, 0, 4:10, 5:10] = 1  # slice 103 one column short
    names = ["background", "liver"]
    expected = [surface_scores(image[i, 0].numpy() > 0, truth[i].numpy(), names, [1.0, 1.0]) for i in range(2)]
    got = {}
    for stacks in (False, True):
        batch = {"image": image, "mask": truth, "case_id": ["a", "a"], "slice_index": torch.tensor([81, 103]),
                 "spacing": torch.tensor([[1.0, 1.0, 1.0]] * 2), "stacks": torch.tensor([stacks, stacks])}
        module = SegmentationModule(Sign(), HybridCEDiceLoss(), num_classes=2, class_names=names)
        module.log = lambda *a, **k: None
        module._evaluate(batch, "test", module.test_cases)
        module.on_test_epoch_end()
        got[stacks] = module.test_per_case["a"]
    for key in ("hd95", "nsd"):
        assert got[False][key] == pytest.approx(np.mean([e[key] for e in expected])), key
    assert got[True]["nsd"] > got[False]["nsd"] + 0.1  # stacked: each one-slice object all surface (0.95, 0.80)


def test_folder_items_say_their_slices_do_not_stack(tmp_path):
    from datamodules.folder2d import FolderSegmentationDataModule
    from PIL import Image

    for d in ("imgs", "msks"):
        (tmp_path / d).mkdir()
    m = np.zeros((8, 8), np.uint8)
    m[2:5, 2:5] = 255
    for c in range(3):
        Image.fromarray(m).save(tmp_path / "imgs" / f"{c}_10.png")
        Image.fromarray(m).save(tmp_path / "msks" / f"{c}_10.png")
    dm = FolderSegmentationDataModule(str(tmp_path), image_dir="imgs", mask_dir="msks", augment=False,
                                      val_fraction=0.34, test_fraction=0.34)
    dm.setup()
    assert dm.test_dataset[0]["stacks"] is False


def test_sampled_slices_are_scored_with_the_in_plane_spacing():
    """Slices are ``[H, W]`` of an ``(H, W, D)`` volume: their spacing is the first two (a review: the last two,
    ``(W, D)``, were taken, harmless only while folder cases had spacing 1 everywhere)."""
    from lightning_modules.metrics import slice_surface_scores, surface_scores

    truth = np.zeros((16, 16), np.uint8)
    truth[4:10, 4:10] = 1
    pred = np.zeros_like(truth)
    pred[6:12, 4:10] = 1
    names = ["background", "liver"]
    got = slice_surface_scores([pred], [truth], names, (0.5, 0.5, 3.0))
    want = surface_scores(pred, truth, names, [0.5, 0.5])
    assert got["hd95"] == pytest.approx(want["hd95"]) and got["nsd"] == pytest.approx(want["nsd"])
    assert got["hd95"] == pytest.approx(1.0)  # 2 px low at 0.5 mm


class _Threshold3d(torch.nn.Module):
    """Foreground where the voxel is positive; refuses anything but its window (a 3D net's fixed patch)."""

    def __init__(self, window: tuple[int, int, int] | None = None) -> None:
        super().__init__()
        self.window = window

    def forward(self, x):
        if self.window is not None and tuple(x.shape[2:]) != self.window:
            raise RuntimeError(f"got {tuple(x.shape[2:])}, not the {self.window} window")
        return torch.cat([-x, x], 1) * 10


def _volume_batch(case: str, shift: int = 0) -> dict:
    """One whole 3D case (a test batch of volumes is one case per item): a cube, predicted ``shift`` slices off."""
    truth = torch.zeros(1, 20, 18, 12, dtype=torch.long)
    truth[0, 5:12, 4:11, 3:8] = 1
    image = -torch.ones(1, 1, 20, 18, 12)
    image[0, 0, 5:12, 4:11, 3 + shift:8 + shift] = 1
    return {"image": image, "mask": truth, "case_id": [case], "spacing": torch.tensor([[0.8, 0.9, 3.0]])}


def test_a_3d_case_is_scored_when_it_arrives_and_its_voxels_are_not_kept():
    """A review: every test volume's prediction and mask were held until the test epoch ended (2 bytes per voxel
    per case; ~4.8 GB for MSD pancreas at 1 mm). A 3D item is a whole case, so its scores are kept, not its
    voxels, and they are those of the whole volume (a prediction one 3 mm slice off: HD95 3 mm)."""
    from lightning_modules.segmentation import SegmentationModule

    module = SegmentationModule(_Threshold3d(), {"_target_": "lightning_modules.losses.hybrid.HybridCEDiceLoss"},
                                num_classes=2, class_names=["background", "organ"])
    module.log = lambda *a, **k: None
    for case, shift in (("a", 0), ("b", 1)):
        module.test_step(_volume_batch(case, shift), 0)
    assert not module.surfaces.slices and sorted(module.surfaces.scored) == ["a", "b"]
    module.on_test_epoch_end()
    assert module.test_per_case["a"]["hd95"] == 0.0 and module.test_per_case["b"]["hd95"] == pytest.approx(3.0)
    assert module.test_summary["hd95"] == pytest.approx(1.5) and not module.surfaces.scored


def test_predict_step_runs_a_whole_volume_through_the_sliding_window():
    """A review: ``predict_step`` gave a 3D net the whole volume (a SegResNetVAE failed on 51 x 51 x 40); it
    now predicts as the test step does, window by window."""
    from lightning_modules.segmentation import SegmentationModule

    module = SegmentationModule(_Threshold3d(window=(8, 8, 8)), {"_target_": "lightning_modules.losses.hybrid."
                                "HybridCEDiceLoss"}, num_classes=2, roi_size=[8, 8, 8], overlap=0.25)
    batch = _volume_batch("a")
    prob = module.predict_step(batch, 0)
    assert prob.shape == (1, 2, 20, 18, 12)
    assert torch.equal(prob.argmax(1), batch["mask"])


def test_a_spacing_of_another_dimension_is_refused():
    """A 3D review: 2D arrays given an (x, y, z) spacing took its last two values, (y, z), and HD95 came out
    10x too large at 0.5 x 0.5 x 5 mm. The count must match now; a slice's scores pass (x, y)."""
    target = np.zeros((20, 20), int)
    target[5:12, 5:12] = 1
    pred = np.roll(target, 3, axis=1)
    with pytest.raises(ValueError, match=r"3 values for 2D arrays"):
        surface_scores(pred, target, ["bg", "fg"], (0.5, 0.5, 5.0))
    assert surface_scores(pred, target, ["bg", "fg"], (0.5, 0.5))["hd95"] == pytest.approx(1.5)
