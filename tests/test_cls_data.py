"""MedMNIST datamodule on tiny self-written .npz files (official format), bad inputs, digits, real files."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from datamodules.digits import DigitsDataModule
from datamodules.errors import DataError
from datamodules.medmnist import MEDMNIST_INFO, MedMNISTDataModule, MissingDataFileError

SHARED = Path(os.environ.get("FEDMED_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def write_npz(root: Path, name: str, channels: int = 1, labels_shape: tuple = (1,), n_classes: int = 2,
              size: int = 28, drop: str | None = None, **replace) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 12), ("val", 4), ("test", 6)):
        shape = (n, size, size) if channels == 1 else (n, size, size, channels)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n * int(np.prod(labels_shape))) % n_classes).reshape(n, *labels_shape).astype(np.uint8)
    arrays.update(replace)
    if drop:
        arrays.pop(drop)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / name, **arrays)
    return root / name


def test_binary_file_official_layout_and_batches(tmp_path):
    write_npz(tmp_path, "breastmnist.npz")
    dm = MedMNISTDataModule(root=str(tmp_path), flag="breastmnist", batch_size=5)
    dm.setup("fit")
    assert (dm.task, dm.num_classes, dm.in_channels) == ("binary", 2, 1)
    assert len(dm.train_dataset) == 12 and dm.train_dataset.targets.shape == (12,)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (5, 1, 28, 28) and batch["image"].dtype == torch.float32
    assert batch["label"].dtype == torch.int64 and batch["image"].min() >= -1 and batch["image"].max() <= 1


def test_labels_stored_1d_and_v2_file_names_and_resize(tmp_path):
    write_npz(tmp_path, "OrganAMNIST.npz", labels_shape=(), n_classes=11)
    dm = MedMNISTDataModule(root=str(tmp_path), flag="organmnist_axial", size=56, as_rgb=True)
    dm.setup()
    item = dm.test_dataset[0]
    assert item["image"].shape == (3, 56, 56) and dm.in_channels == 3 and dm.num_classes == 11


def test_a_medmnist_plus_file_is_found_by_its_official_name_and_kept_at_its_size(tmp_path, caplog):
    """A review: MedMNIST+ files are ``<flag>_<size>.npz``, and only ``<flag>.npz`` was looked for; and a 64 px
    file was shrunk to the 28 px default network input without a word. ``data.image_size=64`` now finds
    ``breastmnist_64.npz`` (before a 28 px ``breastmnist.npz`` beside it) and trains at 64 unless
    ``data.size`` says otherwise, which is warned about when it shrinks."""
    write_npz(tmp_path, "breastmnist.npz")
    write_npz(tmp_path, "breastmnist_64.npz", size=64)
    dm = MedMNISTDataModule(root=str(tmp_path), flag="breastmnist", image_size=64)
    dm.setup()
    assert dm.path.name == "breastmnist_64.npz" and dm.train_dataset[0]["image"].shape == (1, 64, 64)
    small = MedMNISTDataModule(root=str(tmp_path), flag="breastmnist")
    small.setup()
    assert small.path.name == "breastmnist.npz" and small.train_dataset[0]["image"].shape == (1, 28, 28)
    with caplog.at_level("WARNING"):
        MedMNISTDataModule(root=str(tmp_path), flag="breastmnist", image_size=64, size=28)
    assert "data.size=28 is below the stored data.image_size=64" in caplog.text
    with pytest.raises(MissingDataFileError, match="breastmnist_128.npz or breastmnist.npz"):
        MedMNISTDataModule(root=str(tmp_path / "none"), flag="breastmnist", image_size=128).setup()


def test_the_config_trains_at_the_stored_size(tmp_path):
    """``data.size`` follows ``data.image_size`` in the config, and the ResNet's stem follows ``data.size``."""
    from tests.hydra_helpers import compose_run

    cfg = compose_run(["+exp=medmnist", "data.image_size=128"], tmp_path)
    assert cfg.data.size == 128 and cfg.model.resolution == 128


def test_multilabel_and_rgb_ordinal(tmp_path):
    write_npz(tmp_path, "chestmnist.npz", labels_shape=(14,))
    dm = MedMNISTDataModule(root=str(tmp_path), flag="chestmnist")
    dm.setup()
    assert dm.train_dataset[0]["label"].shape == (14,) and dm.train_dataset[0]["label"].dtype == torch.float32
    write_npz(tmp_path, "retinamnist.npz", channels=3, n_classes=5)
    dm = MedMNISTDataModule(root=str(tmp_path), flag="retinamnist")
    dm.setup()
    assert dm.task == "ordinal-regression" and dm.train_dataset[0]["image"].shape == (3, 28, 28)


def test_other_medmnist_file_is_inferred(tmp_path):
    write_npz(tmp_path, "bloodmnist.npz", channels=3, n_classes=8)
    dm = MedMNISTDataModule(root=str(tmp_path), flag="bloodmnist")
    dm.setup()
    assert (dm.task, dm.num_classes, dm.in_channels) == ("multi-class", 8, 3)


