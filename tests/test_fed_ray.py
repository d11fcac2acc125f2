"""The Ray transport on a local Ray instance with 2 CPU workers (issue 11 §2): same model as the in-process
run, failing and timed-out clients dropped with the round completing, one worker pool reused across rounds,
fractional GPU placement through a custom resource, an existing cluster reached by address, a missing
data root named with its node, and a local instance listening on 127.0.0.1 only. ``ray.shutdown()`` always runs
(module fixture)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

ray = pytest.importorskip("ray")

from datamodules.errors import DataError  # noqa: E402
from federation.errors import FederationError  # noqa: E402
from federation.transports import ClientJob, ExecutorError  # noqa: E402
from federation.transports.ray import RayExecutor  # noqa: E402
from federation.transports.ray_cluster import loopback_init as _loopback_init  # noqa: E402
from tests.ray_helpers import echo_client, fake_client  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module: 2 CPUs and 1 unit of the custom resource ``fake_gpu``, listening
    on 127.0.0.1 only as the executor's own instance does."""
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
           "OMP_NUM_THREADS": "1"}
    _loopback_init(ray, num_cpus=2, resources={"fake_gpu": 1}, include_dashboard=False, log_to_driver=False,
                   runtime_env={"env_vars": env})  # retried as the executor's own start is
    try:
        yield ray
    finally:
        ray.shutdown()


def _executor(**kw) -> RayExecutor:
    return RayExecutor(**{"num_workers": 2, "gpus_per_client": 0, "cpus_per_client": 1, **kw})


def test_failing_and_timed_out_clients_are_dropped_and_the_round_completes(local_ray):
    ex = _executor(timeout_s=8)
    try:
        jobs = [ClientJob("a"), ClientJob("b", {"behaviour": "raise"}), ClientJob("c", {"behaviour": "hang"}),
                ClientJob("d")]
        done = []
        updates, failures = ex.map(fake_client, jobs, lambda cid, ok: done.append((cid, ok)))
        assert [u.client_id for u in updates] == ["a", "d"]
        assert "RuntimeError" in failures["b"] and "timed out" in failures["c"]
        assert sorted(done) == [("a", True), ("b", False), ("c", False), ("d", True)]
        # the next round runs on a full pool again (the hung worker was replaced)
        updates, failures = ex.map(fake_client, [ClientJob("a"), ClientJob("d")])
        assert len(updates) == 2 and not failures and len(ex.workers()) == 2
        # the user's error is no crash to tolerate: it would fail every round (a walkthrough: a client whose
        # module refused a per-client setting was dropped from every round of a run that exited 0)
        with pytest.raises(FederationError, match=r"^client b: ConfigError: module: unexpected keyword"):
            ex.map(fake_client, [ClientJob("a"), ClientJob("b", {"behaviour": "config_error"})])
    finally:
        ex.shutdown()


def test_a_worker_killed_for_memory_is_replaced_not_reused(local_ray, monkeypatch):
    """A review: Ray reports a worker its memory monitor killed as ``OutOfMemoryError``, a ``RayError`` but no
    ``RayActorError``; the worker went back to the idle list, and every later call to it failed at once, dropping
    most clients of every round. Now it is replaced, as a worker that died."""
    ex = _executor()
    try:
        ex.map(fake_client, [ClientJob("w1"), ClientJob("w2")])  # the pool is up: the checks below are replacements'
        real_get, retired = ex._get, []
        monkeypatch.setattr(ex, "_retire", lambda actor, real=ex._retire: (retired.append(actor), real(actor)))

        def get(ref, jobs):
            value = real_get(ref, jobs)
            if getattr(value, "client_id", None) == "b":  # a client's update (not a worker's start-up check)
                raise ray.exceptions.OutOfMemoryError("Task was killed due to the node running low on memory.")
            return value

        monkeypatch.setattr(ex, "_get", get)
        # ... and its replacement is killed for memory too, while building its data (a review: that Ray error
        # ended the run with a traceback): replaced again
        real_accept, accepts = ex._accept, []

        def accept(ref, actor, jobs):
            accepts.append(actor)
            if len(accepts) == 1:
                raise ray.exceptions.OutOfMemoryError("Task was killed due to the node running low on memory.")
            return real_accept(ref, actor, jobs)

        monkeypatch.setattr(ex, "_accept", accept)
        updates, failures = ex.map(fake_client, [ClientJob(c) for c in "abcd"])
        assert [u.client_id for u in updates] == ["a", "c", "d"] and len(retired) == 2 and len(accepts) == 2
        assert failures["b"] == "its Ray worker died (OutOfMemoryError)"
        assert all(a not in retired for a in ex._pool) and len(ex.workers()) == 2
    finally:
        ex.shutdown()


