"""What a resumed federation reads back from its run folder (``server.pt``, ``client_store/*.pt``) is data: a
handed-over folder may hold crafted files. Each entry is checked against what this framework writes before it is
used, and a file that fails is one line naming it and the key at fault (:class:`FederationError`, exit code 2).

Found by an audit that resumed crafted run folders: NaN global weights ran to exit 0 and overwrote a good
``global_best.pt``; a wrong-shaped tensor, a string in ``history`` or ``best``, a malformed client store version
were tracebacks (or blamed the clients); a torch RNG state ``expand()``-ed to 3e9 elements (116 KB on disk) took
~100 GB in ``.tolist()``. Kept free of Lightning: :mod:`federation.store` uses it.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from federation.errors import FederationError
from lightning_modules.kinds import is_whole

__all__ = ["check_server_state", "check_model_entries", "check_client_data", "check_strategy_state",
           "check_resumed_local", "store_dir_inside", "BEFORE"]

#: a client store file's earlier version (``federation.store``): ``{"round": r, "data": {...}}``
BEFORE = "__before_round__"
AFRESH = "delete it, or the run dir, to start the federation afresh"


def _int(v: Any, lo: int = 0, hi: int | None = None) -> bool:
    return is_whole(v) and v >= lo and (hi is None or v <= hi)


def _num(v: Any) -> bool:
    """An int or float that ``float()`` takes (NaN/inf included: a run may log an infinite loss); an int
    such as ``10**400`` is not (an OverflowError in the round curves after a whole round, an audit found)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        float(v)
    except OverflowError:
        return False
    return True


def _real(v: Any) -> bool:
    return _num(v) and math.isfinite(v)


def _shown(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        return f"a tensor of shape {list(v.shape)}"
    name = type(v).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name} ({v!r:.40})"


def _bad(path: Path, key: str, why: str, hint: str = AFRESH) -> FederationError:
    return FederationError(f"{path}: {key} {why}; {hint}")


def _dense(v: Any) -> bool:
    """A plain tensor no larger than the data it holds (a crafted ``expand()``-ed view is not)."""
    if not isinstance(v, torch.Tensor) or v.layout != torch.strided or v.is_quantized:
        return False
    try:
        return v.numel() * v.element_size() <= v.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError):
        return False


def _tensors(value: Any, path: Path, key: str, finite: bool = True, hint: str = AFRESH) -> None:
    """``value`` is a ``{name: plain tensor}`` dict (floating tensors all finite unless ``finite=False``)."""
    if not isinstance(value, dict):
        raise _bad(path, key, f"is {_shown(value)}, not a {{name: tensor}} dict", hint)
    for name, v in value.items():
        if not isinstance(name, str) or not _dense(v):
            raise _bad(path, f"{key}[{name!r}]", f"is {_shown(v)}, not a plain tensor (or a view larger than its data)",
                       hint)
        if finite and (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all()):
            raise _bad(path, f"{key}[{name!r}]", "holds NaN or inf values", hint)


def check_model_entries(saved: Mapping[str, Any], model: Mapping[str, torch.Tensor], path: Path, key: str,
                        every: bool = True, hint: str = AFRESH) -> None:
    """``saved`` holds the model's entries (all of them when ``every``; a subset otherwise, e.g. FedBN's local
    ones) with the model's shapes and dtypes, finite."""
    _tensors(saved, path, key, hint=hint)
    missing, extra = sorted(set(model) - set(saved)) if every else [], sorted(set(saved) - set(model))
    if missing or extra:
        what = "; ".join([*(["missing " + repr(missing[:3])] if missing else []),
                          *(["not in the model: " + repr(extra[:3])] if extra else [])])
        raise _bad(path, key, f"does not hold this model's entries ({what})", hint)
    for name, v in saved.items():
        ref = model[name]
        if v.shape != ref.shape or v.dtype != ref.dtype:
            raise _bad(path, f"{key}[{name!r}]", f"is {v.dtype} {list(v.shape)}, the model's is {ref.dtype} "
                                                 f"{list(ref.shape)}: another model", hint)


