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
    assert report.startswith("# Partition: by_site (one client per site), 3 clients")  # not the function's name
    rows = [ln.split("|")[1].strip() for ln in report.splitlines() if ln.startswith("| hospital")]
    assert rows == list(SITES)
    assert ClientStore(run / "client_store").index() == list(SITES)
    with open(run / "csv" / "metrics.csv", newline="") as fh:
        header = next(csv.reader(fh))
    for site in SITES:
        assert any(h.startswith(f"client/{site}/") for h in header), site


class _SiteNodes:
    """Stands in for the hospitals' Flower SuperNodes: each site trains on its own folder with the ClientApp's
    own steps (:func:`federation.transports.flower.node.node_train`, node config ``partition="all"``,
    ``data-root``), so the deployment server runs as it would
    behind Flower, minus the wire (tested in tests/test_flower.py)."""

    data_on_nodes = True
    in_process = False

    def __init__(self, roots: dict[str, str], stores: dict[str, str] | None = None) -> None:
        self.roots, self.seen, self.stores = roots, [], stores  # stores: each site's own (else the server's)

    def map(self, fn, jobs, on_done=None):
        from omegaconf import OmegaConf

        from federation.transports.flower.node import node_train

        updates = []
        for job in jobs:
            assert len(job.kwargs["indices"].train) == 0  # the server holds none of the site's data
            ccfg = OmegaConf.to_container(job.kwargs["cfg"], resolve=True)
            node = {"site": job.client_id, "partition": "all", "data-root": self.roots[job.client_id],
                    "store": job.kwargs["store"] if self.stores is None else self.stores[job.client_id]}
            updates.append(node_train(job.client_id, job.kwargs["server_message"], ccfg, node))
            self.seen.append(job.client_id)
            if on_done is not None:
                on_done(job.client_id, True)
        return updates, {}

    def shutdown(self) -> None:
        pass


REMOTE = ["+exp=fed_lits_dnet", "data=lits", "logger=csv", "model.width=4", "federation.rounds=1",
          "federation.local_epochs=1", "federation.progress=false", "trainer.limit_train_batches=2",
          "federation/partition=remote_sites", "federation.partition.sites=[hospital_a,hospital_b]",
          "federation.num_clients=null", "federation.clients_per_round=null", "federation.eval_clients=none",
          "data.image_size=32", "data.batch_size=4", "data.num_workers=0", "data.augment=false"]


def _phantoms(seed: int) -> str:
    return f"+data.synthetic={{n_cases: 3, shape: [32, 32, 6], seed: {seed}}}"


def test_remote_sites_deployment_server_names_the_sites(tmp_path):
    """Issue 11 §3/§4: a real deployment's server (docs/deployment.md, three hospitals) names its sites
    with ``federation/partition=remote_sites``, holds none of their data, and each site's node trains on
    its own folder; the sites' names are the client ids in the store and the logged keys."""
    from federation.loop import run_federation
    from federation.runner import get_base_datamodule

    cfg = compose_run([*REMOTE, f"data.root={tmp_path / 'server'}", _phantoms(9)], tmp_path)
    nodes = _SiteNodes({})
    for i, site in enumerate(("hospital_a", "hospital_b")):  # each hospital's own folder (generated phantoms)
        get_base_datamodule(compose_run([*REMOTE, f"data.root={tmp_path / site}", _phantoms(i + 1)],
                                        tmp_path / f"n{i}").data)
        nodes.roots[site] = str(tmp_path / site)
    metrics = run_federation(cfg, nodes)
    run = tmp_path / "run"
    assert nodes.seen == ["hospital_a", "hospital_b"]
    assert metrics["fed/num_clients"] == 2 and "test/dice" in metrics
    assert ClientStore(run / "client_store").index() == ["hospital_a", "hospital_b"]
    assert not (run / "partition.md").exists()  # nothing of the sites' data is at the server to report


def test_remote_sites_refused_in_process(tmp_path):
    """With a transport whose clients run on the server's data the named remote sites would train on nothing:
    one error line naming the partition and the way out."""
    import pytest

    from federation.errors import FederationError
    from federation.loop import run_federation

    cfg = compose_run([*REMOTE, f"data.root={tmp_path / 'server'}", _phantoms(9)], tmp_path)
    with pytest.raises(FederationError, match="remote_sites.*launch=false"):
        run_federation(cfg)


