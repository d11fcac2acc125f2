"""Tests of lightning_modules.nets: paper parameter counts, deep-supervision contract, registry.

Forward passes use tiny widths (8..128 channels) and 32-64 px inputs only (CPU-friendly).
"""
from __future__ import annotations

import logging
import pytest
import torch

from lightning_modules.base import build
from lightning_modules.errors import ConfigError
from lightning_modules.nets import (AttentionUNet, DNet, NestedUNet, ResNet18Student, UNet3Plus, build_model,
                                    count_parameters, list_models)
from lightning_modules.nets.blocks import resolve_filters

torch.set_num_threads(1)

DS_NETS = {  # class -> expected head names (main first)
    UNet3Plus: ["de0", "de1", "de2", "de3", "en4"],
    DNet: ["de0", "me0", "me1", "de1", "de2", "de3", "en4"],
    NestedUNet: ["x0_4", "x0_1", "x0_2", "x0_3"],
}


def _within(n: int, target: float, tol: float = 0.03) -> bool:
    return abs(n - target) / target <= tol


# ----------------------------------------------------------------------------- parameter counts
def test_unet3plus_paper_count() -> None:
    n = count_parameters(UNet3Plus(in_channels=3, classes=1, preset="paper"))
    assert _within(n, 26.97e6), n


def test_dnet_paper_count_and_delta() -> None:
    n = count_parameters(DNet(in_channels=3, classes=1, preset="paper"))
    assert _within(n, 27.63e6), n
    delta = n - count_parameters(UNet3Plus(in_channels=3, classes=1))
    assert 0.4e6 < delta < 0.9e6, delta  # paper 000: "D-Net is 0.66M more than UNet 3+"


def test_nested_unet_paper_count() -> None:
    n = count_parameters(NestedUNet(in_channels=1, classes=2, preset="paper"))
    assert _within(n, 36.6e6), n


def test_student_count() -> None:
    n = count_parameters(ResNet18Student(in_channels=1, classes=2))
    assert 11.0e6 <= n <= 12.5e6, n


def test_attention_unet_paper_count_plausible() -> None:
    n = count_parameters(AttentionUNet(in_channels=3, classes=1, preset="paper"))
    assert 34e6 < n < 40e6, n


def test_width_presets() -> None:
    assert resolve_filters("paper") == [64, 128, 256, 512, 1024]
    assert resolve_filters("tiny") == [8, 16, 32, 64, 128]
    assert resolve_filters(width=4) == [4, 8, 16, 32, 64]
    assert resolve_filters(filters=[1, 2, 3, 4, 5]) == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError):
        resolve_filters("huge")
    with pytest.raises(ValueError, match="papr"):  # a mistyped preset is an error even when width wins
        resolve_filters("papr", width=16)


# ----------------------------------------------------------------------------- deep supervision
@pytest.mark.parametrize("cls", list(DS_NETS))
def test_deep_supervision_heads(cls) -> None:
    torch.manual_seed(0)
    net = cls(in_channels=1, classes=2, width=8).train()
    assert net.head_names == DS_NETS[cls]
    outs = net(torch.randn(2, 1, 64, 64))
    assert isinstance(outs, list) and len(outs) == len(DS_NETS[cls])
    assert all(o.shape == (2, 2, 64, 64) for o in outs)

    # gradients reach every head
    sum(o.float().pow(2).mean() for o in outs).backward()
    heads = net.heads if hasattr(net, "heads") else {f"final{j}": getattr(net, f"final{j}") for j in range(1, 5)}
    for name, head in heads.items():
        grads = [p.grad for p in head.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads), name

    # main head first: eval output equals the first training head (BN in eval for both)
    net.eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        main = net(x)
        net.train()
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        first = net(x)[0]
    assert isinstance(main, torch.Tensor) and main.shape == (1, 2, 32, 32)
    torch.testing.assert_close(main, first)


