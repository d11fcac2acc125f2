"""What a SuperNode does with a train message (federation.transports.flower.node.node_train), without Flower:
the node's own settings override the server's (data folder, layout, its copy of the teacher), and a
client config naming a class that is not ours is refused before anything is built."""
from __future__ import annotations

import pytest

import federation.runner as runner
import federation.transports.flower.partition as node_partition
from federation.transports.flower.node import node_train, node_value
from engine.errors import ConfigError

CCFG = {"seed": 3, "data": {"_target_": "datamodules.segmentation.VolumeSegmentationDataModule", "root": "/server/data",
                            "layout": "lits"},
        "module": {"_target_": "lightning_modules.distillation.DistillationModule", "teacher_ckpt": "/server/teacher.pt"},
        "federation": {"client_module": {"site_b": {"alpha": 0.5}}}}


@pytest.fixture
def seen(monkeypatch):
    """Replaces the data and the training with recorders: only the node's config handling runs."""
    got = {}
    monkeypatch.setattr(runner, "get_base_datamodule", lambda data: got.setdefault("data", data))
    monkeypatch.setattr(node_partition, "site_indices", lambda cfg, base, cid, mode: got.setdefault("mode", mode))
    monkeypatch.setattr(runner, "run_client", lambda cid, msg, cfg, idx, store, base: got.update(
        cfg=cfg, store=store, client_id=cid) or "update")
    return got


def test_node_teacher_and_data_override_the_servers_paths(seen):
    node = {"site": "site_b", "data-root": "/site_b/ct", "layout": "kits", "teacher": "/site_b/teacher.pt",
            "partition": "all", "store": "/site_b/store"}
    assert node_train("site_b", None, CCFG, node) == "update"
    cfg = seen["cfg"]
    assert (cfg.data.root, cfg.data.layout, seen["mode"], seen["store"]) == ("/site_b/ct", "kits", "all", "/site_b/store")
    assert cfg.federation.client_module.site_b == {"alpha": 0.5, "teacher_ckpt": "/site_b/teacher.pt"}
    assert cfg.module.teacher_ckpt == "/server/teacher.pt"  # other sites' entries untouched: only site_b's override


def test_node_without_settings_keeps_the_servers_config(seen):
    node_train("site_a", None, CCFG, {"site": "site_a", "data-root": ""})  # empty counts as unset
    cfg = seen["cfg"]
    assert (cfg.data.root, seen["mode"], seen["store"]) == ("/server/data", "all", "fedmed_client_store")
    assert "site_a" not in cfg.federation.client_module
    assert node_value({"k": ""}, "k", "d") == "d"


def test_node_refuses_a_foreign_target_before_building_anything(seen):
    bad = {**CCFG, "module": {"_target_": "os.system", "command": "touch /tmp/pwned"}}
    with pytest.raises(ConfigError, match="os.system"):
        node_train("site_a", None, bad, {"site": "site_a"})
    assert seen == {}
