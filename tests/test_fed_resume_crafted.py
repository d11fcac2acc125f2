"""A resumed federation's run folder is data (found by an audit that resumed crafted copies of a finished run):
``server.pt`` and ``client_store/*.pt`` entries that this framework never writes are one line naming the file and
the key, exit 2, before anything is used; never a traceback, a misleading "clients dropped" line, exit 0 with NaN
weights (over a good ``global_best.pt``) or ~100 GB taken by an ``expand()``-ed RNG state."""
from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from federation.errors import FederationError
from federation.server_state import load_server_state, rng_state, save_atomic
from tests.cli import run_in_process

ROOT = Path(__file__).resolve().parents[1]
KEY = "fed/round/server_val/acc"


def _state() -> dict:
    """A small server.pt as Server.checkpoint writes it after round 2 (round=1, 0-based)."""
    rows = [{"round": r, "fed/round/clients": 2, KEY: v, "fed/round/test/loss": math.nan}
            for r, v in ((1, .5), (2, .6))]
    return {"round": 1, "global": {"w": torch.ones(2, 3), "n": torch.tensor(3)}, "strategy": {}, "history": rows,
            "best": {"round": 2, "value": .6, "key": KEY}, "dropped_total": 0, "fit_seconds": 1.5,
            "store_index": ["0"], "client_ids": ["0", "1"], "rng": rng_state()}


def _set(path: list, value):
    def edit(s: dict) -> None:
        target = s
        for k in path[:-1]:
            target = target[k]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return edit


CRAFTED = {  # finding: what the audit set -> the key the one line must name
    "F1_nan_global": (_set(["global", "w"], torch.full((2, 3), math.nan)), "global['w']"),
    "F1_inf_global": (_set(["global", "w"], torch.full((2, 3), math.inf)), "global['w']"),
    "F2_expanded_global": (_set(["global", "w"], torch.zeros(1).expand(10**9)), "global['w']"),
    "F3_best_str": (_set(["best"], {"round": 0, "value": "abc"}), "best['value']"),
    "F3_best_empty": (_set(["best"], {}), "best['round']"),
    "F3_best_nan": (_set(["best", "value"], math.nan), "best is {"),  # the whole entry: value and key checked together
    "F3_best_inf": (_set(["best", "value"], math.inf), "best is {"),
    "F3_best_future": (_set(["best", "round"], 3), "best['round']"),
    "F4_history_str": (_set(["history", 0, KEY], "=1+1"), f"history[0]['{KEY}']"),
    "F4_history_no_round": (_set(["history", 1, "round"], KeyError), "history[1]['round']"),
    "F4_history_tensor": (_set(["history", 0, KEY], torch.ones(3)), f"history[0]['{KEY}']"),
    "F4_round_beyond_history": (_set(["round"], 5), "history holds"),
    "F5_store_index_unhashable": (_set(["store_index"], [[1]]), "store_index"),
    "F6_python_rng_expanded": (_set(["rng", "python", 1], torch.zeros(1, dtype=torch.int64).expand(3 * 10**9)),
                               "rng['python']"),
    "F6_numpy_rng_short": (_set(["rng", "numpy", 1], torch.zeros(3, dtype=torch.int64)), "rng['numpy']"),
    "F6_torch_rng_expanded": (_set(["rng", "torch"], torch.zeros(1, dtype=torch.uint8).expand(10**9)), "rng['torch']"),
    "dropped_total_inf": (_set(["dropped_total"], math.inf), "dropped_total"),
}


def test_a_server_pt_as_written_loads(tmp_path):
    save_atomic(_state(), tmp_path / "server.pt")
    assert load_server_state(tmp_path / "server.pt")["best"]["round"] == 2


