"""The one line a checkpoint that does not fit gets (``lightning_modules.checkpoints.load_strict``): what is
missing, unexpected or reshaped, never a key torch would have let pass, and torch's own reason otherwise."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_modules.checkpoints import load_checkpoint, load_strict, state_mismatch
from lightning_modules.safe_load import _load_failure
from lightning_modules.errors import CheckpointError


def test_the_line_counts_and_names_the_first_of_each_kind():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    state = {k: v for k, v in net.state_dict().items() if k != "1.num_batches_tracked"}  # torch allows this
    state["0.weight"] = torch.zeros(2, 1, 5, 5)
    state.pop("1.bias")
    state["fc.weight"] = torch.zeros(1)
    line = state_mismatch(net.state_dict(), state)
    assert line == ("1 key(s) missing (first: 1.bias); 1 unexpected (first: fc.weight); "
                    "1 of another shape (first: 0.weight, [2, 1, 5, 5] in the file, [2, 1, 3, 3] here)")
    with pytest.raises(CheckpointError, match=r"^teacher t.pt does not fit: 1 key\(s\) missing"):
        load_strict(net, state, "teacher t.pt does not fit")


def test_a_failure_with_every_key_in_place_keeps_torchs_reason():
    net = nn.Linear(2, 1)
    state = {"weight": torch.zeros(1, 2), "bias": "not a tensor"}
    assert state_mismatch(net.state_dict(), state) == ""
    with pytest.raises(CheckpointError, match=r"^c.pt does not fit: \w+Error: "):
        load_strict(net, state, "c.pt does not fit")


class _Payload:
    """A pickled object with a ``__reduce__``: what a crafted checkpoint would carry."""

    def __reduce__(self):
        return (print, ("ran",))


def test_a_refused_pickle_names_the_global_and_never_relays_torchs_advice(tmp_path, capsys):
    path = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "x": _Payload()}, path)
    with pytest.raises(CheckpointError) as got:
        load_checkpoint(path)
    assert "ran" not in capsys.readouterr().out  # nothing was executed
    line = str(got.value)
    assert line.startswith(f"checkpoint {path} does not load: it holds Python objects") and "print" in line
    assert "weights_only" not in line


def test_a_reworded_torch_refusal_still_hides_its_advice():
    """The fallback when torch words its refusal otherwise (``_load_failure`` matches its current text)."""
    err = RuntimeError("Loading failed: re-run with weights_only=False if you trust the source. More text")
    assert _load_failure(err) == "not a torch checkpoint, or corrupt or truncated (RuntimeError)"


def test_a_file_that_is_no_torch_file_is_said_to_be_none(tmp_path):
    """A walkthrough: ``ckpt=config.yaml`` was said to hold "Python objects besides tensors" (a YAML file is
    read as a pickle and fails on its first byte); a file that is neither a zip archive nor a pickle is named
    for what it is not. A real crafted pickle still gets the message above."""
    path = tmp_path / "config.yaml"
    path.write_text("data:\n  root: /x\n")
    with pytest.raises(CheckpointError, match=r"config\.yaml is not a torch checkpoint \(neither a zip archive nor a pickle\)"):
        load_checkpoint(path)


def test_a_partial_net_config_in_a_checkpoint_is_one_line(tmp_path):
    """Found by a security audit: ``_partial_: true`` in a stored net config built a ``functools.partial`` that
    predict then failed on in a traceback."""
    from lightning_modules.checkpoints import load_net, stored_net_cfg

    net = {"_target_": "lightning_modules.nets.dnet.DNet", "in_channels": 1, "classes": 2, "_partial_": True}
    with pytest.raises(CheckpointError, match=r"c\.ckpt net\._partial_=True refused"):
        stored_net_cfg({"hyper_parameters": {"net": net}}, tmp_path / "c.ckpt")
    torch.save({"state_dict": {}, "net": net}, tmp_path / "n.pt")
    with pytest.raises(CheckpointError, match=r"n\.pt net\._partial_=True refused"):
        load_net(tmp_path / "n.pt")
