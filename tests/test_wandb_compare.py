"""W&B runs that compare: name/tags/config, best-of summaries, federated runs on centralised keys, media.
Reads the offline run files (tests/wandb_offline.py), no network."""
import json
import sys
from pathlib import Path

import pytest

from engine.run_overrides import method_overrides
from engine.wandb_tracking import run_identity
from experiments.run import dispatch
from federation.records import best_of_rounds, global_model_keys
from tests.hydra_helpers import compose_run
from tests.wandb_offline import read_run

SITES = ["hospital_a", "hospital_b", "hospital_c"]
TINY = ["model.width=4", "data.image_size=32", "data.batch_size=8", "data.synthetic.n_cases=6",
        "data.synthetic.shape=[48,48,10]"]
FED = ["+exp=fed_lits_dnet", "model.width=4", "federation.progress=false", "federation.rounds=2",
       "trainer.limit_train_batches=1", "federation.evaluation_matrix=false"] + [
    o for s in SITES for o in (f"data.sites.{s}.image_size=32", f"data.sites.{s}.synthetic.n_cases=4",
                               f"data.sites.{s}.synthetic.shape=[32,32,6]")]


def _keys(run):
    return set().union(*(h.keys() for h in run["history"]))


def test_centralised_run_name_tags_best_summary_and_media(tmp_path):
    dispatch(compose_run(["+exp=lits_dnet", "trainer.max_epochs=2", *TINY, "logger=wandb"], tmp_path))
    run = read_run(tmp_path / "run")
    # a single run's settings are in its name (a W&B review: runs of 2 and 5 epochs were both lits_dnet-dnet-s42)
    assert run["name"].startswith("lits_dnet-dnet-s42-trainer.max_epochs=2,model.width=4,"), run["name"]
    assert {"exp:lits_dnet", "model:dnet", "data:synthetic_lits", "seed:42"} <= set(run["tags"])
    assert run["config"]["run"]["exp"] == "lits_dnet" and "model.width=4" in run["config"]["run"]["overrides"]
    vals = [(h["epoch"], h["val/dice"]) for h in run["history"] if "val/dice" in h]
    best_epoch, best = max(vals, key=lambda t: t[1])
    assert run["summary"]["val/dice_best"] == pytest.approx(best)
    assert run["summary"]["val/dice_best_step"] == best_epoch
    assert run["summary"]["val/dice"]["max"] == pytest.approx(best)  # define_metric: W&B's best-of
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["val/dice_best"] == pytest.approx(best)
    keys = _keys(run)
    assert {"test/overlay_masks/all_masks", "test/per_case/path", "test/roc_table/path",
            "test/confusion_matrix_table/path", "test/roc_figure/_type"} <= keys  # (no CSV log: no learning curves)
    assert not any(k.startswith("test/curves") for k in keys)  # a review: ROC padded to the curves' width
    media = next((tmp_path / "run" / "wandb").glob("offline-run-*/files/media"))
    table = json.loads(next(media.glob("table/test/per_case_*.table.json")).read_text())
    assert table["columns"][:2] == ["case", "dice"] and {"iou_liver", "rvd_liver"} <= set(table["columns"])
    assert list(media.glob("images/mask/test/overlay_masks_*.mask.png"))  # ground truth + prediction layers


def test_a_centralised_classifier_logs_the_charts_a_federated_one_does(tmp_path):
    """A W&B review: a centralised classifier logged its confusion-matrix PNG under ``test/confusion_matrix``, the key
    on which segmenters and federations log W&B's chart, and no ``test/roc`` chart: one workspace panel was empty for
    half the runs. The chart and table pairs are the same now, and the PNG has a key of its own."""
    dispatch(compose_run(["+exp=digits_cnn", "model.width=4", "trainer.max_epochs=1", "logger=wandb"], tmp_path))
    run = read_run(tmp_path / "run")
    keys = _keys(run)
    # one epoch: each val/* defined before its only log, so W&B's summary holds its best-of (a session found a plain
    # number, the key defined after it was logged)
    assert run["summary"]["val/auc"]["max"] == pytest.approx(run["summary"]["val/auc_best"])
    assert "min" in run["summary"]["val/loss"], run["summary"]["val/loss"]
    assert {"test/roc_table/path", "test/confusion_matrix_table/path", "test/confusion_matrix_figure/_type"} <= keys
    assert "test/confusion_matrix/_type" not in keys, sorted(k for k in keys if "confusion" in k)