def _refused_in_one_line(state, path, key):
    """``state`` saved as ``path`` is refused by load_server_state in one line naming the file and ``key``."""
    torch.save(state, path)
    with pytest.raises(FederationError) as err:
        load_server_state(path)
    line = str(err.value)
    assert str(path) in line and key in line and "\n" not in line, line


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_crafted_server_pt_entry_is_one_line_naming_it(tmp_path, name):
    edit, key = CRAFTED[name]
    state = copy.deepcopy(_state())
    edit(state)
    _refused_in_one_line(state, tmp_path / "server.pt", key)


@pytest.mark.parametrize("saved, key", [
    ({"w": torch.ones(2, 2), "n": torch.tensor(3)}, "global['w']"),  # wrong shape
    ({"w": torch.ones(2, 3, dtype=torch.float64), "n": torch.tensor(3)}, "global['w']"),  # another dtype
    ({"w": torch.ones(2, 3, dtype=torch.int64), "n": torch.tensor(3)}, "global['w']"),  # int64 for float
    ({"w": torch.ones(2, 3)}, "'n'"),  # missing
    ({"w": torch.ones(2, 3), "n": torch.tensor(3), "x": torch.ones(1)}, "'x'"),  # extra
], ids=["shape", "dtype", "int64", "missing", "extra"])
def test_global_weights_of_another_model_are_one_line(tmp_path, saved, key):
    """F2: a wrong-shaped, extra, missing or int64-for-float ``global`` entry was a load_state_dict traceback."""
    from federation.resume_checks import check_model_entries

    model = {"w": torch.zeros(2, 3), "n": torch.tensor(0)}
    with pytest.raises(FederationError, match=f"server.pt: global.*{key[-4:-1]}"):
        check_model_entries(saved, model, tmp_path / "server.pt", "global")
    check_model_entries({"w": torch.ones(2, 3), "n": torch.tensor(1)}, model, tmp_path / "server.pt", "global")


@pytest.mark.parametrize("key, value", [
    ("__before_round__", 5), ("__before_round__", {"round": "abc"}), ("__before_round__", {"round": 0, "data": [1, 2]}),
    ("__before_round__", {"round": 0, "data": {"local_state": "abc"}}), ("local_state", "abc"),
    ("local_state", {"bn": torch.zeros(1).expand(10**9)}), ("best_local_meta", {"round": 0, "value": "x"}),
    ("last_round", "abc"),
], ids=["before_int", "before_round_str", "before_data_list", "before_local_str", "local_str", "local_expanded",
        "best_meta_str", "last_round_str"])
def test_crafted_client_store_file_is_one_line(tmp_path, key, value):
    """F5: the store's own reads (rollback on resume, the deployed BN entries) were TypeError/ValueError."""
    from federation.deploy import stored_local
    from federation.store import ClientStore

    store = ClientStore(tmp_path / "client_store")
    store.update("0", {"local_state": {"bn": torch.ones(2)}, "history": [], "last_round": 0}, round=0)
    data = torch.load(store.path("0"), weights_only=True)
    data[key] = value
    torch.save(data, store.path("0"))
    for read in (lambda: store.rollback("0", 1), lambda: stored_local(store, ["0"]),
                 lambda: store.load("0", "x", round=0)):
        with pytest.raises(FederationError, match=f"{store.path('0')}.*{key}"):
            read()


def test_store_dir_outside_the_run_is_refused(tmp_path):
    """F13: a handed-over config.yaml's ``federation.store_dir: ../outside`` (or an absolute path) made predict
    fill the global weights with another folder's clients' BN entries."""
    from federation.deploy import deployed_state
    from federation.store import ClientStore

    run, outside = tmp_path / "run", tmp_path / "outside"
    ClientStore(outside).update("0", {"local_state": {"bn": torch.full((2,), 7.0)}})
    ClientStore(run / "client_store").update("0", {"local_state": {"bn": torch.ones(2)}})
    (run / "global_final.pt").write_bytes(b"")
    fedbn = {"_target_": "federation.core.strategies.fedbn.FedBN"}
    state = {"w": torch.zeros(2), "bn": torch.zeros(2)}
    for store_dir in ("../outside", str(outside), "client_store/../../outside", "."):
        cfg = OmegaConf.create({"federation": {"strategy": fedbn, "store_dir": store_dir}})
        line = f"config.yaml: federation.store_dir={store_dir!r}".replace(".", r"\.")
        with pytest.raises(FederationError, match=line):
            deployed_state(run / "global_final.pt", run, cfg, state)
    cfg = OmegaConf.create({"federation": {"strategy": fedbn, "store_dir": "client_store"}})
    filled, _ = deployed_state(run / "global_final.pt", run, cfg, state)
    assert torch.equal(filled["bn"], torch.ones(2))
    ClientStore(run / "client_store").update("0", {"local_state": {"bn": torch.ones(3)}})  # another model's BN
    with pytest.raises(FederationError, match="local entries of '0'\\['bn'\\]"):
        deployed_state(run / "global_final.pt", run, cfg, state)


