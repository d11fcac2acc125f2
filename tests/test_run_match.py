"""``resume=<run dir>`` and test-only runs (``train=false ckpt_path=...``) must build the run they continue or
test (engine/run_match.py). Found by an audit: resuming without the run's own overrides built another net
(hundreds of ``size mismatch`` lines, exit 1) after rewriting the run's ``config.yaml``, so predict then read
the data at the wrong size; a test-only run tested a 32-px checkpoint at 64 px with no word, and recorded a
net it did not test."""
from __future__ import annotations

import shlex
import shutil
import time
from pathlib import Path

import pytest
import yaml

from engine.continue_command import continue_command, saved_overrides, sweep_continue_command
from engine.run_match import TEST_ONLY, debug_difference, differences
from tests.cli import run_in_process

TINY = ["+exp=lits_dnet", "model.width=4", "data.image_size=32", "data.batch_size=8", "data.synthetic.n_cases=6",
        "data.synthetic.shape=[48,48,10]", "trainer.max_epochs=1", "logger=csv", "callbacks=default",
        "~callbacks.rich_progress_bar", "~callbacks.throughput"]


@pytest.fixture(scope="module")
def trained(module_tmp) -> Path:
    tmp = module_tmp("run_match")
    proc = run_in_process("experiments.run", [*TINY, f"paths.data_dir={tmp / 'data'}", f"hydra.run.dir={tmp / 'run'}"],
                          tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp


def _error_line(proc) -> str:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def test_differences_name_each_key_and_ignore_number_spelling():
    saved = {"module": {"net": {"_target_": "D", "width": 4}}, "data": {"window": [-40, 160], "image_size": 32}}
    same = {"module": {"net": {"_target_": "D", "width": 4}}, "data": {"window": (-40.0, 160.0), "image_size": 32,
                                                                       "seed": 3}}
    assert differences(saved, same) == []  # data.seed is not in the saved run: not compared
    other = {"module": {"net": {"_target_": "D", "width": 16}}, "data": {"window": [-40, 160], "image_size": 64}}
    assert differences(saved, other) == ["module.net.width=16 (the run's 4)", "data.image_size=64 (the run's 32)"]
    assert differences(saved, other, TEST_ONLY) == ["data.image_size=64 (the run's 32)"]


def test_saved_overrides_are_shown_without_resume_or_hydra_keys(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
        ["+exp=lits_dnet", "model.width=4", "hydra.run.dir=/x", "resume=/y", "ckpt_path=/z"]))
    assert saved_overrides(tmp_path) == ["+exp=lits_dnet", "model.width=4"]
    (tmp_path / ".hydra" / "overrides.yaml").write_text("{not: [a list")
    assert saved_overrides(tmp_path) == []


def test_saved_overrides_naming_code_are_left_out_of_the_command_shown(tmp_path, caplog):
    """A handed-over run folder's overrides.yaml is data: an override that names code is never part of the
    command a refused resume offers to paste (an audit: ``shutil.rmtree`` as a callback was offered)."""
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
        ["+exp=fed_lits_dnet", "allow_targets=[shutil]", "+callbacks.sync._target_=shutil.rmtree",
         "+callbacks.sync.path=~/", "+callbacks.x={_target_: os.system, _args_: [ls]}", "model.width=4",
         # a second audit: another config tree, a Hydra group of its own, a target spelt in capitals
         "--config-dir=/tmp/evil", "-cd/tmp/evil", "hydra/callbacks=evil", "+hydra/job_logging=evil",
         "+callbacks.y._TARGET_=shutil.copyfile"]))
    shown = continue_command(saved_overrides(tmp_path), tmp_path)
    assert "shutil" not in shown and "os.system" not in shown and "model.width=4" in shown
    assert "evil" not in shown and not any(a.startswith("-") for a in shlex.split(shown)[3:])
    assert "names code in 8 override(s)" in caplog.text and "shutil.rmtree" in caplog.text


