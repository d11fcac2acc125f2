"""What a SuperNode does with a train message (federation.transports.flower.node.node_train), without Flower:
the node's own settings override the server's (data folder, layout, its copy of the teacher), and a
client config naming a class that is not ours is refused before anything is built."""
from __future__ import annotations

import pytest

import federation.runner as runner
import federation.transports.flower.partition as node_partition
from federation.transports.flower.node import node_train, node_value
from engine.errors import ConfigError
from federation.errors import FederationError

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


def test_the_node_teacher_wins_wherever_the_server_names_one(seen):
    """Found by an audit: the server left ``module.teacher_ckpt`` out and named a file of its choosing in
    ``client_module.site_b``; the node kept it and loaded that file. A real site without ``teacher`` now
    refuses a server-named teacher path."""
    ccfg = {**CCFG, "module": {"_target_": "lightning_modules.distillation.DistillationModule"},
            "federation": {"client_module": {"site_b": {"teacher_ckpt": "/home/other_project/private.ckpt"}}}}
    node = {"site": "site_b", "data-root": "/site_b/ct", "teacher": "/site_b/teacher.pt", "partition": "all"}
    node_train("site_b", None, ccfg, node)
    assert seen["cfg"].federation.client_module.site_b.teacher_ckpt == "/site_b/teacher.pt"
    seen.clear()
    for server_side in (ccfg, CCFG):
        with pytest.raises(FederationError, match="site_b.*names the teacher checkpoint.*set teacher="):
            node_train("site_b", None, server_side, {**node, "teacher": ""})
    assert seen == {}


HIDDEN = {"positional": {"module": {"_target_": "lightning_modules.distillation.DistillationModule", "_recursive_": False,
                                   "_args_": [{}, {}, {}, [], {}, 2, "/home/other_project/private.ckpt"]}},
          "nested": {"module": {"_target_": "lightning_modules.segmentation.SegmentationModule",
                                "net": {"_target_": "lightning_modules.distillation.DistillationModule",
                                        "teacher_ckpt": "/home/other_project/private.ckpt"}}},
          "deep_client_module": {"federation": {"client_module": {"site_b": {
              "net": {"teacher_ckpt": "/home/other_project/private.ckpt"}}}}}}


@pytest.mark.parametrize("where", sorted(HIDDEN))
def test_a_teacher_path_the_pin_cannot_see_is_refused(seen, where):
    """Found by an audit: a teacher path passed as ``DistillationModule``'s 7th positional argument
    (``_args_``) got past the pin, and a real site without ``teacher`` loaded the server-named file (its
    error text, returned to the server, even told which files exist). Positional ``_args_`` and a
    ``teacher_ckpt`` anywhere but the two pinned places are refused before anything is built."""
    node = {"site": "site_b", "data-root": "/site_b/ct", "partition": "all"}
    with pytest.raises(ConfigError, match="_args_ refused|teacher_ckpt refused"):
        node_train("site_b", None, {**CCFG, **HIDDEN[where]}, node)
    assert seen == {}


@pytest.mark.parametrize("federation", [{"client_module": None}, {}, None], ids=["null", "unset", "no_federation"])
def test_a_config_without_client_modules_passes_the_teacher_pin(seen, federation):
    """A plain federation (no ``client_module``, or no ``federation`` key at all) must pass :func:`pin_teacher`
    untouched (CI found the first version calling ``to_container`` on a plain ``{}``)."""
    ccfg = {**CCFG, "module": {"_target_": "lightning_modules.segmentation.SegmentationModule"}}
    ccfg = {k: v for k, v in ccfg.items() if k != "federation"}
    if federation is not None:
        ccfg["federation"] = federation
    node_train("site_a", None, ccfg, {"site": "site_a", "data-root": "/site_a/ct"})
    assert "teacher_ckpt" not in seen["cfg"].module


def test_a_rehearsal_node_without_settings_keeps_the_servers_config(seen):
    node_train("site_a", None, CCFG, {"site": "site_a", "partition": "derive", "data-root": ""})  # "" is unset
    cfg = seen["cfg"]
    assert (cfg.data.root, seen["mode"], seen["store"]) == ("/server/data", "derive", "fedmed_client_store")
    assert "site_a" not in cfg.federation.client_module
    assert node_value({"k": ""}, "k", "d") == "d"


def test_a_real_site_must_name_its_data_folder(seen):
    """``partition="all"`` (the default: a real site) without ``data-root`` would train on the server's path."""
    with pytest.raises(FederationError, match="site_a.*needs data-root"):
        node_train("site_a", None, CCFG, {"site": "site_a", "data-root": ""})
    assert seen == {}


@pytest.mark.parametrize("key,value", [("split_file", "/etc/hosts"), ("image_dir", "../../other_study/images"),
                                       ("split_dir", "~/lists"), ("sites", {"b": {"root": "/data/other_study"}})])
def test_the_server_cannot_point_a_node_outside_its_data_root(seen, key, value):
    """Found by an audit: with ``data-root`` set, the server still chose ``split_file``, image folders or a
    site's root anywhere on the node; now every data path must stay under the node's folder."""
    ccfg = {**CCFG, "data": {**CCFG["data"], key: value}}
    with pytest.raises(ConfigError, match=rf"data\.{key}.*refused.*/site_b/ct"):
        node_train("site_b", None, ccfg, {"site": "site_b", "data-root": "/site_b/ct"})
    assert seen == {}


