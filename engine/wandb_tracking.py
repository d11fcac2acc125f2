"""W&B runs that compare: a name and tags that say what the run is, summaries that keep the best value.

* :func:`run_identity` - ``name``, ``tags`` and a compact ``config={"run": {...}}`` for the WandbLogger:
  experiment, model, data, distillation method, FL strategy and partition, seed, and every other override
  given to the job (a sweep's varying values), so runs can be filtered, grouped and told apart; a debug run
  (``debug=<mode>``) also the tag ``debug:<mode>`` and ``job_type: debug`` (:func:`with_identity`).
* :func:`callbacks.best_metric.track_best` keeps ``<key>_best``/``<key>_best_step`` in the summary.
* :func:`write_summary` - the run's final metrics into the summary (``val/*`` kept as best-of).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from omegaconf import DictConfig, OmegaConf

from callbacks.best_metric import wandb_runs
from engine.run_overrides import method_overrides, override_key, short_override, swept_keys, typed_command



def _choice(group: str) -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        value = HydraConfig.get().runtime.choices.get(group)
        return None if value in (None, "null") else str(value)
    except (ValueError, ImportError):
        return None


def _target_name(node: Any) -> str | None:
    target = node.get("_target_") if isinstance(node, (DictConfig, dict)) else None
    return str(target).rsplit(".", 1)[-1].lower() if target else None


#: the ``model=`` options, read (not imported) to name a test-only run's net as its training run was named
MODEL_CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "model"


def model_options(target: Any) -> list[str]:
    """The ``model=`` options whose config builds ``target`` (a ``_target_`` path), in name order."""
    names = []
    for path in sorted(MODEL_CONFIGS.glob("*.yaml")) if target else []:
        try:
            if OmegaConf.load(path).get("_target_") == target:
                names.append(path.stem)
        except Exception:  # noqa: BLE001 - a config that does not parse names nothing here; composing reports it
            continue
    return names


#: the config group choice of a distillation's teacher net (``distill/_base.yaml``)
TEACHER_MODEL = "model@distill.teacher.model"
#: ``distill.method`` of the teacher a distillation run trains first (``engine.distill.segmentation_cfg``): its W&B
#: run is named, tagged (``distill:teacher_stage``), typed (``job_type: teacher``) and grouped by method apart from
#: a ``distill=teacher`` job, which tests that cached teacher (a review: the two counted each seed twice)
TEACHER_STAGE = "teacher_stage"


def trained_model() -> str:
    """The ``model=`` choice, or for ``distill=teacher`` (which trains the teacher alone) the teacher's model
    choice: a run folder's name said ``resnet18_student_teacher`` of a run that trained a UNet++."""
    return (_choice(TEACHER_MODEL) if _choice("distill") == "teacher" else None) or _choice("model") or ""


def _model_name(cfg: DictConfig) -> str | None:
    """The run's ``model=`` choice (the teacher's for ``distill=teacher``, :func:`trained_model`) when it builds
    the net the run trains, ``cfg.model``; when ``cfg.model`` was replaced, the option that builds that net: the
    teacher's choice when it does, else the first such option. ``cfg.model`` is replaced for a test-only run
    (the checkpoint's net) and in the federated teacher stage of ``fed_distill`` (``teacher_stage_cfg``: the
    teacher's net, with ``distill`` removed), whose W&B run was named after the student's ``model=`` choice."""
    if OmegaConf.select(cfg, "distill.method", default=None) in ("teacher", TEACHER_STAGE):  # or a KD run's teacher
        return _choice(TEACHER_MODEL) or _target_name(OmegaConf.select(cfg, "distill.teacher.model", default=None))
    choice = _choice("model")
    options = model_options(OmegaConf.select(cfg, "model._target_", default=None,
                                             throw_on_resolution_failure=False))
    if options and choice not in options:
        teacher = _choice(TEACHER_MODEL)
        choice = teacher if teacher in options else options[0]
    elif not options and cfg.get("train") is False and cfg.get("ckpt_path"):
        choice = None  # a checkpoint's net no model= option builds: its class name
    return choice or _target_name(cfg.get("model"))


