"""``init_weights=<file>``: a new run trains from a file's weights with a fresh optimiser and epoch count
(:mod:`engine.init_weights`), centralised and federated; a file that does not fit, or a setting it conflicts with,
is one line and exit code 2."""
from __future__ import annotations

import hashlib
import json
import logging
import pickle
from pathlib import Path

import pytest
import torch

from engine.init_weights import load_init_weights
from lightning_modules.checkpoints import save_net
from lightning_modules.errors import CheckpointError
from lightning_modules.nets.classifiers import SmallCNN
from lightning_modules.safe_load import load_checkpoint
from tests.cli import run_in_process

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ["+exp=digits_cnn", "logger=csv", "model.width=4", "++trainer.limit_train_batches=2",
          "++trainer.limit_val_batches=1", "++trainer.limit_test_batches=1"]


def _learned(state: dict) -> dict:
    """The weights an optimiser changes (batch norm's running statistics move in any training pass)."""
    return {k: v for k, v in state.items() if "running_" not in k and "num_batches_tracked" not in k}


def _net_state(ckpt: Path) -> dict:
    return {k[len("net."):]: v for k, v in load_checkpoint(ckpt)["state_dict"].items() if k.startswith("net.")}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A digits run trained 2 epochs of 2 batches: its ``best.ckpt`` (global step 4)."""
    tmp = tmp_path_factory.mktemp("init_weights")
    run = tmp / "a"
    proc = run_in_process("experiments.run", [*DIGITS, "trainer.max_epochs=2", f"hydra.run.dir={run}",
                                              f"paths.root_dir={tmp}"], ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run / "checkpoints" / "best.ckpt"


def test_a_run_from_init_weights_starts_from_them_at_epoch_0_with_a_fresh_optimiser(trained, tmp_path):
    """With lr 1e-12 the weights trained are those of the file (a fresh initialisation would differ from them), and
    the run trains its own epoch: ``ckpt_path=`` would continue the file's run at step 4 (max_epochs=1 is
    reached there already, nothing trains) where this one starts at step 0 and ends at step 2."""
    run = tmp_path / "b"
    proc = run_in_process("experiments.run", [*DIGITS, "trainer.max_epochs=1", "module.optimizer.lr=1e-12",
                                              f"init_weights={trained}", f"hydra.run.dir={run}",
                                              f"paths.root_dir={tmp_path}"], ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert (last["global_step"], last["epoch"]) == (2, 0)
    assert load_checkpoint(trained)["global_step"] == 4
    given, started = _learned(_net_state(trained)), _learned(_net_state(run / "checkpoints" / "last.ckpt"))
    assert given.keys() == started.keys() and given
    for k in given:
        assert torch.allclose(given[k], started[k], atol=1e-7), k
    assert (run / "metrics.json").is_file()


def test_a_federation_from_init_weights_starts_its_global_model_and_baselines_from_them(trained, tmp_path):
    """Round 0's global model is the file's (lr 1e-12: the final global model still is), and the evaluation
    matrix's standalone and centralised rows train from it too, so the rows compare like with like: with that lr
    every row scores as the global model does (from a fresh initialisation, the baselines would not)."""
    run = tmp_path / "fed"
    args = ["+exp=fed_digits_datashare", "logger=csv", "model.width=4", "federation.progress=false",
            "trainer.limit_train_batches=2", "federation.rounds=1", "federation.num_clients=4",
            "federation.clients_per_round=2", "federation.local_epochs=1", "federation.evaluation_matrix=true",
            "federation.matrix.max_clients=2", "module.optimizer.lr=1e-12", f"init_weights={trained}",
            f"hydra.run.dir={run}", f"paths.root_dir={tmp_path}"]
    proc = run_in_process("experiments.run", args, ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    given = _learned(_net_state(trained))
    final = _learned(torch.load(run / "global_final.pt", weights_only=True))
    assert final.keys() == given.keys()
    for k in given:
        assert torch.allclose(final[k], given[k], atol=1e-6), k
    rows = {line.split(",", 1)[0]: line.split(",", 1)[1] for line in
            (run / "evaluation_matrix.csv").read_text().splitlines()[1:]}
    assert {"0_baseline", "1_baseline", "centralised"} <= rows.keys()
    assert {rows[k] for k in ("FL_global", "0_baseline", "1_baseline", "centralised")} == {rows["FL_global"]}
    metrics = json.loads((run / "metrics.json").read_text())  # round 0's load, as a single run's
    counts = {"loaded": len(_net_state(trained)), "kept": 0, "unused": 0}
    assert {k: metrics.get(f"init_weights/{k}") for k in ("loaded", "kept", "unused")} == counts
    said = f"init_weights: the net starts from {trained}"
    assert said in proc.stdout + proc.stderr
    again = run_in_process("experiments.run", [*args, "resume=true"], ROOT)  # finished: only its finish runs again
    assert again.returncode == 0, again.stderr[-3000:]
    assert said not in again.stdout + again.stderr  # its global model is server.pt's (was: said round 0's file)
    metrics = json.loads((run / "metrics.json").read_text())
    assert {k: metrics.get(f"init_weights/{k}") for k in ("loaded", "kept", "unused")} == counts


@pytest.mark.parametrize("extra, needle", [
    (["ckpt_path={ckpt}"], "and ckpt_path={ckpt} both given: ckpt_path= continues that run's training"),
    (["train=false"], "starts training from weights, but train=false only tests"),
    (["distill=teacher"], "initialises a distillation's student"),
])
def test_init_weights_with_a_setting_it_conflicts_with_is_one_line(trained, tmp_path, extra, needle):
    proc = run_in_process("experiments.run", [*DIGITS, f"init_weights={trained}", f"paths.root_dir={tmp_path}",
                                              *[e.format(ckpt=trained) for e in extra]], ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: ConfigError: init_weights={trained}") and needle.format(ckpt=trained) in line, line


def test_a_missing_or_crafted_init_weights_file_is_one_line_and_runs_nothing(tmp_path):
    missing = run_in_process("experiments.run", [*DIGITS, f"init_weights={tmp_path / 'nope.ckpt'}",
                                                 f"paths.root_dir={tmp_path}"], ROOT)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1] == \
        f"error: ConfigError: init_weights={tmp_path / 'nope.ckpt'}: no such file; a run's checkpoints/best.ckpt, a " \
        f"student.pt or a global_final.pt"
    typo = run_in_process("experiments.run", [*DIGITS, "init_weights_strict=maybe", f"paths.root_dir={tmp_path}"], ROOT)
    assert typo.returncode == 2
    assert typo.stderr.strip().splitlines()[-1] == "error: ConfigError: init_weights_strict='maybe' must be true or false"
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    crafted = tmp_path / "crafted.ckpt"
    crafted.write_bytes(pickle.dumps({"state_dict": Payload()}))
    proc = run_in_process("experiments.run", [*DIGITS, f"init_weights={crafted}", f"paths.root_dir={tmp_path}"], ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: CheckpointError: init_weights {crafted} does not load")
    assert not marker.exists()


def _net(classes: int = 10, width: int = 4) -> SmallCNN:
    torch.manual_seed(classes + width)
    return SmallCNN(in_channels=1, num_classes=classes, width=width)


@pytest.mark.parametrize("form", ["export", "state_dict"])
def test_each_file_form_loads_strictly(tmp_path, form):
    """A deployable export (``student.pt``) and a bare state dict (``global_final.pt``) as well as a run's
    checkpoint (above)."""
    src, path = _net(), tmp_path / "w.pt"
    torch.manual_seed(0)
    dst = SmallCNN(in_channels=1, num_classes=10, width=4)
    if form == "export":
        save_net(path, src, {"_target_": "lightning_modules.nets.classifiers.SmallCNN"})
    else:
        torch.save(src.state_dict(), path)
    assert load_init_weights(dst, path)["loaded"] == len(src.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))


def test_another_head_is_refused_strictly_and_kept_fresh_otherwise(tmp_path, caplog):
    """Fine-tuning for another number of classes: strict, one line naming the first key of another shape;
    ``init_weights_strict=false`` loads the rest and keeps the new head's initialisation, saying so."""
    path = tmp_path / "ten.pt"
    torch.save(_net(10).state_dict(), path)
    three = _net(3)
    fresh = {k: v.clone() for k, v in three.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"holds another net than the run builds .*of another shape \(first: "):
        load_init_weights(three, path)
    with caplog.at_level(logging.WARNING, logger="engine.init_weights"):
        counts = load_init_weights(three, path, strict=False)
    own, ten = three.state_dict(), _net(10).state_dict()
    changed = [k for k in own if own[k].shape != ten[k].shape]
    assert changed and counts == {"loaded": len(own) - len(changed), "kept": len(changed), "unused": len(changed)}
    for k in own:
        assert torch.equal(own[k], fresh[k] if k in changed else ten[k]), k
    assert f"keep their fresh initialisation (first: {changed[0]}: [10" in caplog.text


