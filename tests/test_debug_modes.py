"""`debug=<mode>` (lightning-hydra-template's debug/ group) for centralised, distillation and federated runs."""
import pytest

from engine.debug import apply_debug, fast_dev_rounds
from experiments.run import dispatch
from tests.hydra_helpers import compose_run

TINY_LITS = ["model.width=4", "data.image_size=32", "data.batch_size=8", "data.synthetic.n_cases=6",
             "data.synthetic.shape=[48,48,10]", "logger=csv"]
SITES = ["hospital_a", "hospital_b", "hospital_c"]
TINY_FED = ["+exp=fed_lits_dnet", "logger=csv", "model.width=4", "federation.progress=false",
            "federation.matrix.standalone_epochs=1", "federation.matrix.centralised_epochs=1"] + [
    o for s in SITES for o in (f"data.sites.{s}.image_size=32", f"data.sites.{s}.synthetic.n_cases=4",
                               f"data.sites.{s}.synthetic.shape=[32,32,6]")]


def test_lits_dnet_fdr_runs_one_batch(tmp_path):
    cfg = compose_run(["+exp=lits_dnet", *TINY_LITS, "debug=fdr"], tmp_path)
    metrics = dispatch(cfg)
    assert cfg.trainer.fast_dev_run is True and cfg.trainer.max_epochs == 1 and cfg.task_name == "debug"
    assert "test/dice" in metrics and metrics["test_checkpoint"] == "last weights"  # fdr saves no checkpoint


def test_a_run_without_loggers(tmp_path):
    """``~logger`` (logger/default.yaml's way to log nothing): no logger, so no learning-rate monitor either;
    metrics.json is still written."""
    cfg = compose_run(["+exp=lits_dnet", *[o for o in TINY_LITS if not o.startswith("logger")], "~logger",
                       "debug=fdr"], tmp_path)
    assert "logger" not in cfg
    metrics = dispatch(cfg)
    assert "test/dice" in metrics and (tmp_path / "run" / "metrics.json").is_file()
    assert not (tmp_path / "run" / "csv").exists() and not (tmp_path / "run" / "wandb").exists()


def test_federation_fdr_is_one_round_one_batch_per_client(tmp_path):
    cfg = compose_run([*TINY_FED, "debug=fdr"], tmp_path)
    metrics = dispatch(cfg)
    assert cfg.federation.rounds == 1 and cfg.trainer.fast_dev_run is True
    assert metrics["fed/rounds"] == 1 and metrics["fed/num_clients"] == 3 and "fed/global/test/dice" in metrics
    assert metrics["val/dice_best_step"] == 1 and "val/dice_best" in metrics  # the sweep objective
    # each test volume's scores, as a centralised run writes them (a walkthrough: federations wrote none)
    rows = (tmp_path / "run" / "test_per_case.csv").read_text().splitlines()
    assert rows[0].startswith("case,") and "dice" in rows[0].split(",") and len(rows) >= 2


def test_distillation_fdr_trains_teacher_then_student(tmp_path):
    cfg = compose_run(["+exp=lits_hlfd", "data.synthetic.n_cases=6", "data.synthetic.shape=[48,48,10]",
                       "data.image_size=32", "logger=csv", "debug=fdr"], tmp_path)
    metrics = dispatch(cfg)
    assert metrics["distill/method"] == "hlfd" and "test/dice" in metrics
    assert any((tmp_path / "data" / "teachers").glob("*.ckpt"))


@pytest.mark.parametrize("mode, key, value", [
    ("default", "trainer.detect_anomaly", True), ("limit", "trainer.limit_train_batches", 3),
    ("overfit", "trainer.overfit_batches", 3), ("profiler", "trainer.profiler._target_",
                                                "pytorch_lightning.profilers.SimpleProfiler")])
def test_modes_win_over_the_experiment_but_not_the_command_line(tmp_path, mode, key, value):
    from omegaconf import OmegaConf

    cfg = compose_run(["+exp=lits_dnet", f"debug={mode}", "trainer.devices=1"], tmp_path)
    assert cfg.trainer.max_epochs == 6  # the exp's value until the debug mode is applied
    apply_debug(cfg)
    assert OmegaConf.select(cfg, key) == value
    assert cfg.trainer.max_epochs == {"limit": 3, "overfit": 20}.get(mode, 1)
    assert "federation" not in cfg or cfg.federation is None  # federation keys skipped in a centralised run
    given = compose_run(["+exp=lits_dnet", f"debug={mode}", "trainer.max_epochs=2"], tmp_path)
    apply_debug(given)
    assert given.trainer.max_epochs == 2


