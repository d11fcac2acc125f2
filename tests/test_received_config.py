"""A Flower node's client config comes over the network (federation/received.py): it may build only what a
client run builds, no string in it may be an interpolation, and the keys a node owns are its own."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from federation.received import check_received_config, check_received_target
from lightning_modules.errors import ConfigError
from lightning_modules.targets import check_targets

ACCEPTED = ["pytorch_lightning.Trainer", "lightning_modules.nets.dnet.DNet", "federation.core.partition.dirichlet",
            "torch.optim.SGD", "federation.core.strategies.DataSharing", "federation.core.strategies.FedBN",
            "datamodules.digits.DigitsDataModule", "lightning_modules.segmentation.SegmentationModule",
            "lightning_modules.losses.hybrid.HybridCEDiceLoss", "segmentation_models_pytorch.Unet"]
# functions and classes of the project that are not what a client run builds: a file writer, a process
# launcher and its method (found by an audit: the earlier rule accepted any callable of the project)
REFUSED = ["os.system", "shutil.rmtree", "builtins.eval", "engine.distill.shutil.copyfile",
           "engine.artifacts.atomic_write_text", "federation.transports.flower.processes.ProcessGroups",
           "federation.transports.flower.processes.ProcessGroups.start", "federation.transports.ray.RayExecutor",
           "lightning_modules.targets.allow"]


@pytest.mark.parametrize("target", ACCEPTED)
def test_a_client_runs_classes_are_accepted(target):
    check_received_target(target, "client config")


@pytest.mark.parametrize("target", REFUSED)
def test_other_functions_and_classes_are_refused(target):
    with pytest.raises(ConfigError, match="refused"):
        check_targets({"data": {"x": {"_target_": target}}}, "client config", check_received_target)


@pytest.mark.parametrize("value", ["${oc.env:HOME}", "/data/${oc.env:SITE_DB_PASSWORD}",
                                   "${oc.create:'{_target_: engine.artifacts.atomic_write_text}'}"])
def test_interpolations_are_refused(value):
    cfg = {"data": {"_target_": "datamodules.digits.DigitsDataModule", "root": value}}
    with pytest.raises(ConfigError, match=r"data\.root.*interpolation"):
        check_received_config(cfg)


def test_node_owned_keys_are_dropped_and_the_input_is_untouched():
    cfg = {"seed": 0, "federation": {"executor": {"_target_": "federation.transports.ray.RayExecutor"}, "rounds": 2},
           "data": {"_target_": "datamodules.multisite.MultiSiteDataModule", "cache_dir": "/etc/x",
                    "sites": {"a": {"_target_": "datamodules.segmentation.VolumeSegmentationDataModule",
                                    "cache_dir": "/root/y"}}}}
    out = check_received_config(cfg)
    assert "executor" not in out["federation"] and out["federation"]["rounds"] == 2
    assert "cache_dir" not in out["data"] and "cache_dir" not in out["data"]["sites"]["a"]
    assert cfg["data"]["cache_dir"] == "/etc/x" and "executor" in cfg["federation"]


def test_node_train_refuses_a_crafted_config_before_building_anything(tmp_path: Path):
    """Through the wire format and the ClientApp's own entry (``node_train``): nothing is written."""
    pytest.importorskip("flwr")
    from federation.core.messages import ServerMessage
    from federation.transports.flower.node import node_train
    from federation.transports.flower.wire import decode_message, encode_message

    marker = tmp_path / "written_by_server.txt"
    crafted = [{"_target_": "engine.artifacts.atomic_write_text", "path": str(marker), "text": "x"},
               {"_target_": "datamodules.digits.DigitsDataModule",
                "root": f"${{oc.create:'{{_target_: engine.artifacts.atomic_write_text, path: {marker}, text: x}}'}}"}]
    for data in crafted:
        ccfg = {"seed": 0, "data": data, "module": {}, "model": {}, "trainer": {}, "federation": {}}
        msg, cid, received, _ = decode_message(encode_message(ServerMessage(0, {"w": torch.zeros(1)}, {}), "a", ccfg))
        with pytest.raises(ConfigError, match="refused"):
            node_train(cid, msg, received, {"site": "a"})
        assert not marker.exists()


def test_a_partial_net_from_the_server_is_one_line():
    """Security audit: ``module.net._partial_: true`` built a ``functools.partial`` the node failed on later."""
    net = {"_target_": "lightning_modules.nets.dnet.DNet", "in_channels": 1, "classes": 2, "_partial_": True}
    with pytest.raises(ConfigError, match=r"module\.net\._partial_=True refused"):
        check_received_config({"module": {"_target_": "lightning_modules.segmentation.SegmentationModule",
                                          "net": net}})
