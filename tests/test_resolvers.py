"""The configs' resolvers are registered by one explicit call (engine.resolvers), never by importing a module."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_importing_the_library_registers_no_resolver_and_one_call_registers_every_one():
    """A structure review: ``${medmnist:...}`` and ``${fedmed_goal:...}`` were registered as side effects of
    importing ``datamodules.medmnist`` and ``callbacks.metric_goal``, so whether a config resolved depended on
    what a process happened to import first. Run in a fresh process: nothing imported before."""
    code = (
        "from omegaconf import OmegaConf\n"
        "import callbacks.metric_goal, datamodules.medmnist, engine.builders, federation.runner\n"
        "names = ('medmnist', 'fedmed_goal')\n"
        "assert not any(OmegaConf.has_resolver(n) for n in names), 'registered on import'\n"
        "from engine.resolvers import register_resolvers\n"
        "register_resolvers(); register_resolvers()  # a second call is a no-op\n"
        "assert all(OmegaConf.has_resolver(n) for n in names)\n"
        "c = OmegaConf.create({'m': '${fedmed_goal:val/hd95}', 'k': '${medmnist:breastmnist,num_classes}'})\n"
        "assert (c.m, c.k) == ('min', 2), (c.m, c.k)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
