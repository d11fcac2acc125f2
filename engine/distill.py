"""Distillation runs (paper 001, Table 1): ``python -m experiments.run +exp=kits_hlfd distill=<method>``.

``cfg.distill.method`` picks the row of Table 1:

* ``teacher`` - the teacher alone (UNet++), trained and tested like any centralised run;
* ``none``    - the student alone (no KD), with the distillation module's L_seg and protocol;
* any KD method (``hlfd``, ``pixel_kd``, ``at``, ``skd``, ``dkd``, ``ifd``, ``hifd``) - the student
  trained by :class:`~lightning_modules.distillation.DistillationModule` from a frozen teacher.

When ``distill.teacher.ckpt`` is null the teacher is trained first on the same data and split and
cached under ``${paths.data_dir}/teachers/<hash>.ckpt`` (hash of the teacher model config, the data
config, the seed and the teacher's training length), so every method and every later run with the
same seed reuses it.  Every run writes ``metrics.json`` (with ``distill/method`` and
``distill/protocol``) and ``student.pt`` (the deployable net alone) into its run dir.
"""
from __future__ import annotations

import copy
import hashlib
import inspect
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict

from lightning_modules.atomic import atomic_output
from datamodules.image_files import IMAGE_FILE_FORMAT
from datamodules.volume_cache import CACHE_FORMAT
from engine import artifacts
from engine.builders import ConfigError, build_module
from engine.checkpoint_checks import refuse_untrained_test
from engine.fit import output_dir, train_and_test
from engine.run_match import AUGMENTATION
from engine.wandb_tracking import TEACHER_STAGE
from lightning_modules.base import build
from lightning_modules.distill_setup import check_same_padding, dry_run, example_shape, parse_taps
from lightning_modules.hooks import resolve_module
from lightning_modules.kinds import is_whole
from lightning_modules.segmentation import SegmentationModule
from lightning_modules.targets import check_targets

log = logging.getLogger("engine.distill")

#: methods that are not a KD loss: the teacher alone and the student without KD.
PLAIN_METHODS = ("teacher", "none")
PROTOCOLS = {"foreground": "a (foreground slices)", "all": "b (all slices)"}


def _plain(node: Any, resolve: bool = True) -> Any:
    return OmegaConf.to_container(node, resolve=resolve) if isinstance(node, DictConfig) else node


def _segmentation_keys() -> set[str]:
    """The settings of ``cfg.module`` a plain segmentation run of the teacher takes (net and loss come apart)."""
    return set(inspect.signature(SegmentationModule.__init__).parameters) - {"self", "net", "loss"}


#: trainer keys that change nothing a teacher learns (where it writes, what it prints)
_COSMETIC_TRAINER_KEYS = ("_target_", "default_root_dir", "log_every_n_steps", "enable_progress_bar",
                          "enable_model_summary", "num_sanity_val_steps", "logger", "callbacks", "profiler")


def teacher_key(cfg: DictConfig) -> dict[str, Any]:
    """What determines a trained teacher: its net and loss, the data (and thus split), the seed, the module
    settings it trains and is selected with (optimiser, scheduler, evaluation), every trainer setting but
    the cosmetic ones (precision, gradient clipping, validation batches, ...), its effective ``max_epochs``,
    and the checkpoint monitor that picks ``best.ckpt``, and the slice cache's format number. An audit found the key holding only the first four
    and the length: ``-m module.optimizer.lr=a,b`` reused the first run's teacher for the second."""
    t = cfg.distill.teacher
    as_trained = cfg
    if t.get("max_epochs") is not None:  # the module resolved as the teacher trains (its scheduler's T_max is its
        as_trained = copy.deepcopy(cfg)  # own length; a review: the student's epochs changed the key, a retrain)
        with open_dict(as_trained):
            as_trained.trainer.max_epochs = int(t.max_epochs)
    module = {k: v for k, v in _plain(as_trained.module).items() if k in _segmentation_keys()}
    trainer = {k: v for k, v in _plain(as_trained.trainer).items() if k not in _COSMETIC_TRAINER_KEYS}
    ckpt = (cfg.get("callbacks") or {}).get("model_checkpoint") or {}
    # the loss it trains with: distill.teacher.loss, else module.loss (a review: the key held the first only, and
    # module.loss is not among the module keys, so a teacher trained with another L_seg was reused)
    return {"model": _plain(t.model), "loss": _plain(teacher_loss(cfg)), "data": _plain(teacher_data(cfg)),
            "seed": int(cfg.seed), "module": module, "trainer": trainer,
            "monitor": [ckpt.get("monitor"), ckpt.get("mode")],
            # a fix to the preprocessing (the slice cache's format) changes what a teacher learnt from the same
            # config: a review found teachers trained on the masks shifted before format 2 still served
            "data_format": CACHE_FORMAT, "image_file_format": IMAGE_FILE_FORMAT}