def test_federated_run_logs_the_global_model_on_centralised_keys(tmp_path):
    dispatch(compose_run([*FED, "logger=wandb", "federation/strategy=fedprox", "federation.evaluation_matrix=true",
                          "federation.matrix.standalone_epochs=1", "federation.matrix.centralised_epochs=1"], tmp_path))
    run = read_run(tmp_path / "run")
    assert run["name"].startswith("fed_lits_dnet-dnet-fedprox-by_site-s42-model.width=4,"), run["name"]
    assert {"strategy:fedprox", "partition:by_site", "exp:fed_lits_dnet"} <= set(run["tags"])
    rounds = [h for h in run["history"] if "fed/round/server_val/dice" in h]
    assert [h["epoch"] for h in rounds] == [1, 2] and [h["trainer/global_step"] for h in rounds] == [1, 2]
    for h in rounds:  # same values under the centralised keys, step = round
        assert h["val/dice"] == h["fed/round/server_val/dice"] and h["test/dice"] == h["fed/round/test/dice"]
    best = max(rounds, key=lambda h: h["val/dice"])
    assert run["summary"]["val/dice_best"] == pytest.approx(best["val/dice"])
    assert run["summary"]["val/dice_best_step"] == best["epoch"]
    # W&B's own best-of over every round, round 1 included (a walkthrough: defined after round 1's log), and the
    # centralised run's parameter count and per-case spread
    assert run["summary"]["val/dice"]["max"] == pytest.approx(best["val/dice"])
    fed_metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert run["summary"]["perf/num_parameters"] == fed_metrics["num_parameters"]
    assert "test/dice_std" in run["summary"] and "test/miou_std" in run["summary"]
    # the final global model's test media, as a centralised run's (a walkthrough: federations logged none)
    assert {"test/per_case/path", "test/roc_table/path", "test/confusion_matrix_table/path",
            "test/overlay_masks/all_masks", "test/overlays/_type"} <= _keys(run)
    assert (tmp_path / "run" / "test_overlays.png").is_file()
    media = next((tmp_path / "run" / "wandb").glob("offline-run-*/files/media"))
    assert list(media.glob("images/mask/test/overlay_masks_*.mask.png"))  # ground truth + prediction layers
    table = json.loads(next(media.glob("table/test/per_case_*.table.json")).read_text())
    per_case = (tmp_path / "run" / "test_per_case.csv").read_text().splitlines()
    assert table["columns"][:2] == ["case", "dice"] and len(table["data"]) == len(per_case) - 1
    # the evaluation matrix (a review: it reached metrics.json only): cells as scalars W&B compares, and a table
    matrix = json.loads((tmp_path / "run" / "metrics.json").read_text())["evaluation_matrix"]
    final = next(h for h in run["history"] if "fed/matrix/FL_global/pooled" in h)
    assert final["trainer/global_step"] == 2 and final["epoch"] == 2  # the last round's (a W&B review: it was at 3)
    assert final["fed/matrix/FL_global/pooled"] == pytest.approx(matrix["FL_global"]["pooled"])
    assert {f"fed/matrix/{row}/pooled" for row in matrix} <= set(final)
    cells = json.loads(next(media.glob("table/fed/evaluation_matrix_*.table.json")).read_text())
    assert sorted(r[0] for r in cells["data"]) == sorted(matrix)
    assert sorted(cells["columns"][1:]) == sorted(matrix["FL_global"])


def test_alias_and_best_of_rounds_are_pure():
    rows = [{"round": 1, "fed/round/server_val/loss": 0.5, "fed/round/server_val/dice": 0.2, "fed/round/test/dice": 0.1},
            {"round": 2, "fed/round/server_val/loss": 0.7, "fed/round/server_val/dice": 0.4, "fed/round/test/dice": 0.3}]
    assert global_model_keys(rows[1]) == {"val/loss": 0.7, "val/dice": 0.4, "test/dice": 0.3, "epoch": 2}
    best = best_of_rounds(rows)
    assert best["val/dice_best"] == 0.4 and best["val/dice_best_step"] == 2
    assert best["val/loss_best"] == 0.5 and best["val/loss_best_step"] == 1  # losses: lower is better


