"""The executor-related ``federation.*`` checks that run before any process starts or any client trains (found by
a walkthrough: privacy ignored off Flower, Flower values failing on the nodes, Ray addresses ending in Hydra's
traceback, a missing cfg-path giving two tracebacks, min_clients capped without a word)."""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from federation.errors import FederationError
from lightning_modules.errors import ConfigError
from tests.cli import run_in_process
from tests.hydra_helpers import compose_run

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ["+exp=fed_digits_datashare", "logger=csv", "model.width=4", "federation.num_clients=3",
          "federation.clients_per_round=3", "federation.rounds=1", "federation.progress=false"]
FLOWER = [*DIGITS, "federation/executor=flower"]


def _check(overrides: list[str], tmp_path: Path) -> None:
    from federation.plan import check_federation_config

    check_federation_config(compose_run(overrides, tmp_path).federation)


@pytest.mark.parametrize("privacy", ["dp", "secagg"])
def test_privacy_off_flower_is_refused(tmp_path, privacy):
    """federation.privacy=dp|secagg under the sequential or Ray executor ran with no privacy, exit 0."""
    for executor in ([], ["federation/executor=ray"]):
        with pytest.raises(ConfigError, match=f"federation.privacy={privacy}: privacy is a Flower-executor option"):
            _check([*DIGITS, *executor, f"federation.privacy={privacy}"], tmp_path)


def test_unknown_privacy_is_refused_with_any_executor(tmp_path):
    for executor in ([], ["federation/executor=flower"]):
        with pytest.raises(ConfigError, match="federation.privacy=bogus: expected none, dp or secagg"):
            _check([*DIGITS, *executor, "federation.privacy=bogus"], tmp_path)
    _check([*DIGITS, "federation.privacy=none"], tmp_path)  # none is fine anywhere
    _check([*FLOWER, "federation.privacy=dp", "federation.executor.dp.release_metrics=true"], tmp_path)  # datashare
    _check([*FLOWER, "federation.privacy=secagg"], tmp_path)  # part allocates by the sites' accuracy


def test_dp_with_batchnorm_statistics_crossing_is_refused_before_launch(tmp_path):
    """A review: LocalDpMod clips a site's whole update as one vector, and BatchNorm's running statistics moved
    far more than the weights (L2 42.5 against 0.13 after 10 steps of a U-Net, ``benchmarks/dp_bn_share.py``): at
    clipping norm 1 the weights' update was scaled by 0.024, so a DP federation with BatchNorm learnt almost nothing. Refused before any
    process starts (and by the server, for a real deployment's ServerApp); the statistics kept at the sites
    (FedBN) or a net without BatchNorm are fine."""
    from federation.transports.flower.launch import check

    base = [*FLOWER, "federation.privacy=dp", "federation.executor.launch=false",
            "federation.strategy.allow_data_transfer=true", "federation.executor.dp.release_metrics=true"]
    with pytest.raises(ConfigError) as err:
        check(compose_run(base, tmp_path))
    assert str(err.value).startswith("federation.privacy=dp: the net's BatchNorm running statistics (")
    assert "running_mean" in str(err.value) and "\n" not in str(err.value)
    check(compose_run([*base, "model.norm=group"], tmp_path))  # no BatchNorm
    fedbn = [o for o in base if "allow_data_transfer" not in o] + ["federation/strategy=fedbn"]
    check(compose_run(fedbn, tmp_path))  # the statistics stay at the sites
    with pytest.raises(ConfigError, match="federation.privacy=dp: the net's BatchNorm running statistics"):
        from federation.server import Server  # what a real deployment's ServerApp builds

        Server(compose_run(base, tmp_path), executor=SimpleNamespace(in_process=False, shutdown=lambda: None))