@pytest.mark.parametrize("cls", list(DS_NETS))
def test_deep_supervision_off_returns_tensor(cls) -> None:
    net = cls(in_channels=1, classes=3, width=4, deep_supervision=False).train()
    out = net(torch.randn(2, 1, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 32, 32)
    # a review: the unused side heads' parameters stopped DDP (no unused parameters) at its second step; every
    # parameter left trainable now reaches the loss, and only the side heads are frozen
    out.square().mean().backward()
    unused = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    frozen = {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("heads.") else "")
              for n, p in net.named_parameters() if not p.requires_grad}
    assert not unused, unused
    side = ({f"heads.{h}" for h in net.heads if h != "de0"} if hasattr(net, "heads")
            else {f"final{j}" for j in range(1, net.levels - 1)})
    assert frozen == side and len(side) >= 3, frozen


@pytest.mark.parametrize("cls", [UNet3Plus, DNet, NestedUNet, AttentionUNet, ResNet18Student])
def test_non_divisible_input_is_padded_and_cropped(cls) -> None:
    kw = {} if cls is ResNet18Student else {"width": 4}
    net = cls(in_channels=2, classes=3, **kw).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 2, 37, 50))
    assert out.shape == (1, 3, 37, 50)


def test_nested_unet_module_paths() -> None:
    names = dict(NestedUNet(in_channels=1, classes=2, width=4).named_modules())
    for i in range(5):
        assert f"conv{i}_0" in names
    for path in ["conv0_1", "conv0_4", "conv1_3", "conv3_1", "final1", "final4"]:
        assert path in names, path


def test_student_module_paths() -> None:
    names = dict(ResNet18Student().named_modules())
    for path in ResNet18Student.stage_names:
        assert path in names, path


def test_dnet_structure() -> None:
    net = DNet(in_channels=3, classes=1, width=8)
    assert list(net.middle.nodes) == ["me1", "me0"]
    assert list(net.deep.nodes) == ["de3", "de2", "de1", "de0"]
    # X_De^{2,1} branches: X_Me^{0,1}, X_Me^{1,1} (Cat channels), X_En^{2,0}, X_De^{3,1}, X_En^{4,0}
    branch_in = [b[0].in_channels for b in net.deep.nodes["de2"].branches]
    assert branch_in == [8, 8, 32, 40, 128]
    # middle aggregation reduces to Cat channels
    assert net.middle.nodes["me0"].fuse[0].out_channels == 8
    assert net.heads["de0"].conv.kernel_size == (1, 1) and net.heads["me0"].conv.kernel_size == (1, 1)
    assert all(net.heads[n].conv.kernel_size == (3, 3) for n in ["me1", "de1", "de2", "de3", "en4"])


# ----------------------------------------------------------------------------- registry
TINY_KW = {"unet3plus": {"width": 4}, "dnet": {"width": 4}, "nested_unet": {"width": 4},
           "attention_unet": {"width": 4}}


def test_registry_names() -> None:
    expected = {"unet", "unetpp", "unet3plus", "dnet", "attention_unet", "nested_unet", "resnet18_student",
                "resnet18_unet"}
    assert expected <= set(list_models())
    with pytest.raises(ValueError, match="dnet"):
        build_model("no_such_net")


@pytest.mark.parametrize("name", sorted(list_models()))
def test_every_registered_model_runs(name: str) -> None:
    kw = dict(TINY_KW.get(name, {}))
    if name in {"unet", "unetpp"}:
        kw.update(encoder_name="resnet18", encoder_depth=3, decoder_channels=(16, 8, 4))
    net = build_model(name, in_channels=1, classes=2, **kw).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 1, 32, 32))
    assert out.shape == (1, 2, 32, 32)


def test_smp_defaults_no_weights() -> None:
    net = build_model("unet", in_channels=1, classes=2)
    assert net.encoder._in_channels == 1  # resnet34 built locally, no download attempted


