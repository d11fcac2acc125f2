"""`logger=wandb|csv|tensorboard|many_loggers|default` and W&B offline unless asked."""
import os

import pytest

from experiments.run import dispatch
from tests.hydra_helpers import compose_run

TINY = ["+exp=lits_dnet", "model.width=4", "data.image_size=32", "data.batch_size=8", "data.synthetic.n_cases=6",
        "data.synthetic.shape=[48,48,10]", "trainer.max_epochs=1"]


@pytest.mark.parametrize("choice, keys", [("default", {"csv", "wandb"}), ("csv", {"csv"}), ("wandb", {"wandb"}),
                                          ("tensorboard", {"tensorboard"}),
                                          ("many_loggers", {"csv", "tensorboard", "wandb"})])
def test_logger_group(tmp_path, monkeypatch, choice, keys):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = compose_run([*TINY, f"logger={choice}"], tmp_path)
    assert set(cfg.logger) == keys
    if "wandb" in keys:
        assert cfg.logger.wandb.mode == "offline"  # no WANDB_MODE: nothing is sent


def test_tensorboard_writes_event_files(tmp_path):
    cfg = compose_run([*TINY, "logger=tensorboard"], tmp_path)
    dispatch(cfg)
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert "val/dice" in acc.Tags()["scalars"] and "test/dice" in acc.Tags()["scalars"]
    assert not os.path.exists(tmp_path / "run" / "wandb")


def test_a_wandb_id_file_that_holds_no_run_id_is_one_line(tmp_path):
    """Found by an audit: ``wandb_id.txt`` holding a ``/`` reached wandb, which raised a UsageError."""
    from engine.loggers import wandb_run_id
    from lightning_modules.errors import ConfigError

    (tmp_path / "wandb_id.txt").write_text("../../x\n")
    with pytest.raises(ConfigError, match="wandb_id.txt holds '../../x', not a W&B run id"):
        wandb_run_id(tmp_path)
    (tmp_path / "wandb_id.txt").write_text("abc_12-Z\n")
    assert wandb_run_id(tmp_path) == "abc_12-Z"


def test_only_rank_zero_writes_the_wandb_id(tmp_path, monkeypatch):
    """Ranks started together (SLURM, torchrun) each wrote their own id; rank 0's is the one W&B logs to."""
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    from engine.loggers import wandb_run_id

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    wandb_run_id(tmp_path)
    assert not (tmp_path / "wandb_id.txt").exists()
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    mine = wandb_run_id(tmp_path)
    assert (tmp_path / "wandb_id.txt").read_text().strip() == mine
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert wandb_run_id(tmp_path) == mine  # a later rank reads rank 0's


def test_wandb_init_gets_no_anonymous_setting_unless_asked(tmp_path, monkeypatch):
    """Lightning's WandbLogger passed ``anonymous=None`` to wandb.init, and this wandb warns "The anonymous
    setting has no effect and will be removed" on every run (`make demo`); an explicit choice is still passed."""
    from engine.loggers import build_loggers

    monkeypatch.delenv("WANDB_MODE", raising=False)
    (wandb,) = build_loggers(compose_run([*TINY, "logger=wandb"], tmp_path))
    assert "anonymous" not in wandb._wandb_init and wandb._wandb_init["mode"] == "offline"
    (wandb,) = build_loggers(compose_run([*TINY, "logger=wandb", "+logger.wandb.anonymous=true"], tmp_path))
    assert wandb._wandb_init["anonymous"] == "allow"


def test_a_trainer_prints_no_product_tip_and_no_deprecation_of_lightnings_own(tmp_path):
    """Every Trainer printed Lightning's "💡 Tip: ... try installing litlogger" line (a walkthrough counted it
    in every centralised run), and fits warned of torch 2.14's LeafSpec deprecation inside Lightning's own
    ``_pytree``: neither is about the run. Both are dropped by their exact text; other lines still show."""
    import logging
    import warnings

    from omegaconf import OmegaConf
    from pytorch_lightning.loggers import CSVLogger

    from engine.builders import build_trainer, quiet_library_notices

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    emitter = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    level = emitter.level
    emitter.addHandler(handler)
    emitter.setLevel(logging.INFO)  # an earlier federation test in this worker set Lightning's loggers to ERROR
    try:
        cfg = OmegaConf.create({"trainer": {"_target_": "pytorch_lightning.Trainer", "max_epochs": 1,
                                            "accelerator": "cpu", "enable_progress_bar": False}})
        build_trainer(cfg, logger=CSVLogger(str(tmp_path)))
    finally:
        emitter.removeHandler(handler)
        emitter.setLevel(level)
    assert seen and not [m for m in seen if "litlogger" in m], seen  # other notices (GPU available...) pass
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_library_notices()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and "
                      "treespec.is_leaf()` instead.", FutureWarning)
        warnings.warn("another deprecation", FutureWarning)
    assert [str(w.message) for w in caught] == ["another deprecation"]