@pytest.mark.parametrize("override, key", [
    ("federation.executor.timeout_s=-5", "federation.executor.timeout_s=-5"),
    ("federation.executor.timeout_s=abc", "federation.executor.timeout_s=abc"),
    ("federation.executor.connect_timeout_s=0", "federation.executor.connect_timeout_s=0"),
    ("federation.executor.dp.epsilon=-1", "federation.executor.dp.epsilon=-1"),
    ("federation.executor.dp.epsilon=0", "federation.executor.dp.epsilon=0"),
    ("federation.executor.dp.delta=2", "federation.executor.dp.delta=2"),
    ("federation.executor.dp.delta=0", "federation.executor.dp.delta=0"),
    ("federation.executor.dp.clipping_norm=0", "federation.executor.dp.clipping_norm=0"),
    ("federation.executor.dp.sensitivity=-1", "federation.executor.dp.sensitivity=-1"),
    ("federation.executor.dp.clipping_norm=null", "federation.executor.dp.clipping_norm is missing"),
    ("+federation.executor.dp.epsilonn=1", "federation.executor.dp.epsilonn is no LocalDpMod setting"),
    # a review: sensitivity=0 (no noise) with clipping_norm=10 was taken; a paper review: the clipping norm itself
    # gave about 2 epsilon (two clipped updates lie up to 2 x clipping_norm apart)
    ("federation.executor.dp.sensitivity=0", "federation.executor.dp: sensitivity=0 is below 2 x clipping_norm=2"),
    ("federation.executor.dp.sensitivity=1", "federation.executor.dp: sensitivity=1 is below 2 x clipping_norm=2"),
])
def test_flower_values_are_refused_before_launch(tmp_path, override, key):
    """timeout_s=-5 failed after 44 s of launching; dp.epsilon=-1 failed on every node; delta=2 was taken."""
    with pytest.raises(ConfigError) as err:
        _check([*FLOWER, "federation.privacy=dp", override], tmp_path)
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


def test_secagg_threshold_against_the_sites_of_a_round(tmp_path):
    """reconstruction_threshold=5 with 3 sites a round: Flower's SecAgg+ halts every round; refused up front."""
    with pytest.raises(ConfigError, match="reconstruction_threshold=5: SecAgg\\+ would need 5 key shares"):
        _check([*FLOWER, "federation.privacy=secagg", "federation.executor.secagg.reconstruction_threshold=5"],
               tmp_path)
    with pytest.raises(ConfigError, match="reconstruction_threshold=4"):
        _check([*FLOWER, "federation.num_clients=6", "federation.clients_per_round=3", "federation.privacy=secagg",
                "federation.executor.secagg.reconstruction_threshold=4"], tmp_path)
    _check([*FLOWER, "federation.privacy=secagg", "federation.executor.secagg.reconstruction_threshold=3"], tmp_path)
    with pytest.raises(ConfigError, match="federation.executor.secagg: `num_shares` as an integer"):
        _check([*FLOWER, "federation.privacy=secagg", "federation.executor.secagg.num_shares=2"], tmp_path)


def test_the_rehearsal_refuses_a_bad_timeout_before_any_process(tmp_path):
    """In the CLI: one line, exit 2, and no flower/ folder (nothing was started)."""
    run = tmp_path / "run"
    res = run_in_process("experiments.run", [*FLOWER, f"hydra.run.dir={run}", f"paths.log_dir={tmp_path / 'logs'}",
                                             "federation.executor.timeout_s=-5"], ROOT)
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1].startswith("error: ConfigError: federation.executor.timeout_s=-5")
    assert "Traceback" not in res.stderr and not (run / "flower").exists()


RAY = [*DIGITS, "federation/executor=ray"]