def test_resume_check_reads_the_client_store_before_anything_is_written(tmp_path):
    """F14: a bad client store file was refused only after the run started (config.yaml, .hydra/ rewritten)."""
    from experiments.run_folder import unusable_resume_state
    from federation.store import ClientStore

    class Marker:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "pwned"),))

    store = ClientStore(tmp_path / "run" / "client_store")
    store.update("0", {"local_state": {"bn": torch.ones(2)}}, round=0)
    assert unusable_resume_state(tmp_path / "run", True) is None
    torch.save({"local_state": Marker()}, store.path("1"))
    assert str(store.path("1")) in (unusable_resume_state(tmp_path / "run", True) or "")
    torch.save({"__before_round__": 5}, store.path("1"))
    assert "__before_round__" in (unusable_resume_state(tmp_path / "run", True) or "")
    (tmp_path / "run" / "elsewhere").mkdir()
    assert unusable_resume_state(tmp_path / "run", True, "elsewhere") is None  # the config's store_dir is read
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------------------------------------------- end to end
BASE = ["+exp=fed_digits_datashare", "model.width=4", "federation.progress=false", "trainer.limit_train_batches=2",
        "federation.num_clients=4", "federation.clients_per_round=2", "federation.local_epochs=1",
        "federation.min_clients=1", "federation.eval_clients=none", "logger=csv"]


def _run(tmp: Path, run: Path, *args: str):
    return run_in_process("experiments.run", [*BASE, f"paths.root_dir={tmp}", f"paths.log_dir={tmp / 'logs'}",
                                              f"hydra.run.dir={run}", *args], ROOT)