def test_sweep_values_enter_name_and_tags(tmp_path, monkeypatch):
    """A sweep job's name holds what the sweep varies, not what it fixes (compose sets no multirun mode, so the
    sweep is patched in: a review found this test on the single-run branch); a ``-m`` run of one job is named as a
    single run is, with its settings."""
    monkeypatch.setattr(sys, "argv", ["run", "-m", "+exp=lits_dnet", "module.optimizer.lr=0.001,0.01", "seed=1,2",
                                      "model.width=4"])
    monkeypatch.delenv("FEDMED_COMMAND_ARGV", raising=False)  # the typed command is this argv, not an earlier one's
    monkeypatch.setattr("engine.wandb_tracking.sweep_name", lambda: "2026-12-07_15-00-00")
    cfg = compose_run(["+exp=lits_dnet", "module.optimizer.lr=0.01", "seed=2", "model.width=4", "paths.log_dir=/x"],
                      tmp_path)
    ident = run_identity(cfg)
    assert ident["name"] == "lits_dnet-dnet-s2-module.optimizer.lr=0.01"
    assert "module.optimizer.lr=0.01" in ident["tags"] and "seed:2" in ident["tags"]
    assert "sweep:2026-12-07_15-00-00" in ident["tags"] and "model.width=4" in ident["config"]["run"]["overrides"]
    monkeypatch.setattr(sys, "argv", ["run", "-m", "+exp=lits_dnet", "module.optimizer.lr=0.01", "model.width=4"])
    one = run_identity(compose_run(["+exp=lits_dnet", "module.optimizer.lr=0.01", "model.width=4"], tmp_path / "one"))
    assert one["name"] == "lits_dnet-dnet-s42-module.optimizer.lr=0.01,model.width=4", one["name"]
    assert method_overrides(["paths.log_dir=/x", "logger=csv", "model.width=4", "+exp=a"]) == ["model.width=4"]


def test_runs_of_a_data_sweep_have_their_data_in_the_name(tmp_path, monkeypatch):
    """A review: ``data`` counts as a group the name holds (so it is no method override), but the name never
    held it: the runs of ``data=liver_slices,kits_slices`` were all ``seg-unet-s1``."""
    monkeypatch.delenv("FEDMED_COMMAND_ARGV", raising=False)
    names = {}
    for data in ("liver_slices", "kits_slices"):
        monkeypatch.setattr(sys, "argv", ["run", "-m", "+exp=lits_dnet", "data=liver_slices,kits_slices", "seed=1"])
        names[data] = run_identity(compose_run(["+exp=lits_dnet", f"data={data}", "seed=1"], tmp_path / data))["name"]
    assert names == {"liver_slices": "lits_dnet-dnet-liver_slices-s1", "kits_slices": "lits_dnet-dnet-kits_slices-s1"}


def test_w_and_b_summarises_rvd_by_its_last_value_only():
    """A review: W&B's ``min`` summary of an RVD kept the most negative one, not the smallest |RVD| that
    ``val/rvd_*_best`` holds; it is not asked for RVD."""
    from callbacks.best_metric import track_best

    class Run:
        summary: dict = {}

        def __init__(self):
            self.defined = {}

        def define_metric(self, key, summary):
            self.defined[key] = summary

    class WandbLogger:  # the name wandb_runs looks for
        def __init__(self):
            self.experiment = Run()

    logger = WandbLogger()
    state = {}
    for step, rvd in enumerate((-0.4, 0.1, -0.2)):
        best = track_best([logger], {"val/rvd_liver": rvd, "val/dice": 0.5}, step, state)
    assert best["val/rvd_liver_best"] == 0.1 and best["val/rvd_liver_best_step"] == 1
    assert logger.experiment.defined == {"val/rvd_liver": "last", "val/dice": "max,last"}

def test_swept_keys_come_from_the_typed_command_and_skip_fixed_sweeper_params(monkeypatch):
    """A sweep job's argv is its own command (experiments.ddp_job.job_command), so the typed one is read from
    the environment run_cli keeps it in; an Optuna param fixed on the command line is not in the name."""
    import json
    from types import SimpleNamespace

    from hydra.core import hydra_config

    from engine.run_overrides import COMMAND_ENV, swept_keys

    params = {"module.optimizer.lr": "interval(0.0001, 0.1)", "model.width": "choice(4, 8)"}
    monkeypatch.setattr(hydra_config.HydraConfig, "get", staticmethod(lambda: SimpleNamespace(
        sweeper={"params": params})))
    monkeypatch.setattr(sys, "argv", ["run", "module.optimizer.lr=0.01", "model.width=4", "seed=3"])
    monkeypatch.setenv(COMMAND_ENV, json.dumps(["-m", "hparams_search=lits_optuna", "module.optimizer.lr=0.01",
                                                "seed=1,2,3"]))
    assert swept_keys() == {"model.width", "seed"}


