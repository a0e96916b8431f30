"""EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.27) and the Third-party
Copy VPD page (SPC-4 7.8.17), through ScsiDevice/LogicalUnit.execute with the real disk
table over memory stores."""

from __future__ import annotations

import struct

import pytest

from target.backing.memory import MemoryStore
from target.scsi import copyresults, spc, xcopy
from target.scsi.device import ScsiDevice
from target.scsi.disk import DISK_COMMANDS, make_disk
from target.scsi.sense import SenseKey
from target.scsi.task import Identity, ScsiTask, Status
from tests.unit.spc_util import TABLE, make_lu, nexus, ready, run

pytestmark = pytest.mark.unit

TARGET = "iqn.2026-11.local.scsi-target:xcopy"
OTHER = "iqn.2026-11.local.scsi-target:other"
A, B = nexus(1), nexus(2)
MIB = 1 << 20


def disk(lun: int, size: int = MIB, **kw) -> object:
    return make_disk(lun, MemoryStore(size), **kw)


@pytest.fixture
def dev() -> ScsiDevice:
    d = ScsiDevice(TARGET, [disk(0), disk(1)])
    for lun in d.luns:
        ready(d, A, B, lun=lun)
    return d


# --- building parameter lists ------------------------------------------------------------


def header(cscds: bytes, segs: bytes, list_id: int = 1, usage: int = 0, inline: int = 0) -> bytes:
    """The 16-byte parameter list header (SPC-4 6.4, LID1)."""
    return struct.pack(">BBH4xII", list_id, usage << 3, len(cscds), len(segs), inline)


def e4(lu, bs: int | None = None, pdt: int = 0, pad: bool = False, designator=None) -> bytes:
    """Identification descriptor CSCD descriptor (E4h) naming `lu` by its NAA designator."""
    naa = spc.naa_designator(lu) if designator is None else designator
    body = struct.pack(">BBHBBxB", 0xE4, pdt, 0, 0x01, 0x03, len(naa)) + naa
    body += bytes(28 - len(body))
    return body + struct.pack(">B", 0x04 if pad else 0) + (bs or lu.block_size).to_bytes(3, "big")


def b2b(src: int, dst: int, blocks: int, src_lba: int, dst_lba: int, dc: bool = False,
        cat: bool = False) -> bytes:
    """Block device to block device segment descriptor (02h)."""
    return struct.pack(">BBHHH2xHQQ", 0x02, (0x02 if dc else 0) | (0x01 if cat else 0), 0x18,
                       src, dst, blocks, src_lba, dst_lba)


def bo2bo(src: int, dst: int, nbytes: int, src_lba: int, dst_lba: int, src_off: int,
          dst_off: int) -> bytes:
    """Block device with offset to block device with offset segment descriptor (0Ah)."""
    return struct.pack(">BBHHHIQQHH", 0x0A, 0, 0x1C, src, dst, nbytes, src_lba, dst_lba,
                       src_off, dst_off)


def params(cscds: list[bytes], segs: list[bytes], **kw) -> bytes:
    c, s = b"".join(cscds), b"".join(segs)
    return header(c, s, **kw) + c + s


def xcopy_cdb(plen: int) -> bytes:
    return struct.pack(">BB8xIBB", 0x83, 0x00, plen, 0, 0)


def rcr_cdb(sa: int, list_id: int = 1, alloc: int = 1024) -> bytes:
    return struct.pack(">BBB7xIBB", 0x84, sa, list_id, alloc, 0, 0)


def extended_copy(dev, data: bytes, n=A, lun: int = 0, plen: int | None = None) -> ScsiTask:
    return run(dev, n, xcopy_cdb(len(data) if plen is None else plen), data, lun=lun)


def fixed(task: ScsiTask) -> tuple[int, int, int]:
    assert task.status == Status.CHECK_CONDITION, task.status
    s = task.sense
    return s[2] & 0x0F, s[12], s[13]


def field_pointer(task: ScsiTask) -> tuple[int, int]:
    """(SKS byte 15, FIELD POINTER) of fixed sense (SPC-4 4.5.2.4.2, 4.5.2.4.5)."""
    s = task.sense
    return s[15], struct.unpack_from(">H", s, 16)[0]


def fill(lu, lba: int, blocks: int, byte: int) -> bytes:
    data = bytes([byte]) * (blocks * lu.block_size)
    lu.store.write(lba * lu.block_size, data)
    return data


def blocks_of(lu, lba: int, blocks: int) -> bytes:
    return bytes(lu.store.read(lba * lu.block_size, blocks * lu.block_size))


