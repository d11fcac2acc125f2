"""Several sites (institutions) as one datamodule: the natural partition of a federated run.

:class:`MultiSiteDataModule` builds one datamodule per site (any ``_target_`` config, typically a
:class:`~datamodules.segmentation.VolumeSegmentationDataModule` over synthetic phantoms written with
different :class:`~datamodules.phantom_anatomy.SiteParams`), sets each up, and concatenates their train / val /
test sets. ``site_defaults`` (any site-config keys, e.g. ``_target_``, ``target``, ``image_size``) fill in what
a site does not set, so a user's own sites need only ``root`` and ``layout`` each
(``experiments/configs/data/multisite_custom.yaml``). Every concatenated dataset carries ``groups`` (the site name of each item, for the
``by_site`` partitioner and per-site test sets) and ``case_ids`` (``<site>/<case>``, so client
validation splits take whole cases). Sites must agree on ``num_classes`` and on being 3D or not.

3D sites (:class:`~datamodules.patches3d.PatchVolumeDataModule`, ``data/multisite_pancreas_3d.yaml``): an
item of a site's training set is a list of patches (each gets its ``<site>/<case>`` id), and batching comes
from the sites (:mod:`datamodules.loaders`: patches flattened for training, whole volumes one per batch for
evaluation, ``train_eval_dataset()`` the training cases as whole volumes). ``patch_size`` is every site's
patch (a site default, kept here so the 3D model configs read ``${data.patch_size}``).
"""
from __future__ import annotations

import bisect
import copy
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Callable

import numpy as np
import pytorch_lightning as pl
from hydra.utils import instantiate
from torch.utils.data import Dataset

from datamodules.collate import PadCollate
from datamodules.errors import DataError
from datamodules.loaders import SplitLoadersMixin, train_eval_dataset
from datamodules.subset import sample_cases
from datamodules.augmentation_checks import check_augmentation

__all__ = ["SiteConcat", "MultiSiteDataModule"]


def _check_sites_agree(sites: Mapping[str, Any], declared: Sequence[str] | None) -> None:
    """One :class:`DataError` when the sites' items cannot be one dataset: another input channel count or 2D
    size (a review: a pooled batch failed in torch's collate), or class names in another order (label 1 was liver
    at one site and spleen at another, merged silently). ``data.class_names`` says differing names mean the same
    labels (a spelling), which is then a warning naming them."""
    def differ(values: dict[str, Any]) -> bool:
        return len({repr(v) for v in values.values()}) > 1

    chans = {n: int(getattr(dm, "in_channels", 1)) for n, dm in sites.items()}
    if differ(chans):
        raise DataError(f"sites disagree on input channels: {chans}; give every site the same image channels")
    sizes = {n: getattr(dm, "image_size", None) for n, dm in sites.items()}
    if differ(sizes):
        raise DataError(f"sites disagree on data.sites.<site>.image_size: {sizes}; give every site one size "
                        f"(data.image_size)")
    names = {n: [str(c) for c in dm.class_names] for n, dm in sites.items()}
    orders = [*names.values(), *([list(declared)] if declared is not None else [])]
    if any(sorted(a) == sorted(b) and a != b for a in orders for b in orders):  # one set of names, reordered
        raise DataError(f"sites order their labels differently: {names}"
                        + (f" (data.class_names={list(declared)})" if declared is not None else "")
                        + "; a label must mean the same class at every site (reorder a site's labels)")
    if differ(names):
        if declared is None:
            raise DataError(f"sites name their labels differently: {names}; a label must mean the same class at "
                            f"every site (reorder a site's labels), or set data.class_names when the names only "
                            f"spell one class differently")
        warnings.warn(f"sites name their labels differently ({names}); data.class_names={list(declared)} says "
                      f"they are the same classes", stacklevel=3)


