"""Read an offline W&B run (``<run dir>/wandb/offline-run-*/run-*.wandb``) without a network or wandb-core:
the file is a LevelDB-style log of ``wandb_internal_pb2.Record`` protobufs (7-byte file header, 32 KiB
blocks, 7-byte record headers: crc32, length, type FULL/FIRST/MIDDLE/LAST)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK, HEADER = 32768, 7


def records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", data[:8]
    pos, chunks = HEADER, []
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        chunks.append(chunk)
        if kind in (1, 4):  # FULL or LAST: a whole record
            rec = pb.Record()
            rec.ParseFromString(b"".join(chunks))
            chunks = []
            yield rec


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_run(run_dir: Path) -> dict:
    """``{"name", "tags", "config", "history": [{key: value}], "summary": {key: value}}`` of a run dir's W&B run."""
    files = list(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    assert files, f"no offline W&B run under {run_dir}"
    out: dict = {"name": None, "tags": [], "config": {}, "history": [], "summary": {}}
    for rec in records(files[0]):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["name"], out["tags"] = rec.run.display_name, list(rec.run.tags)
            out["config"].update({_key(i): json.loads(i.value_json) for i in rec.run.config.update})
        elif kind == "config":
            out["config"].update({_key(i): json.loads(i.value_json) for i in rec.config.update})
        elif kind == "history":
            out["history"].append({_key(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            out["summary"].update({_key(i): json.loads(i.value_json) for i in rec.summary.update})
    return out