#: what ``distill.teacher.data`` may change: how much of the training split the teacher sees and how it is fed
TEACHER_DATA_KEYS = ("train_cases", "train_slices", *AUGMENTATION, "batch_size", "num_workers")


def teacher_data(cfg: DictConfig) -> DictConfig:
    """``cfg.data`` with ``distill.teacher.data`` merged on top: what the teacher trains on (e.g.
    ``train_cases: null`` where the student has a labelled-data budget; the split itself must not change)."""
    extra = cfg.distill.teacher.get("data") or {}
    if not extra:
        return cfg.data
    bad = sorted(set(extra) - set(TEACHER_DATA_KEYS))
    if bad:  # a review: case_pattern, case_shard or layout (not on the old list of refused keys) changed the split
        raise ConfigError(f"distill.teacher.data may set only {', '.join(TEACHER_DATA_KEYS)}, not "
                          f"{', '.join(bad)}: teacher and student are split and tested on the same cases")
    if extra.get("augmentation") is not None:  # named as set, before the teacher trains (a review: data.augmentation)
        from datamodules.augmentation_checks import check_augmentation

        check_augmentation(extra.augmentation, "distill.teacher.data.augmentation")
    return OmegaConf.merge(cfg.data, extra)


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def teacher_cache_path(cfg: DictConfig, key: dict[str, Any] | None = None) -> Path:
    """``<paths.data_dir>/teachers/<digest of teacher_key>.ckpt`` (``key``: :func:`teacher_key`, when known)."""
    return Path(cfg.paths.data_dir) / "teachers" / f"{_digest(key or teacher_key(cfg))}.ckpt"


