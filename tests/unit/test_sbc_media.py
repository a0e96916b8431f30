"""Removable medium, write protection, physical blocks, WRITE ATOMIC(16) and provisioning
state, through LogicalUnit.execute with the real disk table (SBC-4 4.7, 5.13, 5.20, 5.25,
5.48, 5.50, 5.8; SPC-4 7.8 block limits)."""

from __future__ import annotations

import struct

import pytest

from target.backing.memory import MemoryStore
from target.scsi import vpd_sbc
from target.scsi.disk import DISK_COMMANDS
from target.scsi.lu import LogicalUnit
from target.scsi.sense import BUS_DEVICE_RESET_FUNCTION_OCCURRED
from target.scsi.task import Nexus, ScsiTask, Status

pytestmark = pytest.mark.unit

A = Nexus("iqn.2026-11.local.test:a,i,0x400000000001", "iqn.2026-11.local.test:t,t,0x0001")
B = Nexus("iqn.2026-11.local.test:b,i,0x400000000002", "iqn.2026-11.local.test:t,t,0x0001")

NOT_READY_NO_MEDIUM = (0x02, 0x3A, 0x00)
REMOVAL_PREVENTED = (0x05, 0x53, 0x02)
INVALID_FIELD_IN_CDB = (0x05, 0x24, 0x00)
WRITE_PROTECTED = (0x07, 0x27, 0x00)
LBA_OUT_OF_RANGE = (0x05, 0x21, 0x00)
TUR = bytes(6)


def make(size: int = 4 << 20, bs: int = 512, **kw) -> LogicalUnit:
    lu = LogicalUnit(0, MemoryStore(size), DISK_COMMANDS, block_size=bs, **kw)
    for n in (A, B):
        lu.ua.clear(n)  # known nexuses, no unit attention pending
    return lu


def run(lu: LogicalUnit, cdb: bytes, data: bytes | None = None, nexus: Nexus = A) -> ScsiTask:
    task = ScsiTask(nexus, 0, cdb, data_out=memoryview(data) if data is not None else None)
    lu.execute(task)
    return task


def sense(task: ScsiTask) -> tuple[int, int, int]:
    assert task.status == Status.CHECK_CONDITION, task.status
    return task.sense[2] & 0x0F, task.sense[12], task.sense[13]


def ok(task: ScsiTask) -> ScsiTask:
    assert task.status == Status.GOOD, task.sense.hex()
    return task


def ssu(*, start: bool = False, loej: bool = False, power: int = 0,
        no_flush: bool = False) -> bytes:
    return bytes((0x1B, 0, 0, 0, power << 4 | no_flush << 2 | loej << 1 | start, 0))


def prevent(value: int) -> bytes:
    return bytes((0x1E, 0, 0, 0, value, 0))


# --- removable medium: START STOP UNIT and PREVENT ALLOW MEDIUM REMOVAL --------------------

def test_eject_and_load_a_removable_medium():
    """SBC-4 5.25: LOEJ=1 START=0 ejects, then media access is NOT READY, MEDIUM NOT
    PRESENT (SPC-4 6.37 TEST UNIT READY, SBC-4 5.25); LOEJ=1 START=1 loads it again."""
    lu = make(removable=True)
    ok(run(lu, ssu(loej=True)))
    assert sense(run(lu, TUR)) == NOT_READY_NO_MEDIUM
    assert sense(run(lu, struct.pack(">BBIBHB", 0x28, 0, 0, 0, 1, 0))) == NOT_READY_NO_MEDIUM
    ok(run(lu, ssu(loej=True)))  # ejecting an ejected medium is no error
    ok(run(lu, ssu(loej=True, start=True)))
    ok(run(lu, TUR))


def test_power_condition_ignores_loej_and_start():
    """SBC-4 5.25: with POWER CONDITION other than 0h, START and LOEJ are ignored."""
    lu = make(removable=True)
    for power in range(1, 16):
        ok(run(lu, ssu(loej=True, power=power)))
        ok(run(lu, TUR))