def debug_mode(cfg: DictConfig) -> str | None:
    """The run's debug mode: ``debug=<mode>``'s (``fdr``, ``limit``...), ``fdr`` for Lightning's own
    ``++trainer.fast_dev_run`` without ``debug=``, else None (a real run)."""
    mode = OmegaConf.select(cfg, "debug.mode", default=None, throw_on_resolution_failure=False)
    if mode:
        return str(mode)
    return "fdr" if OmegaConf.select(cfg, "trainer.fast_dev_run", default=None,
                                     throw_on_resolution_failure=False) else None


def run_facts(cfg: DictConfig) -> dict[str, Any]:
    """What the run is: experiment, model, data, distillation method, strategy, partition, seed, and the debug
    mode of a debug run (:func:`debug_mode`; absent for a real run)."""
    fed = cfg.get("federation")
    distill = cfg.get("distill")
    facts = {
        "exp": str(cfg.get("exp_name", "default")),
        "model": _model_name(cfg),
        "data": _choice("data") or _target_name(cfg.get("data")),
        "distill": str(distill.get("method")) if isinstance(distill, DictConfig) else None,
        "strategy": (_choice("federation/strategy") or _target_name(fed.get("strategy"))) if fed else None,
        "partition": (_choice("federation/partition") or _target_name(fed.get("partition"))) if fed else None,
        "executor": _choice("federation/executor") if fed else None,  # a tag; a given one is in the overrides
        "seed": int(cfg.get("seed", 0)),
        "debug": debug_mode(cfg),  # a debug run: tag debug:<mode>, job_type debug (with_identity)
    }
    return {k: v for k, v in facts.items() if v is not None}


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    """``name``/``tags``/``config`` for ``WandbLogger``: the run's facts (:func:`run_facts`) plus, in the name and
    the tags, the overrides a sweep varies, or a single run's method overrides but paths (a W&B review: two runs of
    ``trainer.max_epochs=2`` and ``=5`` were both ``lits_dnet-dnet-s1``; a sweep's fixed ones are its jobs' alike,
    and its ``sweep:`` tag tells sweeps apart); every method override is in ``config.run.overrides``."""
    facts = run_facts(cfg)
    typed = {override_key(a) for a in typed_command() if "=" in a}
    data = facts.get("data") if "data" in typed else None  # a review: a data= sweep's runs shared one name
    parts = [facts["exp"], facts.get("model"), data, facts.get("distill"), facts.get("strategy"),
             facts.get("partition"), f"s{facts['seed']}"]
    name = "-".join(str(p) for p in parts if p)
    overrides = method_overrides()
    if facts.get("distill") == TEACHER_STAGE:  # the student's KD settings are not the teacher's (a review)
        overrides = [o for o in overrides if not override_key(o).startswith("distill.")
                     or override_key(o).startswith("distill.teacher.")]
    sweep, varied = sweep_name(), swept_keys()
    swept = [short_override(o) for o in overrides if override_key(o) in varied] if sweep and varied else [
        short_override(o) for o in overrides if "/" not in o.partition("=")[2]]  # one run (-m of one job too)
    if swept:
        name += "-" + ",".join(swept)
    tags = [str(t) for t in (cfg.get("tags") or [])]
    tags += [f"{k}:{v}" for k, v in facts.items()] + swept
    run = {**facts, "overrides": overrides, "method": method_id(facts, overrides)}
    if sweep:
        run["sweep"] = sweep
        tags.append(f"sweep:{sweep}")
    # W&B takes tags of up to 64 characters: a longer one (a swept augmentation pipeline) is cut with a digest of
    # the whole, so two runs that differ past the cut keep two tags (a review: they shared one)
    return {"name": short_name(name), "tags": list(dict.fromkeys(short_name(t, 64) for t in tags)),
            "config": {"run": run}}