def test_a_file_of_another_architecture_or_of_non_finite_weights_is_refused(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"encoder.stem.weight": torch.zeros(4, 1, 3, 3), "head.bias": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="none of its 2 tensors matches one of the net's by name and shape"):
        load_init_weights(_net(10, 4), other, strict=False)
    bad = _net().state_dict()
    next(v for v in bad.values() if v.is_floating_point())[0] = float("nan")
    torch.save(bad, tmp_path / "nan.pt")
    for strict in (True, False):
        with pytest.raises(CheckpointError, match="non-finite"):
            load_init_weights(_net(), tmp_path / "nan.pt", strict=strict)


def test_a_distillation_student_starts_from_init_weights_and_its_teacher_does_not(tmp_path):
    """A KD run (``+exp=kits_hlfd``) from another run's ``student.pt``: the student starts from it; the teacher
    trained first, a wider net, starts fresh (given the student's weights, its strict load would be refused)."""
    from experiments.run import dispatch
    from hydra_helpers import compose_run
    from tests.test_distill_e2e import TINY

    dispatch(compose_run(["+exp=kits_hlfd", *TINY, "distill=none"], tmp_path / "first"))  # a student.pt, no teacher
    student = tmp_path / "first" / "run" / "student.pt"
    again = tmp_path / "again"  # another data folder: no cached teacher, it is trained again
    dispatch(compose_run(["+exp=kits_hlfd", *TINY, "module.optimizer.lr=1e-12", f"init_weights={student}"], again))
    given = _learned(torch.load(student, weights_only=True)["state_dict"])
    started = _learned(_net_state(again / "run" / "checkpoints" / "last.ckpt"))
    assert given.keys() == started.keys() and given
    for k in given:
        assert torch.allclose(given[k], started[k], atol=1e-7), k
    assert list((again / "data" / "teachers").glob("*.ckpt"))