class SiteConcat(Dataset):
    """Concatenation of per-site datasets with ``groups`` (site per item) and ``case_ids``.
    Order is kept (site by site), so slices of a case stay contiguous for per-case metrics."""

    def __init__(self, datasets: Mapping[str, Dataset], pad_values: Mapping[str, float] | None = None) -> None:
        self.pad_values = dict(pad_values or {})  # per site, for items padded in a batch of mixed sizes
        self.names = list(datasets)
        self.datasets = [datasets[n] for n in self.names]
        self.offsets = np.cumsum([0] + [len(d) for d in self.datasets]).tolist()
        self.groups = np.concatenate([np.full(len(d), n, dtype=object) for n, d in zip(self.names, self.datasets)]
                                     ).astype(str) if self.datasets else np.empty(0, str)
        cases = []
        for n, d in zip(self.names, self.datasets):
            ids = sample_cases(d)
            cases.append(np.asarray([f"{n}/{c}" for c in ids]) if ids is not None
                         else np.asarray([f"{n}/{i}" for i in range(len(d))]))
        self.case_ids = np.concatenate(cases) if cases else np.empty(0, str)
        targets = [getattr(d, "targets", None) for d in self.datasets]
        if targets and all(t is not None for t in targets):
            self.targets = np.concatenate([np.asarray(t) for t in targets])
        self._summary: np.ndarray | None = None

    @property
    def label_summary(self) -> np.ndarray | None:
        """The sites' per-item label summaries (3D patch datasets), concatenated; None when a site has none."""
        if self._summary is None:
            parts = [getattr(d, "label_summary", None) for d in self.datasets]
            if not parts or any(p is None for p in parts):
                return None
            self._summary = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])
        return self._summary

    def restricted_to(self, classes: Sequence[int]) -> "SiteConcat":
        """The sites' datasets as a partially annotated client sees them (3D patches centred on ``classes``:
        :meth:`datamodules.patches3d.PatchDataset.restricted_to`); a site's dataset without such a view is kept."""
        view = copy.copy(self)
        view.datasets = [d.restricted_to(classes) if callable(getattr(d, "restricted_to", None)) else d
                         for d in self.datasets]
        return view

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, i: int) -> Any:
        if i < 0:
            i += len(self)
        s = bisect.bisect_right(self.offsets, i) - 1
        item = self.datasets[s][i - self.offsets[s]]
        if isinstance(item, list):  # 3D training: the patches of one volume
            return [self._named(x, self.names[s]) for x in item]
        return self._named(item, self.names[s])

    def _named(self, item: Any, site: str) -> Any:
        item = dict(item)
        if "case_id" in item:
            item["case_id"] = f"{site}/{item['case_id']}"
        if site in self.pad_values:
            item["pad_value"] = self.pad_values[site]
        return item


#: a key a site's own error names (``data.root ...``), to be named under the site (``data.sites.<site>.root``)
_KEY = re.compile(r"(?<![\w/.])data\.(?=[A-Za-z_]\w*[ =\[:,)])")


@contextmanager
def _named_site(name: str) -> Iterator[None]:
    """A site's :class:`DataError` names its keys under ``data.sites.<name>`` (a walkthrough: a missing site
    root was "data.root /data/a does not exist", naming no site), the error otherwise unchanged."""
    try:
        yield
    except DataError as err:
        message = (_KEY.sub(f"data.sites.{name}.", str(err)) if _KEY.search(str(err))
                   else f"data.sites.{name}: {err}")
        try:
            named = type(err)(message)  # the same kind (e.g. a missing MedMNIST file), named under its site
        except Exception:  # noqa: BLE001 - a subclass with another constructor: the plain kind
            named = DataError(message)
        raise named from err


def site_configs(sites: Mapping[str, Any], site_defaults: Mapping[str, Any] | None = None,
                 patch_size: Any = None) -> dict[str, Any]:
    """Each site's full config: ``data.site_defaults`` (and ``data.patch_size``) under the site's own keys. The
    one path for the datamodule, ``experiments.predict site=`` and a federated distillation's local arms (a
    walkthrough: predict read ``data.sites.<site>`` alone and failed on every run whose sites use defaults)."""
    empty = [str(k) for k, v in sites.items() if v is None]
    if empty:  # a review: data.sites.site_c=null was an AttributeError in prepare_data, and counted as a site
        raise DataError(f"data.sites.{empty[0]} is null: leave a site out with ~data.sites.{empty[0]}")
    defaults = dict(site_defaults or {})
    if patch_size is not None:
        defaults.setdefault("patch_size", [int(p) for p in patch_size])
    return {str(k): {**defaults, **v} if isinstance(v, Mapping) else v for k, v in sites.items()}


