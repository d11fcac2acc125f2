"""What crosses the wire between our ServerApp and ClientApp, in Flower's legacy Fit layout.

The round's :class:`~federation.core.messages.ServerMessage` goes down as ``fitins.parameters`` (an
``ArrayRecord`` keyed by state-dict name) and ``fitins.config`` (a ``ConfigRecord`` of scalars: the
round, the client's id, the strategy's per-round config and the experiment's client config as JSON).
The reply is ``fitres.parameters`` / ``fitres.num_examples`` / ``fitres.metrics`` / ``fitres.status``:
weights, one sample count and scalar metrics, nothing else. The Fit layout is the one Flower's own
client-side mods (``LocalDpMod``, ``secaggplus_mod``) read and rewrite, so they apply unchanged; since
``LocalDpMod`` re-keys the arrays (and SecAgg+'s legacy ``FitIns`` numbers them), both directions carry the
state-dict key order as one string. Under DP (``as_float``) integer entries (BatchNorm's step counter) travel
exact beside the ArrayRecord, in the config record, outside ``LocalDpMod``'s clip and noise (a review: with
200 local steps the counter's delta was 283 of the update's L2 norm 283, so clipping to 1 scaled the
parameters' delta by 1/283; the counter says how many steps were taken, what ``num_examples`` says already).
``init_weights=``'s entries of the layers a strategy keeps local (``ServerMessage.init_local``) go down as JSON in the
config record (:data:`INIT_LOCAL`), not as arrays: ``LocalDpMod`` takes the message's one ArrayRecord for the weights
its reply is clipped against, and SecAgg+'s ``FitIns`` keeps only the parameters and the config.
Under SecAgg+ a site replies with its floating entries' delta ``w_k - w_global`` in
float64 (:func:`secagg_update`), which the mod masks, and its integer entries in clear (:data:`INTS`, as under DP);
the server decodes the unmasked mean with :func:`decode_mean`.
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from federation.core.messages import ClientUpdate, ServerMessage

__all__ = ["encode_message", "decode_message", "encode_update", "decode_update", "secagg_update", "decode_mean",
           "clipped_entries",
           "KEYS", "PREFIX", "INTS", "INIT_LOCAL"]

PREFIX = "fedmed."
KEYS = PREFIX + "keys"
INTS = PREFIX + "ints"  # under DP: the integer entries, exact, as JSON
INIT_LOCAL = PREFIX + "init_local"  # init_weights='s local entries (ServerMessage.init_local), as JSON
#: integer dtypes an entry may arrive as (beside the ArrayRecord under DP)
INT_DTYPES = {"int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8,
              "uint8": torch.uint8, "bool": torch.bool}  # a bool buffer: True / False values (a review: refused)
#: and floating ones (:data:`INIT_LOCAL`)
FLOAT_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
                "bfloat16": torch.bfloat16}


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"config value of type {type(value).__name__} cannot cross the wire")


def _is_int(v: torch.Tensor) -> bool:
    return not (v.is_floating_point() or v.is_complex())


def _arrays(weights: Mapping[str, torch.Tensor], as_float: bool) -> ArrayRecord:
    """``as_float`` (DP): the floating entries only (the integer ones go in :data:`INTS`)."""
    return ArrayRecord({k: Array(v.detach().cpu().numpy()) for k, v in weights.items()
                        if not (as_float and _is_int(v))})


def _ints(weights: Mapping[str, torch.Tensor], every: bool = False) -> str:
    """The integer entries (``every``: all entries) as JSON ``{key: [dtype, shape, flat values]}``; a float's
    value is its exact decimal (JSON numbers read back as doubles, which hold every float32 exactly)."""
    return json.dumps({k: [str(v.dtype).removeprefix("torch."), list(v.shape), v.flatten().tolist()]
                       for k, v in weights.items() if every or _is_int(v)})


def _number(x: Any, floating: bool, boolean: bool = False) -> bool:
    """A value an entry may hold: a whole number in range, or for a floating entry a finite float too; for a
    boolean entry True or False only."""
    if isinstance(x, bool) or boolean:
        return boolean and isinstance(x, bool)
    if isinstance(x, int):
        return abs(x) < 2 ** 62
    return floating and isinstance(x, float) and math.isfinite(x)


def _from_ints(text: Any, name: str = INTS) -> dict[str, torch.Tensor]:
    """:func:`_ints` read back from a peer: every entry checked (an integer dtype, or for :data:`INIT_LOCAL` a
    floating one too, a shape its values fill, whole numbers in range or finite ones), a ``ValueError`` otherwise."""
    if text in (None, ""):
        return {}
    entries = json.loads(str(text))
    if not isinstance(entries, dict):
        raise ValueError(f"{name} is not a mapping")
    dtypes = {**INT_DTYPES, **FLOAT_DTYPES} if name == INIT_LOCAL else INT_DTYPES
    out = {}
    for key, entry in entries.items():
        ok = isinstance(entry, list) and len(entry) == 3 and entry[0] in dtypes and isinstance(entry[1], list)
        shape, values = (entry[1], entry[2]) if ok else ([], None)
        floating = ok and dtypes[entry[0]].is_floating_point
        ok = ok and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape) \
            and isinstance(values, list) and len(values) == math.prod(shape) \
            and all(_number(x, floating, entry[0] == "bool") for x in values)
        value = torch.tensor(values, dtype=dtypes[entry[0]]).reshape(shape) if ok else None
        if value is None or (floating and not bool(torch.isfinite(value).all())):  # 1e300 is inf in float32
            raise ValueError(f"{'integer entry' if name == INTS else name} {key!r} arrived malformed")
        out[str(key)] = value
    return out


def _merged(keys: list[str], record: ArrayRecord, ints: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries in ``keys`` order: the integer ones from ``ints``, the others from ``record``."""
    unknown = sorted(set(ints) - set(keys))
    if unknown:
        raise ValueError(f"integer entries {unknown} are not among the update's keys")
    rest = [k for k in keys if k not in ints]
    if list(record.keys()) == rest:
        arrays = {k: torch.from_numpy(np.array(record[k].numpy(), copy=True)) for k in rest}
    else:  # SecAgg+'s legacy FitIns and LocalDpMod's reply re-key the arrays
        arrays = _tensors(record, rest)
    return {k: ints[k] if k in ints else arrays[k] for k in keys}


