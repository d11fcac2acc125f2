"""Issue 10 §4: ``python -m experiments.run +exp=<each exp> ++trainer.fast_dev_run=true`` exits 0 for every
file in ``experiments/configs/exp/`` (tiny data overrides keep it fast), and the run is marked as debug.

Each run is its own process, forked from a zygote that has imported only third-party packages
(``tests/forkserver.py``), so every module of this repository is imported afresh by each experiment, as a cold
``python -m`` does, without paying ~12 s of torch/Lightning imports per experiment."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.cli import BASE_ENV
from tests.conftest import shared_data_dir
from tests.forkserver import Zygote
from tests.volumetric_helpers import TINY_FED_3D

REPO = Path(__file__).resolve().parents[1]
EXPS = sorted(p.stem for p in (REPO / "experiments" / "configs" / "exp").glob("*.yaml"))
PHANTOM = ["data.synthetic.n_cases=6", "data.synthetic.shape=[48,48,10]", "data.image_size=32", "data.batch_size=4"]
FED = ["federation.rounds=1", "federation.progress=false"]
#: per exp: extra overrides (tiny data), and the shared data folder it needs (None: embedded data)
TINY: dict[str, tuple[list[str], str | None]] = {
    "digits_cnn": ([], None),
    "fed_digits_datashare": ([*FED, "federation.num_clients=4", "federation.clients_per_round=2"], None),
    "fed_covid_datashare": ([*FED, "federation.num_clients=4", "federation.clients_per_round=2"],
                            "covid-ct-ucsd-cropped"),
    "fed_lits_dnet": ([*FED, "model.width=4"], None),
    "fed_pancreas": (FED, None),
    "fed_pancreas_3d": ([*FED, *TINY_FED_3D], None),
    "fed_kits_hlfd": ([*FED, "distill.teacher.model.width=4"], None),
    "fed_kits_hlfd_claim": ([*FED, "distill.teacher.model.width=4"], None),
    "pancreas_3d": ([], None),
    "segviz_fedbn": ([*FED, "federation.evaluation_matrix=false"], None),  # the matrix trains extra baselines: minutes
    "kits_hlfd": ([*PHANTOM, "module.example_size=32", "distill.teacher.model.width=4"], None),
    "lits_hlfd": ([*PHANTOM, "module.example_size=32", "distill.teacher.model.width=4"], None),
    "lits_dnet": ([*PHANTOM, "model.width=4"], None),
    # batch 16, not the paper's 128: one ResNet-18 (28) step of 128 images is ~9 s of one CPU thread
    "medmnist": (["data.flag=breastmnist", "data.num_workers=0", "data.batch_size=16"], "medmnist-breastmnist"),
    "medmnist_breast": (["data.num_workers=0", "data.batch_size=16"], "medmnist-breastmnist"),
    "medmnist_decathlon": (["hydra.mode=RUN", "data.flag=breastmnist", "data.num_workers=0", "data.batch_size=16"],
                           "medmnist-breastmnist"),
}


def _run_env() -> dict[str, str]:
    return {**os.environ, **BASE_ENV}


@pytest.fixture(scope="module")
def zygote():
    server = Zygote(_run_env())
    yield server
    server.close()


def test_every_exp_has_tiny_overrides():
    assert sorted(TINY) == EXPS, "add the new exp to TINY in tests/test_fast_dev_run.py"


@pytest.mark.slow
@pytest.mark.parametrize("exp", EXPS)
def test_fast_dev_run_exits_zero(exp, tmp_path, zygote):
    extra, shared = TINY[exp]
    if shared is not None:
        folder = shared_data_dir() / shared
        if not folder.is_dir():
            pytest.skip(f"real data folder {folder} is absent")
        extra = [*extra, f"data.root={folder}"]
    run = tmp_path / "run"
    proc = zygote.run("experiments.run", [f"+exp={exp}", "++trainer.fast_dev_run=true", "logger=csv",
                                          f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={run}", *extra],
                      cwd=tmp_path, env=_run_env(), timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    metrics = json.loads((run / "metrics.json").read_text())
    if "federation" not in exp and not exp.startswith(("fed_", "segviz")):
        assert metrics.get("debug") is True  # experiments.report leaves it out of its tables
    if exp.startswith("fed_kits_hlfd"):  # its table said nothing of being a debug run (a walkthrough)
        assert metrics.get("debug") is True
        assert (run / "fed_distill.md").read_text().startswith("> **fast_dev_run (a debug run)")
    if exp.startswith("fed_") and exp != "fed_kits_hlfd" and exp != "fed_kits_hlfd_claim":
        # found by a walkthrough: the banner said "2 local epochs" for a run of one batch per client
        assert "x 1 batch per client (fast_dev_run)" in " ".join(proc.stdout.split()), proc.stdout[-2000:]
    if (run / "evaluation_matrix.md").is_file():  # a walkthrough: a debug run's matrix read like results
        assert "**A debug run (debug mode fdr)" in (run / "evaluation_matrix.md").read_text()
