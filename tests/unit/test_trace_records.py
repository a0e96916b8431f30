"""The trace's records against the RECORD FIELDS target/trace.py's header defines.

The expected records are written here by hand from those rules (the names of SAM-5 table
38 statuses and RFC 7143 11.3.1.1 attributes, the SBC-4 CDB fields, SPC-4 sense keys and
ASC/ASCQ, Data-In only for GOOD/CONDITION MET and at most the Expected Data Transfer
Length), in the key order the header gives: what trace.read() gives back from the file,
and what `scsi-target trace --json` prints, must be exactly these. The file's layout is
checked byte by byte against the header's table (struct formats written here, not
imported). Also: records reach the file while the tracer runs (a time-based flush, issue
16 item 4), a write error turns the tracer off with one warning and never raises into the
caller, and a file that is not a binary trace is refused, not appended to.
"""

from __future__ import annotations

import io
import json
import logging
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from target import trace
from target.scsi.disk import DISK_COMMANDS
from target.scsi.sense import (
    LBA_OUT_OF_RANGE,
    LU_NOT_READY_CAUSE_NOT_REPORTABLE,
    REPORTED_LUNS_DATA_HAS_CHANGED,
    CheckCondition,
    SenseKey,
    invalid_opcode,
)
from target.scsi.task import Nexus, ScsiTask, Status, TaskAttr
from target.trace import Tracer, render

pytestmark = pytest.mark.unit

NAME = "iqn.2026-11.local.test:host"
NEXUS = Nexus(NAME + ",i,0x1", "iqn.2026-11.local.test:t,t,0x1", initiator_name=NAME)
# JSON escaping (non-ASCII) and a '%' that must not be taken for a template field.
ODD_NAME = "iqn.2026-11.local.test:100%-d\u00e9j\u00e0"
ODD = Nexus(ODD_NAME + ",i,0x2", "iqn.2026-11.local.test:t,t,0x1", initiator_name=ODD_NAME)
# A session's nexus names its target too (target.iscsi.connection builds it so).
TARGET = "iqn.2026-11.local.test:t"
NAMED = Nexus(NAME + ",i,0x3", TARGET + ",t,0x1", initiator_name=NAME, target_name=TARGET)
PEER = "127.0.0.1:40000"