def test_an_optuna_trials_float_is_short_in_the_name_and_exact_in_the_config(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["run", "-m", "+exp=lits_dnet", "module.optimizer.lr=0.001,0.01", "seed=1,2"])
    monkeypatch.delenv("FEDMED_COMMAND_ARGV", raising=False)
    monkeypatch.setattr("engine.wandb_tracking.sweep_name", lambda: "2026-12-07_15-00-00")
    cfg = compose_run(["+exp=lits_dnet", "module.optimizer.lr=0.000341234567", "seed=2"], tmp_path)
    ident = run_identity(cfg)
    assert ident["name"].endswith("-module.optimizer.lr=0.0003412") and "module.optimizer.lr=0.0003412" in ident["tags"]
    assert "module.optimizer.lr=0.000341234567" in ident["config"]["run"]["overrides"]


def test_debug_runs_carry_a_debug_tag_and_job_type_centralised_and_federated(tmp_path, monkeypatch):
    """A walkthrough: `+exp=lits_dnet debug=limit logger=wandb` had a real run's group, name, tags and job_type
    `train` (the "compare models" filter `group = lits_dnet` mixed debug runs in), and a federation's
    `debug=fdr` run (whose server loggers do log) had no debug mode in its W&B config."""
    from engine.loggers import build_loggers

    monkeypatch.delenv("WANDB_MODE", raising=False)
    for overrides, mode in ((["+exp=lits_dnet", "debug=limit"], "limit"), ([*FED, "debug=fdr"], "fdr")):
        (wandb,) = build_loggers(compose_run([*overrides, "logger=wandb"], tmp_path / mode))
        init = wandb._wandb_init  # what WandbLogger hands wandb.init
        assert init["job_type"] == "debug" and f"debug:{mode}" in init["tags"], init
        assert init["config"]["run"]["debug"] == mode
    (wandb,) = build_loggers(compose_run(["+exp=lits_dnet", "logger=wandb"], tmp_path / "real"))
    init = wandb._wandb_init
    assert init["job_type"] == "train" and not [t for t in init["tags"] if t.startswith("debug")]
    assert "debug" not in init["config"]["run"]
    # a job_type given on the command line wins; the tag stays
    (wandb,) = build_loggers(compose_run(["+exp=lits_dnet", "debug=fdr", "logger=wandb", "logger.wandb.job_type=eval"],
                                         tmp_path / "given"))
    assert wandb._wandb_init["job_type"] == "eval" and "debug:fdr" in wandb._wandb_init["tags"]


def test_runs_carry_a_method_id_without_the_seed_and_their_sweep(tmp_path, monkeypatch):
    """A review: two runs of one model with other settings (``trainer.max_epochs`` 1 and 2) had the same W&B name,
    group and tags, and the recipe's "group by config.run.model" averaged them; nothing named the sweep either."""
    from types import SimpleNamespace

    from hydra.core import hydra_config
    from hydra.types import RunMode

    from engine.wandb_tracking import sweep_name

    monkeypatch.setattr(sys, "argv", ["run", "+exp=lits_dnet"])
    monkeypatch.delenv("FEDMED_COMMAND_ARGV", raising=False)
    ids = {}
    for epochs, seed in ((1, 1), (2, 1), (2, 2)):
        cfg = compose_run(["+exp=lits_dnet", f"trainer.max_epochs={epochs}", f"seed={seed}"], tmp_path / f"{epochs}{seed}")
        ids[epochs, seed] = run_identity(cfg)["config"]["run"]["method"]
    assert ids[2, 1] == ids[2, 2] != ids[1, 1]
    assert "trainer.max_epochs=2" in ids[2, 1] and "model=dnet" in ids[2, 1] and "seed" not in ids[2, 1]
    assert sweep_name() is None
    monkeypatch.setattr(hydra_config.HydraConfig, "get", staticmethod(lambda: SimpleNamespace(
        mode=RunMode.MULTIRUN, sweep=SimpleNamespace(dir="/logs/lits_dnet/multiruns/2026-12-06_13-00-00"))))
    assert sweep_name() == "2026-12-06_13-00-00"