@pytest.mark.parametrize("overrides, key", [
    ([*DIGITS, "federation.executor.timeout_s=abc"], "federation.executor.timeout_s=abc: must be a number > 0"),
    ([*DIGITS, "federation.executor.timeout_s=-5"], "federation.executor.timeout_s=-5: must be a number > 0"),
    ([*DIGITS, "federation.executor.timeout_s=0"], "federation.executor.timeout_s=0: must be a number > 0"),
    ([*DIGITS, "+federation.executor.num_workers=2"], "federation.executor.num_workers is no setting of "
                                                      "SequentialExecutor"),
    ([*RAY, "federation.executor.timeout_s=-5"], "federation.executor.timeout_s=-5: must be a number > 0"),
    ([*RAY, "federation.executor.num_workers=0"], "federation.executor.num_workers=0: must be an integer >= 1"),
    ([*RAY, "federation.executor.num_workers=1.5"], "federation.executor.num_workers=1.5: must be an integer"),
    ([*RAY, "federation.executor.cpus_per_client=-1"], "federation.executor.cpus_per_client=-1: must be a number"),
    ([*RAY, "federation.executor.gpus_per_client=abc"], "federation.executor.gpus_per_client=abc: must be a number"),
    ([*RAY, "federation.executor.gpu_resource=''"], "federation.executor.gpu_resource=: must be the name of"),
    ([*RAY, "federation.executor.local_resources=5"], "federation.executor.local_resources=5: must be a mapping"),
    ([*RAY, "federation.executor.local_resources={fake_gpu: -1}"], "federation.executor.local_resources.fake_gpu=-1"),
    ([*RAY, "federation.executor.ship_code=maybe"], "federation.executor.ship_code=maybe: must be true or false"),
    ([*RAY, "+federation.executor.num_worker=3"], "federation.executor.num_worker is no setting of RayExecutor "
                                                 "(did you mean federation.executor.num_workers?)"),
], ids=["seq_timeout_abc", "seq_timeout_negative", "seq_timeout_zero", "seq_unknown_key", "ray_timeout_negative",
        "ray_no_workers", "ray_float_workers", "ray_cpus", "ray_gpus", "ray_gpu_resource", "ray_local_resources",
        "ray_local_amount", "ray_ship_code", "ray_key_typo"])
def test_every_executors_values_are_refused_before_any_round(tmp_path, overrides, key):
    """A walkthrough: only Flower's timeout_s was checked; sequential timeout_s=abc and Ray's numbers ended in
    Hydra's traceback from the constructor, and timeout_s=-5 trained every client before failing the round."""
    with pytest.raises(ConfigError) as err:
        _check(overrides, tmp_path)
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


def test_the_shipped_executor_values_pass(tmp_path):
    for overrides in (DIGITS, RAY, [*RAY, "federation.executor.timeout_s=30", "federation.executor.gpus_per_client=0.5",
                                    "federation.executor.local_resources={fake_gpu: 1}", "federation.executor.ship_code=true",
                                    "federation.executor.gpus_per_client=null"],
                      [*DIGITS, "federation.executor.timeout_s=2.5"], [*FLOWER, "federation.executor.timeout_s=60"]):
        _check(overrides, tmp_path)


@pytest.mark.parametrize("address", ["127.0.0.1", "nohost:abc", ":6379", "host:99999", "http://h:1"])
def test_a_malformed_ray_address_is_one_line(tmp_path, address):
    with pytest.raises(FederationError, match=f"federation.executor.address={address}: expected <head host>:<port>"):
        _check([*DIGITS, "federation/executor=ray", f"federation.executor.address='{address}'"], tmp_path)
    for good in ("auto", "10.0.0.5:6379", "ray://10.0.0.5:10001", "null"):
        _check([*DIGITS, "federation/executor=ray", f"federation.executor.address={good}"], tmp_path)


def test_ray_init_failure_names_the_address():
    """ray.init(address=...) raising (no cluster for ``auto``) is one FederationError naming the address."""
    from federation.transports.ray_cluster import connect as _connect

    calls = []

    def init(**kw):
        raise ConnectionError("Could not find any running Ray instance.\nmore")

    fake = SimpleNamespace(init=init, shutdown=lambda: calls.append("shutdown"))
    with pytest.raises(FederationError, match="federation.executor.address=auto: no Ray cluster runs on this machine"):
        _connect(fake, "auto", {"address": "auto"})
    with pytest.raises(FederationError, match=r"address=10.0.0.5:6379: could not join that Ray cluster \(RuntimeError: x"):
        _connect(SimpleNamespace(init=lambda **kw: (_ for _ in ()).throw(RuntimeError("x")), shutdown=lambda: None),
                 "10.0.0.5:6379", {})
    assert calls == ["shutdown"]


@pytest.mark.skipif(Path(tempfile.gettempdir(), "ray", "ray_current_cluster").exists(),
                    reason="a Ray cluster may run on this machine: address=auto would join it")
