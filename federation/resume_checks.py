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
from pathlib import Path
from typing import Any, Mapping

import torch

from federation.errors import FederationError

__all__ = ["check_server_state", "check_model_entries", "check_client_data", "store_dir_inside", "BEFORE"]

#: a client store file's earlier version (``federation.store``): ``{"round": r, "data": {...}}``
BEFORE = "__before_round__"
AFRESH = "delete it, or the run dir, to start the federation afresh"


def _int(v: Any, lo: int = 0, hi: int | None = None) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


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


def _meta(v: Any, fields: dict) -> bool:
    return isinstance(v, dict) and all(k in v and ok(v[k]) for k, ok in fields.items())


#: what the federation's clients store (federation.runner); other keys are the store's callers' own
_CLIENT_KEYS = {
    "history": lambda v: isinstance(v, list),
    "last_round": _int,
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