def segmentation_cfg(cfg: DictConfig, model: Any, loss: Any, out: Path, max_epochs: int | None = None,
                     sub_run: bool = False, data: DictConfig | None = None) -> DictConfig:
    """A copy of ``cfg`` that is a plain centralised run of ``model`` with ``loss`` and the distillation
    module's optimiser, scheduler and evaluation protocol, writing into ``out``. ``sub_run``: keep only
    the checkpoint callbacks, the progress (bar and ``teacher epoch i/N`` lines), the best-of summaries and the
    CSV and W&B loggers (the teacher pre-training inside a distillation run, ``distill.method=teacher_stage``).
    ``data``: the data config to use instead of ``cfg.data`` (the teacher's, :func:`teacher_data`)."""
    new = copy.deepcopy(cfg)
    if data is not None:
        with open_dict(new):
            new.data = data
    module = {k: v for k, v in _plain(cfg.module, resolve=False).items() if k in _segmentation_keys()}
    module.update({"_target_": "lightning_modules.segmentation.SegmentationModule", "_recursive_": False,
                   "net": "${model}", "loss": _plain(loss, resolve=False)})
    with open_dict(new):
        new.model = _plain(model)
        new.module = module
        new.paths.output_dir = str(out)
        if max_epochs is not None:
            new.trainer.max_epochs = int(max_epochs)
        if sub_run:
            kept = ("model_checkpoint", "last_checkpoint", "rich_progress_bar", "epoch_log",  # progress: a walkthrough
                    "best_metric")
            new.callbacks = {k: _plain(cfg.callbacks[k], resolve=False) for k in kept  # saw no line for the teacher
                             if k in cfg.callbacks and cfg.callbacks[k] is not None}
            if "epoch_log" in new.callbacks:
                new.callbacks["epoch_log"]["prefix"] = "teacher "
            # the CSV log, and a W&B run of its own (a W&B review: the teacher's curves reached no dashboard), named,
            # tagged and grouped as the teacher stage, apart from the student and a distill=teacher job
            new.logger = {k: _plain(cfg.logger[k], resolve=False) for k in ("csv", "wandb")
                          if cfg.get("logger") and cfg.logger.get(k) is not None}
            if new.logger.get("wandb", {}).get("name"):  # a name given to the run: the student's, not the teacher's
                new.logger["wandb"]["name"] = f"{new.logger['wandb']['name']}-teacher"
            new.distill.method = TEACHER_STAGE
            # resume=<run dir> of a run stopped in its teacher stage continues teacher/checkpoints/last.ckpt
            new.ckpt_path, new.resume, new.test, new.print_per_case = None, bool(cfg.get("resume")), False, False
            new.init_weights = new.init_weights_module = new.init_weights_sha256 = None  # the student's file only
    return new


def teacher_loss(cfg: DictConfig) -> Any:
    return cfg.distill.teacher.get("loss") or cfg.module.loss


def _atomic_copy(src: Path, dst: Path) -> Path:
    with atomic_output(dst) as tmp:
        shutil.copyfile(src, tmp)
    return dst


def ensure_teacher(cfg: DictConfig) -> Path:
    """The teacher checkpoint: ``distill.teacher.ckpt`` when set, else the cached one, else train it
    (same data, split and seed) in ``<run dir>/teacher`` and cache its best checkpoint atomically."""
    given = cfg.distill.teacher.get("ckpt")
    if given:
        return Path(given)
    key = teacher_key(cfg)
    cache = teacher_cache_path(cfg, key)
    if cache.is_file():
        log.info("reusing cached teacher %s", cache)
        return cache
    if cfg.distill.teacher.get("model") is None:
        raise ConfigError("distill.teacher.ckpt is null and distill.teacher.model is null: nothing to train")
    log.info("training the teacher first (cache: %s)", cache)
    tcfg = segmentation_cfg(cfg, cfg.distill.teacher.model, teacher_loss(cfg), output_dir(cfg) / "teacher",
                            cfg.distill.teacher.get("max_epochs"), sub_run=True, data=teacher_data(cfg))
    _claim_teacher_dir(Path(tcfg.paths.output_dir), _stamp_key(key), cache.stem)
    if tcfg.trainer.get("fast_dev_run"):  # fast_dev_run writes no checkpoint: one batch, one epoch instead
        n = int(tcfg.trainer.fast_dev_run)  # True -> 1
        with open_dict(tcfg):
            tcfg.trainer.update(fast_dev_run=False, max_epochs=1, limit_train_batches=n, limit_val_batches=n,
                                log_every_n_steps=1)  # as fast_dev_run logs (Lightning warns about n < 5 batches)
            if not OmegaConf.select(tcfg, "debug.mode", default=None):  # still a debug run for its W&B run and
                tcfg.debug = {"mode": "fdr"}  # metrics.json (wandb_tracking.debug_mode), fast_dev_run set or not
    train_and_test(tcfg)
    ckpt_dir = Path(tcfg.paths.output_dir) / "checkpoints"
    best = ckpt_dir / "best.ckpt"
    src = best if best.is_file() else ckpt_dir / "last.ckpt"
    if not src.is_file():
        raise ConfigError(f"teacher training wrote no checkpoint in {ckpt_dir} (is callbacks.model_checkpoint set?)")
    return _atomic_copy(src, cache)


