"""Read an offline W&B run (``<run dir>/wandb/offline-run-*/run-*.wandb``) without a network or wandb-core:
the file is a LevelDB-style log of ``wandb_internal_pb2.Record`` protobufs (7-byte file header, 32 KiB
blocks, 7-byte record headers: crc32, length, type FULL/FIRST/MIDDLE/LAST)."""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

BLOCK, HEADER = 32768, 7


def records(path: Path):
    """The file's whole records, in order, up to the first chunk not yet fully written: wandb-core writes
    the file while it is read, so a chunk cut short or whose CRC (zlib crc32 seeded with the chunk's type
    byte) does not match ends the readable prefix instead of reaching protobuf half-written."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if len(data) < HEADER:  # the file's own header not written yet
        return
    assert data[:4] == b":W&B", data[:8]
    pos, chunks = HEADER, []
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        if len(chunk) < length or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            return
        chunks.append(chunk)
        if kind in (1, 4):  # FULL or LAST: a whole record
            rec = pb.Record()
            rec.ParseFromString(b"".join(chunks))
            chunks = []
            yield rec


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def _finished_records(path: Path, wait_s: float = 60.0) -> list:
    """The file's records once wandb-core has written its ``exit`` record: the run's ``finish()`` has
    returned, but the writer lives in the wandb-core process, so on a loaded machine the file may lag;
    wait for it (``wandb.teardown()`` first, which flushes every stream), then fail with what was there."""
    import time

    import wandb

    recs = list(records(path))
    if not any(r.WhichOneof("record_type") == "exit" for r in recs) and wandb.run is None:
        wandb.teardown()
    deadline = time.monotonic() + wait_s
    while not any(r.WhichOneof("record_type") == "exit" for r in recs) and time.monotonic() < deadline:
        time.sleep(0.5)
        recs = list(records(path))
    kinds = [r.WhichOneof("record_type") for r in recs]
    assert "exit" in kinds, f"{path} ({path.stat().st_size} bytes) has no exit record after {wait_s:.0f} s: {kinds}"
    return recs


def read_run(run_dir: Path) -> dict:
    """``{"name", "tags", "id", "group", "job_type", "config", "history": [{key: value}], "summary": {key: value}}``
    of a run dir's W&B run."""
    files = list(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, f"expected one offline W&B run under {run_dir}, found {files}"
    recs = _finished_records(files[0])
    out: dict = {"name": None, "tags": [], "config": {}, "history": [], "summary": {}}
    for rec in recs:
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["name"], out["tags"] = rec.run.display_name, list(rec.run.tags)
            out["id"], out["group"], out["job_type"] = rec.run.run_id, rec.run.run_group, rec.run.job_type
            out["config"].update({_key(i): json.loads(i.value_json) for i in rec.run.config.update})
        elif kind == "config":
            out["config"].update({_key(i): json.loads(i.value_json) for i in rec.config.update})
        elif kind == "history":
            out["history"].append({_key(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            out["summary"].update({_key(i): json.loads(i.value_json) for i in rec.summary.update})
    return out
