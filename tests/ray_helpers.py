"""Client functions Ray workers import in the Ray tests (a light module: no test collection, no fixtures)."""
from __future__ import annotations

import os
import time

import torch

from federation.core.messages import ClientUpdate


def fake_client(client_id: str, behaviour: str = "ok", seconds: float = 0.0, **_: object) -> ClientUpdate:
    """An update naming the worker process (metric ``pid``) after ``seconds`` of sleep; ``behaviour``: ok | raise |
    hang | config_error (the user's error: a setting its module refuses)."""
    if behaviour == "raise":
        raise RuntimeError(f"client {client_id} crashed")
    if behaviour == "config_error":
        from lightning_modules.errors import ConfigError

        raise ConfigError("module: unexpected keyword argument 'teacher_ckpt'")
    if behaviour == "hang":
        time.sleep(120)
    time.sleep(seconds)
    return ClientUpdate(client_id, {"w": torch.ones(2)}, 1, {"pid": float(os.getpid())})


def echo_client(client_id: str, server_message=None, **_: object) -> ClientUpdate:
    """Its server message's weights back, with the worker's torch thread count (metric ``threads``)."""
    return ClientUpdate(client_id, dict(server_message.weights), 1, {"threads": float(torch.get_num_threads())})


class SlowData:
    """A stand-in datamodule whose set-up takes ``seconds`` (or fails with the user's error, ``fail``)."""

    def __init__(self, seconds: float = 0.0, fail: bool = False) -> None:
        self.seconds, self.fail = float(seconds), bool(fail)

    def prepare_data(self) -> None:
        pass

    def setup(self, stage: str | None = None) -> None:
        if self.fail:
            from datamodules.errors import DataError

            raise DataError("data.root /nowhere holds no case")
        time.sleep(self.seconds)


def data_client(client_id: str, cfg=None, **_: object) -> ClientUpdate:
    """Gets the worker's base datamodule (built once per process) and says how long that took (``build_s``)."""
    from federation.runner import get_base_datamodule

    t0 = time.perf_counter()
    get_base_datamodule(cfg.data)
    return ClientUpdate(client_id, {"w": torch.ones(2)}, 1, {"build_s": time.perf_counter() - t0})


def code_client(client_id: str, driver_root: str = "", driver_cwd: str = "", **_: object) -> ClientUpdate:
    """Whether this worker imports the project from a checkout other than the driver's (metric ``elsewhere``),
    from a copy Ray unpacked for it (``unpacked``: the path lies under Ray's runtime resources), and runs in the
    driver's folder (``in_driver_cwd``: relative paths mean what they meant to the driver)."""
    from pathlib import Path

    from federation.transports.code_identity import ROOT

    return ClientUpdate(client_id, {"w": torch.ones(2)}, 1, {"elsewhere": float(ROOT != Path(driver_root)),
                                                              "unpacked": float("runtime_resources" in ROOT.parts),
                                                              "in_driver_cwd": float(Path.cwd() == Path(driver_cwd))})