def test_a_federated_distillation_refuses_init_weights(trained, tmp_path):
    proc = run_in_process("experiments.run", ["+exp=fed_kits_hlfd", "logger=csv", f"init_weights={trained}",
                                              f"paths.root_dir={tmp_path}"], ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: ConfigError: init_weights={trained}: a federated distillation trains its teacher and students from "
        f"their fresh initialisation; it does not take init_weights")


def test_a_relative_init_weights_path_is_recorded_absolute(tmp_path, monkeypatch):
    """``config.yaml`` and the processes a federation starts elsewhere (a Flower ServerApp) see where it was."""
    from omegaconf import OmegaConf

    from engine.init_weights import check_init_weights

    torch.save(_net().state_dict(), tmp_path / "w.pt")
    monkeypatch.chdir(tmp_path)
    cfg = OmegaConf.create({"init_weights": "w.pt", "train": True, "ckpt_path": None, "model": {
        "_target_": "lightning_modules.nets.classifiers.SmallCNN", "in_channels": 1, "num_classes": 10, "width": 4}})
    OmegaConf.set_struct(cfg, True)
    check_init_weights(cfg)
    assert cfg.init_weights == str(tmp_path / "w.pt")
    assert cfg.init_weights_sha256 == hashlib.sha256((tmp_path / "w.pt").read_bytes()).hexdigest()  # which weights


def test_a_regularised_net_starts_from_its_own_run_a_plain_net_or_a_federation_of_it(tmp_path):
    """A review: a run with paper 003's VAE branch (``+module/regulariser=vae``) loaded no file: its run's
    checkpoint keeps the inner net's tensors (``net.net.*``), a plain net's file has them as they are, and only a
    federation's ``global_final.pt`` holds the whole wrapper's."""
    from hydra_helpers import compose_run

    from engine.init_weights import trained_net

    cfg = compose_run(["+exp=lits_dnet", "model.width=4", "+module/regulariser=vae", "logger=csv"], tmp_path)
    torch.manual_seed(1)
    src = trained_net(cfg)
    files = {"run": {"state_dict": {f"net.{k}": v for k, v in src.state_dict().items()},
                     "hyper_parameters": {"regulariser": {"_target_": "VAERegularised"}}},
             "plain": src.net.state_dict(), "federation": src.state_dict()}
    for name, payload in files.items():
        torch.save(payload, tmp_path / f"{name}.pt")
        torch.manual_seed(2)
        fresh = trained_net(cfg)
        load_init_weights(fresh, tmp_path / f"{name}.pt")
        for k, v in src.net.state_dict().items():
            assert torch.equal(fresh.net.state_dict()[k], v), (name, k)


