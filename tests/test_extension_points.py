"""The extension points of docs/extending.md stay in step with the configs: every net config of ours is in
the registry, a new net folder registers itself, and every strategy has exactly one config group entry."""
from __future__ import annotations

import sys

import pytest
import yaml
from hydra.utils import get_class

from federation.core.strategies import STRATEGIES, FedAdagrad, Strategy
from federation.runner import build_strategy
from lightning_modules.nets import get_model_class, list_models
from lightning_modules.nets.registry import import_subpackages
from tests.hydra_helpers import CONFIG_DIR, compose_run

#: net modules of ours outside the registry's 2D contract (logits [B, classes, H, W]): classifiers give
#: [B, classes], monai3d 3D volumes; their configs are built by _target_ only.
NOT_REGISTERED = {"lightning_modules.nets.classifiers", "lightning_modules.nets.monai3d"}


def _targets(group: str) -> dict[str, str]:
    """``{config name: _target_}``; a ``# @package federation`` strategy config (datashare) nests it."""
    out = {}
    for p in sorted((CONFIG_DIR / group).glob("*.yaml")):
        doc = yaml.safe_load(p.read_text())
        out[p.stem] = doc["_target_"] if "_target_" in doc else doc[group.rsplit("/", 1)[-1]]["_target_"]
    return out


def test_every_net_config_of_ours_is_registered():
    registered = {get_model_class(n) for n in list_models()}
    ours = {name: t for name, t in _targets("model").items()
            if t.startswith("lightning_modules.") and t.rsplit(".", 1)[0] not in NOT_REGISTERED}
    assert ours, "no model config targets lightning_modules"
    missing = {name: t for name, t in ours.items() if get_class(t) not in registered}
    assert not missing, f"model configs whose net is not in list_models(): {missing}"


def test_a_net_folder_registers_itself_on_import(tmp_path, monkeypatch):
    pkg = tmp_path / "probe_nets"
    (pkg / "probe_folder_net").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "flat.py").write_text("raise RuntimeError('flat modules are not imported')\n")
    (pkg / "probe_folder_net" / "__init__.py").write_text(
        "import torch.nn as nn\nfrom lightning_modules.nets import register_model\n\n"
        "@register_model('probe_folder_net')\nclass ProbeNet(nn.Identity):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import probe_nets
    try:
        assert import_subpackages("probe_nets", probe_nets.__path__) == ["probe_folder_net"]
        assert "probe_folder_net" in list_models()
    finally:
        from lightning_modules.nets import registry
        registry._REGISTRY.pop("probe_folder_net", None)
        for mod in [m for m in sys.modules if m.split(".")[0] == "probe_nets"]:
            del sys.modules[mod]


def test_a_broken_net_folder_is_named_in_the_one_line_error(tmp_path, monkeypatch):
    """A walkthrough copied a net folder (a second ``register_model`` of one name): every ``model=`` choice then
    failed as "net _target_ '...DNet' does not resolve (ImportError)", the folder and the cause on no line."""
    from lightning_modules.errors import ConfigError
    from lightning_modules.targets import check_target

    pkg = tmp_path / "broken_nets"
    (pkg / "copied").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "copied" / "__init__.py").write_text("x = (\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import broken_nets
    try:
        with pytest.raises(ImportError, match=r"^net folder broken_nets/copied/ does not import: SyntaxError: "):
            import_subpackages("broken_nets", broken_nets.__path__)
    finally:
        for mod in [m for m in sys.modules if m.split(".")[0] == "broken_nets"]:
            del sys.modules[mod]

    def failing(target):
        try:
            raise ImportError("net folder lightning_modules/nets/copied/ does not import: SyntaxError: x")
        except ImportError as err:  # as Hydra's get_object wraps what the import raised
            raise ImportError(f"Error loading '{target}':\n{err!r}") from err

    monkeypatch.setattr("lightning_modules.targets.get_object", failing)
    with pytest.raises(ConfigError) as info:
        check_target("lightning_modules.nets.dnet.DNet", "net")
    assert str(info.value) == ("net _target_ 'lightning_modules.nets.dnet.DNet' does not resolve (ImportError: net "
                               "folder lightning_modules/nets/copied/ does not import: SyntaxError: x)")


def test_every_strategy_has_one_config_and_every_config_is_a_listed_strategy():
    by_class: dict[type, list[str]] = {}
    for name, target in _targets("federation/strategy").items():
        cls = get_class(target)
        assert isinstance(cls, type) and issubclass(cls, Strategy), f"federation/strategy={name}: {target}"
        by_class.setdefault(cls, []).append(name)
    assert set(by_class) == set(STRATEGIES.values()), \
        f"STRATEGIES without a config: {set(STRATEGIES.values()) - set(by_class)}; " \
        f"configs not in STRATEGIES: {set(by_class) - set(STRATEGIES.values())}"
    assert all(len(v) == 1 for v in by_class.values()), by_class


def test_fedadagrad_config_composes_and_builds(tmp_path):
    cfg = compose_run(["+exp=fed_digits_datashare", "federation/strategy=fedadagrad"], tmp_path)
    strategy = build_strategy(cfg.federation.strategy)
    assert type(strategy) is FedAdagrad
    assert (strategy.eta, strategy.tau) == (pytest.approx(1e-2), pytest.approx(1e-3))
