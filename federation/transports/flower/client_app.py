"""The Flower ClientApp: one site's process runs the project's client runner on its own data.

The SuperNode's node config names the site and its data (``flower-supernode --node-config``):

* ``site`` (required): the client id this node answers for (e.g. ``"hospital_a"``, or ``"3"`` in the
  rehearsal of a partitioned dataset);
* ``partition``: ``derive`` (rehearsal: recompute the server's partition from the seed and keep this
  site's part) or ``all`` (a real site: all of its local training data); default ``all``;
* ``data-root`` / ``layout``: override ``data.root`` / ``data.layout`` of the experiment's data config
  (the site's own folder);
* ``store``: the site's client-state folder (FedBN's local BatchNorm entries, history); default
  ``./fedmed_client_store``;
* ``privacy``: ``secagg`` makes the node refuse any ``train`` message that is not part of a SecAgg+ round
  (a site's own guarantee: the server cannot ask it for its weights in clear); ``dp`` likewise refuses a
  ``train`` message that does not ask for DP and needs ``dp-clipping-norm``, ``dp-sensitivity``, ``dp-epsilon``
  and ``dp-delta`` in the node config, which replace the server's values (the site's own noise holds);
  ``dp-release-metrics`` (default false) replaces the server's ``dp.release_metrics``: under DP a node sends its
  validation metrics only when released, since no noise covers them.
* ``accelerator`` / ``devices``: the node's own hardware for local training (default: the server's
  accelerator, 1 device; ``devices="[1]"`` picks GPU 1); a node always trains in one process on one device
  (``trainer.strategy``, ``num_nodes`` and ``devices`` of the server's config are replaced:
  :func:`.node.pin_hardware`);
* ``teacher``: the site's copy of the frozen teacher's weights for a distillation module (the federated
  student ``fed_hlfd`` of :mod:`federation.fed_distill`): replaces the server's ``teacher_ckpt`` for this site, in
  ``module`` or ``federation.client_module`` (the server's path means nothing on a site's host, and a real site
  without ``teacher`` refuses it rather than load a file the server names: :func:`.node.pin_teacher`).

A ``train`` message carries the global weights and the experiment's client config; the reply carries
weights, a sample count and scalar metrics only (:mod:`.wire`). A ``query`` message asks which site a
node is. ``fedmed.privacy=dp`` in the message wraps the handler with Flower's ``LocalDpMod`` (clipping
+ Gaussian noise of the weights on the client, before they leave; the scalar metrics, which it does not noise,
are withheld unless released). A SecAgg+ message (one carrying the
``secaggplus_configs`` record of ``SecAggPlusWorkflow``) goes through Flower's ``secaggplus_mod``, which
answers the protocol's key stages itself and calls the handler only to collect the masked vector: the
handler then replies with its floating entries' delta ``w_k - w_global`` in float64 (:func:`.wire.secagg_update`),
which the mod weights by ``n_k / max_weight``, clips, quantises and masks, and its integer entries in clear.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.mod import LocalDpMod
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from federation.transports import client_user_error
from federation.transports.code_identity import code_fingerprint
from federation.transports.flower.node import node_train, node_value
from federation.transports.flower.privacy import PRIVACY, dp_problem
from federation.transports.flower.wire import PREFIX, clipped_entries, decode_message, encode_update, secagg_update

__all__ = ["app"]

log = logging.getLogger("federation.transports.flower.client_app")


def _node(context: Context, key: str, default: Any = None) -> Any:
    return node_value(context.node_config, key, default)


DP_KEYS = ("clipping_norm", "sensitivity", "epsilon", "delta")


def _dp_settings(msg: Message, context: Context) -> dict[str, float] | None:
    """The ``LocalDpMod`` settings for this train message, or None (no DP). A node started with ``privacy=dp``
    refuses a train message that does not ask for DP, and applies its own ``dp-clipping-norm`` /
    ``dp-sensitivity`` / ``dp-epsilon`` / ``dp-delta`` (all four required) in place of the server's: a site's
    own guarantee (a review: the server's round config alone decided DP and its epsilon, so a server sending
    ``privacy=none`` got clear weights; a later one: a value left to the server, ``sensitivity=0``, made the
    noise 0). The server must still ask for DP: its message then carries the float entries only, which
    ``LocalDpMod`` needs (the integer ones travel exact beside them)."""
    records = msg.content.config_records
    cfg = records["fitins.config"] if "fitins.config" in records else {}
    asked = str(cfg.get(PREFIX + "privacy", "none")) == "dp"
    site = _node(context, "site", "")
    if _node(context, "privacy") == "dp":
        if not asked:
            raise ValueError(f"site {site!r} sends its update only under DP (node privacy=dp); this train message "
                             "asks for none")
        own = {key: _node(context, "dp-" + key.replace("_", "-")) for key in DP_KEYS}
        missing = [k for k, v in own.items() if v is None]
        if missing:  # a later review: a value left to the server (sensitivity=0) made the noise 0
            raise ValueError(f"site {site!r} enforces DP (node privacy=dp) and needs all four of its own values; "
                             f"missing: {', '.join('dp-' + k.replace('_', '-') for k in missing)}")
        dp = checked_dp({key: float(v) for key, v in own.items()}, f"site {site!r}'s node config dp-")
        return {**dp, "release_metrics": _flag(_node(context, "dp-release-metrics", False), site)}
    if not asked:
        return None
    dp = checked_dp({key: float(cfg[PREFIX + "dp." + key]) for key in DP_KEYS}, "the server's federation.executor.dp.")
    return {**dp, "release_metrics": cfg.get(PREFIX + "dp.release_metrics", False) is True}


def _flag(value: Any, site: str) -> bool:
    """A node config's ``dp-release-metrics``: true or false (a TOML boolean, or its text)."""
    if str(value).lower() in ("true", "false"):
        return str(value).lower() == "true"
    raise ValueError(f"site {site!r}: node config dp-release-metrics={value!r} must be true or false")


