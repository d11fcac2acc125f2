"""Volume pipeline: HU window, NIfTI errors, label checks, resize, slice cache hits and atomicity."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
from data_fixtures import write_nifti

import datamodules.volume_cache as volume_cache
import datamodules.volumes as volumes
from datamodules.errors import DataError
from datamodules.volume_cache import VolumeCache
from datamodules.volumes import (PreprocessParams, apply_window, load_nifti,
                                 resize_slices, restore_label_volume)


def _pair(tmp_path, shape=(16, 16, 4), label_shape=None, bad_value=None):
    rng = np.random.default_rng(0)
    img = write_nifti(tmp_path / "img.nii.gz", rng.integers(-200, 300, shape).astype(np.int16))
    lab = np.zeros(label_shape or shape, np.uint8)
    lab[4:10, 4:10, 1:3] = 1
    lab[6:8, 6:8, 2] = 2
    if bad_value is not None:
        lab[0, 0, 0] = bad_value
    return img, write_nifti(tmp_path / "lab.nii.gz", lab)


def test_window_maps_known_hu():
    x = np.array([-1000, -40, 60, 160, 3000], np.float32)
    assert np.allclose(apply_window(x, -40, 160), [0, 0, 0.5, 1, 1])
    pancreas = apply_window(np.array([-500, -200, 25, 250], np.float32), -200, 250, (-1, 1))
    assert np.allclose(pancreas, [-1, -1, 0, 1]) and pancreas.dtype == np.float32
    with pytest.raises(DataError, match="window"):
        apply_window(x, 100, 0)


def test_load_nifti_order_and_corrupt_file(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    data, affine, _ = load_nifti(write_nifti(tmp_path / "a.nii.gz", arr, (0.5, 0.5, 2.0)))
    assert data.dtype == np.float32 and data.shape == (2, 3, 4) and np.array_equal(data, arr)
    assert np.allclose(np.diag(affine)[:3], (0.5, 0.5, 2.0))
    good = (tmp_path / "a.nii.gz").read_bytes()
    (tmp_path / "trunc.nii.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="trunc.nii.gz"):
        load_nifti(tmp_path / "trunc.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(gzip.compress(b"not a nifti header" * 30))
    with pytest.raises(DataError, match="junk.nii.gz"):
        load_nifti(tmp_path / "junk.nii.gz")
    with pytest.raises(DataError, match="missing.nii"):
        load_nifti(tmp_path / "missing.nii")


def test_shape_mismatch_names_both_files(tmp_path):
    img, lab = _pair(tmp_path, label_shape=(16, 16, 5))
    with pytest.raises(DataError, match=r"img\.nii\.gz.*lab\.nii\.gz"):
        VolumeCache(tmp_path / "c", PreprocessParams()).load(img, lab, "x")


def test_bad_label_value_names_file_and_value(tmp_path):
    img, lab = _pair(tmp_path, bad_value=7)
    with pytest.raises(DataError, match=r"lab\.nii\.gz.*\[7\]"):
        VolumeCache(tmp_path / "c", PreprocessParams(labels=(0, 1, 2))).load(img, lab, "x")


def test_resize_nearest_for_labels_and_restore():
    lab = np.zeros((2, 20, 20), np.uint8)
    lab[:, 5:15, 5:15] = 2
    small = resize_slices(lab, 8, is_label=True)
    assert small.shape == (2, 8, 8) and set(np.unique(small)) <= {0, 2}
    img = resize_slices(lab.astype(np.float32), 8, is_label=False)
    assert img.dtype == np.float32 and img.shape == (2, 8, 8)
    back = restore_label_volume(small, (20, 20, 2))
    assert back.shape == (20, 20, 2) and set(np.unique(back)) <= {0, 2}


def _centroid(a: np.ndarray) -> np.ndarray:
    ys, xs = np.indices(a.shape)
    return np.array([(a * ys).sum(), (a * xs).sum()]) / a.sum()


def test_label_resizing_keeps_masks_on_their_images():
    """Found by a review: masks resized with torch's ``nearest`` (source index floor(i * scale)) sat up to half a
    working pixel off their bilinear-resized images (0.375 px at 64 -> 16 here), and ``restore_label_volume`` did
    not undo an up-sampling; pixel-centre aligned ``nearest-exact`` leaves 0.125 px (even factors cannot do
    better) and restores exactly."""
    lab = np.zeros((1, 64, 64), np.uint8)
    lab[0, 20:45, 12:37] = 1
    mask = resize_slices(lab, 16, is_label=True)[0]
    image = resize_slices(lab.astype(np.float32), 16, is_label=False)[0]
    assert np.abs(_centroid(mask) - _centroid(image)).max() < 0.2
    rng = np.random.default_rng(0)
    small = rng.integers(0, 3, (2, 29, 13)).astype(np.uint8)           # [D, H, W], up to 64 x 64 and back
    assert np.array_equal(restore_label_volume(resize_slices(small, 64, is_label=True), (29, 13, 2)),
                          np.moveaxis(small, 0, -1))


def test_the_cache_key_changes_with_its_format(tmp_path, monkeypatch):
    """Slices cached before a preprocessing fix (the labels' resizing above) are not served after it."""
    params = PreprocessParams((-200, 300), (0.0, 1.0), 16, (0, 1, 2))
    img, lab = _pair(tmp_path)
    before = VolumeCache(tmp_path / "c", params).entry_dir(img, lab)
    monkeypatch.setattr(volume_cache, "CACHE_FORMAT", volume_cache.CACHE_FORMAT + 1)
    assert VolumeCache(tmp_path / "c", params).entry_dir(img, lab) != before


def test_cache_hit_and_no_temp_files(tmp_path):
    img, lab = _pair(tmp_path)
    params = PreprocessParams(image_size=8)
    first = VolumeCache(tmp_path / "c", params)
    v1 = first.load(img, lab, "case0")
    assert first.decode_count == 1 and v1.image.shape == (4, 8, 8) and v1.original_shape == (16, 16, 4)
    assert 0.0 <= v1.image.min() and v1.image.max() <= 1.0
    first.load(img, lab, "case0")
    second = VolumeCache(tmp_path / "c", params)
    v2 = second.load(img, lab, "case0")
    assert first.decode_count == 1 and second.decode_count == 0
    assert np.array_equal(v1.image, v2.image) and np.array_equal(v1.label, v2.label)
    files = [p.name for p in (tmp_path / "c").rglob("*") if p.is_file()]
    assert sorted(files) == ["case0_image.npy", "case0_label.npy", "case0_meta.json"]
    other = VolumeCache(tmp_path / "c", PreprocessParams(image_size=8, window=(-200.0, 300.0)))
    other.load(img, lab, "case0")
    assert other.decode_count == 1, "different preprocessing -> different cache entry"


def test_a_cache_linked_out_of_the_data_folder_is_said_and_a_linked_entry_refused(tmp_path, caplog):
    """A security review: a handed-over data folder whose ``.cache`` (or a cache entry) linked elsewhere made a run
    write its slices there, unsaid. A ``.cache`` linked out is a warning naming it (a site may link it to a scratch
    disk on purpose: a review of that fix found a Flower node left no other way); a linked entry, never ours, is one
    line and nothing is written through it; a link inside the folder is fine."""
    import logging

    from datamodules.volume_cache import default_cache_dir

    root, outside = tmp_path / "data", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    (root / ".cache").symlink_to(outside)
    with caplog.at_level(logging.WARNING, logger="datamodules.volume_cache"):
        assert default_cache_dir(root) == root / ".cache"
    assert "outside data.root" in caplog.text and str(outside) in caplog.text
    (root / ".cache").unlink()
    (root / "fast").mkdir()
    (root / ".cache").symlink_to(root / "fast")
    caplog.clear()
    assert default_cache_dir(root) == root / ".cache" and "outside" not in caplog.text
    img, lab = _pair(tmp_path)
    cache = VolumeCache(tmp_path / "c", PreprocessParams(image_size=8))
    entry = cache.entry_dir(img, lab)
    entry.parent.mkdir()
    entry.symlink_to(outside)
    with pytest.raises(DataError, match="is a link"):
        cache.load(img, lab, "case0")
    assert list(outside.iterdir()) == []


def test_interrupted_write_leaves_no_partial_cache(tmp_path, monkeypatch):
    img, lab = _pair(tmp_path)
    real_save = np.save
    calls = {"n": 0}

    def failing_save(fh, arr):
        calls["n"] += 1
        if calls["n"] == 2:  # the image file, written last
            fh.write(b"partial")
            raise KeyboardInterrupt
        real_save(fh, arr)

    monkeypatch.setattr(volume_cache.np, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        VolumeCache(tmp_path / "c", PreprocessParams()).load(img, lab, "case0")
    monkeypatch.setattr(volume_cache.np, "save", real_save)
    leftovers = [p.name for p in (tmp_path / "c").rglob("*") if p.is_file()]
    assert "case0_image.npy" not in leftovers and not any(n.endswith(".tmp") for n in leftovers)
    cache = VolumeCache(tmp_path / "c", PreprocessParams())
    cache.load(img, lab, "case0")
    assert cache.decode_count == 1
    again = VolumeCache(tmp_path / "c", PreprocessParams())
    again.load(img, lab, "case0")
    assert again.decode_count == 0


def test_probabilities_back_on_the_source_grid_keep_the_boundary():
    """predict maps class probabilities back and takes the labels there (nnU-Net's export): a 7 mm sphere on a
    0.8 x 0.8 x 2.5 mm grid, sent to 1 mm and back, comes back whole (Dice 1.0); mapping the arg-max labels
    back with nearest neighbour, as predict did, loses its boundary (Dice 0.973 here)."""
    import torch

    from datamodules.spatial import to_grid
    from datamodules.volumes import restore_probability_volume

    aff = np.diag([0.8, 0.8, 2.5, 1.0])
    i, j, k = np.meshgrid(np.arange(40), np.arange(36), np.arange(14), indexing="ij")
    truth = np.sqrt(((i - 20) * 0.8) ** 2 + ((j - 18) * 0.8) ** 2 + ((k - 7) * 2.5) ** 2) < 7.0
    prob, grid = to_grid(np.stack([~truth, truth]).astype(np.float32), aff, "RAS", (1.0, 1.0, 1.0))
    back = restore_probability_volume(torch.from_numpy(prob).permute(3, 0, 1, 2), grid)
    assert back.shape == (2, 40, 36, 14) and back.dtype == np.float32
    via_labels = restore_label_volume(np.moveaxis(prob.argmax(0), -1, 0), grid).astype(bool)

    def dice(a):
        return 2 * (a & truth).sum() / (a.sum() + truth.sum())

    assert dice(back.argmax(0).astype(bool)) > 0.995 and dice(via_labels) < dice(back.argmax(0).astype(bool))


def _sform_only(path, arr, affine, pixdim):
    """A NIfTI whose affine is the sform as given (nibabel would otherwise derive one from pixdim)."""
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape(arr.shape)
    hdr.set_data_dtype(np.int16)
    hdr.set_sform(affine, code=1)
    hdr.set_qform(None, code=0)
    hdr["pixdim"][1:4] = pixdim
    nib.save(nib.Nifti1Image(arr, None, hdr), str(path))
    return path


_SINGULAR = np.eye(4)
_SINGULAR[:3, :3] = [[0.8, 0.8, 0], [0.8, 0.8, 0], [0, 0, 2.5]]
_NAN = np.diag([0.8, np.nan, 2.5, 1.0])
AFFINES = {"zero_spacing": (np.diag([0.8, 0.8, 0.0, 1.0]), "at least 0.001 mm"),
           "tiny_spacing": (np.diag([0.8, 0.8, 1e-6, 1.0]), "at least 0.001 mm"),
           "singular": (_SINGULAR, "singular affine"), "nan": (_NAN, "non-finite affine")}


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_an_affine_without_real_voxel_axes_is_one_error(tmp_path, name):
    """Found by an audit: zero or NaN spacing raised from nibabel's orientation code (a traceback), a singular
    affine was segmented as is, and a 1e-6 mm spacing collapsed the volume into one slice."""
    affine, reason = AFFINES[name]
    path = _sform_only(tmp_path / f"{name}.nii.gz", np.zeros((8, 8, 4), np.int16), affine, [0.8, 0.8, 2.5])
    with pytest.raises(DataError, match=f"{name}.nii.gz.*{reason}|{name}.nii.gz has a {reason}"):
        load_nifti(path)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_header_claiming_more_voxels_than_the_file_holds_fails_before_reading(tmp_path, suffix, monkeypatch):
    """Found by an audit: a 1.3 KB file claiming 1000^3 float32 voxels allocated 4.4 GB for 16 s before
    nibabel called it truncated. The claim is checked against the file's bytes first (streamed for gzip)."""
    import nibabel as nib

    import datamodules.nifti_checks as checks

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((1000, 1000, 1000))
    hdr.set_data_dtype(np.float32)
    hdr.set_sform(np.eye(4), code=1)
    raw = hdr.binaryblock + b"\0" * 1004
    path = tmp_path / f"bomb{suffix}"
    path.write_bytes(gzip.compress(raw) if suffix.endswith(".gz") else raw)
    monkeypatch.setattr(checks, "STREAM_CHECK_BYTES", 2 ** 20)
    monkeypatch.setattr(np, "asarray", lambda *a, **k: pytest.fail("the voxels were read"))
    with pytest.raises(DataError, match=r"bomb\.nii(\.gz)? is truncated: its header claims 4000000\d{3} bytes of voxels, the file holds 1352"):
        load_nifti(path)
    hdr.set_data_shape((30000, 30000, 30000))
    path.write_bytes(gzip.compress(hdr.binaryblock + b"\0" * 4) if suffix.endswith(".gz") else hdr.binaryblock + b"\0" * 4)
    with pytest.raises(DataError, match=r"claims \(30000, 30000, 30000\) = 2\.7e\+13 voxels"):
        load_nifti(path)


def test_resampling_to_an_unbounded_grid_is_one_error():
    """Found by an audit: a 70 KB volume with 20000-mm slices asked for a 51 x 51 x 320000 grid (3.3 GB)."""
    from datamodules.spatial import to_grid

    with pytest.raises(DataError, match=r"case_7\.nii\.gz: .*make a \(51, 51, 320000\) grid"):
        to_grid(np.zeros((64, 64, 16), np.float32), np.diag([0.8, 0.8, 20000.0, 1.0]), "RAS", (1.0, 1.0, 1.0),
                source="case_7.nii.gz")
    out, _ = to_grid(np.zeros((64, 64, 16), np.float32), np.diag([0.8, 0.8, 5.0, 1.0]), "RAS", (0.5, 0.5, 0.5))
    assert out.shape == (102, 102, 160)  # a real upsampling (x26) is fine


def test_the_minimum_spacing_is_judged_in_the_headers_unit(tmp_path):
    """Found by a review: a header in metres (0.7 mm = 0.0007 m) was refused as 0.0007 mm."""
    import nibabel as nib

    img = nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.diag([0.0007, 0.0007, 0.005, 1.0]))
    img.header.set_xyzt_units("meter")
    nib.save(img, tmp_path / "metres.nii.gz")
    assert load_nifti(tmp_path / "metres.nii.gz")[0].shape == (8, 8, 4)
    # ... and the affine is read in mm (a walkthrough: metres were taken as mm, so resampling to 1 mm
    # collapsed the volume to one voxel and HD95 came out in metres)
    np.testing.assert_allclose(load_nifti(tmp_path / "metres.nii.gz")[1], np.diag([0.7, 0.7, 5.0, 1.0]))
    img.header.set_xyzt_units("mm")
    nib.save(img, tmp_path / "mm.nii.gz")
    with pytest.raises(DataError, match=r"mm\.nii\.gz: voxel spacing \[0\.0007, 0\.0007, 0\.005\] mm"):
        load_nifti(tmp_path / "mm.nii.gz")


def _with_affine(path, array, affine):
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def test_a_label_is_read_by_its_own_affine_and_one_off_its_images_grid_is_refused(tmp_path, caplog):
    """A walkthrough: the label's affine was ignored (the image's was used), so a label stored flipped or
    transposed, with its affine saying so, trained and scored misaligned (Dice 0.80 -> 0.59), and a label with
    another spacing went through. Now it is reoriented by its own affine (as MONAI's Orientationd reads each
    file) and one on another grid is one error naming both files."""
    rng = np.random.default_rng(0)
    affine = np.array([[-0.8, 0, 0, 90.0], [0, -0.8, 0, 120.0], [0, 0, 2.5, -300.0], [0, 0, 0, 1]])
    image = rng.integers(-200, 300, (16, 12, 6)).astype(np.int16)
    label = np.zeros(image.shape, np.uint8)
    label[2:7, 3:9, 1:4] = 1  # asymmetric: a flip or transpose that went unread would move it
    img = _with_affine(tmp_path / "img.nii.gz", image, affine)
    params = PreprocessParams(window=(-200, 300), orientation="RAS", spacing=None)
    _, want, _ = volumes.load_on_grid(img, params, _with_affine(tmp_path / "lab.nii.gz", label, affine))
    # the same voxels in world space, stored x-flipped and then transposed (the affine follows each change)
    flip = np.diag([-1.0, 1, 1, 1])
    flip[0, 3] = image.shape[0] - 1
    swap = np.eye(4)[[1, 0, 2, 3]]
    stored = np.ascontiguousarray(label[::-1].transpose(1, 0, 2))
    moved = _with_affine(tmp_path / "lab_moved.nii.gz", stored, affine @ flip @ swap)
    _, got, _ = volumes.load_on_grid(img, params, moved)
    np.testing.assert_array_equal(got, want)
    spacing1 = _with_affine(tmp_path / "lab_1mm.nii.gz", label, np.eye(4))  # a header lost on export
    with pytest.raises(DataError, match=r"label .*lab_1mm\.nii\.gz is not on the voxel grid of image .*img\.nii\.gz"):
        volumes.load_on_grid(img, params, spacing1)
    shifted = affine.copy()
    shifted[:3, 3] += 5.0  # another tool's header, the voxels the image's: taken as they are, with a warning
    with caplog.at_level("WARNING", logger="datamodules.spatial"):
        _, got, _ = volumes.load_on_grid(img, params, _with_affine(tmp_path / "lab_shift.nii.gz", label, shifted))
    np.testing.assert_array_equal(got, want)
    assert "origin [95.0, 125.0, -295.0] vs [90.0, 120.0, -300.0] mm" in caplog.text
    # ... but a reorientation is not read from a header that is off otherwise (a lost header: identity)
    with pytest.raises(DataError, match=r"lab_moved_shift\.nii\.gz is not on the voxel grid .*after reading its axis order"):
        volumes.load_on_grid(img, params, _with_affine(tmp_path / "lab_moved_shift.nii.gz", stored,
                                                       shifted @ flip @ swap))
    # a second channel of a multi-channel case is held to the first one's grid the same way
    with pytest.raises(DataError, match=r"channel .*ch1\.nii\.gz is not on the voxel grid"):
        volumes.load_on_grid([img, _with_affine(tmp_path / "ch1.nii.gz", image, np.eye(4))], params)


@pytest.mark.parametrize("dtype,slope,inter", [(np.int16, 2.0, -1024.0), (">i2", 1.0, 0.0), (np.float32, np.nan, np.nan),
                                               (np.uint8, 0.5, 3.0)])
def test_a_large_gzip_file_is_decompressed_once(tmp_path, monkeypatch, dtype, slope, inter):
    """A .nii.gz whose claim passes STREAM_CHECK_BYTES was decompressed twice (once to count its bytes, once
    by nibabel to read them); the counted bytes are now the voxels, read as nibabel reads them: endianness,
    Fortran order, scl_slope/scl_inter (NaN: no scaling) and the float32 cast."""
    import nibabel as nib

    import datamodules.nifti_checks as checks

    rng = np.random.default_rng(0)
    data = rng.integers(0, 200, (9, 7, 5)).astype(dtype)
    img = nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0]))
    img.header.set_slope_inter(slope, inter)
    path = tmp_path / "ct.nii.gz"
    nib.save(img, str(path))
    expected = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    monkeypatch.setattr(checks, "STREAM_CHECK_BYTES", 16)
    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "_get_unscaled",
                        lambda *a, **k: pytest.fail("nibabel decompressed the file a second time"))
    got, _, _ = load_nifti(path)
    assert got.dtype == np.float32 and got.shape == expected.shape and np.array_equal(got, expected, equal_nan=True)
    if slope == 2.0:
        assert got.min() < -900  # the intercept was applied


