"""A checkpoint's callback state names the files Lightning later deletes: a crafted one deleted any folder one
epoch after ``resume=`` (``local:///...`` and ``<run>/checkpoints/../../x`` passed Lightning's own check;
security audit). :class:`callbacks.checkpoint_paths.ConfineCheckpointPaths` keeps only paths in the run's
checkpoint folder."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from callbacks.checkpoint_paths import confine_state, inside
from tests.cli import run_in_process

RUN = ["+exp=digits_cnn", "logger=csv"]


def _victim(folder: Path) -> Path:
    folder.mkdir()
    (folder / "precious.txt").write_text("not a checkpoint")
    return folder


def test_crafted_callback_state_deletes_nothing_on_resume(tmp_path):
    run = tmp_path / "run"
    first = run_in_process("experiments.run", [*RUN, "trainer.max_epochs=1", f"hydra.run.dir={run}"], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    traversal, scheme = _victim(tmp_path / "victim_a"), _victim(tmp_path / "victim_b")
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    for key, state in ckpt["callbacks"].items():
        if "best_model_path" not in state:
            continue
        if "'monitor': None" in key:  # last_checkpoint: deletes its previous best_model_path at each save
            state["best_model_path"] = str(run / "checkpoints" / ".." / ".." / "victim_a")
        else:  # the monitored one: a worse-than-anything k-th best that the next epoch replaces and deletes
            fake = f"local://{scheme}"
            state.update(best_model_path=fake, kth_best_model_path=fake, last_model_path=fake,
                         best_k_models={fake: torch.tensor(-1.0)}, kth_value=torch.tensor(-1.0),
                         best_model_score=torch.tensor(-1.0))
    torch.save(ckpt, last)

    resumed = run_in_process("experiments.run", [*RUN, "trainer.max_epochs=3", f"resume={run}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (traversal / "precious.txt").is_file() and (scheme / "precious.txt").is_file(), "a crafted path was deleted"
    log = (run / "run.log").read_text()
    assert "dropped checkpoint paths outside" in log and "victim_a" in log and "victim_b" in log
    best = json.loads((run / "metrics.json").read_text())["test_checkpoint"]
    assert Path(best).parent == run / "checkpoints"  # the best checkpoint is this run's own


def test_only_plain_paths_inside_the_folder_are_kept(tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (folder / "out").symlink_to(tmp_path / "elsewhere")
    assert inside(str(folder / "best.ckpt"), folder)
    assert not inside(str(folder / ".." / ".." / "x"), folder)
    assert not inside(f"local://{folder}/best.ckpt", folder) and not inside(f"file://{folder}/b.ckpt", folder)
    assert not inside(str(folder / "out" / "x.ckpt"), folder)  # a link leading out
    assert not inside(str(folder / "best.ckpt"), None)  # a state no callback of this trainer restores
    state = {"best_model_path": str(folder / "best.ckpt"), "last_model_path": "/etc",
             "kth_best_model_path": "", "best_k_models": {str(folder / "best.ckpt"): 1.0, "s3://b/x.ckpt": 0.5}}
    dropped = confine_state(state, folder, "test")
    assert dropped == ["last_model_path='/etc'", "best_k_models['s3://b/x.ckpt']"]
    assert state == {"best_model_path": str(folder / "best.ckpt"), "last_model_path": "",
                     "kth_best_model_path": "", "best_k_models": {str(folder / "best.ckpt"): 1.0}}
