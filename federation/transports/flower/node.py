"""One site's local round as a SuperNode runs it, without Flower: the ClientApp's ``train`` handler
decodes the message and calls :func:`node_train`; tests that stand in for SuperNodes call it too, so
both run the same steps.

``node`` is the SuperNode's node config (keys documented in :mod:`.client_app`): ``site``, ``partition``,
``data-root``, ``layout``, ``store``, ``teacher``.
"""
from __future__ import annotations

from typing import Any, Mapping

from omegaconf import OmegaConf, open_dict

__all__ = ["node_train", "node_value"]


def node_value(node: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """A node-config value; an empty string counts as unset (``--node-config 'data-root=""'``)."""
    value = node.get(key, default)
    return default if value in (None, "") else value


def node_train(client_id: str, server_msg: Any, ccfg: Mapping[str, Any], node: Mapping[str, Any]) -> Any:
    """Train ``client_id`` for one round on this node's own data; returns the runner's ``ClientUpdate``.

    ``ccfg`` (the client config from the server) is data from the wire: it passes
    :func:`federation.received.check_received_config` before anything is built. The node's own settings override the server's: its data folder and
    layout, and its copy of the teacher's weights (the server's path means nothing on a site's host).
    """
    import pytorch_lightning as pl  # here, not at import: a site query must not pay for Lightning

    from federation.received import check_received_config
    from federation.runner import get_base_datamodule, quiet_lightning, run_client
    from federation.transports.flower.partition import site_indices

    quiet_lightning()
    cfg = OmegaConf.create(check_received_config(ccfg))
    with open_dict(cfg):
        for key, node_key in (("root", "data-root"), ("layout", "layout")):
            if node_value(node, node_key) is not None:
                cfg.data[key] = str(node_value(node, node_key))
        if node_value(node, "teacher") is not None and "teacher_ckpt" in cfg.module:
            per = OmegaConf.to_container(cfg.federation.get("client_module") or {})
            per[client_id] = {**(per.get(client_id) or {}), "teacher_ckpt": str(node_value(node, "teacher"))}
            cfg.federation.client_module = per
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)  # as the server before its base datamodule
    base = get_base_datamodule(cfg.data)
    indices = site_indices(cfg, base, client_id, str(node_value(node, "partition", "all")))
    return run_client(client_id, server_msg, cfg, indices, str(node_value(node, "store", "fedmed_client_store")),
                      base)