@pytest.mark.parametrize("kwargs,match", [
    ({"drop": "val_labels"}, "missing keys val_labels"),
    ({"labels_shape": (3,)}, r"labels have shape \(12, 3\)"),
    ({"n_classes": 3}, r"outside \[0, 1\]"),
    ({"size": 32}, r"images have shape \(12, 32, 32\)"),
    ({"channels": 3}, "1-channel"),
    ({"train_images": np.full((12, 28, 28), np.nan, np.float32)}, "NaN"),
    ({"test_labels": np.zeros(5, np.uint8)}, "6 images but 5 labels"),
])
def test_bad_inputs_raise_one_line_data_error(tmp_path, kwargs, match):
    path = write_npz(tmp_path, "pneumoniamnist.npz", **kwargs)
    dm = MedMNISTDataModule(root=str(tmp_path), flag="pneumoniamnist")
    with pytest.raises(DataError, match=match) as info:
        dm.setup()
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(MissingDataFileError, match=r"dermamnist\.npz not found .*medmnist\.com"):
        MedMNISTDataModule(root=str(tmp_path), flag="dermamnist").setup()
    (tmp_path / "octmnist.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        MedMNISTDataModule(root=str(tmp_path), flag="octmnist").setup()
    write_npz(tmp_path, "breastmnist.npz")
    with pytest.raises(DataError, match="data.num_classes=3"):
        MedMNISTDataModule(root=str(tmp_path), flag="breastmnist", num_classes=3).setup()


def test_table_and_resolver():
    assert len(MEDMNIST_INFO) == 10
    assert MEDMNIST_INFO["chestmnist"].num_classes == 14 and MEDMNIST_INFO["pathmnist"].channels == 3
    cfg = OmegaConf.create({"data": {"flag": "dermamnist", "as_rgb": False,
                                     "task": "${medmnist:${.flag},task}",
                                     "in_channels": "${medmnist:${.flag},in_channels,${.as_rgb}}",
                                     "num_classes": "${medmnist:${.flag},num_classes}"}})
    assert (cfg.data.task, cfg.data.in_channels, cfg.data.num_classes) == ("multi-class", 3, 7)


def test_digits_stratified_deterministic_split():
    dm = DigitsDataModule(seed=3, size=16)
    dm.setup()
    sizes = [len(d) for d in (dm.train_dataset, dm.val_dataset, dm.test_dataset)]
    assert sum(sizes) == 1797 and sizes[2] == 360
    counts = np.bincount(dm.test_dataset.targets, minlength=10)
    assert counts.min() >= 35  # stratified: ~36 per class
    item = dm.train_dataset[0]
    assert item["image"].shape == (1, 16, 16) and 0 <= item["image"].min() and item["image"].max() <= 1
    again = DigitsDataModule(seed=3)
    again.setup()
    assert np.array_equal(again.test_dataset.targets, dm.test_dataset.targets)
    with pytest.raises(DataError, match="val_fraction"):
        DigitsDataModule(val_fraction=0.0).setup()


@pytest.mark.realdata
@pytest.mark.parametrize("folder,flag,counts,channels", [
    ("medmnist-breastmnist", "breastmnist", (546, 78, 156), 1),
    ("medmnist-retinamnist", "retinamnist", (1080, 120, 400), 3),
])
def test_real_medmnist_files(folder, flag, counts, channels):
    root = SHARED / folder
    if not root.is_dir():
        pytest.skip(f"real data folder {root} is absent")
    dm = MedMNISTDataModule(root=str(root), flag=flag, batch_size=64)
    dm.setup()
    assert tuple(len(d) for d in (dm.train_dataset, dm.val_dataset, dm.test_dataset)) == counts
    assert dm.in_channels == channels
    assert set(np.unique(dm.test_dataset.targets)) == set(range(dm.num_classes))
    assert next(iter(dm.val_dataloader()))["image"].shape == (64, channels, 28, 28)


def test_medmnist_configs_resolve_whole(tmp_path):
    """Found by a review: ``+exp=medmnist --cfg job --resolve`` failed (the ``${medmnist:...}`` resolver returned a
    Python list for ``class_names``, which OmegaConf will not keep)."""
    from omegaconf import OmegaConf

    from tests.hydra_helpers import compose_run

    for exp in ("medmnist", "medmnist_decathlon"):
        cfg = compose_run([f"+exp={exp}"], tmp_path)
        OmegaConf.resolve(cfg)  # what --resolve does, in place
        assert "class_names:" in OmegaConf.to_yaml(cfg)
    assert list(compose_run(["+exp=medmnist"], tmp_path).data.class_names) == ["malignant", "normal, benign"]


def test_a_missing_shared_data_folder_says_how_the_configs_find_it(tmp_path):
    """Found by a walkthrough: ``+exp=fed_covid_datashare`` without the data said only that a relative folder did
    not exist; a folder of the shared real sets now says how the configs find them."""
    from datamodules.errors import missing_root

    said = str(missing_root(tmp_path / "../shared/data/covid-ct-ucsd-cropped", expected="class subfolders"))
    assert "does not exist (expected class subfolders); the configs read the real sets under $FEDMED_SHARED_DATA" in said
    assert str(missing_root(tmp_path / "mine")) == f"data.root {tmp_path / 'mine'} does not exist"


@pytest.mark.parametrize("flag", ["breastmnist", "bloodmnist"])  # in the table, and inferred from the file
def test_arrays_that_hold_no_numbers_are_one_line_naming_the_key(tmp_path, flag):
    """A security review: a MedMNIST file with string labels was numpy's _UFuncNoLoopError traceback."""
    path = write_npz(tmp_path, f"{flag}.npz", val_labels=np.array([["a"]] * 4))
    with pytest.raises(DataError, match=r"val_labels has dtype <U1") as info:
        MedMNISTDataModule(root=str(tmp_path), flag=flag).setup()
    assert str(path) in str(info.value) and "\n" not in str(info.value)
