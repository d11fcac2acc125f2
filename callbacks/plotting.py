"""Small shared helpers for figure callbacks: Agg backend, atomic PNG save, W&B image logging."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
# figure text never parses as mathtext: labels and titles come from run folders (an audit's
# ``$\undefinedcmd{x}$`` in an override ended a report in matplotlib's ValueError); ours use no math
matplotlib.rcParams["text.parse_math"] = False
import matplotlib.pyplot as plt  # noqa: E402
import pytorch_lightning as pl  # noqa: E402

from lightning_modules.atomic import atomic_output  # noqa: E402


def save_figure(fig: "plt.Figure", path: str | Path, dpi: int = 110) -> Path:
    """Save ``fig`` to ``path`` atomically (:func:`~lightning_modules.atomic.atomic_output`) and close it."""
    path = Path(path)
    try:
        with atomic_output(path, ".png") as tmp:  # ".png": savefig picks the format by the temp name's extension
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def run_dir(trainer: pl.Trainer) -> Path:
    return Path(trainer.default_root_dir)


def same_size(images: list) -> list:
    """PIL images padded (white, bottom/right) to the largest width and height among them: W&B shows the
    images of one key at the first one's size and warns "Images sizes do not match" otherwise."""
    from PIL import Image

    width, height = max(im.width for im in images), max(im.height for im in images)
    out = []
    for im in images:
        if im.size != (width, height):
            canvas = Image.new(im.mode, (width, height), "white")
            canvas.paste(im, (0, 0))
            im = canvas
        out.append(im)
    return out


def log_images(trainer: pl.Trainer, key: str, paths: list[Path], captions: list[str] | None = None) -> None:
    """Log PNGs to every W&B logger attached to the trainer (no-op without one); several under one key are padded
    to one size (W&B warns otherwise), the files are left as they are."""
    wandb_loggers = [lg for lg in trainer.loggers if type(lg).__name__ == "WandbLogger"]
    if not wandb_loggers:
        return
    images: list = [str(p) for p in paths]
    if len(paths) > 1:
        from PIL import Image

        opened = []
        for p in paths:
            with Image.open(p) as im:
                opened.append(im.convert("RGB"))
        images = same_size(opened)
    for lg in wandb_loggers:
        kwargs = {"caption": captions} if captions else {}
        lg.log_image(key=key, images=images, **kwargs)