def sites_of(data: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`site_configs` of a plain ``data`` mapping (a multi-site run's ``data``, resolved): its ``sites``,
    ``site_defaults`` and ``patch_size``."""
    return site_configs(data["sites"], data.get("site_defaults"), data.get("patch_size"))


class MultiSiteDataModule(SplitLoadersMixin, pl.LightningDataModule):
    """One datamodule per site, concatenated (module docstring). ``sites``: site name -> config, each
    completed by ``site_defaults``. ``root``: the folder the site configs place their roots under
    (``${data.root}/<site>``); kept for them only. ``seed``: the training order and augmentation as functions of
    (seed, epoch, item) (:class:`datamodules.loaders.SplitLoadersMixin`), so a resumed centralised run draws what
    the uninterrupted one would have, as a single-site run and every federated client do (None: torch's global
    stream, which a resumed fit restarts)."""

    def __init__(self, sites: Mapping[str, Any], batch_size: int = 16, num_workers: int = 0,
                 site_defaults: Mapping[str, Any] | None = None, root: str | None = None,
                 patch_size: Any = None, class_names: Sequence[str] | None = None,
                 seed: int | None = None) -> None:
        super().__init__()
        self.declared_names = None if class_names is None else [str(n) for n in class_names]
        if not sites:
            raise DataError("data.sites is empty: give at least one site config")
        self.patch_size = None if patch_size is None else tuple(int(p) for p in patch_size)
        self.site_cfgs = site_configs(sites, site_defaults, patch_size)
        for name, c in self.site_cfgs.items():
            if isinstance(c, Mapping) and "_target_" not in c:
                raise DataError(f"data.sites.{name} has no _target_ (set it there or in data.site_defaults)")
        self.batch_size, self.num_workers, self.root = int(batch_size), int(num_workers), root
        self.seed = None if seed is None else int(seed)
        self._check_root_is_used()
        self._check_one_batch_size()
        self.sites: dict[str, pl.LightningDataModule] = {}
        self.train_dataset = self.val_dataset = self.test_dataset = None

    def _check_one_batch_size(self) -> None:
        """A site's ``batch_size`` must be ``data.batch_size``: the federation's clients, the centralised run and
        the standalone baselines all batch by ``data.batch_size``, and only a federated distillation's local arms
        built a site's own datamodule. A review: ``fed_kits_hlfd_claim`` set 4 per site and left 8 above, so its
        federated arms trained at 8 and its local arms at 4, silently."""
        for name, c in self.site_cfgs.items():
            size = c.get("batch_size") if isinstance(c, Mapping) else getattr(c, "batch_size", None)
            if size is not None and int(size) != self.batch_size:
                raise DataError(f"data.sites.{name}.batch_size={size} is not data.batch_size={self.batch_size}: every "
                                f"multi-site run batches by data.batch_size (its clients, centralised and standalone "
                                f"runs alike); set data.batch_size={size}, or drop the site's own")

    def _check_root_is_used(self) -> None:
        """``data.root`` moves the sites only where their roots are ``${data.root}/<site>`` (multisite_kits):
        ``+data.root=<folder>`` on sites with roots of their own (Hydra's advice when the key is absent) was
        taken and ignored, and the run trained on phantoms elsewhere (found by an audit)."""
        # sites come as configs (``_recursive_: false``) or as datamodules Hydra built already
        roots = [str(c.get("root") if isinstance(c, Mapping) else getattr(c, "root", None) or "")
                 for c in self.site_cfgs.values()]
        roots = [r for r in roots if r and r != "None"]
        base = os.path.abspath(str(self.root)) if self.root else None
        if base and roots and not any(os.path.abspath(r) == base or os.path.abspath(r).startswith(base + os.sep)
                                      for r in roots):
            raise DataError(f"data.root={self.root} is under no site's root (the sites read {', '.join(roots[:2])}"
                            f"{', ...' if len(roots) > 2 else ''}): set data.sites.<site>.root for each site "
                            "(data=multisite_custom shows how)")

    def prepare_data(self) -> None:
        for name, dm in self._build().items():
            with _named_site(name):
                dm.prepare_data()

    def _build(self) -> dict[str, pl.LightningDataModule]:
        if not self.sites:
            built = {}
            for n, c in self.site_cfgs.items():
                with _named_site(n):
                    if isinstance(c, Mapping) and c.get("augmentation") is not None:
                        check_augmentation(c["augmentation"])  # named under its site by _named_site
                    built[n] = instantiate(c, _convert_="all") if isinstance(c, Mapping) else c
            self.sites = built
        return self.sites

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        sites = self._build()
        for name, dm in sites.items():
            with _named_site(name):
                dm.prepare_data()
                dm.setup(stage)
        ncls = {n: int(dm.num_classes) for n, dm in sites.items()}
        if len(set(ncls.values())) != 1:
            raise DataError(f"sites disagree on num_classes: {ncls}")
        first = next(iter(sites.values()))
        self.num_classes, self.in_channels = next(iter(ncls.values())), int(getattr(first, "in_channels", 1))
        _check_sites_agree(sites, self.declared_names)
        self.class_names = list(first.class_names)
        if self.declared_names is not None:  # data.class_names: what the metrics and the partition table say
            if len(self.declared_names) != len(self.class_names):
                raise DataError(f"data.class_names={self.declared_names} names {len(self.declared_names)} classes "
                                f"but the sites have {len(self.class_names)} ({self.class_names})")
            # a review: data.sites.<site>.target=tumor under the shared [background, liver] was logged as liver
            from datamodules.segmentation import check_name_order

            labels = getattr(first, "classes", None)
            check_name_order(self.declared_names, self.class_names,
                             labels.values() if isinstance(labels, Mapping) else self.class_names,
                             f"site {next(iter(sites))}'s data")
            self.class_names = list(self.declared_names)
        dims = {n: "3D patches" if getattr(dm, "patch_size", None) is not None else "2D" for n, dm in sites.items()}
        if len(set(dims.values())) != 1:
            raise DataError(f"sites mix 2D and 3D data: {dims}; give every site the same datamodule kind")
        self.eval_batch_size = getattr(first, "eval_batch_size", None)
        # sites whose air differs after their own normalisation (nnU-Net's CT statistics per site) pad their own
        # items with it in a batch of mixed slice sizes (a review: every site got the first site's value)
        fills = {n: float(dm.fill_value()) for n, dm in sites.items() if callable(getattr(dm, "fill_value", None))}
        collate = first.collate_fn(True) if callable(getattr(first, "collate_fn", None)) else None
        pads = fills if isinstance(collate, PadCollate) and len(set(fills.values())) > 1 else None
        self.train_dataset, self.val_dataset, self.test_dataset = (
            SiteConcat({n: getattr(dm, f"{s}_dataset") for n, dm in sites.items()}, pads)
            for s in ("train", "val", "test"))
        self._train_eval = SiteConcat({n: train_eval_dataset(dm) for n, dm in sites.items()}, pads)

    def collate_fn(self, train: bool) -> Callable[[list], Any] | None:
        """The sites' own batching (they agree on 2D / 3D)."""
        fn = getattr(next(iter(self._build().values())), "collate_fn", None)
        return fn(train) if callable(fn) else None

    def train_eval_dataset(self) -> SiteConcat | None:
        return getattr(self, "_train_eval", None)

    def every_slice_of(self, val_items: Sequence[int], train_items: Sequence[int]) -> SiteConcat | None:
        """:meth:`datamodules.slices.SliceDataModule.every_slice_of` per site (indices into ``train_dataset``,
        site by site); None unless every site concerned can give it."""
        t, sites = self.train_dataset, self._build()
        if not isinstance(t, SiteConcat) or not len(val_items):
            return None
        parts: dict[str, Any] = {}
        for k, name in enumerate(t.names):
            lo, hi = t.offsets[k], t.offsets[k + 1]
            val = [int(i) - lo for i in val_items if lo <= int(i) < hi]
            if not val:
                continue
            fn = getattr(sites[name], "every_slice_of", None)
            part = fn(val, [int(i) - lo for i in train_items if lo <= int(i) < hi]) if callable(fn) else None
            if part is None:
                return None
            parts[name] = part
        return SiteConcat(parts, t.pad_values or None)

    @property
    def site_names(self) -> list[str]:
        return list(self.site_cfgs)