def test_smp_net_warns_about_keys_it_ignores(caplog):
    """``model.width`` from an experiment given to an smp U-Net is named as ignored (it was silent)."""
    cfg = {"_target_": "segmentation_models_pytorch.Unet", "encoder_name": "resnet18", "encoder_weights": None,
           "in_channels": 1, "classes": 2, "width": 16}
    from lightning_modules import base

    base._SAID.clear()  # said once per process: another test may have built this net first
    with caplog.at_level(logging.WARNING, logger="lightning_modules.base"):
        build(cfg, what="module.net")
    assert "does not take width=16; ignored" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lightning_modules.base"):  # a federation's next client: quiet
        build(cfg, what="module.net")
    assert "does not take" not in caplog.text
    from omegaconf import OmegaConf

    from experiments.run import dispatch

    with pytest.raises(Exception):  # noqa: B017 - any failure after its first line: the next job of a sweep
        dispatch(OmegaConf.create({}))
    assert not base._SAID  # forgotten: that job says it again (a review: only a sweep's first job said it)
    plain = {k: v for k, v in cfg.items() if k != "width"}
    with caplog.at_level(logging.WARNING, logger="lightning_modules.base"):
        build(plain, what="module.net")
        build({**plain, "decoder_use_batchnorm": False}, what="module.net")  # smp maps its old name itself
        build({**plain, "encoder_name": "tu-resnet18", "drop_path_rate": 0.1}, what="module.net")  # timm takes it
    assert "ignored" not in caplog.text
    # a walkthrough: a mistyped key was warned about like width, and the default encoder trained (exit 0); a bad
    # encoder name was Hydra's multi-line error with smp's list of 80 names (exit 1)
    with pytest.raises(ConfigError, match=r"^module.net segmentation_models_pytorch.Unet takes no encoder_nam "
                                          r"\(did you mean module.net.encoder_name\?\)$"):
        build({**plain, "encoder_nam": "resnet18"}, what="module.net")
    with pytest.raises(ConfigError, match=r"^module.net segmentation_models_pytorch.Unet: Wrong encoder name "
                                          r"`resnet81`.{0,300}$"):
        build({**plain, "encoder_name": "resnet81"}, what="module.net")


def test_large_upsampling_runs_in_exact_plane_chunks(monkeypatch) -> None:
    """UNet3+/D-Net at paper width, 512², batch 8 up-sample the deepest map to 8 x 1024 x 512² = 2^31 elements,
    whose CUDA backward stopped with "invalid argument" on an H200 (docs/benchmarks.md "GPU"); above
    ``MAX_UPSAMPLE_NUMEL`` the up-sampling runs in chunks of (sample, channel) planes: the same values and gradients
    as one call."""
    from lightning_modules.nets import blocks

    x = torch.randn(2, 7, 5, 6, dtype=torch.float64, requires_grad=True)
    whole = torch.nn.functional.interpolate(x, size=(20, 24), mode="bilinear", align_corners=False)
    (grad_whole,) = torch.autograd.grad(whole.pow(2).sum(), x)
    monkeypatch.setattr(blocks, "MAX_UPSAMPLE_NUMEL", 20 * 24 * 5)  # five planes a chunk: 14 planes = 5 + 5 + 4
    calls = []
    interpolate = torch.nn.functional.interpolate
    monkeypatch.setattr(blocks.F, "interpolate", lambda t, **k: calls.append(t.shape[0] * t.shape[1]) or interpolate(t, **k))
    chunked = blocks.resample(x, (20, 24))
    (grad_chunked,) = torch.autograd.grad(chunked.pow(2).sum(), x)
    assert calls == [5, 5, 4]  # no chunk writes more than the bound, a batch of 1 or one channel included
    torch.testing.assert_close(chunked, whole)  # float64: equal but for the last bit (vectorised loops)
    torch.testing.assert_close(grad_chunked, grad_whole)
    half = blocks.resample(x.detach().bfloat16(), (20, 24))  # the output takes the chunks' dtype, not a default
    assert half.dtype == torch.bfloat16 and half.shape == whole.shape