def test_experiment_tags_name_no_model_method_or_strategy():
    """A review: ``+exp=lits_dnet model=unet`` runs were tagged ``d-net`` (the exp's fixed tags), and
    ``distill=none`` runs ``hlfd``; what an override can change is tagged from the run (``model:unet``)."""
    import yaml

    configs = Path(__file__).resolve().parents[1] / "experiments" / "configs"
    names = {p.stem.replace("_", "").replace("-", "") for group in ("model", "distill", "federation/strategy")
             for p in (configs / group).glob("*.yaml")} - {"default", "none"}
    for exp in sorted((configs / "exp").glob("*.yaml")):
        tags = yaml.safe_load(exp.read_text()).get("tags") or []
        assert not [t for t in tags if str(t).replace("-", "").replace("_", "") in names], (exp.name, tags)


def test_a_distillation_s_teacher_stage_is_a_w_and_b_run_of_its_own(tmp_path):
    """A W&B review: the teacher a KD run trains first logged to its CSV only, so its curves reached no dashboard.
    It is a W&B run of its own now, named and tagged as a ``distill=teacher`` run of the teacher's net, in the
    student's group; the student's run follows it as before."""
    tiny = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2", "logger=wandb",
            "data.synthetic.n_cases=6", "data.synthetic.shape=[48,48,12]", "data.image_size=32",
            "data.batch_size=4", "data.augment=false", "module.example_size=32"]
    dispatch(compose_run(["+exp=kits_hlfd", "distill.loss.beta=0.8", *tiny], tmp_path))
    teacher, student = read_run(tmp_path / "run" / "teacher"), read_run(tmp_path / "run")
    assert teacher["name"].startswith("kits_hlfd-nested_unet-teacher_stage-s42-trainer.max_epochs=1,"), teacher["name"]
    assert {"distill:teacher_stage", "model:nested_unet"} <= set(teacher["tags"]) and teacher["job_type"] == "teacher"
    # the student's KD settings are not the teacher's (a review: a beta sweep's filter pulled the teachers in)
    assert "beta" not in teacher["name"] + teacher["config"]["run"]["method"] + " ".join(teacher["tags"])
    assert student["name"].startswith("kits_hlfd-resnet18_student-hlfd-s42-distill.loss.beta=0.8,trainer.max_epochs=1,")
    assert student["job_type"] == "train"
    assert teacher["group"] == student["group"] == "kits_hlfd" and teacher["id"] != student["id"]
    assert any("val/dice" in h for h in teacher["history"]) and any("val/dice" in h for h in student["history"])
    assert "val/dice_best" in teacher["summary"] and "val/miou_best" in teacher["summary"]  # BestMetric kept


def test_a_fast_dev_run_s_teacher_stage_is_a_debug_run(tmp_path):
    """The teacher of ``++trainer.fast_dev_run=true`` trains one batch for an epoch (fast_dev_run writes no
    checkpoint), so its sub-run is no fast_dev_run to Lightning; its W&B run and metrics.json still say debug."""
    dispatch(compose_run(["+exp=kits_hlfd", "logger=wandb", "data.synthetic.n_cases=6", "data.image_size=32",
                          "data.synthetic.shape=[48,48,12]", "++trainer.fast_dev_run=true",
                          "logger.wandb.name=mine"], tmp_path))
    teacher = read_run(tmp_path / "run" / "teacher")
    assert teacher["job_type"] == "debug" and "debug:fdr" in teacher["tags"], (teacher["job_type"], teacher["tags"])
    assert teacher["name"] == "mine-teacher"  # a name given to the run is the student's
    assert json.loads((tmp_path / "run" / "teacher" / "metrics.json").read_text())["debug"] is True


def test_names_past_the_cut_stay_apart():
    """A walkthrough: two runs differing only in an override past the 128th character shared a name."""
    from engine.wandb_tracking import short_name

    head = "lits_dnet-dnet-s42-" + ",".join(f"data.synthetic.n_cases={i}" for i in range(5))
    a, b = short_name(head + ",trainer.limit_train_batches=2"), short_name(head + ",trainer.limit_train_batches=3")
    assert a != b and len(a) <= 128 and len(b) <= 128 and a.startswith(head[:100])
    assert short_name("lits_dnet-dnet-s42") == "lits_dnet-dnet-s42"