def test_loej_on_a_fixed_lu_changes_nothing():
    lu = make()
    ok(run(lu, ssu(loej=True)))
    ok(run(lu, TUR))


def test_prevent_blocks_eject_and_load_for_every_nexus():
    """SBC-4 5.13: while any I_T nexus prevents removal, START STOP UNIT with LOEJ ends in
    ILLEGAL REQUEST, MEDIUM REMOVAL PREVENTED, from whichever nexus it comes."""
    lu = make(removable=True)
    ok(run(lu, prevent(1)))
    assert sense(run(lu, ssu(loej=True))) == REMOVAL_PREVENTED
    assert sense(run(lu, ssu(loej=True), nexus=B)) == REMOVAL_PREVENTED
    ok(run(lu, TUR))
    ok(run(lu, prevent(0), nexus=B))  # B's ALLOW does not lift A's PREVENT
    assert sense(run(lu, ssu(loej=True), nexus=B)) == REMOVAL_PREVENTED
    ok(run(lu, prevent(0)))
    ok(run(lu, ssu(loej=True)))
    ok(run(lu, prevent(1)))  # allowed without a medium
    assert sense(run(lu, ssu(loej=True, start=True))) == REMOVAL_PREVENTED
    ok(run(lu, prevent(0)))
    ok(run(lu, ssu(loej=True, start=True)))
    ok(run(lu, TUR))


@pytest.mark.parametrize("how", ["lu reset", "nexus loss"])
def test_prevent_ends_with_reset_and_nexus_loss(how):
    """SBC-4 5.13: the prevention ends with a LOGICAL UNIT RESET (or hard reset) and,
    for the nexus that set it, with the I_T nexus loss."""
    lu = make(removable=True)
    ok(run(lu, prevent(1)))
    if how == "lu reset":
        lu.reset(BUS_DEVICE_RESET_FUNCTION_OCCURRED)
        lu.ua.clear(A)
    else:
        lu.nexus_lost(A)
        lu.ua.clear(A)
    ok(run(lu, ssu(loej=True)))


def test_prevent_field_obsolete_values_refused():
    """SBC-4 5.13: PREVENT 10b and 11b are obsolete: INVALID FIELD IN CDB."""
    lu = make(removable=True)
    for value in (2, 3):
        task = run(lu, prevent(value))
        assert sense(task) == INVALID_FIELD_IN_CDB
        assert task.sense[15] & 0x80 and task.sense[17] == 4  # field pointer: byte 4


# --- write protection comes first -----------------------------------------------------------

def test_read_only_thin_lu_reports_write_protected_before_field_checks():
    """SBC-4 4.11 (write protection): UNMAP and WRITE SAME, with or without UNMAP, on a
    write-protected LU end in DATA PROTECT, WRITE PROTECTED."""
    lu = make(thin=True, read_only=True)
    unmap = struct.pack(">BBxxxxxHB", 0x42, 0, 24, 0)
    params = struct.pack(">HH4xQI4x", 22, 16, 0, 1)
    assert sense(run(lu, unmap, params)) == WRITE_PROTECTED
    for flags in (0x00, 0x08):
        ws10 = struct.pack(">BBIBHB", 0x41, flags, 0, 0, 1, 0)
        assert sense(run(lu, ws10, bytes(512))) == WRITE_PROTECTED
        ws16 = struct.pack(">BBQIBB", 0x93, flags, 0, 1, 0, 0)
        assert sense(run(lu, ws16, bytes(512))) == WRITE_PROTECTED


# --- physical blocks and READ CAPACITY(16) --------------------------------------------------

def test_physical_block_exponent_in_read_capacity16_and_block_limits():
    """SBC-4 5.20.2: LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT; the block limits page's
    granularities follow the physical block (SBC-4 6.6.4)."""
    lu = make(thin=True, physical_block_size=4096)
    data = ok(run(lu, struct.pack(">BBQIBB", 0x9E, 0x10, 0, 32, 0, 0))).data_in
    assert data[13] & 0x0F == 3  # 2^3 = 8 logical blocks per physical block
    assert data[14] & 0xC0 == 0xC0  # LBPME, LBPRZ
    page = vpd_sbc.block_limits(lu)
    (unmap_gran,) = struct.unpack_from(">I", page, 28)
    max_atomic, align, gran = struct.unpack_from(">III", page, 44)
    assert unmap_gran == 8 and align == 8 and gran == 8
    assert 0 < max_atomic <= struct.unpack_from(">I", page, 8)[0]


