"""DistillationModule: frozen teacher, trainable student + adapters, hook taps, checkpoints, errors."""
from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from engine.builders import ConfigError
from engine.errors import CheckpointError
from lightning_modules.distillation import (
    DistillationModule, NonFiniteLossError, load_student, save_student,
)
from lightning_modules.losses.kd import KDLoss
from lightning_modules.segmentation import SegmentationModule

TEACHER = {"_target_": "lightning_modules.nets.nested_unet.NestedUNet", "in_channels": 1, "classes": 2,
           "preset": "tiny", "width": 4, "deep_supervision": True}
STUDENT = {"_target_": "lightning_modules.nets.student.ResNet18Student", "in_channels": 1, "classes": 2}
LOSS = {"_target_": "lightning_modules.losses.deep_supervision.DeepSupervisionLoss",
        "base": {"_target_": "lightning_modules.losses.focal_dice.FocalDiceLoss"}}
HLFD = {"_target_": "lightning_modules.losses.kd.HLFDLoss", "beta": 0.9, "lam": 0.1}
TAPS = [
    {"role": "student_early", "student": "encoder.layer1"},
    {"role": "student_mid", "student": "encoder.layer2"},
    {"role": "student_mid", "student": "encoder.layer3"},
    {"role": "student_late", "student": "encoder.layer4"},
    {"role": "teacher_mid", "teacher": "conv1_0"},
    {"role": "teacher_mid", "teacher": "conv2_0"},
    {"role": "teacher_mid", "teacher": "conv3_0"},
    {"role": "teacher_late", "teacher": "conv4_0"},
    {"role": "teacher_pred_mid", "teacher": "conv0_1", "head": "final1"},
    {"role": "teacher_pred_mid", "teacher": "conv0_2", "head": "final2"},
    {"role": "teacher_pred_mid", "teacher": "conv0_3", "head": "final3"},
    {"role": "teacher_pred_late", "teacher": "conv0_4", "head": "final4"},
]


def make(**kw) -> DistillationModule:
    args = dict(net=STUDENT, teacher=TEACHER, kd_loss=HLFD, taps=TAPS, loss=LOSS, num_classes=2,
                example_size=32, method="hlfd")
    args.update(kw)
    return DistillationModule(**args)


def batch(b: int = 2, size: int = 32) -> dict:
    mask = torch.zeros(b, size, size, dtype=torch.long)
    mask[:, 10:20, 12:22] = 1
    return {"image": torch.rand(b, 1, size, size), "mask": mask, "case_id": [f"c{i}" for i in range(b)],
            "slice_index": torch.arange(b)}


def no_hooks(net: nn.Module) -> bool:
    return all(len(m._forward_hooks) == 0 for m in net.modules())


def test_train_step_keeps_teacher_frozen_and_trains_adapters():
    module = make()
    module.train()
    assert not module.teacher.training and all(not m.training for m in module.teacher.modules())
    assert all(not p.requires_grad for p in module.teacher.parameters())
    before = copy.deepcopy(module.teacher.state_dict())
    opt = module.configure_optimizers()
    module.teacher.requires_grad_(True)  # so "no teacher gradient" is the step's doing (no_grad), not the flag's
    loss = module.training_step(batch(), 0)
    loss.backward()
    heads = [module.kd_loss.early_head, *module.kd_loss.mid_heads]
    for head in heads:  # adapters (predictive heads) receive gradients
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert all(p.requires_grad and p.grad is None for p in module.teacher.parameters())
    module.teacher.requires_grad_(False)
    opt.step()
    after = module.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical, BN buffers included


def test_optimizer_holds_only_student_and_adapters():
    module = make()
    opt = module.configure_optimizers()
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    expected = {id(p) for p in [*module.net.parameters(), *module.kd_loss.parameters()]}
    assert in_opt == expected
    assert not in_opt & {id(p) for p in module.teacher.parameters()}
    assert module.kd_loss.early_head.in_channels == 64  # inferred from encoder.layer1
    assert [h.in_channels for h in module.kd_loss.mid_heads] == [128, 256]