def test_a_flower_server_app_names_its_w_and_b_run_as_its_launcher_did(tmp_path, monkeypatch):
    """A walkthrough: the ServerApp reads a written config and runs no Hydra command, so every Flower run was named
    ``fed_lits_dnet-dnet-fedavg-by_group-s42`` (no overrides; ``partition:by_group``, ``data:multisitedatamodule``
    guessed from class names). The written config carries the launcher's identity, in every W&B logger whatever
    its key; a review: kept in a side file beside the run, a copied config lost it and a reused folder lent the
    earlier run's name."""
    import shutil

    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from engine.wandb_tracking import with_identity
    from federation.transports.flower.launch import write_run_config

    cfg = compose_run([*FED, "logger=wandb", "federation/executor=flower"], tmp_path)
    OmegaConf.set_struct(cfg, False)
    cfg.logger["team"] = cfg.logger.wandb  # a second W&B logger under a key of the user's
    path = write_run_config(cfg, tmp_path / "run" / "flower")
    elsewhere = tmp_path / "copied" / "config.yaml"  # a config copied to another host: no run dir beside it
    elsewhere.parent.mkdir()
    shutil.copy(path, elsewhere)
    (tmp_path / "run" / "wandb_identity.json").write_text(json.dumps(  # an earlier run's identity in the folder
        {"name": "earlier", "tags": ["earlier"], "overrides": [], "facts": {"exp": "earlier"}}))

    def no_hydra():
        raise ValueError("HydraConfig was not set")

    monkeypatch.setattr(HydraConfig, "get", staticmethod(no_hydra))
    served = OmegaConf.load(elsewhere)
    for key in ("wandb", "team"):
        ident = with_identity(served, served.logger[key])  # as the ServerApp's build_loggers does
        assert ident.name.startswith("fed_lits_dnet-dnet-fedavg-by_site-s42-model.width=4,"), ident.name
        assert "partition:by_site" in ident.tags and "earlier" not in ident.tags
        assert "executor:flower" in ident.tags and ident.config["run"]["executor"] == "flower"
        run = ident.config["run"]
        assert "federation/executor=flower" in run["overrides"]  # in the method: two rows beside in-process runs
        assert (run["partition"], run["data"]) == ("by_site", "multisite_lits")
        assert "federation.rounds=2" in run["overrides"]
    plain = OmegaConf.create({"_target_": "pytorch_lightning.loggers.WandbLogger", "project": "p"})
    assert with_identity(served, plain).name != "earlier"  # a hand-written config: its own, never the folder's


def test_runs_of_a_sweep_over_long_values_keep_tags_apart(tmp_path, monkeypatch):
    """W&B takes tags of up to 64 characters; a review: two augmentation pipelines of one sweep, alike in their
    first 64 characters, shared one tag."""
    monkeypatch.delenv("FEDMED_COMMAND_ARGV", raising=False)
    monkeypatch.setattr("engine.wandb_tracking.sweep_name", lambda: "2026-12-07_15-00-00")
    pipeline = "[{_target_:albumentations.RandomBrightnessContrast,brightness_limit:%s}]"
    tags = {}
    for limit in ("0.1", "0.2"):
        monkeypatch.setattr(sys, "argv", ["run", "-m", "+exp=lits_dnet", f"data.augmentation={pipeline % '0.1'},"
                                          f"{pipeline % '0.2'}"])
        cfg = compose_run(["+exp=lits_dnet", f"data.augmentation={pipeline % limit}"], tmp_path / limit)
        tags[limit] = [t for t in run_identity(cfg)["tags"] if t.startswith("data.augmentation")]
    assert len(tags["0.1"]) == len(tags["0.2"]) == 1 and tags["0.1"] != tags["0.2"], tags
    assert all(len(t[0]) <= 64 for t in tags.values())



def test_a_given_tag_over_64_characters_reaches_w_and_b_cut_once(tmp_path):
    """A review: a ``tags=[...]`` entry over 64 characters went to W&B uncut beside its cut form, and wandb.init
    refused the run (a traceback)."""
    from engine.wandb_tracking import with_identity

    long_tag = "my-very-long-user-tag-" + "x" * 60
    cfg = compose_run(["+exp=lits_dnet", "logger=wandb", f"tags=[{long_tag}]"], tmp_path)
    tags = list(with_identity(cfg, cfg.logger.wandb).tags)
    assert all(len(t) <= 64 for t in tags) and sum(t.startswith("my-very-long-user-tag-") for t in tags) == 1, tags


