"""Bad federation inputs through the real entry point (issue 10): one line naming the key/value, exit 2, no
Traceback, nothing half-written; switching partitioner on the command line just works; a two-job federated
sweep gives two W&B runs (each job finishes its own)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from federation.errors import FederationError
from lightning_modules.errors import ConfigError
from tests.cli import run_in_process, run_subprocess
from tests.hydra_helpers import compose_run
from tests.wandb_offline import read_run

ROOT = Path(__file__).resolve().parents[1]
BASE = ["+exp=fed_digits_datashare", "model.width=4", "federation.progress=false", "trainer.limit_train_batches=2",
        "federation.rounds=1", "federation.num_clients=4", "federation.clients_per_round=2",
        "federation.local_epochs=1", "federation.eval_clients=none"]


def _run(args: list[str], tmp: Path, logger: str = "logger=csv", as_process: bool = False
         ) -> subprocess.CompletedProcess:
    """``python -m experiments.run`` on the tiny federation: in this process (tests/cli.py) or as a real one."""
    flags = [a for a in args if a == "-m"]  # Hydra's parser takes its flags before the overrides
    argv = [*flags, *BASE, logger, f"paths.root_dir={tmp}", f"paths.log_dir={tmp / 'logs'}",
            *[a for a in args if a != "-m"]]
    return (run_subprocess if as_process else run_in_process)("experiments.run", argv, ROOT)


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    assert len(lines) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("args, needles", [
    (["federation.rounds=0"], ["federation.rounds=0"]),
    (["federation.clients_per_round=1.5"], ["federation.clients_per_round=1.5", "client count >= 1", "(0, 1]"]),
    (["federation.clients_per_round=-1"], ["federation.clients_per_round=-1", "client count >= 1"]),
    (["federation.num_clients=5000"], ["federation.num_clients=5000", "training samples"]),
    (["federation/partition=dirichlet", "federation.partition.alpha=0"], ["alpha=0"]),
    (["federation/partition=dirichlet", "federation.partition.alpha=-0.5"], ["alpha=-0.5"]),
    (["federation/partition=dirichlet", "+federation.partition.alpah=0.1"], ["federation.partition.alpah=0.1"]),
    (["federation.partition_unit=patient"], ["federation.partition_unit=patient"]),
    (["federation.client_val_fraction=1.5"], ["federation.client_val_fraction=1.5", "[0, 1)"]),
    # data sharing allocates by client validation accuracy: without a split it was a KeyError after round 1
    (["federation.client_val_fraction=0"], ["federation.client_val_fraction=0", "data sharing"]),
    # a strategy's constructor refusing a value (found by an audit: tracebacks, and FedAdam took eta=-1 and ran)
    (["federation.strategy.mode=bogus"], ["federation.strategy (DataSharing)", "'bogus'"]),
    (["federation/strategy=fedprox", "federation.strategy.mu=abc"], ["federation.strategy.mu='abc'"]),
    (["federation/strategy=fedadam", "federation.strategy.eta=-1"], ["federation.strategy.eta=-1"]),
    # a Ray cluster address where nothing listens (port 9, discard, closed on 127.0.0.1): Ray retried for ever
    (["federation/executor=ray", "federation.executor.address=127.0.0.1:9"],
     ["federation.executor.address=127.0.0.1:9", "no Ray cluster answers there"]),
    (["federation/executor=ray", "federation.executor.address=ray://127.0.0.1:9"],
     ["federation.executor.address=ray://127.0.0.1:9", "no Ray cluster answers there"]),
    # executor values: timeout_s=abc ended in Hydra's error (exit 1), -5 trained every client, then failed the round
    (["federation.executor.timeout_s=abc"], ["ConfigError: federation.executor.timeout_s=abc", "> 0 or null"]),
    (["federation.executor.timeout_s=-5"], ["ConfigError: federation.executor.timeout_s=-5", "> 0 or null"]),
    (["federation/executor=ray", "federation.executor.num_workers=0"], ["federation.executor.num_workers=0"]),
    # a walkthrough: "." for "/" put the group's name where its config goes: an AttributeError deep in a check, exit 1
    (["federation.strategy=fedprox"], ["FederationError: federation.strategy='fedprox' is a name, not a config",
                                       "federation/strategy=fedprox"]),
    # a monitor the module never logs: a whole round trained before the server said so (a session)
    (["module.monitor=val/acuc"], ["module.monitor=val/acuc: ClassificationModule logs no such key"]),
    (["federation.early_stopping.enabled=true", "federation.early_stopping.monitor=val/los"],
     ["federation.early_stopping.monitor=val/los"]),
], ids=["rounds0", "float_per_round", "negative_per_round", "too_many_clients", "alpha0", "alpha_negative", "partition_typo", "unit",
        "client_val_fraction", "no_client_val_for_sharing",
        "sharing_mode", "fedprox_mu", "fedadam_eta", "ray_address_unreachable",
        "ray_client_address_unreachable", "timeout_abc", "timeout_negative", "ray_no_workers",
        "group_name_with_a_dot", "monitor_typo", "early_stopping_monitor_typo"])
def test_bad_federation_value_is_one_line_exit_2(tmp_path, args, needles):
    run = tmp_path / "run"
    proc = _run([*args, f"hydra.run.dir={run}"], tmp_path)
    _one_line_error(proc, *needles)
    assert not (run / "rounds.csv").exists() and not (run / "metrics.json").exists()
    assert not (run / "server.pt").exists()


def test_a_gpu_resource_the_ray_cluster_lacks_is_one_line_with_failed_json(tmp_path):
    """Ray's own refusal when it starts (here: gpus_per_client on a custom resource the local instance was not
    given) is the user's to mend: one line, exit 2, failed.json, and the Ray instance stopped (it was an
    ExecutorError, a RuntimeError: Hydra's "Error executing job" and exit 1)."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process")
    run = tmp_path / "run"
    proc = _run(["federation/executor=ray", "federation.executor.gpu_resource=fake_gpu",
                 "federation.executor.gpus_per_client=1", f"hydra.run.dir={run}"], tmp_path)
    line = _one_line_error(proc, "ExecutorError: federation.executor.gpu_resource=fake_gpu", "no such resource")
    assert line.endswith(json.loads((run / "failed.json").read_text())["error"])
    assert not ray.is_initialized() and not (run / "rounds.csv").exists()