def test_no_progress_bar_in_a_log_file_unless_asked(tmp_path, monkeypatch):
    """stdout that is no terminal (a SLURM log, ``> run.log``) got the rich bar's last frames as fragments between
    the log lines; EpochLog's line per epoch says the same there. ``trainer.enable_progress_bar`` set wins."""
    import io
    import sys

    from pytorch_lightning.callbacks import RichProgressBar

    from engine.builders import build_callbacks, build_trainer

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    cfg = compose_run(["+exp=lits_dnet", "logger=csv"], tmp_path)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert build_trainer(cfg, build_callbacks(cfg)).progress_bar_callback is None
    monkeypatch.setattr(sys, "stdout", Terminal())
    assert isinstance(build_trainer(cfg, build_callbacks(cfg)).progress_bar_callback, RichProgressBar)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    cfg = compose_run(["+exp=lits_dnet", "logger=csv", "trainer.enable_progress_bar=true"], tmp_path)  # as typed
    assert isinstance(build_trainer(cfg, build_callbacks(cfg)).progress_bar_callback, RichProgressBar)
    monkeypatch.setattr(sys, "stdout", None)  # stdout closed (a daemon, `>&-`): no bar, no traceback
    assert build_trainer(cfg.copy(), build_callbacks(cfg)).progress_bar_callback is not None
    cfg = compose_run(["+exp=lits_dnet", "logger=csv"], tmp_path)
    assert build_trainer(cfg, build_callbacks(cfg)).progress_bar_callback is None


def test_a_given_wandb_id_is_kept_and_unknown_wandb_keys_are_one_line(tmp_path):
    """Found by a review: ``+logger.wandb.id=<id>`` was replaced by a new id without a word, and a misspelt
    ``++logger.wandb.*`` key failed at the first log call with a TypeError naming no key."""
    from engine.loggers import wandb_run_id
    from engine.tracking import check_wandb_modes
    from lightning_modules.errors import ConfigError

    assert wandb_run_id(tmp_path / "a", "myrun123") == "myrun123"
    assert (tmp_path / "a" / "wandb_id.txt").read_text().strip() == "myrun123"
    assert wandb_run_id(tmp_path / "a") == "myrun123"  # resumed: the file's id
    with pytest.raises(ConfigError, match="logger.wandb.id=other but this run dir logs to the W&B run myrun123"):
        wandb_run_id(tmp_path / "a", "other")
    with pytest.raises(ConfigError, match="is not a W&B run id"):
        check_wandb_modes(compose_run([*TINY, "logger=wandb", "+logger.wandb.id=a/b"], tmp_path))
    # checked before the run (a review: after a distillation's teacher had trained)
    cfg = compose_run([*TINY, "logger=wandb", "++logger.wandb.projct=x"], tmp_path)
    with pytest.raises(ConfigError, match=r"logger.wandb.projct is no argument .* \(did you mean logger.wandb.project\?\)"):
        check_wandb_modes(cfg)


def test_a_resumed_run_keeps_its_wandb_name_tags_and_overrides(tmp_path):
    """Found by a review: a sweep job resumed with ``resume=<job dir>`` lost the swept values from its W&B name
    and tags (the command typed to resume it is no sweep), and ``config.run.overrides`` gained ``resume=...``."""
    from omegaconf import open_dict

    from engine.run_overrides import NOT_METHOD, method_overrides
    from engine.wandb_tracking import kept_identity

    cfg = compose_run([*TINY, "logger=wandb"], tmp_path)
    first = {"name": "lits-dnet-s0-lr=0.1", "tags": ["lr=0.1"], "config": {"run": {"seed": 0, "overrides": ["lr=0.1"]}}}
    assert kept_identity(cfg, first) == first  # written beside the run
    typed = {"name": "lits-dnet-s0", "tags": [], "config": {"run": {"seed": 0, "overrides": []}}}
    with open_dict(cfg):
        cfg.resume = True
    resumed = kept_identity(cfg, typed)  # the method id follows the kept overrides (config.run.method)
    assert resumed == {**first, "config": {"run": {**first["config"]["run"], "method": "lr=0.1"}}}
    with open_dict(cfg):
        cfg.resume = False
    assert kept_identity(cfg, typed) == typed  # a new run in the folder: its own identity, kept from now on
    assert "resume" in NOT_METHOD and method_overrides(["resume=/x", "lr=0.1"]) == ["lr=0.1"]


def test_a_federation_resumed_under_another_executor_is_tagged_with_the_new_one(tmp_path):
    """Found by a review: a federation resumed under Flower kept its first start's ``executor:sequential`` tag
    while ``config.run.executor`` said ``flower``; the other kept tags (the swept values) stay as first set."""
    from omegaconf import open_dict

    from engine.wandb_tracking import kept_identity

    cfg = compose_run([*TINY, "logger=wandb"], tmp_path)
    first = {"name": "fed-s0-lr=0.1", "tags": ["lr=0.1", "executor:sequential"],
             "config": {"run": {"seed": 0, "executor": "sequential", "overrides": ["lr=0.1"]}}}
    kept_identity(cfg, first)
    typed = {"name": "fed-s0", "tags": ["executor:flower"],
             "config": {"run": {"seed": 0, "executor": "flower", "overrides": []}}}
    with open_dict(cfg):
        cfg.resume = True
    resumed = kept_identity(cfg, typed)
    assert resumed["tags"] == ["lr=0.1", "executor:flower"] and resumed["name"] == "fed-s0-lr=0.1"
    assert resumed["config"]["run"]["executor"] == "flower"