class _Run:
    """A W&B run that records the order of ``define_metric`` and ``log``."""

    def __init__(self, events):
        self.events, self.summary = events, {}

    def define_metric(self, key, summary):
        self.events.append(("define", key, summary))


class WandbLogger:  # the name wandb_runs and track_best look for
    def __init__(self):
        self.events = []
        self.experiment = _Run(self.events)

    def log_metrics(self, metrics, step):
        self.events.append(("log", dict(metrics), step))


def test_a_one_round_federation_defines_each_val_metric_before_logging_it():
    """A walkthrough: ``define_metric`` came after the first log of ``val/<m>``, so a one-round federation's W&B
    summary of ``val/dice`` was a plain number and a dashboard's ``val/dice.max`` column empty for it."""
    from federation.records import log_metrics

    lg = WandbLogger()
    log_metrics([lg], {"round": 1, "fed/round/server_val/dice": 0.4, "fed/round/server_val/loss": 0.9}, step=1)
    first_log = next(i for i, e in enumerate(lg.events) if e[0] == "log")
    defined = {e[1]: e[2] for e in lg.events[:first_log] if e[0] == "define"}
    assert defined == {"val/dice": "max,last", "val/loss": "min,last"}, lg.events
    assert lg.events[first_log][1]["val/dice"] == 0.4 and lg.experiment.summary["val/dice_best"] == 0.4


def test_a_federation_s_summary_has_a_centralised_run_s_parameter_count_and_case_spread():
    """A walkthrough: federations logged ``num_parameters`` only (centralised runs ``perf/num_parameters`` too) and
    no ``test/<m>_std``, which a centralised run's summary has from its per-case scores."""
    from types import SimpleNamespace

    from federation.records import log_metrics, log_test_media

    lg = WandbLogger()
    log_metrics([lg], {"num_parameters": 1234, "test/dice": 0.5}, step=2)
    logged = next(e[1] for e in lg.events if e[0] == "log")
    assert logged["perf/num_parameters"] == 1234.0 and logged["num_parameters"] == 1234
    tested = SimpleNamespace(test_summary={"dice": 0.5, "dice_std": 0.1, "rvd_liver_std": float("nan"),
                                           "num_cases": 2.0})
    log_test_media([lg], tested)  # no media of a stand-in module: warned, the summary still written
    summary = lg.experiment.summary
    assert summary["test/dice_std"] == 0.1 and "test/rvd_liver_std" in summary  # NaN with one case, as centralised
    assert "test/dice" not in summary and "test/num_cases" not in summary  # those are logged, not set here


def test_the_federated_student_without_kd_is_tagged_distill_none(tmp_path, monkeypatch):
    """A walkthrough: ``fed_kits_hlfd``'s ``fed_none`` stage had no ``distill:`` tag and no ``config.run.distill``
    in W&B, where a centralised ``distill=none`` run and the local ``none`` arm have ``distill:none``."""
    from federation import fed_distill, fed_distill_config

    monkeypatch.setattr(sys, "argv", ["run", "+exp=fed_kits_hlfd", "logger=wandb"])
    monkeypatch.delenv("FEDMED_COMMAND_ARGV", raising=False)
    cfg = compose_run(["+exp=fed_kits_hlfd", "logger=wandb"], tmp_path)
    stages = {"fed_none": fed_distill.student_stage_cfg(cfg, "fed_none", tmp_path / "teacher" / "global_best.pt"),
              "none": fed_distill_config.site_cfg(cfg, fed_distill_config.site_names(cfg)[0], "none")}
    for arm, stage in stages.items():
        ident = run_identity(stage)
        assert "distill:none" in ident["tags"] and ident["config"]["run"]["distill"] == "none", (arm, ident["tags"])
    models = {arm: run_identity(stage)["config"]["run"]["model"] for arm, stage in stages.items()}
    assert models["fed_none"] == models["none"] == "resnet18_student", models
    # the federated teacher stage: tagged and named as the centralised teacher stage is, after the teacher's net
    teacher = run_identity(fed_distill.teacher_stage_cfg(cfg))
    assert "distill:teacher_stage" in teacher["tags"] and teacher["config"]["run"]["model"] != "resnet18_student", \
        teacher
