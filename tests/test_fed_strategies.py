"""Strategies: FedAvg (McMahan 2017), FedProx (Li 2020), FedBN (Li 2021), FedAdam/FedYogi (Reddi 2021),
DataSharing (paper 000 §4.1)."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from federation.core.messages import ClientUpdate
from federation.core.sharing import SharedPool
from federation.core.strategies import (
    STRATEGIES, DataSharing, FedAdagrad, FedAdam, FedAvg, FedBN, FedProx, FedYogi, bn_state_keys, proximal_loss_term,
    proximal_term,
)


def _upd(cid, num, metrics=None, **w):
    return ClientUpdate(cid, {k: torch.as_tensor(v) for k, v in w.items()}, num, metrics or {})


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 2, 1), nn.InstanceNorm2d(2))


def test_fedavg_weighted_mean_by_hand():
    g = {"w": torch.tensor([0.0, 0.0]), "n": torch.tensor(0)}
    ups = [_upd("a", 1, w=[1.0, 1.0], n=2), _upd("b", 3, w=[4.0, 7.0], n=6)]
    new = FedAvg().aggregate(g, ups, 1)
    assert torch.allclose(new["w"], torch.tensor([13 / 4, 22 / 4]))
    assert new["n"].dtype == torch.int64 and int(new["n"]) == 5  # (2 + 18)/4, integer buffer cast back
    assert torch.equal(g["w"], torch.zeros(2))  # input untouched
    uni = FedAvg(weighted=False).aggregate(g, ups, 1)
    assert torch.allclose(uni["w"], torch.tensor([2.5, 4.0]))


def test_fedavg_deltas_and_nonfinite_and_empty():
    g = {"w": torch.tensor([1.0, 1.0])}
    ups = [ClientUpdate("a", {"w": torch.tensor([1.0, 0.0])}, 1, is_delta=True), _upd("b", 1, w=[4.0, 3.0])]
    assert torch.allclose(FedAvg().aggregate(g, ups, 1)["w"], torch.tensor([3.0, 2.0]))
    bad = _upd("c", 100, w=[math.nan, 0.0])
    with pytest.warns(UserWarning, match="non-finite"):
        out = FedAvg().aggregate(g, ups + [bad], 1)
    assert torch.allclose(out["w"], torch.tensor([3.0, 2.0]))
    assert torch.equal(FedAvg().aggregate(g, [], 1)["w"], g["w"])
    with pytest.raises(KeyError):
        FedAvg().aggregate({"w": torch.zeros(2), "v": torch.zeros(1)}, ups, 1)


def test_fedbn_keys_and_local_bn_untouched():
    torch.manual_seed(0)
    model = _model()
    bn = bn_state_keys(model)
    assert bn == {f"1.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    strat = FedBN(model)
    g = {k: v.clone() for k, v in model.state_dict().items()}
    assert set(strat.client_keys(g)) == set(g) - bn
    assert not set(strat.server_message(g, 0).weights) & bn
    locals_ = []
    for i in range(2):  # two clients with their own BN statistics and weights
        st = {k: v + (i + 1) if v.is_floating_point() else v + i + 1 for k, v in g.items()}
        locals_.append(st)
    ups = [strat.make_update(f"c{i}", st, 10 * (i + 1)) for i, st in enumerate(locals_)]
    assert all(not set(u.weights) & bn for u in ups)
    new = strat.aggregate(g, ups, 1)
    for k in bn:
        assert torch.equal(new[k], g[k])  # BN never aggregated
    assert torch.allclose(new["0.weight"], g["0.weight"] + (1 * 10 + 2 * 20) / 30)
    uniform = FedBN(model, weighted=False).aggregate(g, ups, 1)  # Alg. 1's 1/K over unequal clients
    assert torch.allclose(uniform["0.weight"], g["0.weight"] + (1 + 2) / 2)
    assert all(torch.equal(uniform[k], g[k]) for k in bn)
    received = strat.client_receive(locals_[0], strat.server_message(new, 1).weights)
    for k in bn:
        assert torch.equal(received[k], locals_[0][k])  # client's BN untouched
    assert torch.equal(received["0.weight"], new["0.weight"])
    with pytest.raises(ValueError):  # a client that leaks its BN entries is refused
        strat.aggregate(g, [ClientUpdate("x", dict(locals_[0]), 1)], 1)
    assert set(FedBN(bn_prefixes=["1"]).client_keys(g)) == set(g) - bn
    assert set(FedBN(model, prefix="net.").client_keys({"net." + k: v for k, v in g.items()})) == {
        "net." + k for k in set(g) - bn}
    with pytest.raises(ValueError):
        FedBN(nn.Linear(2, 2))


def _adam_step(w, d, eta, b1, b2, tau, yogi=False):
    m = (1 - b1) * d
    v0 = tau ** 2
    v = v0 - (1 - b2) * d * d * math.copysign(1, v0 - d * d) if yogi else b2 * v0 + (1 - b2) * d * d
    return w + eta * m / (math.sqrt(v) + tau), m, v


@pytest.mark.parametrize("cls,yogi", [(FedAdam, False), (FedYogi, True)])
def test_fedopt_first_step_by_hand(cls, yogi):
    eta, b1, b2, tau = 0.5, 0.9, 0.99, 0.1
    g = {"w": torch.tensor([0.0, 1.0]), "bn.running_mean": torch.tensor([0.0])}
    ups = [_upd("a", 1, w=[0.5, 1.0], **{"bn.running_mean": [1.0]}),
           _upd("b", 1, w=[1.5, 2.0], **{"bn.running_mean": [3.0]})]  # mean [1, 1.5] -> Delta [1, .5]
    s = cls(eta=eta, beta1=b1, beta2=b2, tau=tau)
    new = s.aggregate(g, ups, 1)
    exp = [_adam_step(w, d, eta, b1, b2, tau, yogi) for w, d in ((0.0, 1.0), (1.0, 0.5))]
    assert torch.allclose(new["w"], torch.tensor([e[0] for e in exp]), atol=1e-6)
    assert torch.allclose(s.v["w"], torch.tensor([e[2] for e in exp]), atol=1e-7)
    assert torch.allclose(new["bn.running_mean"], torch.tensor([2.0]))  # statistics: plain FedAvg
    # resume: a fresh strategy loaded from state_dict takes the same second step
    s2 = cls(eta=eta, beta1=b1, beta2=b2, tau=tau)
    s2.load_state_dict(s.state_dict())
    assert torch.allclose(s.aggregate(new, ups, 2)["w"], s2.aggregate(new, ups, 2)["w"])


def test_fedadagrad_first_and_second_step_by_hand():
    """FedAdagrad (Reddi et al. 2021, Alg. 2): v_t = v_{t-1} + Delta_t^2 from v_{-1} = tau^2, no beta2."""
    eta, b1, tau = 0.5, 0.9, 0.1
    g = {"w": torch.tensor([0.0, 1.0])}
    ups = [_upd("a", 1, w=[0.5, 1.0]), _upd("b", 1, w=[1.5, 2.0])]   # mean [1, 1.5] -> Delta [1, .5]
    s = FedAdagrad(eta=eta, beta1=b1, tau=tau)
    new = s.aggregate(g, ups, 1)
    w, d = np.array([0.0, 1.0]), np.array([1.0, 0.5])
    m, v = (1 - b1) * d, tau ** 2 + d * d
    w = w + eta * m / (np.sqrt(v) + tau)
    assert torch.allclose(s.v["w"], torch.tensor(v, dtype=torch.float32), atol=1e-7)   # [1.01, 0.26]
    assert torch.allclose(new["w"], torch.tensor(w, dtype=torch.float32), atol=1e-6)
    # second step: the same client weights, now Delta = [1, 1.5] - w_1; v keeps growing by Delta^2 (never decays)
    new2 = s.aggregate(new, ups, 2)
    d = np.array([1.0, 1.5]) - new["w"].double().numpy()
    m, v = b1 * m + (1 - b1) * d, v + d * d
    w = new["w"].double().numpy() + eta * m / (np.sqrt(v) + tau)
    assert torch.allclose(s.v["w"], torch.tensor(v, dtype=torch.float32), atol=1e-6)
    assert torch.allclose(new2["w"], torch.tensor(w, dtype=torch.float32), atol=1e-6)
    assert not torch.allclose(new2["w"], FedAdam(eta=eta, beta1=b1, tau=tau).aggregate(new, ups, 2)["w"])


def test_fedyogi_differs_from_fedadam():
    g = {"w": torch.tensor([0.0])}
    ups = [_upd("a", 1, w=[1.0])]
    assert not torch.allclose(FedAdam(tau=0.1).aggregate(g, ups, 1)["w"], FedYogi(tau=0.1).aggregate(g, ups, 1)["w"])


def test_proximal_term_value_and_gradient():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    wg = {"w": torch.tensor([0.0, 1.0]), "other": torch.ones(3)}
    val = proximal_term({"w": w, "skip": torch.ones(2)}, wg, mu=0.5)
    assert math.isclose(float(val), 0.25 * (1 + 1))
    val.backward()
    assert torch.allclose(w.grad, 0.5 * (w.detach() - wg["w"]))
    lin = nn.Linear(2, 1)
    glob = {k: torch.zeros_like(v) for k, v in lin.state_dict().items()}
    expect = 0.05 * sum(float((p ** 2).sum()) for p in lin.parameters())
    assert math.isclose(float(proximal_term(lin, glob, 0.1)), expect, rel_tol=1e-6)
    holder = nn.Module()
    holder.net = lin
    assert math.isclose(float(proximal_loss_term(glob, 0.1)(holder)), expect, rel_tol=1e-6)
    assert float(proximal_term(lin, {}, 1.0)) == 0.0


def test_fedprox_config_and_aggregation():
    s = FedProx(mu=0.01)
    assert s.configure_client(3) == {"proximal_mu": 0.01}
    g = {"w": torch.zeros(1)}
    ups = [_upd("a", 1, w=[1.0]), _upd("b", 3, w=[5.0])]
    assert torch.allclose(s.aggregate(g, ups, 1)["w"], FedAvg().aggregate(g, ups, 1)["w"])
    with pytest.raises(ValueError):
        FedProx(mu=-1)


def test_datasharing_allocates_after_aggregation():
    pool, _ = SharedPool.carve(200, 0.5, seed=0)
    s = DataSharing(pool=pool, mode="part", seed=3, reallocate_every_round=True)
    assert s.configure_client(0, "c")["num_shared"] == 0  # round 1: model only (step 4)
    g = {"w": torch.zeros(1)}
    ups = [_upd("a", 1, {"accuracy": 0.9}, w=[1.0]), _upd("b", 1, {"accuracy": 0.7}, w=[1.0]),
           _upd("c", 1, {"accuracy": 0.5}, w=[1.0])]
    new = s.aggregate(g, ups, 1)
    assert torch.allclose(new["w"], torch.ones(1))
    assert s.allocation == {"a": 0, "b": 0, "c": 100}
    cfg = s.configure_client(2, "c")
    assert cfg["num_shared"] == 100 and np.array_equal(cfg["shared_indices"], pool.indices)
    assert len(s.configure_client(2, "a")["shared_indices"]) == 0
    fresh = DataSharing(pool=pool, seed=3, reallocate_every_round=True)
    fresh.load_state_dict(s.state_dict())
    assert fresh.allocation == s.allocation
    ups2 = [_upd("a", 1, {"accuracy": 0.5}, w=[1.0]), _upd("b", 1, {"accuracy": 0.7}, w=[1.0]),
            _upd("c", 1, {"accuracy": 0.9}, w=[1.0])]
    s.aggregate(new, ups2, 2)
    assert s.allocation == {"a": 100, "b": 0, "c": 0}
    frozen = DataSharing(n_shared=10)  # the default, as in the config: the paper's literal loop (frozen)
    assert frozen.reallocate_every_round is False
    frozen.aggregate(g, ups, 1)
    frozen.aggregate(g, ups2, 2)
    assert frozen.allocation == {"a": 0, "b": 0, "c": 10}
    with pytest.raises(KeyError, match="no client reported"):  # a metric name no client reports: a config error
        DataSharing(n_shared=10).aggregate(g, [_upd("a", 1, w=[1.0])], 1)
    one_silent = DataSharing(n_shared=10)  # one client without a validation split: left out, with a warning
    with pytest.warns(UserWarning, match=r"\['d'\] reported no 'accuracy'"):
        one_silent.aggregate(g, [*ups, _upd("d", 1, w=[1.0])], 1)
    assert one_silent.allocation == {"a": 0, "b": 0, "c": 10}
    alls = DataSharing(n_shared=10, mode="all")
    alls.aggregate(g, [_upd("a", 1, w=[1.0])], 1)
    assert alls.configure_client(2, "a")["num_shared"] == 10


def test_datasharing_compares_only_the_accuracies_of_one_round_under_client_sampling():
    """Step 6-7 of paper 000 §4.1: acc_avg and acc_min are over the clients that uploaded in the round.
    Round 2's clients (d, e, f) are all better than round 1's, whose old accuracies were measured against
    an older global model; mixing them in would give f nothing (it was 0 for d, e, f before the fix)."""
    g = {"w": torch.zeros(1)}
    r1 = [_upd(c, 1, {"accuracy": a}, w=[1.0]) for c, a in (("a", 0.5), ("b", 0.6), ("c", 0.4))]
    r2 = [_upd(c, 1, {"accuracy": a}, w=[1.0]) for c, a in (("d", 0.85), ("e", 0.9), ("f", 0.7))]
    for realloc in (False, True):
        s = DataSharing(n_shared=100, reallocate_every_round=realloc)
        s.aggregate(g, r1, 1)
        s.aggregate(g, r2, 2)
        assert s.allocation == {"a": 0, "b": 0, "c": 100, "d": 0, "e": 0, "f": 100}, realloc
        assert set(s.accuracies) == set("abcdef")  # every reported accuracy is kept in the state


def test_registry():
    assert {"fedavg", "fedprox", "fedbn", "fedadam", "fedyogi", "datasharing"} <= set(STRATEGIES)


def test_fedopt_refuses_values_that_walk_away_and_ignores_an_unused_beta2():
    """Found by an audit: ``federation.strategy.eta=-1`` ran to the end (the server moved away from the clients)."""
    nan, inf = float("nan"), float("inf")  # a review: mu=nan ran as FedAvg, eta=inf failed at round 1's weights
    for bad in ({"eta": -1.0}, {"tau": 0.0}, {"beta1": 1.0}, {"beta2": -0.1}, {"eta": inf}, {"eta": nan},
                {"tau": inf}, {"beta1": nan}):
        with pytest.raises(ValueError, match="must"):
            FedAdam(**bad)
    for mu in (-1.0, nan, inf):
        with pytest.raises(ValueError, match="mu must be a finite number >= 0"):
            FedProx(mu=mu)
    assert FedAdagrad(beta2=5.0).eta == 1e-2  # Adagrad's v_t takes no beta2


def test_the_documented_mean_function_is_importable_from_the_package():
    """docs/extending.md's ``weighted_state_mean(global_state, updates, keys, weighted)``: a review found it, then
    named ``fedavg``, shadowed by the submodule ``strategies.fedavg`` ("'module' object is not callable")."""
    import types

    import federation.core
    from federation.core.strategies import fedavg, weighted_state_mean

    assert isinstance(fedavg, types.ModuleType) and federation.core.weighted_state_mean is weighted_state_mean
    g = {"w": torch.zeros(2)}
    ups = [ClientUpdate("a", {"w": torch.ones(2)}, 1), ClientUpdate("b", {"w": torch.full((2,), 4.0)}, 3)]
    assert torch.allclose(weighted_state_mean(g, ups, ["w"])["w"], torch.full((2,), 3.25))
