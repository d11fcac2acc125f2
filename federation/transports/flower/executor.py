"""``FlowerExecutor``: a round's client jobs as Flower messages to the SuperNodes that hold the sites.

It runs inside our ServerApp (:mod:`.server_app`), where the round loop of :mod:`federation.loop` runs
unchanged: ``map`` sends each job's :class:`~federation.core.messages.ServerMessage` as a ``train`` message
(:mod:`.wire`) to the node whose node config names that client (learnt once with a ``query`` message),
and turns the replies into :class:`~federation.core.messages.ClientUpdate`. A node that is gone, answers
with an error, sends something malformed or misses ``timeout_s`` is a failure of that client (the loop
retries once, then drops it and completes the round with ``min_clients``). Only the job's server message
and the experiment's client config go down; the client's indices and data stay on the node.

``privacy=secagg``: the round's train messages go through one run of Flower's SecAgg+ workflow
(:mod:`.secagg`) instead; the server learns only the sample-weighted mean of the sites' floating deltas, plus
each site's sample count, scalar metrics and integer entries (BatchNorm's step counter), which go in clear.
``map`` then returns, for every site that took part, an update whose floating weights are the global plus that
mean (so the project's strategy, which weights by the sites' sample counts, reproduces the mean) and whose
integer entries, count and metrics are the site's own; a round the workflow cannot complete (too few sites, a
reply that does not add) drops its sites.
"""
from __future__ import annotations

import logging
import math
import re
import time
from typing import Any, Callable, Mapping, Sequence

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from omegaconf import DictConfig, OmegaConf

from federation.transports import ClientJob, ExecutorError, check_update
from federation.transports.code_identity import code_fingerprint
from federation.core.messages import ClientUpdate
from federation.errors import FederationError
from federation.transports.flower.wire import KEYS, PREFIX, decode_mean, decode_update, encode_message

__all__ = ["FlowerExecutor", "current_grid", "set_grid"]

log = logging.getLogger("federation.transports.flower")
_GRID: Any = None


def set_grid(grid: Any) -> None:
    """Called by the ServerApp around the run: the Grid this process's executors talk through."""
    global _GRID
    _GRID = grid


def current_grid() -> Any:
    return _GRID


#: seconds before a node whose ClientApp failed the site query is asked again (a review: it was never asked again,
#: and its site stayed "not connected" for the rest of the run)
RETRY_S = 30.0