def _check_history(history: list, rnd: int, path: Path) -> None:
    if len(history) != rnd + 1:  # one row per completed round, rounds 1..round+1
        raise _bad(path, "history", f"holds {len(history)} rows but round={rnd} says {rnd + 1} rounds were done")
    for i, row in enumerate(history):
        if not _int(row.get("round")) or row["round"] != i + 1:
            raise _bad(path, f"history[{i}]['round']", f"is {_shown(row.get('round'))}, not {i + 1}")
        for k, v in row.items():
            if not isinstance(k, str) or not _num(v):
                raise _bad(path, f"history[{i}][{k!r}]", f"is {_shown(v)}, not a number")


def _check_best(best: dict, rnd: int, path: Path) -> None:
    r, value = best.get("round"), best.get("value")
    if not _int(r, -1, rnd + 1):
        raise _bad(path, "best['round']", f"is {_shown(r)}, not a round in -1..{rnd + 1}")
    if r <= 0:  # no round improved yet
        if value is not None:
            raise _bad(path, "best['value']", f"is {_shown(value)} for no best round (round={r}), not None")
        return
    key = best.get("key")
    if not _real(value) or not isinstance(key, str):
        raise _bad(path, "best", f"is {best!r:.120}, not {{'round', 'value' (a finite number), 'key' (a metric)}}")


def _words(t: Any, n: int) -> bool:
    """A Mersenne Twister key as saved: an int64 tensor of ``n`` 32-bit words (checked before any conversion)."""
    return _dense(t) and t.dtype == torch.int64 and tuple(t.shape) == (n,) and \
        bool(((t >= 0) & (t < 2 ** 32)).all())


def _check_rng(rng: dict, path: Path) -> None:
    py, npst, tst = rng["python"], rng["numpy"], rng["torch"]
    if not (isinstance(py, (list, tuple)) and len(py) == 3 and _int(py[0]) and _words(py[1], 625)
            and int(py[1][-1]) <= 624 and (py[2] is None or _num(py[2]))):
        raise _bad(path, "rng['python']", "is not a Python random state (version, 625 words, gauss)")
    if not (isinstance(npst, (list, tuple)) and len(npst) == 5 and isinstance(npst[0], str) and npst[0] == "MT19937"
            and _words(npst[1], 624) and _int(npst[2], 0, 624) and _int(npst[3], 0, 1) and _num(npst[4])):
        raise _bad(path, "rng['numpy']", "is not a NumPy MT19937 state ('MT19937', 624 words, pos, has_gauss, gauss)")
    ref = torch.get_rng_state()
    if not _dense(tst) or tst.dtype != ref.dtype or tst.shape != ref.shape:
        raise _bad(path, "rng['torch']", f"is {_shown(tst)}, not a torch generator state ({ref.dtype} "
                                         f"{list(ref.shape)})")
    # tried on scratch generators, so an invalid state is refused before anything is written (an all-255 torch
    # state was refused by Server.resume only, after Hydra had rewritten config.yaml and .hydra/)
    import random

    import numpy as np

    for key, load in (
            ("python", lambda: random.Random().setstate((py[0], tuple(int(w) for w in py[1].tolist()), py[2]))),
            ("numpy", lambda: np.random.RandomState().set_state(
                (npst[0], npst[1].numpy().astype(np.uint32), npst[2], npst[3], npst[4]))),
            ("torch", lambda: torch.Generator().set_state(tst.clone()))):
        try:
            load()
        except (TypeError, ValueError, RuntimeError, OverflowError) as err:
            raise _bad(path, f"rng[{key!r}]", f"is not a valid generator state ({type(err).__name__}: "
                                              f"{str(err).splitlines()[0] if str(err) else ''})") from None


def check_server_state(state: dict, path: Path) -> None:
    """What :meth:`Server.checkpoint` writes, beyond the entries' types (``server_state._SERVER_TYPES``): finite
    global weights, one history row of numbers per round, a best round among them (finite value), the RNG layouts.
    The weights' names and shapes need the model: :func:`check_model_entries` in ``Server.resume``."""
    rnd = state["round"]
    _tensors(state["global"], path, "global")
    _check_history(state["history"], rnd, path)
    _check_best(state["best"], rnd, path)
    index = state["store_index"]
    if not all(isinstance(c, str) for c in index):
        raise _bad(path, "store_index", "holds other than client ids (str)")
    for key, ok in (("dropped_total", _int), ("fit_seconds", lambda v: _real(v) and v >= 0)):
        if key in state and not ok(state[key]):
            raise _bad(path, key, f"is {_shown(state[key])}")
    _check_rng(state["rng"], path)
    _check_strategy_layout(state["strategy"], path)