def test_an_augmentation_pipeline_is_kept_in_the_command_shown_and_a_disguised_one_is_not(tmp_path):
    """A review: every ``data.augmentation`` holds ``_target_``s, so it was left out as code, and the suggested
    command, which composed no pipeline, was refused by the resume check it was offered for."""
    good = "data.augmentation=[{_target_: albumentations.OneOf, transforms: [{_target_: albumentations.HorizontalFlip}]}]"
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
        [good, "data.sites.a.augmentation=[{_target_: albumentations.HorizontalFlip, p: {_target_: os.system}}]",
         "data.augmentation=[{_target_: albumentations.Lambda}]",
         "data.augmentation=[{_target_: albumentations.HorizontalFlip, _args_: [1]}]",
         "data.augmentation=[{_target_: '${oc.env:X}'}]",
         "data.augmentation=[{_target_: albumentations.HorizontalFlip, p: '${oc.env:P}'}]",
         "data.augmentation=[{_target_: albumentations.HorizontalFlip, allow_targets: [os]}]",
         "data.augmentation=[{_TARGET_: os.system}]",
         "data.augmentation=choice([{_target_: albumentations.HorizontalFlip}],[{_target_: os.system}])",
         "data.not_augmentation=[{_target_: albumentations.HorizontalFlip}]",
         "data.augmentation=[{_target_: albumentations.HorizontalFlip"]))  # one Hydra does not parse
    assert saved_overrides(tmp_path) == [good]