def checked_dp(dp: dict[str, float], where: str) -> dict[str, float]:
    """``dp`` when its Gaussian mechanism means what it says (:func:`~federation.transports.flower.privacy.dp_problem`),
    else a ``ValueError`` naming ``where`` the values came from."""
    problem = dp_problem(dp)
    if problem is not None:
        raise ValueError(f"{where}{problem}")
    return dp


def _privacy_mod(msg: Message, context: Context, call_next: Any) -> Message:
    """Apply the privacy the server's config asks for, or the node's own (Flower's own mods; none by default)."""
    own = str(_node(context, "privacy", "none"))
    if own not in PRIVACY:  # a review: privacy="SecAgg" or "DP" enforced nothing and the update left in clear
        raise ValueError(f"site {_node(context, 'site', '')!r}: node config privacy={own!r} is none of "
                         f"{', '.join(PRIVACY)}; this node sends nothing until it is")
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        if _node(context, "privacy") == "dp":  # secaggplus_mod calls the handler itself: no LocalDpMod around it
            raise ValueError(f"site {_node(context, 'site', '')!r} applies DP (node privacy=dp); a SecAgg+ round "
                             "would send its update without it")
        return secaggplus_mod(msg, context, call_next)
    dp = _dp_settings(msg, context) if msg.metadata.message_type == MessageType.TRAIN else None
    if dp is not None:
        mod = LocalDpMod(dp["clipping_norm"], dp["sensitivity"], dp["epsilon"], dp["delta"])
        inner = call_next if dp["release_metrics"] else _metrics_withheld(call_next)
        return mod(msg, context, _then_fresh_entropy(inner))
    return call_next(msg, context)


