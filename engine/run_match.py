"""Whether a composed config builds the same net, on the same data, as a run's own ``config.yaml``.

``resume=<run dir>`` composes its config from the command line, not from the run: without the run's own
overrides it built another net (a width-16 D-Net against a width-4 checkpoint: hundreds of ``size mismatch``
lines) or read the data at another size, after rewriting the run's ``config.yaml``. A test-only run
(``train=false ckpt_path=...``) rebuilds the net from the checkpoint but took the data from the command line,
so a 32-px checkpoint was silently tested at 64 px. Both now compare the keys below with the run's
``config.yaml`` first and name every difference in one line. The file is read as data (``yaml.safe_load``):
nothing in it is built.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from engine.run_files import MAX_RUN_FILE_BYTES, load_yaml_data, run_file_text
from lightning_modules.errors import ConfigError

__all__ = ["PIXELS", "SOURCE", "AUGMENTATION", "RESUME", "DISTILL", "FED_DISTILL", "FEDERATION", "TEST_ONLY",
           "TEST_SPLIT", "same_data_root", "resume_keys", "saved_config", "differences", "debug_difference"]

#: data keys that decide what the net sees of an image: a checkpoint is only meaningful with the same ones
PIXELS = ("window", "out_range", "image_size", "spacing", "orientation", "normalization", "in_channels",
          "num_classes", "patch_size")
#: data keys that decide which data, labels and cases a run trains, validates and tests on
SOURCE = ("_target_", "layout", "target", "label_map", "mask_threshold", "mask_channel", "val_fraction",
          "test_fraction", "seed", "train_cases", "train_slices", "split_file", "case_pattern")
#: data keys that decide how the training slices are augmented (a review: a resume with another ``data.augmentation``
#: rewrote config.yaml as if the whole run had trained with it)
AUGMENTATION = ("augment", "augmentation", "rotation_limit")
#: what a resumed run must keep: its net, what it sees and its data (``data.root`` may move); and its optimiser and
#: schedule, resolved: Lightning restores their state from the checkpoint, so a new lr or a cosine ``T_max`` that
#: follows a larger ``trainer.max_epochs`` did not apply (a review: the lr restarted its cosine, 0.05 -> 0 -> 0.05,
#: while config.yaml said ``T_max: 6``)
RESUME = ("module.net", "module.optimizer", "module.scheduler",
          *(f"data.{k}" for k in (*PIXELS, *SOURCE, *AUGMENTATION)))
#: what a resumed distillation must keep: its teacher, method, loss and taps (another one switched the teacher
#: mid-run silently, or failed after rewriting config.yaml on the KD adapters' state)
DISTILL = ("distill.method", "distill.loss", "distill.taps", "distill.teacher.model", "distill.teacher.ckpt",
           "distill.teacher.max_epochs", "distill.teacher.data",
           # what L_seg, the teacher's loss and the evaluation protocol were (a review: a resume with another
           # module.loss reused finished stages trained with the old one, in one table)
           "distill.teacher.loss", "module.loss", "module.fg_threshold", "module.eval_slices")
#: what a resumed federated distillation must keep: its finished stages are reused, not re-run with new values,
#: so what decides how each stage trained too (a review: ``trainer.max_epochs=20`` on resume trained the unfinished
#: arms longer than the finished ones, in one table)
FED_DISTILL = ("federation.rounds", "federation.local_epochs", "federation.strategy", "fed_distill.student_rounds",
               "fed_distill.teacher_weights", "fed_distill.teacher_scheduler", "fed_distill.student_scheduler",
               "federation.client_val_fraction", "trainer.max_epochs", "distill.teacher.max_epochs",
               "module.optimizer", "module.scheduler", "data.batch_size",
               # a review: another batch limit, precision or clipping trained the unfinished arms differently
               "trainer.limit_train_batches", "trainer.limit_val_batches", "trainer.precision",
               "trainer.gradient_clip_val", "trainer.accumulate_grad_batches")
#: what a resumed federation must keep (``federation.rounds`` may grow, the executor may change): how its clients
#: are made, sampled and trained (a review: ``federation/strategy=fedprox clients_per_round=1 local_epochs=3
#: client_val_fraction=0.5 module.optimizer.lr=0.1`` on resume went on silently, re-carved every client's
#: validation split and rewrote config.yaml as if all rounds had run so)
FEDERATION = ("federation.strategy", "federation.partition", "federation.num_clients", "federation.clients_per_round",
              "federation.local_epochs", "federation.min_clients", "federation.client_val_fraction",
              "federation.partition_unit", "federation.shared_fraction", "federation.early_stopping",
              "federation.client_module", "federation.partial_labels", "federation.unannotated",
              "federation.ignore_index", "federation.privacy", "module.optimizer", "module.scheduler", "module.loss",
              "module.monitor", "data.batch_size")


def resume_keys(saved: Mapping[str, Any]) -> tuple[str, ...]:
    """:data:`RESUME`, each of the run's sites' data keys (``data.sites.<site>.*``: a federation resumed at
    another image size went on silently), and, for a distillation or a federated one, :data:`DISTILL` and
    :data:`FED_DISTILL`; for a federation, :data:`FEDERATION`."""
    keys = list(RESUME)
    sites = _plain(saved, "data.sites")
    if isinstance(sites, Mapping):
        keys += [f"data.sites.{site}.{k}" for site in sites for k in (*PIXELS, *SOURCE, *AUGMENTATION)]
        # what every site takes from data.site_defaults (a review: resume=<run> data.site_defaults.augment=false,
        # or another site_defaults.image_size, went on silently)
        keys += [f"data.site_defaults.{k}" for k in (*PIXELS, *SOURCE, *AUGMENTATION)]
    if isinstance(_plain(saved, "distill"), Mapping):
        keys += DISTILL
    if isinstance(_plain(saved, "federation"), Mapping):
        keys += FEDERATION
    if isinstance(_plain(saved, "fed_distill"), Mapping):
        keys += FED_DISTILL
    return tuple(dict.fromkeys(keys))


#: what a test-only run must keep of the checkpoint's training run (its net comes from the checkpoint; the
#: data may be another site's: cross-site testing is a use, not a mistake)
TEST_ONLY = tuple(f"data.{k}" for k in PIXELS)
#: what decides a dataset's split into training, validation and test cases: a test-only run on the checkpoint's
#: own ``data.root`` keeps them, else its test cases include ones the net trained on (a walkthrough: ``seed=42``
#: against a ``seed=1`` checkpoint scored two of its training cases as test, Dice 0.80, without a word)
TEST_SPLIT = tuple(f"data.{k}" for k in ("_target_", "layout", "val_fraction", "test_fraction", "seed", "split_file",
                                         "case_pattern", "stack_group_size", "synthetic"))


def same_data_root(saved: Mapping[str, Any], cfg: Any) -> str | None:
    """This run's ``data.root`` when the saved run's is the same folder (as written, or resolved), else None."""
    old, new = _plain(saved, "data.root"), _plain(cfg, "data.root")
    if not isinstance(old, str) or not isinstance(new, str):
        return None
    try:
        same = old == new or Path(old).resolve() == Path(new).resolve()
    except (OSError, RuntimeError, ValueError):
        same = False
    return new if same else None


def saved_config(run: Path) -> dict[str, Any] | None:
    """A run's ``config.yaml`` as plain data; ``None`` when it has none (or holds no mapping); a file that
    does not parse is a :class:`ConfigError` naming it (a deeply nested crafted one included)."""
    path = run / "config.yaml"
    if not path.is_file():
        return None
    text = run_file_text(path, run)  # a link or a file past MAX_RUN_FILE_BYTES is not read whole (a review)
    if text is None:
        raise ConfigError(f"{path} is not a run config this framework wrote (a link, or over "
                          f"{MAX_RUN_FILE_BYTES // 2**20} MiB)")
    try:
        cfg = load_yaml_data(text)  # no aliases: a crafted alias bomb is refused, not expanded
    except (yaml.YAMLError, OSError, UnicodeDecodeError, RecursionError, ValueError) as err:
        raise ConfigError(f"{path} does not parse as a run config ({type(err).__name__})") from None
    return cfg if isinstance(cfg, dict) else None


def _plain(cfg: Any, key: str) -> Any:
    if isinstance(cfg, DictConfig):
        node = OmegaConf.select(cfg, key, default=None)
        return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    node: Any = cfg
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def _norm(value: Any) -> Any:
    """Lists and tuples compare alike, ints and floats alike (YAML writes ``[-40, 160]``, a CLI ``[-40.0, 160.0]``)."""
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _norm(v) for k, v in value.items()}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def differences(saved: Mapping[str, Any], cfg: Any, keys: tuple[str, ...] = RESUME) -> list[str]:
    """``key=<this run's value> (the run's <saved value>)`` for each of ``keys`` that differs (``module.net``
    argument by argument). Keys absent from the saved run are not compared."""
    out = []
    for key in keys:
        parent, leaf = key.rsplit(".", 1)
        holder = _plain(saved, parent)
        if not isinstance(holder, Mapping) or leaf not in holder:
            continue  # not in the saved config at all
        old, new = holder[leaf], _plain(cfg, key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            out += [f"{key}.{k}={new.get(k)!r} (the run's {old.get(k)!r})" for k in sorted(set(old) | set(new))
                    if _norm(old.get(k)) != _norm(new.get(k))]
        elif _norm(old) != _norm(new):
            out.append(f"{key}={new!r} (the run's {old!r})")
    return out


def _fast_dev_run(cfg: Any) -> Any:
    """A run's ``fast_dev_run``: Lightning's switch, or the one ``debug=fdr`` applies after composition."""
    return _plain(cfg, "trainer.fast_dev_run") or _plain(cfg, "debug.trainer.fast_dev_run") or False


def debug_difference(saved: Mapping[str, Any], cfg: Any) -> list[str]:
    """A debug (``fast_dev_run``) run and a real one do not continue each other: resuming a debug run without
    it turned its one-batch numbers into a result, and the reverse would add one-batch rounds to a real run."""
    old, new = _fast_dev_run(saved), _fast_dev_run(cfg)
    if bool(old) == bool(new):
        return []
    return [f"trainer.fast_dev_run={new!r} (the run's {old!r}: a debug run and a real one do not continue each other)"]