@pytest.mark.parametrize("physical", [1000, 1536, 512 << 16])
def test_physical_block_size_must_be_a_power_of_two_multiple(physical):
    with pytest.raises(ValueError, match="physical block size"):
        make(physical_block_size=physical)


# --- WRITE ATOMIC(16) -------------------------------------------------------------------------

def write_atomic16(lba: int, n: int, flags: int = 0, boundary: int = 0) -> bytes:
    return struct.pack(">BBQHHBB", 0x9C, flags, lba, boundary, n, 0, 0)


def test_write_atomic16_writes_aligned_whole_physical_blocks():
    """SBC-4 5.48: the blocks are written; LBA must be a multiple of ATOMIC ALIGNMENT and
    TRANSFER LENGTH of ATOMIC TRANSFER LENGTH GRANULARITY, else INVALID FIELD IN CDB."""
    lu = make(physical_block_size=4096)
    data = bytes(range(256)) * 16  # 8 blocks
    ok(run(lu, write_atomic16(8, 8), data))
    assert bytes(ok(run(lu, struct.pack(">BBIBHB", 0x28, 0, 8, 0, 8, 0))).data_in) == data
    assert sense(run(lu, write_atomic16(1, 8), data)) == INVALID_FIELD_IN_CDB
    assert sense(run(lu, write_atomic16(8, 3), data[:1536])) == INVALID_FIELD_IN_CDB
    assert sense(run(lu, write_atomic16(8, 8, boundary=8), data)) == INVALID_FIELD_IN_CDB
    ok(run(lu, write_atomic16(0, 0)))  # no blocks: nothing to do


def test_write_atomic16_range_checked_before_alignment():
    """SBC-4 4.5: LBA OUT OF RANGE for a transfer past the last LBA."""
    lu = make(physical_block_size=4096)
    last = lu.num_blocks
    assert sense(run(lu, write_atomic16(last - 8, 16), bytes(16 * 512))) == LBA_OUT_OF_RANGE
    assert sense(run(lu, write_atomic16(1 << 63, 8), bytes(8 * 512))) == LBA_OUT_OF_RANGE


def test_write_atomic16_refuses_protection_and_write_protected_lu():
    lu = make(physical_block_size=4096, read_only=True)
    assert sense(run(lu, write_atomic16(0, 8), bytes(4096))) == WRITE_PROTECTED
    lu = make(physical_block_size=4096)
    assert sense(run(lu, write_atomic16(0, 8, flags=0x20), bytes(4096))) == \
        INVALID_FIELD_IN_CDB


# --- thin provisioning state from the store ------------------------------------------------

def get_lba_status(lba: int, alloc: int = 4096) -> bytes:
    return struct.pack(">BBQIBB", 0x9E, 0x12, lba, alloc, 0, 0)


def descriptors(data: bytes) -> list[tuple[int, int, int]]:
    (length,) = struct.unpack_from(">I", data)
    return [struct.unpack_from(">QIB", data, off) for off in range(8, 4 + length, 16)]


def test_get_lba_status_reads_the_memory_page_map():
    """SBC-4 5.8: mapped (0) and deallocated (1) extents as the store holds them; the
    first descriptor starts at the STARTING LOGICAL BLOCK ADDRESS."""
    lu = make(thin=True)
    ok(run(lu, struct.pack(">BBIBHB", 0x2A, 0, 16, 0, 16, 0), b"x" * 16 * 512))
    descs = descriptors(ok(run(lu, get_lba_status(0))).data_in)
    assert descs[:3] == [(0, 16, 1), (16, 16, 0), (32, lu.num_blocks - 32, 1)]
    descs = descriptors(ok(run(lu, get_lba_status(19))).data_in)
    assert descs[0] == (19, 13, 0)
    unmap = struct.pack(">BBxxxxxHB", 0x42, 0, 24, 0)
    ok(run(lu, unmap, struct.pack(">HH4xQI4x", 22, 16, 16, 8)))
    descs = descriptors(ok(run(lu, get_lba_status(16))).data_in)
    assert descs[:2] == [(16, 8, 1), (24, 8, 0)]