class FlowerExecutor:
    """See the module docstring (``data_on_nodes``: each site's data lives on its own SuperNode).

    Args:
        timeout_s: per-round limit for the replies (None: wait until every node answered or the
            SuperLink reports it unavailable).
        connect_timeout_s: how long the first round waits for every sampled site's SuperNode.
        privacy: ``none`` | ``dp`` (Flower's ``LocalDpMod`` on each client: clip + Gaussian noise) |
            ``secagg`` (Flower's SecAgg+: the server sees only the weighted mean of the updates).
        dp: ``clipping_norm``, ``sensitivity``, ``epsilon``, ``delta`` of ``LocalDpMod``; ``release_metrics``
            (default false): whether the sites send their validation metrics, which no noise covers.
        secagg: ``num_shares``, ``reconstruction_threshold``, ``max_weight``, ``clipping_range``,
            ``quantization_range`` of ``SecAggPlusWorkflow`` (:class:`.secagg.SecAggSettings`).
        Other keys (``launch``, ``superlink``, ...) are read by the launcher, not here.
    """

    data_on_nodes = True

    def __init__(self, timeout_s: float | None = None, connect_timeout_s: float = 180.0, privacy: str = "none",
                 dp: Mapping[str, float] | None = None, secagg: Mapping[str, Any] | None = None,
                 **_launcher: Any) -> None:
        self.grid = current_grid()
        if self.grid is None:
            raise ExecutorError("federation/executor=flower runs inside the Flower ServerApp "
                                "(python -m experiments.run ... federation/executor=flower launches it)")
        if privacy not in ("none", "dp", "secagg"):
            raise ExecutorError(f"federation.executor.privacy={privacy!r}: expected none, dp or secagg")
        self.timeout_s = None if timeout_s in (None, 0) else float(timeout_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self.privacy = privacy
        #: a local rehearsal (the launcher started the nodes): a site's user error stops the run, as in-process;
        #: in a deployment a site's own misconfiguration drops that site (min_clients decides), never the others
        self.rehearsal = bool(_launcher.get("launch", False))
        self.extra: dict[str, Any] = {"privacy": privacy}
        if privacy == "dp":
            dp = dict(dp or {})
            for key in ("clipping_norm", "sensitivity", "epsilon", "delta"):
                self.extra[f"dp.{key}"] = float(dp[key])
            self.extra["dp.release_metrics"] = dp.get("release_metrics") is True  # default: withheld
        self.secagg = None
        if privacy == "secagg":
            from federation.transports.flower.secagg import SecAggSettings

            self.secagg = SecAggSettings.from_config(secagg)
            self.extra.update({"secagg.max_weight": float(self.secagg.max_weight),
                               "secagg.clipping_range": float(self.secagg.clipping_range)})
        self.nodes: dict[str, int] = {}   # client id -> node id
        self._asked: set[int] = set()
        self._refused: dict[int, str] = {}  # node id -> the site it claimed while another node held it
        self._failed: dict[int, float] = {}  # node id -> when to ask again a node whose ClientApp failed the query

    # ------------------------------------------------------------------ which node is which site
    def _ask(self, node_ids: list[int]) -> None:
        msgs = [Message(RecordDict({"q": ConfigRecord({"what": "site"})}), dst_node_id=n,
                        message_type=MessageType.QUERY) for n in node_ids]
        t0 = time.monotonic()
        replies = list(self.grid.send_and_receive(msgs, timeout=self.connect_timeout_s))
        log.warning("site query: %d of %d nodes answered in %.1f s", len(replies), len(msgs), time.monotonic() - t0)
        live = set(self.grid.get_node_ids())
        asked = asked_node(msgs)
        for reply in replies:
            node = asked(reply)
            if reply.has_error() and int(reply.metadata.src_node_id) != node:  # made by the SuperLink (node gone
                log.warning("node %s did not say its site: %s", node, reply.error.reason)  # a while): ask it again
                continue
            if reply.has_error():  # its ClientApp failed (e.g. a start under load): asked again later, not never
                log.warning("node %s did not say its site: %s (asked again in %.0f s)", node, reply.error.reason,
                            RETRY_S)
                self._failed[node] = time.monotonic() + RETRY_S
                continue
            self._asked.add(node)
            self._failed.pop(node, None)
            try:
                site = str(reply.content.config_records["site"]["site"])
            except (KeyError, TypeError, AttributeError) as exc:  # a malformed answer leaves that node out
                log.warning("node %s answered the site query without a site (%s): left out", node, type(exc).__name__)
                continue
            held = self.nodes.get(site)
            if held is not None and held != node and held in live:  # first claim wins while its node is connected
                log.warning("node %d claims site %s, which connected node %d holds: refused (a site answers from "
                            "one node; restart the federation if %d is not that site's)", node, site, held, held)
                self._refused[node] = site  # asked again once node `held` has left (a reconnecting site)
                continue
            self._refused.pop(node, None)
            check_code(site, node, reply.content.config_records["site"])
            if held is not None and held != node:
                log.warning("site %s now answers from node %d (node %d has left)", site, node, held)
            self.nodes[site] = node

    def discover(self, wanted: set[str]) -> None:
        """Map client ids to node ids, waiting up to ``connect_timeout_s`` for the wanted sites."""
        deadline = time.monotonic() + self.connect_timeout_s
        live = set(self.grid.get_node_ids())
        while True:
            now = time.monotonic()
            new = sorted(n for n in live if (n not in self._asked and self._failed.get(n, 0.0) <= now)
                         or (n in self._refused and self.nodes.get(self._refused[n]) not in live))
            if new:
                self._ask(new)
            if wanted <= {s for s, n in self.nodes.items() if n in live} or time.monotonic() > deadline:
                return
            time.sleep(1.0)
            live = set(self.grid.get_node_ids())

    # ------------------------------------------------------------------ executor contract
    def map(self, fn: Callable[..., ClientUpdate], jobs: Sequence[ClientJob],
            on_done: Callable[[str, bool], None] | None = None) -> tuple[list[ClientUpdate], dict[str, str]]:
        """``fn`` is not called here: each site's ClientApp calls the same runner on its node."""
        del fn
        failures: dict[str, str] = {}
        first = not self.nodes
        self.discover({j.client_id for j in jobs} if first else set())
        live = set(self.grid.get_node_ids())
        msgs, by_node, by_site = [], {}, {}
        for job in jobs:
            node = self.nodes.get(job.client_id)
            if node is None or node not in live:
                failures[job.client_id] = "no SuperNode for this site is connected"
                continue
            smsg = job.kwargs["server_message"]
            cfg = job.kwargs.get("cfg")
            plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg or {})
            msgs.append(Message(encode_message(smsg, job.client_id, plain, self.extra, self.privacy == "dp"),
                                dst_node_id=node, message_type=MessageType.TRAIN))
            by_node[node] = job.client_id
            by_site[job.client_id] = job
        if self.privacy == "secagg" and jobs:
            smsg = jobs[0].kwargs["server_message"]  # the strategies send every site the same global weights
            got = self._secagg(msgs, by_node, smsg.weights, failures, smsg.round, by_site)
        else:
            got = self._plain(msgs, by_node, by_site, failures) if jobs else {}
        updates = []
        for job in jobs:  # aggregation order = job order, independent of arrival order
            cid = job.client_id
            if cid not in got and cid not in failures:
                failures[cid] = f"no reply within {self.timeout_s} s" if self.timeout_s else "no reply"
            if cid in got:
                updates.append(got[cid])
            else:
                log.warning("client %s dropped from the round: %s", cid, failures[cid])
            if on_done is not None:
                on_done(cid, cid in got)
        return updates, failures

    def _plain(self, msgs: list[Message], by_node: dict[int, str], jobs: dict[str, ClientJob],
               failures: dict[str, str]) -> dict[str, ClientUpdate]:
        got: dict[str, ClientUpdate] = {}
        if not msgs:
            return got
        replies = list(self.grid.send_and_receive(msgs, timeout=self.timeout_s))
        asked = asked_node(msgs)
        for reply in replies:
            cid = by_node.get(asked(reply))
            if cid is None:
                continue
            if reply.has_error():
                site_error = user_error_of(reply.error)
                if site_error is not None and self.rehearsal:  # the user's own to mend, as in-process
                    raise FederationError(site_error)
                failures[cid] = f"node error {reply.error.code}: {site_error or reply.error.reason}"
                continue
            try:
                sent = jobs[cid].kwargs["server_message"].weights
                update = decode_update(reply.content, cid, {k: v.dtype for k, v in sent.items()})
            except Exception as exc:  # noqa: BLE001 - a malformed reply drops that client only
                failures[cid] = f"malformed reply: {type(exc).__name__}: {exc}"
                continue
            _keep(got, failures, cid, update, jobs[cid])
        return got

    def _secagg(self, msgs: list[Message], by_node: dict[int, str], sent_weights: Mapping[str, Any],
                failures: dict[str, str], rnd: int, jobs: dict[str, ClientJob]) -> dict[str, ClientUpdate]:
        """One SecAgg+ round over the sites of ``msgs`` (see the module docstring)."""
        from flwr.compat.common.recorddict_compat import recorddict_to_fitins

        from federation.transports.flower.secagg import run_secagg

        got: dict[str, ClientUpdate] = {}
        if len(msgs) < 2:
            for cid in by_node.values():
                failures[cid] = f"SecAgg+ needs at least 2 sites in a round, {len(msgs)} connected"
            return got
        fitins = {m.metadata.dst_node_id: recorddict_to_fitins(m.content, keep_input=True) for m in msgs}
        t0 = time.monotonic()
        result = run_secagg(self.grid, fitins, int(rnd) + 1, self.secagg, self.timeout_s)
        log.warning("round %d: SecAgg+ over %d sites in %.1f s", int(rnd) + 1, len(msgs), time.monotonic() - t0)
        if result is None:
            for cid in by_node.values():
                failures[cid] = "SecAgg+ halted: too few sites answered to unmask the sum, or a reply did not add (see the ServerApp log)"
            return got
        sent = next(iter(fitins.values())).config[KEYS]
        for node, cid in by_node.items():
            if node not in result.replies:
                failures[cid] = "dropped out of the SecAgg+ round (its masks were removed from the sum)"
        for node, res in result.replies.items():
            cid = by_node.get(node)
            if cid is None:
                continue
            metrics = dict(res.metrics)
            if metrics.get(KEYS) != sent:
                failures[cid] = "its update's entries are not those the server sent (SecAgg+ sums them in order)"
                continue
            try:  # a site's count too: "x" or 1e309 ended the whole federation (a review)
                clipped = metrics.pop(PREFIX + "secagg_clipped", 0)
                if not (isinstance(clipped, (int, float)) and not isinstance(clipped, bool)
                        and math.isfinite(clipped) and clipped >= 0 and float(clipped).is_integer()):
                    raise ValueError(f"{PREFIX}secagg_clipped={clipped!r} is no count")
                clipped = int(clipped)
                if clipped:
                    log.warning("site %s: SecAgg+ clipped %d entries of its update to +-clipping_range; raise "
                                "federation.executor.secagg.clipping_range (or max_weight)", cid, clipped)
                update = decode_mean(result.mean, metrics, res.num_examples, cid, sent_weights)
            except Exception as exc:  # noqa: BLE001
                failures[cid] = f"malformed reply: {type(exc).__name__}: {exc}"
                continue
            _keep(got, failures, cid, update, jobs[cid])
        if len(got) < len(result.replies):  # a mean that mixes a site we cannot use is no mean of the others
            for cid in got:
                failures[cid] = "dropped with the whole SecAgg+ round (another site's reply was unusable)"
            got = {}
        return got

    def shutdown(self) -> None:
        pass