def test_continue_command_is_shell_quoted_and_leaves_out_what_a_resume_sets(tmp_path):
    """One command for the SIGTERM line and the refused resume; a list override (a glob to a POSIX shell)
    and a value with a space reach the run as typed when the line is pasted into ``sh``."""
    over = ["+exp=lits_dnet", "data.window=[-40,160]", "task_name=two words", "hydra.run.dir=/x",
            "ckpt_path=/y.ckpt", "resume=/old"]
    (tmp_path / "my run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "my run" / "checkpoints" / "last.ckpt").write_bytes(b"")
    line = continue_command(over, tmp_path / "my run")
    assert shlex.split(line) == ["python", "-m", "experiments.run", "+exp=lits_dnet", "data.window=[-40,160]",
                                 "task_name=two words", f"resume={tmp_path / 'my run'}"]
    again = continue_command(over, tmp_path / "my run", resume=False)  # run again from the start: a fine-tune
    assert shlex.split(again)[3:] == ["+exp=lits_dnet", "data.window=[-40,160]", "task_name=two words",
                                      "hydra.run.dir=/x",  # its folder kept (a walkthrough: it was dropped)
                                      "ckpt_path=/y.ckpt"]  # stays one (a review: it trained from scratch)
    (tmp_path / "my run" / "checkpoints" / "last.ckpt").unlink()  # stopped before its own first checkpoint (a
    resumed = shlex.split(continue_command(over, tmp_path / "my run"))  # distillation in its teacher/ stage)
    assert "ckpt_path=/y.ckpt" in resumed and resumed[-1] == f"resume={tmp_path / 'my run'}"


def test_resume_without_the_runs_overrides_is_one_line_and_changes_nothing(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    kept = {p: (run / p).read_bytes() for p in ("config.yaml", ".hydra/overrides.yaml", ".hydra/config.yaml")}
    proc = run_in_process("experiments.run", ["+exp=lits_dnet", f"paths.data_dir={trained / 'data'}",
                                              f"resume={run}"], tmp_path)
    line = _error_line(proc)
    assert "module.net.width=16 (the run's 4)" in line and "data.image_size=64 (the run's 32)" in line, line
    head, _, command = line.partition("Repeat the run's overrides: ")
    assert shlex.split(command) == ["python", "-m", "experiments.run", *TINY, f"paths.data_dir={trained / 'data'}",
                                    f"resume={run}"], line
    assert {p: (run / p).read_bytes() for p in kept} == kept and not (run / "failed.json").exists()


def test_resume_with_the_runs_overrides_continues(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    kept = (run / "config.yaml").read_bytes()
    longer = [*TINY, f"paths.data_dir={trained / 'data'}", "trainer.max_epochs=2", f"resume={run}"]
    # the cosine's T_max follows max_epochs: a resumed run keeps its checkpoint's schedule, so a longer one is
    # refused (a review: it restarted the lr while config.yaml said T_max 2); pinned to the run's, it continues
    assert "module.scheduler.T_max=2 (the run's 1) (a resumed run takes its optimiser and schedule from its " \
           "checkpoint" in _error_line(run_in_process("experiments.run", longer, tmp_path))
    assert (run / "config.yaml").read_bytes() == kept
    proc = run_in_process("experiments.run", [*longer, "module.scheduler.T_max=1"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_epochs"] == 2


def test_a_debug_run_and_a_real_one_do_not_continue_each_other():
    """A walkthrough resumed a ``fast_dev_run`` federation without the switch: exit 0, nothing trained, and its
    ``metrics.json`` lost ``"debug": true``, so experiments.report listed the one-batch numbers as a result."""
    real, fdr = {"trainer": {"fast_dev_run": False}}, {"trainer": {"fast_dev_run": True}}
    by_mode = {"trainer": {"fast_dev_run": False}, "debug": {"mode": "fdr", "trainer": {"fast_dev_run": True}}}
    assert debug_difference(real, real) == [] and debug_difference(fdr, by_mode) == []
    assert debug_difference(fdr, real) == ["trainer.fast_dev_run=False (the run's True: a debug run and a real "
                                           "one do not continue each other)"]
    assert debug_difference(real, by_mode) and debug_difference(by_mode, {"trainer": {}})


def test_resuming_a_real_run_as_a_debug_run_is_one_line(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    kept = (run / "config.yaml").read_bytes()
    proc = run_in_process("experiments.run", [*TINY, f"paths.data_dir={trained / 'data'}", "++trainer.fast_dev_run=true",
                                              f"resume={run}"], tmp_path)
    assert "trainer.fast_dev_run=True (the run's False" in _error_line(proc)
    assert (run / "config.yaml").read_bytes() == kept


def test_test_only_run_with_other_data_settings_is_one_line(trained, tmp_path):
    ckpt = trained / "run" / "checkpoints" / "best.ckpt"
    args = [*TINY, f"paths.data_dir={trained / 'data'}", "train=false", f"ckpt_path={ckpt}",
            f"hydra.run.dir={tmp_path / 'r'}"]
    line = _error_line(run_in_process("experiments.run", [*args, "data.image_size=64"], tmp_path))
    assert "best.ckpt" in line and "data.image_size=64 (the run's 32)" in line, line
    assert not (tmp_path / "r" / "metrics.json").exists()
    # a walkthrough: another seed split the checkpoint's own data otherwise, and its training cases were tested
    line = _error_line(run_in_process("experiments.run", [*args, "seed=7"], tmp_path))
    assert "split otherwise: data.seed=7 (the run's" in line and "trained or validated on" in line, line
    assert not (tmp_path / "r" / "metrics.json").exists()
    proc = run_in_process("experiments.run", [*args, "model.width=8"], tmp_path)  # the net comes from the checkpoint
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["module"]["net"]["width"] == 4


def test_a_finished_run_resumed_as_it_ran_is_left_as_it_is(trained, tmp_path):
    """A walkthrough repeated a stopped run's "continue with" command after the run had finished: it was tested
    again, and its metrics.json lost the last epoch's val/* and its CSV log the perf/* row."""
    run = trained / "run"
    kept = {name: (run / name).read_bytes() for name in ("metrics.json", "config.yaml", "csv/metrics.csv")}
    proc = run_in_process("experiments.run", [*TINY, f"paths.data_dir={trained / 'data'}", f"resume={run}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "has finished (its metrics.json): nothing to continue" in proc.stderr
    assert {name: (run / name).read_bytes() for name in kept} == kept


def test_a_refused_resume_of_a_finished_sweep_job_leaves_its_folder_as_it_was(trained, tmp_path):
    """A review: a sweep resumed with ``resume=true`` and a mistyped override was refused job by job, and each
    refusal wrote a failed.json, newer than the results, into the finished job's folder: the report then listed
    the good runs as failed, and the corrected resume tested them again."""
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY, f"paths.data_dir={trained / 'data'}", f"hydra.sweep.dir={sweep}"]
    assert run_in_process("experiments.run", args, tmp_path).returncode == 0
    job = next(p.parent for p in sweep.glob("*/metrics.json"))
    proc = run_in_process("experiments.run", [*args, "resume=true", "module.optimizer.lr=0.5"], tmp_path)
    assert proc.returncode == 2 and "1 of 1 sweep jobs failed" in proc.stderr, proc.stderr[-2000:]
    assert not (job / "failed.json").exists()
    time.sleep(1.1)  # a sweep counts what was refused from its start on, less a second of rounded file times
    again = run_in_process("experiments.run", [*args, "resume=true"], tmp_path)
    assert again.returncode == 0 and "has finished (its metrics.json)" in again.stderr, again.stderr[-2000:]


def test_a_resume_with_another_hydra_run_dir_is_refused(trained, tmp_path):
    """A walkthrough: ``resume=<run> hydra.run.dir=<elsewhere>`` ran the resume's checks on the other folder, and
    a FedAvg run was continued as FedProx, its ``.hydra/`` and ``run.log`` written elsewhere."""
    run, elsewhere = trained / "run", tmp_path / "elsewhere"
    proc = run_in_process("experiments.run", [*TINY, f"paths.data_dir={trained / 'data'}", f"resume={run}",
                                              "module.optimizer.lr=0.5", f"hydra.run.dir={elsewhere}"], tmp_path)
    assert proc.returncode == 2 and f"hydra.run.dir={elsewhere} is another one" in _error_line(proc), proc.stderr
    assert not elsewhere.exists()


def test_a_run_with_the_default_loggers_resumes(module_tmp, tmp_path):
    """Found by a review: W&B links a log of its offline run into ~/.cache/wandb, and the link check refused
    every resume of a run that used the default loggers (CSV + W&B); the resume tests all used logger=csv."""
    data = module_tmp("run_match_wandb") / "data"
    tiny = [a for a in TINY if a != "logger=csv"]
    run = tmp_path / "run"
    first = run_in_process("experiments.run", [*tiny, f"paths.data_dir={data}", f"hydra.run.dir={run}"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_in_process("experiments.run", [*tiny, f"paths.data_dir={data}", "trainer.max_epochs=2",
                                               "module.scheduler.T_max=1", f"resume={run}"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]


def test_a_run_config_that_does_not_parse_stops_the_resume(trained, tmp_path):
    """Found by a review: an exception in the checks (here yaml's RecursionError on a crafted config.yaml) was
    logged by Hydra, which then ran the training into the folder anyway."""
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    (run / "config.yaml").write_text("[" * 20000)
    proc = run_in_process("experiments.run", [*TINY, f"paths.data_dir={trained / 'data'}", f"resume={run}"], tmp_path)
    assert "config.yaml does not parse" in _error_line(proc)
    assert (run / "config.yaml").read_text() == "[" * 20000


def test_resume_compares_each_sites_data_and_a_distillations_teacher(tmp_path):
    """Found by a walkthrough: a federation resumed at another ``data.sites.<site>.image_size`` went on silently
    (only top-level ``data.*`` was compared), a distillation resumed with another teacher switched teachers
    mid-run, and a federated distillation resumed with more rounds reused its finished stages at the old count."""
    from omegaconf import OmegaConf

    from experiments.run_folder import another_run

    saved = {"module": {"net": {"width": 4}},
             "data": {"_target_": "x.MultiSite", "sites": {"a": {"image_size": 32, "window": [-40, 160]},
                                                            "b": {"image_size": 32, "window": [-40, 160]}}},
             "distill": {"method": "hlfd", "teacher": {"model": {"width": 4}, "ckpt": None}},
             "federation": {"rounds": 2}, "fed_distill": {"student_rounds": None}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    same = OmegaConf.create(saved)
    assert another_run(tmp_path, same) is None
    other = OmegaConf.create(saved)
    other.data.sites.b.image_size = 64
    other.distill.teacher.model.width = 8
    other.federation.rounds = 3
    line = another_run(tmp_path, other)
    assert "data.sites.b.image_size=64 (the run's 32)" in line and "distill.teacher.model.width=8 (the run's 4)" in line
    assert "federation.rounds=3 (the run's 2)" in line
    plain = {k: v for k, v in saved.items() if k not in ("distill", "fed_distill")}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(plain))
    more_rounds = OmegaConf.create({**plain, "federation": {"rounds": 5}})
    assert another_run(tmp_path, more_rounds) is None  # a plain federation goes on to more rounds


def test_a_resumed_federation_keeps_how_its_clients_are_made_and_trained(tmp_path):
    """A federation review: ``federation/strategy=fedprox clients_per_round=1 local_epochs=3
    client_val_fraction=0.5 module.optimizer.lr=0.1`` on ``resume=true`` went on silently (only the net and the
    data were compared), re-carved each client's validation split and rewrote config.yaml for every round."""
    from omegaconf import OmegaConf

    from engine.run_match import resume_keys
    from experiments.run_folder import another_run

    saved = {"module": {"net": {"width": 4}, "optimizer": {"lr": 1e-3}}, "data": {"batch_size": 8},
             "federation": {"rounds": 3, "strategy": {"_target_": "x.FedAvg"}, "clients_per_round": 1.0,
                            "local_epochs": 1, "client_val_fraction": 0.2, "executor": {"_target_": "x.Sequential"}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    changed = OmegaConf.create(saved)
    changed.federation.strategy = {"_target_": "x.FedProx", "mu": 0.01}
    changed.federation.clients_per_round, changed.federation.local_epochs = 1, 3
    changed.federation.client_val_fraction, changed.module.optimizer.lr = 0.5, 0.1
    assert "composes another run than the one in it" in another_run(tmp_path, changed)
    said = differences(saved, OmegaConf.to_container(changed), resume_keys(saved))
    for diff in ("federation.strategy._target_='x.FedProx' (the run's 'x.FedAvg')",
                 "federation.local_epochs=3 (the run's 1)",
                 "federation.client_val_fraction=0.5 (the run's 0.2)", "module.optimizer.lr=0.1 (the run's 0.001)"):
        assert diff in said, (diff, said)
    grown = OmegaConf.create(saved)
    grown.federation.rounds, grown.federation.executor = 6, {"_target_": "x.Ray"}
    assert another_run(tmp_path, grown) is None  # more rounds, on another executor: the same federation


def test_a_resumed_federated_distillation_keeps_how_its_finished_stages_trained():
    """A review: the resume check compared the rounds, strategy and student rounds only, so ``resume=<run>
    trainer.max_epochs=20`` reused the finished arms and teacher at their old length and trained the rest at the
    new one, in one table with no warning. How each stage trained is compared too."""
    from engine.run_match import resume_keys

    saved = {"fed_distill": {"arms": ["none"], "teacher_scheduler": None}, "trainer": {"max_epochs": 15},
             "module": {"optimizer": {"lr": 1e-3}}, "data": {"batch_size": 4}}
    ran = {"fed_distill": {"arms": ["none"], "teacher_scheduler": None}, "trainer": {"max_epochs": 20},
           "module": {"optimizer": {"lr": 3e-3}}, "data": {"batch_size": 8}}
    assert differences(saved, ran, resume_keys(saved)) == [
        "module.optimizer.lr=0.003 (the run's 0.001)", "trainer.max_epochs=20 (the run's 15)",
        "data.batch_size=8 (the run's 4)"]
    saved["trainer"]["limit_train_batches"], ran["trainer"] = 1.0, {"max_epochs": 15, "limit_train_batches": 5}
    ran.update(module=saved["module"], data=saved["data"])
    assert differences(saved, ran, resume_keys(saved)) == ["trainer.limit_train_batches=5 (the run's 1.0)"]
    assert differences({k: v for k, v in saved.items() if k != "fed_distill"}, ran,
                       resume_keys({"trainer": {}})) == []  # a plain run may be resumed to train longer...
    # ...where its schedule does not follow the length: a resumed run keeps its checkpoint's optimiser and
    # scheduler (a review: a new lr was ignored, and a cosine T_max from a larger max_epochs restarted the lr)
    plain = {"module": {"optimizer": {"lr": 1e-3}, "scheduler": {"T_max": 15}}}
    assert differences(plain, {"module": {"optimizer": {"lr": 1e-3}, "scheduler": {"T_max": 20}}},
                       resume_keys(plain)) == ["module.scheduler.T_max=20 (the run's 15)"]


def test_a_resumed_distillation_keeps_its_losses_protocol_and_the_sites_augmentation():
    """A review: a resume with another ``module.loss`` (L_seg of every arm, and the teacher's when
    ``distill.teacher.loss`` is null), another teacher loss, evaluation protocol or a site's augmentation reused
    the finished stages trained with the old values, in one table."""
    from engine.run_match import resume_keys

    saved = {"distill": {"method": "hlfd", "teacher": {"loss": None}}, "fed_distill": {"arms": ["none"]},
             "module": {"loss": {"base": {"gamma": 2.0}}, "eval_slices": "all"},
             "data": {"sites": {"a": {"augment": True, "rotation_limit": 15.0}}}}
    ran = {"distill": {"method": "hlfd", "teacher": {"loss": {"_target_": "x.Loss"}}}, "fed_distill": {"arms": ["none"]},
           "module": {"loss": {"base": {"gamma": 0.0}}, "eval_slices": "foreground"},
           "data": {"sites": {"a": {"augment": False, "rotation_limit": 15.0}}}}
    found = differences(saved, ran, resume_keys(saved))
    assert found == ["data.sites.a.augment=False (the run's True)",
                     "distill.teacher.loss={'_target_': 'x.Loss'} (the run's None)",
                     "module.loss.base={'gamma': 0.0} (the run's {'gamma': 2.0})",
                     "module.eval_slices='foreground' (the run's 'all')"]


def test_a_suggested_command_quotes_a_path_hydra_would_not_read_back():
    """A review: a run folder (``hydra.run.dir=/runs/lr=0.1``) or an ``init_weights`` path holding ``=``, ``,``,
    ``[`` or ``(`` went into the suggested ``resume=`` unquoted, and Hydra refused the command it was told to run.
    Each override of the command, split as a shell does, parses back to the path."""
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from engine.continue_command import continue_command, hydra_value

    parser = OverridesParser.create()
    for path in ("/runs/lr=0.1", "/runs/a,b", "/runs/x[1]", "/runs/(a)", "/d/it's=1", "/runs/plain",
                 "/x\\'y", "/a=b\\", "/a=b\\c"):  # a backslash before a quote or at the end (a review)
        words = shlex.split(continue_command(["trainer.max_epochs=2"], path))
        assert words[:3] == ["python", "-m", "experiments.run"]
        parsed = parser.parse_overrides(words[3:])
        assert [o.key_or_group for o in parsed] == ["trainer.max_epochs", "resume"]
        assert parsed[1].value() == path
        assert parser.parse_overrides([f"init_weights={hydra_value(path)}"])[0].value() == path
    assert hydra_value("/runs/plain") == "/runs/plain"  # quoted only where Hydra needs it


def test_a_resumed_run_keeps_its_augmentation():
    """A review: ``resume=<run> 'data.augmentation=[...]'`` went on and rewrote config.yaml with the new pipeline, as
    if the whole run had trained with it; a saved config from before the key existed is not compared."""
    from engine.run_match import resume_keys

    flip = [{"_target_": "albumentations.HorizontalFlip"}]
    saved = {"data": {"augment": True, "augmentation": None}}
    assert differences(saved, {"data": {"augment": True, "augmentation": flip}}, resume_keys(saved)) == [
        f"data.augmentation={flip!r} (the run's None)"]
    assert differences({"data": {"augment": True}}, {"data": {"augment": True, "augmentation": flip}},
                       resume_keys(saved)) == []
    defaults = {"data": {"sites": {"a": {}}, "site_defaults": {"augment": True, "image_size": 64}}}
    changed = {"data": {"sites": {"a": {}}, "site_defaults": {"augment": False, "image_size": 64}}}
    assert differences(defaults, changed, resume_keys(defaults)) == [
        "data.site_defaults.augment=False (the run's True)"]  # a review: what every site takes went unchecked


def test_a_stopped_sweep_is_told_the_command_that_continues_all_its_jobs():
    """A walkthrough: Ctrl-C in ``-m ... seed=1,2`` was told only the stopped job's command (no ``-m``, no seed=2)."""
    typed = ["-m", "-cn", "train", "+exp=lits_dnet", "seed=1,2", "data.window=[-40,160]", "resume=true",
             "hydra.sweep.dir=/old"]
    line = sweep_continue_command(typed, "/s w/sweep")
    assert shlex.split(line) == ["python", "-m", "experiments.run", "-m", "-cn", "train", "+exp=lits_dnet", "seed=1,2",
                                 "data.window=[-40,160]", "resume=true", "hydra.sweep.dir=/s w/sweep"]
