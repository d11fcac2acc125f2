"""Federated distillation (issue 15, federation/fed_distill.py): +exp=fed_kits_hlfd end to end on tiny phantoms,
stage resumption, the privacy boundary of stage 2 (a site's config holds only its own data; a federated
student's updates hold only the student), and config errors."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import nibabel as nib
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from federation import fed_distill, fed_distill_config, fed_distill_weights
from engine.builders import ConfigError
from hydra_helpers import compose_run

SITES = ("site_a", "site_b")
TINY = ["~data.sites.site_c", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2",
        "logger=csv", "federation.rounds=1", "module.example_size=32", "callbacks=default",
        *[f"data.sites.{s}.{k}" for s in SITES for k in ("image_size=32", "synthetic.n_cases=5", "augment=false")]]


@pytest.fixture(scope="module")
def tiny_run(module_tmp):
    """The tiny run, with a spy on what the server receives: {federation run dir: [update weight keys]}."""
    from experiments.run import dispatch
    from federation import server

    tmp = module_tmp("fed_distill")
    cfg = compose_run(["+exp=fed_kits_hlfd", *TINY], tmp)
    received: dict[str, list[set[str]]] = {}
    check, run_round = server.assert_no_data, server.Server.run_round

    def spy_round(self, *a, **k):
        received.setdefault(Path(self.out).name, [])
        spy_round.current = Path(self.out).name
        return run_round(self, *a, **k)

    def spy_check(update, schema):
        received[spy_round.current].append(set(update.weights))
        return check(update, schema)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(server.Server, "run_round", spy_round)
        mp.setattr(server, "assert_no_data", spy_check)
        metrics = dispatch(cfg)
    return cfg, metrics, tmp / "run", received


def test_end_to_end_table_and_teacher_flow(tiny_run):
    cfg, metrics, run, _ = tiny_run
    fed_teacher = run / "teacher" / "global_best.pt"
    assert fed_teacher.is_file() and (run / "teacher" / "metrics.json").is_file()
    assert metrics["fed_distill/teacher_weights"] == str(fed_teacher)
    for site in SITES:
        hlfd_fed = json.loads((run / "sites" / site / "hlfd_fed" / "metrics.json").read_text())
        hlfd_local = json.loads((run / "sites" / site / "hlfd_local" / "metrics.json").read_text())
        assert hlfd_fed["distill/teacher_ckpt"] == str(fed_teacher)  # the only thing a site receives
        assert hlfd_local["distill/teacher_ckpt"] == str(run / "sites" / site / "teacher_local" / "teacher.pt")
        assert (run / "sites" / site / "none" / "student.pt").is_file()
        for arm in fed_distill_config.LOCAL_ARMS:  # a finished arm keeps its tested weights, not its resume state
            ckpts = run / "sites" / site / arm / "checkpoints"
            assert (ckpts / "best.ckpt").is_file() and not (ckpts / "last.ckpt").exists(), arm
    rows = list(csv.DictReader((run / "fed_distill.csv").open()))
    assert [(r["site"], r["model"]) for r in rows] == [
        (s, m) for s in SITES for m in ("none", "teacher_local", "hlfd_local", "hlfd_fed", "fed_none", "fed_hlfd",
                                        "teacher_fed")]
    for r in rows:
        assert 0.0 <= float(r["dice_own"]) <= 1.0 and float(r["ms_per_volume"]) > 0
        assert r["dice_own"] == r[f"dice_{r['site']}"]
    params = {r["model"]: int(r["parameters"]) for r in rows}
    assert params["teacher_fed"] == params["teacher_local"] != params["none"] == params["hlfd_fed"] \
        == params["fed_none"] == params["fed_hlfd"]
    table = (run / "fed_distill.md").read_text()
    assert (run / "fed_distill.png").stat().st_size > 0 and "federated teacher" in table
    assert "federated student + HLFD" in table and "federated student (no KD)" in table
    summary = json.loads((run / "metrics.json").read_text())
    assert "fed_distill/hlfd_fed/dice_other" in summary and "fed_distill/fed_hlfd/ms_per_volume" in summary
    for arm in ("fed_none", "fed_hlfd"):  # each federated student is a federation of its own, on every site
        fed = json.loads((run / arm / "metrics.json").read_text())
        assert fed["fed/num_clients"] == len(SITES) and (run / arm / "global_final.pt").is_file()


def test_federated_student_sends_only_the_student(tiny_run):
    """What the server receives from a fed_hlfd client: the student's entries, never the teacher's (nor the
    KD adapters, which stay in the client's store)."""
    import torch

    from federation.fed_distill_eval import state_net, teacher_net
    from federation.store import ClientStore

    cfg, _, run, received = tiny_run
    student_keys = set(state_net(cfg.model, run / "fed_hlfd" / "global_final.pt", "student").state_dict())
    teacher_keys = set(teacher_net(cfg, run / "teacher" / "global_final.pt").state_dict())
    assert len(received["fed_hlfd"]) == len(SITES) * int(cfg.federation.rounds)
    for keys in received["fed_hlfd"] + received["fed_none"]:
        assert keys == student_keys and not keys & teacher_keys and not any(k.startswith("teacher.") for k in keys)
    assert all(keys == teacher_keys for keys in received["teacher"])
    stored = ClientStore(run / "fed_hlfd" / "client_store").load_all("site_a")
    private = stored["private_state"]  # HLFD's adapters: kept at the site between rounds
    assert private and not set(private) & student_keys and all(isinstance(v, torch.Tensor) for v in private.values())
    assert "private_state" not in ClientStore(run / "fed_none" / "client_store").load_all("site_a")


def test_finished_stages_are_reused(tiny_run, monkeypatch):
    cfg, _, run, _ = tiny_run
    before = {p: p.stat().st_mtime_ns for p in (run / "teacher" / "global_best.pt", run / "fed_hlfd" / "global_final.pt",
                                                 run / "fed_none" / "global_final.pt")}

    def boom(*_a, **_k):
        raise AssertionError("a finished stage was run again")

    monkeypatch.setattr(fed_distill, "run_distillation", boom)
    monkeypatch.setattr(fed_distill, "train_local_teacher", boom)
    metrics = fed_distill.run_fed_distill(cfg, federate=boom)  # the federated students too: federate never runs
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert "fed_distill/none/dice_other" in metrics and "fed_distill/fed_hlfd/dice_other" in metrics
    # an interrupted student federation (server.pt, no metrics.json) continues after its last round
    assert fed_distill.student_stage_cfg(cfg, "fed_hlfd", run / "teacher" / "global_best.pt").resume is True


def test_stage_configs(tiny_run):
    cfg, _, run, _ = tiny_run
    tcfg = fed_distill.teacher_stage_cfg(cfg)
    assert tcfg.federation == cfg.federation  # passed through unchanged (any strategy / executor / transport)
    assert tcfg.model._target_.endswith("NestedUNet") and "fed_distill" not in tcfg
    assert OmegaConf.to_container(tcfg.distill) == {"method": "teacher_stage"}  # its stage only, no student's KD
    assert tcfg.paths.output_dir == str(run / "teacher")
    scfg = fed_distill_config.site_cfg(cfg, "site_b", "hlfd_fed", run / "teacher" / "global_best.pt")
    assert "sites" not in scfg.data and scfg.data.root.endswith("site_b")  # the site's own data only
    assert "federation" not in scfg and scfg.distill.teacher.ckpt.endswith("global_best.pt")
    assert scfg.data.num_classes == cfg.data.num_classes and scfg.model.classes == cfg.data.num_classes
    teacher = run / "teacher" / "global_best.pt"
    fcfg = fed_distill.student_stage_cfg(cfg, "fed_hlfd", teacher)
    assert fcfg.federation == cfg.federation and fcfg.paths.output_dir == str(run / "fed_hlfd")
    assert fcfg.module._target_.endswith("DistillationModule") and fcfg.module.teacher_ckpt == str(teacher)
    assert fcfg.module.scheduler is None and "fed_distill" not in fcfg
    ncfg = fed_distill.student_stage_cfg(cfg, "fed_none", teacher)
    assert ncfg.module._target_.endswith("SegmentationModule") and ncfg.model == cfg.model
    assert ncfg.distill.method == "none"  # tagged distill:none in W&B, as the local none arm


def test_every_stage_logs_to_the_experiments_w_and_b_group(tmp_path):
    """A walkthrough: each stage and site arm renames ``exp_name``, which the W&B group follows, so the run was
    eight groups (``fed_kits_hlfd_teacher``, ``fed_kits_hlfd_site_a_none``...) and ``group = fed_kits_hlfd`` found
    nothing; the teacher stages are ``job_type: teacher``."""
    cfg = compose_run(["+exp=fed_kits_hlfd", *[o for o in TINY if o != "logger=csv"], "logger=wandb"], tmp_path)
    teacher = tmp_path / "run" / "teacher" / "global_best.pt"
    stages = {"teacher": fed_distill.teacher_stage_cfg(cfg),
              "fed_none": fed_distill.student_stage_cfg(cfg, "fed_none", teacher),
              "site_b none": fed_distill_config.site_cfg(cfg, "site_b", "none"),
              "site_b teacher_local": fed_distill_config.site_cfg(cfg, "site_b", "teacher_local")}
    groups = {k: (c.logger.wandb.group, c.logger.wandb.job_type, c.exp_name) for k, c in stages.items()}
    assert {k: g[:2] for k, g in groups.items()} == {
        "teacher": ("fed_kits_hlfd", "teacher"), "fed_none": ("fed_kits_hlfd", "train"),
        "site_b none": ("fed_kits_hlfd", "train"), "site_b teacher_local": ("fed_kits_hlfd", "teacher")}, groups
    assert groups["teacher"][2] == "fed_kits_hlfd_teacher"  # the stage's own name (its runs' names and folders)
    mine = compose_run(["+exp=fed_kits_hlfd", *[o for o in TINY if o != "logger=csv"], "logger=wandb",
                        "logger.wandb.group=my_sweep"], tmp_path / "mine")
    assert fed_distill.teacher_stage_cfg(mine).logger.wandb.group == "my_sweep"  # a given group is kept (a review)


def test_fedbn_federated_student_loads_each_sites_own_teacher(tiny_run):
    """With FedBN each client of fed_hlfd distils from its own site's teacher (federation.client_module)."""
    from federation.errors import FederationError
    from federation.runner import client_module_cfg
    from federation.server import client_cfg

    cfg, _, run, _ = tiny_run
    cfg = cfg.copy()
    cfg.federation.strategy = {"_target_": "federation.core.strategies.FedBN"}
    for site in SITES:  # as site_teacher writes them from stage 1's client store
        (run / "sites" / site / "teacher_fed.pt").write_bytes((run / "teacher" / "global_final.pt").read_bytes())
    try:
        ccfg = client_cfg(fed_distill.student_stage_cfg(cfg, "fed_hlfd", run / "teacher" / "global_best.pt"))
        for site in SITES:
            assert client_module_cfg(ccfg, site).module.teacher_ckpt == str((run / "sites" / site / "teacher_fed.pt").resolve())
        assert client_module_cfg(ccfg, "elsewhere") is ccfg
        ccfg.federation.client_module.site_a = {"net": {"_target_": "x"}}
        with pytest.raises(FederationError, match="client_module.site_a"):
            client_module_cfg(ccfg, "site_a")
    finally:
        for site in SITES:
            (run / "sites" / site / "teacher_fed.pt").unlink()


def test_config_errors(tmp_path):
    cfg = compose_run(["+exp=fed_kits_hlfd", "fed_distill.arms=[none,kd]"], tmp_path)
    with pytest.raises(ConfigError, match="fed_distill.arms"):
        fed_distill_config.check_config(cfg)
    cfg = compose_run(["+exp=fed_kits_hlfd", "data=synthetic_kits"], tmp_path)
    with pytest.raises(ConfigError, match="data.sites"):
        fed_distill_config.check_config(cfg)
    cfg = compose_run(["+exp=fed_kits_hlfd", "distill=none"], tmp_path)
    with pytest.raises(ConfigError, match="KD method"):
        fed_distill_config.check_config(cfg)
    cfg = compose_run(["+exp=fed_kits_hlfd", "fed_distill.arms=[none,fed_none]"], tmp_path)
    with open_dict(cfg):
        del cfg["federation"]
    with pytest.raises(ConfigError, match="fed_none"):
        fed_distill_config.check_config(cfg)
    assert OmegaConf.select(compose_run(["+exp=fed_kits_hlfd"], tmp_path), "fed_distill.teacher_weights") == "best"
    # FedBN on a real SuperLink: the sites' BN stay in their own stores, so the server cannot build their teachers
    real = ["+exp=fed_kits_hlfd", "federation/strategy=fedbn", "federation/executor=flower",
            "federation.executor.launch=false"]
    with pytest.raises(ConfigError, match=r"\['hlfd_fed', 'fed_hlfd'\] with FedBN and a real SuperLink"):
        fed_distill_config.check_config(compose_run(real, tmp_path))
    assert fed_distill_config.check_config(compose_run([*real, "fed_distill.arms=[none,fed_none]"], tmp_path))
    assert fed_distill_config.check_config(compose_run([*real[:3]], tmp_path))  # the local rehearsal has the stores
    # a walkthrough: each of these ran (rc 0) doing something else than asked
    for bad, said in ((["fed_distill.arms=[]"], "fed_distill.arms has no arm"),
                      (["fed_distill.student_rounds=-1"], "fed_distill.student_rounds=-1"),
                      (["fed_distill.student_rounds=0"], "fed_distill.student_rounds=0"),
                      (["distill.teacher.ckpt=/nonexistent/teacher.ckpt"], "reads no teacher file"),
                      (["fed_distill.keep_last_ckpt=no"], "fed_distill.keep_last_ckpt='no'"),
                      # a review: ignored (the teachers trained on the sites' budgets), and a pool sent samples
                      (["distill.teacher.data={train_cases:null}"], "give a site's budget as data.sites"),
                      (["federation/strategy=datashare"], "a federated distillation moves weights only"),
                      # a review: clients mixing the sites' slices, scored per site (FedBN failed after stage 1)
                      (["federation/partition=iid", "federation.num_clients=3"], "one client per site")):
        with pytest.raises(ConfigError, match=re.escape(said)):
            fed_distill_config.check_config(compose_run(["+exp=fed_kits_hlfd", *bad], tmp_path))
    assert fed_distill_config.check_config(compose_run(["+exp=fed_kits_hlfd", "fed_distill.student_rounds=2"],
                                                       tmp_path))


@pytest.mark.parametrize("keep", [False, True])
def test_a_finished_arm_drops_its_resume_state_unless_kept(tmp_path, monkeypatch, keep):
    """A finished site arm's last.ckpt is removed (fed_distill.keep_last_ckpt=false, the default); best.ckpt stays."""
    cfg = compose_run(["+exp=fed_kits_hlfd", f"fed_distill.keep_last_ckpt={str(keep).lower()}"], tmp_path)

    def fake_arm(arm_cfg):
        ckpts = Path(arm_cfg.paths.output_dir) / "checkpoints"
        ckpts.mkdir(parents=True)
        for name in ("best.ckpt", "last.ckpt", "../student.pt"):
            (ckpts / name).write_bytes(b"x")
        return {}

    monkeypatch.setattr(fed_distill, "run_distillation", fake_arm)
    ckpts = fed_distill.run_site_arm(cfg, "site_a", "none", None) / "checkpoints"
    assert (ckpts / "best.ckpt").is_file() and (ckpts / "last.ckpt").exists() is keep


def test_fedbn_site_teacher_keeps_the_sites_own_bn(tmp_path):
    """With FedBN a site receives the global weights plus its own batch-norm entries (from the client store)."""
    import torch

    run = tmp_path / "run"
    (run / "teacher" / "client_store").mkdir(parents=True)
    torch.save({"conv.weight": torch.ones(2), "bn.running_mean": torch.zeros(2)}, run / "teacher" / "global_best.pt")
    torch.save({"local_state": {"bn.running_mean": torch.full((2,), 7.0)}}, run / "teacher" / "client_store" / "site_a.pt")
    cfg = OmegaConf.create({"paths": {"output_dir": str(run)},
                            "federation": {"strategy": {"_target_": "federation.core.strategies.FedBN"}, "store_dir": "client_store"}})
    path = fed_distill_weights.site_teacher(cfg, run / "teacher" / "global_best.pt", "site_a")
    state = torch.load(path, weights_only=True)
    assert path == run / "sites" / "site_a" / "teacher_fed.pt"
    assert torch.equal(state["bn.running_mean"], torch.full((2,), 7.0)) and torch.equal(state["conv.weight"], torch.ones(2))
    from federation.errors import FederationError

    with pytest.raises(FederationError, match="'site_b' is no client of"):
        fed_distill_weights.site_teacher(cfg, run / "teacher" / "global_best.pt", "site_b")
    torch.save({"round": 1}, run / "teacher" / "client_store" / "site_b.pt")  # a client that kept nothing
    with pytest.raises(FederationError, match="client 'site_b' kept no local entries"):
        fed_distill_weights.site_teacher(cfg, run / "teacher" / "global_best.pt", "site_b")
    cfg.federation.strategy._target_ = "federation.core.strategies.FedAvg"
    assert fed_distill_weights.site_teacher(cfg, run / "teacher" / "global_best.pt", "site_b") == run / "teacher" / "global_best.pt"
    # what the strategy does, not its name: FedAvg keeping entries local personalises as FedBN does
    (run / "sites" / "site_a" / "teacher_fed.pt").unlink()
    cfg.federation.strategy.local_prefixes = ["bn"]
    path = fed_distill_weights.site_teacher(cfg, run / "teacher" / "global_best.pt", "site_a")
    assert torch.equal(torch.load(path, weights_only=True)["bn.running_mean"], torch.full((2,), 7.0))


def test_flower_node_gets_a_client_config_it_accepts(tiny_run, tmp_path):
    """federation/executor=flower reaches fed_hlfd: the stage goes to the Flower launcher, the run config the
    ServerApp reads yields a client config that crosses the wire, passes the node's target allow-list and
    builds, at the node, the distillation module with that site's frozen teacher (no process is started)."""
    pytest.importorskip("flwr")
    from federation.core.messages import ServerMessage
    from federation.runner import client_module_cfg
    from federation.server import client_cfg
    from federation.transports.flower import launch, launches
    from federation.transports.flower.wire import decode_message, encode_message
    from federation.received import check_received_config

    cfg, _, run, _ = tiny_run
    teacher = run / "teacher" / "global_final.pt"
    fcfg = compose_run(["+exp=fed_kits_hlfd", *TINY, "federation/executor=flower", "federation/strategy=fedbn"], tmp_path)
    with open_dict(fcfg):
        fcfg.paths.output_dir = str(run)  # the tiny run's sites/<site>/teacher_fed.pt are written below
    for site in SITES:
        (run / "sites" / site / "teacher_fed.pt").write_bytes(teacher.read_bytes())
    try:
        scfg = fed_distill.student_stage_cfg(fcfg, "fed_hlfd", teacher)
        assert launches(scfg)
        launch.check(scfg)
        loaded = OmegaConf.load(launch.write_run_config(scfg, tmp_path))  # what the ServerApp reads
        plain = OmegaConf.to_container(client_cfg(loaded), resolve=True)  # as the Flower executor sends it
        _, cid, ccfg, _ = decode_message(encode_message(ServerMessage(0, {}, {}), "site_b", plain, {}))
        ccfg = check_received_config(ccfg)
        module = fed_distill.build_module(client_module_cfg(OmegaConf.create(ccfg), cid))
        site_teacher = torch.load(run / "sites" / "site_b" / "teacher_fed.pt", weights_only=True)
        assert all(torch.equal(v, site_teacher[k]) for k, v in module.teacher.state_dict().items())
        assert not any(p.requires_grad for p in module.teacher.parameters())
    finally:
        for site in SITES:
            (run / "sites" / site / "teacher_fed.pt").unlink()


def test_evaluate_net_stops_after_max_batches():
    """``trainer.fast_dev_run`` reaches the cross-site evaluation as ``max_batches``: one batch per test set."""
    from federation.fed_distill_eval import evaluate_net

    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 2, 1)
    batches = [{"image": torch.randn(2, 1, 8, 8), "mask": torch.randint(0, 2, (2, 8, 8)),
                "case_id": [f"case{i}", f"case{i}"]} for i in range(3)]
    full = evaluate_net(net, batches, ["background", "tumor"], None, "all")
    one = evaluate_net(net, batches, ["background", "tumor"], None, "all", max_batches=1)
    assert (full["volumes"], one["volumes"]) == (3, 1)



