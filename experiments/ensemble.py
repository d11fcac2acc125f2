"""Ensemble saved predictions: ``python -m experiments.ensemble inputs=[preds_a,preds_b] output=preds_ens``.

Each input folder is what ``experiments.predict ... save_probabilities=true`` wrote (``<case>.nii.gz`` +
``<case>.npz``); the work is in :mod:`engine.ensemble`; this is the command line only.
"""
from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig
from rich.progress import Progress

from engine.ensemble import check_ensemble, ensemble_case, plan_ensemble
from engine.errors import ConfigError
from engine.predict_output import check_writable, claim_output_folder, mark_output_folder, stale_beside
from experiments.config_help import exit_with_help_if_asked
from experiments.hydra_checks import run_cli, user_command


def ensemble(cfg: DictConfig) -> Path:
    if not isinstance(cfg.inputs, (list, ListConfig)):
        raise ConfigError(f"inputs={cfg.inputs!r} must be a list of prediction folders: inputs=[a,b]")
    keep = cfg.get("save_probabilities", False)
    if not isinstance(keep, bool):
        raise ConfigError(f"save_probabilities={keep!r} must be true or false")
    cases = plan_ensemble(list(cfg.inputs))
    out = Path(str(cfg.output))
    if out.resolve() in {Path(str(p)).resolve() for p in cfg.inputs}:
        raise ConfigError(f"output={out} is one of the inputs: it would be overwritten while read")
    overwrite = cfg.get("overwrite", False)
    if not isinstance(overwrite, bool):
        raise ConfigError(f"overwrite={overwrite!r} must be true or false")
    check_ensemble(cases)  # every case, from the headers, before the first output is written
    check_writable(out)
    # a walkthrough: output=labelsTs/ replaced the ground truth without a word; predict refuses it, and so does this
    claim_output_folder(out, [out / f"{c}{ext}" for c in cases for ext in (".nii.gz", ".npz")[:1 + keep]], overwrite)
    with Progress() as progress:
        task = progress.add_task(f"ensembling {len(cases)} case(s) of {len(cfg.inputs)} folders", total=len(cases))
        for case, files in cases.items():
            ensemble_case(case, files, out, keep)
            if not keep:  # an earlier ensemble's probabilities: not of this one's labels
                stale_beside(out / f"{case}.nii.gz", f"{case}.npz")
            mark_output_folder(out)  # its files are now predictions: a rerun may overwrite them
            progress.advance(task)
    print(f"wrote {len(cases)} ensembled prediction(s): {out}")
    return out


@hydra.main(version_base="1.3", config_path="configs", config_name="ensemble")
def main(cfg: DictConfig) -> None:
    user_command(ensemble, cfg, "ensemble")


if __name__ == "__main__":
    exit_with_help_if_asked("ensemble")  # its keys with their comments, not Hydra's list of training groups
    run_cli(main)
