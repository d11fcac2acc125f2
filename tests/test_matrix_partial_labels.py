"""Under partial labels (paper 004) the evaluation matrix's centralised row pools the sites' data as the sites
label it: it must not train on organs no site annotated on those cases (an audit found it did)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from omegaconf import OmegaConf

import federation.matrix as matrix
from federation import runner
from federation.runner import ClientIndices


class Slices(torch.utils.data.Dataset):
    """Eight 2x2 slices, each with organ 1 in the top row and organ 2 in the bottom row."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.zeros(1, 2, 2), "mask": torch.tensor([[0, 1], [2, 2]]), "index": i}


def test_centralised_row_trains_on_each_sites_own_annotation(monkeypatch):
    base = SimpleNamespace(train_dataset=Slices(), val_dataset=None, test_dataset=Slices(), num_classes=3,
                           batch_size=2)
    ccfg = OmegaConf.create({"federation": {"unannotated": "background", "ignore_index": 255}})
    idx = {"a": ClientIndices(np.array([0, 1, 2]), np.array([3])), "b": ClientIndices(np.array([4, 5, 6]), np.array([7]))}
    idx["a"].annotated, idx["b"].annotated = [1], [2]
    trained: dict[str, list[dict]] = {}

    def fake_train_local(cfg, dm, init, epochs, seed, *args, **kwargs):
        trained[f"call{len(trained)}"] = [dm.train_dataset[i] for i in range(len(dm.train_dataset))]
        return SimpleNamespace(net=torch.nn.Linear(1, 1)), {}

    monkeypatch.setattr(matrix, "train_local", fake_train_local)
    server = SimpleNamespace(
        fed=OmegaConf.create({"matrix": {"fl_local": "finetune", "standalone": False, "centralised": True},
                              "local_epochs": 1}),
        client_ids=["a", "b"], indices=idx, base=base, global_state={}, seed=0, ccfg=ccfg,
        strategy=SimpleNamespace(is_local=lambda key: False), store=SimpleNamespace(root="/tmp"),
        main_metric=lambda: "dice", client_loader=lambda cid, split: None, loader=lambda dataset: None,
        evaluate=lambda module, loader, stage: {"test/dice": 0.0},
        module_for=lambda state, cid=None: SimpleNamespace(net=torch.nn.Linear(1, 1)),
        client_datamodule=lambda cid, seed: runner.client_datamodule(ccfg, base, idx[cid], None, seed))
    matrix.evaluation_matrix(server)
    central = trained[f"call{len(trained) - 1}"]  # the last row trained is the centralised one
    assert sorted(item["index"] for item in central) == [0, 1, 2, 4, 5, 6]
    for item in central:
        organ = 1 if item["index"] < 4 else 2  # site a annotates organ 1, site b organ 2
        assert set(item["mask"].unique().tolist()) == {0, organ}, item