def short_name(name: str, limit: int = 128) -> str:
    """``name`` if it fits, else cut with an 8-hex digest of the whole (a walkthrough: two runs differing only past
    the cut shared a name)."""
    if len(name) <= limit:
        return name
    return f"{name[:limit - 9].rstrip(',-')}~{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def method_id(facts: Mapping[str, Any], overrides: Iterable[str]) -> str:
    """All that makes a run's method, its seed left out: what a dashboard groups seeds by (``config.run.method``).
    A federation's transport counts where the command chose it (``federation/executor=flower``, an override): a
    Flower-vs-in-process comparison stays two rows, in W&B as in ``experiments.report``. A review: the recipe
    grouped by ``config.run.model``, which pooled runs of one model with other settings (two epochs and one, each
    ``lits_dnet-dnet-s1`` in group ``lits_dnet``) into one mean."""
    parts = [f"{k}={v}" for k, v in facts.items() if k not in ("seed", "debug", "executor")]
    return " ".join([*parts, *sorted(str(o) for o in overrides)])[:500]


def sweep_name() -> str | None:
    """The sweep folder's name of a Hydra multirun job (its start time by default), else None: which sweep a W&B
    run came from (``config.run.sweep``, tag ``sweep:<name>``)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        return Path(str(hc.sweep.dir)).name[:48] if hc.mode == RunMode.MULTIRUN else None
    except (ValueError, ImportError, AttributeError):
        return None


#: the ``job_type`` of every debug run's W&B run (its tags hold ``debug:<mode>``)
DEBUG_JOB_TYPE = "debug"


def job_type_given() -> bool:
    """Whether the command line sets a logger's ``job_type`` (``logger.wandb.job_type=eval``)."""
    from engine.debug import command_line_keys

    return any(k.startswith("logger.") and k.endswith(".job_type") for k in command_line_keys())


IDENTITY_FILE = "wandb_identity.json"
#: the tag of a federation's transport (``executor:flower``; :func:`run_facts`)
EXECUTOR_TAG = "executor:"