def check_code(site: str, node: int, answer: Any) -> bool:
    """Whether the site runs the server's project code (:func:`..code_identity.code_fingerprint`, in its site
    answer); a warning naming it when not. Flower ships no code here (each host installs the project), and a
    site on another commit trained with it unseen. A warning, not a refusal: a site may patch its own loader."""
    theirs = str(answer.get("code", "") if hasattr(answer, "get") else "")
    if theirs == code_fingerprint():
        return True
    log.warning("site %s (node %d) runs other project code than the server (%s): its updates come from that code; "
                "install the server's commit on every host (docs/deployment.md)", site, node,
                f"fingerprint {theirs[:12]} vs {code_fingerprint()[:12]}" if theirs else "it sent no fingerprint")
    return False


def asked_node(sent: Sequence[Message]) -> Callable[[Message], int]:
    """The node a reply answers for: the one its ``reply_to_message_id`` was sent to (Flower sets each sent
    message's id when it pushes it), else its sender. A review: an error reply the SuperLink makes itself (a
    node gone, a reply expired) comes from node 0, so matched by sender it was dropped and the site's
    failure read "no reply" instead of the SuperLink's reason."""
    by_id = {m.metadata.message_id: int(m.metadata.dst_node_id) for m in sent if m.metadata.message_id}

    def node_of(reply: Message) -> int:
        return by_id.get(reply.metadata.reply_to_message_id, int(reply.metadata.src_node_id))
    return node_of


def user_error_of(error: Any) -> str | None:
    """The one line of a site's user error (a setting, file or data to mend: the ClientApp raises it as a
    :class:`FederationError` naming the client) from Flower's error reply, whose reason reads
    ``<class '...'>:<'message'>``; None for any other error (a crash ``min_clients`` tolerates).
    A review: a site's bad setting was dropped every round and the run exited 0."""
    from flwr.common.constant import ErrorCode

    reason = str(getattr(error, "reason", ""))
    match = re.fullmatch(r"<class 'federation\.errors\.FederationError'>:<'(.*)'>", reason, re.DOTALL)
    if int(getattr(error, "code", -1)) != ErrorCode.CLIENT_APP_RAISED_EXCEPTION or match is None:
        return None
    return match.group(1).strip().splitlines()[0] if match.group(1).strip() else None


def _keep(got: dict[str, ClientUpdate], failures: dict[str, str], cid: str, update: ClientUpdate,
          job: ClientJob) -> None:
    reason = check_update(cid, update, job)
    if reason is None:
        got[cid] = update
    else:
        failures[cid] = reason