def copy_status(dev, n=A, list_id: int = 1, lun: int = 0) -> tuple[int, int, int, int]:
    task = run(dev, n, rcr_cdb(0x00, list_id), lun=lun)
    assert task.status == Status.GOOD, task.sense.hex()
    avail, state, segments, units, count = struct.unpack(">IBHBI", bytes(task.data_in))
    assert avail == 8
    return state, segments, units, count


# --- the copy -----------------------------------------------------------------------------


def test_copy_within_one_lu(dev):
    """SPC-4 6.4: one E4h CSCD descriptor used as source and destination; 02h copies
    NUMBER OF BLOCKS blocks from the source LBA to the destination LBA."""
    lu = dev.luns[0]
    data = fill(lu, 0, 16, 0xA5)
    task = extended_copy(dev, params([e4(lu)], [b2b(0, 0, 16, 0, 1000)]))
    assert task.status == Status.GOOD, task.sense.hex()
    assert blocks_of(lu, 1000, 16) == data
    # SPC-4 6.27 COPY STATUS: completed without errors, 1 segment, 16 * 512 bytes.
    assert copy_status(dev) == (copyresults.COMPLETED, 1, 0, 16 * 512)


def test_copy_between_lus_of_the_same_device(dev):
    """SPC-4 6.4.5: each identification descriptor resolves to the LU of the same SCSI
    target device whose Device Identification VPD page carries that designator."""
    src, dst = dev.luns[0], dev.luns[1]
    data = fill(src, 8, 4, 0x3C)
    task = extended_copy(dev, params([e4(src), e4(dst)], [b2b(0, 1, 4, 8, 100)]))
    assert task.status == Status.GOOD, task.sense.hex()
    assert blocks_of(dst, 100, 4) == data
    assert blocks_of(src, 100, 4) == bytes(4 * 512)


def test_designator_must_match_code_set_and_type(dev):
    """SPC-4 7.8.6.1: a designator is its CODE SET, DESIGNATOR TYPE and value together; the
    NAA value labelled as an EUI-64 designator names no LU."""
    lu = dev.luns[0]
    desc = bytearray(e4(lu))
    desc[5] = 0x02  # designator type EUI-64
    task = extended_copy(dev, params([bytes(desc)], [b2b(0, 0, 1, 0, 1)]))
    assert fixed(task) == (SenseKey.COPY_ABORTED, 0x08, 0x04)
    desc = bytearray(e4(lu))
    desc[5] = 0x13  # association 01b: target port
    task = extended_copy(dev, params([bytes(desc)], [b2b(0, 0, 1, 0, 1)]))
    assert fixed(task) == (SenseKey.COPY_ABORTED, 0x08, 0x04)


