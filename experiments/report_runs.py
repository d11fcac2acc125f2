"""Which runs a report holds and which method each belongs to (:mod:`experiments.report`): run dirs below the
given paths (finished, failed, unfinished; a run's own stages and what a later run set aside are none of them),
their labels (the overrides that differ between runs, judged within each experiment; what all runs, or all
runs of one experiment, share is returned apart), and what says two runs are not comparable (a seed counted
twice, environments that differ).
"""
from __future__ import annotations

import glob
import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from engine.continue_command import canonical_override
from engine.finished_run import failed_last
from engine.run_files import debug_run, plain_text, run_config, run_json
from engine.run_overrides import override_key
from experiments.report_overrides import run_overrides
from experiments.run_folder import set_aside
from lightning_modules.kinds import is_whole


CONTEXT_KEYS = ("exp", "data", "data.root", "exp_name")  # overrides that change the task, not the method
NO_CONTEXT = "no +exp, data, data.root or exp_name override"  # the experiment of runs typed none of those


def json_object(path: Path, root: Path | None = None) -> dict | None:
    """A run file's JSON object, or ``None`` when it is no such thing (a killed write; a crafted file: a link,
    too large, nested past Python's recursion limit, outside ``root`` -- default its folder;
    :func:`engine.run_files.run_json`)."""
    value = run_json(path, root or path.parent)
    return value if isinstance(value, dict) else None


def find_runs(paths: list[str]) -> tuple[list[Path], list[Path]]:
    """Run dirs holding ``metrics.json`` and those holding ``failed.json`` below the given paths/globs; one holding
    both is failed when its ``failed.json`` is the newer (:func:`failed_last`)."""
    done, failed = set(), set()
    for pattern in paths:
        for root in [Path(p) for p in glob.glob(pattern)] or [Path(pattern)]:
            found = {p.parent for p in [*root.rglob("metrics.json"), *root.rglob("failed.json")] if not set_aside(p)}
            # a run's own stages (a distillation's teacher/, a federated distillation's arms) are not runs of
            # their own, also when the run itself failed or was killed after them (a review: a killed
            # distillation's teacher/ became a "(defaults)" row of teachers' scores)
            found = {d for d in found if not any(_is_run_dir(a) for a in _parents_within(d, root))}
            done.update(d for d in found if (d / "metrics.json").is_file())
            failed.update(d for d in found if failed_last(d))
    return sorted(done - failed), sorted(failed)


def _parents_within(d: Path, root: Path) -> list[Path]:
    """``d``'s ancestors from its parent up to ``root`` (included)."""
    out = []
    for a in d.parents:
        out.append(a)
        if a == root:
            return out
    return out if root in d.parents else []


def _is_run_dir(d: Path) -> bool:
    """A run folder: Hydra's ``.hydra/``, or a run's result or failure record."""
    return (d / ".hydra").is_dir() or (d / "metrics.json").is_file() or (d / "failed.json").is_file()


def find_unfinished(paths: list[str]) -> list[Path]:
    """Run dirs (``.hydra/`` or ``config.yaml``) with neither ``metrics.json`` nor ``failed.json``: killed
    or crashed before the end."""
    found = set()
    for pattern in paths:
        for root in [Path(p) for p in glob.glob(pattern)] or [Path(pattern)]:
            found.update(p.parent for p in root.rglob(".hydra") if p.is_dir())
            found.update(p.parent for p in root.rglob("config.yaml") if p.parent.name != ".hydra")
    # a run's own stages (teacher/, a federated distillation's arms) are part of it, not runs of their own
    found = {r for r in found if not any(a in found for a in r.parents)}
    return sorted(r for r in found if not (r / "metrics.json").is_file() and not (r / "failed.json").is_file()
                  and r.name not in ("teacher", "files"))


def is_debug(run: Path) -> bool:
    """:func:`debug_run` of a run dir."""
    return debug_run(json_object(run / "metrics.json"), run_config(run))


def run_labels(runs: list[Path], siblings: list[Path] = ()) -> tuple[dict[Path, str], list[str]]:
    """The method each run belongs to: the overrides that differ between runs (those shared by every
    run are returned separately, printed once above the table). ``siblings`` (the sweep's failed jobs) count
    in what is shared: one finished job beside a failed one is labelled by what differs, not by its whole
    command. :func:`label_parts` says what each experiment's runs share beside."""
    labels, common, _ = label_parts(runs, siblings)
    return labels, common


def label_parts(runs: list[Path], siblings: list[Path] = ()) -> tuple[dict[Path, str], list[str], dict[str, list[str]]]:
    """:func:`run_labels`, and, when the runs are of several experiments, what all runs of one experiment share
    beyond what every run shares ({experiment: overrides}, printed once per experiment above the table). A
    walkthrough: over a centralised sweep (``trainer.max_epochs=2``) and a federated one (``trainer.max_epochs=1
    federation.rounds=1``) only what both shared was printed, and each one's own settings were nowhere. A key
    typed in some runs of an experiment and not in others is in all their labels (:func:`_filled`)."""
    filled = _filled({run: run_overrides(run) for run in [*siblings, *runs]})
    ovs = {run: filled[run] for run in runs}
    every = [*ovs.values(), *(filled[r] for r in siblings)]
    common = _shared(next(iter(ovs.values()), []), every)
    contexts = {tuple(_context(v)) for v in every}
    if len(contexts) > 1:  # several experiments: what differs is judged within each (a review: one sweep's
        # data.sites.* entered every label)
        return _labels_by_context(ovs, every, common), common, _by_experiment(every, common)
    labels = {run: _by_key(o for o in v if o not in common) for run, v in ovs.items()}
    if not any(labels.values()):  # one method over seeds: name it by its overrides
        return {run: " ".join(v) or run.parent.name for run, v in ovs.items()}, [], {}
    return {run: label or "(defaults)" for run, label in labels.items()}, common, {}


