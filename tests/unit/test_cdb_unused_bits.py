"""Each CDB bit that RSOC's usage data marks as unused, set: the answer SPC-4 asks for.

For every command of the disk table (thin, so UNMAP is there) and every bit whose CDB
USAGE DATA bit is 0 (SPC-4 6.35.3: the device server ignores it or treats it as
reserved), other than the OPERATION CODE and the SERVICE ACTION, a CDB that is valid but
for that one bit must get one of two answers:
- CHECK CONDITION, ILLEGAL REQUEST, INVALID FIELD IN CDB (24h/00h) with the sense-key
  specific field pointer (SPC-4 4.5.2.4.2: SKSV=1, C/D=1) at that byte, and, when BPV=1,
  the bit pointer at that bit or at the leftmost bit of the standard's field holding it
  (cdb_spec: "the bit pointer field indicates the leftmost bit of the field in error");
- or exactly the answer to the CDB without the bit (status, sense, data): the bit was
  ignored. The standard allows that for a reserved bit ("recipients are not required to
  check reserved bits", the keyword "reserved" in SPC-4 clause 3), for an obsolete,
  restricted or vendor specific one (not defined for this device server), and for a
  defined field the device server documents it ignores (cdb_spec `ignored`); the test
  names which, per bit.
Each CDB runs against a fresh LU (UnitAttentions.clear: a known nexus, nothing pending),
so no command sees another's state. The base CDBs are built with cdb_spec.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from target.backing.memory import MemoryStore
from target.scsi.disk import make_disk
from target.scsi.task import Identity, ScsiTask
from tests.unit import cdb_spec
from tests.unit.spc_util import nexus, parse_sense
from tests.unit.test_cdb_usage import DEVIATIONS

pytestmark = pytest.mark.unit

N = nexus(1)
BS = 512
_UNMAP_LIST = struct.pack(">HH4x", 22, 16) + struct.pack(">QI4x", 0, 1)  # SBC-4 UNMAP list

# Field values that make each CDB valid and do some work; the Data-Out it needs.
BASE: dict[str, tuple[dict[str, int], bytes | None]] = {
    "REQUEST SENSE": ({"allocation_length": 252}, None),
    "INQUIRY": ({"allocation_length": 255}, None),
    "MODE SENSE(6)": ({"page_code": 0x3F, "allocation_length": 255}, None),
    "MODE SENSE(10)": ({"page_code": 0x3F, "allocation_length": 1024}, None),
    "MODE SELECT(6)": ({"pf": 1}, None),
    "MODE SELECT(10)": ({"pf": 1}, None),
    "LOG SENSE": ({"pc": 1, "allocation_length": 1024}, None),
    "REPORT LUNS": ({"allocation_length": 1024}, None),
    "REPORT SUPPORTED OPERATION CODES": ({"allocation_length": 8192}, None),
    "READ CAPACITY(16)": ({"allocation_length": 32}, None),
    "GET LBA STATUS": ({"allocation_length": 64}, None),
    "READ DEFECT DATA(10)": ({"allocation_length": 255, "defect_list_format": 5}, None),
    "READ DEFECT DATA(12)": ({"allocation_length": 255, "defect_list_format": 5}, None),
    "START STOP UNIT": ({"start": 1}, None),
    "UNMAP": ({"parameter_list_length": len(_UNMAP_LIST)}, _UNMAP_LIST),
    "COMPARE AND WRITE": ({"logical_block_address": 8, "number_of_logical_blocks": 1},
                          bytes(2 * BS)),
    "SANITIZE/OVERWRITE": ({"parameter_list_length": 8}, bytes((1, 0, 0, 4)) + b"\xa5" * 4),
}
for _name in ("PERSISTENT RESERVE IN/READ KEYS", "PERSISTENT RESERVE IN/READ RESERVATION",
              "PERSISTENT RESERVE IN/REPORT CAPABILITIES",
              "PERSISTENT RESERVE IN/READ FULL STATUS"):
    BASE[_name] = ({"allocation_length": 1024}, None)
KEY = 0x1234
for _name in ("REGISTER", "REGISTER AND IGNORE EXISTING KEY"):
    BASE[f"PERSISTENT RESERVE OUT/{_name}"] = ({"parameter_list_length": 24},
                                               struct.pack(">QQ8x", 0, KEY))
for _name in ("RESERVE", "RELEASE", "CLEAR", "PREEMPT", "PREEMPT AND ABORT",
              "REGISTER AND MOVE"):
    BASE[f"PERSISTENT RESERVE OUT/{_name}"] = ({"parameter_list_length": 24, "type": 1},
                                               struct.pack(">QQ8x", KEY, KEY))
# Commands run first on the fresh LU so that the base CDB has work to do: a registered
# I_T nexus for the PERSISTENT RESERVE OUT actions other than the registering ones (and
# the reservation holder for REGISTER AND MOVE, SPC-4 5.13.8).
_REGISTER = (cdb_spec.lookup(0x5F, 0).build(parameter_list_length=24),
             struct.pack(">QQ8x", 0, KEY))
_RESERVE = (cdb_spec.lookup(0x5F, 1).build(parameter_list_length=24, type=1),
            struct.pack(">QQ8x", KEY, 0))
PREP = {f"PERSISTENT RESERVE OUT/{name}": [_REGISTER] for name in (
    "RESERVE", "RELEASE", "CLEAR", "PREEMPT", "PREEMPT AND ABORT")}
PREP["PERSISTENT RESERVE OUT/REGISTER AND MOVE"] = [_REGISTER, _RESERVE]  # the holder moves
for _name in ("COPY STATUS", "RECEIVE DATA", "OPERATING PARAMETERS", "FAILED SEGMENT DETAILS"):
    BASE[f"RECEIVE COPY RESULTS/{_name}"] = ({"allocation_length": 1024}, None)
for _name in ("READ(6)", "READ(10)", "READ(12)", "READ(16)", "VERIFY(10)", "VERIFY(12)",
              "VERIFY(16)", "PRE-FETCH(10)", "PRE-FETCH(16)", "SYNCHRONIZE CACHE(10)",
              "SYNCHRONIZE CACHE(16)"):
    _len = {"VERIFY": "verification_length", "PRE-F": "prefetch_length",
            "SYNCH": "number_of_logical_blocks"}.get(_name[:5], "transfer_length")
    BASE[_name] = ({"logical_block_address": 8, _len: 2}, None)
for _name in ("WRITE(6)", "WRITE(10)", "WRITE(12)", "WRITE(16)", "WRITE AND VERIFY(10)",
              "WRITE AND VERIFY(12)", "WRITE AND VERIFY(16)", "ORWRITE(16)",
              "WRITE ATOMIC(16)"):
    BASE[_name] = ({"logical_block_address": 8, "transfer_length": 2}, bytes(2 * BS))
for _name in ("WRITE SAME(10)", "WRITE SAME(16)"):
    BASE[_name] = ({"logical_block_address": 8, "number_of_logical_blocks": 2}, bytes(BS))


def answer(cdb: bytes, data_out: bytes | None, prep: list | None = None
           ) -> tuple[int, bytes, bytes]:
    lu = make_disk(0, MemoryStore(1 << 20), thin=True, identity=Identity(serial="SER0001"))
    lu.ua.clear(N)
    for pre_cdb, pre_data in prep or ():
        pre = ScsiTask(N, 0, pre_cdb, data_out=pre_data)
        lu.execute(pre)
        assert pre.status == 0, pre.sense.hex()
    task = ScsiTask(N, 0, cdb, data_out=data_out)
    lu.execute(task)
    return task.status, bytes(task.sense or b""), bytes(task.data_in or b"")


def commands() -> list:
    lu = make_disk(0, MemoryStore(1 << 20), thin=True)
    return lu.commands.sorted()


def unused_bits(cmd) -> list[tuple[int, int]]:
    """(byte, bit) of each usage-map 0 outside the OPERATION CODE and SERVICE ACTION."""
    spec = cdb_spec.lookup(cmd.opcode, cmd.service_action)
    skip = {p for f in spec.fields() if f.name == "service_action" for p in f.positions()}
    return [(i, b) for i in range(1, cmd.cdb_length) for b in range(8)
            if not cmd.usage[i] >> b & 1 and (i, b) not in skip]


def why_it_may_be_ignored(spec: cdb_spec.Cdb, byte: int, b: int) -> str:
    for f in spec.fields():
        if (byte, b) in f.positions():
            if f.kind == "reserved":
                return "reserved: SPC-4 clause 3 keyword, recipients are not required to check"
            if f.kind != "field":
                return f"{f.kind}: not defined for this device server ({spec.clause})"
            for name, why in spec.ignored:
                if name == f.name:
                    return f"{f.name}: {why}"
            for deviation in DEVIATIONS.get(spec.name, ()):
                if deviation.startswith(f"{f.name}: "):
                    return f"{f.name}: usage map departs from SBC-4 ({deviation}), listed"
            return ""
    raise AssertionError(f"{spec.name}: no field holds byte {byte} bit {b}")


def field_start(spec: cdb_spec.Cdb, byte: int, b: int) -> tuple[int, int]:
    for f in spec.fields():
        if (byte, b) in f.positions():
            return f.byte, f.bit
    raise AssertionError


def judge(cmd, bits: list[tuple[int, int]]) -> None:
    """The answer with `bits` set is INVALID FIELD IN CDB at one of them, or the base's
    answer when every one of them may be ignored."""
    spec = cdb_spec.lookup(cmd.opcode, cmd.service_action)
    fields, data_out = BASE.get(cmd.name, ({}, None))
    base = spec.build(**fields)
    cdb = bytearray(base)
    for byte, b in bits:
        cdb[byte] |= 1 << b
    prep = PREP.get(cmd.name)
    got = answer(bytes(cdb), data_out, prep)
    reasons = [why_it_may_be_ignored(spec, byte, b) for byte, b in bits]
    if all(reasons) and got == answer(base, data_out, prep):
        return  # ignored, as the standard lets it be (reasons)
    if got[0] == 0x02:
        s = parse_sense(got[1])
        if s.code == (0x05, 0x24, 0x00):
            assert s.sksv and s.cd, f"{cmd.name} {bits}: no field pointer"
            pointed = [(byte, b) for byte, b in bits if s.field == byte and (
                not s.bpv or s.bit == b or (s.field, s.bit) == field_start(spec, byte, b))]
            assert pointed, (f"{cmd.name} with {bits} set: INVALID FIELD IN CDB points at "
                             f"byte {s.field} bit {s.bit if s.bpv else '-'}")
            return
    assert all(reasons), (f"{cmd.name}: bit {bits} is a field the device server neither "
                          "evaluates (usage 0) nor documents it ignores")
    raise AssertionError(
        f"{cmd.name} with {bits} set ({'; '.join(reasons)}): neither refused as INVALID "
        f"FIELD IN CDB at that bit nor ignored (answer {got[0]:#x} {got[1].hex()})")


@pytest.mark.parametrize("cmd", commands(), ids=lambda c: c.name)
def test_each_unused_bit_is_refused_or_ignored(cmd):
    """Every usage-0 bit of the command, one at a time (the exhaustive form)."""
    for bit in unused_bits(cmd):
        judge(cmd, [bit])


_CASES = [(cmd, unused_bits(cmd)) for cmd in commands()]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.sampled_from([c for c in _CASES if c[1]]).flatmap(
    lambda c: st.tuples(st.just(c[0]), st.lists(st.sampled_from(c[1]), min_size=1,
                                               max_size=4, unique=True))))
def test_several_unused_bits_at_once(case):
    """Property: with any few usage-0 bits set together, the answer is INVALID FIELD IN CDB
    pointing at one of them, or the answer to the clean CDB (every one of them ignorable)."""
    cmd, bits = case
    judge(cmd, bits)
