"""ClientStore: per-client state on disk, atomic writes, weights_only loading."""
import os
import shutil
from fractions import Fraction

import numpy as np
import pytest
import torch

from federation.store import ClientStore
from lightning_modules.errors import CheckpointError


def test_round_trip_and_index(tmp_path):
    store = ClientStore(tmp_path / "clients")
    bn = {"1.running_mean": torch.arange(3.0), "1.num_batches_tracked": torch.tensor(7)}
    store.save("site/a b", "bn", bn)
    store.save("site/a b", "shared_indices", np.array([3, 1, 2]))
    store.save("c2", "history", [{"round": 1, "accuracy": np.float64(0.5)}])
    store.save("c2", "nothing", None)
    got = store.load("site/a b", "bn")
    assert set(got) == set(bn) and all(torch.equal(got[k], bn[k]) for k in bn)
    idx = store.load("site/a b", "shared_indices")
    assert isinstance(idx, np.ndarray) and idx.tolist() == [3, 1, 2]
    assert store.load("c2", "history") == [{"round": 1, "accuracy": 0.5}]
    assert store.load("c2", "missing", default=42) == 42
    assert store.load("nobody", "bn") is None
    assert store.index() == ["c2", "site/a b"]
    assert store.keys("c2") == ["history", "nothing"]
    store.delete("c2", "nothing")
    assert store.keys("c2") == ["history"]
    store.delete("c2")
    assert store.index() == ["site/a b"]
    assert ClientStore(tmp_path / "clients").load("site/a b", "shared_indices").tolist() == [3, 1, 2]  # persisted


def test_atomic_write_leaves_no_temp(tmp_path, monkeypatch):
    store = ClientStore(tmp_path)
    store.save("c", "w", torch.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["c.pt"]

    def boom(obj, f, *a, **k):
        (f.write(b"partial") if hasattr(f, "write") else open(f, "wb").write(b"partial"))
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError):
        store.save("c", "w", torch.zeros(2))
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["c.pt"]
    assert torch.equal(store.load("c", "w"), torch.ones(2))  # old state intact


def test_load_is_weights_only(tmp_path):
    store = ClientStore(tmp_path)

    torch.save({"x": Fraction(1, 3)}, store.path("bad"))  # arbitrary pickled object
    with pytest.raises(CheckpointError, match=r"client store of 'bad' .*bad\.pt does not load: .*Fraction"):
        store.load("bad", "x")


def test_a_fifo_as_a_clients_file_is_named_as_such_and_never_opened(tmp_path):
    """A FIFO in the store is refused at once (opening it would hang); the line used to say the file
    "does not exist", although ``index()`` listed the client."""
    store = ClientStore(tmp_path / "clients")
    os.mkfifo(store.path("c1"))
    assert store.index() == ["c1"]
    with pytest.raises(CheckpointError, match=r"c1\.pt is not a regular file \(a FIFO"):
        store.load("c1", "history")


def test_round_versioned_writes_drop_a_stopped_attempt(tmp_path):
    """``update(..., round=r)`` keeps the state before round r: a stopped attempt at r is invisible to
    reads as of r, replaced by the next write of r, and dropped for good by ``rollback``."""
    store = ClientStore(tmp_path)
    store.update("c", {"bn": torch.zeros(2), "history": [0]}, round=0)
    store.update("c", {"bn": torch.ones(2), "history": [0, 1]}, round=1)
    store.save("c", "best_meta", 1)  # a second key in the same round
    assert store.load("c", "history") == [0, 1] and store.keys("c") == ["best_meta", "bn", "history"]
    assert store.load("c", "history", round=1) == [0, 1][:1] and store.load("c", "best_meta", round=1) is None
    assert store.load_all("c", round=2)["history"] == [0, 1]  # a later round sees the latest state
    # round 1 runs again (its first attempt stopped before the server saved the round)
    store.update("c", {"bn": torch.full((2,), 2.0), "history": [0, 1]}, round=1)
    assert store.load("c", "best_meta") is None and torch.equal(store.load("c", "bn"), torch.full((2,), 2.0))
    assert store.rollback("c", 2) is False
    assert store.rollback("c", 1) is True
    assert store.load("c", "history") == [0] and torch.equal(store.load("c", "bn"), torch.zeros(2))
    assert store.rollback("c", 1) is False  # one level of undo: the round before is final
    store.update("d", {"x": 1}, round=0)
    assert store.rollback("d", 0) is True and store.index() == ["c"]  # nothing before its first round
    store.update("c", {"history": [0, 1]}, round=1)
    store.commit("c")  # round 1 saved: one version left (a best-local file holds one model, not two)
    assert "__before_round__" not in torch.load(store.path("c"), weights_only=True)
    assert store.rollback("c", 1) is False and store.load("c", "history") == [0, 1]
    store.commit("nobody")  # no file: nothing to do


