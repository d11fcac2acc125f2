"""Bring your own sites (issue 11 §4): data/multisite_custom (site name -> root + layout) with by_site gives one
client per site, named by the site everywhere: partition report, client store, logged metric keys."""
from __future__ import annotations

import csv

from experiments.run import dispatch
from federation.store import ClientStore
from tests.hydra_helpers import compose_run

SITES = {"hospital_a": "lits", "hospital_b": "kits", "hospital_c": "msd"}


def test_custom_sites_are_named_the_same_everywhere(tmp_path):
    ov = ["+exp=fed_lits_dnet", "data=multisite_custom", "logger=csv", "model.width=4", "federation.rounds=1",
          "federation.local_epochs=1", "federation.progress=false", "trainer.limit_train_batches=2",
          "data.site_defaults.image_size=32", "data.site_defaults.test_fraction=0.34"]
    for i, (site, layout) in enumerate(SITES.items()):
        ov += [f"data.sites.{site}.root={tmp_path / 'sites' / site}",
               f"+data.sites.{site}.synthetic={{n_cases: 3, shape: [32, 32, 6], seed: {i + 1}, layout: {layout}}}"]
    cfg = compose_run(ov, tmp_path)
    metrics = dispatch(cfg)
    run = tmp_path / "run"
    assert metrics["fed/num_clients"] == 3
    report = (run / "partition.md").read_text()
    rows = [ln.split("|")[1].strip() for ln in report.splitlines() if ln.startswith("| hospital")]
    assert rows == list(SITES)
    assert ClientStore(run / "client_store").index() == list(SITES)
    with open(run / "csv" / "metrics.csv", newline="") as fh:
        header = next(csv.reader(fh))
    for site in SITES:
        assert any(h.startswith(f"client/{site}/") for h in header), site
