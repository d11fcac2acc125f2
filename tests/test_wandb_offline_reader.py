"""The offline W&B reader used by the W&B tests never hands protobuf a record wandb-core is still writing
(CI once failed with a DecodeError reading a run file mid-flush)."""
import struct
import zlib

from tests.wandb_offline import records


def _write(path, recs) -> bytes:
    out = bytearray(b":W&B" + bytes(3))
    for rec in recs:
        body = rec.SerializeToString()
        out += struct.pack("<IHB", zlib.crc32(body, zlib.crc32(bytes([1]))), len(body), 1) + body
    path.write_bytes(bytes(out))
    return bytes(out)


def test_every_prefix_of_a_run_file_reads_as_a_prefix_of_its_records(tmp_path):
    from wandb.proto import wandb_internal_pb2 as pb

    recs = [pb.Record(), pb.Record(), pb.Record()]
    recs[0].run.display_name = "site_a"
    recs[1].history.item.add(key="val/dice", value_json="0.5")
    recs[2].exit.exit_code = 0
    data = _write(tmp_path / "run.wandb", recs)
    whole = [r.WhichOneof("record_type") for r in records(tmp_path / "run.wandb")]
    assert whole == ["run", "history", "exit"]
    for cut in range(len(data)):
        (tmp_path / "cut.wandb").write_bytes(data[:cut])
        got = [r.WhichOneof("record_type") for r in records(tmp_path / "cut.wandb")]
        assert got == whole[:len(got)] and len(got) < 3, (cut, got)


def test_a_chunk_whose_crc_does_not_match_ends_the_readable_prefix(tmp_path):
    from wandb.proto import wandb_internal_pb2 as pb

    recs = [pb.Record(), pb.Record()]
    recs[0].run.display_name = "site_a"
    recs[1].exit.exit_code = 0
    data = bytearray(_write(tmp_path / "run.wandb", recs))
    data[-1] ^= 0xFF  # the exit record's last byte, as if not yet written
    (tmp_path / "run.wandb").write_bytes(bytes(data))
    assert [r.WhichOneof("record_type") for r in records(tmp_path / "run.wandb")] == ["run"]


def test_an_in_process_run_does_not_restore_a_dead_wandb_service(tmp_path, monkeypatch):
    """``tests.cli.run_in_process`` ends W&B's service (as a real process exit would) and restores the
    environment: it must not restore the ended service's token, or the next in-process run connects to a dead
    socket (CI failed two W&B tests so, when a worker had started a service before an in-process run)."""
    import os

    import wandb

    from tests.cli import run_in_process

    monkeypatch.setenv("WANDB_MODE", "offline")
    wandb.init(mode="offline", dir=str(tmp_path), project="before").finish()
    token = os.environ.get("WANDB_SERVICE")
    assert token, "wandb.init started no service in this process"
    assert run_in_process("platform", [], tmp_path).returncode == 0
    assert os.environ.get("WANDB_SERVICE") != token
    try:
        wandb.init(mode="offline", dir=str(tmp_path), project="after").finish()  # a dead token fails here
    finally:
        wandb.teardown()