@pytest.mark.parametrize("args, needles", [
    (["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"], ["trainer.strategy=ddp", "trainer.devices=2"]),
    (["trainer.devices=2"], ["trainer.devices=2", "federation/executor=ray"]),
    (["trainer.num_nodes=2"], ["trainer.num_nodes=2"]),
], ids=["ddp", "devices", "nodes"])
def test_a_federation_on_several_processes_is_refused(tmp_path, args, needles):
    """Found by running ``trainer=ddp`` on a federation: Lightning started the whole command again as rank 1,
    which ran its own federation over the same client store (a KeyError, and a rank left running)."""
    run = tmp_path / "run"
    _one_line_error(_run([*args, f"hydra.run.dir={run}"], tmp_path), *needles)
    assert not (run / "server.pt").exists() and not (run / "client_store").exists()


def test_a_federated_distillation_on_several_processes_is_refused(tmp_path):
    proc = run_in_process("experiments.run", ["+exp=fed_kits_hlfd", "trainer.devices=[0,1]",
                                              f"paths.root_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}"], ROOT)
    _one_line_error(proc, "trainer.devices=[0, 1]", "a federated distillation")


@pytest.mark.parametrize("devices, accelerator, one", [(1, "gpu", True), ("1", "gpu", True), ([3], "gpu", True),
                                                        ("2,", "gpu", True), ("auto", "cpu", True), ("auto", "gpu", False),
                                                        (-1, "gpu", False), ([0, 1], "gpu", False), (2, "cpu", False)])
def test_one_device(devices, accelerator, one):
    from engine.one_process import one_device

    assert one_device(devices, accelerator) is one


