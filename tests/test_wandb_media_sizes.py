"""Images logged to W&B under one key have one size: W&B shows a key's images at the first one's size and
warned "Images sizes do not match" (`make demo`, when ``test/curves`` held the ROC and learning-curve PNGs)."""
from __future__ import annotations

import types

import numpy as np
from PIL import Image

from callbacks.plotting import log_images
from callbacks.wandb_media import overlay_images


class WandbLogger:  # matched by class name, as callbacks.plotting does
    def __init__(self) -> None:
        self.logged: list = []

    def log_image(self, key, images, **kwargs) -> None:
        self.logged.append((key, images, kwargs))


def test_pngs_of_different_sizes_are_logged_padded_to_one_size_and_the_files_untouched(tmp_path):
    paths = [tmp_path / "roc.png", tmp_path / "curves.png"]
    Image.new("RGB", (40, 30), "red").save(paths[0])
    Image.new("RGBA", (25, 50), "blue").save(paths[1])
    lg = WandbLogger()
    log_images(types.SimpleNamespace(loggers=[lg]), "test/curves", paths)
    (key, images, _), = lg.logged
    assert key == "test/curves" and [im.size for im in images] == [(40, 50), (40, 50)]
    assert images[0].getpixel((0, 0)) == (255, 0, 0) and images[0].getpixel((39, 49)) == (255, 255, 255)
    assert [Image.open(p).size for p in paths] == [(40, 30), (25, 50)]
    log_images(types.SimpleNamespace(loggers=[lg]), "one", paths[:1])  # a single PNG goes by its path
    assert lg.logged[-1][1] == [str(paths[0])]


def test_overlay_slices_of_mixed_sizes_are_one_size_with_aligned_mask_layers():
    g = np.random.default_rng(0)
    picked = [(f"c{i}", g.random((h, w)), np.ones((h, w), int), np.zeros((h, w), int))
              for i, (h, w) in enumerate([(20, 30), (24, 16)])]
    images = overlay_images(types.SimpleNamespace(picked=picked), {0: "background", 1: "liver"})
    assert [im.image.size for im in images] == [(24, 30), (24, 30)]  # PIL: (width, height)
    for im in images:
        for layer in im._masks.values():
            assert layer._val["mask_data"].shape == (30, 24)
    truth = images[1]._masks["ground_truth"]._val["mask_data"]
    assert truth.sum() == 24 * 16  # padding is background


def test_roc_points_are_sampled_over_distinct_points_ends_kept():
    """A review: sampling the raw thresholds by index put 86 of 200 points at (0, 0)."""
    from callbacks.wandb_media import roc_points

    fpr = np.r_[np.zeros(500), np.linspace(0, 1, 101)]
    tpr = np.r_[np.zeros(500), np.sqrt(np.linspace(0, 1, 101))]
    x, y = roc_points(fpr, tpr, 20)
    assert len(x) == 20 and (x[0], y[0]) == (0.0, 0.0) and (x[-1], y[-1]) == (1.0, 1.0)
    assert len(set(zip(x.tolist(), y.tolist()))) == 20
    x, y = roc_points([0.0, 1.0], [0.0, 1.0], 200)
    assert x.tolist() == [0.0, 1.0]
