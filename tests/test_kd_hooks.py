"""FeatureTap (lightning_modules/hooks.py) and adapter shape inference (losses/kd/adapters.py)."""
import pytest
import torch
from torch import nn

from lightning_modules.hooks import FeatureTap, select_tensor
from lightning_modules.losses.kd.adapters import (
    ChannelAdapter, channel_adapter, infer_channels, infer_shapes, predictive_head, role_channels,
)


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 1)

    def forward(self, x):
        y = self.conv(x)
        return y, y.mean(1, keepdim=True)


class Picker(nn.Module):
    def forward(self, pair):
        return pair[0]


def small_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.Sequential(nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
        TupleOut(),
        Picker(),
        nn.Conv2d(6, 2, 1),
    )


def all_hooks_empty(model: nn.Module) -> bool:
    return all(len(m._forward_hooks) == 0 for m in model.modules())


def test_tap_captures_declared_shapes_and_removes_hooks():
    net = small_net()
    tap = FeatureTap(net, ["0", "1.0", "1", "4"])
    net(torch.randn(2, 1, 8, 8))
    assert tap["0"].shape == (2, 4, 8, 8)
    assert tap["1.0"].shape == (2, 4, 4, 4)
    assert tap["1"].shape == (2, 4, 4, 4)
    assert tap["4"].shape == (2, 2, 4, 4)
    assert not all_hooks_empty(net)
    tap.remove()
    assert all_hooks_empty(net)
    tap.remove()  # idempotent


def test_tap_context_manager_overwrites_and_keeps_graph():
    net = small_net()
    with FeatureTap(net, ["0"]) as tap:
        net(torch.randn(1, 1, 8, 8))
        first = tap["0"]
        net(torch.randn(1, 1, 6, 6))
        assert tap["0"].shape == (1, 4, 6, 6) and tap["0"] is not first
        assert tap["0"].requires_grad
    assert all_hooks_empty(net)


def test_tap_tuple_output_index_and_detach():
    net = small_net()
    with FeatureTap(net, ["2"]) as default_tap:
        net(torch.randn(1, 1, 8, 8))
        assert default_tap["2"].shape == (1, 6, 4, 4)  # first tensor
    with FeatureTap(net, ["2"], index={"2": 1}, detach=True) as tap:
        net(torch.randn(1, 1, 8, 8))
        assert tap["2"].shape == (1, 1, 4, 4) and not tap["2"].requires_grad
    assert all_hooks_empty(net)


def test_select_tensor_cases():
    a, b = torch.zeros(1), torch.ones(2)
    assert select_tensor(a) is a
    assert select_tensor((None, a, b)) is a
    assert select_tensor([a, b], index=1) is b
    assert select_tensor({"x": b}) is b
    with pytest.raises(TypeError):
        select_tensor((None, 3))


def test_bad_path_lists_close_matches_and_registers_nothing():
    net = nn.Sequential()
    net.add_module("encoder", nn.Sequential(nn.Conv2d(1, 2, 1), nn.Conv2d(2, 2, 1)))
    with pytest.raises(ValueError) as err:
        FeatureTap(net, ["encoder.0", "encodr.1"])
    msg = str(err.value)
    assert "encodr.1" in msg and "encoder.1" in msg
    assert all_hooks_empty(net)
    with pytest.raises(KeyError):
        FeatureTap(net, ["encoder.0"])["encoder.0"]  # not run yet


def test_infer_channels_dry_forward_restores_mode():
    teacher, student = small_net(), nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 5, 1))
    teacher.train()
    t_ch, s_ch = infer_channels(teacher, student, ["1", "2"], ["0", "1"], (1, 1, 8, 8))
    assert t_ch == {"1": 4, "2": 6} and s_ch == {"0": 3, "1": 5}
    assert teacher.training and all(m.training for m in teacher.modules())
    assert all_hooks_empty(teacher) and all_hooks_empty(student)
    shapes = infer_shapes(teacher, ["4"], torch.zeros(1, 1, 6, 6))
    assert tuple(shapes["4"]) == (1, 2, 3, 3)
    assert role_channels({"student_early": "0", "student_mid": ["0", "1"]}, s_ch) == {
        "student_early": 3, "student_mid": [3, 5]}


def test_adapters_shapes():
    x = torch.randn(2, 3, 4, 4)
    assert ChannelAdapter(3, 7)(x).shape == (2, 7, 4, 4)
    assert isinstance(channel_adapter(3, 3, identity_if_equal=True), nn.Identity)
    assert predictive_head(3, 2)(x).shape == (2, 2, 4, 4)
    assert isinstance(predictive_head(None, 2), nn.Identity)


@pytest.mark.parametrize("tap, said", [
    ({"role": "teacher_mid", "teacher": "0", "index": 1},
     r"module '0': index=1 given, but the module returns one Tensor"),
    ({"role": "teacher_mid", "teacher": "2", "index": 5}, r"module '2': index=5 is out of range .* of 2 elements")])
def test_a_tap_index_that_picks_nothing_is_one_line_at_start_up(tap, said):
    """A walkthrough: an ``index`` on a module returning one tensor was ignored (taps at index 0 and 1 read the same
    tensor twice, silently), and one past a tuple's end was an IndexError traceback from the dry forward."""
    from lightning_modules.distill_setup import dry_run, parse_taps
    from lightning_modules.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"^distill.taps: bad teacher path for Sequential: {said}"):
        dry_run(small_net(), small_net(), parse_taps([tap]), (1, 1, 8, 8))
    with pytest.raises(ValueError, match="index=0 given"):
        select_tensor(torch.zeros(1), index=0)