def test_hooks_capture_declared_shapes_and_are_removed():
    module = make()
    module.attach_taps()
    b = batch()
    t_out = module.teacher(b["image"])
    s_out = module.net(b["image"])
    roles = module.kd_inputs(b, s_out, t_out)
    assert roles["student_early"].shape == (2, 64, 8, 8)
    assert [t.shape for t in roles["student_mid"]] == [(2, 128, 4, 4), (2, 256, 2, 2)]
    assert roles["student_late"].shape == (2, 512, 1, 1)
    assert [t.shape[1] for t in roles["teacher_mid"]] == [8, 16, 32]
    assert roles["teacher_late"].shape == (2, 64, 2, 2)
    assert [t.shape for t in roles["teacher_pred_mid"]] == [(2, 2, 32, 32)] * 3
    assert torch.allclose(roles["teacher_pred_late"], t_out)  # final4 on conv0_4 == teacher output
    assert not roles["teacher_late"].requires_grad and roles["student_late"].requires_grad
    assert not no_hooks(module.net) and not no_hooks(module.teacher)
    module.teardown("fit")
    assert no_hooks(module.net) and no_hooks(module.teacher)


def test_two_taps_on_one_module_read_their_own_index():
    """A review: taps kept one index a module, so ``encoder`` (smp's ResNet: a list of its stages) tapped at stages 3
    and 4 gave stage 4 twice, and the predictive heads were built for 256 channels both."""
    stages = [{"role": "student_mid", "student": "encoder", "index": 3},
              {"role": "student_mid", "student": "encoder", "index": 4}]
    module = make(taps=TAPS[:1] + stages + TAPS[3:])
    assert [h.in_channels for h in module.kd_loss.mid_heads] == [128, 256]
    module.attach_taps()
    b = batch()
    roles = module.kd_inputs(b, module.net(b["image"]), module.teacher(b["image"]))
    assert [t.shape for t in roles["student_mid"]] == [(2, 128, 4, 4), (2, 256, 2, 2)]
    maps = module.intermediate_predictions(b["image"])  # the heads read their own stage here too (else: a shape error)
    assert [m.shape for m in maps.values()] == [(2, 2, 32, 32)] * len(maps) and len(maps) == 4
    module.teardown("fit")


def test_fit_leaves_teacher_untouched_and_no_hooks():
    module = make(kd_loss={"_target_": "lightning_modules.losses.kd.HIFDLoss"},
                  taps=[TAPS[1], TAPS[2], TAPS[7], TAPS[11]], method="hifd")
    before = copy.deepcopy(module.teacher.state_dict())
    data = [batch(2) for _ in range(2)]
    loader = DataLoader(data, batch_size=None)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=loader)
    assert all(torch.equal(before[k], v) for k, v in module.teacher.state_dict().items())
    assert not module.teacher.training
    assert no_hooks(module.net) and no_hooks(module.teacher)
    assert "train/kd/feature" in trainer.callback_metrics and "train/kd/total_kd" in trainer.callback_metrics


def _fit_eval_mode_warnings(module: DistillationModule) -> list[str]:
    import warnings
    loader = DataLoader([batch(2)], batch_size=None)
    trainer = pl.Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, train_dataloaders=loader)
    assert warnings.filters == filters  # the frozen teacher's filter lives for one fit only
    return [str(w.message) for w in caught if "in eval mode at the start of training" in str(w.message)]


def test_frozen_teacher_alone_in_eval_mode_does_not_warn_a_student_left_in_eval_does():
    """Lightning warns of eval-mode modules at the start of training: the frozen teacher is intended, so
    quiet; a student layer in eval mode (BatchNorm not learning its statistics) is not, so still warned."""
    module = make(kd_loss={"_target_": "lightning_modules.losses.kd.HIFDLoss"},
                  taps=[TAPS[1], TAPS[2], TAPS[7], TAPS[11]], method="hifd")
    assert _fit_eval_mode_warnings(module) == []
    module.net.encoder.layer1.eval()
    n = sum(1 for m in module.modules() if not m.training)
    assert _fit_eval_mode_warnings(module) == [
        f"Found {n} module(s) in eval mode at the start of training. This may lead to unexpected behavior "
        "during training. If this is intentional, you can ignore this warning."]


def test_bad_hook_path_names_path_and_close_matches():
    taps = [dict(t) for t in TAPS]
    taps[0]["student"] = "encoder.layr1"
    with pytest.raises(ConfigError, match=r"encoder\.layr1.*encoder\.layer1"):
        make(taps=taps)
    taps = [dict(t) for t in TAPS]
    taps[4]["teacher"] = "conv1_9"
    with pytest.raises(ConfigError, match=r"conv1_9.*close matches"):
        make(taps=taps)


def test_config_errors_for_roles_and_pairs():
    with pytest.raises(ConfigError, match="teacher_late"):  # HLFD needs a role that is not declared
        make(taps=[t for t in TAPS if t["role"] != "teacher_late"])
    with pytest.raises(ConfigError, match=r"in_channels=3.*in_channels=1"):
        make(teacher={**TEACHER, "in_channels": 3})
    with pytest.raises(ConfigError, match=r"predicts 3 classes.*predicts 2"):
        make(teacher={**TEACHER, "classes": 3})
    with pytest.raises(ConfigError, match="produced no output"):  # a head that eval mode never runs
        make(taps=[*TAPS[:8], {"role": "teacher_pred_mid", "teacher": "final1"}])


