"""RSOC's CDB USAGE DATA judged by the standard's CDB tables (tests/unit/cdb_spec.py).

SPC-4 6.35.3: the usage data has the OPERATION CODE in byte 0 and the SERVICE ACTION in
its own field; every other bit is 1 where the device server evaluates that CDB bit and 0
where it ignores it or treats it as reserved, and all bits of one field have the same
value. So, for each command the LU reports, the 1s must cover exactly the fields the
standard defines for it (cdb_spec: not reserved, obsolete, vendor specific or restricted),
less the fields this device server documents that it ignores (cdb_spec `ignored`, each
with its reason). Where the device server departs from that today, the departure is
listed in DEVIATIONS by name: the test fails on any other, and on any listed one that is
gone (shorten the list then).
"""

from __future__ import annotations

import struct

import pytest

from target.backing.memory import MemoryStore
from target.scsi.disk import make_disk
from target.scsi.lu import LogicalUnit
from target.scsi.task import Identity, ScsiTask, Status
from tests.unit import cdb_spec
from tests.unit.spc_util import nexus

pytestmark = pytest.mark.unit

N = nexus(1)

# Departures of the usage data from the standard's CDB, per command: found by this test,
# reported, not yet fixed in the tables (target/scsi/sbc.py). GROUP NUMBER is 6 bits in
# SBC-4 (Linux sd.c sd_group_number() fills up to 3Fh; scsi_debug checks 3Fh) and the
# table marks SBC-3's 5 (WRITE ATOMIC(16) alone marks 3Fh). FUA_NV (byte 1 bit 1) is
# obsolete in SBC-4 and the handlers never read it. WRITE AND VERIFY refuses BYTCHK 1xb
# (so it evaluates byte 1 bit 2) but its usage marks only bit 1 of the field.
_GROUP = "group_number: 5 of 6 bits marked"
_FUA_NV = "marks 1 of 1 obsolete bits at 1.1"
_BYTCHK = "bytchk: 1 of 2 bits marked"
DEVIATIONS: dict[str, set[str]] = {
    **{name: {_GROUP, _FUA_NV} for name in (
        "READ(10)", "READ(12)", "READ(16)", "WRITE(10)", "WRITE(12)", "WRITE(16)")},
    **{name: {_GROUP, _BYTCHK} for name in (
        "WRITE AND VERIFY(10)", "WRITE AND VERIFY(12)", "WRITE AND VERIFY(16)")},
    # SBC-4 made READ CAPACITY's LOGICAL BLOCK ADDRESS and PMI obsolete (Seagate SCSI
    # Commands Reference Manual Rev. J, table 121); the handlers still evaluate them.
    "READ CAPACITY(10)": {"marks 32 of 32 obsolete bits at 2.7",
                          "marks 1 of 1 obsolete bits at 8.0"},
    "READ CAPACITY(16)": {"marks 64 of 64 obsolete bits at 2.7",
                          "marks 1 of 1 obsolete bits at 14.0"},
    **{name: {_GROUP} for name in (
        "VERIFY(10)", "VERIFY(12)", "VERIFY(16)", "PRE-FETCH(10)", "PRE-FETCH(16)",
        "SYNCHRONIZE CACHE(10)", "SYNCHRONIZE CACHE(16)", "WRITE SAME(10)",
        "WRITE SAME(16)", "UNMAP", "COMPARE AND WRITE", "ORWRITE(16)")},
}


def disk() -> LogicalUnit:
    lu = make_disk(0, MemoryStore(1 << 20), thin=True, identity=Identity(serial="SER0001"))
    lu.ua.clear(N)
    return lu


def one_command(lu: LogicalUnit, opcode: int, service_action: int | None) -> bytes:
    """RSOC, REPORTING OPTIONS 001b or 010b (SPC-4 6.35.1): the one command's usage data."""
    option = 1 if service_action is None else 2
    cdb = struct.pack(">BBBBHIBB", 0xA3, 0x0C, option, opcode, service_action or 0, 4096, 0, 0)
    task = ScsiTask(N, 0, cdb)
    lu.execute(task)
    assert task.status == Status.GOOD, task.sense.hex()
    d = bytes(task.data_in)
    assert d[1] & 0x07 == 0x03  # SUPPORT 011b: supported as the standard says
    size = struct.unpack_from(">H", d, 2)[0]
    return d[4 : 4 + size]