def _one_line(proc, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(module_tmp):
    tmp = module_tmp("fed_resume_crafted")
    run = tmp / "run"
    proc = _run(tmp, run, "federation.rounds=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, run


def _crafted_copy(finished_run, name: str, edit) -> tuple[Path, Path]:
    import shutil

    tmp, run = finished_run
    copy_ = tmp / name
    shutil.copytree(run, copy_)
    state = torch.load(copy_ / "server.pt", weights_only=True)
    edit(state)
    torch.save(state, copy_ / "server.pt")
    return tmp, copy_


@pytest.mark.parametrize("rounds", [1, 2])
def test_nan_global_resume_is_one_line_and_keeps_global_best(finished_run, rounds):
    """F1: exit 0 with an all-NaN global_final.pt and a NaN global_best.pt over the good one (rounds=1), or the
    clients blamed for the NaN (rounds=2). Now one line naming server.pt's key; nothing is rewritten."""
    tmp, run = _crafted_copy(finished_run, f"nan{rounds}", lambda s: s["global"].update(
        {k: torch.full_like(v, math.nan) for k, v in s["global"].items() if v.is_floating_point()}))
    kept = {n: (run / n).read_bytes() for n in ("global_best.pt", "global_final.pt", "config.yaml", "metrics.json")}
    proc = _run(tmp, run, f"federation.rounds={rounds}", f"resume={run}")
    _one_line(proc, str(run / "server.pt"), "global['", "NaN")
    assert {n: (run / n).read_bytes() for n in kept} == kept


def test_wrong_shape_global_resume_is_one_line(finished_run):
    """F2: a global entry of another shape was a load_state_dict traceback (or all clients dropped)."""
    def edit(s):
        s["global"]["head.2.bias"] = torch.zeros(11)

    tmp, run = _crafted_copy(finished_run, "shape", edit)
    best = (run / "global_best.pt").read_bytes()
    proc = _run(tmp, run, "federation.rounds=2", f"resume={run}")
    _one_line(proc, str(run / "server.pt"), "global['head.2.bias']", "[11]")
    assert (run / "global_best.pt").read_bytes() == best


# ------------------------------------------------------------------------------------- strategy state, history, links
def _fedadam_model():
    return {"w": torch.zeros(2, 3), "bn.running_mean": torch.zeros(3), "bn.num_batches_tracked": torch.tensor(0)}


@pytest.mark.parametrize("name, edit, key", [  # name: read by the ids
    ("m_expanded", lambda s: s["strategy"]["m"].update(w=torch.zeros(1).expand(5 * 10**8)), "strategy['m']['w']"),
    ("v_nan", lambda s: s["strategy"]["v"].update(w=torch.full((2, 3), math.nan)), "strategy['v']['w']"),
    ("nested_str_key", lambda s: s["strategy"].update(m={1: torch.ones(1)}), "strategy['m'][1]"),
    ("object", lambda s: s["strategy"].update(x=b"abc"), "strategy['x']"),
    ("history_overflow", lambda s: s["history"][0].update({KEY: 10**400}), f"history[0]['{KEY}']"),
    ("rng_torch_invalid", lambda s: s["rng"].update(torch=torch.full_like(torch.get_rng_state(), 255)),
     "rng['torch']"),
], ids=["m_expanded", "v_nan", "nested_str_key", "object", "history_overflow", "rng_torch_invalid"])
def test_crafted_strategy_history_rng_is_one_line(tmp_path, name, edit, key):
    """Gaps 1, 2, 4: an expand()-ed FedAdam moment (10.9 GB then a traceback), NaN in ``v`` (blamed on the
    aggregation), a 10**400 history value (an OverflowError in the curves after a whole round), an all-255 torch RNG
    state (refused only after config.yaml was rewritten): refused by load_server_state, i.e. before any write."""
    state = _state()
    state["strategy"] = {"m": {"w": torch.zeros(2, 3)}, "v": {"w": torch.ones(2, 3)}}
    save_atomic(state, tmp_path / "server.pt")
    load_server_state(tmp_path / "server.pt")  # as written: loads
    edit(state)
    _refused_in_one_line(state, tmp_path / "server.pt", key)


def test_history_keeps_nan_and_inf(tmp_path):
    state = _state()
    state["history"][0][KEY] = math.inf
    save_atomic(state, tmp_path / "server.pt")
    assert load_server_state(tmp_path / "server.pt")["history"][0][KEY] == math.inf


@pytest.mark.parametrize("strategy, key", [
    ({"m": {"w": torch.zeros(3)}}, "strategy['m']['w']"),  # broadcast silently before
    ({"m": {"w": torch.zeros(2, 3, dtype=torch.float64)}}, "strategy['m']['w']"),
    ({"v": {"x": torch.zeros(1)}}, "strategy['v']"),  # not a model entry
    ({"m": {"bn.running_mean": torch.zeros(3)}}, "strategy['m']['bn.running_mean']"),  # averaged, not optimised
    ({"v": {"w": -torch.ones(2, 3)}}, "strategy['v']['w']"),
    ({"allocation": {"0": 1}}, "strategy holds ['allocation'], not kept by FedAdam"),  # not FedAdam's
], ids=["shape", "dtype", "unknown", "bn_stat", "negative_v", "other_strategy"])
def test_fedopt_state_of_another_model_is_one_line(tmp_path, strategy, key):
    from federation.core.strategies.fedopt import FedAdam
    from federation.resume_checks import check_strategy_state

    model = _fedadam_model()
    fedadam = FedAdam()
    check_strategy_state({"m": {"w": torch.ones(2, 3)}, "v": {"w": torch.ones(2, 3)}}, fedadam, model, ["0"],
                         tmp_path / "server.pt")
    with pytest.raises(FederationError) as err:
        check_strategy_state(strategy, fedadam, model, ["0"], tmp_path / "server.pt")
    assert key in str(err.value) and "server.pt" in str(err.value), str(err.value)


@pytest.mark.parametrize("strategy, key", [
    ({"allocation": {"0": 10**12}}, "strategy['allocation']['0']"),
    ({"allocation": {"0": -1}}, "strategy['allocation']['0']"),
    ({"allocation": {"0": 1.5}}, "strategy['allocation']['0']"),
    ({"allocation": {"9": 1}}, "strategy['allocation']['9']"),
    ({"accuracies": {"0": 7.0}}, "strategy['accuracies']['0']"),
    ({"accuracies": {"0": math.nan}}, "strategy['accuracies']['0']"),
    ({"accuracies": []}, "strategy['accuracies']"),
], ids=["huge", "negative", "float", "no_client", "acc_big", "acc_nan", "acc_list"])
def test_datasharing_state_out_of_range_is_one_line(tmp_path, strategy, key):
    from federation.core.strategies.datasharing import DataSharing
    from federation.resume_checks import check_strategy_state

    sharing = DataSharing(n_shared=50)
    check_strategy_state({"accuracies": {"0": .5, "1": .9}, "allocation": {"0": 50, "1": 0}}, sharing,
                         _fedadam_model(), ["0", "1"], tmp_path / "server.pt")
    with pytest.raises(FederationError) as err:
        check_strategy_state(strategy, sharing, _fedadam_model(), ["0", "1"], tmp_path / "server.pt")
    assert key in str(err.value), str(err.value)


@pytest.mark.parametrize("history", [["x"], [None], [{"round": "a"}], [{"round": 0, "acc": "x"}],
                                     [{"round": 0, "num_samples": 1.5}], [{"round": 0, "acc": 10**400}]],
                         ids=["str", "none", "round_str", "metric_str", "samples_float", "overflow"])
def test_crafted_client_history_is_one_line(tmp_path, history):
    """Gap 3: a federation client's store ``history`` entries were never checked (kept, exit 0); refused by the
    resume's check before anything is written (and by Server.resume, which calls the same check)."""
    from experiments.run_folder import unusable_resume_state
    from federation.store import ClientStore

    store = ClientStore(tmp_path / "run" / "client_store")
    store.update("0", {"local_state": {"bn": torch.ones(2)}, "last_round": 0,
                       "history": [{"round": 0, "num_samples": 5, "num_shared": 0, "acc": .5}]})
    assert unusable_resume_state(tmp_path / "run", True) is None
    data = torch.load(store.path("0"), weights_only=True)
    data["history"] = history
    torch.save(data, store.path("0"))
    line = unusable_resume_state(tmp_path / "run", True) or ""
    assert f"{store.path('0')}: history[0] is" in line and "\n" not in line, line


def test_resume_check_refuses_nan_local_state_before_anything_is_written(tmp_path):
    """Gap 4: NaN BN entries in a client store (kept after the resume's rollback) were refused by Server.resume
    only, after config.yaml and .hydra/ were rewritten; a stopped round's NaN attempt that the rollback drops is
    no reason to refuse."""
    from experiments.run_folder import unusable_resume_state
    from federation.store import ClientStore

    run = tmp_path / "run"
    state = _state()  # round=1: the resume starts at round 2
    run.mkdir()
    save_atomic(state, run / "server.pt")
    store = ClientStore(run / "client_store")
    store.update("0", {"local_state": {"bn": torch.ones(2)}}, round=1)
    assert unusable_resume_state(run, True) is None
    store.update("0", {"local_state": {"bn": torch.full((2,), math.nan)}}, round=2)  # a stopped round 3: dropped
    assert unusable_resume_state(run, True) is None
    data = torch.load(store.path("0"), weights_only=True)
    data["__before_round__"]["data"]["local_state"]["bn"] = torch.tensor([1.0, math.inf])  # kept: refused
    torch.save(data, store.path("0"))
    line = unusable_resume_state(run, True) or ""
    assert str(store.path("0")) in line and "local_state" in line and "NaN or inf" in line, line
    torch.save({"local_state": {"bn": torch.full((2,), math.nan)}}, store.path("0"))
    assert "local_state['bn']" in (unusable_resume_state(run, True) or "")


def _fedbn_run(tmp_path):
    from federation.store import ClientStore

    run, other = tmp_path / "run", tmp_path / "other"
    ClientStore(other / "client_store").update("0", {"local_state": {"bn": torch.full((2,), 7.0)}})
    ClientStore(run / "client_store").update("0", {"local_state": {"bn": torch.ones(2)}})
    (run / "global_best.pt").write_bytes(b"")
    cfg = OmegaConf.create({"federation": {"strategy": {"_target_": "federation.core.strategies.fedbn.FedBN"}}})
    return run, other, cfg, {"w": torch.zeros(2), "bn": torch.zeros(2)}


def test_linked_store_file_or_best_local_is_refused(tmp_path):
    """Gap 5 (F13): ``client_store/0.pt`` linked to another run's file, or ``global_best_local.pt`` linked to a
    file elsewhere, had that file's BN entries filled in by predict; now one line naming the link."""
    from federation.deploy import BEST_LOCAL, deployed_state

    run, other, cfg, state = _fedbn_run(tmp_path)
    filled, _ = deployed_state(run / "global_best.pt", run, cfg, state)
    assert torch.equal(filled["bn"], torch.ones(2))
    save_atomic({"0": {"bn": torch.full((2,), 5.0)}}, other / BEST_LOCAL)
    (run / BEST_LOCAL).symlink_to(other / BEST_LOCAL)
    with pytest.raises(FederationError, match=f"{BEST_LOCAL}.*is a link"):
        deployed_state(run / "global_best.pt", run, cfg, state)
    (run / BEST_LOCAL).unlink()
    (run / BEST_LOCAL).mkdir()
    with pytest.raises(FederationError, match=f"{BEST_LOCAL}.*not a regular file"):
        deployed_state(run / "global_best.pt", run, cfg, state)
    (run / BEST_LOCAL).rmdir()
    (run / "client_store" / "0.pt").unlink()
    (run / "client_store" / "0.pt").symlink_to(other / "client_store" / "0.pt")
    with pytest.raises(FederationError, match=r"client_store/0\.pt.*is a link"):
        deployed_state(run / "global_best.pt", run, cfg, state)


def test_resume_refuses_a_linked_store_file(tmp_path):
    """Gap 5, the resume path: a store file linked out of the run folder is refused before anything is written
    (run_folder.foreign_link, run by resume_problem before unusable_resume_state)."""
    from experiments.run_folder import foreign_link

    run, other, _, _ = _fedbn_run(tmp_path)
    assert foreign_link(run) is None
    (run / "client_store" / "0.pt").unlink()
    (run / "client_store" / "0.pt").symlink_to(other / "client_store" / "0.pt")
    assert foreign_link(run) == (Path("client_store/0.pt"), str(other / "client_store" / "0.pt"))


def test_datasharing_allocation_beyond_the_pool_resume_is_one_line(finished_run):
    """Gap 1 end to end: ``allocation={'0': 10**12, ...}`` resumed to exit 0 with shared_sent=2e12."""
    def edit(s):
        assert set(s["strategy"]) == {"accuracies", "allocation"}, s["strategy"]
        s["strategy"]["allocation"] = {cid: 10**12 for cid in s["client_ids"]}

    tmp, run = _crafted_copy(finished_run, "allocation", edit)
    proc = _run(tmp, run, "federation.rounds=2", f"resume={run}")
    _one_line(proc, str(run / "server.pt"), "strategy['allocation']['0']", "pool")