def test_a_kd_loss_target_is_checked_before_anything_it_names_is_imported():
    """A walkthrough: a typo in ``distill.loss._target_`` was Hydra's multi-line error, exit 1 (the loss class was
    read before the allow-list check). A checkpoint's KD loss is data too: a module it names outside the project is
    refused before it is imported (importing runs a module's code)."""
    import sys

    with pytest.raises(ConfigError, match=r"^distill.loss _target_ 'lightning_modules.losses.logit_mse.LogitMSE' "
                                          r"does not resolve \(ModuleNotFoundError: No module named"):
        make(kd_loss={"_target_": "lightning_modules.losses.logit_mse.LogitMSE"})
    sys.modules.pop("this", None)
    with pytest.raises(ConfigError, match=r"^distill.loss _target_ 'this.Zen' refused"):
        make(kd_loss={"_target_": "this.Zen"})  # the standard library's `this` prints the Zen when imported
    assert "this" not in sys.modules


def _teacher_ckpt(tmp_path, net_cfg) -> tuple:
    seg = SegmentationModule(net=net_cfg, loss=LOSS, num_classes=2)
    path = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": seg.state_dict(), "hyper_parameters": dict(seg.hparams)}, path)
    return path, seg


def test_teacher_checkpoint_loads_and_checks_architecture(tmp_path):
    path, seg = _teacher_ckpt(tmp_path, TEACHER)
    module = make(teacher_ckpt=str(path))
    assert all(torch.equal(v, seg.net.state_dict()[k]) for k, v in module.teacher.state_dict().items())
    module = make(teacher=None, teacher_ckpt=str(path))  # net config taken from the checkpoint
    assert type(module.teacher).__name__ == "NestedUNet"
    with pytest.raises(CheckpointError, match=r"teacher\.ckpt.*width"):
        make(teacher={**TEACHER, "width": 8}, teacher_ckpt=str(path))
    dnet = {"_target_": "lightning_modules.nets.dnet.DNet", "in_channels": 1, "classes": 2, "width": 4}
    with pytest.raises(CheckpointError, match=r"teacher\.ckpt.*_target_"):
        make(teacher=dnet, teacher_ckpt=str(path))
    bad = tmp_path / "garbage.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.ckpt"):
        make(teacher_ckpt=str(bad))
    with pytest.raises(CheckpointError, match="missing.ckpt"):
        make(teacher_ckpt=str(tmp_path / "missing.ckpt"))


def test_side_heads_of_a_teacher_trained_without_deep_supervision_are_refused(tmp_path):
    """A review: HLFD's p_mid^t (Eq. 3) runs UNet++'s side heads, which only deep supervision trains; a teacher
    checkpoint trained with ``deep_supervision=false`` loaded against the default config (flag on) without a word,
    and L_UPD pulled the student towards random projections. Refused now, from the checkpoint's stored config or
    the teacher's own; the main head (run by the eval forward) stays allowed."""
    plain = {**TEACHER, "deep_supervision": False}
    path, _ = _teacher_ckpt(tmp_path, plain)
    for kw in (dict(teacher_ckpt=str(path)), dict(teacher=None, teacher_ckpt=str(path)), dict(teacher=plain)):
        with pytest.raises(ConfigError, match=r"\['final1', 'final2', 'final3'\] learn only under deep supervision"):
            make(**kw)
    main_only = [t for t in TAPS if t.get("head") in (None, "final4")]
    pixel_kd = {"_target_": "lightning_modules.losses.kd.PixelKDLoss"}
    assert make(teacher_ckpt=str(path), taps=main_only, kd_loss=pixel_kd, method="pixel_kd").teacher is not None
    ds_path = tmp_path / "ds"
    ds_path.mkdir()
    make(teacher_ckpt=str(_teacher_ckpt(ds_path, TEACHER)[0]))  # trained with it: allowed