def _fedbn_server(tmp_path, client_ids):
    """Just what ``Server.module_for`` reads: a template, FedBN, a store, the client ids."""
    from types import SimpleNamespace

    from torch import nn

    from federation.core.strategies import FedBN
    from federation.server import Server

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))

    holder = Holder()
    server = SimpleNamespace(template=holder, strategy=FedBN(model=holder.net), store=ClientStore(tmp_path),
                             client_ids=list(client_ids), _untrained_warned=set(), _mean_cache=None)
    server._stored_mean = lambda: Server._stored_mean(server)
    return server, {k: v.clone() for k, v in holder.net.state_dict().items()}


def _store_bn(store, cid, mean, rnd=0):
    store.update(cid, {"local_state": {"1.running_mean": torch.full((2,), mean), "1.running_var": torch.full((2,), 9.0),
                                       "1.weight": torch.ones(2), "1.bias": torch.zeros(2),
                                       "1.num_batches_tracked": torch.tensor(7)}}, round=rnd)


def test_fedbn_client_that_never_trained_is_evaluated_with_the_mean_of_the_others(tmp_path):
    """Found by a review: under client sampling, a site not sampled yet had no local batch norm and was scored
    (client/<id>/val, the matrix's FL_global cell) with freshly initialised BN (mean 0, var 1); it now gets the
    server's view, the mean of the clients' that trained, and a trained client keeps its own."""
    from federation.server import Server

    server, glob = _fedbn_server(tmp_path, ["a", "b", "c"])
    for cid, mean in (("a", 5.0), ("b", 1.0)):
        _store_bn(server.store, cid, mean)
    seen = {cid: Server.module_for(server, glob, cid).net[1].running_mean.tolist() for cid in ("a", "c")}
    assert seen == {"a": [5.0, 5.0], "c": [3.0, 3.0]}, seen
    assert Server.module_for(server, glob, "c").net[1].running_var.tolist() == [9.0, 9.0]
    assert Server.module_for(server, glob, None).net[1].running_mean.tolist() == [3.0, 3.0]


def test_fedbn_evaluation_reads_each_store_file_once_per_change(tmp_path, monkeypatch):
    """Found by a profile: scoring N clients that had not trained yet (FedBN, client sampling) read every
    client's file for each of them, N^2 reads a round (25,320 in 3 rounds of 100 clients). The server's view (the
    mean of every client's entries) is now read once and again only after a store file changes."""
    from federation.server import Server

    ids = [str(i) for i in range(30)]
    server, glob = _fedbn_server(tmp_path, ids)
    for i, cid in enumerate(ids[:3]):
        _store_bn(server.store, cid, float(i))  # means 0, 1, 2: the server's view is 1
    reads = []
    real = ClientStore._read
    monkeypatch.setattr(ClientStore, "_read", lambda self, cid, lazy=False: reads.append(cid) or real(self, cid, lazy))
    seen = {cid: Server.module_for(server, glob, cid).net[1].running_mean[0].item() for cid in ids}
    assert seen == {cid: float(i) if i < 3 else 1.0 for i, cid in enumerate(ids)}
    assert len(reads) <= 2 * len(ids), len(reads)  # each client's own file once, every file once for the mean
    _store_bn(server.store, "29", 8.0, rnd=1)  # a client trains: the view follows the store (0 + 1 + 2 + 8) / 4
    assert Server.module_for(server, glob, "5").net[1].running_mean[0].item() == pytest.approx(2.75)
    assert Server.module_for(server, glob, "29").net[1].running_mean[0].item() == 8.0