def test_a_federation_resumed_with_more_rounds_says_so_in_its_method(tmp_path):
    """A walkthrough: a 3-round federation resumed with ``federation.rounds=4`` kept ``federation.rounds=3`` in
    ``config.run.method`` (and its tag), so a dashboard pooled it with 3-round runs; its name stays the first."""
    from omegaconf import open_dict

    from engine.wandb_tracking import kept_identity

    cfg = compose_run([*TINY, "logger=wandb"], tmp_path)
    first = {"name": "fed-s0-federation.rounds=3", "tags": ["federation.rounds=3", "lr=0.1"],
             "config": {"run": {"seed": 0, "overrides": ["federation.rounds=3", "lr=0.1"]}}}
    kept_identity(cfg, first)
    with open_dict(cfg):
        cfg.resume = True
    typed = {"name": "x", "tags": [], "config": {"run": {"seed": 0, "overrides": ["federation.rounds=4",
                                                                                     "trainer.max_epochs=2"]}}}
    run = kept_identity(cfg, typed)
    assert run["config"]["run"]["overrides"] == ["federation.rounds=4", "lr=0.1", "trainer.max_epochs=2"]
    assert run["config"]["run"]["method"] == "federation.rounds=4 lr=0.1 trainer.max_epochs=2"
    assert run["tags"] == ["federation.rounds=4", "lr=0.1"] and run["name"] == first["name"]


def test_test_media_takes_a_classifier_and_a_segmenter():
    """Found by a walkthrough: a federated classifier's final W&B media failed ("too many values to unpack": its
    ROC curves hold their AUC third) and its confusion matrix (``confusion_matrix``, not ``confusion``) was never
    looked at; both are logged now, a segmenter's as before."""
    from types import SimpleNamespace

    import numpy as np

    from callbacks.wandb_media import test_media

    curve = (np.linspace(0, 1, 5), np.linspace(0, 1, 5) ** 0.5)
    classifier = SimpleNamespace(class_names=["a", "b"], roc_curves={"b": (*curve, 0.7)},
                                 confusion_matrix=np.array([[3, 1], [0, 4]]))
    segmenter = SimpleNamespace(class_names=["bg", "liver"], roc_curves={"liver": curve},
                                confusion=np.array([[90, 2], [1, 7]]), test_per_case={"c1": {"dice_liver": 0.8}})
    for module in (classifier, segmenter):
        media = test_media(module)
        assert {"test/roc", "test/confusion_matrix"} <= set(media), sorted(media)
    assert "test/confusion_matrix" not in test_media(SimpleNamespace(confusion_matrix=np.zeros((3, 2, 2))))


def test_a_resumed_csv_log_that_is_no_csv_text_is_one_line(tmp_path):
    """A security review: on resume, a ``csv/metrics.csv`` row whose step is ``inf`` was an OverflowError, a
    stray byte a UnicodeDecodeError and an overlong field a csv.Error traceback. The row is kept (as a row with no
    step), the others are one line naming the file."""
    from engine.loggers import ResumableCSVLogger, forget_from
    from lightning_modules.errors import ConfigError

    def resume(content: bytes, name: str) -> str:
        log = tmp_path / name / "csv" / "metrics.csv"
        log.parent.mkdir(parents=True)
        log.write_bytes(content)
        forget_from([ResumableCSVLogger(save_dir=str(tmp_path / name), name="csv", version="")], 3)
        return log.read_text()

    assert resume(b"epoch,step,a\n0,1,0.5\n0,inf,0.5\n0,5,0.5\n", "inf").splitlines()[1:] == ["0,1,0.5", "0,inf,0.5"]
    for name, content in (("byte", b"epoch,step,a\n0,1,\xff\xfe\n0,5,0.5\n"), ("header", b"epoch,st\xffep\n0,1\n"),
                          ("long", b"epoch,step,a\n0,1," + b"x" * 200_000 + b"\n0,5,0.5\n")):
        with pytest.raises(ConfigError, match=r"metrics\.csv does not read as a CSV log") as info:
            resume(content, name)
        assert str(tmp_path / name / "csv" / "metrics.csv") in str(info.value) and "\n" not in str(info.value)


def test_a_fast_dev_run_leaves_no_w_and_b_files(tmp_path):
    """A review: a fast_dev_run (its Trainer swaps every logger for a dummy, so no W&B run opens) wrote
    ``wandb_id.txt`` and ``wandb_identity.json``, which a later ``resume=`` of the folder took for a real run."""
    cfg = compose_run([*TINY, "logger=default", "++trainer.fast_dev_run=true"], tmp_path)
    dispatch(cfg)
    left = {p.name for p in (tmp_path / "run").iterdir()}
    assert not left & {"wandb", "wandb_id.txt", "wandb_identity.json"}, left