def test_the_cross_site_table_scores_as_the_test_does_padding_and_ignore_label():
    """A review: the cross-site evaluation scored the padding of mixed-size batches (``valid``) and kept slices
    whose only non-zero label was the ignore label under ``eval_slices=foreground``; the module's own test does
    neither. A net that paints everything foreground is scored on each slice's own pixels only."""
    from federation.fed_distill_eval import evaluate_net

    class AllForeground(torch.nn.Module):
        def forward(self, x):
            return torch.stack([torch.zeros_like(x[:, 0]), torch.ones_like(x[:, 0])], 1)

    mask = torch.zeros(2, 4, 4, dtype=torch.long)
    mask[0, :2, :2] = 1      # slice 0: 4 foreground pixels in its own 2x2 corner, the rest padding
    mask[1, 0, 0] = 255      # slice 1: nothing but the ignore label
    valid = torch.zeros(2, 4, 4, dtype=torch.bool)
    valid[0, :2, :2] = valid[1] = True
    batch = {"image": torch.zeros(2, 1, 4, 4), "mask": mask, "valid": valid, "case_id": ["c", "c"]}
    got = evaluate_net(AllForeground(), [batch], ["background", "tumor"], None, "foreground")
    # before: the ignore-label slice was kept and broke the confusion matrix (label 255 of 2 classes), and
    # without it the padding counted as false positives (Dice 8 / (4 + 16))
    assert got["dice"] == pytest.approx(1.0)