def rw10(op: int, byte1: int, lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", op, byte1, lba, 0, blocks, 0) + bytes(6)


def task(cdb: bytes, *, nexus: Nexus | None = NEXUS, lun: int = 0, tag: int = 1,
         attr: int = TaskAttr.SIMPLE, parse: bool = True, **fields) -> ScsiTask:
    t = ScsiTask(nexus, lun, cdb, tag=tag, attr=attr, data_out=fields.pop("data_out", None),
                 expected_in=fields.pop("expected_in", 0))
    if parse:  # as the LU's table looks it up on arrival (CommandSet.parse)
        DISK_COMMANDS.parse(t)
    for name, value in fields.items():
        setattr(t, name, value)
    return t


def cases() -> list[tuple[ScsiTask, str, int, int | None, dict]]:
    """(task, peer, latency ns, queued, the expected record without "t")."""
    read = rw10(0x28, 0, 2048, 8)
    read2 = rw10(0x28, 0, 4096, 16)
    fua = rw10(0x28, 0x08, 2048, 8)
    write = rw10(0x2A, 0x18, 100, 8)  # FUA | DPO
    bad = rw10(0x28, 0, 99999, 1)
    rc16 = struct.pack(">BBQIBB", 0x9E, 0x10, 0, 32, 0, 0)
    read16 = struct.pack(">BBQIBB", 0x88, 0, 1 << 40, 8, 0, 0)
    ws16 = struct.pack(">BBQIBB", 0x93, 0x09, 7, 50, 0, 0)  # UNMAP | NDOB
    unknown = bytes([0xC5]) + bytes(15)
    lbr = CheckCondition(SenseKey.ILLEGAL_REQUEST, LBA_OUT_OF_RANGE).sense(False)
    nrdy = CheckCondition(SenseKey.NOT_READY, LU_NOT_READY_CAUSE_NOT_REPORTABLE).sense(True)
    ua = CheckCondition(SenseKey.UNIT_ATTENTION, REPORTED_LUNS_DATA_HAS_CHANGED).sense(False)
    ua_sense = {"sense_key": "UNIT ATTENTION", "asc": "3F/0E", "asc_name": ""}
    base = {"initiator": NAME, "peer": PEER, "lun": 0}
    return [
        # 4 KiB READ(10) through the task set: SBC-4 5.x 10-byte fields, Data-In counted.
        (task(read, tag=0x10, data_in=memoryview(bytes(4096)), expected_in=4096), PEER,
         123_400, 3,
         {**base, "tag": 16, "attr": "SIMPLE", "op": "READ(10)", "lba": 2048, "blocks": 8,
          "cdb": read.hex(), "status": "GOOD", "in": 4096, "out": 0, "us": 123.4,
          "queued": 3}),
        # The same shape again, other values: a template reused, not its first values.
        (task(read2, tag=0x11, data_in=memoryview(bytes(8192)), expected_in=8192), PEER,
         9_876_549, 0,
         {**base, "tag": 17, "attr": "SIMPLE", "op": "READ(10)", "lba": 4096, "blocks": 16,
          "cdb": read2.hex(), "status": "GOOD", "in": 8192, "out": 0, "us": 9876.5,
          "queued": 0}),
        # The same command with FUA (byte 1 bit 3): another template, with its flags.
        (task(fua, tag=0x12, data_in=memoryview(bytes(4096)), expected_in=4096), PEER,
         1_049, 5,
         {**base, "tag": 18, "attr": "SIMPLE", "op": "READ(10)", "lba": 2048, "blocks": 8,
          "flags": ["FUA"], "cdb": fua.hex(), "status": "GOOD", "in": 4096, "out": 0,
          "us": 1.0, "queued": 5}),
        # WRITE(10) with FUA and DPO (byte 1 bits 3 and 4), ORDERED, LUN 3, bypass.
        (task(write, lun=3, tag=0xFFFFFFFF, attr=TaskAttr.ORDERED,
              data_out=memoryview(bytearray(4096))), PEER, 1_000_000, None,
         {**base, "lun": 3, "tag": 0xFFFFFFFF, "attr": "ORDERED", "op": "WRITE(10)",
          "lba": 100, "blocks": 8, "flags": ["FUA", "DPO"], "cdb": write.hex(),
          "status": "GOOD", "in": 0, "out": 4096, "us": 1000.0}),
        # CHECK CONDITION, fixed sense: key, ASC/ASCQ, its name; no Data-In counted.
        (task(bad, tag=7, expected_in=512, status=Status.CHECK_CONDITION, sense=lbr), PEER,
         250_000, 1,
         {**base, "tag": 7, "attr": "SIMPLE", "op": "READ(10)", "lba": 99999, "blocks": 1,
          "cdb": bad.hex(), "status": "CHECK CONDITION", "sense_key": "ILLEGAL REQUEST",
          "asc": "21/00", "asc_name": "LOGICAL BLOCK ADDRESS OUT OF RANGE", "in": 0,
          "out": 0, "us": 250.0, "queued": 1}),
        # Descriptor sense (D_SENSE=1), and Data-In on a failed command is not counted.
        (task(read, tag=8, expected_in=4096, data_in=bytes(4096),
              status=Status.CHECK_CONDITION, sense=nrdy), PEER, 61, None,
         {**base, "tag": 8, "attr": "SIMPLE", "op": "READ(10)", "lba": 2048, "blocks": 8,
          "cdb": read.hex(), "status": "CHECK CONDITION", "sense_key": "NOT READY",
          "asc": "04/00", "asc_name": "LOGICAL UNIT NOT READY", "in": 0, "out": 0,
          "us": 0.1}),
        # An ASC/ASCQ with no name in the table: an empty name.
        (task(read, tag=9, status=Status.CHECK_CONDITION, sense=ua), PEER, 0, None,
         {**base, "tag": 9, "attr": "SIMPLE", "op": "READ(10)", "lba": 2048, "blocks": 8,
          "cdb": read.hex(), "status": "CHECK CONDITION", **ua_sense, "in": 0, "out": 0,
          "us": 0.0}),
        # A service action, no block range; Data-In cut to the Expected Data Transfer Length.
        (task(rc16, tag=2, attr=TaskAttr.HEAD_OF_QUEUE, data_in=bytes(32), expected_in=12),
         PEER, 40_000, None,
         {**base, "tag": 2, "attr": "HEAD OF QUEUE", "op": "READ CAPACITY(16)", "sa": 16,
          "cdb": rc16.hex(), "status": "GOOD", "in": 12, "out": 0, "us": 40.0}),
        # An opcode no table has: named by its code.
        (task(unknown, tag=3, status=Status.CHECK_CONDITION,
              sense=invalid_opcode().sense(False)), PEER, 12_345, None,
         {**base, "tag": 3, "attr": "SIMPLE", "op": "opcode 0xC5", "cdb": unknown.hex(),
          "status": "CHECK CONDITION", "sense_key": "ILLEGAL REQUEST", "asc": "20/00",
          "asc_name": "INVALID COMMAND OPERATION CODE", "in": 0, "out": 0, "us": 12.3}),
        # No LU behind the LUN (never looked up): the disk table names it, with its range.
        (task(read16, lun=7, tag=4, parse=False, status=Status.CHECK_CONDITION, sense=lbr),
         PEER, 5_000, None,
         {**base, "lun": 7, "tag": 4, "attr": "SIMPLE", "op": "READ(16)", "lba": 1 << 40,
          "blocks": 8, "cdb": read16.hex(), "status": "CHECK CONDITION",
          "sense_key": "ILLEGAL REQUEST", "asc": "21/00",
          "asc_name": "LOGICAL BLOCK ADDRESS OUT OF RANGE", "in": 0, "out": 0, "us": 5.0}),
        # WRITE SAME(16) UNMAP + NDOB, flags in the table's order; TASK SET FULL.
        (task(ws16, tag=5, status=Status.TASK_SET_FULL), "[::1]:3260", 2_000, None,
         {**base, "peer": "[::1]:3260", "tag": 5, "attr": "SIMPLE", "op": "WRITE SAME(16)",
          "lba": 7, "blocks": 50, "flags": ["UNMAP", "NDOB"], "cdb": ws16.hex(),
          "status": "TASK SET FULL", "in": 0, "out": 0, "us": 2.0}),
        # No nexus: the initiator is the peer; a status and an attribute of no name.
        (task(read, nexus=None, tag=6, attr=7, status=0x99), PEER, 1_500, None,
         {**base, "initiator": PEER, "tag": 6, "attr": "7", "op": "READ(10)", "lba": 2048,
          "blocks": 8, "cdb": read.hex(), "status": "0x99", "in": 0, "out": 0, "us": 1.5}),
        # JSON escaping of the constants, and a '%' in them.
        (task(read, nexus=ODD, tag=12, data_in=bytes(4096), expected_in=4096), PEER, 100,
         None,
         {**base, "initiator": ODD_NAME, "tag": 12, "attr": "SIMPLE", "op": "READ(10)",
          "lba": 2048, "blocks": 8, "cdb": read.hex(), "status": "GOOD", "in": 4096,
          "out": 0, "us": 0.1}),
        # A nexus that names its target: "target" follows "initiator".
        (task(read, nexus=NAMED, tag=13, data_in=bytes(4096), expected_in=4096), PEER, 100,
         None,
         {"initiator": NAME, "target": TARGET, "peer": PEER, "lun": 0, "tag": 13,
          "attr": "SIMPLE", "op": "READ(10)", "lba": 2048, "blocks": 8, "cdb": read.hex(),
          "status": "GOOD", "in": 4096, "out": 0, "us": 0.1}),
    ]


def test_lines_are_the_records_of_the_field_rules(tmp_path: Path):
    path = tmp_path / "t.trace"
    live = io.StringIO()
    tracer = Tracer(path, live)
    work = cases()
    walls = []
    for t, peer, latency, queued, _ in work:
        walls.append(time.time())
        end = time.perf_counter_ns()  # the dispatcher's clock (target/shell/dispatch.py)
        tracer.record(peer, t, end - latency, end, queued)
    tracer.close()
    recs = list(trace.read(path))
    assert len(recs) == len(work)
    for rec, wall, (_, _, _, _, expected) in zip(recs, walls, work, strict=True):
        t = rec.pop("t")
        assert wall - 0.01 <= t <= time.time() and round(t, 6) == t  # microseconds
        assert rec == expected
        assert list(rec) == list(expected)  # and the header's key order
    # `scsi-target trace --json`: the same records, one JSON line each.
    out = subprocess.run([sys.executable, "-m", "target", "trace", "--json", str(path)],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    lines = out.splitlines()
    assert [{k: v for k, v in json.loads(line).items() if k != "t"} for line in lines] == [
        expected for *_, expected in work]
    # --trace-live: the rendered line of each record.
    rendered = [render(json.loads(line)) for line in lines]
    assert live.getvalue().splitlines() == rendered
    assert "READ(10) lba=99999 blocks=1 CHECK CONDITION ILLEGAL REQUEST 21/00" in rendered[4]


def test_unknown_opcodes_of_one_shape_keep_their_own_names(tmp_path: Path):
    """An opcode the table has no entry for is named by its code ("opcode 0xC0", trace.py's
    header), each its own: C0h, C1h and C2h (vendor specific, SPC-4 table 81) ending alike
    in INVALID COMMAND OPERATION CODE must not share the first one's name."""
    path = tmp_path / "t.trace"
    tracer = Tracer(path)
    sense = CheckCondition(SenseKey.ILLEGAL_REQUEST, invalid_opcode().code).sense(False)
    for tag in range(6):
        cdb = bytes([0xC0 + tag % 3]) + bytes(9)
        end = time.perf_counter_ns()
        tracer.record(PEER, task(cdb, tag=tag, status=Status.CHECK_CONDITION, sense=sense),
                      end - 1000, end)
    tracer.close()
    ops = [rec["op"] for rec in trace.read(path)]
    assert ops == [f"opcode 0x{0xC0 + tag % 3:02X}" for tag in range(6)]


def test_t_is_the_wall_clock_time_of_the_completion(tmp_path: Path):
    """"t" is when the command completed (its end_ns, on time.perf_counter_ns's clock), as
    seconds since the epoch to the microsecond: here one that ended 50 ms after a whole
    second, so that the six decimals must keep their leading zeros (.050000)."""
    path = tmp_path / "t.trace"
    tracer = Tracer(path)
    wall_ns, perf_ns = time.time_ns(), time.perf_counter_ns()
    when_ns = (wall_ns // 10**9 - 1) * 10**9 + 50_000_000
    end = perf_ns - (wall_ns - when_ns)
    tracer.record(PEER, task(rw10(0x28, 0, 0, 8)), end - 1000, end)
    tracer.close()
    (rec,) = trace.read(path)
    t = rec["t"]
    assert abs(t - when_ns / 1e9) < 0.005


def test_records_reach_the_file_while_the_tracer_runs(tmp_path: Path):
    """Issue 16 item 4: `scsi-target trace FILE` on a running target sees its commands
    within about a second (a time-based flush, not only at close)."""
    path = tmp_path / "t.trace"
    tracer = Tracer(path)
    try:
        end = time.perf_counter_ns()
        tracer.record(PEER, task(rw10(0x28, 0, 0, 8)), end - 1000, end)
        deadline = time.monotonic() + trace.FLUSH_INTERVAL + 1.0
        while time.monotonic() < deadline and not path.read_bytes():
            time.sleep(0.05)
        recs = list(trace.read(path))
        assert len(recs) == 1 and recs[0]["op"] == "READ(10)"
        assert "READ(10)" in trace.summarize(path)
    finally:
        tracer.close()


class BrokenStream(io.StringIO):
    def write(self, s: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


@pytest.mark.parametrize("where", ["file", "live"])
def test_a_write_error_turns_the_tracer_off_once(tmp_path: Path, caplog, where):
    """/dev/full fails every write with ENOSPC; a live stream may break: one warning, the
    tracer off, record() and close() never raise."""
    if where == "file":
        tracer = Tracer(Path("/dev/full"))
    else:
        tracer = Tracer(tmp_path / "t.trace", BrokenStream())
    with caplog.at_level(logging.WARNING, logger="target.trace"):
        end = time.perf_counter_ns()
        tracer.record(PEER, task(rw10(0x28, 0, 0, 8)), end - 1000, end)
        deadline = time.monotonic() + trace.FLUSH_INTERVAL + 2.0
        while tracer.enabled and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not tracer.enabled
        for _ in range(3):
            tracer.record(PEER, task(rw10(0x28, 0, 0, 8)), end - 1000, end)
        tracer.close()
    warnings = [r for r in caplog.records if r.name == "target.trace"]
    assert len(warnings) == 1 and "trace disabled" in warnings[0].getMessage()


def test_the_file_is_the_layout_of_the_header(tmp_path: Path):
    """One READ(10) through a task set, read back with struct formats written here from
    the header's table (not trace.py's own): a chunk header, two definitions (the source,
    the command) and one record, with the sense bytes after it."""
    path = tmp_path / "t.trace"
    tracer = Tracer(path)
    sense = CheckCondition(SenseKey.ILLEGAL_REQUEST, LBA_OUT_OF_RANGE).sense(False)
    cdb = rw10(0x28, 0x08, 99999, 1)[:10]  # READ(10) is ten bytes: six of padding
    t = task(cdb, nexus=NAMED, lun=5, tag=0x1234, expected_in=512,
             status=Status.CHECK_CONDITION, sense=sense)
    before = time.time_ns() - time.perf_counter_ns()
    tracer.record(PEER, t, 1_000, 251_000, 9)
    tracer.close()
    data = path.read_bytes()
    magic, version, _writer, epoch, n_defs, n_recs = struct.unpack_from("<4sB3xQqII", data)
    assert (magic, version) == (b"SCTR", 1)
    assert abs(epoch - before) < 10**9
    assert len(data) == 32 + n_defs + n_recs
    defs, at = [], 32
    while at < 32 + n_defs:
        (n,) = struct.unpack_from("<I", data, at)
        defs.append(json.loads(data[at + 4:at + 4 + n]))
        at += 4 + n
    assert defs == [{"source": 0, "initiator": NAME, "target": TARGET, "peer": PEER},
                    {"command": 1, "op": "READ(10)", "sa": None,
                     "flags": [[8, "FUA"], [16, "DPO"]]}]
    fixed = "<IIQIBBqQQQQqqiHH16s"
    assert struct.calcsize(fixed) == 102
    assert n_recs == 102 + len(sense)
    assert struct.unpack_from(fixed, data, at) == (
        0, 1, 5, 0x1234, TaskAttr.SIMPLE, Status.CHECK_CONDITION, 99999, 1, 0, 512, 0,
        1_000, 251_000, 9, 10, len(sense), cdb + bytes(6))
    assert data[at + 102:] == sense


def test_a_cdb_longer_than_16_bytes_and_no_block_range(tmp_path: Path):
    """A 32-byte variable-length CDB (SPC-4 4.2.3, opcode 7Fh) keeps all its bytes: 16 in
    the record, the rest after the sense; -1 for "no LBA" and for "not queued"."""
    path = tmp_path / "t.trace"
    tracer = Tracer(path)
    cdb = bytes([0x7F, 0, 0, 0, 0, 0, 0, 0x18, 0x00, 0x09]) + bytes(range(22))
    sense = invalid_opcode().sense(False)
    tracer.record(PEER, task(cdb, tag=1, status=Status.CHECK_CONDITION, sense=sense),
                  0, 1_000)
    tracer.close()
    (rec,) = trace.read(path)
    assert rec["cdb"] == cdb.hex() and "lba" not in rec and "queued" not in rec
    assert rec["asc"] == "20/00" and rec["us"] == 1.0


def test_two_tracers_share_one_file(tmp_path: Path):
    """Two workers append to one trace (O_APPEND), each numbering its own definitions:
    the reader keeps them apart by writer."""
    path = tmp_path / "t.trace"
    a, b = Tracer(path), Tracer(path)
    other = Nexus("iqn.2026-11.local.test:other,i,0x9", "iqn.2026-11.local.test:u,t,0x1",
                  initiator_name="iqn.2026-11.local.test:other",
                  target_name="iqn.2026-11.local.test:u")
    a.record(PEER, task(rw10(0x28, 0, 1, 8), nexus=NAMED, tag=1), 0, 1_000)
    b.record("127.0.0.1:40001", task(rw10(0x2A, 0, 2, 8), nexus=other, tag=2), 0, 1_000)
    a.close()
    b.record("127.0.0.1:40001", task(rw10(0x35, 0, 0, 0), nexus=other, tag=3), 0, 1_000)
    b.close()
    got = {(r["target"], r["tag"], r["op"]) for r in trace.read(path)}
    assert got == {(TARGET, 1, "READ(10)"), ("iqn.2026-11.local.test:u", 2, "WRITE(10)"),
                   ("iqn.2026-11.local.test:u", 3, "SYNCHRONIZE CACHE(10)")}


def test_a_chunk_cut_short_is_left_out_and_garbage_is_named(tmp_path: Path):
    """A chunk still being written at the end of the file is not read (Reader.truncated);
    bytes that are not a chunk are a TraceError naming where they are."""
    path = tmp_path / "t.trace"
    tracer = Tracer(path)
    tracer.record(PEER, task(rw10(0x28, 0, 1, 8)), 0, 1_000)
    tracer.close()
    whole = path.read_bytes()
    reader = trace.Reader()
    assert len(list(reader.records(whole + whole[:40]))) == 1 and reader.truncated
    assert len(list(reader.records(whole + whole))) == 2 and not reader.truncated
    with pytest.raises(trace.TraceError, match=f"byte {len(whole)}: not a trace chunk"):
        list(reader.records(whole + b"X" * 40))
    bad = bytearray(whole)
    bad[len(bad) - 10] ^= 0xFF  # inside the record: a CDB byte, still a record
    bad[32 + 4] = ord("[")  # the first definition is no longer JSON of a definition
    with pytest.raises(trace.TraceError, match="byte 32: not a trace definition"):
        list(trace.Reader().records(bytes(bad)))


def test_a_file_that_is_not_a_binary_trace_is_refused(tmp_path: Path):
    """An old JSON-lines trace is not appended to (it could not be read back): the error
    names the file; read() and the summary still read JSON lines."""
    path = tmp_path / "old.jsonl"
    path.write_text('{"t": 1.5, "op": "READ(10)", "lun": 0, "status": "GOOD", "in": 512, '
                    '"out": 0, "us": 3.0}\n')
    with pytest.raises(trace.TraceError, match="old.jsonl: not a binary CDB trace"):
        Tracer(path)
    assert [r["op"] for r in trace.read(path)] == ["READ(10)"]
    assert "READ(10)" in trace.summarize(path)
    out = subprocess.run([sys.executable, "-m", "target", "serve", "--portal",
                          "127.0.0.1:0", "--trace", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "not a binary CDB trace" in out.stderr


def test_an_error_in_record_turns_the_tracer_off(tmp_path: Path, caplog):
    """A value the layout cannot hold (a negative LUN, which no transport gives) is the
    trace's own error: one warning, the tracer off, and record() does not raise."""
    tracer = Tracer(tmp_path / "t.trace")
    with caplog.at_level(logging.WARNING, logger="target.trace"):
        tracer.record(PEER, task(rw10(0x28, 0, 0, 8), lun=-1), 0, 1_000)
        tracer.record(PEER, task(rw10(0x28, 0, 0, 8)), 0, 1_000)
        tracer.close()
    assert not tracer.enabled
    warnings = [r for r in caplog.records if r.name == "target.trace"]
    assert len(warnings) == 1 and "trace disabled" in warnings[0].getMessage()


def test_records_beyond_the_bound_are_dropped_and_counted(tmp_path: Path, monkeypatch,
                                                          caplog):
    """A writer that falls behind (here: stopped, with a bound of 3 records) holds no more
    than MAX_PENDING: the rest are counted, one warning, and the count reaches the file
    and the summary."""
    monkeypatch.setattr(trace, "MAX_PENDING", 3)
    path = tmp_path / "t.trace"
    tracer = Tracer(path, interval=3600)  # the writer waits an hour: nothing is drained
    with caplog.at_level(logging.WARNING, logger="target.trace"):
        for tag in range(10):
            tracer.record(PEER, task(rw10(0x28, 0, tag, 8), tag=tag), 0, 1_000)
        assert tracer.dropped == 7
        tracer.close()
    assert len([r for r in caplog.records if "dropping" in r.getMessage()]) == 1
    reader = trace.Reader()
    assert [r["tag"] for r in trace.read(path, reader)] == [0, 1, 2]
    assert reader.dropped == 7
    assert "7 records dropped" in trace.summarize(path)
