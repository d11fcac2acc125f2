"""``--help`` of the commands whose keys are one flat config (``experiments.predict``, ``experiments.ensemble``).

Hydra's own ``--help`` lists every config group under ``experiments/configs`` (``data``, ``model``, ``trainer``...)
as if these commands composed them, and drops the comments that say what each key does (a walkthrough:
``predict ... model=unet`` then failed with "Could not override 'model'"). Their ``--help`` prints the config
file itself instead -- its usage lines and each key with its comment -- so the help cannot drift from it.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

CONFIGS = Path(__file__).resolve().parent / "configs"


def config_help(name: str) -> str:
    """The help of ``python -m experiments.<name>``: ``configs/<name>.yaml`` up to its ``defaults:`` list."""
    lines = (CONFIGS / f"{name}.yaml").read_text().splitlines()
    keys = lines[: next((i for i, ln in enumerate(lines) if ln.startswith("defaults:")), len(lines))]
    return "\n".join([f"python -m experiments.{name} key=value ...  (configs/{name}.yaml; ??? = required)", "",
                      *keys, "", "Hydra's own options: --hydra-help"]) + "\n"


def exit_with_help_if_asked(name: str, argv: Sequence[str] | None = None) -> None:
    """Print :func:`config_help` and exit 0 when the command line asks for ``--help``/``-h``."""
    if any(a in ("--help", "-h") for a in (sys.argv[1:] if argv is None else argv)):
        sys.stdout.write(config_help(name))
        raise SystemExit(0)