@pytest.mark.parametrize("stage", ["teacher", "fed_none", "fed_hlfd"])
def test_predict_segments_with_a_stages_global_model(tiny_run, stage, tmp_path):
    """Found missing: the federated teacher and the federated students had no config.yaml beside their global
    weights, so ``experiments.predict`` could not build them; each stage folder now has one."""
    from tests.cli import run_in_process

    _, _, run, _ = tiny_run
    weights = run / stage / ("global_final.pt" if stage != "teacher" else "global_best.pt")
    site_root = Path(OmegaConf.load(run / stage / "config.yaml").data.sites[SITES[0]].root)
    volume = sorted(site_root.rglob("imaging.nii.gz"))[0]
    proc = run_in_process("experiments.predict", [f"ckpt={weights}", f"input={volume}",
                                                  f"output={tmp_path / 'seg.nii.gz'}", "device=cpu"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert nib.load(tmp_path / "seg.nii.gz").shape == nib.load(volume).shape


def test_a_stage_written_for_a_real_superlink_pauses_the_run_and_resume_goes_on(tiny_run, tmp_path, capsys, caplog):
    """``federation/executor=flower federation.executor.launch=false``: each federated stage is written for the
    user's SuperLink and the run pauses (exit 0, no metrics.json) until that stage's metrics.json exists; the
    rerun then goes on. It stopped with "stage 1 wrote no global weights" (exit 2) before."""
    import shutil

    import logging

    from experiments.run import dispatch

    caplog.set_level(logging.INFO)
    _, _, done, _ = tiny_run
    cfg = compose_run(["+exp=fed_kits_hlfd", *TINY, "fed_distill.arms=[none,fed_none]", "federation/executor=flower",
                       "federation.executor.launch=false"], tmp_path)
    run = tmp_path / "run"
    first = dispatch(cfg)
    lines = capsys.readouterr().out.splitlines()
    assert first["fed_distill/pending"] == "stage 1 (the federated teacher)"
    # each on one line, as typed: a wrapped command pasted into a shell ran without its --run-config
    assert any(ln.strip().startswith("flwr run") and "--stream --run-config 'cfg-path=" in ln for ln in lines), lines
    assert any("paused:" in ln and f"resume={fed_distill.output_dir(cfg)} to go on" in ln for ln in lines), lines
    logged = [r.getMessage() for r in caplog.records]  # run.log, not only stdout, says why there are no results
    assert any(m.startswith("paused: stage 1") for m in logged) and any("flwr run" in m for m in logged), logged
    assert (run / "teacher" / "flower" / "config.yaml").is_file() and not (run / "metrics.json").exists()
    assert not (run / "sites").exists()  # nothing after the pending stage ran
    (run / "teacher" / "server.pt").write_bytes(b"")  # the SuperLink started stage 1: wait, do not resubmit
    dispatch(cfg)
    assert "while it runs there, wait" in " ".join(capsys.readouterr().out.split())
    (run / "teacher" / "server.pt").unlink()
    shutil.copytree(done / "teacher", run / "teacher", dirs_exist_ok=True)  # the SuperLink ran stage 1
    second = dispatch(cfg)
    assert second["fed_distill/pending"] == "stage 2 (the federated student fed_none)"
    assert all((run / "sites" / s / "none" / "student.pt").is_file() for s in SITES)
    assert not (run / "metrics.json").exists()
    shutil.copytree(done / "fed_none", run / "fed_none", dirs_exist_ok=True)
    third = dispatch(cfg)
    assert "fed_distill/pending" not in third and "fed_distill/fed_none/dice_other" in third
    assert (run / "metrics.json").is_file() and (run / "fed_distill.md").is_file()


def test_falling_back_from_the_best_to_the_final_global_weights_is_said(tmp_path, caplog):
    """A review: with ``teacher_weights=best`` and no server validation round, the final weights were used
    silently (expected only in a fast_dev_run smoke run, which stays quiet)."""
    import logging

    (tmp_path / "global_final.pt").write_bytes(b"")
    for smoke, said in ((False, True), (True, False)):
        caplog.clear()
        cfg = OmegaConf.create({"fed_distill": {"teacher_weights": "best"}, "trainer": {"fast_dev_run": smoke}})
        with caplog.at_level(logging.WARNING, logger="federation.fed_distill"):
            assert fed_distill_weights.global_weights(cfg, tmp_path, "stage 1").name == "global_final.pt"
        assert ("no server validation round chose a best" in caplog.text) is said, caplog.text


def test_a_kd_pair_that_cannot_work_is_refused_before_stage_1(tmp_path):
    from engine.errors import find_user_error

    """Found by a review: a misspelt tap or a site size the teacher and student pad differently failed only after
    the federated teacher had trained (and the corrected distill.taps could not resume the run); both are one
    line now, before stage 1, as are an arms string (read letter by letter) and a null site (a traceback)."""
    from engine.errors import find_user_error

    for bad, said in ((["distill.taps.0.student=encoder.layr1"], "encoder.layr1"),
                      (["data.sites.site_a.image_size=48"], "data.sites.site_a: distillation at 48 x 48 px")):
        cfg = compose_run(["+exp=fed_kits_hlfd", *bad], tmp_path)
        with pytest.raises(Exception) as err:  # Hydra's wrapper around the module's ConfigError (one line in the CLI)
            fed_distill_config.check_kd_pair(cfg, fed_distill_config.check_config(cfg))
        assert isinstance(find_user_error(err.value), ConfigError) and said in str(find_user_error(err.value))
        assert not (tmp_path / "run" / "teacher").exists()
    cfg = compose_run(["+exp=fed_kits_hlfd", "data.sites.site_a.image_size=48"], tmp_path)
    fed_distill_config.check_kd_pair(cfg, ["none", "teacher_local", "fed_none"])  # no arm distils: nothing to pair
    fed_distill_config.check_kd_pair(compose_run(["+exp=fed_kits_hlfd"], tmp_path), ["hlfd_local"])
    with pytest.raises(ConfigError, match=re.escape("fed_distill.arms=hlfd_fed: a list of arms")):
        fed_distill_config.check_config(compose_run(["+exp=fed_kits_hlfd", "fed_distill.arms=hlfd_fed"], tmp_path))
    from datamodules.errors import DataError

    with pytest.raises(DataError, match=re.escape("data.sites.site_c is null: leave a site out with ~data.sites")):
        fed_distill_config.check_config(compose_run(["+exp=fed_kits_hlfd", "data.sites.site_c=null"], tmp_path))


def test_the_table_names_the_kd_method_the_arms_used(tiny_run):
    """Found by a review: with ``distill=at`` the table and figure said "student + HLFD (...)" for AT students;
    the labels follow ``distill.method`` and metrics.json says which method and device the table used."""
    from federation.fed_distill_eval import model_labels

    assert model_labels("at")["hlfd_local"] == "student + AT (local teacher)"
    assert model_labels("pixel_kd")["fed_hlfd"] == "federated student + PIXEL KD"
    assert model_labels("hlfd")["hlfd_fed"] == "student + HLFD (federated teacher)"
    cfg, metrics = tiny_run[0], tiny_run[1]
    assert metrics["fed_distill/method"] == "hlfd" and metrics["fed_distill/device"] == "cpu"
