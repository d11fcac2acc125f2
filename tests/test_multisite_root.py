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