_DEPTH = 6  # FedOpt's {"m": {name: tensor}}, DataSharing's {"allocation": {client: int}}: 2 levels


def _check_strategy_layout(value: Any, path: Path, key: str = "strategy", depth: int = 0) -> None:
    """The strategy's state holds what ``state_dict`` writes: str-keyed dicts, lists, numbers, strings and plain,
    finite tensors (an ``expand()``-ed 316 KB ``m`` entry took 10.9 GB; NaN in FedAdam's ``v`` blamed the
    aggregation). Which keys, shapes and ranges: :func:`check_strategy_state`, where the model is known."""
    if isinstance(value, torch.Tensor):
        if not _dense(value):
            raise _bad(path, key, f"is {_shown(value)}, not a plain tensor (or a view larger than its data)")
        if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
            raise _bad(path, key, "holds NaN or inf values")
        return
    if isinstance(value, (dict, list, tuple)):
        if depth >= _DEPTH:
            raise _bad(path, key, f"nests deeper than a strategy's state ({_DEPTH} levels)")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            if isinstance(value, dict) and not isinstance(k, str):
                raise _bad(path, f"{key}[{k!r:.40}]", "is keyed by other than a str")
            _check_strategy_layout(v, path, f"{key}[{k!r:.40}]", depth + 1)
        return
    if not (value is None or isinstance(value, (str, bool)) or _num(value)):
        raise _bad(path, key, f"is {_shown(value)}, not what a strategy's state holds")


def check_strategy_state(state: Mapping[str, Any], strategy: Any, model: Mapping[str, torch.Tensor],
                         client_ids: list[str], path: Path) -> None:
    """``server.pt``'s ``strategy`` as this federation's strategy writes it: the keys of its ``state_dict()``;
    FedOpt's moments keyed by the model's optimised entries with their shapes and dtypes (a ``torch.zeros(3)``
    broadcast silently), ``v`` >= 0; DataSharing's accuracies in [0, 1] and allocations ints in 0..the pool's
    size (``10**12`` was ``shared_sent=2e12`` at exit 0), both keyed by the federation's clients."""
    from federation.core.strategies.datasharing import DataSharing
    from federation.core.strategies.fedopt import FedOpt

    hint = "not the state of this federation's strategy; " + AFRESH
    extra = sorted(set(state) - set(strategy.state_dict()))
    if extra:
        raise _bad(path, "strategy", f"holds {extra[:3]}, not kept by {type(strategy).__name__}", hint)
    if isinstance(strategy, FedOpt):
        keys = {k for k in strategy.client_keys(model) if strategy._adaptive(k, model[k])}
        for name in ("m", "v"):
            moments = state.get(name, {})
            check_model_entries(moments, model, path, f"strategy[{name!r}]", every=False, hint=hint)
            other = sorted(set(moments) - keys)
            if other:
                raise _bad(path, f"strategy[{name!r}][{other[0]!r}]", "is not an entry the server optimises", hint)
        for k, v in state.get("v", {}).items():
            if bool((v < 0).any()):
                raise _bad(path, f"strategy['v'][{k!r}]", "holds negative values (a second moment is >= 0)", hint)
    if isinstance(strategy, DataSharing):
        clients = set(client_ids)
        for name, ok, what in (("accuracies", lambda a: _real(a) and 0.0 <= a <= 1.0, "an accuracy in [0, 1]"),
                               ("allocation", lambda m: _int(m, 0, strategy.n_shared),
                                f"a number of shared samples in 0..{strategy.n_shared} (the pool's size)")):
            values = state.get(name, {})
            if not isinstance(values, dict):
                raise _bad(path, f"strategy[{name!r}]", f"is {_shown(values)}, not a {{client: value}} dict", hint)
            for cid, v in values.items():
                if cid not in clients:
                    raise _bad(path, f"strategy[{name!r}][{cid!r:.40}]", "is no client of this federation", hint)
                if not ok(v):
                    raise _bad(path, f"strategy[{name!r}][{cid!r:.40}]", f"is {_shown(v)}, not {what}", hint)


def _meta(v: Any, fields: dict) -> bool:
    return isinstance(v, dict) and all(k in v and ok(v[k]) for k, ok in fields.items())