def test_a_replacements_set_up_makes_no_finished_client_late(local_ray):
    """A review: a timed-out client's replacement set up its data (8 s) while the driver waited; two clients
    finished meanwhile, one was collected per pass, and the other (11 s of a 12 s limit) was dropped as timed
    out, its worker replaced in turn. Here A hangs past 4 s while D and E, each 2.5 s, finish during the
    replacement's 3 s set-up: only A is dropped."""
    cfg = OmegaConf.create({"data": {"_target_": "tests.ray_helpers.SlowData", "seconds": 3}, "trainer": {}})
    ex = _executor(num_workers=3, cpus_per_client=0.5, timeout_s=4)
    try:
        plan = {"A": {"behaviour": "hang"}, "B": {"seconds": 2.0}, "C": {"seconds": 2.2}, "D": {"seconds": 2.5},
                "E": {"seconds": 2.5}}
        updates, failures = ex.map(fake_client, [ClientJob(c, {"cfg": cfg, **kw}) for c, kw in plan.items()])
        assert [u.client_id for u in updates] == ["B", "C", "D", "E"] and list(failures) == ["A"], failures
        assert "timed out" in failures["A"]  # (the next round's full pool: the first test of this module)
    finally:
        ex.shutdown()


def test_two_replacements_setting_up_together_share_the_store_probe(local_ray, tmp_path):
    """A review: two late clients replaced in one pass each wrote a new store-probe token, so the first replacement
    read the second's and the run stopped with "the client store is not the driver's". Both hang here; each job
    carries the run's store, as every real round does: both are dropped and the round goes on."""
    ex = _executor(num_workers=2, cpus_per_client=0.5, timeout_s=3)
    store = str(tmp_path / "client_store")
    try:
        jobs = [ClientJob(c, {"behaviour": b, "store": store}) for c, b in (("a", "hang"), ("b", "hang"), ("c", "ok"))]
        updates, failures = ex.map(fake_client, jobs)
        assert [u.client_id for u in updates] == ["c"] and sorted(failures) == ["a", "b"], failures
        assert all("timed out" in why for why in failures.values()), failures
    finally:
        ex.shutdown()


def test_worker_pool_is_reused_across_rounds(local_ray):
    ex = _executor()
    try:
        pids = []
        for _ in range(3):  # three rounds of four clients on two workers
            updates, failures = ex.map(fake_client, [ClientJob(str(i)) for i in range(4)])
            assert not failures and [u.client_id for u in updates] == ["0", "1", "2", "3"]
            pids.append({int(u.metrics["pid"]) for u in updates})
        assert pids[0] == pids[1] == pids[2] and 1 <= len(pids[0]) <= 2
        assert {w["pid"] for w in ex.workers()} >= pids[0]
    finally:
        ex.shutdown()


def test_fractional_gpus_through_a_custom_resource(local_ray):
    ex = _executor(gpus_per_client=0.5, gpu_resource="fake_gpu")
    try:
        assert ex.num_workers == 2 and ex.accelerator == "cpu"  # 1 fake GPU / 0.5 per client = 2 at once
        ex.map(fake_client, [ClientJob("a"), ClientJob("b")])
        assert [w["resources"].get("fake_gpu") for w in ex.workers()] == [0.5, 0.5]
    finally:
        ex.shutdown()
    whole = _executor(gpus_per_client=1, gpu_resource="fake_gpu")
    try:
        assert whole.num_workers == 1  # one whole fake GPU: one client at a time, not a hang
    finally:
        whole.shutdown()
    with pytest.raises(ExecutorError, match="no_such_gpu"):
        _executor(gpus_per_client=1, gpu_resource="no_such_gpu")
    with pytest.raises(ExecutorError, match=r"gpus_per_client=2: no Ray node holds that much fake_gpu \(per node: 1\)"):
        _executor(gpus_per_client=2, gpu_resource="fake_gpu")  # it waited for an actor that could never start
    # a review: the pool was sized by GPUs only; actors asking for more CPUs than the node's 2 never started
    cpu_bound = _executor(num_workers=3, cpus_per_client=1)
    try:
        assert cpu_bound.num_workers == 2
    finally:
        cpu_bound.shutdown()
    with pytest.raises(ExecutorError, match=r"cpus_per_client=3: no Ray node holds that many CPUs \(CPUs per node: 2\)"):
        _executor(num_workers=1, cpus_per_client=3)



