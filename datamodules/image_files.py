"""2D image and mask files as arrays (PNG, JPG or NPY): how training (:mod:`datamodules.folder2d`) and predict
(:mod:`engine.predict_images`) read them alike. A file is data, never code (NPY without pickles)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.errors import DataError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".npy")


def _read(path: Path) -> np.ndarray:
    """Image file -> array ([H, W] or [H, W, C]); one-line DataError when unreadable."""
    return _read_file(path, labels=False)[0]


def _read_file(path: Path, labels: bool) -> tuple[np.ndarray, bool]:
    """``(array, is a palette image)``; a palette PNG read as ``labels`` gives its indices (the classes), not
    their colours."""
    try:
        if path.suffix.lower() == ".npy":
            x = np.load(path, allow_pickle=False)  # a file is data, never code
            if x.dtype.kind not in "biuf":  # text: its astype(float32) was a traceback (an audit)
                raise DataError(f"image file {path} has dtype {x.dtype}, expected numbers")
            return _channels_last(x, path), False
        with Image.open(path) as im:
            if labels and im.mode == "P":
                return np.asarray(im), True
            if im.mode.startswith("I;16"):  # 16-bit grey: uint16, whatever the byte order on disk
                return np.asarray(im).astype(np.uint16), False
            if im.mode == "I":  # 32-bit integer grey, how some Pillow versions open a 16-bit PNG
                return np.asarray(im).astype(np.uint16 if im.format == "PNG" else np.int32), False
            if labels and im.mode in ("RGBA", "LA"):  # a label may sit in the alpha channel (data.mask_channel)
                return np.asarray(im), False
            return np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB", "F") else im), False
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read image file {path}: {type(exc).__name__}: {exc}") from None


def _channels_last(x: np.ndarray, path: Path) -> np.ndarray:
    """[H, W], [H, W, C] or [C, H, W] (C <= 4, as ``np.save`` of a torch-style array gives) -> [H, W(, C)]."""
    if x.ndim == 3 and x.shape[-1] > 4 and x.shape[0] <= 4:
        x = np.moveaxis(x, 0, -1)
    if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[-1] > 4):
        raise DataError(f"image file {path} has shape {x.shape}, expected [H, W], [H, W, C] or [C, H, W] with C <= 4")
    return x


#: how image files are read into what a net trains on; a fix that changes it retires cached teachers
#: (``engine.distill.teacher_key``). 2: NPY kept as stored whatever its dtype (uint16 was divided by 65535)
IMAGE_FILE_FORMAT = 2
#: what an 8- or 16-bit PNG/JPEG's grey levels are divided by: its bit depth's maximum (NPY is kept as stored)
_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def load_image(path: Path) -> np.ndarray:
    """Grey float32 [H, W]: RGB(A) converted with ITU-R 601 luma weights; 8- and 16-bit PNG/JPEG scaled to [0, 1]
    by their bit depth; NPY kept as stored, whatever its dtype (HU, HU + 1024 in uint16, already normalised): a
    2D review found uint16 NPY divided by 65535, so a ``window`` in its stored units made every image 0."""
    x = _read(path)
    scale = 1.0 if path.suffix.lower() == ".npy" else 1.0 / _SCALE.get(x.dtype, 1.0)
    x = x.astype(np.float32)
    if x.ndim == 3:
        x = x[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32) if x.shape[-1] >= 3 else x[..., 0]
    return x * scale


def decode_mask(path: Path, threshold: float | None, channel: int | None,
                label_map: Mapping[int, int] | None) -> np.ndarray:
    """Mask file -> uint8 labels [H, W]: pick ``channel`` (else the first one), then ``label_map``
    (pixel value -> class; unmapped values are an error) or ``value > threshold`` or the raw values. A
    palette PNG's indices are its labels: no channel or threshold applies (``label_map`` does)."""
    m, palette = _read_file(path, labels=True)
    if palette:
        threshold = None
    if m.ndim == 3:
        colour = m[..., : 3 if m.shape[-1] >= 3 else 1].astype(np.int64)
        if channel is None and colour.shape[-1] > 1 and np.abs(colour - colour[..., :1]).max() > 32:
            # a 2D data review: liver in green, tumour in red decoded channel 0 alone, and the liver was background
            raise DataError(f"mask {path} is in colour (its channels differ): data.mask_channel=<0|1|2> picks the "
                            f"channel that holds the labels (colour-coded classes are not decoded)")
        c = 0 if channel is None else channel
        if c >= m.shape[-1]:
            raise DataError(f"data.mask_channel={c} but mask {path} has {m.shape[-1]} channels")
        m = m[..., c]
    if label_map is not None or threshold is None:
        m = _integral_labels(m, path)
    if label_map is not None:
        values = np.unique(m)
        bad = [v for v in values.tolist() if int(v) not in label_map]
        if bad:
            raise DataError(f"mask {path} has values {bad[:10]} missing from data.label_map")
        if any(int(k) < 0 for k in label_map) or values.min() < 0:  # a table indexed by -1 wrote its last entry
            raise DataError(f"data.label_map / mask {path}: negative mask values are not supported "
                            f"({sorted(int(k) for k in label_map if int(k) < 0) or int(values.min())})")
        lut = np.zeros(int(values.max()) + 1, np.uint8)
        for k, v in label_map.items():
            if int(k) < len(lut):
                lut[int(k)] = int(v)
        return lut[m.astype(np.int64)]
    if threshold is not None:
        top = float(m.max()) if m.size else 0.0
        if 0 < top <= threshold:  # a verification: 0/1 masks among 0/255 ones trained as blank labels, exit 0
            raise DataError(f"mask {path} has values up to {top:g}, all at or below data.mask_threshold="
                            f"{threshold:g}: it would decode as background (binary 0/1 masks need "
                            f"data.mask_threshold=0; label masks 0/1/2.. need data.mask_threshold=null)")
        return (m > threshold).astype(np.uint8)
    if m.size and (m.min() < 0 or m.max() > 255):  # uint8 would wrap 256 to 0 without a word (a review)
        raise DataError(f"mask {path} has values in [{m.min()}, {m.max()}]: labels must lie in [0, 255] "
                        f"(data.label_map maps other values)")
    return m.astype(np.uint8)


def _integral_labels(m: np.ndarray, path: Path) -> np.ndarray:
    """A float mask's values rounded to the nearest label, one :class:`DataError` when one is not a label (more
    than 1e-3 off). A review: ``0.99999994`` (float round-off in a saved NPY) became background, ``1.9999999``
    class 1, by truncation toward zero."""
    if not np.issubdtype(m.dtype, np.floating):
        return m
    if not np.isfinite(m).all():
        raise DataError(f"mask {path} has NaN or infinite values")
    rounded = np.rint(m)
    off = np.abs(m - rounded)
    if off.size and float(off.max()) > 1e-3:
        raise DataError(f"mask {path} has non-integer values (e.g. {float(m.flat[int(off.argmax())]):g}): labels "
                        f"must be whole numbers (data.mask_threshold binarises a soft mask)")
    return rounded.astype(np.int64)


def strip_suffix(stem: str, suffix: str) -> str:
    """A file stem without ``data.image_suffix``/``mask_suffix`` (``c1_img`` -> ``c1``): how images and masks
    pair up, in training and predict."""
    return stem[: len(stem) - len(suffix)] if suffix and stem.endswith(suffix) else stem
