"""Compose the real config tree the way ``python -m experiments.run`` does, for end-to-end tests."""
from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from engine.resolvers import register_resolvers

CONFIG_DIR = Path(__file__).resolve().parents[1] / "experiments" / "configs"


def compose_run(overrides: list[str], tmp_path: Path, config_name: str = "train") -> DictConfig:
    """Compose ``train.yaml`` + overrides with outputs and data under ``tmp_path`` (W&B offline)."""
    register_resolvers()  # as experiments.run does before Hydra composes
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name=config_name,
            overrides=[
                f"paths.root_dir={tmp_path}",
                f"paths.data_dir={tmp_path / 'data'}",
                f"paths.log_dir={tmp_path / 'logs'}",
                f"paths.output_dir={tmp_path / 'run'}",
                *overrides,
            ],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg
