"""``data.root`` on a multi-site config: it must move the sites, or be refused in one line naming it
(``+data.root=<folder>``, Hydra's advice when the key is absent, was taken and ignored: the run trained on
phantoms elsewhere)."""
from __future__ import annotations

import pytest

from datamodules.errors import DataError
from datamodules.multisite import MultiSiteDataModule

SITE = {"_target_": "datamodules.segmentation.VolumeSegmentationDataModule", "layout": "lits"}


def test_a_root_no_site_reads_is_refused():
    sites = {"a": {**SITE, "root": "/data/fed_lits/a"}, "b": {**SITE, "root": "/data/fed_lits/b"}}
    with pytest.raises(DataError, match=r"data.root=/tmp/mine is under no site's root .*/data/fed_lits/a"):
        MultiSiteDataModule(sites, root="/tmp/mine")


def test_a_root_the_sites_sit_under_is_taken():
    sites = {"a": {**SITE, "root": "/tmp/mine/site_a"}, "b": {**SITE, "root": "/tmp/mine/site_b"}}
    assert MultiSiteDataModule(sites, root="/tmp/mine/").root == "/tmp/mine/"
    assert MultiSiteDataModule(sites).root is None  # no data.root: nothing to check
    with pytest.raises(DataError):  # a prefix of a folder's name is not that folder
        MultiSiteDataModule(sites, root="/tmp/min")


def test_the_default_multisite_configs_refuse_a_root_their_sites_ignore(tmp_path):
    """The configs whose sites Hydra builds before the datamodule sees them (multisite_lits, ...): the review
    of the first fix found it looked at site configs only, so these still took ``+data.root`` and ignored it."""
    from hydra.errors import InstantiationException

    from engine.builders import build_datamodule
    from engine.errors import find_user_error
    from tests.hydra_helpers import compose_run

    cfg = compose_run(["+exp=fed_lits_dnet", f"+data.root={tmp_path / 'mine'}"], tmp_path)
    with pytest.raises(InstantiationException) as info:
        build_datamodule(cfg.data)
    assert isinstance(find_user_error(info.value), DataError)  # experiments.run shows it as one line, exit 2
    assert "data.root=" in str(find_user_error(info.value))
    kits = compose_run(["+exp=fed_kits_hlfd", f"data.root={tmp_path / 'kits'}"], tmp_path)  # sites under it
    assert build_datamodule(kits.data).root == str(tmp_path / "kits")


def test_relative_roots_are_compared_as_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sites = {"a": {**SITE, "root": "mine/a"}}
    assert MultiSiteDataModule(sites, root="./mine").root == "./mine"


def test_a_sites_own_error_names_the_site(tmp_path):
    """A walkthrough: a missing site folder was "data.root /data/a does not exist", naming no site; its keys are
    now named under ``data.sites.<site>``, the error's kind kept."""
    sites = {"a": {**SITE, "root": str(tmp_path / "missing_a")}}
    dm = MultiSiteDataModule(sites)
    with pytest.raises(DataError, match=r"^data\.sites\.a\.root .*missing_a does not exist"):
        dm.setup()


def test_each_site_pads_with_its_own_air(tmp_path):
    """A review: with mixed slice sizes (``image_size=null``) and nnU-Net's CT normalisation per site, every
    site's slices were padded with the first site's air value; each item now carries its site's."""
    import torch

    from datamodules.collate import PadCollate
    from datamodules.synthetic import write_phantom_dataset

    sites = {}
    for name, (seed, shift) in {"a": (0, 0.0), "b": (1, 300.0)}.items():
        root = tmp_path / name
        write_phantom_dataset(root, "lits", n_cases=4, shape=(32, 24 - 8 * seed, 6), seed=seed)
        sites[name] = {**SITE, "root": str(root), "normalization": "ct", "image_size": None,
                       "ct_stats": [-100.0 - shift, 200.0, 50.0 + shift, 40.0 + seed * 10], "val_fraction": 0.25,
                       "test_fraction": 0.25}
    dm = MultiSiteDataModule(sites)
    dm.setup()
    fills = {n: d.fill_value() for n, d in dm.sites.items()}
    assert fills["a"] != fills["b"]
    collate = dm.collate_fn(True)
    assert isinstance(collate, PadCollate)
    ds = dm.train_dataset
    items = [ds[0], ds[len(ds) - 1]]                                   # one of each site, sizes differ
    assert [it["pad_value"] for it in items] == [fills["a"], fills["b"]]
    batch = collate(items)
    assert "pad_value" not in batch
    for j, site in enumerate(("a", "b")):
        padded = batch["image"][j][..., ~batch["valid"][j]]
        assert padded.numel() and torch.allclose(padded, torch.tensor(fills[site]))


