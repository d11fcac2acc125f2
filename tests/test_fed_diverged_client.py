"""A client whose local training diverges is dropped, and nothing of its round is kept (FedBN's local BN
included), so the server's evaluation and a resume go on as if it had not trained that round."""
from __future__ import annotations

import csv
import math

import torch
from omegaconf import OmegaConf, open_dict

from experiments.run import dispatch
from federation.store import ClientStore
from tests.hydra_helpers import compose_run

FED = ["+exp=fed_digits_datashare", "federation/strategy=fedbn", "federation/partition=iid", "logger=csv",
       "model.width=4", "federation.num_clients=2", "federation.clients_per_round=2", "federation.local_epochs=1",
       "federation.min_clients=1", "federation.progress=false", "trainer.limit_train_batches=10"]


def _diverging(cfg):
    with open_dict(cfg):
        cfg.federation.client_module = OmegaConf.create({"1": {"optimizer": {"lr": 1.0e30}}})
    return cfg


def test_a_diverged_client_keeps_nothing_of_its_round_and_the_run_resumes(tmp_path):
    """A review: client 1 (lr 1e30) was dropped for non-finite weights after it had stored its NaN batch norm,
    so FedBN's server validation and pooled test (mean of the clients' BN) were NaN / chance every round, and
    ``resume`` refused the run's own client store."""
    metrics = dispatch(_diverging(compose_run([*FED, "federation.rounds=2"], tmp_path)))
    rows = list(csv.DictReader(open(tmp_path / "run" / "rounds.csv")))
    assert [int(r["dropped"]) for r in rows] == [1, 1]
    # with client 0's BN alone (chance is 0.1; the NaN BN gave 0.100 and a NaN loss every round)
    assert all(math.isfinite(float(r["server_val/loss"])) and float(r["server_val/acc"]) > 0.2 for r in rows[1:])
    assert math.isfinite(metrics["fed/global/test/loss"]) and metrics["fed/global/test/acc"] > 0.2
    store = ClientStore(tmp_path / "run" / "client_store")
    for cid in store.index():
        assert all(bool(torch.isfinite(v.float()).all()) for v in store.load(cid, "local_state").values()), cid
    assert "1" not in store.index() or not store.load("1", "history")  # it never completed a round
    resumed = dispatch(_diverging(compose_run([*FED, "federation.rounds=3", "resume=true"], tmp_path)))
    assert math.isfinite(resumed["fed/global/test/loss"])
    assert len(list(csv.DictReader(open(tmp_path / "run" / "rounds.csv")))) == 3