def test_labels_taken_where_the_probabilities_are_equal_the_cpu_export():
    """predict takes the labels on its own device and undoes the orientation on them, not on K probability
    channels (restore_label_map): the same labels as resampling the probabilities on the CPU, orienting them back
    and taking the arg-max there, for an LPS file resampled to 1 mm with slices resized, and with a threshold."""
    import torch

    from datamodules.spatial import to_grid
    from datamodules.volumes import restore_label_map, restore_probability_volume

    rng = np.random.default_rng(0)
    aff = np.diag([-0.8, -0.8, 2.5, 1.0])  # LPS on disk, RAS on the working grid
    logits = torch.from_numpy(rng.normal(size=(3, 40, 36, 14)).astype(np.float32))
    prob, grid = to_grid(torch.softmax(logits, 0).numpy(), aff, "RAS", (1.0, 1.0, 1.0))
    slices = torch.nn.functional.interpolate(torch.from_numpy(prob).permute(3, 0, 1, 2), size=(24, 20),
                                             mode="bilinear", align_corners=False)  # a net run on resized slices
    cpu = restore_probability_volume(slices, grid)
    labels = restore_label_map(slices, grid, lambda p: p.argmax(0))
    assert labels.shape == (40, 36, 14) and labels.dtype == np.uint8 and len(np.unique(labels)) == 3
    np.testing.assert_array_equal(labels, cpu.argmax(0))
    two = slices[:, :2] / slices[:, :2].sum(1, keepdim=True)
    fg = restore_label_map(two, grid, lambda p: (p[1] > 0.3).long())
    np.testing.assert_array_equal(fg, restore_probability_volume(two, grid)[1] > 0.3)