def test_the_pool_is_sized_by_what_fits_on_each_node_and_gpu():
    """A review: the pool was ``floor(total / per_client)`` actors, more than can start when a fraction of a GPU
    does not divide a GPU or the resource is spread over nodes, and the driver waited for the last actor without
    a message."""
    from federation.transports.ray import concurrent_clients

    assert concurrent_clients([2.0], 0.4, whole_units=True) == 4  # 2 per GPU, not floor(2 / 0.4) = 5
    assert concurrent_clients([1.0, 1.0], 0.3, whole_units=True) == 6
    assert concurrent_clients([0.5, 0.5], 1.0, whole_units=False) == 0  # no node holds one client's share
    assert concurrent_clients([2.0], 0.4, whole_units=False) == 5  # a custom resource is a plain amount
    assert concurrent_clients([4.0, 2.0], 2.0, whole_units=True) == 3


def test_missing_data_root_names_node_and_path(local_ray, tmp_path):
    ex = _executor(num_workers=1)
    missing = tmp_path / "hospital_b"
    cfg = OmegaConf.create({"data": {"sites": {"b": {"root": str(missing), "layout": "lits"}}}, "trainer": {}})
    try:
        with pytest.raises(DataError) as err:
            ex.map(fake_client, [ClientJob("b", {"cfg": cfg})])
        msg = str(err.value)
        assert str(missing) in msg and "Ray node" in msg and "\n" not in msg
    finally:
        ex.shutdown()



def test_a_client_store_the_workers_do_not_share_is_one_line_naming_the_node(local_ray, tmp_path):
    """A review: on a joined cluster the workers write their clients' state into the run folder's client store
    and the server reads it back, so a node with a folder of its own at that path trained into it unseen. The
    driver now writes a token there that every new worker must read back (here the run shares it: accepted);
    a worker that reads another is refused in one line naming its node."""
    from federation.transports.ray_worker import STORE_PROBE

    store = tmp_path / "client_store"
    ex = _executor(num_workers=1)
    try:
        updates, failures = ex.map(fake_client, [ClientJob("a", {"store": str(store)})])
        assert len(updates) == 1 and not failures
        token = (store / STORE_PROBE).read_text()
        actor = ex._new_actor()
        assert local_ray.get(actor.check_data.remote(None, str(store), token)) is None
        msg = local_ray.get(actor.check_data.remote(None, str(store), "another driver's token"))
        assert str(store) in msg and "Ray node" in msg and "shares" in msg and "\n" not in msg
    finally:
        ex.shutdown()



def test_a_worker_builds_its_data_before_its_first_client_is_timed(local_ray):
    """A review: ``timeout_s`` covered a worker's first data build as well as training, so a slow build dropped
    the first client of every fresh worker. The build now runs before it (untimed, as the actor's start-up);
    the user's error there is one line naming the node."""
    from tests.ray_helpers import data_client

    ex = _executor(num_workers=1, timeout_s=4)
    try:
        cfg = OmegaConf.create({"data": {"_target_": "tests.ray_helpers.SlowData", "seconds": 6}, "trainer": {}})
        updates, failures = ex.map(data_client, [ClientJob("a", {"cfg": cfg})])
        assert not failures and updates[0].metrics["build_s"] < 1.0, failures
        bad = OmegaConf.create({"data": {"_target_": "tests.ray_helpers.SlowData", "fail": True}, "trainer": {}})
        ex.shutdown()
        ex = _executor(num_workers=1, timeout_s=4)
        with pytest.raises(DataError, match=r"^Ray node .*: .*data.root /nowhere holds no case$"):
            ex.map(data_client, [ClientJob("a", {"cfg": bad})])
    finally:
        ex.shutdown()