def test_ray_auto_without_a_cluster(monkeypatch, tmp_path):
    pytest.importorskip("ray")
    import ray

    from federation.transports.ray import RayExecutor

    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # Ray looks for the address of a running cluster in <tmp>/ray/ray_current_cluster: a Ray test of another worker
    # wrote it there meanwhile, and address=auto waited for minutes on that cluster's GCS (a local run, once)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    with pytest.raises(FederationError, match="federation.executor.address=auto: no Ray cluster"):
        RayExecutor(num_workers=1, gpus_per_client=0, address="auto")
    assert not ray.is_initialized()


def test_server_app_missing_cfg_path_is_one_error(tmp_path):
    """A cfg-path that does not exist: one ConfigError, no result.json written into a folder that does not exist
    (it gave two chained tracebacks)."""
    from federation.transports.flower.server_app import load_run_config, main

    context = SimpleNamespace(run_config={"cfg-path": str(tmp_path / "nonexistent" / "config.yaml")})
    with pytest.raises(ConfigError, match="nonexistent/config.yaml: no such file") as err:
        main(None, context)
    assert err.value.__context__ is None and not (tmp_path / "nonexistent").exists()
    bad = tmp_path / "config.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not a YAML config"):
        main(None, SimpleNamespace(run_config={"cfg-path": str(bad)}))
    assert json.loads((tmp_path / "result.json").read_text())["ok"] is False  # its folder exists: the launcher reads it
    with pytest.raises(ConfigError, match="cfg-path is empty"):
        load_run_config("")


class _AllFail:
    in_process = True

    def map(self, fn, jobs, on_done=None):
        return [], {j.client_id: "boom" for j in jobs}

    def shutdown(self):
        pass


def test_no_round_completed_message_and_min_clients_cap(tmp_path, caplog):
    """min_clients above the clients a round samples is capped with a warning at start; a first round with too
    few reports says no round completed (it read "the global model of round 0 is kept in nowhere")."""
    from federation.server import Server

    cfg = compose_run([*DIGITS, "federation.clients_per_round=1", "federation.min_clients=2"], tmp_path)
    with caplog.at_level(logging.WARNING, logger="federation.server"):
        server = Server(cfg, _AllFail())
    assert "min_clients is capped to the 1 clients sampled per round" in caplog.text
    with pytest.raises(FederationError) as err:
        server.run_round(0)
    assert "nowhere" not in str(err.value) and "no round completed, so no global model was saved" in str(err.value)


def test_a_server_that_fails_to_set_up_starts_no_executor(tmp_path, monkeypatch):
    """A review: the executor was built before the loggers and the evaluation trainer, so a bad logger setting
    left a local Ray instance running (run_federation's ``finally`` is only reached once the server exists)."""
    import federation.server

    built = []
    monkeypatch.setattr(federation.server, "instantiate", lambda cfg, *a, **k: built.append(cfg))
    cfg = compose_run([*DIGITS, "federation/executor=ray", "+logger.csv.bogus=1"], tmp_path)
    with pytest.raises(Exception, match="bogus"):
        federation.server.Server(cfg)
    assert built == []


def test_the_rehearsal_names_its_nodes_after_the_sites_with_num_clients_set(tmp_path):
    """A review: the launcher tested the partition's ``_target_`` for "by_site", which ``by_site.yaml``'s
    ``federation.core.partition.by_group`` does not contain, so with ``num_clients`` set it started nodes "0"
    and "1" for sites the server calls by name, and round 1 waited for them until ``connect_timeout_s``."""
    from federation.transports.flower.launch import _client_ids

    cfg = compose_run(["+exp=fed_pancreas", "federation.num_clients=2", "data.batch_size=2"], tmp_path)
    ids = _client_ids(cfg)
    assert ids == _client_ids(compose_run(["+exp=fed_pancreas"], tmp_path)) and ids != ["0", "1"], ids