#: data keys a run may change on resume without changing what its teacher learns (the folder may move; the number of
#: loader workers changes no number)
_MOVABLE_DATA_KEYS = ("root", "num_workers")


def _without_movable(data: dict) -> dict:
    """``data`` without :data:`_MOVABLE_DATA_KEYS`, each site's too (``data.sites.<site>.root`` follows the root)."""
    out = {k: v for k, v in data.items() if k not in _MOVABLE_DATA_KEYS}
    if isinstance(out.get("sites"), dict):
        out["sites"] = {s: _without_movable(v) if isinstance(v, dict) else v for s, v in out["sites"].items()}
    return out


def _stamp_key(key: dict[str, Any]) -> str:
    """The digest of :func:`teacher_key`'s ``key`` without :data:`_MOVABLE_DATA_KEYS` (a review: a resume from a
    moved data folder was refused as another teacher)."""
    if isinstance(key.get("data"), dict):
        key = {**key, "data": _without_movable(key["data"])}
    # a teacher folder stamped before the image files' format was in the key is still this run's teacher: the
    # format retires *cached* teachers (other runs), not a resume of this one
    return _digest({k: v for k, v in key.items() if k != "image_file_format"})


def _claim_teacher_dir(tdir: Path, stamp_key: str, cache_key: str) -> None:
    """Stamp ``<run>/teacher`` with the cache key its teacher trains for; a resume whose teacher has another key is
    refused. A review: a resume with a larger ``trainer.max_epochs`` continued the old teacher's ``last.ckpt`` (2
    epochs, T_max 2) and cached it under the new key, which every later run with those settings then reused."""
    stamp = tdir / "teacher_key.txt"
    if stamp.is_file():  # a teacher folder from before the stamp is continued, as it was (its run's config is checked)
        with stamp.open(errors="replace") as fh:  # a run folder's file is data: a few bytes, never the whole of it
            held = fh.read(128).strip()
        if held not in (stamp_key, cache_key):  # the cache key: what the first stamps held (same teacher, same folder)
            raise ConfigError(f"resume: {tdir} holds a teacher trained for key {held}, but this config's teacher is "
                              f"{stamp_key} (distill.teacher.*, module, trainer or data settings differ): repeat "
                              f"the run's overrides, or start a new run")
        return
    tdir.mkdir(parents=True, exist_ok=True)
    artifacts.atomic_write_text(stamp, stamp_key + "\n")


def check_padding_before_the_teacher(cfg: DictConfig) -> None:
    """:func:`~lightning_modules.distill_setup.check_same_padding` at ``data.image_size``, and every
    ``distill.taps`` path and head naming a module of its net, from the two nets' configs, before a teacher is
    trained for a pair the student's module would refuse (a walkthrough: ``distill.taps.0.student=encoder.layer9``
    and a teacher ``head`` typo were reported only after the teacher had trained, hours at paper size). The
    teacher's taps, and the module's dry forward of both nets (an ``index`` that picks nothing, a module that never
    runs, other class counts), are checked only when its net comes from ``distill.teacher.model`` without a given
    checkpoint (with one, the module checks them against the checkpoint's own net before anything trains)."""
    teacher_cfg = cfg.distill.teacher.get("model")
    teacher = build(teacher_cfg, what="distill.teacher.model") if teacher_cfg is not None else None
    student = build(cfg.model, what="model")
    size = OmegaConf.select(cfg, "data.image_size", default=None)
    if is_whole(size) and teacher is not None:
        check_same_padding(teacher, student, (size, size))
    nets = {"student": student, "teacher": None if cfg.distill.teacher.get("ckpt") else teacher}
    taps = cfg.distill.get("taps")
    parsed = parse_taps(OmegaConf.to_container(taps, resolve=True) if taps is not None else [])
    for tap in parsed:
        net = nets[tap.side]
        for path, what in ((tap.path, "path"), (tap.head, "head path")):
            if net is None or path is None:
                continue
            try:
                resolve_module(net, path)
            except ValueError as err:  # the words DistillationModule's own check uses
                raise ConfigError(f"distill.taps: bad {tap.side} {what} for {type(net).__name__}: {err}") from None
    example = OmegaConf.select(cfg, "module.example_size", default=None)
    if nets["teacher"] is not None and example is not None:  # the module's dry forward: an index that picks nothing,
        dry_run(teacher, student, parsed, example_shape(student, _plain(example)))  # a module that never runs