def _history_row(row: Any) -> bool:
    """A client's history row as :func:`federation.runner.run_client` appends it: ``{"round": int,
    "num_samples": int, "num_shared": int, metric: number, ...}``."""
    return isinstance(row, dict) and _int(row.get("round")) and \
        all(isinstance(k, str) and _num(v) for k, v in row.items()) and \
        all(_int(row[k]) for k in ("num_samples", "num_shared") if k in row)


#: what the federation's clients store (federation.runner); other keys are the store's callers' own
#: a federation's id (federation.store_owner), here so that a store file is checked without importing the store
FEDERATION_ID_PATTERN = re.compile(r"[0-9a-f]{16}")

_CLIENT_KEYS = {
    "history": lambda v: isinstance(v, list),  # its rows: check_resumed_local (the store is generic)
    "last_round": _int,
    "federation_id": lambda v: isinstance(v, str) and FEDERATION_ID_PATTERN.fullmatch(v) is not None,
    "best_local_meta": lambda v: _meta(v, {"round": _int, "value": _real, "monitor": lambda m: isinstance(m, str)}),
    "best_local": lambda v: _meta(v, {"round": _int, "value": _real, "state": lambda s: isinstance(s, dict)}),
}


def check_client_data(data: dict, path: Path, within: str = "") -> None:
    """A client store file (or, ``within`` its ``__before_round__['data']``, its kept earlier version) as
    :mod:`federation.store` writes it. The tensors are only looked at (the file may be memory-mapped)."""
    def name(key: str) -> str:
        return f"{within}[{key!r}]" if within else key

    for key in ("local_state", "private_state"):
        if key in data:
            _tensors(data[key], path, name(key), finite=False)
    if isinstance(data.get("best_local"), dict) and "state" in data["best_local"]:
        _tensors(data["best_local"]["state"], path, name("best_local") + "['state']", finite=False)
    for key, ok in _CLIENT_KEYS.items():
        if key in data and not ok(data[key]):
            raise _bad(path, name(key), f"is {_shown(data[key])}: not a client store this framework wrote")
    if BEFORE in data:
        before = data[BEFORE]
        if within or not (isinstance(before, dict) and set(before) == {"round", "data"} and _int(before["round"])
                          and isinstance(before["data"], dict)):
            raise _bad(path, name(BEFORE), f"is {_shown(before)}, not {{'round': int, 'data': dict}}")
        check_client_data(before["data"], path, f"{BEFORE}['data']")


def check_resumed_local(data: dict, start_round: int, path: Path) -> None:
    """What a resume starting at round ``start_round`` keeps of a federation client's store file (after the
    server's rollback of a stopped round): finite ``local_state`` entries, checked before anything is written
    as ``Server.resume`` checks them after (an audit found NaN BN entries refused only once config.yaml and
    .hydra/ were rewritten; the entries are memory-mapped, the BN entries small), and ``history`` rows as
    :func:`federation.runner.run_client` appends them (``['x', None, {'round': 'a'}]`` was kept, exit 0)."""
    before = data.get(BEFORE)
    kept = before["data"] if isinstance(before, dict) and before.get("round", -1) >= start_round else data
    where = "" if kept is data else f"{BEFORE}['data']"
    _tensors(kept.get("local_state") or {}, path, f"{where}['local_state']" if where else "local_state")
    for i, row in enumerate(kept.get("history") or []):
        if not _history_row(row):
            key = f"{where}['history'][{i}]" if where else f"history[{i}]"
            raise _bad(path, key, f"is {_shown(row)}, not a round's row ({{'round': int, 'num_samples': int, "
                                  f"'num_shared': int, metric: number, ...}})")


def store_dir_inside(run_dir: Path, store_dir: Any, source: str) -> Path:
    """``run_dir / store_dir`` when ``store_dir`` (from ``source``, a run's config) is a relative folder inside the
    run dir: a handed-over config naming ``../other_run/client_store`` (or an absolute path) read another run's
    clients' weights into this run's model."""
    run = Path(run_dir)
    inside = not Path(str(store_dir)).is_absolute() and \
        (run / str(store_dir)).resolve().is_relative_to(run.resolve()) and \
        (run / str(store_dir)).resolve() != run.resolve()
    if not inside:
        raise FederationError(f"{source}: federation.store_dir={str(store_dir)!r} is not a folder inside the run dir "
                              f"{run}; a run's client store is a relative folder in it (client_store)")
    return run / str(store_dir)
