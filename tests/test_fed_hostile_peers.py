"""One hostile or broken site must not stop, take over or corrupt a federation (found by an audit of crafted
replies): its update is checked against what the server sent it and dropped with a reason, as a client that
raised is; the other sites' round goes on. Pure functions and a stand-in Flower grid, no network."""
from __future__ import annotations

import copy
import uuid

import pytest
import torch

from federation.core.messages import MAX_SAMPLES, ClientUpdate, update_problem
from federation.core.strategies import DataSharing, FedAvg, weighted_average
from federation.transports import ClientJob
from federation.transports.inprocess import SequentialExecutor

GLOB = {"conv.weight": torch.randn(4, 3, generator=torch.Generator().manual_seed(0)),
        "bn.running_var": torch.ones(3), "bn.num_batches_tracked": torch.tensor(7)}
SITES = {101: "a", 202: "b", 303: "c"}


def _honest(cid: str, sent=GLOB) -> ClientUpdate:
    return ClientUpdate(cid, {k: v + 0.01 if v.is_floating_point() else v + 1 for k, v in sent.items()}, 10,
                        {"accuracy": 0.5})


def _with(cid: str, **weights) -> ClientUpdate:
    w = dict(_honest(cid).weights)
    w.update({k.replace("__", "."): v for k, v in weights.items() if v is not None})
    for k in [k.replace("__", ".") for k, v in weights.items() if v is None]:
        w.pop(k)
    return ClientUpdate(cid, w, 10, {"accuracy": 0.5})


CRAFTED = {
    "extra_entry": (lambda: _with("b", evil=torch.zeros(2)), "extra: ['evil']"),
    "missing_entry": (lambda: _with("b", conv__weight=None), "missing: ['conv.weight']"),
    "reshaped_entry": (lambda: _with("b", conv__weight=torch.zeros(5, 3)), "shape (5, 3), (4, 3) was sent"),
    "integer_weights": (lambda: _with("b", conv__weight=torch.zeros(4, 3, dtype=torch.int64)), "torch.int64"),
    "negative_counter": (lambda: _with("b", bn__num_batches_tracked=torch.tensor(-5)), "negative"),
    "nan_weights": (lambda: _with("b", conv__weight=torch.full((4, 3), float("nan"))), "non-finite"),
}


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_update_problem_names_what_differs_from_what_was_sent(name):
    make, reason = CRAFTED[name]
    assert reason in update_problem(make(), GLOB)
    assert update_problem(_honest("a"), GLOB) is None


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_the_sequential_executor_drops_only_the_crafted_site(name):
    """Before: an extra, missing or reshaped entry raised out of the server's round (DataLeakError, KeyError),
    ending every site's federation with a traceback."""
    jobs = [ClientJob(c, {"server_message": FedAvg().server_message(GLOB, 0, c)}) for c in SITES.values()]
    updates, failures = SequentialExecutor().map(lambda cid, **_: CRAFTED[name][0]() if cid == "b" else _honest(cid),
                                                 jobs)
    assert [u.client_id for u in updates] == ["a", "c"] and list(failures) == ["b"]
    assert CRAFTED[name][1] in failures["b"]


def test_sample_counts_are_bounded_and_weights_keep_the_global_dtype():
    """A count of 1.7e308 from two sites made the weight sum overflow and FedAvg return an all-zero model;
    10**400 raised OverflowError out of the aggregation; an int64 first update made the global weights
    int64 (rounded)."""
    for n in (MAX_SAMPLES + 1, 10 ** 400, -1):
        with pytest.raises(ValueError, match=r"num_samples must be in \[0, 2\*\*53\]"):
            ClientUpdate("a", dict(GLOB), n)
    ints = ClientUpdate("a", {**_honest("a").weights, "conv.weight": torch.ones(4, 3, dtype=torch.int64)}, 10)
    new = FedAvg().aggregate(GLOB, [ints, _honest("b")], 0)
    assert new["conv.weight"].dtype == torch.float32 and not torch.equal(new["conv.weight"], new["conv.weight"].round())
    assert weighted_average([torch.ones(2, dtype=torch.float64)], [1.0], torch.float32).dtype == torch.float32
    with pytest.raises(ValueError, match="finite and >= 0"):
        weighted_average([torch.ones(2), torch.ones(2)], [float("inf"), 1.0])