def run_distillation(cfg: DictConfig) -> dict[str, Any]:
    """One row of Table 1 for one dataset and seed: teacher, student w/o KD, or a KD method."""
    from lightning_modules.distillation import save_student

    method = str(cfg.distill.get("method") or "")
    out = output_dir(cfg)
    eval_slices = cfg.module.get("eval_slices", "all")
    extra = {"distill/method": method, "distill/protocol": PROTOCOLS.get(eval_slices, eval_slices),
             "distill/eval_slices": eval_slices}
    if cfg.distill.get("arm"):  # a federated distillation's arm at one site (federation.fed_distill_config.site_cfg)
        extra.update({"distill/arm": str(cfg.distill.arm), "distill/site": str(cfg.distill.get("site", ""))})
    if method == "teacher":
        given = cfg.distill.teacher.get("ckpt")
        cache = Path(given) if given else teacher_cache_path(cfg)
        tcfg = segmentation_cfg(cfg, cfg.distill.teacher.model, teacher_loss(cfg), out,
                                cfg.distill.teacher.get("max_epochs"), data=teacher_data(cfg))
        if cache.is_file():  # test the cached / given teacher, no retraining
            with open_dict(tcfg):
                tcfg.train, tcfg.ckpt_path = False, str(cache)
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        module = build_module(tcfg)
        metrics = train_and_test(tcfg, module=module, extra_metrics={**extra, "distill/teacher_ckpt": str(cache)})
        best = out / "checkpoints" / "best.ckpt"
        if not cache.is_file() and best.is_file():
            _atomic_copy(best, cache)
        return metrics
    if method == "none":
        scfg = segmentation_cfg(cfg, cfg.model, cfg.module.loss, out)
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        module = build_module(scfg)
        return train_and_test(scfg, module=module, extra_metrics=extra,
                              on_tested=lambda m: save_student(m, out / "student.pt", method=method))
    if cfg.distill.get("loss") is None:
        raise ConfigError(f"distill.method={method!r} has no distill.loss; valid methods: teacher, none, or a KD loss")
    # the KD loss's _target_ before a teacher is trained for it (a walkthrough: a typo was reported after the teacher)
    if not isinstance(cfg.distill.loss, DictConfig) or "_target_" not in cfg.distill.loss:
        raise ConfigError(f"distill.loss={str(cfg.distill.loss)[:80]}: expected a KD loss config with a _target_ "
                          f"(pick a method with distill=<name>, e.g. distill=hlfd)")
    check_targets(OmegaConf.to_container(cfg.distill.loss, resolve=True), "distill.loss")
    check_padding_before_the_teacher(cfg)
    if not cfg.get("train", True) and not cfg.get("ckpt_path") and not (
            cfg.get("resume") and (out / "checkpoints" / "last.ckpt").is_file()):
        refuse_untrained_test()  # before a teacher is trained for a student that would not be
    ckpt = ensure_teacher(cfg)
    kcfg = copy.deepcopy(cfg)
    with open_dict(kcfg):
        kcfg.distill.teacher.ckpt = str(ckpt)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_module(kcfg)
    return train_and_test(kcfg, module=module, extra_metrics={**extra, "distill/teacher_ckpt": str(ckpt)},
                          on_tested=lambda m: save_student(m, out / "student.pt", method=method))