def test_relative_data_paths_stay_under_the_node_root(seen):
    ccfg = {**CCFG, "data": {**CCFG["data"], "split_file": "splits/fold0.json", "image_dir": "train/images",
                             "case_pattern": r"^(\d+)_(?P<slice>\d+)"}}
    node_train("site_b", None, ccfg, {"site": "site_b", "data-root": "/site_b/ct", "teacher": "t.pt"})
    data = seen["cfg"].data
    assert (data.root, data.split_file, data.image_dir) == ("/site_b/ct", "/site_b/ct/splits/fold0.json", "train/images")


def test_a_sites_relative_root_from_the_server_is_under_the_node_root(seen):
    """A second audit: a relative ``data.sites.<s>.root`` passed the pin and was read from the node's working
    folder, outside its ``data-root``."""
    ccfg = {**CCFG, "data": {**CCFG["data"], "sites": {"b": {"root": "work/other_study", "layout": "lits",
                                                             "split_file": "b_split.json"}}}}
    node_train("site_b", None, ccfg, {"site": "site_b", "data-root": "/site_b/ct", "teacher": "t.pt"})
    site = seen["cfg"].data.sites.b
    assert (site.root, site.split_file) == ("/site_b/ct/work/other_study", "/site_b/ct/b_split.json")


def test_node_refuses_a_foreign_target_before_building_anything(seen):
    bad = {**CCFG, "module": {"_target_": "os.system", "command": "touch /tmp/pwned"}}
    with pytest.raises(ConfigError, match="os.system"):
        node_train("site_a", None, bad, {"site": "site_a"})
    assert seen == {}


def test_a_received_net_config_builds_offline_and_names_no_hub_model():
    """The server's config cannot make a node fetch anything: weights come from the server every round."""
    from federation.received import check_received_config

    net = {"_target_": "segmentation_models_pytorch.Unet", "encoder_name": "resnet18", "encoder_weights": "imagenet"}
    got = check_received_config({**CCFG, "module": {**CCFG["module"], "net": net}})
    assert got["module"]["net"]["encoder_weights"] is None
    with pytest.raises(ConfigError, match="module.net.encoder_name.*Hugging Face Hub"):
        check_received_config({**CCFG, "module": {**CCFG["module"], "net": {**net, "encoder_name": "tu-hf-hub:a/b"}}})


def test_a_per_client_module_setting_builds_offline_too():
    """A review: ``federation.client_module.<site>`` is merged over ``module`` on the node after the check, so a
    teacher the server set there could fetch Hub weights or read a local file as a timm checkpoint."""
    from federation.received import check_received_config

    teacher = {"_target_": "segmentation_models_pytorch.Unet", "encoder_name": "resnet18",
               "encoder_weights": "imagenet"}
    fed = {**CCFG.get("federation", {}), "client_module": {"site_b": {"teacher": teacher}}}
    got = check_received_config({**CCFG, "federation": fed})
    assert got["federation"]["client_module"]["site_b"]["teacher"]["encoder_weights"] is None
    for bad, needle in [({"encoder_name": "tu-hf-hub:a/b"}, "Hugging Face Hub"),
                        ({"checkpoint_path": "/etc/passwd"}, "checkpoint_path='/etc/passwd' refused")]:
        fed = {**fed, "client_module": {"site_b": {"teacher": {**teacher, **bad}}}}
        with pytest.raises(ConfigError, match=rf"federation\.client_module\.site_b\.teacher.*{needle}"):
            check_received_config({**CCFG, "federation": fed})


def test_the_node_decides_its_own_hardware(seen):
    """Found by an audit: the server's ``trainer.strategy=ddp num_nodes=2`` reached the node as is (Ray's
    executor already pinned one device); a SuperNode trains in one process, on its own accelerator."""
    ccfg = {**CCFG, "trainer": {"strategy": "ddp", "num_nodes": 2, "devices": 8, "accelerator": "gpu", "max_epochs": 3}}
    node = {"site": "site_b", "data-root": "/site_b/ct", "teacher": "/site_b/teacher.pt", "partition": "all"}
    node_train("site_b", None, ccfg, node)
    assert dict(seen["cfg"].trainer) == {"strategy": "auto", "num_nodes": 1, "devices": 1, "accelerator": "gpu",
                                         "max_epochs": 3}
    node_train("site_b", None, ccfg, {**node, "accelerator": "gpu", "devices": "[1]"})
    assert (seen["cfg"].trainer.accelerator, list(seen["cfg"].trainer.devices)) == ("gpu", [1])
    for many in ("2", "0,1", "[0, 1]"):  # found by a review: devices=2 made Lightning launch DDP on the node
        with pytest.raises(FederationError, match=r"devices=.*one process on one device"):
            node_train("site_b", None, ccfg, {**node, "devices": many})


def test_a_site_on_its_own_data_refuses_shared_indices(seen):
    """Found by a review: data sharing sends the pool as indices into the server's dataset, and a site on its own
    folder (``partition="all"``) took them as indices into *its* data (its own items, some of its validation
    split). Only a node holding the server's dataset (``derive``) may take them."""
    from federation.core.messages import ServerMessage

    msg = ServerMessage(0, {}, {"shared_indices": [1, 2, 3]})
    with pytest.raises(FederationError, match="site 'site_b' .*shared indices.*partition=\"derive\""):
        node_train("site_b", msg, CCFG, {"site": "site_b", "data-root": "/site_b/ct", "partition": "all"})
    assert "mode" not in seen                                      # refused before its data was touched
    assert node_train("site_b", msg, CCFG, {"site": "site_b", "partition": "derive"}) == "update"
    nothing_yet = ServerMessage(0, {}, {"shared_indices": []})    # data sharing's message before its first pool
    assert node_train("site_b", nothing_yet, CCFG, {"site": "site_b", "data-root": "/site_b/ct",
                                                    "teacher": "/site_b/teacher.pt"}) == "update"