def test_data_sharing_leaves_out_an_accuracy_outside_0_1():
    """A site reporting accuracy -1e300 was given the whole shared pool; two reporting 1.7e308 stopped the
    round (NaN in the allocation)."""
    ds = DataSharing(n_shared=100, mode="part")
    ups = [ClientUpdate(c, dict(_honest(c).weights), 10, {"accuracy": a})
           for c, a in (("a", 0.9), ("b", -1e300), ("c", 0.5), ("d", 1.7e308))]
    with pytest.warns(UserWarning, match=r"\['b', 'd'\] reported no 'accuracy' in \[0, 1\]"):
        ds.aggregate(GLOB, ups, 0)
    assert ds.allocation == {"a": 0, "c": 100}


@pytest.mark.parametrize("mode", ["all", "none"])
def test_data_sharing_without_accuracies_resumes(mode, tmp_path):
    """A review: under ``mode=all`` / ``none`` clients with no validation split reported no accuracy, the strategy
    kept NaN for them, and resume refused the run's own ``server.pt``. Only accuracies are kept; the allocation
    (which needs none in these modes) still reaches every client."""
    from federation.core.sharing import SharedPool
    from federation.resume_checks import check_strategy_state

    pool, _ = SharedPool.carve(100, 0.1, seed=0)
    strategy = DataSharing(pool=pool, mode=mode, metric="acc")
    glob = {"w": torch.zeros(3)}
    strategy.aggregate(glob, [ClientUpdate(c, {"w": torch.ones(3)}, 10, {}) for c in ("0", "1")], 0)
    state = strategy.state_dict()
    assert state["accuracies"] == {} and set(state["allocation"]) == {"0", "1"}
    check_strategy_state(state, DataSharing(pool=pool, mode=mode, metric="acc"), glob, ["0", "1"], tmp_path / "s.pt")


# ------------------------------------------------------------------------------- through the Flower wire
flwr = pytest.importorskip("flwr")
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict  # noqa: E402

from federation.transports.flower import executor  # noqa: E402
from federation.transports.flower.wire import decode_message, decode_update, encode_update  # noqa: E402


def _count(content, value):
    content.metric_records["fitres.num_examples"] = MetricRecord({"num_examples": value})
    return content


def _counter(value):
    def tamper(content):
        arrays = content.array_records["fitres.parameters"]
        arrays["bn.num_batches_tracked"] = flwr.app.Array(torch.tensor(value, dtype=torch.float64).numpy())
        return content
    return tamper


REPLIES = {"count_1.7e308": (lambda c: _count(c, 1.7e308), "num_samples must be in"),
           "count_3.5": (lambda c: _count(c, 3.5), "not a whole number"),
           "counter_nan": (_counter(float("nan")), "non-finite or out of range"),
           "counter_1e30": (_counter(1e30), "non-finite or out of range"),
           "counter_fraction": (_counter(7.5), "arrived as fractions")}


class _Grid:
    """Stand-in SuperNodes: ``claims`` maps node -> the site it says it is; ``tamper(content)`` rewrites b's reply."""

    def __init__(self, tamper=None, claims=None):
        self.tamper, self.claims, self.live = tamper, dict(claims or SITES), list(SITES)

    def get_node_ids(self):
        return list(self.live)

    def send_and_receive(self, msgs, timeout=None):
        out = []
        for msg in msgs:
            msg, node = copy.deepcopy(msg), msg.metadata.dst_node_id
            if msg.metadata.message_type == MessageType.QUERY:
                site = self.claims[node]
                content = RecordDict({"site": ConfigRecord({"site": site})}) if site else RecordDict({})
                out.append(Message(content, reply_to=msg))
                continue
            smsg, cid, _, _ = decode_message(msg.content)
            content = encode_update(_honest(cid, smsg.weights))
            out.append(Message(self.tamper(content) if cid == "b" and self.tamper else content, reply_to=msg))
        return out


@pytest.fixture
def grid(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for key, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):  # what a ServerApp process has set
        monkeypatch.setattr(TaskIdentity, key, value, raising=False)

    def install(g):
        executor.set_grid(g)
        return executor.FlowerExecutor(connect_timeout_s=0)
    yield install
    executor.set_grid(None)


def _jobs():
    return [ClientJob(c, {"server_message": FedAvg().server_message(GLOB, 0, c), "cfg": {"seed": 1}})
            for c in SITES.values()]


@pytest.mark.parametrize("name", sorted(REPLIES))
def test_a_crafted_flower_reply_drops_only_its_site(grid, name):
    """Before: a count of 1.7e308 took over the mean; a NaN or 1e30 counter became -3.07e18 in the global
    model (cast to int64 with no check)."""
    tamper, reason = REPLIES[name]
    updates, failures = grid(_Grid(tamper)).map(None, _jobs())
    assert [u.client_id for u in updates] == ["a", "c"] and list(failures) == ["b"] and reason in failures["b"]