def _tensors(record: ArrayRecord, keys: list[str]) -> dict[str, torch.Tensor]:
    values = [record[k].numpy() for k in record.keys() if k != "_empty"]
    if len(values) != len(keys):
        raise ValueError(f"{len(values)} arrays arrived for {len(keys)} keys")
    return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in zip(keys, values)}


def encode_message(msg: ServerMessage, client_id: str, client_cfg: Mapping[str, Any],
                   extra: Mapping[str, Any] | None = None, as_float: bool = False) -> RecordDict:
    """The Fit content for one client: weights + round, client id, strategy config and client config."""
    config = {PREFIX + "round": int(msg.round), PREFIX + "client_id": client_id, KEYS: "\n".join(msg.weights),
              PREFIX + "config": json.dumps(dict(msg.config), default=_jsonable),
              PREFIX + "cfg": json.dumps(dict(client_cfg), default=_jsonable)}
    config.update({PREFIX + k: v for k, v in (extra or {}).items()})
    if as_float:
        config[INTS] = _ints(msg.weights)
    if msg.init_local:
        config[INIT_LOCAL] = _ints(msg.init_local, every=True)
    return RecordDict({"fitins.parameters": _arrays(msg.weights, as_float), "fitins.config": ConfigRecord(config)})


def decode_message(content: RecordDict) -> tuple[ServerMessage, str, dict[str, Any], dict[str, Any]]:
    """``(server message, client id, client cfg, extra scalars)`` from a Fit content."""
    cfg = dict(content.config_records["fitins.config"])
    keys = str(cfg.pop(KEYS, ""))
    ints = _from_ints(cfg.pop(INTS, None))
    init_local = _from_ints(cfg.pop(INIT_LOCAL, None), INIT_LOCAL)
    record = content.array_records["fitins.parameters"]
    if keys:
        weights = _merged(keys.split("\n"), record, ints)
    else:
        weights = {k: torch.from_numpy(np.array(record[k].numpy(), copy=True)) for k in record.keys()}
    config = json.loads(str(cfg.pop(PREFIX + "config")))
    msg = ServerMessage(int(cfg.pop(PREFIX + "round")), weights, config, init_local)
    client_id = str(cfg.pop(PREFIX + "client_id"))
    client_cfg = json.loads(str(cfg.pop(PREFIX + "cfg")))
    extra = {k[len(PREFIX):]: v for k, v in cfg.items() if k.startswith(PREFIX)}
    return msg, client_id, client_cfg, extra