def test_claim_store_sets_aside_another_federations_files_and_keeps_its_own_and_older_ones(tmp_path, caplog):
    """:func:`federation.store_owner.claim_store`: a file of another federation moves, with its best-local file,
    to ``earlier/<its id>/``; this federation's, one without an id (written before ids were kept) and a message
    without an id leave the store as it is. ``federation_id.txt`` is created once and kept; a crafted one is one
    line."""
    from federation.errors import FederationError
    from federation.store_owner import FEDERATION_ID, claim_store, federation_id

    store, best = ClientStore(tmp_path / "s"), ClientStore(tmp_path / "s" / "best_local")
    store.update("a", {"local_state": {"bn": torch.ones(2)}, FEDERATION_ID: "0" * 16})
    best.save("a", "best_local", {"round": 1, "value": 0.5, "state": {"w": torch.ones(1)}})
    store.update("b", {"local_state": {"bn": torch.ones(2)}})  # before ids were kept
    for fed in (None, "0" * 16):
        claim_store(store, best, "a", fed)
        assert store.index() == ["a", "b"] and best.index() == ["a"]
    claim_store(store, best, "b", "1" * 16)
    assert store.index() == ["a", "b"]
    with caplog.at_level("WARNING", logger="federation.runner"):
        claim_store(store, best, "a", "1" * 16)
    assert store.index() == ["b"] and best.index() == []
    earlier = tmp_path / "s" / "earlier" / ("0" * 16)
    assert ClientStore(earlier).load("a", FEDERATION_ID) == "0" * 16
    assert ClientStore(earlier / "best_local").load("a", "best_local")["value"] == 0.5
    assert "held the state of another federation (0000000000000000)" in caplog.text
    first = federation_id(tmp_path / "run")
    assert len(first) == 16 and federation_id(tmp_path / "run") == first
    (tmp_path / "run" / "federation_id.txt").write_text("../x\n")
    with pytest.raises(FederationError, match=r"federation_id.txt holds '../x', not a federation id"):
        federation_id(tmp_path / "run")


def test_a_crafted_federation_id_from_a_server_or_in_a_store_file_names_no_folder(tmp_path):
    """The id names a folder (``earlier/<id>``): one from a peer or a file that is not 16 hex digits (``../x``)
    is one line, never a path."""
    from federation.errors import FederationError
    from federation.store_owner import FEDERATION_ID, claim_store

    store = ClientStore(tmp_path / "s")
    with pytest.raises(FederationError, match=r"client a: the server's federation_id '../../x' is not 16 hex digits"):
        claim_store(store, ClientStore(tmp_path / "s" / "best_local"), "a", "../../x")
    store.update("a", {FEDERATION_ID: "../../x"})
    with pytest.raises(FederationError, match=r"a.pt: federation_id is a str \('../../x'\): not a client store"):
        claim_store(store, ClientStore(tmp_path / "s" / "best_local"), "a", "1" * 16)
    assert not (tmp_path / "x").exists()


def test_a_federation_resumed_after_another_used_the_site_takes_its_own_state_back(tmp_path):
    """A review: federation A set aside by B's round, then resumed, started its batch norm, history and best-local
    weights fresh, and B's next round replaced A's set-aside file. A's state now comes back from ``earlier/<A>/``
    when A returns, and B's goes there in turn; a second set-aside of one id never replaces the first."""
    from federation.store_owner import FEDERATION_ID, claim_store

    a, b = "a" * 16, "b" * 16
    store, best = ClientStore(tmp_path / "s"), ClientStore(tmp_path / "s" / "best_local")
    store.update("site", {"local_state": {"bn": torch.ones(1)}, FEDERATION_ID: a})
    best.save("site", "best_local", {"round": 2, "value": 0.7, "state": {"w": torch.ones(1)}})
    claim_store(store, best, "site", b)  # B's first round
    store.update("site", {"local_state": {"bn": torch.zeros(1)}, FEDERATION_ID: b})
    claim_store(store, best, "site", a)  # A resumed
    assert float(store.load("site", "local_state")["bn"]) == 1.0 and store.load("site", FEDERATION_ID) == a
    assert best.load("site", "best_local")["value"] == 0.7
    assert ClientStore(tmp_path / "s" / "earlier" / b).load("site", FEDERATION_ID) == b
    claim_store(store, best, "site", b)  # B resumed: its own back, A's set aside again
    assert float(store.load("site", "local_state")["bn"]) == 0.0
    (tmp_path / "s" / "earlier" / b).mkdir(exist_ok=True)
    store.update("site", {FEDERATION_ID: b, "history": []})
    ClientStore(tmp_path / "s" / "earlier" / b).update("site", {FEDERATION_ID: b, "last_round": 3})  # a stray copy
    claim_store(store, best, "site", a)
    assert ClientStore(tmp_path / "s" / "earlier" / b).load("site", "last_round") == 3  # not replaced
    assert ClientStore(tmp_path / "s" / "earlier" / f"{b}-2").load("site", "history") == []