def test_remote_sites_is_told_by_the_function_not_the_name():
    from omegaconf import OmegaConf

    from federation.plan import is_remote_sites

    assert is_remote_sites(OmegaConf.create({"_target_": "federation.core.partition.remote_sites", "sites": ["a"]}))
    assert not is_remote_sites(OmegaConf.create({"_target_": "federation.core.partition.iid"}))
    assert not is_remote_sites(OmegaConf.create({"_target_": "mypkg.not_remote_sites"}))  # a name ending alike
    assert not is_remote_sites(None)


def test_remote_sites_names_must_be_distinct_and_non_empty():
    """The names are the client ids everywhere (store, W&B keys, node config): a duplicate or empty one is refused
    before anything runs, and each named site gets an empty part (the server holds none of their data)."""
    import numpy as np
    import pytest

    from federation.core.partition import remote_sites

    parts = remote_sites(None, ["hospital_a", "hospital_b"])
    assert len(parts) == 2 and all(p.dtype == np.int64 and p.size == 0 for p in parts)
    for bad in (["hospital_a", "hospital_a"], ["hospital_a", ""], [], None):
        with pytest.raises(ValueError, match="distinct, non-empty"):
            remote_sites(None, bad)


def _own_stores(tmp_path, rounds: int, extra: list[str]):
    """A real deployment (docs/deployment.md step 4): each site's node keeps its own ``store=`` on its host, so
    the server's ``client_store/`` holds nothing; returns ``(cfg, nodes, run dir)`` after the rounds."""
    from federation.loop import run_federation
    from federation.runner import get_base_datamodule

    ov = [*REMOTE, f"federation.rounds={rounds}", *extra]
    cfg = compose_run([*ov, f"data.root={tmp_path / 'server'}", _phantoms(9)], tmp_path)
    nodes = _SiteNodes({}, stores={})
    for i, site in enumerate(("hospital_a", "hospital_b")):
        get_base_datamodule(compose_run([*ov, f"data.root={tmp_path / site}", _phantoms(i + 1)],
                                        tmp_path / f"n{i}").data)
        nodes.roots[site], nodes.stores[site] = str(tmp_path / site), str(tmp_path / site / "store")
    return cfg, run_federation(cfg, nodes), tmp_path / "run"


def test_remote_fedbn_is_not_scored_with_untrained_batch_norm(tmp_path, caplog):
    """A FedBN deployment whose sites keep their own stores: the server has no batch norm of its own, so it
    scores no server validation or test, chooses no best round, says why once, and predict refuses the global
    weights until a site's store is given (a review: all were silently run with BN as initialised)."""
    import json
    import shutil

    import pytest
    import torch

    from federation.deploy import deployed_state
    from federation.errors import FederationError

    with caplog.at_level("WARNING", logger="federation.server"):
        cfg, metrics, run = _own_stores(tmp_path, 1, ["federation/strategy=fedbn"])
    assert ClientStore(run / "client_store").index() == []  # the sites' BN stayed at the sites
    assert ClientStore(tmp_path / "hospital_a" / "store").index() == ["hospital_a"]
    scored = [k for k in json.loads((run / "metrics.json").read_text()) if "test/" in k or "server_val/" in k]
    assert scored == [] and not any("test/" in k or "server_val/" in k for k in metrics)
    assert not (run / "global_best.pt").exists()
    said = [r.getMessage() for r in caplog.records if "batch norm" in r.getMessage()]
    assert len(said) == 1 and "client=<site>" in said[0], said
    state = torch.load(run / "global_final.pt", weights_only=True)
    with pytest.raises(FederationError, match="holds no client's local entries.*client=<site>"):
        deployed_state(run / "global_final.pt", run, cfg, state)
    shutil.copy(tmp_path / "hospital_a" / "store" / "hospital_a.pt", run / "client_store")  # the site's own
    filled, what = deployed_state(run / "global_final.pt", run, cfg, state, "hospital_a")
    assert "client hospital_a's" in what
    var = [k for k in state if k.endswith("running_var")][0]
    assert not torch.equal(filled[var], state[var])  # the site's trained statistics, not 1.0
