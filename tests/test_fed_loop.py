"""The federation loop end to end on tiny data: artefacts, no data crossing, failing clients, resume,
FedBN's local BN, and each federated experiment for two rounds through Hydra compose."""
from __future__ import annotations

import json
import logging
import math

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import federation.runner as fed_client
from datamodules.subset import IndexSubset, SubsetDataModule, carve_val
from experiments.run import dispatch
from federation.core.messages import ClientUpdate, assert_no_data
from federation.core.sampling import sample_clients
from federation.core.strategies import bn_state_keys
from federation.errors import FederationError
from federation.store import ClientStore
from tests.hydra_helpers import compose_run

DIGITS = [
    "+exp=fed_digits_datashare", "logger=csv", "model.width=4", "federation.num_clients=4",
    "federation.clients_per_round=4", "federation.rounds=2", "federation.local_epochs=1",
    "federation.min_clients=1", "federation.progress=false", "trainer.limit_train_batches=3",
]


def _record(monkeypatch, hook=None):
    """Wrap run_client: record every update (and optionally replace it via ``hook``)."""
    seen: list[ClientUpdate] = []
    real = fed_client.run_client

    def wrapper(client_id, **kw):
        if hook is not None:
            out = hook(client_id, real, kw)
        else:
            out = real(client_id, **kw)
        seen.append(out)
        return out

    monkeypatch.setattr(fed_client, "run_client", wrapper)
    return seen


def _net_state(cfg):
    from engine.builders import build_module

    return build_module(cfg).net.state_dict()


def test_subset_and_carve_val():
    class DS(torch.utils.data.Dataset):
        targets = np.arange(20) % 4

        def __len__(self):
            return 20

        def __getitem__(self, i):
            return {"image": torch.zeros(1, 2, 2), "label": torch.tensor(int(self.targets[i]))}

    tr, va = carve_val(np.arange(10), 0.2, 0)
    assert len(va) == 2 and not set(tr) & set(va) and set(tr) | set(va) == set(range(10))
    groups = np.repeat(np.arange(5), 4)
    tr, va = carve_val(np.arange(20), 0.4, 0, groups)
    assert not set(groups[tr]) & set(groups[va])  # whole cases
    base = type("B", (), {"train_dataset": DS(), "val_dataset": DS(), "test_dataset": DS(), "batch_size": 4})()
    dm = SubsetDataModule(base, [0, 1, 2], [3], shared_indices=[10, 11])
    assert len(dm.train_dataset) == 5 and dm.num_shared == 2 and list(dm.train_dataset.targets) == [0, 1, 2, 2, 3]
    with pytest.raises(ValueError):
        SubsetDataModule(base, [0, 1], [3], shared_indices=[1])
    assert len(IndexSubset(DS(), [5])) == 1


def test_sample_clients_seeded():
    ids = [str(i) for i in range(100)]
    a = sample_clients(ids, 0.1, 0, 3)
    assert len(a) == 10 and a == sample_clients(ids, 0.1, 0, 3) and a != sample_clients(ids, 0.1, 0, 4)
    assert sample_clients(ids, 5, 0, 0) == sorted(sample_clients(ids, 5, 0, 0), key=int)


def test_digits_datashare_two_rounds(tmp_path, monkeypatch, caplog):
    seen = _record(monkeypatch)
    step = "module.scheduler={_target_: torch.optim.lr_scheduler.StepLR, _partial_: true, step_size: 1}"
    cfg = compose_run([*DIGITS, "federation.strategy.mode=all", step], tmp_path)
    with caplog.at_level(logging.WARNING, logger="federation.server"):
        metrics = dispatch(cfg)
    # a review: a schedule restarted every round without a word (the default module's cosine never decayed)
    assert "module.scheduler (StepLR) restarts every round" in caplog.text
    run = tmp_path / "run"
    for f in ("rounds.csv", "fed_curves.png", "partition.md", "partition.png", "server.pt", "global_final.pt",
              "metrics.json", "csv/metrics.csv", "env.json"):
        assert (run / f).is_file(), f
    # the loggers get the code's SHA and the environment beside the config, as a centralised run's do
    hparams = yaml.safe_load((run / "csv" / "hparams.yaml").read_text())
    assert hparams["git_sha"] and hparams["env"]["torch_threads"] == torch.get_num_threads(), sorted(hparams)
    assert hparams["config"]["federation"]["rounds"] == 2 and "federation" not in hparams  # a centralised run's layout
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["fed/rounds"] == 2 and "fed/global/test/acc" in saved and saved["fed/shared_pool"] > 0
    assert math.isfinite(metrics["test/acc"])
    lines = (run / "rounds.csv").read_text().splitlines()
    assert len(lines) == 3 and "test/acc" in lines[0] and "server_val/acc" in lines[0]
    # shared pool disjoint from every client; the second round sent shared data (mode=all)
    store = ClientStore(run / "client_store")
    assert store.index() == ["0", "1", "2", "3"]
    state = torch.load(run / "server.pt", weights_only=True)
    assert state["round"] == 1 and state["strategy"]["allocation"]
    rows = [dict(zip(lines[0].split(","), r.split(","))) for r in lines[1:]]
    assert float(rows[0]["shared_sent"]) == 0 and float(rows[1]["shared_sent"]) > 0
    hist = store.load("0", "history")
    assert hist[-1]["num_shared"] > 0
    # no data crossed: every update is model state of the right shapes plus float metrics
    schema = _net_state(cfg)
    assert len(seen) == 8
    for u in seen:
        assert_no_data(u, schema)
        assert set(u.weights) == set(schema) and all(isinstance(v, float) for v in u.metrics.values())
        assert "acc" in u.metrics