def test_overlapping_copy_is_a_move(dev):
    """A copy inside one LU whose destination overlaps the source above it reads every
    source block before it is overwritten (the result equals a copy through a buffer)."""
    lu = disk(2, size=4 * MIB)
    dev.add(lu)
    ready(dev, A, lun=2)
    big = bytes(range(256)) * (5 * xcopy.CHUNK // 512)
    lu.store.write(0, big)
    blocks = len(big) // 512
    task = extended_copy(dev, params([e4(lu)], [b2b(0, 0, blocks, 0, 1)]), lun=2)
    assert task.status == Status.GOOD, task.sense.hex()
    assert bytes(lu.store.read(512, len(big))) == big
    # And downwards.
    task = extended_copy(dev, params([e4(lu)], [b2b(0, 0, blocks, 1, 0)]), lun=2)
    assert task.status == Status.GOOD, task.sense.hex()
    assert bytes(lu.store.read(0, len(big))) == big


def test_parameter_list_length_zero_does_nothing(dev):
    """SPC-4 6.4: PARAMETER LIST LENGTH 0 is not an error and changes no state."""
    task = run(dev, A, xcopy_cdb(0))
    assert task.status == Status.GOOD
    assert fixed(run(dev, A, rcr_cdb(0x00, 0))) == (SenseKey.ILLEGAL_REQUEST, 0x24, 0x00)


def test_zero_blocks_copies_nothing(dev):
    lu = dev.luns[0]
    assert extended_copy(dev, params([e4(lu)], [b2b(0, 0, 0, 0, 10)])).status == Status.GOOD
    assert copy_status(dev) == (copyresults.COMPLETED, 1, 0, 0)


def test_byte_offset_segment(dev):
    """SPC-4 6.4.6 segment descriptor 0Ah: NUMBER OF BYTES from source LBA + byte offset to
    destination LBA + byte offset; the bytes around the destination range stay."""
    lu = dev.luns[0]
    lu.store.write(0, bytes(range(256)) * 4)
    fill(lu, 20, 2, 0xEE)
    task = extended_copy(dev, params([e4(lu)], [bo2bo(0, 0, 300, 0, 20, 10, 100)]))
    assert task.status == Status.GOOD, task.sense.hex()
    got = blocks_of(lu, 20, 2)
    assert got[:100] == b"\xee" * 100
    assert got[100:400] == (bytes(range(256)) * 4)[10:310]
    assert got[400:] == b"\xee" * (1024 - 400)


def test_write_through_when_wce_is_off(dev):
    """SBC-4 4.15: with WCE=0 the destination's store is flushed before GOOD."""
    lu = dev.luns[0]
    flushed = []
    lu.store.flush = lambda: flushed.append(True)  # type: ignore[method-assign]
    lu.mode.wce = False
    assert extended_copy(dev, params([e4(lu)], [b2b(0, 0, 1, 0, 5)])).status == Status.GOOD
    assert flushed


# --- CSCD resolution: only LUs of the same device --------------------------------------------


def test_lu_of_another_target_is_unreachable(dev):
    """CVE-2020-28374 (LIO): a CSCD descriptor naming an LU of another SCSI target device
    must not resolve. SPC-4 6.4: COPY ABORTED, UNREACHABLE COPY TARGET (08h/04h); nothing
    is written to that LU."""
    other = ScsiDevice(OTHER, [disk(0)])
    foreign = other.luns[0]
    assert spc.naa_designator(foreign) not in {spc.naa_designator(lu)
                                               for lu in dev.luns.values()}
    src = dev.luns[0]
    fill(src, 0, 4, 0x77)
    task = extended_copy(dev, params([e4(src), e4(foreign)], [b2b(0, 1, 4, 0, 0)]))
    assert fixed(task) == (SenseKey.COPY_ABORTED, 0x08, 0x04)
    assert blocks_of(foreign, 0, 4) == bytes(4 * 512)
    # And as a source: its data does not leak into ours.
    fill(foreign, 0, 4, 0x99)
    task = extended_copy(dev, params([e4(foreign), e4(src)], [b2b(0, 1, 4, 0, 50)]))
    assert fixed(task) == (SenseKey.COPY_ABORTED, 0x08, 0x04)
    assert blocks_of(src, 50, 4) == bytes(4 * 512)


def test_unknown_designator_and_missing_descriptor_are_unreachable(dev):
    """SPC-4 6.4: a designator no LU has, or a CSCD descriptor ID with no descriptor:
    COPY ABORTED / UNREACHABLE COPY TARGET with the segment number in COMMAND-SPECIFIC
    INFORMATION and a segment pointer (SPC-4 4.5.2.4.5, SD=0) into the parameter list."""
    lu = dev.luns[0]
    bogus = e4(lu, designator=bytes.fromhex("3fffffffffffffff"))
    task = extended_copy(dev, params([bogus], [b2b(0, 0, 1, 0, 1)]))
    assert fixed(task) == (SenseKey.COPY_ABORTED, 0x08, 0x04)
    assert field_pointer(task) == (0x80, 16 + 4)  # SKSV, SD=0: the designator of CSCD 0
    task = extended_copy(dev, params([e4(lu)], [b2b(0, 1, 1, 0, 1)]))
    assert fixed(task) == (SenseKey.COPY_ABORTED, 0x08, 0x04)
    assert struct.unpack_from(">I", task.sense, 8)[0] == 0  # segment 0
    assert field_pointer(task) == (0x80, 16 + 32 + 6)  # DESTINATION CSCD DESCRIPTOR ID


def test_wrong_device_type_or_block_length(dev):
    """SPC-4 6.4.5: the PERIPHERAL DEVICE TYPE and DISK BLOCK LENGTH describe the LU."""
    lu = dev.luns[0]
    task = extended_copy(dev, params([e4(lu, pdt=0x01)], [b2b(0, 0, 1, 0, 1)]))
    assert fixed(task) == (SenseKey.COPY_ABORTED, 0x0D, 0x03)
    task = extended_copy(dev, params([e4(lu, bs=4096)], [b2b(0, 0, 1, 0, 1)]))
    assert fixed(task) == (SenseKey.COPY_ABORTED, 0x26, 0x02)
    assert field_pointer(task)[1] == 16 + 29


def test_lu_without_device_resolves_only_itself():
    lu = disk(0)
    lu.ua.clear(A)
    data = fill(lu, 0, 1, 0x42)
    task = ScsiTask(A, 0, xcopy_cdb(16 + 32 + 28), data_out=params([e4(lu)],
                                                                   [b2b(0, 0, 1, 0, 9)]))
    lu.execute(task)
    assert task.status == Status.GOOD
    assert blocks_of(lu, 9, 1) == data


# --- errors while processing segments -----------------------------------------------------------


def test_beyond_capacity_aborts_at_that_segment(dev):
    """SPC-4 6.4: segments are processed in order; the one past the end of the destination
    ends the copy in COPY ABORTED (libiscsi ExtendedCopy.ValidSegDescr accepts 00h/00h),
    COMMAND-SPECIFIC INFORMATION = its number, the pointer at its DESTINATION LBA, and the
    segments before it stay copied (COPY STATUS: completed with errors, 1 processed)."""
    lu = dev.luns[0]
    data = fill(lu, 0, 2, 0x5A)
    nb = lu.num_blocks
    segs = [b2b(0, 0, 2, 0, 10), b2b(0, 0, 2, 0, nb - 1)]
    task = extended_copy(dev, params([e4(lu)], segs))
    assert fixed(task) == (SenseKey.COPY_ABORTED, 0x00, 0x00)
    assert struct.unpack_from(">I", task.sense, 8)[0] == 1
    assert field_pointer(task) == (0x80, 16 + 32 + 28 + 20)
    assert blocks_of(lu, 10, 2) == data
    assert copy_status(dev) == (copyresults.FAILED, 1, 0, 2 * 512)
    # The source side is checked the same way.
    task = extended_copy(dev, params([e4(lu)], [b2b(0, 0, 2, nb - 1, 0)]))
    assert fixed(task) == (SenseKey.COPY_ABORTED, 0x00, 0x00)
    assert field_pointer(task)[1] == 16 + 32 + 12


def test_write_protected_destination(dev):
    """SBC-4 4.11 via SPC-4 6.4: a write-protected copy destination is not written."""
    src, dst = dev.luns[0], dev.luns[1]
    fill(src, 0, 1, 0x10)
    dst.read_only = True
    task = extended_copy(dev, params([e4(src), e4(dst)], [b2b(0, 1, 1, 0, 0)]))
    assert fixed(task) == (SenseKey.COPY_ABORTED, 0x27, 0x00)
    assert blocks_of(dst, 0, 1) == bytes(512)
    dst.read_only = False
    dst.mode.swp = True
    task = extended_copy(dev, params([e4(src), e4(dst)], [b2b(0, 1, 1, 0, 0)]))
    assert fixed(task) == (SenseKey.COPY_ABORTED, 0x27, 0x00)
    # A write-protected source is fine.
    task = extended_copy(dev, params([e4(dst), e4(src)], [b2b(0, 1, 1, 5, 5)]))
    assert task.status == Status.GOOD


def test_inexact_segment_and_pad():
    """SPC-4 6.4.6: 02h with DC=1 counts destination blocks; 3 x 512 bytes into 4096-byte
    blocks is an inexact segment: UNEXPECTED INEXACT SEGMENT (26h/0Ah) unless the
    destination descriptor's PAD bit asks for the rest of the block to be zero padded."""
    small, large = disk(0), disk(1, block_size=4096)
    dev = ScsiDevice(TARGET, [small, large])
    ready(dev, A, lun=0)
    data = fill(small, 0, 3, 0x61)
    fill(large, 0, 1, 0xFF)
    task = extended_copy(dev, params([e4(small), e4(large)], [b2b(0, 1, 3, 0, 0)]))
    assert fixed(task) == (SenseKey.COPY_ABORTED, 0x26, 0x0A)
    task = extended_copy(dev, params([e4(small), e4(large, pad=True)], [b2b(0, 1, 3, 0, 0)]))
    assert task.status == Status.GOOD, task.sense.hex()
    assert blocks_of(large, 0, 1) == data + bytes(4096 - 3 * 512)
    # DC=1: NUMBER OF BLOCKS counts destination (4096-byte) blocks: 8 source blocks.
    data = fill(small, 100, 8, 0x62)
    task = extended_copy(dev, params([e4(small), e4(large)], [b2b(0, 1, 1, 100, 2, dc=True)]))
    assert task.status == Status.GOOD, task.sense.hex()
    assert blocks_of(large, 2, 1) == data


def test_reservation_of_the_destination_is_honoured(dev):
    """SPC-4 5.13.1: the copy manager meets each destination's persistent reservation as a
    WRITE from the I_T nexus of the EXTENDED COPY: B's Write Exclusive reservation on LU 1
    keeps A's copy out (RESERVATION CONFLICT, nothing written)."""
    src, dst = dev.luns[0], dev.luns[1]

    def prout(sa: int, type_: int, key: int, sa_key: int) -> None:
        cdb = struct.pack(">BBBxxIB", 0x5F, sa, type_, 24, 0)
        task = run(dev, B, cdb, struct.pack(">QQ8x", key, sa_key), lun=1)
        assert task.status == Status.GOOD, task.sense.hex()

    prout(0x00, 0, 0, 0xB)  # REGISTER
    prout(0x01, 0x1, 0xB, 0)  # RESERVE, Write Exclusive
    fill(src, 0, 1, 0x33)
    task = extended_copy(dev, params([e4(src), e4(dst)], [b2b(0, 1, 1, 0, 0)]))
    assert task.status == Status.RESERVATION_CONFLICT
    assert blocks_of(dst, 0, 1) == bytes(512)
    # Reading LU 1 as a source is allowed under Write Exclusive.
    task = extended_copy(dev, params([e4(dst), e4(src)], [b2b(0, 1, 1, 0, 9)]))
    assert task.status == Status.GOOD, task.sense.hex()


# --- the parameter list: lengths, limits, descriptor types ------------------------------------


def test_truncated_parameter_list(dev):
    """SPC-4 6.4: a PARAMETER LIST LENGTH that truncates the list, or shorter Data-Out, is
    PARAMETER LIST LENGTH ERROR (1Ah/00h) (libiscsi ExtendedCopy.ParamHdr)."""
    lu = dev.luns[0]
    data = params([e4(lu)], [b2b(0, 0, 1, 0, 1)])
    for plen in (1, 15, 16 + 31, len(data) - 1):
        assert fixed(extended_copy(dev, data[:plen])) == (SenseKey.ILLEGAL_REQUEST, 0x1A, 0)
    task = extended_copy(dev, data, plen=len(data) + 10)
    assert fixed(task) == (SenseKey.ILLEGAL_REQUEST, 0x1A, 0x00)


def test_too_many_descriptors(dev):
    """SPC-4 6.4: more CSCD descriptors than MAXIMUM CSCD DESCRIPTOR COUNT: TOO MANY TARGET
    DESCRIPTORS (26h/06h); more segment descriptors than MAXIMUM SEGMENT DESCRIPTOR COUNT:
    TOO MANY SEGMENT DESCRIPTORS (26h/08h); both lists over MAXIMUM DESCRIPTOR LIST LENGTH:
    PARAMETER LIST LENGTH ERROR (checked first; libiscsi ExtendedCopy.DescrLimits)."""
    lu = dev.luns[0]
    n_t, n_s = xcopy.MAX_CSCD_DESCRIPTORS, xcopy.MAX_SEGMENT_DESCRIPTORS
    seg = b2b(0, 0, 1, 0, 1)
    task = extended_copy(dev, params([e4(lu)] * (n_t + 1), [seg]))
    assert fixed(task) == (SenseKey.ILLEGAL_REQUEST, 0x26, 0x06)
    task = extended_copy(dev, params([e4(lu)], [seg] * (n_s + 1)))
    assert fixed(task) == (SenseKey.ILLEGAL_REQUEST, 0x26, 0x08)
    extra = (xcopy.MAX_DESCRIPTOR_LIST_LENGTH - 32 * (n_t + 1)) // 28 + 1
    task = extended_copy(dev, params([e4(lu)] * (n_t + 1), [seg] * extra))
    assert fixed(task) == (SenseKey.ILLEGAL_REQUEST, 0x1A, 0x00)
    # At the limits it works.
    task = extended_copy(dev, params([e4(lu)] * n_t, [seg] * n_s))
    assert task.status == Status.GOOD, task.sense.hex()


def test_limits_fit_the_list_length():
    """The counts can be reached within MAXIMUM DESCRIPTOR LIST LENGTH (E4h is 32 bytes,
    02h is 28), so each TOO MANY error can be told from a list length error."""
    assert 32 * (xcopy.MAX_CSCD_DESCRIPTORS + 1) + 28 <= xcopy.MAX_DESCRIPTOR_LIST_LENGTH
    assert 32 + 28 * (xcopy.MAX_SEGMENT_DESCRIPTORS + 1) <= xcopy.MAX_DESCRIPTOR_LIST_LENGTH


def test_unsupported_descriptor_types(dev):
    """SPC-4 6.4: UNSUPPORTED TARGET DESCRIPTOR TYPE CODE (26h/07h) for a CSCD descriptor
    other than E4h (here E0h, Fibre Channel N_Port_Name), UNSUPPORTED SEGMENT DESCRIPTOR
    TYPE CODE (26h/09h) for a segment other than 02h/0Ah (here 03h stream to stream)."""
    lu = dev.luns[0]
    fc = b"\xe0" + e4(lu)[1:]
    task = extended_copy(dev, params([fc], [b2b(0, 0, 1, 0, 1)]))
    assert fixed(task) == (SenseKey.ILLEGAL_REQUEST, 0x26, 0x07)
    assert field_pointer(task) == (0x80, 16)
    stream = struct.pack(">BBHHH", 0x03, 0, 0x10, 0, 0) + bytes(12)
    task = extended_copy(dev, params([e4(lu)], [stream]))
    assert fixed(task) == (SenseKey.ILLEGAL_REQUEST, 0x26, 0x09)
    assert field_pointer(task) == (0x80, 16 + 32)


def test_bad_descriptor_length_and_designator_length(dev):
    lu = dev.luns[0]
    seg = bytearray(b2b(0, 0, 1, 0, 1))
    seg[3] = 0x14  # DESCRIPTOR LENGTH of 02h is 0018h
    seg = bytes(seg[:0x18])
    assert fixed(extended_copy(dev, params([e4(lu)], [seg]))) == (SenseKey.ILLEGAL_REQUEST,
                                                                  0x26, 0x00)
    desc = bytearray(e4(lu))
    desc[7] = 21  # the DESIGNATOR of E4h has 20 bytes at most
    task = extended_copy(dev, params([bytes(desc)], [b2b(0, 0, 1, 0, 1)]))
    assert fixed(task) == (SenseKey.ILLEGAL_REQUEST, 0x26, 0x00)
    assert field_pointer(task) == (0x80, 16 + 7)


def test_segment_longer_than_maximum_segment_length(dev):
    lu = disk(2, size=64 * MIB)
    dev.add(lu)
    blocks = xcopy.MAX_SEGMENT_LENGTH // 512 + 1
    if blocks > 0xFFFF:  # NUMBER OF BLOCKS is 16 bits: use the byte-count segment instead
        seg = bo2bo(0, 0, xcopy.MAX_SEGMENT_LENGTH + 1, 0, 0, 0, 0)
        field = 16 + 32 + 8
    else:
        seg = b2b(0, 0, blocks, 0, 0)
        field = 16 + 32 + 10
    task = extended_copy(dev, params([e4(lu)], [seg]))
    assert fixed(task) == (SenseKey.ILLEGAL_REQUEST, 0x26, 0x00)
    assert field_pointer(task)[1] == field


def test_inline_data_is_not_supported(dev):
    """MAXIMUM INLINE DATA LENGTH is 0: INLINE DATA LENGTH EXCEEDED (26h/0Bh)."""
    lu = dev.luns[0]
    data = params([e4(lu)], [b2b(0, 0, 1, 0, 1)], inline=4) + bytes(4)
    assert fixed(extended_copy(dev, data)) == (SenseKey.ILLEGAL_REQUEST, 0x26, 0x0B)


# --- LIST IDENTIFIER and the copy status -----------------------------------------------------


def test_list_id_usage(dev):
    """SPC-4 6.4 LIST ID USAGE: 01b is reserved and 11b needs LIST IDENTIFIER 0 (INVALID
    FIELD IN PARAMETER LIST); with 11b nothing is kept, so COPY STATUS knows no list."""
    lu = dev.luns[0]
    seg = [b2b(0, 0, 1, 0, 1)]
    task = extended_copy(dev, params([e4(lu)], seg, usage=0b01))
    assert fixed(task) == (SenseKey.ILLEGAL_REQUEST, 0x26, 0x00)
    assert field_pointer(task) == (0x88 | 4, 1)  # byte 1, bit 4
    task = extended_copy(dev, params([e4(lu)], seg, list_id=7, usage=0b11))
    assert fixed(task) == (SenseKey.ILLEGAL_REQUEST, 0x26, 0x00)
    assert field_pointer(task) == (0x80, 0)
    assert extended_copy(dev, params([e4(lu)], seg, list_id=0, usage=0b11)).status == \
        Status.GOOD
    assert fixed(run(dev, A, rcr_cdb(0x00, 0))) == (SenseKey.ILLEGAL_REQUEST, 0x24, 0x00)
    # 10b: no data held, but the status is kept.
    assert extended_copy(dev, params([e4(lu)], seg, list_id=9, usage=0b10)).status == \
        Status.GOOD
    assert copy_status(dev, list_id=9)[0] == copyresults.COMPLETED
    assert fixed(run(dev, A, rcr_cdb(0x01, 9))) == (SenseKey.ILLEGAL_REQUEST, 0x24, 0x00)


def test_copy_status_is_per_nexus_and_list_id(dev):
    """SPC-4 6.27: RECEIVE COPY RESULTS answers for copies of the same I_T nexus only; a
    LIST IDENTIFIER it has nothing for is INVALID FIELD IN CDB pointing at CDB byte 2."""
    lu = dev.luns[0]
    fill(lu, 0, 4, 1)
    assert extended_copy(dev, params([e4(lu)], [b2b(0, 0, 4, 0, 8)], list_id=5)).status == \
        Status.GOOD
    assert copy_status(dev, A, 5) == (copyresults.COMPLETED, 1, 0, 4 * 512)
    task = run(dev, B, rcr_cdb(0x00, 5))
    assert fixed(task) == (SenseKey.ILLEGAL_REQUEST, 0x24, 0x00)
    assert field_pointer(task) == (0xC0, 2)
    assert fixed(run(dev, A, rcr_cdb(0x00, 6))) == (SenseKey.ILLEGAL_REQUEST, 0x24, 0x00)
    # Kept by the LU that received the EXTENDED COPY.
    assert fixed(run(dev, A, rcr_cdb(0x00, 5), lun=1)) == (SenseKey.ILLEGAL_REQUEST, 0x24, 0)
    # The same list identifier again replaces the old results.
    assert extended_copy(dev, params([e4(lu)], [b2b(0, 0, 1, 0, 8)], list_id=5)).status == \
        Status.GOOD
    assert copy_status(dev, A, 5) == (copyresults.COMPLETED, 1, 0, 512)
    # I_T nexus loss and LU reset hooks discard what was kept.
    lu.copies.nexus_lost(A)
    assert fixed(run(dev, A, rcr_cdb(0x00, 5))) == (SenseKey.ILLEGAL_REQUEST, 0x24, 0x00)


def test_list_id_in_use_is_operation_in_progress(dev):
    """SPC-4 6.4: a LIST IDENTIFIER of a copy still being processed for the same I_T nexus
    is OPERATION IN PROGRESS (00h/16h); here the state is set as a concurrent copy would."""
    lu = dev.luns[0]
    data = params([e4(lu)], [b2b(0, 0, 1, 0, 1)], list_id=3)
    assert extended_copy(dev, data).status == Status.GOOD
    lu.copies.find(A, 3).state = copyresults.IN_PROGRESS
    assert fixed(extended_copy(dev, data)) == (SenseKey.ILLEGAL_REQUEST, 0x00, 0x16)
    assert extended_copy(dev, data, n=B).status == Status.GOOD


def test_transfer_count_units():
    assert xcopy._transfer_count(5) == (0, 5)
    assert xcopy._transfer_count(1 << 32) == (1, 1 << 22)
    assert xcopy._transfer_count(1 << 45) == (2, 1 << 25)


def test_failed_segment_details_and_receive_data(dev):
    """SPC-4 6.27 FAILED SEGMENT DETAILS: the COPY COMMAND STATUS and the sense data of a
    copy that failed (byte 56, 58-59, 60-), discarded once returned whole; AVAILABLE DATA 0
    for a copy without errors. RECEIVE DATA: no data is ever held (AVAILABLE DATA 0)."""
    lu = dev.luns[0]
    assert extended_copy(dev, params([e4(lu)], [b2b(0, 0, 1, 0, 1)], list_id=2)).status == \
        Status.GOOD
    assert bytes(run(dev, A, rcr_cdb(0x04, 2)).data_in) == bytes(4)
    assert bytes(run(dev, A, rcr_cdb(0x01, 2)).data_in) == bytes(4)
    task = extended_copy(dev, params([e4(lu)], [b2b(0, 1, 1, 0, 1)], list_id=2))
    sense = task.sense
    data = bytes(run(dev, A, rcr_cdb(0x04, 2)).data_in)
    avail, status, length = struct.unpack_from(">I52xBxH", data)
    assert (avail, status, length) == (len(data) - 4, Status.CHECK_CONDITION, len(sense))
    assert data[60:] == sense
    assert bytes(run(dev, A, rcr_cdb(0x04, 2)).data_in) == bytes(4)


def test_descriptor_format_sense_carries_the_segment_number(dev):
    """SPC-4 4.5.2.3: with D_SENSE=1 the segment number is a command-specific information
    descriptor (type 01h)."""
    lu = dev.luns[0]
    lu.mode.d_sense = True
    task = extended_copy(dev, params([e4(lu)], [b2b(0, 0, 1, 0, 1), b2b(0, 2, 1, 0, 1)]))
    s = task.sense
    assert (s[0], s[1], s[2], s[3]) == (0x72, SenseKey.COPY_ABORTED, 0x08, 0x04)
    descs = s[8:]
    assert descs[0:2] == b"\x01\x0a" and struct.unpack_from(">Q", descs, 4)[0] == 1


# --- OPERATING PARAMETERS, VPD 8Fh, INQUIRY, RSOC ----------------------------------------------


def test_operating_parameters(dev):
    """SPC-4 6.27 OPERATING PARAMETERS: the limits EXTENDED COPY enforces."""
    data = bytes(run(dev, A, rcr_cdb(0x03, 0)).data_in)
    (avail, snlid, n_t, n_s, list_len, seg_len, inline, held, stream, total, conc, gran,
     igran, hgran, n_codes) = struct.unpack_from(">IB3xHHIIIII2xHBBBB3xB", data)
    assert avail == len(data) - 4 == 40 + n_codes
    assert snlid == 1
    assert (n_t, n_s, list_len, seg_len) == (xcopy.MAX_CSCD_DESCRIPTORS,
                                             xcopy.MAX_SEGMENT_DESCRIPTORS,
                                             xcopy.MAX_DESCRIPTOR_LIST_LENGTH,
                                             xcopy.MAX_SEGMENT_LENGTH)
    assert (inline, held, stream) == (0, 0, 0)
    assert (total, conc) == (1, 1)
    assert gran == 9  # 2^9 = 512-byte blocks
    assert set(data[44:]) == {0x02, 0x0A, 0xE4}


def _tpc_descriptors(page: bytes) -> dict[int, bytes]:
    assert page[1] == 0x8F
    assert struct.unpack_from(">H", page, 2)[0] == len(page) - 4
    out, pos = {}, 4
    while pos < len(page):
        type_, length = struct.unpack_from(">HH", page, pos)
        assert (length + 4) % 4 == 0  # SPC-4 7.8.17.1: multiples of four bytes
        out[type_] = page[pos + 4 : pos + 4 + length]
        pos += 4 + length
    assert pos == len(page)
    return out


def test_third_party_copy_vpd_page(dev):
    """SPC-4 7.8.17: page 8Fh is listed in page 00h and carries the Supported Commands,
    Parameter Data, Supported Descriptors, Supported CSCD Descriptor IDs and General Copy
    Operations descriptors, with the limits OPERATING PARAMETERS reports."""
    pages = bytes(run(dev, A, bytes([0x12, 1, 0x00, 0, 255, 0])).data_in)
    assert 0x8F in pages[4:]
    assert list(pages[4:]) == sorted(pages[4:])
    page = bytes(run(dev, A, bytes([0x12, 1, 0x8F, 0x10, 0, 0])).data_in)
    descs = _tpc_descriptors(page)
    assert set(descs) == {0x0001, 0x0004, 0x0008, 0x000C, 0x8001}
    cmds = descs[0x0001]
    assert cmds[1 : 1 + cmds[0]] == bytes([0x83, 1, 0x00, 0x84, 4, 0x00, 0x01, 0x03, 0x04])
    assert struct.unpack_from(">4xHHII", descs[0x0004]) == (
        xcopy.MAX_CSCD_DESCRIPTORS, xcopy.MAX_SEGMENT_DESCRIPTORS,
        xcopy.MAX_DESCRIPTOR_LIST_LENGTH, 0)
    assert len(descs[0x0004]) == 0x1C
    supported = descs[0x0008]
    assert supported[1 : 1 + supported[0]] == bytes([0x02, 0x0A, 0xE4])
    assert struct.unpack_from(">H", descs[0x000C])[0] == 0
    assert len(descs[0x8001]) == 0x20
    assert struct.unpack_from(">IIIB", descs[0x8001]) == (1, 1, xcopy.MAX_SEGMENT_LENGTH, 9)


def test_inquiry_3pc_bit(dev):
    """SPC-4 6.6.2: 3PC=1 (byte 5 bit 3) when EXTENDED COPY is supported."""
    assert bytes(run(dev, A, bytes([0x12, 0, 0, 0, 96, 0])).data_in)[5] & 0x08


def test_no_copy_manager_no_page_no_bit():
    """An LU whose table has no EXTENDED COPY says so: 3PC=0 and no page 8Fh."""
    lu = make_lu(identity=Identity(serial="S1"))
    assert lu.commands is TABLE
    ready(lu, A)
    assert not bytes(run(lu, A, bytes([0x12, 0, 0, 0, 96, 0])).data_in)[5] & 0x08
    pages = bytes(run(lu, A, bytes([0x12, 1, 0x00, 0, 255, 0])).data_in)
    assert 0x8F not in pages[4:]
    assert fixed(run(lu, A, bytes([0x12, 1, 0x8F, 0, 255, 0]))) == (
        SenseKey.ILLEGAL_REQUEST, 0x24, 0x00)


def test_rsoc_lists_the_commands():
    """SPC-4 6.35: the table entries REPORT SUPPORTED OPERATION CODES reads."""
    xc = DISK_COMMANDS.find(0x83, 0x00)
    assert xc is not None and xc.cdb_length == 16 and xc.direction.name == "OUT"
    for sa in (0x00, 0x01, 0x03, 0x04):
        cmd = DISK_COMMANDS.find(0x84, sa)
        assert cmd is not None and cmd.usage[1] == sa and cmd.cdb_length == 16
    assert DISK_COMMANDS.find(0x84, 0x05) is None  # LID4 is not supported
