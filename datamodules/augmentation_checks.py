"""Checks of ``data.augmentation`` (a slice datamodule's albumentations pipeline, :mod:`datamodules.transforms`).

Two stages, each one line naming the item at fault (:class:`DataError`):

* :func:`check_augmentations`, before Hydra builds anything: every ``_target_`` in the pipeline, however nested
  (``transforms`` of a compose, ``first``/``second`` of ``OneOrOther``, any argument), must be an albumentations
  transform class (:func:`lightning_modules.targets.is_augmentation`), with arguments it takes and values it
  accepts. A walkthrough found a typo in a class to be Hydra's multi-line error and one in an argument only a
  warning; a review, ``OneOrOther``'s children built unchecked (``Lambda`` included).
* :func:`probe_augmentation`, once the data is read: the pipeline is drawn a few times on a real training slice.
  albumentations takes float images as values in [0, 1]: on ``out_range: [-1, 1]`` or ``normalization: ct`` data
  its intensity transforms clipped the slices (``GaussianBlur``, ``RandomBrightnessContrast``) or made NaN
  (``RandomGamma``) without a word; a crop larger than the slice failed in the first batch as a traceback, and
  ``Resize`` trained at another size than the net was validated at (a review).
"""
from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from datamodules.errors import DataError

#: draws of the pipeline on one training slice (its probability-p transforms are met in some of them)
PROBE_DRAWS = 8


def check_augmentations(data: Mapping[str, Any]) -> None:
    """:func:`check_augmentation` on a data config's ``augmentation``, its ``site_defaults``' and each site's (a
    multi-site datamodule's sites are built by Hydra with it)."""
    sites = data.get("sites")
    if isinstance(sites, Mapping) and data.get("augmentation") is not None:
        raise DataError("data.augmentation: a multi-site datamodule takes its pipeline per site "
                        "(data.sites.<site>.augmentation) or for every site (data.site_defaults.augmentation)")
    check_augmentation(data.get("augmentation"))
    defaults = data.get("site_defaults")
    if isinstance(defaults, Mapping):
        check_augmentation(defaults.get("augmentation"), "data.site_defaults.augmentation")
    for name, site in (sites.items() if isinstance(sites, Mapping) else ()):
        if isinstance(site, Mapping):
            check_augmentation(site.get("augmentation"), f"data.sites.{name}.augmentation")