def _metrics_withheld(call_next: Any) -> Any:
    """``call_next`` with the reply's scalar metrics dropped (the site's validation acc, loss, dice): ``LocalDpMod``
    clips and noises the arrays only, so under DP they left the node exact, outside (epsilon, delta) (a review).
    The wire's own entries (``fedmed.*``: the key order, the integer entries) stay."""
    def handler(msg: Message, context: Context) -> Message:
        reply = call_next(msg, context)
        records = reply.content.config_records if not reply.has_error() else {}
        if "fitres.metrics" in records:
            kept = {k: v for k, v in records["fitres.metrics"].items() if k.startswith(PREFIX)}
            reply.content.config_records["fitres.metrics"] = ConfigRecord(kept)
        return reply
    return handler


def _then_fresh_entropy(call_next: Any) -> Any:
    """``call_next``, then NumPy's global generator reseeded from the OS: ``LocalDpMod`` draws its noise from it
    after the handler returns, and local training had seeded it from (seed, round, client), all of which the
    server knows (a review recomputed the noise and subtracted it to 1.5e-8)."""
    def handler(msg: Message, context: Context) -> Message:
        reply = call_next(msg, context)
        np.random.seed()  # fresh entropy: the noise is unknown to the server
        return reply
    return handler


app = ClientApp(mods=[_privacy_mod])


def secagg_round(msg: Message, context: Context, extra: dict[str, Any]) -> bool:
    """Whether this train message is SecAgg+'s collect stage; raises when the server's config or the node's
    own ``privacy=secagg`` wants SecAgg+ and the message is a plain one (the update would leave in clear)."""
    secagg = RECORD_KEY_CONFIGS in msg.content.config_records
    if (extra.get("privacy") == "secagg" or _node(context, "privacy") == "secagg") and not secagg:
        raise ValueError(f"site {_node(context, 'site', '')!r} sends its update only through SecAgg+; this "
                         "train message is not part of a SecAgg+ round")
    return secagg


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Which site this node is (the server maps client ids to node ids with it) and which project code it runs."""
    return Message(RecordDict({"site": ConfigRecord({"site": str(_node(context, "site", "")),
                                                     "code": code_fingerprint()})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of local training: :func:`.node.node_train` on this node's own data."""
    server_msg, client_id, ccfg, extra = decode_message(msg.content)
    site = str(_node(context, "site", ""))
    if client_id != site:
        raise ValueError(f"message for client {client_id!r} reached the node of site {site!r}")
    secagg = secagg_round(msg, context, extra)
    try:
        update = node_train(client_id, server_msg, ccfg, context.node_config)
    except Exception as exc:
        fatal = client_user_error(client_id, exc)  # a setting, file or data to mend: said as such to the server
        if fatal is not None:
            raise fatal from exc
        raise
    if secagg:
        return Message(_secagg_reply(update, server_msg.weights, extra), reply_to=msg)
    return Message(encode_update(update, as_float=extra.get("privacy") == "dp"), reply_to=msg)


def _secagg_reply(update: Any, sent: Any, extra: dict[str, Any]) -> RecordDict:
    """The delta for ``secaggplus_mod``, refused when non-finite (under SecAgg+ the server could not
    tell one site's NaN from the others), with the count of entries the mod will clip."""
    import math

    delta = secagg_update(update, sent)
    if not all(bool(v.isfinite().all()) for v in delta.weights.values()) or not all(
            math.isfinite(v) for v in delta.metrics.values()):
        raise ValueError(f"site {update.client_id!r}: non-finite update, not sent into the SecAgg+ sum")
    clipped = clipped_entries({k: v.numpy() for k, v in delta.weights.items() if v.is_floating_point()},
                              delta.num_samples, float(extra["secagg.max_weight"]), float(extra["secagg.clipping_range"]))
    content = encode_update(delta, as_float=True)  # integer entries in clear (INTS), the floating ones masked
    content.config_records["fitres.metrics"][PREFIX + "secagg_clipped"] = clipped
    return content