def encode_update(update: ClientUpdate, as_float: bool = False) -> RecordDict:
    """The Fit reply: weights, sample count, scalar metrics (+ the key order), status OK."""
    metrics: dict[str, Any] = {k: float(v) for k, v in update.metrics.items()}
    metrics[KEYS] = "\n".join(update.weights)
    metrics[PREFIX + "is_delta"] = bool(update.is_delta)
    if as_float:
        metrics[INTS] = _ints(update.weights)
    return RecordDict({
        "fitres.parameters": _arrays(update.weights, as_float),
        "fitres.num_examples": MetricRecord({"num_examples": int(update.num_samples)}),
        "fitres.metrics": ConfigRecord(metrics),
        "fitres.status": ConfigRecord({"code": 0, "message": "Success"}),
    })


def _count(value: Any) -> int:
    """``fitres.num_examples`` as an exact integer: a float is accepted only when it is a whole number."""
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise ValueError(f"num_examples={value!r} is not a whole number")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"num_examples is a {type(value).__name__}")
    return int(value)


def _as_integer(key: str, value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An integer entry (BatchNorm's counter) that arrived as another dtype: it must be a whole number within
    the integer type's range (NaN or 1e30 cast to int64 is an arbitrary value). Under DP integer entries cross
    exact beside the noised arrays (:data:`INTS`), so no noise is ever rounded away here."""
    if not bool(torch.isfinite(value).all()) or (value.numel() and float(value.abs().max()) >= 2.0 ** 62):
        raise ValueError(f"entry {key!r}: {dtype} values arrived non-finite or out of range")
    if not bool((value == value.round()).all()):
        raise ValueError(f"entry {key!r}: {dtype} values arrived as fractions")
    if dtype != torch.bool and value.numel():  # a security review: 2**40 + 5 into int32 became 5, -1 into uint8 255
        info = torch.iinfo(dtype)
        if float(value.min()) < info.min or float(value.max()) > info.max:
            raise ValueError(f"entry {key!r}: values outside {dtype}'s range [{info.min}, {info.max}]")
    return value.round().to(dtype)


def decode_update(content: RecordDict, client_id: str, dtypes: Mapping[str, torch.dtype]) -> ClientUpdate:
    """A :class:`ClientUpdate` from a Fit reply; tensors cast back to the global model's dtypes."""
    metrics = dict(content.config_records["fitres.metrics"])
    keys = str(metrics.pop(KEYS)).split("\n")
    is_delta = bool(metrics.pop(PREFIX + "is_delta", False))
    weights = _merged(keys, content.array_records["fitres.parameters"], _from_ints(metrics.pop(INTS, None)))
    for k, v in weights.items():
        if k in dtypes and v.dtype != dtypes[k]:
            weights[k] = v.to(dtypes[k]) if dtypes[k].is_floating_point else _as_integer(k, v, dtypes[k])
    n = _count(content.metric_records["fitres.num_examples"]["num_examples"])
    return ClientUpdate(client_id, weights, n, metrics, is_delta=is_delta)


def secagg_update(update: ClientUpdate, sent: Mapping[str, torch.Tensor]) -> ClientUpdate:
    """What a site hands to ``secaggplus_mod``: its floating entries as the delta ``w_k - w_global`` (float64), its
    integer and bool entries (BatchNorm's step counter) as they are, to travel in clear beside the masked arrays
    (:data:`INTS`), as under DP. A review: masked, a counter's delta of 200 local steps was scaled by
    ``n_k / max_weight`` and clipped to ``clipping_range`` (8) at nearly every site and round, and the warning
    asked for a wider range, which coarsens every weight's quantisation; the count is what ``num_examples``, in
    clear anyway, says. 0-d floating entries go as shape ``(1,)``: Flower 1.42's unmasking skips the offset and
    rescaling of 0-d arrays (``secaggplus_workflow.py``, ``for vec in aggregated_vector: vec += offset`` rebinds a
    NumPy scalar)."""
    weights = {}
    for k, v in update.weights.items():
        if _is_int(v):
            weights[k] = sent[k] + v if update.is_delta else v
        else:
            weights[k] = (v.double() if update.is_delta else v.double() - sent[k].double()).reshape(
                -1 if v.dim() == 0 else v.shape)
    return ClientUpdate(update.client_id, weights, update.num_samples, dict(update.metrics), is_delta=True)


def clipped_entries(delta: Mapping[str, Any], num_examples: int, max_weight: float, clipping_range: float) -> int:
    """How many entries ``secaggplus_mod`` will clip: ``|n_k / max_weight * delta| > clipping_range``."""
    scale = float(num_examples) / float(max_weight)
    return int(sum(int((np.abs(np.asarray(v, dtype=np.float64)) * scale > clipping_range).sum())
                   for v in delta.values()))


def decode_mean(mean: list[np.ndarray], content_metrics: Mapping[str, Any], num_examples: int, client_id: str,
                sent: Mapping[str, torch.Tensor]) -> ClientUpdate:
    """Site ``client_id``'s update under SecAgg+: ``sent`` plus the round's mean delta for the floating entries
    (the server sees no site's own), the site's own integer entries (in clear, :func:`secagg_update`), its clear
    sample count and scalar metrics; in the shapes and dtypes of ``sent``. Made absolute here, in float64, not
    left a delta (a review: a bool entry's delta cast to bool lost its sign, so a buffer every site turned False
    came back True)."""
    metrics = dict(content_metrics)
    keys = str(metrics.pop(KEYS)).split("\n")
    metrics.pop(PREFIX + "is_delta", None)
    ints = _from_ints(metrics.pop(INTS, None))
    unknown = sorted(set(ints) - set(keys))
    if unknown:
        raise ValueError(f"integer entries {unknown[:3]} are not among the update's keys")
    floats = [k for k in keys if k not in ints]
    if len(mean) != len(floats):
        raise ValueError(f"{len(mean)} aggregated arrays for {len(floats)} floating keys")
    weights = {}
    for k, v in zip(floats, mean):
        ref = sent[k]
        t = torch.from_numpy(np.array(v, dtype=np.float64, copy=True)).reshape(ref.shape) + ref.double()
        weights[k] = t >= 0.5 if ref.dtype == torch.bool else (t if ref.is_floating_point() else t.round()).to(ref.dtype)
    for k, v in ints.items():  # another kind than sent stays as it came: update_problem names it
        same_kind = _is_int(sent[k]) and (v.dtype == torch.bool) == (sent[k].dtype == torch.bool)
        weights[k] = _as_integer(k, v, sent[k].dtype) if same_kind and v.dtype != sent[k].dtype else v
    return ClientUpdate(client_id, {k: weights[k] for k in keys}, int(num_examples), metrics)