def _shared(first: list[str], every: list[list[str]]) -> list[str]:
    """The overrides of ``first`` that every list in ``every`` holds (none when there is one list)."""
    return [o for o in first if all(o in v for v in every)] if len(every) > 1 else []


def _by_key(overrides: Iterable[str]) -> str:
    """Sorted by key: one method however its overrides were typed (a review: two orders were two rows)."""
    return " ".join(sorted(overrides, key=override_key))


def _context(overrides: list[str]) -> list[str]:
    return [o for o in overrides if override_key(o) in CONTEXT_KEYS]


def _filled(ovs: dict[Path, list[str]]) -> dict[Path, list[str]]:
    """Each run's overrides and, for each key another run of its experiment typed and it did not, that key at
    the run's own value (:func:`_own_value`). A walkthrough: runs of ``model.width=32``, ``data.layout=...`` and
    ``data.target=...`` were each labelled by their own override only, as if the others' were the same in all."""
    typed: dict[tuple, dict[str, None]] = defaultdict(dict)  # per experiment, its keys in the order first typed
    for v in ovs.values():
        typed[tuple(_context(v))].update(dict.fromkeys(map(override_key, v)))
    out = {}
    for run, v in ovs.items():
        own = set(map(override_key, v))
        missing = [k for k in typed[tuple(_context(v))] if k not in own]
        cfg = run_config(run) if missing else {}
        out[run] = [*v, *(_own_value(cfg, k) for k in missing)]
    return out


_ABSENT = object()


def _own_value(cfg: dict, key: str) -> str:
    """``key=<value>`` as the run's resolved config (``config.yaml``) holds it, as Hydra would parse it typed;
    ``key=(default)`` where that is no plain value (a config group such as ``model``: the config does not name
    its choice) or no value at all."""
    value = cfg
    for part in key.replace("/", ".").split("."):
        value = value.get(part, _ABSENT) if isinstance(value, dict) else _ABSENT
    if value is _ABSENT or isinstance(value, dict):
        return f"{key}=(default)"
    text = json.dumps(value) if value is None or isinstance(value, (bool, list)) else str(value)
    return canonical_override(plain_text(f"{key}={text}", 200))


def _labels_by_context(ovs: dict[Path, list[str]], every: list[list[str]], common: list[str]) -> dict[Path, str]:
    """A run's experiment (its :data:`CONTEXT_KEYS` overrides), then what differs between the runs of that
    experiment; what all runs share is left out (printed once above the table), and so is what all runs of the
    experiment share (:func:`_by_experiment`, printed once per experiment)."""
    labels = {}
    for run, v in ovs.items():
        ctx = _context(v)
        mates = [w for w in every if _context(w) == ctx]
        shared = set(_shared(v, mates)) | set(common)
        labels[run] = " ".join([_by_key(o for o in ctx if o not in common),
                                _by_key(o for o in v if o not in shared and o not in ctx)]).strip() or "(defaults)"
    return labels


def _by_experiment(every: list[list[str]], common: list[str]) -> dict[str, list[str]]:
    """{experiment (its :data:`CONTEXT_KEYS` overrides): what all its runs share beyond ``common`` and the
    experiment's own overrides}, for the experiments that share such."""
    out = {}
    for ctx in dict.fromkeys(tuple(_context(v)) for v in every):
        mates = [w for w in every if tuple(_context(w)) == ctx]
        shared = [o for o in _shared(mates[0], mates) if o not in common and o not in ctx]
        if shared:
            out[_by_key(ctx) or NO_CONTEXT] = sorted(shared, key=override_key)
    return dict(sorted(out.items()))


def method_contexts(runs: list[Path], siblings: list[Path] = ()) -> dict[str, str]:
    """Each method's experiment: its ``+exp``, ``data``, ``data.root`` and ``exp_name`` overrides. Methods are
    ranked only against methods of the same experiment (a Dice on liver is no rival to one on kidneys)."""
    labels, _ = run_labels(runs, siblings)
    return {labels[run]: " ".join(o for o in run_overrides(run) if override_key(o) in CONTEXT_KEYS)
            for run in runs}


def seeds_counted_twice(runs: list[Path], siblings: list[Path] = ()) -> list[str]:
    """``<method>: seed(s) ...`` for each method holding a seed more than once."""
    labels, _ = run_labels(runs, siblings)
    seeds: dict[str, list] = defaultdict(list)
    for run in runs:
        seed = run_config(run).get("seed")
        if is_whole(seed):
            seeds[labels[run]].append(seed)
    return [f"{m}: seed(s) {', '.join(str(x) for x in sorted({x for x in v if v.count(x) > 1}))}"
            for m, v in sorted(seeds.items()) if len(set(v)) < len(v)]


def environment_differences(runs: list[Path]) -> list[str]:
    """``key: a | b`` for each field of the runs' ``env.json`` (``packages.<name>`` per library) that differs
    between them: the same config and seed give other numbers under another thread count, CPU or build. The
    git SHA is left out (runs of one study span commits that change no number)."""
    values: dict[str, set[str]] = defaultdict(set)
    for run in runs:
        env = json_object(run / "env.json") or {}
        flat = {k: v for k, v in env.items() if k not in ("packages", "resumed", "git_sha")}
        packages = env.get("packages")  # a crafted env.json: a list there was an AttributeError traceback
        flat.update({f"packages.{k}": v for k, v in (packages.items() if isinstance(packages, dict) else ())})
        for key, value in flat.items():
            values[key].add(str(value))
    return [f"{k}: {' | '.join(sorted(v))}" for k, v in sorted(values.items()) if len(v) > 1]