def test_under_dp_the_counter_crosses_exact_and_a_malformed_one_is_refused():
    """Under DP the counter crosses exact beside the clipped arrays (a review: inside them, as a float, it took
    nearly all of LocalDpMod's clipping norm); a malformed one (a fraction, a float dtype, values that do not
    fill its shape, a key the update does not have, not a mapping) is refused like any malformed reply."""
    from federation.transports.flower.wire import INTS

    key, dtypes = "bn.num_batches_tracked", {k: v.dtype for k, v in GLOB.items()}
    content = encode_update(_honest("b"), as_float=True)
    assert key not in content.array_records["fitres.parameters"]
    got = decode_update(content, "b", dtypes)
    assert got.weights[key].dtype == torch.int64 and torch.equal(got.weights[key], _honest("b").weights[key])
    for bad in (f'{{"{key}": ["int64", [], [0.5]]}}', f'{{"{key}": ["float32", [], [1]]}}',
                f'{{"{key}": ["int64", [2], [1]]}}', '{"other": ["int64", [], [1]]}', "[]"):
        content.config_records["fitres.metrics"][INTS] = bad
        with pytest.raises(ValueError):
            decode_update(content, "b", dtypes)


def test_a_site_claimed_by_a_second_node_is_refused_while_its_node_is_connected(grid):
    """Before: node 303 (site c) answered "a" and took a's place (a's node never trained; c voted twice).
    A site answers from one node; a node that claims it after that node has left takes it over (a restart)."""
    g = _Grid(claims={101: "a", 202: "b", 303: "a"})
    ex = grid(g)
    updates, failures = ex.map(None, _jobs())
    assert ex.nodes == {"a": 101, "b": 202} and [u.client_id for u in updates] == ["a", "b"]
    assert failures == {"c": "no SuperNode for this site is connected"}
    g.live = [202, 303]  # node 101 has left: 303's claim is asked again and taken
    ex.map(None, _jobs())
    assert ex.nodes["a"] == 303


def test_a_site_query_answer_without_a_site_leaves_that_node_out(grid):
    """Before: an empty answer raised KeyError out of the round."""
    updates, failures = grid(_Grid(claims={101: "a", 202: "b", 303: ""})).map(None, _jobs())
    assert [u.client_id for u in updates] == ["a", "b"] and list(failures) == ["c"]


class _SuperLinkGrid(_Grid):
    """Pushes as Flower's grid does (each sent message gets its id) and answers for node ``gone`` the way the
    SuperLink does for a node that left after saying its site: its own error reply, from node 0, naming the
    message it answers."""

    def __init__(self, gone):
        super().__init__()
        self.gone = gone

    def send_and_receive(self, msgs, timeout=None):
        from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message

        for msg in msgs:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())  # as Flower's in-memory grid does
        lost = [m for m in msgs if m.metadata.dst_node_id == self.gone and m.metadata.message_type == MessageType.TRAIN]
        errors = [create_message_error_unavailable_res_message(m.metadata, "node_unavail") for m in lost]
        return [*super().send_and_receive([m for m in msgs if m not in lost], timeout), *errors]


def test_a_superlink_error_reply_names_the_site_and_its_reason(grid):
    """Before: an error reply made by the SuperLink (src node 0) was matched by sender, found no site and was
    dropped, so the site's failure read "no reply" instead of the SuperLink's reason."""
    g = _SuperLinkGrid(gone=202)
    updates, failures = grid(g).map(None, _jobs())
    assert [u.client_id for u in updates] == ["a", "c"] and list(failures) == ["b"]
    assert failures["b"].startswith("node error") and "no reply" not in failures["b"], failures


class _LateNodeGrid(_Grid):
    """Node 202's first site query gets the SuperLink's own error (its heartbeat had lapsed); it answers later."""

    def __init__(self):
        super().__init__()
        self.lapsed = True

    def send_and_receive(self, msgs, timeout=None):
        from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message

        for msg in msgs:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
        lost = [m for m in msgs if self.lapsed and m.metadata.dst_node_id == 202]
        self.lapsed = False
        errors = [create_message_error_unavailable_res_message(m.metadata, "node_unavail") for m in lost]
        return [*super().send_and_receive([m for m in msgs if m not in lost], timeout), *errors]


def test_a_node_the_superlink_answered_for_is_asked_its_site_again(grid):
    """A review of the reply matching: a SuperLink-made error to the site query marked the node as asked, so a
    node back with the same id was never asked again and its site missed every round."""
    ex = grid(_LateNodeGrid())
    updates, failures = ex.map(None, _jobs())
    assert [u.client_id for u in updates] == ["a", "c"] and "b" in failures
    updates, failures = ex.map(None, _jobs())
    assert [u.client_id for u in updates] == ["a", "b", "c"] and not failures