def departures(spec: cdb_spec.Cdb, usage: bytes) -> set[str]:
    """How `usage` departs from the standard's CDB `spec`, field by field."""
    marked = {(i, b) for i in range(1, len(usage)) for b in range(8) if usage[i] >> b & 1}
    ignored = {name for name, _ in spec.ignored}
    out = set()
    for f in spec.fields():
        bits = set(f.positions())
        hits = len(bits & marked)
        if f.name == "operation_code":
            continue
        if f.name == "service_action":
            value = sum(1 << (f.width - 1 - k) for k, p in enumerate(f.positions())
                        if p in marked)
            if value != spec.service_action():
                out.add(f"service action field holds {value:#x}")
            continue
        if f.kind != "field":
            if hits:
                out.add(f"marks {hits} of {f.width} {f.kind} bits at {f.byte}.{f.bit}")
        elif f.name in ignored:
            if hits:
                out.add(f"{f.name}: documented as ignored but {hits} of {f.width} bits marked")
        elif hits != f.width:
            out.add(f"{f.name}: {hits} of {f.width} bits marked")
    return out


def table() -> list:
    return disk().commands.sorted()


@pytest.mark.parametrize("cmd", table(), ids=lambda c: c.name)
def test_usage_data_marks_the_fields_the_standard_defines(cmd):
    """SPC-4 6.35.3 against the CDB table of the command's clause (cdb_spec)."""
    spec = cdb_spec.lookup(cmd.opcode, cmd.service_action)
    assert spec is not None, f"no CDB definition for {cmd.name} in cdb_spec"
    assert spec.name == cmd.name and spec.length == cmd.cdb_length, spec.clause
    usage = one_command(disk(), cmd.opcode, cmd.service_action)
    assert len(usage) == spec.length
    assert usage[0] == cmd.opcode  # SPC-4 6.35.3: byte 0 is the OPERATION CODE
    assert departures(spec, usage) == DEVIATIONS.get(cmd.name, set()), spec.clause
    if cmd.name not in DEVIATIONS:
        assert usage == cdb_spec.expected_usage(spec), spec.clause


def test_every_definition_is_a_whole_cdb_that_round_trips():
    """Each construct definition is as long as its standard says (6/10/12/16 bytes by the
    group code of the opcode, SPC-4 4.2.5.1), builds with its OPERATION CODE (and SERVICE
    ACTION) and parses back, and refuses a CDB with a reserved bit set."""
    group_length = {0: 6, 1: 10, 2: 10, 4: 16, 5: 12}
    for spec in cdb_spec.SPECS:
        raw = spec.build()
        assert len(raw) == spec.length == group_length[raw[0] >> 5], spec.name
        assert spec.layout.parse(raw) is not None
        reserved = [f for f in spec.fields() if f.kind == "reserved"]
        for f in reserved:
            byte, b = f.positions()[0]
            bad = bytearray(raw)
            bad[byte] |= 1 << b
            with pytest.raises(Exception):  # noqa: B017 (construct's ConstError)
                spec.layout.parse(bytes(bad))


def test_fields_sit_where_the_standard_puts_them():
    """Spot checks of cdb_spec against CDBs built by a peer: Linux sd.c's READ(16) (LBA in
    bytes 2-9, length in 10-13, DLD2 in byte 1 bit 0, DLD1/DLD0 in byte 14 bits 7-6,
    sd_setup_rw16_cmnd) and sg3_utils' sg_opcodes RSOC CDB (REPORTING OPTIONS in byte 2
    bits 2-0, the requested opcode in byte 3, service action in 4-5, length in 6-9)."""
    read16 = cdb_spec.lookup(0x88, None)
    raw = read16.build(logical_block_address=0x0102030405060708, transfer_length=0x0A0B0C0D,
                       dld2=True, dld1=True, dld0=False, group_number=5)
    assert raw == bytes.fromhex("8801 0102030405060708 0a0b0c0d 85 00".replace(" ", ""))
    rsoc = cdb_spec.lookup(0xA3, 0x0C)
    raw = rsoc.build(rctd=True, reporting_options=2, requested_operation_code=0x9E,
                     requested_service_action=0x10, allocation_length=0x2000)
    assert raw == bytes.fromhex("a30c829e0010000020000000")