@pytest.mark.parametrize("kind", ["truncated", "wrong_types"])
def test_corrupt_server_pt_on_resume_is_one_line(tmp_path, kind):
    """Found by audits: a crafted ``server.pt`` whose entries have the wrong types was a TypeError; and a
    resume that failed on its ``server.pt`` rewrote the finished run's ``config.yaml`` and ``.hydra/`` and
    added ``failed.json`` beside its ``metrics.json``. Now one line before anything is written."""
    import torch

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    if kind == "truncated":
        (run / "server.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    else:
        torch.save({"round": "x", "global": {"w": torch.zeros(1)}, "strategy": 5, "history": 5, "best": {},
                    "store_index": [], "client_ids": ["0"], "rng": {}}, run / "server.pt")
    before = {name: name.encode() for name in ("config.yaml", "metrics.json", ".hydra/overrides.yaml")}
    for name, text in before.items():
        (run / name).write_bytes(text)
    server = (run / "server.pt").read_bytes()
    proc = _run(["resume=true", f"hydra.run.dir={run}", "federation.rounds=6"], tmp_path)
    _one_line_error(proc, str(run / "server.pt"))
    assert (run / "server.pt").read_bytes() == server  # left as it was, and the finished run with it
    assert {name: (run / name).read_bytes() for name in before} == before
    assert not (run / "failed.json").exists()


def test_switching_partitioner_from_the_command_line_just_works(tmp_path):
    run = tmp_path / "run"  # the exp's pathological partition has k; dirichlet does not take it
    proc = _run(["federation/partition=dirichlet", f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Partition: dirichlet" in (run / "partition.md").read_text()
    assert len((run / "rounds.csv").read_text().splitlines()) == 2  # header + the one round


def test_two_job_federated_sweep_gives_two_wandb_runs(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _run(["-m", "federation.strategy.mode=none,all", f"hydra.sweep.dir={sweep}"], tmp_path, logger="logger=default",
                as_process=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "metrics.json").is_file())
    assert len(jobs) == 2
    ids = []
    for job in jobs:
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, f"{job}: {runs}"  # its own W&B run, not the first job's
        run_id = (job / "wandb_id.txt").read_text().strip()
        assert runs[0].name.endswith(run_id)
        ids.append(run_id)
    assert ids[0] != ids[1]
    # found by a walkthrough: every job's run had the same name (the job's argv held no sweep any more)
    names = sorted(read_run(job)["name"] for job in jobs)
    assert [n.rsplit("-", 1)[-1] for n in names] == ["federation.strategy.mode=all", "federation.strategy.mode=none"]
    assert all(f"federation.strategy.mode={m}" in read_run(job)["tags"] for job, m in zip(jobs, ("none", "all")))


def test_crafted_or_corrupt_global_best_is_one_federation_error(tmp_path):
    """Found by an audit: ``global_best.pt`` (read back for the best round's test) was a bare ``torch.load``:
    a crafted file ran nothing (``weights_only``) but ended in a traceback; now one line naming it."""
    import os

    import torch

    from federation.errors import FederationError
    from federation.server_state import load_global_weights

    class Marker:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "pwned"),))

    torch.save({"w": Marker()}, tmp_path / "crafted.pt")
    (tmp_path / "text.pt").write_text("not a model")
    torch.save([1, 2], tmp_path / "list.pt")
    for name in ("crafted.pt", "text.pt", "list.pt"):
        with pytest.raises(FederationError, match=name):
            load_global_weights(tmp_path / name)
    assert not (tmp_path / "pwned").exists()
    torch.save({"w": torch.ones(2)}, tmp_path / "good.pt")
    assert torch.equal(load_global_weights(tmp_path / "good.pt")["w"], torch.ones(2))