def test_a_client_late_for_a_round_the_server_closed_keeps_nothing_of_it(tmp_path):
    """A review: a Flower ClientApp past ``timeout_s`` cannot be recalled; in the rehearsal (a store shared with the
    server) its write came after the server's rollback, so the next round started from the dropped round's state
    (and a write of round r after round r+1's dropped r+1's). The server marks the round closed, then rolls back;
    the client checks the mark before writing and after: every order keeps nothing of the round."""
    from federation.store_owner import store_round

    store, best = ClientStore(tmp_path / "s"), ClientStore(tmp_path / "s" / "best_local")
    store.update("a", {"bn": torch.zeros(2)}, round=0)
    store.commit("a")

    def write(rnd, value, close_midway=False):
        def go():
            store.update("a", {"bn": torch.full((2,), value)}, round=rnd)
            best.update("a", {"best_local": {"state": {"w": torch.ones(1)}, "round": rnd, "value": 0.5}}, round=rnd)
            if close_midway:  # the server closes the round while the client writes
                store.close_round("a", rnd)
                for kept in (store, best):
                    kept.rollback("a", rnd)
        return go

    store.close_round("a", 1)  # the server dropped a at round 1 (a timeout) ...
    store_round(store, best, "a", 1, write(1, 1.0))  # ... which still ran and reports late
    assert torch.equal(store.load_all("a")["bn"], torch.zeros(2)) and best.load_all("a") == {}
    store_round(store, best, "a", 2, write(2, 2.0, close_midway=True))
    assert torch.equal(store.load_all("a")["bn"], torch.zeros(2)) and best.load_all("a") == {}
    store_round(store, best, "a", 3, write(3, 3.0))  # an open round is stored as before
    assert torch.equal(store.load_all("a")["bn"], torch.full((2,), 3.0))
    store.reopen_from(2)  # a resume runs rounds 2.. again: their marks go, round 1's stays
    assert store.round_closed("a", 1) and not store.round_closed("a", 2) and store.index() == ["a"]


def test_crafted_closed_marks_are_one_line_or_skipped(tmp_path):
    """A security review: a mark named ``²`` (a Unicode digit) or a folder named ``5`` made resume a traceback, and a
    linked ``.closed`` let it delete and create files outside the run folder."""
    from federation.errors import FederationError

    store = ClientStore(tmp_path / "s")
    store.close_round("a", 7)
    (tmp_path / "s" / ".closed" / "a" / "\u00b2").write_text("")
    (tmp_path / "s" / ".closed" / "a" / "5").mkdir()
    store.reopen_from(0)  # the crafted entries are no marks: left alone, no traceback
    assert not store.round_closed("a", 7) and (tmp_path / "s" / ".closed" / "a" / "5").is_dir()
    outside = tmp_path / "outside" / "a"
    outside.mkdir(parents=True)
    (outside / "3").write_text("keep")
    shutil.rmtree(tmp_path / "s" / ".closed")
    (tmp_path / "s" / ".closed").symlink_to(tmp_path / "outside")
    with pytest.raises(FederationError, match=r"\.closed is a link"):
        store.reopen_from(0)
    with pytest.raises(FederationError, match=r"\.closed is a link"):
        store.close_round("b", 1)
    assert (outside / "3").read_text() == "keep" and not (tmp_path / "outside" / "b").exists()
    (tmp_path / "s" / ".closed").unlink()
    (tmp_path / "s" / ".closed").write_text("")  # a file where the folder goes
    with pytest.raises(FederationError, match="cannot mark round 2 closed"):
        store.close_round("a", 1)
