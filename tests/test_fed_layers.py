"""Layering of federation/ (issue 11 §1): the core imports no Lightning, Ray or Flower; engine and datamodules
do not import federation; nothing imports experiments; lightning_modules (the lowest layer) imports none of
the layers above it; the server's helpers are public."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(package: str) -> set[str]:
    out = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                out.add(node.module)
    return out


def test_core_imports_without_lightning_ray_or_flower():
    code = ("import sys\nimport federation.core, federation.core.messages, federation.core.strategies, "
            "federation.core.sharing, federation.core.partition, federation.core.partial_labels, "
            "federation.core.sampling, federation.core.partition_report\n"
            "bad = [m for m in ('pytorch_lightning', 'lightning', 'ray', 'flwr', 'hydra') if m in sys.modules]\n"
            "print('LOADED', bad)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert "LOADED []" in proc.stdout, proc.stdout + proc.stderr[-2000:]


FRAMEWORKS = ("hydra", "omegaconf", "lightning", "pytorch_lightning", "ray", "flwr")


def framework_imports(folder: Path) -> list[str]:
    """``file:line module`` for each import of :data:`FRAMEWORKS` in ``folder``'s sources, at any level (a
    function's lazy import too) and by ``importlib.import_module("...")`` / ``__import__("...")``."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and \
                    isinstance(node.args[0].value, str) and getattr(node.func, "attr", getattr(node.func, "id", None)) \
                    in ("import_module", "__import__"):
                names = [node.args[0].value]
            found += [f"{path.relative_to(folder)}:{node.lineno} {n}" for n in names if n.split(".")[0] in FRAMEWORKS]
    return found


def test_core_sources_import_no_framework_even_lazily():
    """The import test above sees only what importing loads: the core's partition.py resolved a config's
    ``_target_`` with a function-level ``from hydra.utils import get_object`` (now ``federation.plan``)."""
    assert framework_imports(ROOT / "federation" / "core") == []


def test_layers_import_one_way():
    for package in ("engine", "datamodules", "lightning_modules", "callbacks"):
        assert not {m for m in _imports(package) if m.split(".")[0] == "federation"}, package
    for package in ("engine", "datamodules", "lightning_modules", "callbacks", "federation"):
        assert not {m for m in _imports(package) if m.split(".")[0] == "experiments"}, package
    # the core imports only itself among our packages (it imported lightning_modules.atomic to write a PNG)
    ours = ("federation", "engine", "datamodules", "lightning_modules", "callbacks", "experiments")
    core = {m for m in _imports("federation/core") if m.split(".")[0] in ours}
    assert core <= {"federation.core"} | {m for m in core if m.startswith("federation.core.")}, core


def test_lightning_modules_import_no_higher_layer():
    """lightning_modules is the lowest layer: no import of datamodules, callbacks, engine, federation or
    experiments, at module or function level (``datamodules.classification.normalize_task`` was one)."""
    upper = ("datamodules", "callbacks", "engine", "federation", "experiments")
    bad = {m for m in _imports("lightning_modules") if m.split(".")[0] in upper}
    assert not bad, sorted(bad)


def test_matrix_uses_only_the_servers_public_api():
    tree = ast.parse((ROOT / "federation" / "matrix.py").read_text())
    private = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr.startswith("_")
               and isinstance(n.value, ast.Name) and n.value.id == "server"]
    assert not private, private
