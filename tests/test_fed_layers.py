"""Layering of federation/ (issue 11 §1): the core imports no Lightning, Ray or Flower; engine and datamodules
do not import federation; nothing imports experiments; the server's helpers are public."""
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


def test_layers_import_one_way():
    for package in ("engine", "datamodules", "lightning_modules", "callbacks"):
        assert not {m for m in _imports(package) if m.split(".")[0] == "federation"}, package
    for package in ("engine", "datamodules", "lightning_modules", "callbacks", "federation"):
        assert not {m for m in _imports(package) if m.split(".")[0] == "experiments"}, package
    # the core imports only itself among our packages (it imported lightning_modules.atomic to write a PNG)
    ours = ("federation", "engine", "datamodules", "lightning_modules", "callbacks", "experiments")
    core = {m for m in _imports("federation/core") if m.split(".")[0] in ours}
    assert core <= {"federation.core"} | {m for m in core if m.startswith("federation.core.")}, core


def test_matrix_uses_only_the_servers_public_api():
    tree = ast.parse((ROOT / "federation" / "matrix.py").read_text())
    private = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr.startswith("_")
               and isinstance(n.value, ast.Name) and n.value.id == "server"]
    assert not private, private