@pytest.mark.parametrize("kind", ["truncated", "crafted_pickle"])
def test_corrupt_client_store_on_resume_is_one_line(tmp_path, kind):
    """Found by a security audit: a truncated or crafted ``client_store/<site>.pt`` on resume was a traceback
    from ``torch.load``; it is read through the same one-line loader as every checkpoint, and nothing runs."""
    import os

    import torch

    run = tmp_path / "run"
    first = _run(["federation/strategy=fedbn", f"hydra.run.dir={run}"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    stored = sorted((run / "client_store").glob("*.pt"))
    assert stored, "FedBN keeps each site's BN statistics in its store"
    marker = tmp_path / "pwned"

    class MakeMarker:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    if kind == "truncated":
        stored[0].write_bytes(stored[0].read_bytes()[:100])
    else:
        torch.save({"local_state": MakeMarker()}, stored[0])
    proc = _run(["federation/strategy=fedbn", "resume=true", f"hydra.run.dir={run}", "federation.rounds=2"], tmp_path)
    line = _one_line_error(proc, str(stored[0]))
    assert not marker.exists() and "weights_only" not in line


def test_a_sweep_with_a_failed_job_runs_the_others_and_exits_2(tmp_path):
    """Found by a walkthrough: a sweep whose job failed on bad input exited 0. The other jobs still run; at the
    end one line names the failed jobs and the exit status is 2."""
    sweep = tmp_path / "sweep"
    proc = _run(["-m", "federation.rounds=0,1", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert (sweep / jobs[0] / "failed.json").is_file() and (sweep / jobs[1] / "metrics.json").is_file()
    assert proc.stderr.strip().splitlines()[-1] == (f"error: 1 of 2 sweep jobs failed (each says why in its "
                                                    f"failed.json and above): {jobs[0]}")


def test_sweep_job_folders_name_the_values_the_sweep_varies(monkeypatch):
    """A walkthrough could not tell ``0_resnet18_student_s0`` from ``1_resnet18_student_s0`` in a
    ``distill=none,hlfd`` sweep: the job folder now ends with the swept values (seed and model already in it),
    as text a Hydra override takes unquoted."""
    import json
    from types import SimpleNamespace

    from hydra.core import hydra_config

    from engine.run_overrides import COMMAND_ENV, swept_suffix

    job = SimpleNamespace(overrides=SimpleNamespace(task=["+exp=kits_hlfd", "distill=hlfd", "seed=1", "model=unet",
                                                          "data.sites/a=x y"]), sweeper={"params": {}})
    monkeypatch.setattr(hydra_config.HydraConfig, "get", staticmethod(lambda: job))
    monkeypatch.setenv(COMMAND_ENV, json.dumps(["-m", "+exp=kits_hlfd", "distill=none,hlfd", "seed=0,1",
                                                "model=unet,dnet", "data.sites/a=x y,z"]))
    assert swept_suffix() == "_distill-hlfd_a-x-y"
    # found by a walkthrough: '=' in the folder name made `predict ckpt=<job>/...` and `resume=<job>` a Hydra
    # parse error; the suffix is plain override text now
    from hydra.core.override_parser.overrides_parser import OverridesParser

    OverridesParser.create().parse_override(f"ckpt=/x/0_unet_s1{swept_suffix()}/checkpoints/best.ckpt")
    monkeypatch.setenv(COMMAND_ENV, json.dumps(["+exp=kits_hlfd"]))
    assert swept_suffix() == ""


def test_a_federation_of_the_distillation_module_without_a_teacher_is_refused(tmp_path):
    """Found by a review: a federation of ``module=distillation`` with ``distill.teacher.ckpt=null`` ran to the end,
    every client distilling from a randomly initialised teacher (a federation trains no teacher first, as a
    centralised distillation does); it is one line now, before any data is read."""
    argv = ["+exp=kits_hlfd", "+federation=default", "federation.rounds=1", "federation.num_clients=2",
            "logger=csv", f"paths.root_dir={tmp_path}", f"paths.log_dir={tmp_path / 'logs'}"]
    line = _one_line_error(run_in_process("experiments.run", argv, ROOT), "distill.teacher.ckpt=null")
    assert "fed_kits_hlfd" in line


def test_a_metric_no_client_reports_stops_the_round_in_one_line(tmp_path):
    """A review: data sharing (mode=part) allocating by a metric no client sent (a name they do not report, or DP
    sites withholding theirs) was the strategy's KeyError, a traceback after a full round; one line now."""
    run = tmp_path / "run"
    proc = _run(["federation.strategy.metric=balanced_acc", f"hydra.run.dir={run}"], tmp_path)
    _one_line_error(proc, "FederationError: round 1: no client reported the 'balanced_acc' metric",
                    "federation.executor.dp.release_metrics")
    assert not (run / "metrics.json").exists()


def _check(overrides: list[str], tmp_path: Path) -> None:
    """``federation.*`` checked as the server checks it first, on the config the command line composes."""
    from federation.plan import check_federation_config

    check_federation_config(compose_run(overrides, tmp_path).federation)


@pytest.mark.parametrize("given, said", [
    ("federation.strategy=fedprox", "federation.strategy='fedprox' is a name, not a config: choose the group with "
                                    "federation/strategy=fedprox"),
    ("federation.partition=iid", "federation.partition='iid' is a name, not a config: choose the group with "
                                 "federation/partition=iid"),
    ("federation.executor=ray", "federation.executor='ray' is a name, not a config: choose the group with "
                                "federation/executor=ray"),
    ("federation.strategy=fedprx", "federation/strategy=fedprx (federation/strategy is one of datashare,"),
    ("federation.strategy=null", "federation.strategy=null is no config: choose one with federation/strategy=<name>"),
    ("federation.partition=null", "federation.partition=null is no config"),
    ("federation.early_stopping=true", "federation.early_stopping=true must hold settings"),
    ("federation.matrix=best", "federation.matrix='best' must hold settings"),
    ("federation.client_module=abc", "federation.client_module='abc' must hold settings"),
], ids=["strategy", "partition", "executor", "unknown_name", "strategy_null", "partition_null", "early_stopping",
        "matrix", "client_module"])
def test_a_config_group_given_with_a_dot_is_one_line(tmp_path, given, said):
    """A walkthrough: ``federation.strategy=fedprox`` (``.`` for ``/``) was an AttributeError, ``executor=ray`` and
    ``partition=iid`` a TypeError, exit 1; each node that holds settings is checked before anything is built."""
    with pytest.raises(FederationError) as err:
        _check(["+exp=fed_lits_dnet", given], tmp_path)
    assert said in str(err.value) and "\n" not in str(err.value)
    _check(["+exp=fed_lits_dnet", "federation.executor=null"], tmp_path)  # null: the sequential executor


def test_a_config_group_given_with_a_dot_to_a_federated_distillation_is_refused_before_stage_1(tmp_path):
    from federation.fed_distill_config import check_config

    with pytest.raises(FederationError, match="federation.strategy='fedbn' is a name, not a config"):
        check_config(compose_run(["+exp=fed_kits_hlfd", "federation.strategy=fedbn"], tmp_path))


@pytest.mark.parametrize("given", [["+federation/strategy=fedprox"], ["+federation.rounds=3"]])
def test_a_federation_group_on_a_centralised_experiment_says_it_is_no_federation(tmp_path, given):
    """A walkthrough: ``+exp=lits_dnet +federation/strategy=fedprox`` said ``federation.rounds=None: must be an
    integer >= 1``; the line says the experiment is no federation and names the federated ones."""
    with pytest.raises(FederationError) as err:
        _check(["+exp=lits_dnet", *given], tmp_path)
    line = str(err.value)
    key = given[0].lstrip("+").split("=")[0].replace("/", ".")
    assert line.startswith(f"+exp=lits_dnet is not a federation ({key} given): federation/* groups"), line
    assert "+exp=fed_lits_dnet" in line and "+exp=segviz_fedbn" in line and "+exp=lits_dnet," not in line
    _check(["+exp=kits_hlfd", "+federation=default"], tmp_path)  # a centralised experiment made one: a federation


def test_fedbn_without_batchnorm_names_the_model_and_its_norm(tmp_path):
    """A walkthrough: ``federation/strategy=fedbn model.norm=group`` said only "FedBN needs a model with BatchNorm
    layers", not which model (the Hydra choice, else the net's class) had none."""
    from engine.builders import build_module
    from federation.runner import build_strategy, model_named

    cfg = compose_run(["+exp=fed_digits_datashare", "federation/strategy=fedbn", "model.norm=group", "model.width=4"],
                      tmp_path)
    net = build_module(cfg).net
    with pytest.raises(ConfigError, match=r"FedBN needs a model with BatchNorm layers.*, but model=small_cnn "
                                          r"\(model.norm=group\) has no BatchNorm layer$"):
        build_strategy(cfg.federation.strategy, net, model_named(cfg, net), pool=None, seed=0)
    with pytest.raises(ConfigError, match=rf"but the net {type(net).__name__} has no BatchNorm layer$"):
        build_strategy(cfg.federation.strategy, net)  # a caller that names no model: the net's class


def test_a_matrix_metric_the_module_never_logs_is_one_line_before_any_round(tmp_path):
    """A walkthrough: ``federation.matrix_metric=dice_tumor`` on liver-only sites trained every round and every
    matrix row, then wrote a table of dashes and exited 0; now one line listing the module's test keys."""
    run = tmp_path / "run"
    proc = _run(["federation.evaluation_matrix=true", "federation.matrix_metric=acuc", f"hydra.run.dir={run}"],
                tmp_path)
    line = _one_line_error(proc, "FederationError: federation.matrix_metric=acuc", "logs no test/acuc", "acc")
    assert "loss" in line
    assert not any((run / f).exists() for f in ("rounds.csv", "metrics.json", "evaluation_matrix.md", "server.pt"))


@pytest.mark.parametrize("surface", [True, False])
def test_test_metric_keys_are_the_keys_a_segmentation_test_logs(surface):
    """``SegmentationModule.test_metric_keys`` (what ``federation.matrix_metric`` is checked against) is exactly
    what its test epoch logs, with and without surface metrics, so no valid metric is refused."""
    from federation.plan import check_matrix_metric
    from lightning_modules.losses.hybrid import HybridCEDiceLoss
    from lightning_modules.segmentation import SegmentationModule
    from tests.test_padded_eval import Threshold, _slices
    from datamodules.collate import PadCollate

    module = SegmentationModule(Threshold(), HybridCEDiceLoss(), num_classes=2, surface_metrics=surface)
    logged = set()
    module.log = lambda key, *a, **k: logged.add(key)
    for b in [PadCollate(4)([s]) for s in _slices()]:
        module._evaluate(b, "test", module.test_cases)
    module.on_test_epoch_end()
    logged.add("test/loss")  # logged by the test step, which this bypasses
    assert logged == set(module.test_metric_keys())
    check_matrix_metric({"matrix_metric": "rvd_class_1"}, module)
    with pytest.raises(FederationError, match="matrix_metric=dice_tumor: SegmentationModule logs no test/dice_tumor"):
        check_matrix_metric({"matrix_metric": "dice_tumor"}, module)


@pytest.mark.parametrize("sites, needles", [
    ([], ["FederationError: federation.partition.sites is not set", "name each site once"]),
    (["federation.partition.sites=[]"], ["federation.partition.sites=[]", "name each site once"]),
    (["federation.partition.sites=[hospital_a,hospital_a]"],
     ["federation.partition.sites=['hospital_a', 'hospital_a']", "name each site once"]),
    (["federation.partition.sites=[a,b]", "federation.num_clients=3"],
     ["federation.num_clients=3 but federation.partition.sites names 2 sites"]),
], ids=["missing", "empty", "twice", "num_clients"])
def test_bad_remote_sites_are_one_line_before_the_deployment_config_is_written(tmp_path, sites, needles):
    """A walkthrough: ``launch=false`` with no ``federation.partition.sites``, ``[]`` or a site named twice wrote
    ``flower/config.yaml`` and printed the ``flwr run`` command (exit 0); the ServerApp refused it only after
    ``flwr run`` on the server host."""
    pytest.importorskip("flwr")
    run = tmp_path / "run"
    proc = _run(["federation/partition=remote_sites", "federation.num_clients=null",
                 "federation.clients_per_round=null", "federation/strategy=fedavg", "federation/executor=flower",
                 "federation.executor.launch=false", *sites, f"hydra.run.dir={run}"], tmp_path)
    _one_line_error(proc, *needles)
    assert not (run / "flower" / "config.yaml").exists()