def test_federation_modes_set_rounds(tmp_path):
    cfg = compose_run([*TINY_FED, "debug=limit"], tmp_path)
    apply_debug(cfg)
    assert cfg.federation.rounds == 2 and cfg.federation.local_epochs == 1 and cfg.trainer.limit_train_batches == 3


def test_fast_dev_run_alone_makes_a_federation_one_round(tmp_path):
    """``++trainer.fast_dev_run=true`` without ``debug=`` (a walkthrough ran all 10 rounds of fed_lits_dnet and
    4 + 4 of fed_kits_hlfd with it): one round, the federated students' rounds too; rounds given on the
    command line are kept; a centralised run is untouched."""
    cfg = compose_run(["+exp=fed_kits_hlfd", "++trainer.fast_dev_run=true", "fed_distill.student_rounds=3"], tmp_path)
    assert cfg.federation.rounds == 4
    assert fast_dev_rounds(cfg) == {"federation.rounds": 1}  # student_rounds=3 came from the command line
    assert cfg.federation.rounds == 1 and cfg.fed_distill.student_rounds == 3
    cfg = compose_run(["+exp=fed_kits_hlfd", "++trainer.fast_dev_run=true"], tmp_path)
    cfg.fed_distill.student_rounds = 5
    fast_dev_rounds(cfg)
    assert cfg.federation.rounds == 1 and cfg.fed_distill.student_rounds == 1
    given = compose_run([*TINY_FED, "++trainer.fast_dev_run=true", "federation.rounds=2"], tmp_path)
    assert fast_dev_rounds(given) == {} and given.federation.rounds == 2
    plain = compose_run([*TINY_FED], tmp_path)
    assert fast_dev_rounds(plain) == {} and plain.federation.rounds == 10
    assert fast_dev_rounds(compose_run(["+exp=lits_dnet", "++trainer.fast_dev_run=true"], tmp_path)) == {}


def test_a_key_that_follows_a_command_line_key_keeps_following_it(tmp_path):
    """A walkthrough: ``+exp=lits_hlfd debug=limit trainer.max_epochs=1`` (the docs' example) trained a 3-epoch
    teacher: the mode set ``distill.teacher.max_epochs``, which the exp makes ``${trainer.max_epochs}``."""
    given = compose_run(["+exp=lits_hlfd", "debug=limit", "trainer.max_epochs=1"], tmp_path)
    apply_debug(given)
    assert given.trainer.max_epochs == 1 and given.distill.teacher.max_epochs == 1
    plain = compose_run(["+exp=lits_hlfd", "debug=limit"], tmp_path)
    apply_debug(plain)
    assert plain.trainer.max_epochs == 3 and plain.distill.teacher.max_epochs == 3


def test_the_run_folders_config_is_the_one_that_ran(tmp_path):
    """Found by a review: config.yaml was written before the debug mode applied its settings (under
    ``debug=limit`` it said ``limit_train_batches: 1.0`` where 3 batches ran, and W&B said 3). It is now written
    from :func:`engine.debug.as_run`, which leaves the composed config itself as it was."""
    from engine.debug import as_run

    cfg = compose_run(["+exp=lits_dnet", *TINY_LITS, "debug=limit"], tmp_path)
    ran = as_run(cfg)
    assert ran.trainer.limit_train_batches == 3 and cfg.trainer.limit_train_batches != 3


def test_a_protocol_a_test_without_foreground_says_why_there_is_no_dice(tmp_path, caplog):
    """A walkthrough: a ``lits_hlfd`` fast_dev_run printed no test Dice and did not say why (its one test batch held
    no tumour slice, and protocol a scores only those)."""
    import logging
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from engine.fit import _report

    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}})
    trainer = SimpleNamespace(loggers=[])
    for slices, metrics, said in (("foreground", {"test_checkpoint": "x", "test/loss": 0.5}, True),
                                  ("foreground", {"test_checkpoint": "x", "test/dice": 0.5}, False),
                                  ("all", {"test_checkpoint": "x", "test/loss": 0.5}, False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="engine.fit"):
            _report(cfg, SimpleNamespace(eval_slices=slices), metrics, trainer)
        assert ("no test slice held foreground" in caplog.text) == said, (slices, metrics)