def test_fully_provisioned_lu_is_all_mapped():
    """SBC-4 4.7.2: every LBA of a fully provisioned LU is mapped."""
    lu = make()
    assert descriptors(ok(run(lu, get_lba_status(5))).data_in) == \
        [(5, lu.num_blocks - 5, 0)]


def test_write_same_unmap_deallocates_whatever_the_data():
    """SBC-4 5.50 with LBPRZ=1: WRITE SAME with UNMAP=1 deallocates; the blocks read back
    as zeros even when the Data-Out block was not zeros."""
    lu = make(thin=True)
    ok(run(lu, struct.pack(">BBIBHB", 0x2A, 0, 0, 0, 16, 0), b"\xff" * 16 * 512))
    ok(run(lu, struct.pack(">BBIBHB", 0x41, 0x08, 0, 0, 16, 0), b"\xff" * 512))
    assert not any(ok(run(lu, struct.pack(">BBIBHB", 0x28, 0, 0, 0, 16, 0))).data_in)


@pytest.mark.parametrize("size", [256, 1024])
def test_write_same_data_out_must_be_one_block(size):
    """SBC-4 5.50: the Data-Out is the single block to write: any other length is
    INVALID FIELD IN CDB."""
    lu = make(thin=True)
    assert sense(run(lu, struct.pack(">BBIBHB", 0x41, 0, 0, 0, 1, 0), bytes(size))) == \
        INVALID_FIELD_IN_CDB


def test_unmap_lba_count_limit_is_per_command():
    """SBC-4 5.30 / 6.6.4: the LBAs of all descriptors together may not exceed MAXIMUM
    UNMAP LBA COUNT: INVALID FIELD IN PARAMETER LIST."""
    lu = make(size=2 << 30, bs=512, thin=True)
    half = vpd_sbc.max_unmap_blocks(lu) // 2 + 1
    body = struct.pack(">QI4x", 0, half) + struct.pack(">QI4x", half, half)
    unmap = struct.pack(">BBxxxxxHB", 0x42, 0, 8 + len(body), 0)
    params = struct.pack(">HH4x", 6 + len(body), len(body)) + body
    assert sense(run(lu, unmap, params)) == (0x05, 0x26, 0x00)
    one = struct.pack(">HH4x", 22, 16) + struct.pack(">QI4x", 0, half)
    ok(run(lu, struct.pack(">BBxxxxxHB", 0x42, 0, len(one), 0), one))


def test_fully_provisioned_lu_has_no_unmap_command():
    """SBC-4 6.6.4 / 6.6.6: MAXIMUM UNMAP LBA COUNT 0 and LBPU=0 say UNMAP is not
    implemented; so does REPORT SUPPORTED OPERATION CODES (SPC-4 6.35.3, SUPPORT 001b), and
    the command is INVALID COMMAND OPERATION CODE (SPC-4 4.5.2)."""
    full, thin = make(), make(thin=True)
    unmap = struct.pack(">BBxxxxxHB", 0x42, 0, 24, 0)
    params = struct.pack(">HH4xQI4x", 22, 16, 0, 1)
    assert sense(run(full, unmap, params)) == (0x05, 0x20, 0x00)
    ok(run(thin, unmap, params))
    rsoc = struct.pack(">BBBBHIBB", 0xA3, 0x0C, 0x01, 0x42, 0, 64, 0, 0)
    assert ok(run(full, rsoc)).data_in[1] & 0x07 == 0x01  # not supported
    assert ok(run(thin, rsoc)).data_in[1] & 0x07 == 0x03  # supported, standard
    assert 0x42 not in {c.opcode for c in full.commands}