def _under_hydra() -> bool:
    """Whether this process runs a Hydra command (the Flower ServerApp does not: it reads a written config)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.get()
        return True
    except (ValueError, ImportError):
        return False


def kept_identity(cfg: DictConfig, ident: dict[str, Any]) -> dict[str, Any]:
    """A resumed run's W&B name, tags and method overrides as its first start set them (``wandb_identity.json``
    in its run dir, written by global rank 0 then): a review resumed a sweep job with ``resume=<job dir>`` and its
    run lost the swept values from its name and tags (the command typed to resume it is no sweep)."""
    from engine.artifacts import atomic_write_text
    from engine.run_files import run_json
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    out = Path(str(cfg.paths.output_dir))
    kept = run_json(out / IDENTITY_FILE, out) if cfg.get("resume") else None
    run = ident["config"]["run"]
    if (isinstance(kept, dict) and isinstance(kept.get("name"), str) and isinstance(kept.get("tags"), list)
            and isinstance(kept.get("overrides"), list)):
        overrides, grown = _lengths_now([str(o) for o in kept["overrides"]], run.get("overrides", []))
        facts = {k: v for k, v in run.items() if k not in ("overrides", "method", "sweep")}
        run = {**facts, "overrides": overrides, "method": method_id(facts, overrides)}
        if isinstance(kept.get("sweep"), str):
            run["sweep"] = kept["sweep"][:48]
        # the transport is this start's (a federation may resume under another executor): its tag follows
        # ``config.run.executor`` (a review: a run resumed under Flower kept ``executor:sequential``)
        now = [t for t in ident["tags"] if str(t).startswith(EXECUTOR_TAG)]
        tags = [short_name(str(grown.get(t, t)), 64) for t in kept["tags"] if not str(t).startswith(EXECUTOR_TAG)]
        tags = tags[:63] + now[:1]
        return {**ident, "name": kept["name"][:128], "tags": tags, "config": {"run": run}}
    if getattr(rank_zero_only, "rank", 0) == 0:
        first = {"name": ident["name"], "tags": ident["tags"], "overrides": run.get("overrides", [])}
        if run.get("sweep"):
            first["sweep"] = run["sweep"]
        atomic_write_text(out / IDENTITY_FILE, json.dumps(first) + "\n")
    return ident


def _lengths_now(kept: list[str], typed: list[str]) -> tuple[list[str], dict[str, str]]:
    """The kept method overrides with this start's value of each setting that trains a run longer
    (:data:`engine.finished_run.LENGTH`: a resume may raise them), and the tags that change with them. A
    walkthrough: a 3-round federation resumed with ``federation.rounds=4`` kept ``federation.rounds=3`` in its
    ``config.run.method``, and a dashboard pooled it with the 3-round runs."""
    from engine.finished_run import LENGTH

    now = {override_key(o): o for o in typed if override_key(o) in LENGTH}
    out = [now.pop(override_key(o), o) if override_key(o) in LENGTH else o for o in kept]
    grown = {short_override(o): short_override(n) for o, n in zip(kept, out) if o != n}
    return out + list(now.values()), grown


def carried_identity(logger_cfg: DictConfig) -> bool:
    """Whether ``logger_cfg`` already holds a launcher's W&B identity (a written config read by a process that runs
    no Hydra command, the Flower ServerApp): its ``config.run`` names the experiment. A walkthrough found every
    Flower run named alike (no overrides; ``partition:by_group`` guessed from class names), and a later review the
    flaws of keeping it in a side file beside the run (a copied config had none; a reused folder lent the earlier
    run's name; a logger under another key wrote none)."""
    run = OmegaConf.select(logger_cfg, "config.run", default=None)
    return (not _under_hydra() and isinstance(run, DictConfig) and isinstance(run.get("exp"), str)
            and isinstance(logger_cfg.get("name"), str))


def with_identity(cfg: DictConfig, logger_cfg: DictConfig) -> DictConfig:
    """``logger_cfg`` (a WandbLogger config) with :func:`run_identity`'s name, tags and ``config``; a name
    set in ``logger.wandb.name`` is kept, given tags come first. A debug run (``debug=<mode>``, centralised or
    federated) has ``job_type`` ``debug`` (unless the command line sets it) and the tag ``debug:<mode>``, so
    a dashboard filtering ``group = <exp>`` can leave debug runs out (they shared the real runs' name, tags and
    ``job_type: train``). One that carries its identity (:func:`carried_identity`) is used as written."""
    plain = OmegaConf.to_container(logger_cfg, resolve=True)
    if carried_identity(logger_cfg):
        plain["tags"] = [short_name(str(t), 64) for t in plain.get("tags") or []][:64]
        plain["name"], plain["_convert_"] = short_name(plain["name"]), "all"
        return OmegaConf.create(plain)
    ident = run_identity(cfg)
    # the name and tags as used (a given logger.wandb.name included), kept for a resume of this run dir
    ident = kept_identity(cfg, {**ident, "name": plain.get("name") or ident["name"],
                                "tags": list(dict.fromkeys([*(short_name(str(t), 64) for t in plain.get("tags") or ()),
                                                            *ident["tags"]]))})
    plain["name"], plain["tags"], plain["config"] = ident["name"], ident["tags"], ident["config"]
    if "debug" in ident["config"]["run"] and not job_type_given():
        plain["job_type"] = DEBUG_JOB_TYPE
    elif ident["config"]["run"].get("distill") == TEACHER_STAGE and not job_type_given():
        plain["job_type"] = "teacher"
    plain["_convert_"] = "all"  # wandb.init wants a plain dict, not a DictConfig
    return OmegaConf.create(plain)


def write_summary(loggers: Iterable[Any], metrics: Mapping[str, Any]) -> None:
    """The run's final scalar metrics into each W&B summary; ``val/*`` keys keep their best-of summary."""
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
               and not (k.startswith("val/") and not k.endswith(("_best", "_best_step")))}
    for run in wandb_runs(loggers):
        run.summary.update(scalars)