def test_a_dp_rehearsal_gives_each_node_the_dp_values(tmp_path):
    """Found by a review: nodes started with ``privacy=dp`` require their own four ``dp-*`` values, and the local
    rehearsal gave them none, so every DP rehearsal failed in round 1."""
    from federation.transports.flower.commands import rehearsal_node_config

    dp = {"clipping_norm": 1.0, "sensitivity": 2.0, "epsilon": 100.0, "delta": 1e-5}  # the shipped values
    line = rehearsal_node_config("site_a", tmp_path, "dp", dp)
    assert line.startswith(f'site="site_a" partition="derive" store="{tmp_path}" privacy="dp" ')
    assert "dp-clipping-norm=1.0 dp-sensitivity=2.0 dp-epsilon=100.0 dp-delta=1e-05" in line
    assert "dp-" not in rehearsal_node_config("site_a", tmp_path, "none", dp)


def test_matrix_choices_are_refused_before_any_round(tmp_path):
    """``federation.matrix.select`` / ``fl_local`` were read only when the matrix ran, after every round had
    trained: a misspelt value is one line before the federation starts (it is the matrix's; not checked without it)."""
    from federation.errors import FederationError

    on = [*DIGITS, "federation.evaluation_matrix=true"]
    for key, value in (("select", "bestest"), ("fl_local", "best"), ("select", "last")):
        if value == "last":
            _check([*on, f"federation.matrix.{key}={value}"], tmp_path)  # a valid choice passes
            continue
        with pytest.raises(FederationError, match=rf"^federation.matrix.{key}={value}: expected "):
            _check([*on, f"federation.matrix.{key}={value}"], tmp_path)
    _check([*DIGITS, "federation.matrix.select=bestest"], tmp_path)  # no matrix: nothing reads it


def test_data_sharing_without_a_pool_is_refused_and_a_pool_nobody_sends_is_warned_about(tmp_path, caplog):
    """A review: ``federation.shared_fraction=0`` under data sharing (mode=part) ran as plain FedAvg without a word
    (every allocation 0); a pool under FedAvg took 10 % of the clients' training data silently."""
    for mode in ("part", "all"):
        with pytest.raises(FederationError, match=rf"shared_fraction=0 with data sharing \(mode={mode}\).*plain FedAvg"):
            _check([*DIGITS, "federation.shared_fraction=0.0", f"federation.strategy.mode={mode}"], tmp_path)
    _check([*DIGITS, "federation.shared_fraction=0.0", "federation.strategy.mode=none"], tmp_path)
    with caplog.at_level(logging.WARNING, logger="federation.plan"):
        _check([*DIGITS, "federation/strategy=fedavg", "+federation.shared_fraction=0.1"], tmp_path)
    assert "carves a shared pool off the clients' training data that FedAvg never sends" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="federation.plan"):
        _check(DIGITS, tmp_path)
    assert "carves a shared pool" not in caplog.text


@pytest.mark.parametrize("overrides", [
    ["+exp=fed_lits_dnet", "logger=many_loggers", "debug=profiler"],
    ["+exp=fed_kits_hlfd"],
    ["+exp=fed_pancreas_3d", "callbacks=segmentation"],
    ["+exp=fed_digits_datashare", "federation/executor=ray"],
], ids=["lits_loggers_profiler", "kits_hlfd", "pancreas_3d", "digits_ray"])
def test_the_server_apps_config_file_is_data_what_the_launcher_writes_loads(tmp_path, overrides):
    """The ServerApp builds what its ``cfg-path`` file names: every config the launcher writes must pass the check
    that refuses crafted ones (below)."""
    from federation.transports.flower.launch import write_run_config
    from federation.transports.flower.server_app import load_run_config

    cfg = compose_run([*overrides, "federation/executor=flower"] if "ray" not in overrides[-1] else overrides,
                      tmp_path)
    assert OmegaConf_select(load_run_config(str(write_run_config(cfg, tmp_path))), "federation.strategy._target_")


def OmegaConf_select(cfg, key):
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key)


