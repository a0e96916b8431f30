"""SANITIZE (SBC-4 4.11, 5.30) and READ DEFECT DATA (SBC-4 5.23, 5.24) through
LogicalUnit.execute with the real disk table, over memory and file stores. The only test
double is a store whose writes can be made to fail (a medium error during a sanitize)."""

from __future__ import annotations

import struct

import pytest

from target.backing.base import StoreError
from target.backing.file import FileStore
from target.backing.memory import MemoryStore
from target.scsi import sanitize
from target.scsi.disk import DISK_COMMANDS, make_disk
from target.scsi.lu import LogicalUnit
from target.scsi.sense import (
    BUS_DEVICE_RESET_FUNCTION_OCCURRED,
    POWER_ON_RESET_OR_BUS_DEVICE_RESET_OCCURRED,
)
from target.scsi.task import Nexus, ScsiTask, Status

pytestmark = pytest.mark.unit

NEXUS = Nexus("iqn.2026-11.local.test:i1,i,0x400000000001", "iqn.2026-11.local.test:t,t,0x0001")
OTHER = Nexus("iqn.2026-11.local.test:i2,i,0x400000000002", "iqn.2026-11.local.test:t,t,0x0001")
BS = 512
SIZE = 1 << 20  # 2048 blocks

NOT_READY, MEDIUM_ERROR, ILLEGAL_REQUEST, UNIT_ATTENTION, DATA_PROTECT = 0x2, 0x3, 0x5, 0x6, 0x7
INVALID_FIELD_IN_CDB = (0x24, 0x00)
INVALID_FIELD_IN_PARAMETER_LIST = (0x26, 0x00)
SANITIZE_IN_PROGRESS = (0x04, 0x1B)
SANITIZE_COMMAND_FAILED = (0x31, 0x03)

TUR = bytes(6)
INQUIRY = bytes([0x12, 0, 0, 0, 96, 0])
REPORT_LUNS = bytes([0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0])


def request_sense(alloc: int = 252) -> bytes:
    return bytes([0x03, 0, 0, 0, alloc, 0])


def read10(lba: int, n: int) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, n, 0)


def write10(lba: int, n: int) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0, lba, 0, n, 0)


def cdb(sa: int, length: int = 0, *, immed: bool = False, ause: bool = False) -> bytes:
    """SANITIZE CDB (SBC-4 5.30): IMMED byte 1 bit 7, AUSE bit 5, SA bits 4-0, length 7-8."""
    b1 = (0x80 if immed else 0) | (0x20 if ause else 0) | sa
    return struct.pack(">BB5xHB", 0x48, b1, length, 0)


def overwrite_list(pattern: bytes, count: int = 1, invert: bool = False, test: int = 0,
                   ipl: int | None = None) -> bytes:
    """OVERWRITE parameter list: INVERT, TEST, OVERWRITE COUNT, IPL, pattern."""
    b0 = (0x80 if invert else 0) | test << 5 | count
    return struct.pack(">BBH", b0, 0, len(pattern) if ipl is None else ipl) + pattern


class FailingStore(MemoryStore):
    """A memory store whose writes and discards fail while `broken` (a medium error)."""

    broken = False

    def write(self, offset, data):
        if self.broken:
            raise StoreError("injected write error")
        super().write(offset, data)

    def discard(self, offset, length):
        if self.broken:
            raise StoreError("injected discard error")
        super().discard(offset, length)


@pytest.fixture(params=["memory", "file"])
def store(request, tmp_path):
    if request.param == "memory":
        return MemoryStore(SIZE)
    return FileStore(tmp_path / "disk.img", size=SIZE, create=True)


def lu_over(store, **kw) -> LogicalUnit:
    lu = make_disk(0, store, block_size=BS, **kw)
    lu.ua.clear(NEXUS)  # known nexuses with no unit attention pending
    lu.ua.clear(OTHER)
    return lu


def run(lu: LogicalUnit, c: bytes, data_out: bytes | None = None,
        nexus: Nexus = NEXUS) -> ScsiTask:
    task = ScsiTask(nexus, 0, c, data_out=memoryview(data_out) if data_out is not None
                    else None)
    lu.execute(task)
    return task


def sense(task: ScsiTask) -> tuple[int, int, int]:
    assert task.status == Status.CHECK_CONDITION, task.status
    s = task.sense
    return s[2] & 0x0F, s[12], s[13]


def sks(task: ScsiTask) -> tuple[int, int]:
    """Fixed sense bytes 15-17: (SKSV/C-D/BPV/bit byte, field pointer or progress)."""
    s = task.sense
    return s[15], s[16] << 8 | s[17]


