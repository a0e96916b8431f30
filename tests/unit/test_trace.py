"""The CDB trace: the fields of block CDBs by their layout (SBC-4) as a record gives
them, a failed command's record, the per-opcode summary."""

from __future__ import annotations

import io
import json
import struct

import pytest

from target import trace
from target.scsi.disk import DISK_COMMANDS
from target.scsi.sense import LBA_OUT_OF_RANGE, CheckCondition, SenseKey
from target.scsi.task import Nexus, ScsiTask, Status
from target.trace import TraceError, Tracer, summarize

pytestmark = pytest.mark.unit

NEXUS = Nexus("iqn.2026-11.local.test:host,i,0x1", "iqn.2026-11.local.test:t,t,0x1",
              initiator_name="iqn.2026-11.local.test:host")


def traced(cdb: bytes, tmp_path) -> dict:
    """The trace record of a command with this CDB, looked up as the LU's table does on
    arrival (CommandSet.parse)."""
    task = ScsiTask(NEXUS, 0, cdb)
    DISK_COMMANDS.parse(task)
    path = tmp_path / "t.trace"
    tracer = Tracer(path)
    tracer.record("127.0.0.1:1", task, 0, 1_000)
    tracer.close()
    (rec,) = trace.read(path)
    return rec


@pytest.mark.parametrize("cdb,expected", [
    (bytes([0x08, 0x01, 0x02, 0x03, 0, 0]), {"op": "READ(6)", "lba": 0x10203, "blocks": 256}),
    (struct.pack(">BBIBHB", 0x2A, 0x08, 2048, 0, 128, 0),
     {"op": "WRITE(10)", "lba": 2048, "blocks": 128, "flags": ["FUA"]}),
    (struct.pack(">BBIIBB", 0xA8, 0, 7, 9, 0, 0), {"op": "READ(12)", "lba": 7, "blocks": 9}),
    (struct.pack(">BBQIBB", 0x88, 0x10, 1 << 40, 8, 0, 0),
     {"op": "READ(16)", "lba": 1 << 40, "blocks": 8, "flags": ["DPO"]}),
    (struct.pack(">BBQIBB", 0x93, 0x08, 100, 50, 0, 0),
     {"op": "WRITE SAME(16)", "lba": 100, "blocks": 50, "flags": ["UNMAP"]}),
    (struct.pack(">BBQxxxBBB", 0x89, 0, 5, 1, 0, 0),
     {"op": "COMPARE AND WRITE", "lba": 5, "blocks": 1}),
])
def test_fields_of_block_commands(cdb, expected, tmp_path):
    """SBC-4 field positions: 6-byte (21-bit LBA, 0 = 256 blocks), 10, 12, 16-byte and
    COMPARE AND WRITE's one-byte NUMBER OF LOGICAL BLOCKS; flags only when set."""
    got = traced(cdb, tmp_path)
    assert {k: got[k] for k in expected} == expected
    assert ("flags" in got) == ("flags" in expected)


def test_unknown_opcode_and_service_action(tmp_path):
    got = traced(bytes([0xC5]) + bytes(9), tmp_path)
    assert got["op"] == "opcode 0xC5" and "sa" not in got and "lba" not in got
    (tmp_path / "t.trace").unlink()
    got = traced(struct.pack(">BBQIBB", 0x9E, 0x10, 0, 32, 0, 0), tmp_path)
    assert (got["op"], got["sa"]) == ("READ CAPACITY(16)", 0x10) and "lba" not in got


def test_record_of_a_failed_command(tmp_path):
    """A CHECK CONDITION record carries the decoded sense and no data moved."""
    cdb = struct.pack(">BBIBHB", 0x28, 0, 99999, 0, 1, 0)
    task = ScsiTask(NEXUS, 0, cdb, tag=7, expected_in=512)
    DISK_COMMANDS.parse(task)
    task.status = Status.CHECK_CONDITION
    task.sense = CheckCondition(SenseKey.ILLEGAL_REQUEST, LBA_OUT_OF_RANGE).sense(False)
    live = io.StringIO()
    tracer = Tracer(tmp_path / "t.trace", live)
    tracer.record("127.0.0.1:1", task, 1_000_000, 1_250_000)
    tracer.close()
    (rec,) = trace.read(tmp_path / "t.trace")
    assert rec["op"] == "READ(10)" and rec["lba"] == 99999 and rec["tag"] == 7
    assert rec["status"] == "CHECK CONDITION" and rec["sense_key"] == "ILLEGAL REQUEST"
    assert rec["asc"] == "21/00" and rec["asc_name"] == "LOGICAL BLOCK ADDRESS OUT OF RANGE"
    assert rec["in"] == 0 and rec["us"] == 250.0
    assert "READ(10) lba=99999 blocks=1 CHECK CONDITION ILLEGAL REQUEST 21/00" in live.getvalue()


def test_summary_per_opcode(tmp_path):
    path = tmp_path / "t.jsonl"
    recs = [{"t": 100 + i, "op": "READ(10)", "lun": 0, "lba": i, "blocks": 8, "status": "GOOD",
             "in": 4096, "out": 0, "us": float(10 * (i + 1))} for i in range(100)]
    recs.append({"t": 300, "op": "WRITE(10)", "lun": 0, "status": "CHECK CONDITION",
                 "sense_key": "DATA PROTECT", "asc": "27/00", "asc_name": "WRITE PROTECTED",
                 "in": 0, "out": 512, "us": 5.0})
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    text = summarize(path)
    read = next(line for line in text.splitlines() if line.startswith("READ(10)"))
    fields = read.split()
    assert fields[1] == "100" and fields[2] == "800"  # count, blocks
    assert fields[5:9] == ["505", "510", "990", "1000"]  # mean, p50, p99, max (us)
    assert "DATA PROTECT 27/00 WRITE PROTECTED" in text
    assert text.splitlines()[-1] == "101 commands over 200.0 s"


def test_summary_of_a_malformed_trace(tmp_path):
    """A record with fields missing, a line that is not JSON, bytes that are neither JSON
    lines nor chunks, a missing file: each a TraceError that says where."""
    path = tmp_path / "bad.jsonl"
    path.write_text('{"op": "READ(10)"}\n')
    with pytest.raises(TraceError, match=r"bad.jsonl: record 1: not a trace record"):
        summarize(path)
    good = json.dumps({"t": 1.0, "op": "READ(10)", "status": "GOOD", "in": 0, "out": 0,
                       "us": 1.0})
    path.write_text(good + "\nnot json\n")
    with pytest.raises(TraceError, match=r"bad.jsonl:2: not a trace record"):
        summarize(path)
    path.write_bytes(b"garbage, not a trace at all")
    with pytest.raises(TraceError, match=r"bad.jsonl: byte 0: not a trace chunk"):
        summarize(path)
    with pytest.raises(TraceError, match="absent"):
        summarize(tmp_path / "absent.jsonl")
