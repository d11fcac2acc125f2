"""One site's local round as a SuperNode runs it, without Flower: the ClientApp's ``train`` handler
decodes the message and calls :func:`node_train`; tests that stand in for SuperNodes call it too, so
both run the same steps.

``node`` is the SuperNode's node config (keys documented in :mod:`.client_app`): ``site``, ``partition``,
``data-root``, ``layout``, ``store``, ``teacher``, ``accelerator``, ``devices``.
"""
from __future__ import annotations

from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf, open_dict

__all__ = ["node_train", "node_value", "pin_teacher", "pin_hardware", "one_device"]


def node_value(node: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """A node-config value; an empty string counts as unset (``--node-config 'data-root=""'``)."""
    value = node.get(key, default)
    return default if value in (None, "") else value


def pin_teacher(cfg: Any, client_id: str, node: Mapping[str, Any], mode: str) -> None:
    """The teacher checkpoint this client loads is the node's own ``teacher``, wherever the server put a
    ``teacher_ckpt`` (``module`` or ``federation.client_module.<client_id>``). A real site (``partition="all"``)
    without ``teacher`` refuses a server-named path: it would load whatever file the server names on this
    host. The rehearsal (``derive``, every node on the server's host) keeps the server's path."""
    given = cfg.federation.get("client_module") if "federation" in cfg else None
    per = OmegaConf.to_container(given) if isinstance(given, DictConfig) else dict(given or {})
    own = per.get(client_id) or {}
    if "teacher_ckpt" not in cfg.module and "teacher_ckpt" not in own:
        return
    teacher = node_value(node, "teacher")
    if teacher is None:
        named = own.get("teacher_ckpt", cfg.module.get("teacher_ckpt"))
        if named not in (None, "") and mode == "all":
            from federation.errors import FederationError
            raise FederationError(f"node config of site {client_id!r}: the server names the teacher checkpoint "
                                  f"{named!r}; a real site loads only its own copy (set teacher=<path> in the node "
                                  f"config)")
        return
    per[client_id] = {**own, "teacher_ckpt": str(teacher)}
    if "federation" not in cfg:
        cfg.federation = {}
    cfg.federation.client_module = per


def one_device(value: Any) -> int | list[int]:
    """A node config's ``devices``: ``1``, or one GPU index as ``[i]`` (Lightning's form; ``i,`` too). More
    than one device would make Lightning launch DDP ranks by re-running the SuperNode's own command."""
    from engine.one_process import single_device

    one = single_device(value)
    if one is not None:
        return one
    from federation.errors import FederationError
    raise FederationError(f"node config devices={value!r}: a SuperNode trains in one process on one device; "
                          f"give devices=1 or one GPU index as devices=[i]")


def pin_hardware(cfg: Any, node: Mapping[str, Any]) -> None:
    """The node's hardware is its own: one process on one device of one host (a SuperNode starts no DDP ranks
    and joins no other host, whatever ``trainer.strategy`` / ``num_nodes`` / ``devices`` the server's host
    uses), on the node's ``accelerator`` and ``devices`` (:func:`one_device`) when its node config names
    them (default: the server's accelerator, 1 device)."""
    if "trainer" not in cfg or cfg.trainer is None:
        cfg.trainer = {}
    cfg.trainer.num_nodes, cfg.trainer.strategy = 1, "auto"
    cfg.trainer.devices = one_device(node_value(node, "devices", 1))
    if node_value(node, "accelerator") is not None:
        cfg.trainer.accelerator = str(node_value(node, "accelerator"))


def node_train(client_id: str, server_msg: Any, ccfg: Mapping[str, Any], node: Mapping[str, Any]) -> Any:
    """Train ``client_id`` for one round on this node's own data; returns the runner's ``ClientUpdate``.

    ``ccfg`` (the client config from the server) is data from the wire: it passes
    :func:`federation.received.check_received_config` before anything is built. The node's own settings override
    the server's: its data folder (every other data path the server chose must lie inside it,
    :func:`federation.received.pin_data_paths`) and layout, and its copy of the teacher's weights (the server's
    path means nothing on a site's host). It never opens an ``init_weights`` file: in its first round its local
    layers start from the file's entries the message carries (:mod:`federation.init_local`). A real site
    (``partition="all"``) must name its data folder; only the rehearsal (``derive``, every node holding the same
    dataset) reads the server's ``data.root``.
    """
    import pytorch_lightning as pl  # here, not at import: a site query must not pay for Lightning

    from federation.errors import FederationError
    from federation.received import check_received_config, pin_data_paths
    from federation.runner import get_base_datamodule, quiet_lightning, run_client
    from federation.transports.flower.partition import site_indices

    quiet_lightning()
    mode = str(node_value(node, "partition", "all"))
    shared = dict(getattr(server_msg, "config", {}) or {}).get("shared_indices")
    if mode == "all" and shared is not None and len(shared):  # data sharing sends [] before its first allocation
        raise FederationError(f"site {client_id!r} (partition=\"all\", its own data) was sent data sharing's shared "
                              f"indices: they index the server's dataset, which only a node holding that same "
                              f"dataset (partition=\"derive\") has; the pool's samples themselves are not sent")
    plain = check_received_config(ccfg)
    if node_value(node, "data-root") is not None:
        pin_data_paths(plain["data"], str(node_value(node, "data-root")))
    elif mode == "all":
        raise FederationError(f"node config of site {client_id!r}: partition=\"all\" (a real site) needs data-root, "
                              f"the folder of this site's own data; the server's path is not used")
    cfg = OmegaConf.create(plain)
    with open_dict(cfg):
        if node_value(node, "layout") is not None:
            cfg.data.layout = str(node_value(node, "layout"))
        pin_teacher(cfg, client_id, node, mode)
        pin_hardware(cfg, node)
        # a site never opens a file the server names (a review): the init_weights= file's local layers (FedBN's
        # batch norm) come in the message itself (ServerMessage.init_local); a path in a crafted config is dropped
        cfg.init_weights, cfg.init_weights_module = None, None
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)  # as the server before its base datamodule
    base = get_base_datamodule(cfg.data)
    indices = site_indices(cfg, base, client_id, mode)
    return run_client(client_id, server_msg, cfg, indices, str(node_value(node, "store", "fedmed_client_store")),
                      base)