def test_address_reaches_an_existing_cluster(local_ray):
    address = ray.get_runtime_context().gcs_address
    code = ("from federation.transports import ClientJob\nfrom federation.transports.ray import RayExecutor\n"
            "from tests.ray_helpers import fake_client\n"
            f"ex = RayExecutor(num_workers=1, gpus_per_client=0, address={address!r})\n"
            "ups, fails = ex.map(fake_client, [ClientJob('remote')])\n"
            "print('CLUSTER', ex.ray.get_runtime_context().gcs_address, ups[0].client_id, len(fails))\nex.shutdown()\n")
    # the fixture's head listens on 127.0.0.1 only; a driver joining it must not rewrite 127.0.0.1 to the
    # machine's routable address (Ray does on Linux unless its cluster mode is off): the executor passes the
    # address through as given, so the other driver turns that mode off the way a user would
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=ROOT, env=env)
    assert f"CLUSTER {address} remote 0" in proc.stdout, proc.stderr[-2000:]
    assert ray.is_initialized()  # the other driver disconnected; the cluster it joined is still up


@pytest.mark.parametrize("strategy", [
    ["federation/strategy=fedavg", "federation.clients_per_round=4", "federation.rounds=2"],
    # a review: the one case above had every client in every round and no client store (the reviewer also ran
    # data sharing, mode=part, 2 of 4 clients over 3 rounds: equal too; left out of CI for its 50 s)
    ["federation/strategy=fedbn", "federation.clients_per_round=2", "federation.rounds=3"],
], ids=["fedavg_all_clients", "fedbn_sampled"])
def test_ray_gives_the_same_global_model_as_sequential(local_ray, tmp_path, strategy):
    from experiments.run import dispatch
    from tests.hydra_helpers import compose_run

    common = ["+exp=fed_digits_datashare", "logger=csv", "model.width=4", "federation.num_clients=4",
              "federation.local_epochs=1", *strategy, "federation.progress=false", "trainer.limit_train_batches=2",
              "trainer.deterministic=true", "federation.eval_clients=none", "federation.eval_test_every_round=false"]
    dispatch(compose_run(common, tmp_path / "seq"))
    dispatch(compose_run([*common, "federation/executor=ray", "federation.executor.gpus_per_client=0"], tmp_path / "ray"))
    a = torch.load(tmp_path / "seq" / "run" / "global_final.pt", weights_only=True)
    b = torch.load(tmp_path / "ray" / "run" / "global_final.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    assert any(not torch.equal(a[k], torch.zeros_like(a[k])) for k in a)


def test_federated_student_with_a_frozen_teacher_runs_on_ray(local_ray, tmp_path):
    """fed_hlfd (issue 15) on Ray workers: each worker loads the frozen teacher from the path in the client
    config and keeps HLFD's adapters in the client store; the global student holds student keys only."""
    import csv

    from federation.fed_distill import student_stage_cfg
    from federation.fed_distill_eval import state_net, teacher_net
    from experiments.run import dispatch
    from federation.store import ClientStore
    from lightning_modules.base import build
    from tests.hydra_helpers import compose_run

    sites = ("site_a", "site_b")
    cfg = compose_run(["+exp=fed_kits_hlfd", "~data.sites.site_c", "logger=csv", "callbacks=default",
                       "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                       "federation.rounds=2", "federation.progress=false", "federation.eval_clients=none",
                       "federation.eval_test_every_round=false", "module.example_size=32",
                       "distill.teacher.model.width=4", "federation/executor=ray", "federation.executor.gpus_per_client=0",
                       *[f"data.sites.{s}.{k}" for s in sites for k in ("image_size=32", "synthetic.n_cases=4",
                                                                          "augment=false")]], tmp_path)
    teacher = tmp_path / "teacher.pt"
    torch.save(build(OmegaConf.to_container(cfg.distill.teacher.model, resolve=True), what="teacher").state_dict(), teacher)
    dispatch(student_stage_cfg(cfg, "fed_hlfd", teacher))
    run = tmp_path / "run" / "fed_hlfd"
    rounds = list(csv.DictReader((run / "rounds.csv").open()))
    assert [int(float(r["clients"])) for r in rounds] == [2, 2]  # every Ray client reported, both rounds
    final = torch.load(run / "global_final.pt", weights_only=True)
    assert set(final) == set(state_net(cfg.model, run / "global_final.pt", "student").state_dict())
    assert not set(final) & set(teacher_net(cfg, teacher).state_dict())
    for site in sites:  # written by the Ray workers: round 2 read round 1's adapters back
        stored = ClientStore(run / "client_store").load_all(site)
        assert stored["private_state"] and stored["last_round"] == 1


LISTENERS = r"""
import json, os, socket, sys
from federation.transports import ClientJob
from federation.transports.ray import RayExecutor
from tests.ray_helpers import fake_client


def listening():  # socket inode -> address of every TCP listener (state 0A) of this network namespace
    out = {}
    for family, path in ((socket.AF_INET, "/proc/net/tcp"), (socket.AF_INET6, "/proc/net/tcp6")):
        if not os.path.exists(path):
            continue
        for row in open(path).read().splitlines()[1:]:
            f = row.split()
            if f[3] == "0A":
                raw = bytes.fromhex(f[1].split(":")[0])  # 32-bit words in host byte order
                if sys.byteorder == "little":
                    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                out[f[9]] = f"{socket.inet_ntop(family, raw)}:{int(f[1].split(':')[1], 16)}"
    return out


def tree(root):  # root and every process below it (the Ray processes the driver started)
    kids = {}
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            kids.setdefault(int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1]), []).append(int(p))
        except OSError:
            pass
    todo, out = [root], []
    while todo:
        out.append(todo.pop()); todo += kids.get(out[-1], [])
    return out


def link(path):  # an fd closed while it is read is no listener
    try:
        return os.readlink(path)
    except OSError:
        return ""


ex = RayExecutor(num_workers=1, gpus_per_client=0, cpus_per_client=1)
ups, fails = ex.map(fake_client, [ClientJob("a")])
addrs, found = listening(), {}
for pid in tree(os.getpid()):
    try:
        name = open(f"/proc/{pid}/comm").read().strip()
        links = [link(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:  # the process exited meanwhile
        continue
    found[f"{name}[{pid}]"] = sorted(addrs[s[8:-1]] for s in links if s.startswith("socket:[") and s[8:-1] in addrs)
found["driver"] = found.pop(f"{open('/proc/self/comm').read().strip()}[{os.getpid()}]", [])
print("LISTENERS", json.dumps({"ok": [u.client_id for u in ups], "found": found}))
ex.shutdown()
"""


@pytest.mark.skipif(not Path("/proc/net/tcp").is_file(), reason="no /proc/net/tcp: this platform cannot tell "
                    "which addresses a process listens on")
def test_a_local_instance_listens_on_loopback_only():
    """The local Ray instance a RayExecutor starts (no ``address``): every TCP listener of the driver and of
    the processes below it (GCS, raylet, agents, the worker actor) is on 127.0.0.1, none on 0.0.0.0, ``::``
    or the machine's routable address."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", LISTENERS], capture_output=True, text=True, timeout=240, cwd=ROOT,
                          env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("LISTENERS ")), None)
    assert line, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(line.split(" ", 1)[1])
    assert report["ok"] == ["a"]
    found = report["found"]
    addrs = {a.rsplit(":", 1)[0] for socks in found.values() for a in socks}
    assert found["driver"], found  # its core worker's gRPC port: the driver's own sockets were read
    assert any(k.startswith("gcs_server") for k, v in found.items() if v), found  # the GCS was seen listening
    assert any(k.startswith("raylet") for k, v in found.items() if v), found
    assert addrs and all(a.startswith(("127.", "::ffff:127.")) or a == "::1" for a in addrs), found


def test_a_local_start_that_times_out_is_tried_again(caplog):
    """Ray gives a raylet 30 s to register; on a loaded machine the first start can fail, and the executor's
    start (unlike the test fixture's) was not retried: the run ended on Ray's traceback."""
    from types import SimpleNamespace

    calls = []

    def init(**kw):
        calls.append(kw)
        if len(calls) == 1:
            raise Exception("The current node timed out during startup")  # noqa: TRY002 - what Ray raises

    consts = SimpleNamespace(ENABLE_RAY_CLUSTER=True)
    fake = SimpleNamespace(init=init, shutdown=lambda: calls.append("shutdown"),
                           _private=SimpleNamespace(ray_constants=consts),
                           util=SimpleNamespace(get_node_ip_address=lambda: "127.0.0.1"))
    _loopback_init(fake, num_cpus=1)
    assert calls[1] == "shutdown" and len(calls) == 3 and calls[2]["_node_ip_address"] == "127.0.0.1"
    assert consts.ENABLE_RAY_CLUSTER is True and "attempt 2 of 3" in caplog.text
    calls.clear()
    fake.init = lambda **kw: (_ for _ in ()).throw(RuntimeError("never"))
    with pytest.raises(RuntimeError, match="never"):
        _loopback_init(fake, attempts=2)


def test_the_global_weights_go_once_per_round_and_workers_use_their_cpus(local_ray, monkeypatch):
    """A review of the Ray transport: each client's call pickled the global model again (a copy per call in the
    object store), and a worker's torch threads followed an inherited OMP_NUM_THREADS, not cpus_per_client.
    Now one ``ray.put`` per distinct weights, the weights arrive intact, and threads = the CPUs assigned."""
    from federation.core.messages import ServerMessage

    weights = {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(4)}
    msg = ServerMessage(1, weights, {})
    puts = []
    real_put = ray.put
    monkeypatch.setattr(ray, "put", lambda value, **kw: puts.append(value) or real_put(value, **kw))
    ex = _executor()
    try:
        jobs = [ClientJob(c, {"server_message": ServerMessage(1, msg.weights, {"i": i})}) for i, c in enumerate("abc")]
        updates, failures = ex.map(echo_client, jobs)
        sent = [p for p in puts if isinstance(p, dict) and set(p) == set(weights)]  # Ray puts other things too
        assert not failures and len(sent) == 1, (failures, puts)
        for u in updates:
            assert all(torch.equal(u.weights[k], weights[k]) for k in weights) and u.metrics["threads"] == 1.0
    finally:
        ex.shutdown()


def test_workers_get_the_drivers_allow_targets_and_wandb_mode(monkeypatch):
    """Workers of a joined cluster inherit ``ray start``'s environment: the driver's ``allow_targets`` list
    must travel in the runtime env (a review: every client was refused on a cluster)."""
    from federation.transports.ray import worker_env
    from federation.transports.ray_worker import set_threads_to_assigned_cpus

    monkeypatch.setenv("FEDMED_ALLOW_TARGETS", "mylab")
    monkeypatch.setenv("WANDB_MODE", "offline")
    env = worker_env()
    assert env["FEDMED_ALLOW_TARGETS"] == "mylab" and env["WANDB_MODE"] == "offline" and str(ROOT) in env["PYTHONPATH"]
    before = torch.get_num_threads()
    try:
        assert set_threads_to_assigned_cpus({"CPU": 2.0}) == 2 == torch.get_num_threads()
        assert set_threads_to_assigned_cpus({"CPU": 0.5}) == 1
    finally:
        torch.set_num_threads(before)


def test_a_worker_whose_code_is_not_the_drivers_is_one_line_naming_the_node(local_ray, tmp_path):
    """A review: Ray ships no code here, so a node of a joined cluster holding another commit (or an edited
    file) trained with it unseen. Every new worker compares its code's fingerprint with the driver's; here the
    worker shares the driver's checkout (accepted), and a fingerprint that differs is refused in one line."""
    from federation.transports.code_identity import code_fingerprint

    ex = _executor(num_workers=1)
    try:
        actor = ex._new_actor()
        assert local_ray.get(actor.check_data.remote(None, None, None, code_fingerprint())) is None
        msg = local_ray.get(actor.check_data.remote(None, None, None, "0" * 64))
        assert "Ray node" in msg and "is not the driver's" in msg and "\n" not in msg
    finally:
        ex.shutdown()


SHIP = """
import json, os, sys
from federation.transports import ClientJob
from federation.transports.ray import RayExecutor
from tests.ray_helpers import code_client
ex = RayExecutor(num_workers=1, gpus_per_client=0, cpus_per_client=1, ship_code=sys.argv[1] == "1")
try:
    ups, fails = ex.map(code_client, [ClientJob("a", {"driver_root": sys.argv[2], "driver_cwd": os.getcwd()})])
    print("SHIP", json.dumps({"metrics": dict(ups[0].metrics) if ups else None, "fails": fails}))
finally:
    ex.shutdown()
"""


def test_ship_code_sends_the_drivers_checkout_to_the_workers(tmp_path):
    """``ship_code``: the workers import the project from the copy Ray unpacked for them (Ray's ``working_dir``),
    not from a checkout at the driver's path, so a node of a cluster needs none; the copy passes the code
    fingerprint check before the first client (it is the driver's code). The driver runs in a process of its
    own, as Ray ships a checkout only at ``ray.init``. Without ``ship_code`` (checked once by hand) the worker's
    project is the driver's checkout and both metrics are 0."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", SHIP, "1", str(ROOT)], capture_output=True, text=True, timeout=240,
                          cwd=tmp_path, env=env)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("SHIP ")), None)
    assert line is not None, proc.stderr[-3000:]
    assert json.loads(line[5:]) == {"metrics": {"elsewhere": 1.0, "unpacked": 1.0, "in_driver_cwd": 1.0},
                                    "fails": {}}  # a review: Ray's copy was the cwd, relative data paths broke


def test_ship_code_on_a_ray_started_without_it_is_one_line(local_ray):
    """Ray packs a ``working_dir`` only at ``ray.init``: an executor asked to ship code into a Ray instance
    started without one (this module's) refuses in one line instead of running the nodes' own checkouts."""
    with pytest.raises(ExecutorError, match=r"ship_code=true: Ray was started in this process without a "
                                            r"working_dir") as err:
        _executor(num_workers=1, ship_code=True)
    assert "\n" not in str(err.value)


def test_ship_code_sends_the_project_folders_and_leaves_any_other_top_level_entry(tmp_path, monkeypatch):
    """``ship_code`` names what to send, not what to leave: a checkout's untracked virtual environment, data or run
    folder under any name stays behind (CI: a venv linked in as ``.venv_unused`` was packed, and the driver spent
    its 240 s walking it), while the project's packages go, without weights or arrays inside them, and so does a
    user's own package beside them (``__init__.py``) or one ``allow_targets`` names (a review: docs/extending.md's
    ``my_nets`` stayed behind). A name with pattern characters is that name (``runs[1]``, not ``runs1``)."""
    import pathspec

    from federation.transports.ray_cluster import SHIPPED, runtime_env, ship_excludes
    from lightning_modules.targets import ENV

    monkeypatch.setenv(ENV, "mylab.nets,other_nets")
    for name in ("federation", "experiments", "tests", "venv", ".venv_unused", "scans", "runs[1]", ".git", "my_nets",
                 "mylab"):
        (tmp_path / name).mkdir()
    (tmp_path / "my_nets" / "__init__.py").write_text("")
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "README.md").write_text("")
    (tmp_path / "other.py").write_text("")
    (tmp_path / "other_nets.py").write_text("")  # a one-file module allow_targets names: sent (a review)
    excludes = ship_excludes(tmp_path)
    assert [e for e in excludes if e.startswith("/")] == ["/.git", "/.venv_unused", "/README.md", "/other.py",
                                                          r"/runs\[1\]", "/scans", "/venv"]
    assert {"*.ckpt", "*.pt", "*.npy"} <= set(excludes)
    spec = pathspec.PathSpec.from_lines("gitwildmatch", excludes)  # as Ray reads them
    assert spec.match_file("runs[1]/a.py") and not spec.match_file("my_nets/a.py") and spec.match_file("venv/x.py")
    assert {"federation", "experiments", "tests", "pyproject.toml"} <= set(SHIPPED)
    env = runtime_env(ship_code=True)
    assert env["working_dir"] == str(ROOT) and "/docs" in env["excludes"] and "/federation" not in env["excludes"]
