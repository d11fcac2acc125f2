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

    validated: dict[str, list[dict]] = {}

    def fake_train_local(cfg, dm, init, epochs, seed, *args, **kwargs):
        trained[f"call{len(trained)}"] = [dm.train_dataset[i] for i in range(len(dm.train_dataset))]
        validated[f"call{len(validated)}"] = [dm.val_dataset[i] for i in range(len(dm.val_dataset))]
        return SimpleNamespace(net=torch.nn.Linear(1, 1)), {}

    monkeypatch.setattr(matrix, "train_local", fake_train_local)
    server = SimpleNamespace(
        fed=OmegaConf.create({"matrix": {"fl_local": "finetune", "standalone": False, "centralised": True},
                              "local_epochs": 1}),
        client_ids=["a", "b"], indices=idx, base=base, global_state={}, init_state=None, seed=0, ccfg=ccfg,
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
    # a review: the centralised row's best epoch was then chosen on the pooled validation split with full labels
    checked = validated[f"call{len(validated) - 1}"]
    assert sorted(item["index"] for item in checked) == [3, 7]
    for item in checked:
        organ = 1 if item["index"] < 4 else 2
        assert set(item["mask"].unique().tolist()) == {0, organ} and item["annotated"].tolist()[organ], item


def test_every_trained_matrix_row_keeps_its_best_validation_epoch(monkeypatch):
    """A paper review (paper 003 §4: "we always keep the model with the highest local validation metrics"): FL_local
    was a client's best round, but the standalone, centralised and fine-tuned rows were scored at their last
    epoch, which tilted Table 1's FL_local-vs-baseline gap. Every row the matrix trains now keeps its best epoch
    (``matrix.select: best``); ``last`` keeps the old rule."""
    base = SimpleNamespace(train_dataset=Slices(), val_dataset=None, test_dataset=Slices(), num_classes=3,
                           batch_size=2)
    ccfg = OmegaConf.create({"federation": {}})
    idx = {"a": ClientIndices(np.array([0, 1, 2]), np.array([3])), "b": ClientIndices(np.array([4, 5, 6]), np.array([7]))}
    for select, expected in (("best", True), ("last", False), (None, True)):
        asked: list[bool] = []

        def fake_train_local(cfg, dm, init, epochs, seed, *args, keep_best=False, **kwargs):
            asked.append(keep_best)
            return SimpleNamespace(net=torch.nn.Linear(1, 1)), {}

        monkeypatch.setattr(matrix, "train_local", fake_train_local)
        mcfg = {"fl_local": "finetune", "standalone": True, "centralised": True, **({"select": select} if select else {})}
        server = SimpleNamespace(
            fed=OmegaConf.create({"matrix": mcfg, "local_epochs": 1}), client_ids=["a", "b"], indices=idx, base=base,
            global_state={}, init_state=None, seed=0, ccfg=ccfg, strategy=SimpleNamespace(is_local=lambda key: False),
            store=SimpleNamespace(root="/tmp"), main_metric=lambda: "dice", client_loader=lambda cid, split: None,
            loader=lambda dataset: None, evaluate=lambda module, loader, stage: {"test/dice": 0.0},
            module_for=lambda state, cid=None: SimpleNamespace(net=torch.nn.Linear(1, 1)),
            client_datamodule=lambda cid, seed: runner.client_datamodule(ccfg, base, idx[cid], None, seed))
        matrix.evaluation_matrix(server)
        assert asked == [expected] * 5, (select, asked)   # 2 fine-tuned FL_local, 2 baselines, 1 centralised


def test_best_weights_restores_the_best_validation_epoch(tmp_path):
    """``callbacks.best_weights.BestWeights`` (what ``train_local(keep_best=True)`` adds): the weights at the end of
    fit are those of the epoch whose monitor was best, by the monitor's way (loss: min), ties the earlier one."""
    import pytorch_lightning as pl

    from callbacks.best_weights import BestWeights

    class Scripted(pl.LightningModule):
        """Validation loss 3, 1, 2, 1 over four epochs: the best is epoch 1, after which the weight is 2.0."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, i):
            with torch.no_grad():
                self.w.add_(1.0)                      # the weight counts the epochs trained
            return (self.w * 0).sum() + batch.sum() * 0

        def validation_step(self, batch, i):
            self.log("val/loss", [3.0, 1.0, 2.0, 1.0][self.current_epoch])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    data = torch.utils.data.DataLoader(torch.zeros(1, 1))
    cb = BestWeights("val/loss")
    trainer = pl.Trainer(max_epochs=4, callbacks=[cb], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         default_root_dir=tmp_path)
    module = Scripted()
    trainer.fit(module, data, data)
    assert cb.best_epoch == 1 and cb.best_value == 1.0 and float(module.w) == 2.0


def test_best_weights_does_not_copy_a_modules_frozen_entries(tmp_path):
    """A module's ``frozen_prefixes`` (a distillation module's teacher) stay out of ``BestWeights``' copy, which
    held the whole teacher before; the restored state still loads, with those entries as they are."""
    import pytorch_lightning as pl

    from callbacks.best_weights import BestWeights

    class WithTeacher(pl.LightningModule):
        frozen_prefixes = ("teacher.",)

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.teacher = torch.nn.Linear(3, 3)

        def training_step(self, batch, i):
            with torch.no_grad():
                self.w.add_(1.0)
            return (self.w * 0).sum() + batch.sum() * 0

        def validation_step(self, batch, i):
            self.log("val/loss", [3.0, 1.0, 2.0][self.current_epoch])

        def configure_optimizers(self):
            return torch.optim.SGD([self.w], lr=0.0)

    copied: list[set] = []

    class Spy(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            copied.append(set(cb._state))

    data = torch.utils.data.DataLoader(torch.zeros(1, 1))
    cb = BestWeights("val/loss")
    trainer = pl.Trainer(max_epochs=3, callbacks=[cb, Spy()], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         default_root_dir=tmp_path)
    module = WithTeacher()
    teacher = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    trainer.fit(module, data, data)
    assert copied == [{"w"}]
    assert float(module.w) == 2.0
    assert all(torch.equal(v, module.teacher.state_dict()[k]) for k, v in teacher.items())