@pytest.mark.parametrize("exp", ["+exp=lits_dnet", "+exp=medmnist_breast"])
def test_a_null_data_root_is_one_line_naming_it(tmp_path, exp):
    """A walkthrough: ``data.root=null`` was Hydra's "Error in call to target ... TypeError(... NoneType)",
    naming no key."""
    from engine.builders import ConfigError, build_datamodule
    from tests.hydra_helpers import compose_run

    cfg = compose_run([exp, "data.root=null"], tmp_path)
    with pytest.raises(ConfigError, match=r"^data\.root is null but \w+DataModule needs it"):
        build_datamodule(cfg.data)


def test_a_site_batch_size_other_than_data_batch_size_is_refused(tmp_path):
    """A review: every multi-site run batches by ``data.batch_size``, but a federated distillation's local arms
    built a site's own datamodule with the site's ``batch_size``: ``fed_kits_hlfd_claim`` set 4 per site, so its
    federated arms trained at 8 and its local arms at 4. A site's own size must now be data.batch_size (the
    shipped configs interpolate it), so ``data.batch_size=4`` sets every arm's."""
    from hydra.errors import InstantiationException

    from engine.builders import build_datamodule
    from engine.errors import find_user_error
    from tests.hydra_helpers import compose_run

    with pytest.raises(DataError, match=r"data.sites.b.batch_size=4 is not data.batch_size=8"):
        MultiSiteDataModule({"a": dict(SITE), "b": {**SITE, "batch_size": 4}}, batch_size=8)
    cfg = compose_run(["+exp=fed_kits_hlfd", "data.sites.site_b.batch_size=4"], tmp_path)
    with pytest.raises(InstantiationException) as info:
        build_datamodule(cfg.data)
    assert "data.sites.site_b.batch_size=4 is not data.batch_size=8" in str(find_user_error(info.value))
    dm = build_datamodule(compose_run(["+exp=fed_kits_hlfd_claim"], tmp_path).data)
    assert dm.batch_size == 4 and {s.batch_size for s in dm.site_cfgs.values()} == {4}


class _Site:
    """A built site's face as the multi-site datamodule reads it (no data behind it)."""

    def __init__(self, names=("background", "liver", "spleen"), channels=1, size=64):
        self.class_names, self.num_classes, self.in_channels, self.image_size = list(names), len(names), channels, size
        self.train_dataset = self.val_dataset = self.test_dataset = []

    def prepare_data(self):
        pass

    def setup(self, stage=None):
        pass


def test_sites_whose_labels_mean_other_classes_are_refused():
    """A review: only the class count was compared, so an MSD site labelled [liver, spleen] and another labelled
    [spleen, liver] were merged under the first site's names (label 1 was liver at one site, spleen at the
    other). Another input channel count or 2D size failed later, in torch's collate."""
    swapped = {"a": _Site(), "b": _Site(("background", "spleen", "liver"))}
    for declared in (None, ["background", "liver", "spleen"]):  # the shipped configs declare class_names
        with pytest.raises(DataError, match=r"sites order their labels differently: .*'b': \['background', 'spl"):
            MultiSiteDataModule(swapped, class_names=declared).setup()
    with pytest.raises(DataError, match=r"order their labels differently: .*data.class_names=\['background', 'sp"):
        MultiSiteDataModule({"a": _Site()}, class_names=["background", "spleen", "liver"]).setup()
    with pytest.raises(DataError, match=r"sites name their labels differently: .*'b': \['background', 'kidney'"):
        MultiSiteDataModule({"a": _Site(), "b": _Site(("background", "kidney", "spleen"))}).setup()
    with pytest.raises(DataError, match=r"sites disagree on input channels: \{'a': 1, 'b': 3\}"):
        MultiSiteDataModule({"a": _Site(), "b": _Site(channels=3)}).setup()
    with pytest.raises(DataError, match=r"image_size: \{'a': 64, 'b': 32\}"):
        MultiSiteDataModule({"a": _Site(), "b": _Site(size=32)}).setup()
    spelt = {"a": _Site(("background", "tumour")), "b": _Site(("background", "tumor"))}
    with pytest.warns(UserWarning, match="sites name their labels differently"):  # declared: the same classes
        dm = MultiSiteDataModule(spelt, class_names=["background", "tumour"])
        dm.setup()
    assert dm.class_names == ["background", "tumour"]
    same = MultiSiteDataModule({"a": _Site(), "b": _Site()})
    same.setup()
    assert same.class_names == ["background", "liver", "spleen"] and same.in_channels == 1