def test_intermediate_maps_at_a_size_the_student_pads_line_up_with_the_image():
    """A review: the Fig. 2 maps (``intermediate_predictions``) were resized from the student's padded grid straight
    to the image, shifting them (~2 px at 60 px). An image of 60 px and the same image zero-padded to 64 (what the
    student pads it to) give the same tapped features, so the maps must agree on the image's own 60 x 60 pixels."""
    torch.manual_seed(0)
    module = make(example_size=64).eval()
    small = torch.rand(1, 1, 60, 60)
    padded = nn.functional.pad(small, (0, 4, 0, 4))
    at60, at64 = module.intermediate_predictions(small), module.intermediate_predictions(padded)
    names = [k for k in at60 if k != "final"]
    assert len(names) == 3 and all(at60[k].shape[-2:] == (60, 60) for k in names)
    for k in names:
        torch.testing.assert_close(at60[k], at64[k][..., :60, :60])


def test_checkpoint_without_teacher_and_student_export(tmp_path):
    path, _ = _teacher_ckpt(tmp_path, TEACHER)
    module = make(teacher_ckpt=str(path))
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    assert not any(k.startswith("teacher.") for k in ckpt["state_dict"])
    assert any(k.startswith("kd_loss.") for k in ckpt["state_dict"])
    module.on_load_checkpoint(ckpt)
    module.load_state_dict(ckpt["state_dict"], strict=True)
    out = save_student(module, tmp_path / "student.pt")
    payload = torch.load(out, weights_only=True)
    assert set(payload["state_dict"]) == set(module.net.state_dict())
    net = load_student(out)
    x = torch.rand(1, 1, 32, 32)
    module.eval(), net.eval()
    assert torch.allclose(net(x), module.net(x))


class NaNKD(KDLoss):
    def forward(self, inputs):
        bad = inputs["student_logits"].mean() * float("nan")
        return {"ufd": bad, "total_kd": bad}


def test_non_finite_kd_term_raises_naming_step_and_term():
    module = make(kd_loss=NaNKD(), taps=[])
    module.train()
    before = {k: p.detach().clone() for k, p in module.net.named_parameters()}
    with pytest.raises(NonFiniteLossError, match=r"'ufd'.*step 0"):
        module.training_step(batch(), 0)
    # raised inside training_step: no backward, no optimizer step, weights untouched
    assert all(torch.equal(before[k], p) for k, p in module.net.named_parameters())


def test_teacher_and_student_padding_to_other_sizes_is_refused_before_the_teacher_trains(tmp_path):
    """The UNet++ teacher pads to a multiple of 16, the ResNet-18 student to 32: at 80 px their maps covered 80
    and 96 px and were resized onto each other, misaligned, with no error (a review). Refused at 80 px before
    a teacher is trained; 64 and 96 px pad alike."""
    from engine.distill import run_distillation
    from lightning_modules.base import build
    from lightning_modules.distill_setup import check_same_padding
    from tests.hydra_helpers import compose_run

    teacher, student = build(TEACHER), build(STUDENT)
    for size in (64, 96, 128):
        check_same_padding(teacher, student, (size, size))
    with pytest.raises(ConfigError, match=r"at 80 x 96 px: the teacher pads it to 80 x 96 \(a multiple of 16\) "
                                          r"and the student to 96 x 96 .*a multiple of 32"):
        check_same_padding(teacher, student, (80, 96))
    cfg = compose_run(["+exp=kits_hlfd", "logger=csv", "data.image_size=80", "++trainer.fast_dev_run=true"], tmp_path)
    with pytest.raises(ConfigError, match="distillation at 80 x 80 px"):
        run_distillation(cfg)
    assert not list(tmp_path.rglob("*.ckpt"))  # no teacher was trained


def test_partial_labels_reach_the_students_loss_or_are_refused_in_one_line():
    """A review: the distillation step dropped a partially annotated batch's ``label_mask`` (L_seg treated the
    organs a site does not label as background) and validation raised a bare TypeError. A loss that takes the
    mask gets it; one that does not is a ConfigError naming it."""
    from lightning_modules.errors import ConfigError

    partial = {**batch(), "label_mask": torch.tensor([[True, True], [True, False]])}
    module = make()
    module.log = lambda *a, **k: None
    with pytest.raises(ConfigError, match="needs a loss that takes the sites' label_mask.*DeepSupervisionLoss does"):
        module.training_step(partial, 0)
    marginal = make(loss={"_target_": "lightning_modules.losses.deep_supervision.DeepSupervisionLoss",
                          "base": {"_target_": "lightning_modules.losses.hybrid.HybridCEDiceLoss"}})
    marginal.log = lambda *a, **k: None
    seen = {}
    original = marginal.loss.forward
    marginal.loss.forward = lambda *a, **k: seen.update(k) or original(*a, **k)
    assert torch.isfinite(marginal.training_step(partial, 0))
    assert torch.equal(seen["label_mask"], partial["label_mask"])