def test_a_crafted_server_app_config_builds_nothing_and_an_alias_bomb_is_refused(tmp_path):
    """A trust review: a ``cfg-path`` file whose strategy was ``subprocess.Popen`` (shell=true) ran a command on the
    server (the strategy was built unchecked), and a 358-byte YAML of nested aliases kept OmegaConf.load busy for
    minutes. Both are one line now, before anything is built."""
    import yaml

    from federation.transports.flower.launch import write_run_config
    from federation.transports.flower.server_app import load_run_config

    path = write_run_config(compose_run([*FLOWER], tmp_path), tmp_path)
    plain = yaml.safe_load(path.read_text())
    pwned = tmp_path / "PWNED"
    plain["federation"]["strategy"] = {"_target_": "subprocess.Popen", "args": f"touch {pwned}", "shell": True}
    path.write_text(yaml.safe_dump(plain))
    with pytest.raises(ConfigError, match=r"_target_ 'subprocess.Popen' refused: the ServerApp's config may only"):
        load_run_config(str(path))
    plain["federation"]["strategy"] = {"_target_": "engine.artifacts.atomic_write_text", "path": str(pwned)}
    path.write_text(yaml.safe_dump(plain))
    with pytest.raises(ConfigError, match="atomic_write_text' refused"):
        load_run_config(str(path))
    plain["federation"]["strategy"] = {"_target_": "federation.core.strategies.FedAvg", "x": "${oc.env:HOME}"}
    path.write_text(yaml.safe_dump(plain))
    with pytest.raises(ConfigError, match="interpolation"):
        load_run_config(str(path))
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcde", "bcdef"))
    path.write_text(bomb + "federation: {rounds: 1}\n")
    with pytest.raises(ConfigError, match="not a YAML config"):
        load_run_config(str(path))
    assert not pwned.exists()


def test_build_strategy_builds_only_strategies():
    """A trust review: ``build_strategy`` instantiated whatever class its ``_target_`` named."""
    from federation.runner import build_strategy

    with pytest.raises(ConfigError, match="is not a federation.core.strategies.Strategy"):
        build_strategy({"_target_": "collections.OrderedDict"})


@pytest.mark.parametrize("group, kind", [(None, "sequential"), ("sequential", "sequential"), ("ray", "ray"),
                                         ("flower", "flower")])
def test_executor_kind_names_each_executor_group(tmp_path, group, kind):
    """The one registry of the executors' paths (``federation.transports.EXECUTORS``) knows every executor config the
    project ships; an executor of the user's own is none of them (the checks for Ray's and Flower's values skip it)."""
    from federation.transports import EXECUTORS, executor_kind
    from hydra.utils import get_class

    fed = compose_run([*DIGITS, *([f"federation/executor={group}"] if group else [])], tmp_path).federation
    assert executor_kind(fed) == kind
    assert get_class(EXECUTORS[kind]).__name__.endswith("Executor")
    fed.executor = {"_target_": "mypackage.RayExecutor"}
    assert executor_kind(fed) is None


def test_flower_executor_values_a_user_sets_by_hand_are_checked_first(tmp_path):
    """A walkthrough: ``federation.executor.privacy=dpp`` started the SuperLink and every SuperNode before a cut-off
    error line, and ``launch=maybe`` ran a rehearsal (so would ``launch=no``)."""
    with pytest.raises(ConfigError, match=r"^federation.executor.privacy=dpp differs from federation.privacy=none"):
        _check([*FLOWER, "federation.executor.privacy=dpp"], tmp_path)
    with pytest.raises(ConfigError, match=r"^federation.executor.privacy=none differs from federation.privacy=dp"):
        _check([*FLOWER, "federation.privacy=dp", "federation.executor.privacy=none"], tmp_path)
    for key, value in (("launch", "maybe"), ("stream", "2"), ("node_auth", "no")):
        with pytest.raises(ConfigError, match=rf"^federation.executor.{key}={value}: must be true or false"):
            _check([*FLOWER, f"federation.executor.{key}={value}"], tmp_path)
    _check([*FLOWER, "federation.privacy=secagg", "federation.executor.launch=false"], tmp_path)  # as shipped


def test_run_federation_called_directly_refuses_flower_before_any_set_up(tmp_path):
    """``experiments.run.dispatch`` starts a Flower deployment; ``run_federation`` runs inside its ServerApp. A
    review: called directly, it built the server's data and opened a W&B run before the executor refused."""
    from federation.loop import run_federation

    cfg = compose_run(FLOWER, tmp_path)
    with pytest.raises(FederationError, match=r"^federation/executor=flower: the deployment is started by python -m "):
        run_federation(cfg)
    assert not Path(cfg.paths.output_dir).exists() or not any(Path(cfg.paths.output_dir).iterdir())