def test_the_working_grids_affine_puts_a_voxel_where_the_source_has_it():
    """Found by a review: ``GridMeta.affine`` scaled the voxel axes without the half-voxel origin shift of
    pixel-centre aligned resampling, so a voxel resampled from 2 mm to 0.5 mm sat 0.75 mm off in world space;
    an oblique, reoriented source checks the rotation and flips as well."""
    from datamodules.spatial import to_grid

    src = np.zeros((10, 6, 5), np.float32)
    src[3, 2, 1] = 1.0
    theta = np.deg2rad(12)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-2.0, 1.5, 3.0])               # oblique, x flipped, anisotropic
    affine[:3, 3] = [10.0, -4.0, 7.0]
    y, grid = to_grid(src, affine, "RAS", spacing=(0.5, 0.5, 1.0))
    centre = np.array([(y * idx).sum() for idx in np.indices(y.shape)]) / y.sum()  # centre of mass, working voxels
    world = (grid.affine @ [*centre, 1.0])[:3]
    np.testing.assert_allclose(world, (affine @ [3, 2, 1, 1.0])[:3], atol=0.05)


def test_probabilities_come_back_as_a_view_in_the_source_orientation(tmp_path):
    """save_probabilities held a CT's class probabilities twice (a copy per channel, stacked); the way back is
    now a view of them (flips and a transpose) that ``np.savez`` streams, with the same values and file."""
    import torch

    from datamodules.spatial import from_grid, to_grid
    from datamodules.volumes import restore_label_map
    from engine.predict import save_probabilities

    _, grid = to_grid(np.zeros((12, 10, 6), np.float32), np.diag([-0.8, -0.8, 2.5, 1.0]), "RAS", spacing=None)
    prob = torch.softmax(torch.randn(6, 3, 12, 10, generator=torch.Generator().manual_seed(0)), dim=1)
    labels, view = restore_label_map(prob, grid, lambda p: p.argmax(0), with_probabilities=True)
    working = prob.permute(1, 2, 3, 0).numpy()                       # [K, h, w, d], already at the source spacing
    assert np.shares_memory(view, working) and not view.flags.c_contiguous
    copy = from_grid(working, grid, is_label=False)
    assert copy.flags.c_contiguous and np.array_equal(view, copy) and np.array_equal(view.argmax(0), labels)
    save_probabilities(view, ["a", "b", "c"], None, tmp_path / "case.npz")
    with np.load(tmp_path / "case.npz", allow_pickle=False) as f:
        assert np.array_equal(f["probabilities"], copy)