def fill(lu: LogicalUnit, byte: int) -> None:
    data = bytes([byte]) * (lu.num_blocks * BS)
    assert run(lu, struct.pack(">BBQIBB", 0x8A, 0, 0, lu.num_blocks, 0, 0), data).status == 0


def medium(lu: LogicalUnit) -> bytes:
    return bytes(lu.store.read(0, lu.num_blocks * BS))


# --- the table ------------------------------------------------------------------------------

def test_rsoc_lists_every_sanitize_service_action_and_read_defect_data():
    """REPORT SUPPORTED OPERATION CODES reads the same table (SPC-4 6.35)."""
    for sa in (0x01, 0x02, 0x03, 0x1F):
        cmd = DISK_COMMANDS.find(0x48, sa)
        assert cmd is not None and cmd.cdb_length == 10
        assert cmd.usage[1] & 0x1F == sa  # the service action in the CDB usage data
    assert DISK_COMMANDS.find(0x37).cdb_length == 10
    assert DISK_COMMANDS.find(0xB7).cdb_length == 12


@pytest.mark.parametrize("sa", [0x00, 0x04, 0x05, 0x10, 0x1E])
def test_reserved_service_actions_are_invalid_field_in_cdb(store, sa):
    """SBC-4 5.30: a reserved service action is INVALID FIELD IN CDB."""
    lu = lu_over(store)
    t = run(lu, cdb(sa))
    assert sense(t) == (ILLEGAL_REQUEST, *INVALID_FIELD_IN_CDB)
    assert sks(t) == (0xC0 | 0x08 | 4, 1)  # byte 1, bit 4: the SERVICE ACTION field


@pytest.mark.parametrize("sa", [0x01, 0x02, 0x03])
def test_reserved_cdb_fields_are_refused_with_their_pointer(store, sa):
    """ZNR (byte 1 bit 6) is for zoned devices only; bytes 2-6 are reserved."""
    lu = lu_over(store)
    fill(lu, 0x61)
    length = 8 if sa == 0x01 else 0
    data = overwrite_list(b"\x00\x00\x00\x00") if sa == 0x01 else None
    bad = bytearray(cdb(sa, length))
    bad[1] |= 0x40
    t = run(lu, bytes(bad), data)
    assert sense(t) == (ILLEGAL_REQUEST, *INVALID_FIELD_IN_CDB)
    assert sks(t) == (0xC0 | 0x08 | 6, 1)
    for i in range(2, 7):
        bad = bytearray(cdb(sa, length))
        bad[i] = i
        t = run(lu, bytes(bad), data)
        assert sense(t) == (ILLEGAL_REQUEST, *INVALID_FIELD_IN_CDB)
        assert sks(t) == (0xC0, i)
    assert set(medium(lu)) == {0x61}  # nothing was sanitized


@pytest.mark.parametrize("length", [0, 1, 4, BS + 5, BS + 8])
def test_overwrite_parameter_list_length_outside_5_to_block_length_plus_4(store, length):
    """SBC-4 5.30: OVERWRITE needs a PARAMETER LIST LENGTH > 4 and < block length + 5."""
    lu = lu_over(store)
    t = run(lu, cdb(0x01, length), bytes(length))
    assert sense(t) == (ILLEGAL_REQUEST, *INVALID_FIELD_IN_CDB)
    assert sks(t) == (0xC0, 7)


@pytest.mark.parametrize("sa", [0x02, 0x03, 0x1F])
def test_other_service_actions_take_no_parameter_list(store, sa):
    lu = lu_over(store)
    t = run(lu, cdb(sa, 8), bytes(8))
    assert sense(t) == (ILLEGAL_REQUEST, *INVALID_FIELD_IN_CDB)
    assert sks(t) == (0xC0, 7)


# --- OVERWRITE -------------------------------------------------------------------------------