def test_fedbn_clients_start_their_local_batch_norm_from_init_weights(trained, tmp_path, monkeypatch):
    """A review: under FedBN the global model started from the file but each client's batch norm, which never
    travels, started fresh (weight 1), so the clients trained pre-trained convolutions with untrained batch norm.
    A later one: the clients read the file themselves (a Flower site never does, a Ray node may not have it); the
    server now sends its local entries, and the file is gone before the first client runs."""
    import federation.runner as runner

    state = _net_state(trained)
    bn = [k for k in state if k.endswith(".weight") and state[k].dim() == 1]
    assert bn
    for k in bn:
        state[k] = torch.full_like(state[k], 5.0)
    torch.save(state, tmp_path / "bn5.pt")
    run_client = runner.run_client

    def file_gone_then_run(*args, **kwargs):  # the server has read it; no client can
        if (tmp_path / "bn5.pt").exists():
            (tmp_path / "bn5.pt").rename(tmp_path / "moved.pt")
        return run_client(*args, **kwargs)

    monkeypatch.setattr(runner, "run_client", file_gone_then_run)
    run = tmp_path / "fed"
    proc = run_in_process("experiments.run", [
        "+exp=fed_digits_datashare", "logger=csv", "model.width=4", "federation.progress=false",
        "federation/strategy=fedbn", "trainer.limit_train_batches=2", "federation.rounds=1",
        "federation.num_clients=2", "federation.clients_per_round=2", "federation.local_epochs=1",
        "module.optimizer.lr=1e-12", f"init_weights={tmp_path / 'bn5.pt'}", f"hydra.run.dir={run}",
        f"paths.root_dir={tmp_path}"], ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "moved.pt").exists()
    stored = [torch.load(p, weights_only=True) for p in sorted((run / "client_store").glob("*.pt"))]
    local = [s["local_state"] for s in stored if isinstance(s, dict) and s.get("local_state")]
    assert len(local) == 2
    for entries in local:
        for k in bn:
            assert torch.allclose(entries[k], torch.full_like(entries[k], 5.0), atol=1e-6), k


def test_a_resume_keeps_the_weights_the_run_started_from_and_a_new_run_never_overwrites_them(trained, tmp_path):
    """A review: ``resume=true`` without ``init_weights=`` rewrote the run's config.yaml with none (its report
    label and a federation's baselines then said "fresh"); and a new run in a folder holding the file it starts
    from moved the rest aside and wrote its own over that file."""
    run = tmp_path / "c"
    args = [*DIGITS, "trainer.max_epochs=1", f"hydra.run.dir={run}", f"paths.root_dir={tmp_path}"]
    assert run_in_process("experiments.run", [*args, f"init_weights={trained}"], ROOT).returncode == 0
    again = run_in_process("experiments.run", [*args, "trainer.max_epochs=2", "resume=true"], ROOT)
    assert again.returncode == 2
    assert f"init_weights=None (the run's '{trained}')" in again.stderr.strip().splitlines()[-1]
    kept = run_in_process("experiments.run", [*args, "trainer.max_epochs=2", "resume=true", f"init_weights={trained}"],
                          ROOT)  # its metrics.json still says what the file gave (the weights are last.ckpt's)
    assert kept.returncode == 0, kept.stderr[-2000:]
    assert json.loads((run / "metrics.json").read_text())["init_weights/loaded"] == len(_net_state(trained))
    inside = run / "student.pt"  # what a distillation run writes there
    inside.write_bytes(trained.read_bytes())
    before = sorted(p.name for p in run.iterdir())
    fresh = run_in_process("experiments.run", [*args, f"init_weights={inside}"], ROOT)
    assert fresh.returncode == 2
    assert fresh.stderr.strip().splitlines()[-1] == (
        f"error: init_weights={inside} is among the files this new run moves aside or writes in {run}: copy it "
        f"elsewhere first, or give this run another folder")
    assert sorted(p.name for p in run.iterdir()) == before
    own = run / "pretrained" / "x.ckpt"  # a folder of the user's own: neither moved nor written (a review)
    own.parent.mkdir()
    own.write_bytes(trained.read_bytes())
    assert run_in_process("experiments.run", [*args, f"init_weights={own}"], ROOT).returncode == 0
    assert own.read_bytes() == trained.read_bytes()