@pytest.mark.parametrize("poison", ["nan_image", "label_of_no_class", "label_shape", "grid",
                                    "huge_values", "small_slices", "one_slice"])
def test_a_cache_entry_that_fails_the_decode_checks_is_decoded_again(tmp_path, poison, caplog):
    """A slice cache entry is checked as a decode checks the NIfTI (an audit: a poisoned ``<root>/.cache``
    with NaN images and labels of no class trained to a NaN loss and Dice 0, exit 0): one warning naming the
    entry, the volume is decoded again and the entry rewritten."""
    params = PreprocessParams((-200, 300), (0.0, 1.0), 16, (0, 1, 2))
    img, lab = _pair(tmp_path)
    cache = VolumeCache(tmp_path / "c", params)
    real = cache.load(img, lab, "x")
    real_image, real_label = np.array(real.image), np.array(real.label)
    entry = cache.entry_dir(img, lab)
    if poison == "nan_image":
        np.save(entry / "x_image.npy", np.full_like(real_image, np.nan))
    elif poison == "label_of_no_class":
        np.save(entry / "x_label.npy", np.full_like(real_label, 7))
    elif poison == "label_shape":
        np.save(entry / "x_label.npy", real_label[:1])
    elif poison == "huge_values":  # finite, but no window gives them (a second audit: test loss NaN)
        np.save(entry / "x_image.npy", np.full_like(real_image, 3e38))
    elif poison == "small_slices":  # 7x7 slices with empty labels where the run asks for 16x16
        np.save(entry / "x_image.npy", np.zeros((len(real_image), 7, 7), np.float32))
        np.save(entry / "x_label.npy", np.zeros((len(real_image), 7, 7), np.uint8))
    elif poison == "one_slice":
        np.save(entry / "x_image.npy", real_image[:1])
        np.save(entry / "x_label.npy", real_label[:1])
    else:
        (entry / "x_meta.json").write_text('{"grid": [1, 2]}')
    second = VolumeCache(tmp_path / "c", params)
    hit = second.load(img, lab, "x")
    assert second.decode_count == 1  # the entry was served to nobody: decoded again
    assert np.array_equal(np.asarray(hit.image), real_image) and np.array_equal(np.asarray(hit.label), real_label)
    assert "failed its checks" in caplog.text and str(entry) in caplog.text
    clean = VolumeCache(tmp_path / "c", params)
    clean.load(img, lab, "x")
    assert clean.decode_count == 0  # rewritten: a hit again
