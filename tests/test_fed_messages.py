"""No-data-crosses checks for federation.core.messages (paper 003 §2: only weights leave a client)."""
import dataclasses
import math
import pickle

import pytest
import torch
from torch import nn

from federation.core.messages import ClientUpdate, DataLeakError, ServerMessage, assert_no_data, is_finite, state_schema
from federation.core.strategies import FedAvg, FedBN


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))


def test_update_from_make_update_carries_only_model_state():
    model = _model()
    state = model.state_dict()
    for strategy in (FedAvg(), FedBN(model)):
        upd = strategy.make_update("c0", state, 12, {"accuracy": 0.5})
        assert_no_data(upd, state)
        assert set(upd.weights) == set(strategy.client_keys(state)) and upd.weights  # a test audit: {} passed
        assert set(upd.weights) < set(state) if isinstance(strategy, FedBN) else set(upd.weights) == set(state)
        assert all(tuple(v.shape) == tuple(state[k].shape) for k, v in upd.weights.items())
        assert all(type(v) is float for v in upd.metrics.values())


def test_data_tensor_is_rejected():
    state = _model().state_dict()
    schema = state_schema(state)
    batch = torch.rand(2, 1, 6, 6)
    with pytest.raises(DataLeakError):
        ClientUpdate("c0", {**state, "image": batch}, 2, schema=schema)
    with pytest.raises(DataLeakError):  # right key, wrong shape: data smuggled under a model key
        ClientUpdate("c0", {"0.weight": batch}, 2, schema=schema)
    upd = ClientUpdate("c0", {"image": batch}, 2)  # no schema: caught afterwards
    with pytest.raises(DataLeakError):
        assert_no_data(upd, state)
    with pytest.raises(DataLeakError):
        ClientUpdate("c0", dict(state), 2, {"probs": torch.rand(3)})
    with pytest.raises(DataLeakError):
        ClientUpdate("c0", dict(state), 2, {"ids": [1, 2]})
    with pytest.raises(DataLeakError):
        ClientUpdate("c0", {"x": [1.0, 2.0]}, 2)


def test_update_is_frozen_and_validated():
    upd = ClientUpdate("c0", {"w": torch.zeros(2)}, 3, {"accuracy": 1})
    assert upd.metrics["accuracy"] == 1.0 and type(upd.metrics["accuracy"]) is float
    with pytest.raises(dataclasses.FrozenInstanceError):
        upd.num_samples = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        upd.weights["w"] = torch.ones(2)  # type: ignore[index]
    with pytest.raises(ValueError):
        ClientUpdate("c0", {}, -1)
    with pytest.raises(TypeError):
        ClientUpdate("c0", {}, 2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ClientUpdate("", {}, 1)


def test_is_finite():
    assert is_finite(ClientUpdate("a", {"w": torch.ones(2), "n": torch.tensor(3)}, 1, {"acc": 0.3}))
    assert not is_finite(ClientUpdate("a", {"w": torch.tensor([1.0, math.nan])}, 1))
    assert not is_finite(ClientUpdate("a", {"w": torch.tensor([math.inf])}, 1))
    assert not is_finite(ClientUpdate("a", {"w": torch.ones(1)}, 1, {"loss": math.nan}))


def test_server_message():
    msg = ServerMessage(2, {"w": torch.ones(1)}, {"proximal_mu": 0.1})
    assert msg.round == 2 and msg.config["proximal_mu"] == 0.1
    with pytest.raises(ValueError):
        ServerMessage(-1, {}, {})
    with pytest.raises(DataLeakError):
        ServerMessage(0, {"w": 1.0}, {})  # type: ignore[dict-item]


def test_messages_pickle_for_process_executors():
    upd = ClientUpdate("c0", {"w": torch.ones(2)}, 3, {"accuracy": 0.5}, is_delta=True, schema={"w": (2,)})
    back = pickle.loads(pickle.dumps(upd))
    assert back.client_id == "c0" and back.num_samples == 3 and dict(back.metrics) == {"accuracy": 0.5}
    assert torch.equal(back.weights["w"], upd.weights["w"]) and back.schema == {"w": (2,)} and back.is_delta
    msg = pickle.loads(pickle.dumps(ServerMessage(1, {"w": torch.ones(1)}, {"mu": 0.1})))
    assert msg.round == 1 and msg.config == {"mu": 0.1} and torch.equal(msg.weights["w"], torch.ones(1))
    assert dict(msg.init_local) == {}


def test_the_init_files_local_entries_travel_with_the_message_as_tensors():
    """``init_local`` (``init_weights=``'s FedBN batch norm) pickles with the message (Ray) and holds tensors only."""
    msg = pickle.loads(pickle.dumps(ServerMessage(0, {"w": torch.ones(1)}, {}, {"bn.weight": torch.full((2,), 5.0)})))
    assert list(msg.init_local) == ["bn.weight"] and torch.equal(msg.init_local["bn.weight"], torch.full((2,), 5.0))
    with pytest.raises(DataLeakError):
        ServerMessage(0, {}, {}, {"bn.weight": [5.0, 5.0]})  # type: ignore[dict-item]


def test_a_client_starts_its_local_layers_from_the_init_entries_and_refuses_others():
    """The server sends ``init_weights=``'s local entries only (FedBN: the batch norm); a client puts them in its
    fresh net's state, and stops naming an entry that is not one of its local layers of the same shape and dtype."""
    from federation.errors import FederationError
    from federation.init_local import init_local_entries, start_local

    model = _model()
    strategy, state = FedBN(model), model.state_dict()
    assert init_local_entries(None, strategy.is_local) == {}
    file_state = {k: v + 4 if v.is_floating_point() else v for k, v in state.items()}
    sent = init_local_entries(file_state, strategy.is_local)
    assert set(sent) == {k for k in state if k.startswith("1.")}
    own = dict(state)
    start_local(own, sent, strategy.is_local, "c0")
    assert all(own[k] is sent[k] for k in sent) and own["0.weight"] is state["0.weight"]
    for bad in ({"0.weight": state["0.weight"]}, {"9.weight": torch.ones(2)}, {"1.weight": torch.ones(3)},
                {"1.weight": torch.ones(2, dtype=torch.float64)}):
        with pytest.raises(FederationError, match=r"client c0: the server's init_weights entry"):
            start_local(dict(state), bad, strategy.is_local, "c0")