def test_a_resume_from_a_file_replaced_at_the_same_path_is_refused(trained, tmp_path):
    """``config.yaml`` keeps the file's SHA-256 beside its path; a resume whose file now holds other bytes (a
    retrained model saved over it) is refused in one line, and goes on once the file it started from is back."""
    import yaml

    run, weights = tmp_path / "r", tmp_path / "w.ckpt"
    weights.write_bytes(trained.read_bytes())
    args = [*DIGITS, "trainer.max_epochs=1", f"hydra.run.dir={run}", f"paths.root_dir={tmp_path}",
            f"init_weights={weights}"]
    assert run_in_process("experiments.run", args, ROOT).returncode == 0
    recorded = yaml.safe_load((run / "config.yaml").read_text())["init_weights_sha256"]
    assert recorded == hashlib.sha256(trained.read_bytes()).hexdigest()
    torch.save(_net().state_dict(), weights)  # another model saved over the file, same path
    again = run_in_process("experiments.run", [*args, "trainer.max_epochs=2", "resume=true"], ROOT)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1] == (
        f"error: resume={run}: init_weights={weights} holds other weights than when the run started (sha256 "
        f"{hashlib.sha256(weights.read_bytes()).hexdigest()[:12]}... now, {recorded[:12]}... then): put back the "
        f"file it started from to resume the run"), again.stderr[-2000:]  # no command to repeat: it cannot help
    requeued = run_in_process("experiments.run", [*args, "trainer.max_epochs=2"], ROOT, env={"SLURM_RESTART_COUNT": "1"})
    assert requeued.returncode == 2  # a review: a requeue (resume set by itself) skipped the check and recorded
    assert requeued.stderr.strip().splitlines()[-1].startswith(  # the new file's checksum in config.yaml
        f"error: SLURM requeue 1: resume={run}: init_weights={weights} holds other weights than when the run "
        f"started"), \
        requeued.stderr[-2000:]
    assert yaml.safe_load((run / "config.yaml").read_text())["init_weights_sha256"] == recorded
    assert not (run / "failed.json").exists()  # refused before anything ran: the finished run's folder as it was
    hydra = {p.name: p.read_bytes() for p in (run / ".hydra").iterdir()}
    weights.unlink()  # gone: refused with the other resume checks, before Hydra writes into the finished run
    gone = run_in_process("experiments.run", [*args, "trainer.max_epochs=2", "resume=true"], ROOT)
    assert gone.returncode == 2
    assert gone.stderr.strip().splitlines()[-1] == (
        f"error: resume={run}: init_weights={weights}, the file this run started from, is gone (sha256 "
        f"{recorded[:12]}... when it started): put it back to resume the run"), gone.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in (run / ".hydra").iterdir()} == hydra
    assert not (run / "failed.json").exists()
    weights.write_bytes(trained.read_bytes())
    back = run_in_process("experiments.run", [*args, "trainer.max_epochs=2", "resume=true"], ROOT)
    assert back.returncode == 0, back.stderr[-2000:]


