"""Federated 3D (paper 003 as run): +exp=fed_pancreas_3d trains SegResNetVAE on 3D patches at each site,
evaluates whole volumes by sliding window at the server and in the evaluation matrix, with site 1's
partial labels; a 2D/3D mismatch of net and data stops with one line naming the other exp."""
from __future__ import annotations

import json
import re

import pytest
import torch

from engine.builders import check_dimensions
from engine.errors import ConfigError
from experiments.run import dispatch
from federation.runner import ClientIndices, client_datamodule
from federation.server import Server
from tests.hydra_helpers import compose_run
from tests.volumetric_helpers import TINY_FED_3D

FED_3D = ["+exp=fed_pancreas_3d", *TINY_FED_3D, "logger=csv", "federation.progress=false"]


def test_3d_clients_train_on_patches_and_evaluate_whole_volumes(tmp_path):
    cfg = compose_run([*FED_3D, "federation.rounds=1", "federation.unannotated=background"], tmp_path)
    server = Server(cfg)
    assert server.client_ids == ["site1", "site2"]
    assert set(server.labels.tolist()) <= {0, 1, 2} and server.labels.max() == 2  # per case, no patch drawn
    ind: ClientIndices = server.indices["site1"]
    assert ind.annotated == [1] and len(ind.train) and len(ind.val) and len(ind.test)
    dm = client_datamodule(server.ccfg, server.base, ind, None, seed=0)
    assert {d.centre_classes for d in dm.train_dataset.dataset.datasets} == {(1,)}  # patches centred on its organ
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (1, 16, 16, 16) and batch["label_mask"].tolist()[0] == [True, True, False]
    assert not (batch["mask"] == 2).any()                    # site 1 annotates the organ only: tumour -> bg
    assert all(c.startswith("site1/") for c in batch["case_id"])
    whole = next(iter(dm.val_dataloader()))                  # a training case of site 1, as a whole volume
    assert whole["image"].shape[0] == 1 and min(whole["image"].shape[2:]) > 16
    assert whole["case_id"][0].startswith("site1/")
    test = next(iter(server.client_loader("site2", "test")))
    assert test["image"].shape[0] == 1 and test["case_id"][0].startswith("site2/")
    assert (test["mask"] == 2).any() or (test["mask"] == 1).any()
    # full labels at test, at the partially labelled site too: site 1 trains on its organ only, but its own test
    # cases are scored on organ and tumour (site 2 annotates everything anyway, so it alone cannot tell)
    for cid in ("site1", "site2"):
        seen = set().union(*(set(torch.unique(b["mask"]).tolist()) for b in server.client_loader(cid, "test")))
        assert seen == {0, 1, 2}, (cid, seen)
    row = server.evaluate(server.module_for(server.global_state), server.client_loader("site2", "test"), "test")
    assert 0.0 <= row["test/dice"] <= 1.0 and "test/hd95" in row


def test_without_module_roi_size_a_federations_modules_slide_a_patch_sized_window(tmp_path):
    """A review: ``module.roi_size`` came from the trainer's datamodule in ``setup``, which a federation's
    evaluation (loaders, no datamodule) and its clients' ``SubsetDataModule`` do not carry: whole volumes went
    through the net in one piece, unlike predict's patch-sized window. ``build_module`` sets it from the data."""
    cfg = compose_run([*FED_3D, "federation.rounds=1", "module.roi_size=null"], tmp_path)
    patch = tuple(int(p) for p in cfg.data.patch_size)
    server = Server(cfg)
    assert server.template.roi_size == patch and server.module_for(server.global_state).roi_size == patch
    dm = client_datamodule(server.ccfg, server.base, server.indices["site1"], None, seed=0)
    assert tuple(dm.patch_size) == patch


@pytest.mark.slow  # two rounds of a 3D net plus the matrix's whole-volume evaluations: about 2 CPU minutes
def test_two_round_3d_federation_writes_metrics(tmp_path):
    cfg = compose_run([*FED_3D, "federation.rounds=2", "federation.local_epochs=1",
                       "federation.matrix.standalone=false", "federation.matrix.centralised=false",
                       "trainer.limit_train_batches=1", "module.overlap=0",   # few sliding windows on CPU
                       "federation.eval_clients=none", "federation.eval_test_every_round=false",
                       "federation.unannotated=background"], tmp_path)   # the marginal loss on 3D patches
    dispatch(cfg)
    run = tmp_path / "run"
    saved = json.loads((run / "metrics.json").read_text())
    for key in ("test/dice", "test/hd95", "test/nsd", "test/dice_organ"):
        assert key in saved, key
    # found by a walkthrough: the partition table named the classes by the kits layout (kidney | tumor) while
    # the metrics said organ/tumor (data.class_names); the datamodule now takes data.class_names
    assert "| organ | tumor |" in (run / "partition.md").read_text().replace("  ", " ")
    assert 0.0 <= saved["test/dice"] <= 1.0
    rounds = (run / "rounds.csv").read_text().splitlines()
    assert len(rounds) == 3                                  # header + 2 rounds
    matrix = (run / "evaluation_matrix.md").read_text()
    assert "FL_global" in matrix and "site1_FL_local" in matrix and "pooled" in matrix
    state = torch.load(run / "global_final.pt", weights_only=True)
    assert any(k.startswith("vae_") for k in state)          # SegResNetVAE's VAE branch was federated too


@pytest.mark.parametrize("exp,model,other", [("fed_pancreas", "segresnet_vae", "fed_pancreas_3d"),
                                             ("fed_pancreas", "unet3d", "fed_pancreas_3d"),
                                             ("fed_pancreas_3d", "dnet", "fed_pancreas")])
def test_2d_3d_mismatch_is_one_line_naming_the_other_exp(tmp_path, exp, model, other):
    cfg = compose_run([f"+exp={exp}", f"model={model}"], tmp_path)
    with pytest.raises(ConfigError, match=rf"model={model} is a [23]D net .*: use \+exp={other}$"):
        check_dimensions(cfg, {"model": model, "data": "x"})


@pytest.mark.parametrize("exp,model,hint", [("pancreas_3d", "dnet", "use a 3D net (model=unet3d or model=segresnet_vae)"),
                                            ("lits_dnet", "unet3d", "use a 2D net (e.g. model=dnet) or 3D patch data")])
def test_2d_3d_mismatch_without_an_other_exp_suggests_a_net_of_the_datas_kind(tmp_path, exp, model, hint):
    """A walkthrough ran ``+exp=pancreas_3d model=dnet`` and was told to use a 2D net (it had given one): the
    hint now names a net of the data's kind."""
    cfg = compose_run([f"+exp={exp}", f"model={model}"], tmp_path)
    with pytest.raises(ConfigError, match=re.escape(hint)):
        check_dimensions(cfg, {"model": model, "data": "x"})
