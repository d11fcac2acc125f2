"""``--help`` of predict and ensemble: their keys with their comments (a walkthrough: Hydra's help listed every
training group, ``model:``, ``data:``..., which predict then refused)."""
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.config_help import config_help

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name, keys", [("predict", ["ckpt: ???", "tta: false", "save_probabilities: false"]),
                                        ("ensemble", ["inputs: ???", "overwrite: false"])])
def test_help_lists_the_commands_own_keys_with_their_comments(name, keys):
    text = config_help(name)
    assert all(k in text for k in keys) and "# mirror test-time augmentation" in config_help("predict")
    assert "defaults:" not in text and "hydra:" not in text


def test_predict_help_from_the_command_line():
    proc = subprocess.run([sys.executable, "-m", "experiments.predict", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "tta: false" in proc.stdout
    assert "Compose your configuration" not in proc.stdout and "model:" not in proc.stdout