def test_a_sweep_job_in_a_reused_folder_does_not_overwrite_the_file_it_starts_from(tmp_path):
    """A review: the single run's refusal did not cover a sweep's job, whose new run kept the named
    ``best.ckpt``, wrote ``best-v1.ckpt`` beside it and replaced ``last.ckpt``."""
    sweep = ["-m", *DIGITS, "trainer.max_epochs=1", f"hydra.sweep.dir={tmp_path / 'S'}", "hydra.sweep.subdir=job",
             f"paths.root_dir={tmp_path}"]
    assert run_in_process("experiments.run", [*sweep, "seed=1"], ROOT).returncode == 0
    best = tmp_path / "S" / "job" / "checkpoints" / "best.ckpt"
    kept = {p.name: p.read_bytes() for p in best.parent.iterdir()}
    proc = run_in_process("experiments.run", [*sweep, "seed=2", f"init_weights={best}"], ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "is where this new run (train=true) saves its own checkpoint" in proc.stderr
    assert {p.name: p.read_bytes() for p in best.parent.iterdir()} == kept


def test_a_file_that_does_not_fit_the_student_is_refused_before_its_teacher_trains(trained, tmp_path):
    """A review: a digits net's file given to a kidney distillation was refused only after the teacher's stage."""
    from tests.test_distill_e2e import TINY

    proc = run_in_process("experiments.run", ["+exp=kits_hlfd", *TINY, f"init_weights={trained}",
                                              f"paths.root_dir={tmp_path}"], ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "holds another net than the run builds" in proc.stderr.strip().splitlines()[-1]
    assert not list(tmp_path.rglob("*.ckpt")) and not (tmp_path / "data").exists()


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> Path:
    """An ImageNet-style backbone as a user brings it: torchvision's ``resnet18(weights=None)`` state dict
    (``conv1.weight``, ``layer1.0...``, ``fc.weight``), saved with ``torch.save`` (nothing is downloaded)."""
    from torchvision.models import resnet18

    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("backbone") / "resnet18.pt"
    torch.save(resnet18(weights=None).state_dict(), path)
    return path


def test_a_classification_backbone_loads_into_the_encoder_with_init_weights_module(resnet18_file, caplog):
    """``init_weights_module=encoder``: the file's keys are the encoder's (an smp U-Net's ResNet-18), not the
    net's; strictly its ``fc.*`` (the classifier head) is refused by name (smp's encoder would drop it silently),
    by matching name and shape every encoder tensor is the file's, the decoder keeps its initialisation."""
    import segmentation_models_pytorch as smp

    from lightning_modules.errors import ConfigError

    torch.manual_seed(4)
    net = smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=2)
    decoder = {k: v.clone() for k, v in net.decoder.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"holds another module than the net's init_weights_module=encoder "
                                              r"\(init_weights_strict=false .*: 2 unexpected \(first: fc.weight\)$"):
        load_init_weights(net, resnet18_file, module="encoder")
    with pytest.raises(CheckpointError, match="none of its 122 tensors matches"):  # the whole net: nothing matches
        load_init_weights(net, resnet18_file, strict=False)
    counts = load_init_weights(net, resnet18_file, strict=False, module="encoder")
    given, own = torch.load(resnet18_file, weights_only=True), net.encoder.state_dict()
    assert counts == {"loaded": len(own), "kept": 0, "unused": 2} and len(given) == len(own) + 2
    # the warning counts the encoder's tensors, not the net's (a walkthrough: "119 of the net's 120")
    assert f"loaded {len(own)} of encoder's {len(own)} tensors; 0 keep" in caplog.text
    for k, v in own.items():
        assert torch.equal(v, given[k]), k
    assert all(torch.equal(v, decoder[k]) for k, v in net.decoder.state_dict().items())
    with pytest.raises(ConfigError) as err:
        load_init_weights(net, resnet18_file, strict=False, module="encoder.layer9")
    assert str(err.value) == ("init_weights_module=encoder.layer9 names no sub-module of the net (Unet); its "
                              "top-level children: encoder, decoder, segmentation_head")


def test_init_weights_module_naming_no_sub_module_or_without_a_file_is_one_line(tmp_path):
    torch.save(_net().state_dict(), tmp_path / "w.pt")
    typo = run_in_process("experiments.run", [*DIGITS, f"init_weights={tmp_path / 'w.pt'}", "init_weights_module=enc",
                                              f"paths.root_dir={tmp_path}"], ROOT)
    assert typo.returncode == 2, typo.stderr[-2000:]
    assert typo.stderr.strip().splitlines()[-1] == (
        "error: ConfigError: init_weights_module=enc names no sub-module of the net (SmallCNN); its top-level "
        "children: features, head")
    alone = run_in_process("experiments.run", [*DIGITS, "init_weights_module=features", f"paths.root_dir={tmp_path}"],
                           ROOT)
    assert alone.returncode == 2, alone.stderr[-2000:]
    assert alone.stderr.strip().splitlines()[-1] == (
        "error: ConfigError: init_weights_module=features names where the file's tensors load, but no init_weights= "
        "file is given")


def test_a_student_encoder_from_a_backbone_file_end_to_end_and_its_resume(resnet18_file, tmp_path):
    """A segmentation run (``+exp=kits_hlfd distill=none``: the ResNet-18 student, one input channel) from a
    torchvision backbone: its ``metrics.json`` says what loaded (the 3-channel ``conv1.weight`` keeps its fresh
    initialisation, it and ``fc.*`` are unused), the encoder trained is the file's (lr 1e-12); a resume naming
    another ``init_weights_module`` is refused."""
    from tests.test_distill_e2e import TINY

    run = tmp_path / "r"
    args = ["+exp=kits_hlfd", *TINY, "distill=none", f"init_weights={resnet18_file}", "init_weights_strict=false",
            f"hydra.run.dir={run}", f"paths.root_dir={tmp_path}"]
    proc = run_in_process("experiments.run", [*args, "init_weights_module=encoder", "module.optimizer.lr=1e-12"],
                          ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    given = torch.load(resnet18_file, weights_only=True)
    metrics = json.loads((run / "metrics.json").read_text())
    assert {k: metrics.get(f"init_weights/{k}") for k in ("loaded", "kept", "unused")} == {
        "loaded": len(given) - 3, "kept": 1, "unused": 3}
    started = _learned({k[len("encoder."):]: v for k, v in _net_state(run / "checkpoints" / "last.ckpt").items()
                        if k.startswith("encoder.") and k != "encoder.conv1.weight"})
    assert started
    for k, v in started.items():
        assert torch.allclose(v, given[k], atol=1e-7), k
    again = run_in_process("experiments.run", [*args, "init_weights_module=encoder.layer1", "resume=true",
                                               "module.optimizer.lr=1e-12"], ROOT)
    assert again.returncode == 2, again.stderr[-2000:]
    assert "init_weights_module='encoder.layer1' (the run's 'encoder')" in again.stderr.strip().splitlines()[-1]


def test_a_folder_as_init_weights_is_one_line_naming_the_file_in_it(trained, tmp_path):
    """A walkthrough: ``init_weights=<run>/checkpoints`` (or the run's folder) ended in an IsADirectoryError
    traceback (exit 1) from hashing the file, with no failed.json."""
    for folder, suggested in ((trained.parent, trained), (trained.parent.parent, trained)):
        run = tmp_path / folder.name
        proc = run_in_process("experiments.run", [*DIGITS, f"init_weights={folder}", f"hydra.run.dir={run}",
                                                  f"paths.root_dir={tmp_path}"], ROOT)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines() == [
            f"error: ConfigError: init_weights={folder} is a folder: name the file in it, e.g. init_weights={suggested}"]
        assert "is a folder" in json.loads((run / "failed.json").read_text())["error"]
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_in_process("experiments.run", [*DIGITS, f"init_weights={empty}", f"paths.root_dir={tmp_path}"], ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: ConfigError: init_weights={empty} is a folder: name a file, a run's checkpoints/best.ckpt, a "
        f"student.pt or a global_final.pt")


def test_a_refused_resume_suggests_the_recorded_absolute_init_weights_path(trained, tmp_path):
    """A walkthrough: a run started (or last resumed) with ``init_weights=<relative path>`` from another working
    directory was told to repeat ``init_weights=<that relative path>``, which the suggested command then refused."""
    where = tmp_path / "elsewhere"
    where.mkdir()
    (where / "w.ckpt").write_bytes(trained.read_bytes())
    run = tmp_path / "run"
    first = run_in_process("experiments.run", [*DIGITS, "trainer.max_epochs=1", "test=false", "init_weights=w.ckpt",
                                               f"hydra.run.dir={run}", f"paths.root_dir={tmp_path}"], where)
    assert first.returncode == 0, first.stderr[-2000:]
    proc = run_in_process("experiments.run", [*DIGITS, "trainer.max_epochs=1", "test=false", f"resume={run}",
                                              f"paths.root_dir={tmp_path}"], ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert f" init_weights={where / 'w.ckpt'} " in line and "init_weights=w.ckpt" not in line, line


def test_a_resume_naming_a_link_to_the_file_it_started_from_is_that_file(tmp_path):
    """A resume compares ``init_weights`` resolved: a symlink to the file the run started from (or the file, for a
    run started from a link) is the same weights, whose bytes :func:`started_file_problem` checks apart; another
    file is still a difference (was: compared as link paths, so the same file by a link was refused)."""
    from engine.init_weights import SHA, resume_difference, started_file_problem
    from lightning_modules.atomic import file_sha256

    weights, other = tmp_path / "best.ckpt", tmp_path / "other.ckpt"
    weights.write_bytes(b"weights")
    other.write_bytes(b"other")
    link = tmp_path / "link.ckpt"
    link.symlink_to(weights)
    saved = {"init_weights": str(weights), "init_weights_strict": True, SHA: file_sha256(weights)}
    assert resume_difference(saved, {"init_weights": str(link), "init_weights_strict": True}) == []
    assert started_file_problem(saved, {"init_weights": str(link)}) is None
    from_link = {**saved, "init_weights": str(link)}
    assert resume_difference(from_link, {"init_weights": str(weights), "init_weights_strict": True}) == []
    assert resume_difference(saved, {"init_weights": str(other), "init_weights_strict": True}) == [
        f"init_weights={str(other)!r} (the run's {str(weights)!r})"]
    weights.write_bytes(b"retrained")  # the link's file holds other bytes now: refused by its checksum
    assert "holds other weights" in started_file_problem(saved, {"init_weights": str(link)})


def test_a_fifo_or_a_link_to_nothing_as_init_weights_is_one_line_not_a_hang(tmp_path):
    """A review: the file was hashed before anything checked it was a regular file, so a FIFO without a writer
    blocked the run for ever (and ``/dev/zero`` read for ever); a link to nothing is named as one too."""
    import os
    import threading

    from omegaconf import OmegaConf

    from engine.init_weights import check_init_weights
    from lightning_modules.errors import ConfigError

    fifo, dangling = tmp_path / "weights.fifo", tmp_path / "gone.ckpt"
    os.mkfifo(fifo)
    dangling.symlink_to(tmp_path / "nothing.ckpt")
    for path, what in ((fifo, "is not a regular file (a FIFO, socket or device)"), (dangling, "is a link to nothing")):
        raised: list[BaseException] = []

        def check(path=path):
            try:
                check_init_weights(OmegaConf.create({"init_weights": str(path)}))
            except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
                raised.append(exc)

        thread = threading.Thread(target=check, daemon=True)
        thread.start()
        thread.join(timeout=10)
        if thread.is_alive():
            with open(fifo, "wb"):  # unblock the hashing reader so the daemon thread ends
                pass
            pytest.fail(f"check_init_weights({path}) still reading after 10 s")
        assert len(raised) == 1 and isinstance(raised[0], ConfigError), raised
        assert str(raised[0]) == f"init_weights={path} {what}; a run's checkpoints/best.ckpt, a student.pt or a " \
                                 f"global_final.pt"


def test_a_file_changed_after_its_checksum_was_recorded_is_refused_at_the_load(trained, tmp_path):
    """A review: the checksum was taken at the start and the file loaded again later (a distillation's student
    after its teacher trained; a Flower ServerApp when ``flwr run`` is typed), so config.yaml could name bytes the
    run did not train from. The load compares the file with the recorded checksum."""
    from omegaconf import OmegaConf

    from engine.init_weights import SHA, init_from_config, trained_net
    from lightning_modules.atomic import file_sha256
    from lightning_modules.errors import ConfigError
    from tests.hydra_helpers import compose_run

    weights = tmp_path / "w.ckpt"
    weights.write_bytes(trained.read_bytes())
    cfg = compose_run([*DIGITS[:3], f"init_weights={weights}"], tmp_path)
    OmegaConf.update(cfg, SHA, file_sha256(weights), force_add=True)
    assert init_from_config(cfg, trained_net(cfg), quiet=True)["loaded"] == len(_net_state(trained))
    recorded = cfg[SHA]
    torch.save(_net().state_dict(), weights)  # saved over between the check and the load
    with pytest.raises(ConfigError, match=rf"init_weights={weights} changed since the run recorded it \(sha256 "
                                          rf"{file_sha256(weights)[:12]}\.\.\. now, {recorded[:12]}\.\.\. in its "
                                          rf"config.yaml\)"):
        init_from_config(cfg, trained_net(cfg), quiet=True)