def test_failing_clients_are_dropped(tmp_path, monkeypatch):
    def hook(cid, real, kw):
        if cid == "1":
            raise RuntimeError("client 1 crashed")
        out = real(cid, **kw)
        if cid == "2":
            bad = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in out.weights.items()}
            return ClientUpdate(cid, bad, out.num_samples, dict(out.metrics))
        return out

    _record(monkeypatch, hook)
    cfg = compose_run([*DIGITS, "federation.rounds=1", "federation/strategy=fedavg", "federation.min_clients=2"],
                      tmp_path)
    dispatch(cfg)
    run = tmp_path / "run"
    header, row = (run / "rounds.csv").read_text().splitlines()
    row = dict(zip(header.split(","), row.split(",")))
    assert float(row["dropped"]) == 2 and float(row["clients"]) == 2
    final = torch.load(run / "global_final.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in final.values() if v.is_floating_point())

    # too few clients even after the retry: a clear error, the previous global model untouched
    cfg = compose_run([*DIGITS, "federation.rounds=1", "federation/strategy=fedavg", "federation.min_clients=4"],
                      tmp_path / "b")
    with pytest.raises(FederationError, match="min_clients=4"):
        dispatch(cfg)
    assert not (tmp_path / "b" / "run" / "server.pt").exists()


@pytest.mark.parametrize("strategy", [["federation.strategy.mode=part"], ["federation/strategy=fedadam"]],
                         ids=["datasharing", "fedadam"])
def test_resume_is_equivalent(tmp_path, strategy):
    """A run stopped after round 1 and resumed ends as the uninterrupted one; for FedAdam that needs the
    server's moments (``m``, ``v``, ``server.pt``'s strategy state) restored, not restarted at zero."""
    common = [*DIGITS, *strategy, "trainer.deterministic=true"]
    dispatch(compose_run([*common, "federation.rounds=2"], tmp_path / "a"))
    dispatch(compose_run([*common, "federation.rounds=1"], tmp_path / "b"))  # "killed" after round 1
    dispatch(compose_run([*common, "federation.rounds=2", "resume=true"], tmp_path / "b"))
    a = torch.load(tmp_path / "a" / "run" / "global_final.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "run" / "global_final.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ra = (tmp_path / "a" / "run" / "rounds.csv").read_text().splitlines()
    rb = (tmp_path / "b" / "run" / "rounds.csv").read_text().splitlines()
    assert len(ra) == len(rb) == 3


class _Stopped(BaseException):
    """The run stopped (a kill, a pre-emption) between a client's end of round and ``server.pt``."""


def test_a_round_stopped_midway_resumes_as_if_never_stopped(tmp_path, monkeypatch):
    """A run stopped after one client of round 2 stored its state (FedBN's BN, history) but before the
    round's ``server.pt`` runs round 2 again from the state it began with: the same global model and
    stores as an uninterrupted run. Before the fix the re-run started from the stopped attempt's BN
    statistics (final weights differed by up to 0.02 in the audit) and the history held round 2 twice."""
    common = [*DIGITS, "federation/strategy=fedbn", "trainer.deterministic=true", "federation.rounds=2"]
    dispatch(compose_run(common, tmp_path / "a"))
    real = fed_client.run_client

    def stop_midway(client_id, **kw):
        out = real(client_id, **kw)
        if int(kw["server_message"].round) == 1:
            raise _Stopped
        return out

    monkeypatch.setattr(fed_client, "run_client", stop_midway)
    with pytest.raises(_Stopped):
        dispatch(compose_run(common, tmp_path / "b"))
    monkeypatch.setattr(fed_client, "run_client", real)
    dispatch(compose_run([*common, "resume=true"], tmp_path / "b"))
    a = torch.load(tmp_path / "a" / "run" / "global_final.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "run" / "global_final.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = ClientStore(tmp_path / "a" / "run" / "client_store"), ClientStore(tmp_path / "b" / "run" / "client_store")
    assert sa.index() == sb.index()
    for cid in sa.index():
        assert [h["round"] for h in sb.load(cid, "history")] == [0, 1]
        assert "__before_round__" not in torch.load(sb.path(cid), weights_only=True)  # committed with server.pt
        la, lb = sa.load(cid, "local_state"), sb.load(cid, "local_state")
        assert la.keys() == lb.keys() and all(torch.equal(la[k], lb[k]) for k in la)


def test_fedbn_keeps_bn_local(tmp_path, monkeypatch):
    seen = _record(monkeypatch)
    cfg = compose_run([*DIGITS, "federation/strategy=fedbn"], tmp_path)
    dispatch(cfg)
    from engine.builders import build_module

    net = build_module(cfg).net
    bn = bn_state_keys(net)
    assert bn
    for u in seen:
        assert not bn & set(u.weights)  # BN never leaves a client
    store = ClientStore(tmp_path / "run" / "client_store")
    local = [store.load(c, "local_state") for c in store.index()]
    assert all(set(s) == bn for s in local)
    key = next(k for k in sorted(bn) if k.endswith("running_mean"))
    assert not torch.equal(local[0][key], local[1][key])  # each client has its own statistics
    final = torch.load(tmp_path / "run" / "global_final.pt", weights_only=True)
    assert torch.equal(final[key], net.state_dict()[key])  # the server never aggregated BN


def _seg(exp, sites, extra=()):
    ov = [f"+exp={exp}", "logger=csv", "model.width=4", "federation.rounds=2", "federation.local_epochs=1",
          "federation.matrix.standalone_epochs=1", "federation.matrix.centralised_epochs=1",
          "federation.progress=false", "trainer.limit_train_batches=2"]
    for s in sites:
        ov += [f"data.sites.{s}.image_size=32", f"data.sites.{s}.synthetic.n_cases=4",
               f"data.sites.{s}.synthetic.shape=[32,32,6]"]
    return ov + list(extra)


@pytest.mark.parametrize("exp, sites, extra", [
    ("fed_pancreas", ["site1", "site2"], []),
    ("segviz_fedbn", ["liver_site", "spleen_site", "pancreas_site", "kidney_site"],
     ["federation.matrix.standalone=false", "federation.matrix.centralised=false"]),
    ("fed_lits_dnet", ["hospital_a", "hospital_b", "hospital_c"], []),
])
def test_segmentation_experiments_two_rounds(tmp_path, exp, sites, extra):
    cfg = compose_run(_seg(exp, sites, extra), tmp_path)
    metrics = dispatch(cfg)
    run = tmp_path / "run"
    assert metrics["fed/rounds"] == 2 and metrics["fed/num_clients"] == len(sites)
    assert "fed/global/test/dice" in metrics and (run / "fed_curves.png").is_file()
    assert ClientStore(run / "client_store").index() == sorted(sites)
    if cfg.federation.evaluation_matrix:
        md = (run / "evaluation_matrix.md").read_text()
        assert "FL_global" in md and f"{sites[0]}_FL_local" in md and "pooled" in md
        if cfg.federation.matrix.standalone:
            assert f"{sites[-1]}_baseline" in md and "centralised" in md


def test_partial_labels_mask_unannotated(tmp_path):
    cfg = compose_run(_seg("fed_pancreas", ["site1", "site2"]), tmp_path)
    from federation.server import Server

    server = Server(cfg)
    # found by a walkthrough: partition.md counted the organs on disk without saying a site annotates fewer
    said = (tmp_path / "run" / "partition.md").read_text()
    assert "Partial labels (federation.partial_labels): each client annotates only site1: " in said
    # n counts the validation cases too: said, with what each client trains and validates on (a review)
    splits = {c: f"{c} {len(server.indices[c].train)}/{len(server.indices[c].val)}" for c in ("site1", "site2")}
    assert f"training/validation samples: {splits['site1']}, {splits['site2']}." in said
    ind = server.indices["site1"]
    dm = server.client_datamodule("site1", 0)
    masks = torch.stack([dm.train_dataset[i]["mask"] for i in range(len(dm.train_dataset))])
    raw = torch.stack([server.base.train_dataset[int(i)]["mask"] for i in ind.train])
    assert not (masks == 2).any() and ((raw == 2) == (masks == 255)).all()  # tumour hidden at site 1
    assert "label_mask" not in dm.train_dataset[0]                 # ignore mode: the loss skips 255 alone
    cfg.federation.unannotated = "background"                      # real partial data: tumour -> background
    dm = Server(cfg).client_datamodule("site1", 0)
    masks = torch.stack([dm.train_dataset[i]["mask"] for i in range(len(dm.train_dataset))])
    assert ((raw == 2) <= (masks == 0)).all() and not (masks == 255).any()
    assert dm.train_dataset[0]["label_mask"].tolist() == [True, True, False]
    # its validation split is labelled as the site labels it (a review: the site's best round and early
    # stopping were chosen by tumour Dice, from tumour labels site 1 does not have)
    val = [dm.val_dataset[i] for i in range(len(dm.val_dataset))]
    raw_val = torch.stack([x["mask"] for x in server.client_loader("site1", "val").dataset])
    assert ((raw_val == 2) <= (torch.stack([x["mask"] for x in val]) == 0)).all() and (raw_val == 2).any()
    assert val[0]["annotated"].tolist() == [True, True, False] and "annotated" not in dm.train_dataset[0]


def test_a_class_a_site_does_not_label_is_not_scored_there(tmp_path):
    """A walkthrough: site 1 of ``fed_pancreas`` does not label the tumour, yet its local validation logged
    ``dice_tumor=1.0`` (no tumour in its labels nor, after the annotated view, in its predictions) and the round's
    ``local_val/dice_tumor`` averaged that 1.0 in (0.5 with site 2's 0.0). It is NaN there now, so the round's mean
    is the mean of the sites that label the class."""
    import csv

    cfg = compose_run(_seg("fed_pancreas", ["site1", "site2"], ["federation.rounds=1",
                                                                "federation.evaluation_matrix=false"]), tmp_path)
    dispatch(cfg)
    logged: dict[str, float] = {}
    with open(tmp_path / "run" / "csv" / "metrics.csv") as fh:
        for row in csv.DictReader(fh):
            logged.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    assert "client/site1/local_val/dice_tumor" not in logged  # NaN: not logged (1.0 before)
    assert math.isfinite(logged["client/site1/local_val/dice_organ"])
    assert logged["fed/round/local_val/dice_tumor"] == pytest.approx(logged["client/site2/local_val/dice_tumor"])


def test_covid_datashare_real_data(tmp_path, shared_data):
    root = shared_data / "covid-ct-ucsd-cropped"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    cfg = compose_run(["+exp=fed_covid_datashare", "logger=csv", "model.width=4", "federation.rounds=2",
                       "federation.num_clients=4", "federation.clients_per_round=2", "federation.local_epochs=1",
                       "data.size=32", "federation.progress=false", "trainer.limit_train_batches=2",
                       f"data.root={root}"], tmp_path)
    metrics = dispatch(cfg)
    assert metrics["fed/rounds"] == 2 and "fed/global/test/acc" in metrics


def test_fl_local_is_each_clients_best_local_checkpoint(tmp_path, monkeypatch):
    from federation import matrix

    cfg = compose_run(_seg("fed_pancreas", ["site1", "site2"], ["federation.rounds=3", "federation.matrix.standalone=false",
                                                                 "federation.matrix.centralised=false"]), tmp_path)
    used = {}
    real = matrix._fl_local

    def spy(server, cid, mode, epochs):  # noqa: ANN001
        module = real(server, cid, mode, epochs)
        used[cid] = {k: v.clone() for k, v in module.net.state_dict().items()}
        return module

    monkeypatch.setattr(matrix, "_fl_local", spy)
    dispatch(cfg)
    store = ClientStore(tmp_path / "run" / "client_store")
    for cid in ("site1", "site2"):
        history = store.load(cid, "history")
        best = fed_client.best_local_store(store).load(cid, "best_local")
        assert "best_local" not in store.keys(cid)  # the per-round state file stays small
        assert best["round"] == max(history, key=lambda h: h["dice"])["round"]  # first best kept on ties
        assert set(best["state"]) == set(used[cid]) and best["state"]  # a test audit: an empty state passed
        assert all(torch.equal(best["state"][k], used[cid][k]) for k in best["state"])


def test_a_clients_user_error_stops_the_federation_and_a_misnamed_client_setting_is_refused(tmp_path):
    """A walkthrough: a per-client module setting the module refuses dropped that client from every round (a
    crash ``min_clients`` tolerates) and the run exited 0; a setting for a client that does not exist was
    ignored. Both are now one FederationError naming the client."""
    cfg = compose_run([*DIGITS, "federation.rounds=1", "+federation.client_module.1.no_such_arg=3"], tmp_path / "a")
    with pytest.raises(FederationError, match=r"^client 1: .*no_such_arg"):
        dispatch(cfg)
    assert not (tmp_path / "a" / "run" / "server.pt").exists()
    cfg = compose_run([*DIGITS, "federation.rounds=1", "+federation.client_module.site_x.lr=0.1"], tmp_path / "b")
    with pytest.raises(FederationError, match=r"client_module names 'site_x', which is no client"):
        dispatch(cfg)


def test_a_misspelt_federation_key_is_refused_and_the_known_keys_follow_default_yaml(tmp_path):
    """A walkthrough: ``++federation.roundz=3`` ran one round without a word; a misspelt key under data, module or
    trainer was already one line."""
    from omegaconf import OmegaConf

    from federation.plan import FEDERATION_KEYS

    default = OmegaConf.load(Path(__file__).parents[1] / "experiments" / "configs" / "federation" / "default.yaml")
    groups = {next(iter(d)) for d in OmegaConf.to_container(default.defaults) if isinstance(d, dict)}
    assert FEDERATION_KEYS == (set(default) - {"defaults"}) | groups | {"shared_fraction"}
    cfg = compose_run([*DIGITS, "++federation.roundz=3"], tmp_path)
    with pytest.raises(FederationError, match=r"^federation\.roundz is no federation setting \(did you mean "
                                              r"federation\.rounds\?\)"):
        dispatch(cfg)


def test_federation_error_is_one_line(tmp_path):
    from tests.cli import run_in_process

    proc = run_in_process("experiments.run", [*DIGITS, "federation/partition=by_site", f"paths.log_dir={tmp_path}"],
                          tmp_path)
    assert proc.returncode != 0
    assert "by_site needs a multi-site datamodule" in proc.stderr and "Traceback" not in proc.stderr


def test_unannotated_mode_is_checked_before_any_data(tmp_path, monkeypatch):
    """A bad ``federation.unannotated`` is refused with one line naming it, at config time: the server stops
    before it builds any datamodule (not later, when the first client's data is built)."""
    import federation.server as server

    built = []
    monkeypatch.setattr(server, "build_datamodule", lambda *a, **k: built.append(a) or pytest.fail("data built"))
    cfg = compose_run([*DIGITS, "federation.unannotated=both"], tmp_path)
    with pytest.raises(FederationError, match=r"federation.unannotated=both: expected one of ignore, background"):
        dispatch(cfg)
    assert not built


def test_best_local_ignores_a_non_finite_validation_value(tmp_path):
    """A client's val AUC is NaN when its split holds one class (undefined AUC): NaN never compares, so a
    NaN first round kept as best would pin ``best_local`` to round 1 for good. It is skipped instead."""
    from federation.runner import _save_if_best
    from federation.store import ClientStore

    store, state = ClientStore(tmp_path / "store"), {"w": torch.zeros(1)}
    _save_if_best(store, "0", 1, state, {"auc": float("nan")}, "val/auc")
    assert store.load("0", "best_local_meta") is None
    _save_if_best(store, "0", 2, state, {"auc": 0.6}, "val/auc")
    _save_if_best(store, "0", 3, state, {"auc": 0.8}, "val/auc")
    assert store.load("0", "best_local_meta")["round"] == 3


def test_the_best_round_goes_the_monitors_way_and_an_uncomputed_monitor_is_one_line(tmp_path):
    """A federation review: the best round, a client's best local round and early stopping took lower-is-better
    only for names ending in ``loss`` (``val/hd95``, ``val/ece`` kept their worst round), unlike the project's rule
    (:func:`callbacks.metric_goal.goal`); and a monitor the server validation does not compute kept no best round
    without a word."""
    from types import SimpleNamespace

    from federation.errors import FederationError
    from federation.runner import _save_if_best
    from federation.server import Server
    from federation.store import ClientStore

    def server(monitor):
        return SimpleNamespace(monitor=monitor, best={"round": 0, "value": None, "key": None})

    hd95 = server("val/hd95")
    for rnd, value in enumerate([5.0, 3.0, 9.0]):
        Server.update_best(hd95, rnd, {"fed/round/server_val/hd95": value, "fed/round/server_val/dice": 0.5})
    assert hd95.best["round"] == 2 and hd95.best["value"] == 3.0
    with pytest.raises(FederationError, match=r"module.monitor=val/dice_liver is not a validation metric the server "
                                              r"computes \(it has val/dice, val/loss\)"):
        Server.update_best(server("val/dice_liver"), 0, {"fed/round/server_val/dice": 0.5,
                                                         "fed/round/server_val/loss": 0.3})
    store, state = ClientStore(tmp_path / "store"), {"w": torch.zeros(1)}
    for rnd, value in ((1, 5.0), (2, 3.0), (3, 9.0)):
        _save_if_best(store, "0", rnd, state, {"hd95": value}, "val/hd95")
    assert store.load("0", "best_local_meta")["round"] == 2
    from federation.runner import client_early_stopping

    assert client_early_stopping({"monitor": None}, "val/hd95").mode == "min"
    assert client_early_stopping({}, "val/dice").mode == "max"
    assert client_early_stopping({"mode": "max"}, "val/hd95").mode == "max"  # said explicitly, kept


def test_fedbn_best_model_is_scored_and_kept_with_its_own_rounds_batch_norm(tmp_path, monkeypatch):
    """Found by a walkthrough: with FedBN, ``fed/best/test/*`` and ``global_best.pt``'s deployment joined the best
    round's weights with the *last* round's batch-norm statistics (the client store is rewritten every round):
    0.548 reported for a round whose own test Dice was 0.324. The server now snapshots the clients' BN with the
    best weights (``global_best_local.pt``); the best model scores what its round scored."""
    import csv

    from federation.deploy import BEST_LOCAL
    from federation.server import Server

    real = Server.update_best
    monkeypatch.setattr(Server, "update_best", lambda self, rnd, row: real(self, rnd, row) if rnd == 0 else False)
    metrics = dispatch(compose_run([*DIGITS, "federation/strategy=fedbn", "trainer.deterministic=true"], tmp_path))
    run = tmp_path / "run"
    rows = list(csv.DictReader((run / "rounds.csv").open()))
    assert metrics["fed/best_round"] == 1 and len(rows) == 2
    keys = [k for k in metrics if k.startswith("fed/best/test/") and k.removeprefix("fed/best/") in rows[0]]
    assert keys
    for key in keys:
        assert metrics[key] == pytest.approx(float(rows[0][key.removeprefix("fed/best/")]), abs=1e-6), key
    snapshot = torch.load(run / BEST_LOCAL, weights_only=True)
    store = ClientStore(run / "client_store")
    cid = store.index()[0]
    k = next(k for k in snapshot[cid] if k.endswith("running_mean"))
    assert not torch.equal(snapshot[cid][k], store.load(cid, "local_state")[k])  # round 1's, not round 2's


def test_round_bars_stay_out_of_a_log_file_and_a_finished_run_shows_no_client_bar(tmp_path, capsys, monkeypatch):
    """stdout that is no terminal got the round/client bars' last frames between the per-round lines; and a
    finished federation resumed drew "clients 0/1" (no client had run)."""
    from engine import artifacts
    from federation.loop import run_federation

    cfg = compose_run([*DIGITS, "federation.rounds=1", "federation.progress=true"], tmp_path)
    run_federation(cfg)
    out = capsys.readouterr().out
    assert "round 1/1" in out and not [ln for ln in out.splitlines() if ln.lstrip().startswith("rounds ") and "━" in ln]
    monkeypatch.setattr(artifacts, "is_terminal", lambda: True)  # a terminal: the bars are drawn
    cfg.resume = True
    took = json.loads((tmp_path / "run" / "metrics.json").read_text())["fit_seconds"]
    again = run_federation(cfg)
    out = capsys.readouterr().out
    # a review: each resume of a finished federation added its process's set-up time to fit_seconds
    assert again["fit_seconds"] == took and "fit_seconds stays" in " ".join(out.split())  # however it wraps
    bars = [ln for ln in out.splitlines() if "━" in ln or ln.lstrip().startswith(("rounds ", "clients "))]
    assert any(ln.lstrip().startswith("rounds ") for ln in bars) and not [ln for ln in bars if "clients" in ln], bars


def test_a_stop_between_server_pt_and_the_best_weights_is_mended_on_resume(tmp_path, monkeypatch):
    """Found by a review: ``global_best.pt`` was written before the round's ``server.pt``, so a run stopped
    between the two kept the best weights of a round that never completed (and logged it twice). Now
    ``server.pt`` comes first; a stop before the best weights follow leaves ``server.pt`` naming a best round
    whose weights are its own global state, and resume writes them from there."""
    from federation.loop import run_federation
    from federation.server import Server

    class Stopped(BaseException):
        pass

    def every_round_best(self, rnd, row):
        self.best = {"round": rnd + 1, "value": float(-rnd), "key": "fed/round/server_val/loss"}
        return True

    real_save, calls = Server.save_best, []

    def stopped_in_round_two(self):
        calls.append(1)
        if len(calls) == 2:
            raise Stopped
        real_save(self)

    monkeypatch.setattr(Server, "update_best", every_round_best)
    monkeypatch.setattr(Server, "save_best", stopped_in_round_two)
    cfg = compose_run([*DIGITS, "federation.rounds=2"], tmp_path)
    with pytest.raises(Stopped):
        run_federation(cfg)
    run = tmp_path / "run"
    state = torch.load(run / "server.pt", weights_only=True)
    assert state["round"] == 1 and state["best"]["round"] == 2      # round 2 completed, its best not yet written
    stale = torch.load(run / "global_best.pt", weights_only=True)  # round 1's
    assert not all(torch.equal(stale[k], state["global"][k]) for k in stale)
    monkeypatch.setattr(Server, "save_best", real_save)
    cfg.resume = True
    assert len((run / "rounds.csv").read_text().splitlines()) == 2  # header + round 1: round 2's row not yet written
    metrics = run_federation(cfg)
    best = torch.load(run / "global_best.pt", weights_only=True)
    assert metrics["fed/best_round"] == 2 and all(torch.equal(best[k], state["global"][k]) for k in best)
    # a walkthrough: a resumed federation's fit_seconds counted its last process only (here: no round left)
    assert state["fit_seconds"] > 0 and metrics["fit_seconds"] > state["fit_seconds"]
    # a review of the fix: rounds.csv (written after server.pt) lacked round 2 for good; resume rewrites it
    assert [ln.split(",")[0] for ln in (run / "rounds.csv").read_text().splitlines()[1:]] == ["1", "2"]
    logged = (run / "csv" / "metrics.csv").read_text().splitlines()
    header = logged[0].split(",")
    steps = [ln.split(",")[header.index("step")] for ln in logged[1:]
             if ln.split(",")[header.index("fed/round/dropped")] not in ("", None)]
    assert steps == ["1", "2"], steps                                 # the loggers got round 2 before the stop


def test_the_matrix_says_when_a_clients_column_is_its_validation_split(tmp_path):
    """Found by a review: on data without sites a client's column is its validation split, the split on which
    ``fl_local=best_local`` chose that client's round, so its own cell is optimistic; the matrix now says so
    under the table (and not for clients with test cases of their own)."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from federation.matrix import matrix_note, write_matrix
    from federation.runner import ClientIndices

    idx = np.arange(4)
    fed = OmegaConf.create({"matrix": {"fl_local": "best_local"}})
    server = SimpleNamespace(fed=fed, client_ids=["a", "b"], cfg=OmegaConf.create({}),
                             indices={"a": ClientIndices(idx, idx, None), "b": ClientIndices(idx, idx, idx)})
    note = matrix_note(server)
    assert note.startswith("Columns a are") and "optimistic" in note
    write_matrix({"FL_global": {"a": 0.5, "pooled": 0.4}}, tmp_path, "dice", note)
    assert (tmp_path / "evaluation_matrix.md").read_text().rstrip().endswith("avoids it.")
    fed.matrix.fl_local = "finetune"
    assert "optimistic" not in matrix_note(server)
    server.indices["a"] = ClientIndices(idx, idx[:0], None)         # neither test nor validation: no column
    assert matrix_note(server) is None
    server.indices["a"] = ClientIndices(idx, idx, idx)
    assert matrix_note(server) is None
    # a walkthrough: a debug run's matrix read like results (its pooled column was its first site's one batch)
    server.cfg = OmegaConf.create({"trainer": {"fast_dev_run": True}})
    assert matrix_note(server).startswith("**A debug run (debug mode fdr)")


def test_the_matrix_says_fedbn_scores_fl_globals_pooled_column_with_the_mean_batch_norm():
    """A walkthrough: under FedBN FL_global's client columns are scored with each client's own batch norm and its
    pooled column with their mean (a model no site holds), so its pooled cell differed from the site columns'
    average over equal test sets, and nothing under the table said why."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from federation.matrix import matrix_note
    from federation.runner import ClientIndices

    idx = np.arange(4)
    bn = SimpleNamespace(name="fedbn", is_local=lambda key: "bn" in key)
    server = SimpleNamespace(fed=OmegaConf.create({"matrix": {}}), client_ids=["a"], cfg=OmegaConf.create({}),
                             indices={"a": ClientIndices(idx, idx, idx)}, strategy=bn,
                             global_state={"conv.weight": None, "bn.running_mean": None})
    assert matrix_note(server) == ("FL_global's client columns use each client's own local entries (fedbn, e.g. "
                                   "FedBN's batch norm), its pooled column their mean over the clients, a model no "
                                   "site holds.")
    server.strategy = SimpleNamespace(name="fedavg", is_local=lambda key: False)
    assert matrix_note(server) is None


def test_the_matrix_baselines_train_the_federations_budget_unless_told_and_then_it_says_so():
    """A federation review: the baselines and the centralised row trained 2 epochs by default against the
    federation's rounds x local epochs (10 x 2 in fed_lits_dnet), and nothing in the table said so."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from federation.matrix import budgets, matrix_note
    from federation.runner import ClientIndices

    idx = np.arange(4)
    fed = OmegaConf.create({"rounds": 5, "local_epochs": 2,
                            "matrix": {"standalone_epochs": None, "centralised_epochs": None}})
    assert budgets(fed, 1) == {"federation": 10, "standalone": 10, "centralised": 10}
    # a review of the change: 5 of 20 clients per round train a quarter of rounds x local epochs on average
    sampled = OmegaConf.merge(fed, {"clients_per_round": 5})
    assert budgets(sampled, 20) == {"federation": 3, "standalone": 3, "centralised": 3}
    server = SimpleNamespace(fed=fed, client_ids=["a"], cfg=OmegaConf.create({}),
                             indices={"a": ClientIndices(idx, idx, idx)})
    assert matrix_note(server) is None
    fed.matrix.standalone_epochs = 4
    assert matrix_note(server) == ("Budgets differ: a client trained 10 epochs in the federation (5 rounds x 2), "
                                   "the standalone row(s) 4 (federation.matrix.<row>_epochs; null gives the "
                                   "federation's).")
    fed.matrix.standalone = False  # no standalone rows: nothing to say about them
    assert matrix_note(server) is None


def test_clients_without_a_validation_split_train_under_fast_dev_run(tmp_path):
    """``federation.client_val_fraction=0`` (a site's own validation split elsewhere): under ``fast_dev_run``
    every client failed with "SubsetDataModule.setup() must run before asking for a loader" (found this
    session), so the federation stopped after one round with no model."""
    out = dispatch(compose_run(["+exp=fed_pancreas", "logger=csv", "federation.client_val_fraction=0",
                                "federation.evaluation_matrix=false", "++trainer.fast_dev_run=true"], tmp_path))
    rows = (tmp_path / "run" / "rounds.csv").read_text().splitlines()
    assert len(rows) >= 2 and out
    assert "validation split is carved" not in (tmp_path / "run" / "partition.md").read_text()  # n is all trained on


def test_clients_load_with_data_num_workers_and_train_as_without(tmp_path):
    """Found by a profile: a client's loaders ignored ``data.num_workers`` (a federation of real 3D sites loaded
    in the main process whatever was set). They take it now, and the epoch-seeded draws make a client's
    training the same with workers as without: one round ends with the same global weights."""
    from federation.server import Server

    finals = {}
    for workers in (0, 1):
        args = [*DIGITS, "federation.rounds=1", "federation.num_clients=2", "federation.clients_per_round=2",
                f"data.num_workers={workers}"]
        cfg = compose_run(args, tmp_path / f"w{workers}")
        if workers:
            assert Server(cfg).client_datamodule("0", 0).train_dataloader().num_workers == 1
        dispatch(cfg)
        finals[workers] = torch.load(tmp_path / f"w{workers}" / "run" / "global_final.pt", weights_only=True)
    for k, v in finals[0].items():
        assert torch.equal(v, finals[1][k]), k


def test_a_resume_whose_federation_id_file_was_lost_keeps_its_clients_state(tmp_path):
    """A review: without ``federation_id.txt`` a resume made a new id, and in its next round every client moved its
    own state (FedBN's batch norm, history) aside as another federation's. ``server.pt`` records the id and a
    resume takes it back."""
    common = [*DIGITS, "federation/strategy=fedbn", "trainer.deterministic=true"]
    dispatch(compose_run([*common, "federation.rounds=1"], tmp_path / "b"))
    run = tmp_path / "b" / "run"
    first = (run / "federation_id.txt").read_text().strip()
    (run / "federation_id.txt").unlink()
    dispatch(compose_run([*common, "federation.rounds=2", "resume=true"], tmp_path / "b"))
    assert (run / "federation_id.txt").read_text().strip() == first
    assert not (run / "client_store" / "earlier").exists()
    store = ClientStore(run / "client_store")
    assert {store.load(cid, "federation_id") for cid in store.index()} == {first}
    assert max(len(store.load(cid, "history")) for cid in store.index()) == 2


def _fit_trainers(monkeypatch):
    """Every Trainer a client builds, in order (``train_local``'s fit Trainer comes before its evaluator)."""
    built = []
    real = fed_client.build_trainer

    def wrapper(*args, **kwargs):
        trainer = real(*args, **kwargs)
        built.append(trainer)
        return trainer

    monkeypatch.setattr(fed_client, "build_trainer", wrapper)
    return built


def test_fedprox_proximal_term_reaches_the_clients_training_loss(tmp_path, monkeypatch):
    """FedProx's mu travels in the server message (``proximal_mu``) and the client adds mu/2 ||w - w_global||^2 to
    its training loss: ``train/proximal`` is logged and a large mu keeps the client's weights nearer the global
    model than mu=0 from the same seed and data."""
    from dataclasses import replace

    from federation.server import Server

    cfg = compose_run([*DIGITS, "federation/strategy=fedprox", "federation.strategy.mu=30", "federation.num_clients=2",
                       "federation.clients_per_round=2", "federation.rounds=1"], tmp_path)
    server = Server(cfg)
    built = _fit_trainers(monkeypatch)
    glob = server.global_state
    dist, logged = {}, {}
    for mu in (0.0, 30.0):
        kw = dict(server.jobs(0, ["0"])[0].kwargs)
        msg = kw["server_message"]
        assert msg.config["proximal_mu"] == 30.0  # the strategy's mu, sent to the client
        kw["server_message"] = replace(msg, config={**msg.config, "proximal_mu": mu})
        built.clear()
        update = fed_client.run_client("0", **kw)
        logged[mu] = dict(built[0].callback_metrics)
        dist[mu] = sum(float((update.weights[k].double() - glob[k].double()).pow(2).sum())
                       for k in update.weights if glob[k].is_floating_point())
    assert "train/proximal" not in logged[0.0]
    assert float(logged[30.0]["train/proximal"]) > 0, logged[30.0]
    assert 0 < dist[30.0] < dist[0.0], dist


def test_eval_clients_sampled_scores_only_the_rounds_sampled_clients(tmp_path, monkeypatch):
    """``federation.eval_clients=sampled`` (docs/federation.md): each round the global model is scored on the
    validation split of the clients sampled that round only, not on every client's."""
    from federation.server import Server

    trained: dict[int, set[str]] = {}

    def hook(cid, real, kw):
        trained.setdefault(int(kw["server_message"].round), set()).add(cid)
        return real(cid, **kw)

    _record(monkeypatch, hook)
    scored: list[str] = []
    real_loader = Server.client_loader

    def client_loader(self, cid, split):
        if split == "val":
            scored.append(cid)
        return real_loader(self, cid, split)

    monkeypatch.setattr(Server, "client_loader", client_loader)
    cfg = compose_run([*DIGITS, "federation.clients_per_round=2", "federation.rounds=2", "federation.strategy.mode=none",
                       "federation.eval_clients=sampled", "federation.evaluation_matrix=false"], tmp_path)
    dispatch(cfg)
    assert sorted(trained) == [0, 1] and all(len(ids) == 2 for ids in trained.values())
    assert len(scored) == 4, scored  # 2 of the 4 clients in each of 2 rounds (all of them: 8)
    assert [set(scored[:2]), set(scored[2:])] == [trained[0], trained[1]]


def test_client_early_stopping_stops_local_training_when_enabled(tmp_path, monkeypatch):
    """``federation.early_stopping.enabled=true`` (paper 000 step 5, "until the model converges"): the client's
    local training stops on its validation split before ``federation.local_epochs``. Patience 1 and a min_delta no
    epoch can beat: the first epoch sets the best, the second does not improve on it, and training stops there."""
    from pytorch_lightning.callbacks import EarlyStopping

    from federation.server import Server

    common = [*DIGITS, "federation.num_clients=2", "federation.clients_per_round=2", "federation.rounds=1",
              "federation.local_epochs=4", "federation.early_stopping.patience=1",
              "federation.early_stopping.min_delta=1e9"]
    built = _fit_trainers(monkeypatch)
    epochs = {}
    for enabled in (False, True):
        server = Server(compose_run([*common, f"federation.early_stopping.enabled={str(enabled).lower()}"],
                                    tmp_path / str(enabled)))
        built.clear()
        fed_client.run_client("0", **server.jobs(0, ["0"])[0].kwargs)
        fit = built[0]
        stoppers = [cb for cb in fit.callbacks if isinstance(cb, EarlyStopping)]
        assert len(stoppers) == int(enabled)
        epochs[enabled] = fit.current_epoch
    assert epochs == {False: 4, True: 2}