@pytest.mark.parametrize("plen", [BS, BS // 2, 4, 3, 1])
def test_overwrite_fills_every_block_with_the_pattern(store, plen):
    """The pattern repeats to fill each block; each block starts with its first byte."""
    lu = lu_over(store)
    fill(lu, 0x61)
    pattern = bytes((i * 7 + 1) % 251 for i in range(plen))
    t = run(lu, cdb(0x01, 4 + plen), overwrite_list(pattern))
    assert t.status == Status.GOOD
    block = (pattern * (BS // plen + 1))[:BS]
    assert medium(lu) == block * lu.num_blocks


@pytest.mark.parametrize("count,invert", [(1, False), (2, False), (2, True), (3, True),
                                          (31, True)])
def test_overwrite_count_passes_and_invert_end_with_the_pattern(count, invert):
    """OVERWRITE COUNT passes; with INVERT the pattern alternates and the first pass is the
    inversion when the count is even, so the last pass writes the pattern itself."""
    firsts: list[int] = []

    class Recording(MemoryStore):
        def write(self, offset, data):
            if offset == 0:
                firsts.append(bytes(data[:1])[0])
            super().write(offset, data)

    lu = lu_over(Recording(SIZE))
    t = run(lu, cdb(0x01, 5), overwrite_list(b"\x0f", count=count, invert=invert))
    assert t.status == Status.GOOD
    assert len(firsts) == count
    if invert:
        expected = [0x0F if (count - 1 - p) % 2 == 0 else 0xF0 for p in range(count)]
    else:
        expected = [0x0F] * count
    assert firsts == expected
    assert set(medium(lu)) == {0x0F}


@pytest.mark.parametrize("data,field", [
    (overwrite_list(b"\xaa" * 4, count=0), (0, 0x08 | 4)),    # OVERWRITE COUNT 00h reserved
    (overwrite_list(b"\xaa" * 4, test=1), (0, 0x08 | 6)),     # TEST: only 00b
    (overwrite_list(b"\xaa" * 4, ipl=0), (2, 0)),             # IPL 0
    (overwrite_list(b"\xaa" * 4, ipl=3), (2, 0)),             # IPL disagrees with the list
    (overwrite_list(b"\xaa" * BS, ipl=BS + 4), (2, 0)),       # IPL > block length
    (struct.pack(">BBH", 1, 1, 4) + b"\xaa" * 4, (1, 0)),     # reserved byte 1
])
def test_overwrite_parameter_list_errors(store, data, field):
    """SBC-4 5.30 OVERWRITE parameter list: INVALID FIELD IN PARAMETER LIST (C/D=0)."""
    lu = lu_over(store)
    fill(lu, 0x61)
    t = run(lu, cdb(0x01, len(data)), data)
    assert sense(t) == (ILLEGAL_REQUEST, *INVALID_FIELD_IN_PARAMETER_LIST)
    byte, bits = field
    assert sks(t) == (0x80 | bits, byte)
    assert set(medium(lu)) == {0x61}


def test_overwrite_with_less_data_than_the_parameter_list_length(store):
    lu = lu_over(store)
    t = run(lu, cdb(0x01, 8), overwrite_list(b"\xaa")[:3])
    assert sense(t) == (ILLEGAL_REQUEST, 0x1A, 0x00)  # PARAMETER LIST LENGTH ERROR


# --- BLOCK ERASE, CRYPTOGRAPHIC ERASE ---------------------------------------------------------

@pytest.mark.parametrize("sa", [0x02, 0x03])
@pytest.mark.parametrize("thin", [False, True])
def test_erase_leaves_no_old_data_and_reads_complete(store, sa, thin):
    """After block or cryptographic erase the old data is gone and reads complete with GOOD
    status (WABEREQ = WACEREQ = 01b in the Block Device Characteristics VPD page)."""
    lu = lu_over(store, thin=thin)
    fill(lu, 0x61)
    assert run(lu, cdb(sa)).status == Status.GOOD
    t = run(lu, read10(0, lu.num_blocks))
    assert t.status == Status.GOOD
    assert bytes(t.data_in) == bytes(lu.num_blocks * BS)


def test_block_erase_deallocates_every_lba_of_a_thin_file_lu(tmp_path):
    """Block erase on a thin LU: GET LBA STATUS then reports every LBA deallocated."""
    lu = lu_over(FileStore(tmp_path / "d.img", size=SIZE, create=True), thin=True)
    fill(lu, 0x61)
    assert run(lu, cdb(0x02)).status == Status.GOOD
    t = run(lu, struct.pack(">BBQIBB", 0x9E, 0x12, 0, 1024, 0, 0))
    assert t.status == Status.GOOD
    data = bytes(t.data_in)
    descs = [struct.unpack_from(">QIB", data, off) for off in range(8, len(data), 16)]
    assert sum(n for _, n, _ in descs) == lu.num_blocks
    assert all(status == 1 for _, _, status in descs)  # deallocated


def test_block_device_characteristics_reports_wabereq_and_wacereq(store):
    lu = lu_over(store)
    t = run(lu, bytes([0x12, 0x01, 0xB1, 0, 64, 0]))
    assert t.status == Status.GOOD
    b7 = bytes(t.data_in)[7]
    assert (b7 >> 6 & 3, b7 >> 4 & 3) == (0b01, 0b01)


# --- write protection, reservations -----------------------------------------------------------

@pytest.mark.parametrize("sa", [0x01, 0x02, 0x03])
def test_sanitize_of_a_write_protected_lu_is_data_protect(store, sa):
    lu = lu_over(store, read_only=True)
    data = overwrite_list(b"\xaa" * 4) if sa == 0x01 else None
    t = run(lu, cdb(sa, 8 if data else 0), data)
    assert sense(t) == (DATA_PROTECT, 0x27, 0x00)


@pytest.mark.parametrize("sa", [0x01, 0x02, 0x03])
def test_sanitize_conflicts_with_another_nexus_reserve6(store, sa):
    lu = lu_over(store)
    assert run(lu, bytes([0x16, 0, 0, 0, 0, 0]), nexus=OTHER).status == 0
    data = overwrite_list(b"\xaa" * 4) if sa == 0x01 else None
    t = run(lu, cdb(sa, 8 if data else 0), data)
    assert t.status == Status.RESERVATION_CONFLICT


# --- a sanitize in progress (SBC-4 4.11, SPC-4 6.39) -------------------------------------------

def test_commands_during_a_sanitize_get_not_ready_with_progress(store):
    lu = lu_over(store)
    fill(lu, 0x61)
    op = sanitize.Operation(lu.store, lu.num_blocks * BS, ause=False)
    lu.sanitize.start(op)
    assert lu.sanitize.step(SIZE // 4) is False  # a quarter done
    for c in (TUR, read10(0, 1), write10(0, 1), cdb(0x02)):
        t = run(lu, c, bytes(BS))
        assert sense(t) == (NOT_READY, *SANITIZE_IN_PROGRESS)
        assert sks(t) == (0x80, 0x4000)  # SKSV, progress 1/4 of 65536
    for c in (INQUIRY, REPORT_LUNS):
        assert run(lu, c).status == Status.GOOD
    t = run(lu, request_sense())
    assert t.status == Status.GOOD
    s = bytes(t.data_in)
    assert (s[2] & 0x0F, s[12], s[13]) == (NOT_READY, *SANITIZE_IN_PROGRESS)
    assert (s[15], s[16] << 8 | s[17]) == (0x80, 0x4000)
    while not lu.sanitize.step(SIZE // 4):
        pass
    assert run(lu, TUR).status == Status.GOOD
    assert set(medium(lu)) == {0}


def test_a_unit_attention_is_reported_before_the_sanitize_in_progress(store):
    lu = lu_over(store)
    lu.sanitize.start(sanitize.Operation(lu.store, lu.num_blocks * BS, ause=False))
    lu.ua.establish(POWER_ON_RESET_OR_BUS_DEVICE_RESET_OCCURRED, nexus=NEXUS)
    assert sense(run(lu, TUR))[0] == UNIT_ATTENTION
    assert sense(run(lu, TUR)) == (NOT_READY, *SANITIZE_IN_PROGRESS)


def test_a_reset_does_not_stop_a_sanitize(store):
    lu = lu_over(store)
    lu.sanitize.start(sanitize.Operation(lu.store, lu.num_blocks * BS, ause=False))
    lu.reset(BUS_DEVICE_RESET_FUNCTION_OCCURRED)
    lu.nexus_lost(NEXUS)
    run(lu, TUR)  # the unit attention of the new nexus
    assert sense(run(lu, TUR)) == (NOT_READY, *SANITIZE_IN_PROGRESS)


# --- failure mode (SBC-4 4.11) ------------------------------------------------------------

def failing_lu() -> LogicalUnit:
    lu = lu_over(FailingStore(SIZE))
    lu.store.broken = True
    return lu


def test_failed_sanitize_reports_and_keeps_sanitize_command_failed():
    lu = failing_lu()
    t = run(lu, cdb(0x02))
    assert sense(t) == (MEDIUM_ERROR, *SANITIZE_COMMAND_FAILED)
    for c in (TUR, read10(0, 1)):
        assert sense(run(lu, c)) == (MEDIUM_ERROR, *SANITIZE_COMMAND_FAILED)
    assert run(lu, INQUIRY).status == Status.GOOD
    assert run(lu, REPORT_LUNS).status == Status.GOOD
    s = bytes(run(lu, request_sense()).data_in)
    assert (s[2] & 0x0F, s[12], s[13]) == (MEDIUM_ERROR, *SANITIZE_COMMAND_FAILED)


def test_immed_sanitize_returns_good_and_the_failure_comes_after():
    lu = failing_lu()
    assert run(lu, cdb(0x03, immed=True)).status == Status.GOOD
    assert sense(run(lu, TUR)) == (MEDIUM_ERROR, *SANITIZE_COMMAND_FAILED)


def test_restricted_completion_mode_only_a_good_sanitize_exits():
    """AUSE=0 on the failed operation: EXIT FAILURE MODE and AUSE=1 are refused."""
    lu = failing_lu()
    run(lu, cdb(0x02, ause=False))
    t = run(lu, cdb(0x1F))
    assert sense(t) == (ILLEGAL_REQUEST, *INVALID_FIELD_IN_CDB)
    lu.store.broken = False
    t = run(lu, cdb(0x02, ause=True))
    assert sense(t) == (ILLEGAL_REQUEST, *INVALID_FIELD_IN_CDB)
    assert sks(t) == (0xC0 | 0x08 | 5, 1)
    assert sense(run(lu, TUR)) == (MEDIUM_ERROR, *SANITIZE_COMMAND_FAILED)
    assert run(lu, cdb(0x02)).status == Status.GOOD
    assert run(lu, TUR).status == Status.GOOD


def test_unrestricted_completion_mode_exit_failure_mode():
    """AUSE=1 on the failed operation: EXIT FAILURE MODE ends the failure mode."""
    lu = failing_lu()
    run(lu, cdb(0x03, ause=True))
    assert sense(run(lu, TUR)) == (MEDIUM_ERROR, *SANITIZE_COMMAND_FAILED)
    assert run(lu, cdb(0x1F)).status == Status.GOOD
    assert run(lu, TUR).status == Status.GOOD


def test_exit_failure_mode_with_nothing_failed_is_good(store):
    lu = lu_over(store)
    assert run(lu, cdb(0x1F)).status == Status.GOOD


# --- READ DEFECT DATA (SBC-4 5.23, 5.24) --------------------------------------------------

def rdd10(plist: bool, glist: bool, fmt: int, alloc: int) -> bytes:
    return struct.pack(">BBB4xHB", 0x37, 0, (0x10 if plist else 0) | (0x08 if glist else 0)
                       | fmt, alloc, 0)


def rdd12(plist: bool, glist: bool, fmt: int, index: int, alloc: int) -> bytes:
    return struct.pack(">BBIIBB", 0xB7, (0x10 if plist else 0) | (0x08 if glist else 0)
                       | fmt, index, alloc, 0, 0)


@pytest.mark.parametrize("plist,glist", [(False, False), (True, False), (False, True),
                                         (True, True)])
@pytest.mark.parametrize("fmt", [0b000, 0b001, 0b010, 0b011, 0b100, 0b101])
def test_read_defect_data10_empty_list_in_the_requested_format(store, plist, glist, fmt):
    lu = lu_over(store)
    t = run(lu, rdd10(plist, glist, fmt, 32))
    assert t.status == Status.GOOD
    flags = (0x10 if plist else 0) | (0x08 if glist else 0) | fmt
    assert bytes(t.data_in) == bytes([0, flags, 0, 0])  # DEFECT LIST LENGTH 0


@pytest.mark.parametrize("index", [0, 1, 0xFFFFFFFF])
def test_read_defect_data12_header_and_no_descriptor_at_any_index(store, index):
    lu = lu_over(store)
    t = run(lu, rdd12(True, True, 0b101, index, 32))
    assert t.status == Status.GOOD
    data = bytes(t.data_in)
    assert len(data) == 8
    assert data[1] == 0x18 | 0b101
    assert struct.unpack_from(">I", data, 4)[0] == 0


def test_read_defect_data_vendor_format_comes_in_the_default_format(store):
    lu = lu_over(store)
    t = run(lu, rdd10(False, True, 0b110, 32))
    assert bytes(t.data_in)[1] == 0x08 | 0b101


def test_read_defect_data_reserved_format_and_fields(store):
    lu = lu_over(store)
    assert sense(run(lu, rdd10(True, False, 0b111, 32))) == (ILLEGAL_REQUEST,
                                                               *INVALID_FIELD_IN_CDB)
    assert sense(run(lu, rdd12(True, False, 0b111, 0, 32))) == (ILLEGAL_REQUEST,
                                                                  *INVALID_FIELD_IN_CDB)
    bad = bytearray(rdd10(False, False, 0, 32))
    bad[4] = 1
    t = run(lu, bytes(bad))
    assert sense(t) == (ILLEGAL_REQUEST, *INVALID_FIELD_IN_CDB)
    assert sks(t) == (0xC0, 4)


def test_read_defect_data_is_cut_to_the_allocation_length(store):
    lu = lu_over(store)
    assert bytes(run(lu, rdd10(True, True, 0, 2)).data_in) == bytes([0, 0x18])
    assert run(lu, rdd12(True, True, 0, 0, 0)).data_in == b""