def check_augmentation(items: Any, what: str = "data.augmentation") -> None:
    """``items`` (a list of ``{_target_: albumentations.<Transform>, ...}``, or null) before Hydra builds it."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(items, (DictConfig, ListConfig)):
        items = OmegaConf.to_container(items, resolve=True)
    if items is None:
        return
    if not isinstance(items, (list, tuple)):
        raise DataError(f"{what}={items!r} must be a list of albumentations transforms "
                        f"([{{_target_: albumentations.HorizontalFlip, p: 0.5}}, ...]) or null")
    for i, item in enumerate(items):
        if isinstance(item, str):
            raise DataError(f"{what}[{i}]={item!r} is a name, not a transform config: write {{_target_: {item}}}")
        _check_item(item, f"{what}[{i}]")


def _check_item(item: Any, where: str) -> None:
    """One transform config: its class, its arguments, every nested transform, then its values (by building it,
    once everything inside it is known to be a transform)."""
    from hydra.errors import InstantiationException
    from hydra.utils import get_class, instantiate

    from lightning_modules.targets import is_augmentation

    target = item.get("_target_") if isinstance(item, Mapping) else None
    if not is_augmentation(target, where):
        raise DataError(f"{where}: {target or item!r} is not an albumentations transform "
                        f"(each item: {{_target_: albumentations.<Transform>, ...}}; Lambda is not built)")
    params = inspect.signature(get_class(target)).parameters
    unknown = sorted(k for k in item if k != "_target_" and k not in params)
    if unknown:
        raise DataError(f"{where} ({target}) takes no {', '.join(unknown)}; it takes "
                        f"{', '.join(k for k in params if k not in ('args', 'kwargs'))}")
    if "transforms" in item:  # Compose, OneOf, SomeOf, Sequential: a list of transforms
        check_augmentation(item["transforms"], f"{where}.transforms")
    for key, value in item.items():
        if key not in ("_target_", "transforms"):
            for inner, inner_where in _nested_targets(value, f"{where}.{key}"):
                _check_item(inner, inner_where)
    try:  # a value it refuses (p: high): albumentations' pydantic message, on one line
        instantiate(item)
    except InstantiationException as err:
        why = " ".join(str(err.__cause__ or err).split()).split(" For further information")[0]
        raise DataError(f"{where} ({target}): {why[:300]}") from err


def _nested_targets(value: Any, where: str) -> Iterator[tuple[Mapping[str, Any], str]]:
    """The ``_target_`` mappings inside an argument's value (``first: {_target_: ...}``), with where they are."""
    if isinstance(value, Mapping):
        if "_target_" in value:
            yield value, where
            return
        for key, inner in value.items():
            yield from _nested_targets(inner, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, inner in enumerate(value):
            yield from _nested_targets(inner, f"{where}[{i}]")


def probe_augmentation(augment: Any, image: np.ndarray, mask: np.ndarray, what: str = "data.augmentation") -> None:
    """Draw ``augment`` (a :class:`~datamodules.transforms.SliceAugment`, copied: the run's draws are untouched)
    :data:`PROBE_DRAWS` times on one training slice; one line where a draw fails, changes the slice's size,
    makes non-finite values or new labels, or clips values outside [0, 1]."""
    probe = copy.deepcopy(augment)
    lo, hi = float(np.min(image)), float(np.max(image))
    seen = f"a training slice ({'x'.join(map(str, image.shape))}, values [{lo:.2f}, {hi:.2f}])"
    size_hint = "leave the size to data.image_size (Resize, crops to another size)"
    range_hint = ("albumentations' intensity transforms take float images in [0, 1]: use data.out_range=[0, 1] "
                  "with data.normalization=window, or transforms that keep values (geometric ones)")
    labels = set(np.unique(mask).tolist()) | {0}
    for out, out_mask in _draws(probe.compose, lambda: probe.apply(image, mask), seen, what):
        if np.shape(out) != np.shape(image) or np.shape(out_mask) != np.shape(mask):
            raise DataError(f"{what} makes {seen} {'x'.join(map(str, np.shape(out)))} (mask "
                            f"{'x'.join(map(str, np.shape(out_mask)))}); validation and test see it unchanged: "
                            f"{size_hint}")
        if not np.all(np.isfinite(out)):
            raise DataError(f"{what} makes NaN or inf values of {seen}; {range_hint}")
        extra = set(np.unique(out_mask).tolist()) - labels
        if extra:
            raise DataError(f"{what} makes mask values {sorted(extra)} that {seen}'s mask does not hold (a mask "
                            f"interpolation other than nearest?)")
        if _clipped(image, out):
            raise DataError(f"{what} clips {seen} into [0, 1]; {range_hint}")


def _clipped(image: np.ndarray, out: np.ndarray) -> bool:
    """Whether values of ``image`` outside [0, 1] came out pinned at 0 or 1: none left beyond the bound, and at
    least 1% of the pixels exactly on it (a zoom into bright tissue alone loses its negatives without that)."""
    pinned = max(1, out.size // 100)
    below = np.min(image) < 0 and np.min(out) >= 0 and int(np.sum(out == 0)) >= pinned
    above = np.max(image) > 1 and np.max(out) <= 1 and int(np.sum(out == 1)) >= pinned
    return bool(below or above)


def probe_image_transform(transform: Any, image: np.ndarray, what: str = "data.augmentation") -> None:
    """A classification pipeline drawn :data:`PROBE_DRAWS` times on one training image (HWC float in [0, 1], as
    the dataset hands it over; the image is resized after it, so a size change is allowed): one line where a
    draw fails, makes non-finite values or changes the channels."""
    probe = copy.deepcopy(transform)
    seen = f"a training image ({'x'.join(map(str, image.shape))})"
    for out in _draws(probe, lambda: probe(image=image)["image"], seen, what):
        if not np.all(np.isfinite(out)):
            raise DataError(f"{what} makes NaN or inf values of {seen}")
        if np.ndim(out) != 3 or np.shape(out)[2] != image.shape[2]:
            raise DataError(f"{what} makes {seen} {'x'.join(map(str, np.shape(out)))}: the net takes "
                            f"{image.shape[2]} channel(s) (data.in_channels)")


def _draws(compose: Any, apply: Callable[[], Any], seen: str, what: str) -> Iterator[Any]:
    """``apply()``'s output for each of :data:`PROBE_DRAWS` seeds of ``compose`` (a copy of the run's); a draw
    that raises is one line naming ``seen``; numpy's and albumentations' warnings are kept quiet (a NaN is the
    caller's one line)."""
    from datamodules.transforms import seed_albumentations

    for draw in range(PROBE_DRAWS):
        seed_albumentations(compose, draw)
        try:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = apply()
        except Exception as err:  # noqa: BLE001 - any failure of the user's pipeline is the config's
            raise DataError(f"{what} fails on {seen}: {type(err).__name__}: "
                            f"{' '.join(str(err).split())[:200]}") from None
        yield out

