"""SBC-4 block commands, as an opcode table (DESIGN.md principle 2).

Rules:
- Each block command's entry declares its block-range layout (`block`, target.scsi.extent);
  its LBA and length are decoded once, on arrival, into task.lba and task.blocks. READ and
  WRITE (the hot path) read them from there; the other handlers unpack the fields they also need
  (flags, group, the lengths of other fields) with precompiled struct.Struct unpacks;
  data goes to and from the store as memoryviews (no copies, DESIGN.md principle 5).
- Every command that addresses blocks checks LBA + count against the capacity first:
  LOGICAL BLOCK ADDRESS OUT OF RANGE (SBC-4 4.5), and counts against the block limits
  VPD page (MAXIMUM TRANSFER LENGTH, MAXIMUM WRITE SAME LENGTH): INVALID FIELD IN CDB.
- No protection information is supported (SBC-4 4.22): a nonzero RDPROTECT, WRPROTECT,
  VRPROTECT or ORPROTECT is INVALID FIELD IN CDB pointing at byte 1 bit 7.
- Writes on a write-protected LU (read_only, or SWP of the control mode page) end in DATA
  PROTECT / WRITE PROTECTED (SBC-4 4.11); FUA, and every write while WCE=0 (caching mode
  page), are made durable with store.flush() before GOOD (SBC-4 4.15).
- task.data_out is what the initiator sent (iSCSI EDTL); a write uses at most the whole
  blocks it has and records in task.out_length what the CDB asked for, so the transport
  reports the residual (RFC 7143 11.4.5.1; libiscsi's *Residuals tests).
- COMPARE AND WRITE takes exactly 2 x NUMBER OF LOGICAL BLOCKS of Data-Out (verify
  instance, then write instance); any other length is INVALID FIELD IN CDB.
- VERIFY/COMPARE AND WRITE miscompares report MISCOMPARE / MISCOMPARE DURING VERIFY
  OPERATION with the offset of the first differing byte in INFORMATION (SBC-4 5.3, 5.34).
- Store failures (StoreError) become MEDIUM ERROR: UNRECOVERED READ ERROR or WRITE ERROR.
- Medium access goes through lu.io(): every handler checks first, then hands one function
  of (task, store, ...) that does the store calls (and the compare of VERIFY and COMPARE
  AND WRITE); the server may run it on a worker thread (lu.py), so it touches nothing but
  the task and the store. The task set keeps overlapping tasks apart meanwhile (QAM=0,
  and COMPARE AND WRITE / WRITE ATOMIC always: taskset.py).
- Thin provisioning (lu.thin): UNMAP and WRITE SAME with UNMAP deallocate through
  store.discard(); GET LBA STATUS reports store.extents(). A fully provisioned LU has no
  UNMAP command (its table lacks it: `requires`) and refuses WRITE SAME's UNMAP bit
  (INVALID FIELD IN CDB), consistent with its provisioning VPD page.
"""

from __future__ import annotations

import struct

from target.backing.base import StoreError
from target.scsi import extent, vpd_sbc
from target.scsi.commands import Access, CommandSet
from target.scsi.sense import (
    MEDIUM_REMOVAL_PREVENTED,
    MISCOMPARE_DURING_VERIFY,
    PARAMETER_LIST_LENGTH_ERROR,
    UNRECOVERED_READ_ERROR,
    WRITE_ERROR,
    CheckCondition,
    SenseKey,
    invalid_field_in_cdb,
    invalid_field_in_parameter_list,
    lba_out_of_range,
)
from target.scsi.task import Direction, Status

COMMANDS = CommandSet("sbc")

# The SBC-4 VPD pages (SBC-4 6.6), built in vpd_sbc.py from what this module enforces.
COMMANDS.vpd(0xB0, "Block Limits")(lambda lu, nexus: vpd_sbc.block_limits(lu))
COMMANDS.vpd(0xB1, "Block Device Characteristics")(
    lambda lu, nexus: vpd_sbc.block_device_characteristics(lu))
COMMANDS.vpd(0xB2, "Logical Block Provisioning")(
    lambda lu, nexus: vpd_sbc.logical_block_provisioning(lu))

_RW10 = struct.Struct(">xBIxHx")  # flags, LBA, (group), transfer length
_RW12 = struct.Struct(">xBIIxx")
_RW16 = struct.Struct(">xBQIxx")
_WS10 = struct.Struct(">xBIxHx")
_CAW = struct.Struct(">xBQxxxBxx")
_RC10 = struct.Struct(">II")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_LBA_STATUS = struct.Struct(">QIB3x")

CONTROL = 0x04  # NACA is examined (and refused) by the LU


def _usage(*b: int) -> list[int]:
    return list(b)


# --- common checks ---------------------------------------------------------------------

# Byte offset of the TRANSFER LENGTH field by CDB size (SBC-4 5.13-5.16, 5.40-5.43).
_LENGTH_FIELD = {6: 4, 10: 7, 12: 6, 16: 10}
# CDB size by the group code, the operation code's top three bits (SPC-4 4.2.5.1, table 2).
_GROUP_SIZE = {0: 6, 1: 10, 2: 10, 4: 16, 5: 12}


def _too_long(task) -> CheckCondition:
    """A transfer over MAXIMUM TRANSFER LENGTH (block limits VPD): INVALID FIELD IN CDB
    pointing at the TRANSFER LENGTH field."""
    return transfer_too_long(task.cdb)


def transfer_too_long(cdb: bytes) -> CheckCondition:
    """The same for a CDB alone: what the iSCSI transport answers a write whose Expected
    Data Transfer Length is over MAXIMUM TRANSFER LENGTH, before it holds any of its data
    (target.iscsi.connection). The field pointer is the TRANSFER LENGTH field of a CDB of
    the size its operation code's group gives (SPC-4 4.2.5.1: the transport may carry more
    bytes, iSCSI's CDB field is always 16; byte 0 when the group has no fixed size)."""
    size = _GROUP_SIZE.get(cdb[0] >> 5, len(cdb)) if cdb else 0
    return invalid_field_in_cdb(_LENGTH_FIELD.get(size, 0))


def _check_range(lu, lba: int, count: int) -> None:
    if lba + count > lu.num_blocks:
        raise lba_out_of_range()


def _no_protection(flags: int) -> None:
    if flags & 0xE0:
        raise invalid_field_in_cdb(1, bit=7)


def _read_error(lba: int) -> CheckCondition:
    return CheckCondition(SenseKey.MEDIUM_ERROR, UNRECOVERED_READ_ERROR, info=lba)


def _write_error(lba: int) -> CheckCondition:
    return CheckCondition(SenseKey.MEDIUM_ERROR, WRITE_ERROR, info=lba)


def _read_io(task, store, offset: int, length: int, lba: int) -> None:
    try:
        task.data_in = store.read(offset, length)
    except StoreError:
        raise _read_error(lba) from None


def _write_io(task, store, offset: int, data, flush: bool, lba: int) -> None:
    try:
        store.write(offset, data)
        if flush:
            store.flush()
    except StoreError:
        raise _write_error(lba) from None


def _flush_io(task, store, lba: int) -> None:
    try:
        store.flush()
    except StoreError:
        raise _write_error(lba) from None


# _read and _write test the range in bytes, (lba + count) * bs > store.size, the same as
# lba + count > lu.num_blocks (store.size // bs) for integers: x * b > s exactly when
# x > s // b, b > 0 (x >= s // b + 1 gives x * b >= (s // b + 1) * b > s, and x <= s // b
# gives x * b <= s). Every READ and WRITE is spared the property's call.
def _read(lu, task, lba: int, count: int) -> None:
    bs = lu.block_size
    if (lba + count) * bs > lu.store.size:  # lba + count > lu.num_blocks
        raise lba_out_of_range()
    if count > lu.max_transfer_blocks:
        raise _too_long(task)
    if lu.inline_io and not task.medium_delay:  # lu.io()'s inline case, on the hot path
        try:
            task.data_in = lu.store.read(lba * bs, count * bs)
        except StoreError:
            raise _read_error(lba) from None
        return
    lu.io(task, _read_io, lu.store, lba * bs, count * bs, lba)


def _write(lu, task, lba: int, count: int, fua: bool) -> None:
    lu.check_writable()
    bs = lu.block_size
    if (lba + count) * bs > lu.store.size:  # lba + count > lu.num_blocks
        raise lba_out_of_range()
    if count > lu.max_transfer_blocks:
        raise _too_long(task)
    need = count * bs
    task.out_length = need
    data = task.data_out
    have = len(data) if data is not None else 0
    use = need if have >= need else have - have % bs
    if not use:
        return
    if lu.inline_io and not task.medium_delay:  # lu.io()'s inline case, on the hot path
        store = lu.store
        try:
            store.write(lba * bs, data[:use] if use != have else data)
            if fua or not lu.mode.wce:
                store.flush()
        except StoreError:
            raise _write_error(lba) from None
        return
    lu.io(task, _write_io, lu.store, lba * bs, data[:use] if use != have else data,
          bool(fua or not lu.mode.wce), lba)


# --- READ ------------------------------------------------------------------------------

@COMMANDS.command(0x08, "READ(6)", _usage(0x08, 0x1F, 0xFF, 0xFF, 0xFF, CONTROL), Direction.IN,
                  access=Access.READ, block=extent.READ_6)
def read6(lu, task) -> None:
    lu.check_medium()
    _read(lu, task, task.lba, task.blocks)  # 0 means 256 blocks (SBC-4 5.13): extent.py


@COMMANDS.command(0x28, "READ(10)", _usage(0x28, 0xFA, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF,
                                           CONTROL), Direction.IN, access=Access.READ,
                  block=extent.READ_10)
def read10(lu, task) -> None:
    if task.cdb[1] & 0xE0:
        raise invalid_field_in_cdb(1, bit=7)
    lu.check_medium()
    _read(lu, task, task.lba, task.blocks)


@COMMANDS.command(0xA8, "READ(12)", _usage(0xA8, 0xFA, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                                           0xFF, 0x1F, CONTROL), Direction.IN, access=Access.READ,
                  block=extent.READ_12)
def read12(lu, task) -> None:
    _no_protection(task.cdb[1])
    lu.check_medium()
    _read(lu, task, task.lba, task.blocks)


@COMMANDS.command(0x88, "READ(16)", _usage(0x88, 0xFA, *[0xFF] * 12, 0x1F, CONTROL), Direction.IN,
                  access=Access.READ, block=extent.READ_16)
def read16(lu, task) -> None:
    _no_protection(task.cdb[1])
    lu.check_medium()
    _read(lu, task, task.lba, task.blocks)


# --- WRITE -----------------------------------------------------------------------------

@COMMANDS.command(0x0A, "WRITE(6)", _usage(0x0A, 0x1F, 0xFF, 0xFF, 0xFF, CONTROL), Direction.OUT,
                  access=Access.WRITE, block=extent.WRITE_6)
def write6(lu, task) -> None:
    lu.check_medium()
    _write(lu, task, task.lba, task.blocks, False)  # 0 means 256 blocks: extent.py


@COMMANDS.command(0x2A, "WRITE(10)", _usage(0x2A, 0xFA, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF,
                                            CONTROL), Direction.OUT, access=Access.WRITE,
                  block=extent.WRITE_10)
def write10(lu, task) -> None:
    flags = task.cdb[1]
    if flags & 0xE0:
        raise invalid_field_in_cdb(1, bit=7)
    lu.check_medium()
    _write(lu, task, task.lba, task.blocks, flags & 0x08)


@COMMANDS.command(0xAA, "WRITE(12)", _usage(0xAA, 0xFA, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                                            0xFF, 0x1F, CONTROL), Direction.OUT,
                  access=Access.WRITE, block=extent.WRITE_12)
def write12(lu, task) -> None:
    flags = task.cdb[1]
    _no_protection(flags)
    lu.check_medium()
    _write(lu, task, task.lba, task.blocks, flags & 0x08)


@COMMANDS.command(0x8A, "WRITE(16)", _usage(0x8A, 0xFA, *[0xFF] * 12, 0x1F, CONTROL),
                  Direction.OUT, access=Access.WRITE, block=extent.WRITE_16)
def write16(lu, task) -> None:
    flags = task.cdb[1]
    _no_protection(flags)
    lu.check_medium()
    _write(lu, task, task.lba, task.blocks, flags & 0x08)


_WA16 = struct.Struct(">xBQHHxx")  # flags, LBA, ATOMIC BOUNDARY, TRANSFER LENGTH


@COMMANDS.command(0x9C, "WRITE ATOMIC(16)", _usage(0x9C, 0xF8, *[0xFF] * 8, 0xFF, 0xFF, 0xFF, 0xFF,
                                                   0x3F, CONTROL), Direction.OUT,
                  access=Access.WRITE, block=extent.WRITE_ATOMIC_16)
def write_atomic16(lu, task) -> None:
    """SBC-4 5.48 / 4.29: all the blocks are written or none. The command runs as one step
    of the LU (nothing else on it interleaves) and the store takes it as one write. The
    block limits VPD page sets the rules: TRANSFER LENGTH at most MAXIMUM ATOMIC TRANSFER
    LENGTH and a multiple of ATOMIC TRANSFER LENGTH GRANULARITY, the LBA a multiple of
    ATOMIC ALIGNMENT (all one physical block here), ATOMIC BOUNDARY zero (no atomic
    boundaries: MAXIMUM ATOMIC BOUNDARY SIZE 0); violations are INVALID FIELD IN CDB,
    after the LBA range check."""
    flags, lba, boundary, count = _WA16.unpack_from(task.cdb)
    _no_protection(flags)
    lu.check_medium()
    lu.check_writable()
    _check_range(lu, lba, count)
    if boundary:
        raise invalid_field_in_cdb(10)
    if count > vpd_sbc.max_atomic_blocks(lu) or count % vpd_sbc.atomic_granularity(lu):
        raise invalid_field_in_cdb(12)
    if lba % vpd_sbc.atomic_alignment(lu):
        raise invalid_field_in_cdb(2)
    _write(lu, task, lba, count, flags & 0x08)


# --- VERIFY, WRITE AND VERIFY, ORWRITE ---------------------------------------------------

def _first_difference(a: bytes, b: bytes) -> int:
    return next(i for i in range(len(a)) if a[i] != b[i])


def _compare_io(task, store, offset: int, expected: bytes, lba: int) -> None:
    """The medium against `expected`: MISCOMPARE with the offset of the first difference."""
    try:
        medium = bytes(store.read(offset, len(expected)))
    except StoreError:
        raise _read_error(lba) from None
    if medium != expected:
        raise CheckCondition(SenseKey.MISCOMPARE, MISCOMPARE_DURING_VERIFY,
                             info=_first_difference(medium, expected))


def _compare(lu, task, lba: int, count: int, bytchk: int) -> None:
    """Compare the Data-Out buffer with the medium (SBC-4 5.33, BYTCHK 01b and 11b)."""
    bs = lu.block_size
    data = bytes(task.data_out or b"")
    want = count * bs if bytchk == 1 else bs
    task.out_length = want
    if len(data) < want:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, PARAMETER_LIST_LENGTH_ERROR)
    expected = data[:want] if bytchk == 1 else data[:bs] * count
    lu.io(task, _compare_io, lu.store, lba * bs, expected, lba)


def _verify(lu, task, flags: int, lba: int, count: int) -> None:
    _no_protection(flags)
    bytchk = (flags >> 1) & 0x03
    if bytchk == 2:
        raise invalid_field_in_cdb(1, bit=2)
    lu.check_medium()
    _check_range(lu, lba, count)
    if count > lu.max_transfer_blocks:
        raise _too_long(task)
    if bytchk and count:
        _compare(lu, task, lba, count, bytchk)
    else:
        task.out_length = 0


@COMMANDS.command(0x2F, "VERIFY(10)", _usage(0x2F, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF,
                                             CONTROL), Direction.OUT, access=Access.READ,
                  block=extent.VERIFY_10)
def verify10(lu, task) -> None:
    flags, lba, count = _RW10.unpack_from(task.cdb)
    _verify(lu, task, flags, lba, count)


@COMMANDS.command(0xAF, "VERIFY(12)", _usage(0xAF, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                                             0xFF, 0x1F, CONTROL), Direction.OUT,
                  access=Access.READ, block=extent.VERIFY_12)
def verify12(lu, task) -> None:
    flags, lba, count = _RW12.unpack_from(task.cdb)
    _verify(lu, task, flags, lba, count)


@COMMANDS.command(0x8F, "VERIFY(16)", _usage(0x8F, 0xF6, *[0xFF] * 12, 0x1F, CONTROL),
                  Direction.OUT, access=Access.READ, block=extent.VERIFY_16)
def verify16(lu, task) -> None:
    flags, lba, count = _RW16.unpack_from(task.cdb)
    _verify(lu, task, flags, lba, count)


def _write_and_verify(lu, task, flags: int, lba: int, count: int) -> None:
    """SBC-4 5.36: write, then verify; BYTCHK 00b/01b (a write that landed compares equal)."""
    _no_protection(flags)
    if flags & 0x04:  # BYTCHK 1xb is reserved
        raise invalid_field_in_cdb(1, bit=2)
    lu.check_medium()
    _write(lu, task, lba, count, True)


@COMMANDS.command(0x2E, "WRITE AND VERIFY(10)", _usage(0x2E, 0xF2, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F,
                                                       0xFF, 0xFF, CONTROL), Direction.OUT,
                  access=Access.WRITE, block=extent.WRITE_VERIFY_10)
def write_and_verify10(lu, task) -> None:
    flags, lba, count = _RW10.unpack_from(task.cdb)
    _write_and_verify(lu, task, flags, lba, count)


@COMMANDS.command(0xAE, "WRITE AND VERIFY(12)", _usage(0xAE, 0xF2, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                                                       0xFF, 0xFF, 0xFF, 0x1F, CONTROL),
                  Direction.OUT, access=Access.WRITE, block=extent.WRITE_VERIFY_12)
def write_and_verify12(lu, task) -> None:
    flags, lba, count = _RW12.unpack_from(task.cdb)
    _write_and_verify(lu, task, flags, lba, count)


@COMMANDS.command(0x8E, "WRITE AND VERIFY(16)", _usage(0x8E, 0xF2, *[0xFF] * 12, 0x1F, CONTROL),
                  Direction.OUT, access=Access.WRITE, block=extent.WRITE_VERIFY_16)
def write_and_verify16(lu, task) -> None:
    flags, lba, count = _RW16.unpack_from(task.cdb)
    _write_and_verify(lu, task, flags, lba, count)


@COMMANDS.command(0x8B, "ORWRITE(16)", _usage(0x8B, 0xF8, *[0xFF] * 12, 0x1F, CONTROL),
                  Direction.OUT, access=Access.WRITE, block=extent.WRITE_16)
def orwrite16(lu, task) -> None:
    """SBC-4 5.9: OR the Data-Out into the medium (no XDREAD/XPWRITE mode)."""
    flags, lba, count = _RW16.unpack_from(task.cdb)
    _no_protection(flags)
    lu.check_medium()
    lu.check_writable()
    _check_range(lu, lba, count)
    if count > lu.max_transfer_blocks:
        raise _too_long(task)
    bs = lu.block_size
    n = count * bs
    task.out_length = n
    data = bytes(task.data_out or b"")
    n = min(n, len(data) - len(data) % bs)
    if n:
        lu.io(task, _orwrite_io, lu.store, lba * bs, data[:n],
              bool(flags & 0x08 or not lu.mode.wce), lba)


def _orwrite_io(task, store, offset: int, data: bytes, flush: bool, lba: int) -> None:
    n = len(data)
    try:
        old = int.from_bytes(store.read(offset, n), "big")
    except StoreError:
        raise _read_error(lba) from None
    _write_io(task, store, offset, (old | int.from_bytes(data, "big")).to_bytes(n, "big"),
              flush, lba)


# --- cache, prefetch ----------------------------------------------------------------------

def _sync(lu, task, lba: int, count: int) -> None:
    lu.check_medium()
    _check_range(lu, lba, count)
    lu.io(task, _flush_io, lu.store, lba)


@COMMANDS.command(0x35, "SYNCHRONIZE CACHE(10)", _usage(0x35, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F,
                                                        0xFF, 0xFF, CONTROL),
                  access=Access.WRITE, block=extent.SYNC_10)
def synchronize_cache10(lu, task) -> None:
    _, lba, count = _RW10.unpack_from(task.cdb)
    _sync(lu, task, lba, count)


@COMMANDS.command(0x91, "SYNCHRONIZE CACHE(16)", _usage(0x91, 0x02, *[0xFF] * 12, 0x1F, CONTROL),
                  access=Access.WRITE, block=extent.SYNC_16)
def synchronize_cache16(lu, task) -> None:
    _, lba, count = _RW16.unpack_from(task.cdb)
    _sync(lu, task, lba, count)


def _prefetch(lu, task, lba: int, count: int) -> None:
    """SBC-4 5.11/5.12: everything fits in the cache: CONDITION MET."""
    lu.check_medium()
    _check_range(lu, lba, count)
    task.status = Status.CONDITION_MET


@COMMANDS.command(0x34, "PRE-FETCH(10)", _usage(0x34, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF,
                                                0xFF, CONTROL), access=Access.READ,
                  block=extent.PREFETCH_10)
def prefetch10(lu, task) -> None:
    _, lba, count = _RW10.unpack_from(task.cdb)
    _prefetch(lu, task, lba, count)


@COMMANDS.command(0x90, "PRE-FETCH(16)", _usage(0x90, 0x02, *[0xFF] * 12, 0x1F, CONTROL),
                  access=Access.READ, block=extent.PREFETCH_16)
def prefetch16(lu, task) -> None:
    _, lba, count = _RW16.unpack_from(task.cdb)
    _prefetch(lu, task, lba, count)


# --- WRITE SAME, UNMAP, GET LBA STATUS ------------------------------------------------------

def _write_same(lu, task, flags: int, lba: int, count: int, ndob: bool) -> None:
    """SBC-4 5.50/5.51. With UNMAP=1 on a thin LU the blocks are deallocated whatever the
    Data-Out holds: they then read as zeros (LBPRZ=1), which is what a deallocated block
    returns (SBC-4 4.7.4.5); a write-protected or absent medium is reported first."""
    lu.check_medium()
    lu.check_writable()
    _no_protection(flags)
    unmap = bool(flags & 0x08)
    anchor = bool(flags & 0x10)
    if anchor or (unmap and not lu.thin):
        # ANCHOR is not supported (ANC_SUP=0); UNMAP needs thin provisioning (LBPWS).
        raise invalid_field_in_cdb(1, bit=4 if anchor else 3)
    if flags & 0x06:  # PBDATA / LBDATA are not supported
        raise invalid_field_in_cdb(1, bit=2 if flags & 0x04 else 1)
    bs = lu.block_size
    if count == 0:  # WSNZ=0: to the end of the medium
        count = lu.num_blocks - lba if lba < lu.num_blocks else 0
        if lba >= lu.num_blocks:
            raise lba_out_of_range()
    _check_range(lu, lba, count)
    if count > vpd_sbc.max_write_same_blocks(lu):
        raise invalid_field_in_cdb(7 if len(task.cdb) == 10 else 10)
    if ndob:
        block = bytes(bs)
        task.out_length = 0
    else:
        task.out_length = bs
        data = task.data_out
        if data is None or len(data) != bs:
            # The Data-Out is the one block to repeat: a shorter or longer buffer cannot
            # be what the command describes.
            raise invalid_field_in_cdb(7 if len(task.cdb) == 10 else 10)
        block = bytes(data)
    if unmap:
        if count:
            lu.io(task, _discard_io, lu.store, [(lba * bs, count * bs)], lba)
        return
    if count:
        lu.io(task, _write_same_io, lu.store, block, lba, count, not lu.mode.wce)


def _write_same_io(task, store, block: bytes, lba: int, count: int, flush: bool) -> None:
    """The block repeated over [lba, lba + count), a MiB of pattern per store.write()."""
    bs = len(block)
    chunk_blocks = max(1, (1 << 20) // bs)
    view = memoryview(block * min(count, chunk_blocks))
    done = 0
    try:
        while done < count:
            n = min(chunk_blocks, count - done)
            store.write((lba + done) * bs, view[:n * bs])
            done += n
        if flush:
            store.flush()
    except StoreError:
        raise _write_error(lba + done) from None


def _discard_io(task, store, ranges: list[tuple[int, int]], lba: int) -> None:
    try:
        for offset, length in ranges:
            store.discard(offset, length)
    except StoreError:
        raise _write_error(lba) from None


@COMMANDS.command(0x41, "WRITE SAME(10)", _usage(0x41, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF,
                                                 0xFF, CONTROL), Direction.OUT,
                  access=Access.WRITE, block=extent.WRITE_SAME_10)
def write_same10(lu, task) -> None:
    flags, lba, count = _WS10.unpack_from(task.cdb)
    _write_same(lu, task, flags, lba, count, False)


@COMMANDS.command(0x93, "WRITE SAME(16)", _usage(0x93, 0xF9, *[0xFF] * 12, 0x1F, CONTROL),
                  Direction.OUT, access=Access.WRITE, block=extent.WRITE_SAME_16)
def write_same16(lu, task) -> None:
    flags, lba, count = _RW16.unpack_from(task.cdb)
    _write_same(lu, task, flags & 0xFE, lba, count, bool(flags & 0x01))


@COMMANDS.command(0x42, "UNMAP", _usage(0x42, 0x01, 0, 0, 0, 0, 0x1F, 0xFF, 0xFF, CONTROL),
                  Direction.OUT, access=Access.WRITE, requires=frozenset({"thin"}))
def unmap(lu, task) -> None:
    """SBC-4 5.30: deallocate the ranges of the parameter list (thin LUs only)."""
    cdb = task.cdb
    lu.check_medium()
    lu.check_writable()
    if cdb[1] & 0x01:  # ANCHOR
        raise invalid_field_in_cdb(1, bit=0)
    length = cdb[7] << 8 | cdb[8]
    data = bytes(task.data_out or b"")[:length]
    task.out_length = length
    if length == 0:
        return
    if length < 8 or len(data) < 8:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, PARAMETER_LIST_LENGTH_ERROR)
    desc_len = data[2] << 8 | data[3]
    if desc_len % 16 or 8 + desc_len > len(data):
        raise invalid_field_in_parameter_list(2)
    ranges = []
    limit = vpd_sbc.MAX_UNMAP_DESCRIPTORS
    if desc_len // 16 > limit:
        raise invalid_field_in_parameter_list(2)
    total = 0
    for off in range(8, 8 + desc_len, 16):
        lba = _U64.unpack_from(data, off)[0]
        count = _U32.unpack_from(data, off + 8)[0]
        if lba + count > lu.num_blocks:
            raise lba_out_of_range()
        total += count
        if total > vpd_sbc.max_unmap_blocks(lu):  # MAXIMUM UNMAP LBA COUNT, all descriptors
            raise invalid_field_in_parameter_list(off + 8)
        ranges.append((lba, count))
    bs = lu.block_size
    spans = [(lba * bs, count * bs) for lba, count in ranges if count]
    if spans:
        lu.io(task, _discard_io, lu.store, spans, spans[0][0] // bs)


@COMMANDS.command(0x9E, "GET LBA STATUS", _usage(0x9E, 0x12, *[0xFF] * 12, 0, CONTROL),
                  Direction.IN, service_action=0x12, access=Access.READ)
def get_lba_status(lu, task) -> None:
    """SBC-4 5.8: provisioning status of the LBAs from STARTING LBA on."""
    cdb = task.cdb
    lba = _U64.unpack_from(cdb, 2)[0]
    alloc = _U32.unpack_from(cdb, 10)[0]
    lu.check_medium()
    if lba >= lu.num_blocks:
        raise lba_out_of_range()
    if alloc == 0:
        task.data_in = b""
        return
    bs = lu.block_size
    span = min(lu.num_blocks - lba, 0xFFFFFFFF)
    if lu.thin:
        lu.io(task, _lba_status_io, lu.store, bs, lba, span, alloc)
    else:  # a fully provisioned LU has every LBA mapped (SBC-4 4.7.2)
        _lba_status(task, [(lba * bs, span * bs, True)], bs, alloc)


def _lba_status_io(task, store, bs: int, lba: int, span: int, alloc: int) -> None:
    try:
        runs = store.extents(lba * bs, span * bs)
    except StoreError:
        raise _read_error(lba) from None
    _lba_status(task, runs, bs, alloc)


def _lba_status(task, runs, bs: int, alloc: int) -> None:
    """The LBA status descriptors of (offset, length, mapped) runs, as many as fit."""
    room = max(1, (min(alloc, 8 + 16 * 64) - 8) // 16)
    descs = []
    for offset, length, mapped in runs:
        first = offset // bs
        n = -(-(offset + length) // bs) - first
        descs.append(_LBA_STATUS.pack(first, n, 0 if mapped else 1))
        if len(descs) == room:
            break
    body = b"".join(descs)
    task.data_in = (_U32.pack(len(body) + 4) + bytes(4) + body)[:alloc]


# --- capacity --------------------------------------------------------------------------------

@COMMANDS.command(0x25, "READ CAPACITY(10)", _usage(0x25, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x01,
                                                    CONTROL), Direction.IN,
                  access=Access.ALLOWED)
def read_capacity10(lu, task) -> None:
    """SBC-4 5.15: the last LBA (FFFFFFFFh when it does not fit) and the block length."""
    cdb = task.cdb
    if not cdb[8] & 0x01 and any(cdb[2:6]):  # LBA with PMI=0 (SBC-3 5.15)
        raise invalid_field_in_cdb(2)
    lu.check_medium()
    lu.refresh_capacity(task.nexus)
    last = lu.num_blocks - 1
    task.data_in = _RC10.pack(min(last, 0xFFFFFFFF), lu.block_size)


@COMMANDS.command(0x9E, "READ CAPACITY(16)", _usage(0x9E, 0x10, *[0xFF] * 8, 0xFF, 0xFF, 0xFF,
                                                    0xFF, 0x01, CONTROL),
                  Direction.IN, service_action=0x10, access=Access.ALLOWED)
def read_capacity16(lu, task) -> None:
    """SBC-4 5.16: capacity, block length, and LBPME/LBPRZ for thin LUs."""
    cdb = task.cdb
    alloc = _U32.unpack_from(cdb, 10)[0]
    lu.check_medium()
    lu.refresh_capacity(task.nexus)
    lbp = 0xC0 if lu.thin else 0  # LBPME, LBPRZ (deallocated blocks read as zeros)
    data = struct.pack(">QIBBBB16x", lu.num_blocks - 1, lu.block_size, 0,
                       lu.lbppb_exponent, lbp, 0)
    task.data_in = data[:alloc]


# --- START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL --------------------------------------------

@COMMANDS.command(0x1B, "START STOP UNIT", _usage(0x1B, 0x01, 0, 0x0F, 0xF7, CONTROL),
                  access=Access.EXCLUSIVE)
def start_stop_unit(lu, task) -> None:
    """SBC-4 5.25. A POWER CONDITION other than 0h makes the device server ignore START and
    LOEJ; power conditions have no effect here (no spindle, no power states), and every
    value is accepted (see the closing note of issue 6: libiscsi's PwrCnd sends the
    reserved ones too). With POWER CONDITION 0h, LOEJ on a removable LU ejects (START=0,
    after a cache flush unless NO_FLUSH) or loads (START=1) the medium; while any I_T nexus
    prevents removal (PREVENT ALLOW MEDIUM REMOVAL) both end in ILLEGAL REQUEST / MEDIUM
    REMOVAL PREVENTED, as the locked mechanism can neither open nor close. LOEJ on a fixed
    LU, and START without LOEJ, change nothing."""
    cdb = task.cdb
    power = cdb[4] >> 4
    loej, start, no_flush = cdb[4] & 0x02, cdb[4] & 0x01, cdb[4] & 0x04
    if power or not loej or not lu.removable:
        return
    if lu.prevent:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, MEDIUM_REMOVAL_PREVENTED)
    if not start and lu.medium_present and not no_flush:
        def ejected(task, error: Exception | None) -> None:
            if error is not None:
                raise error
            lu.medium_present = False

        lu.io(task, _flush_io, lu.store, 0, then=ejected)  # the cache is written, then out
        return
    lu.medium_present = bool(start)


@COMMANDS.command(0x1E, "PREVENT ALLOW MEDIUM REMOVAL", _usage(0x1E, 0, 0, 0, 0x03, CONTROL),
                  access=Access.EXCLUSIVE)
def prevent_allow_medium_removal(lu, task) -> None:
    """SBC-4 5.13: PREVENT 01b prevents medium removal for this I_T nexus, 00b allows it;
    removal stays prevented while any nexus prevents it. The state ends with the nexus
    (logout, connection loss), a LOGICAL UNIT RESET or a target reset (lu.reset). 10b and
    11b are obsolete: INVALID FIELD IN CDB. Valid whether or not a medium is present, and
    on a fixed LU (nothing to remove: no effect)."""
    prevent = task.cdb[4] & 0x03
    if prevent & 0x02:
        raise invalid_field_in_cdb(4, bit=1)
    if not lu.removable:
        return
    if prevent:
        lu.prevent.add(task.nexus)
    else:
        lu.prevent.discard(task.nexus)


# --- COMPARE AND WRITE -----------------------------------------------------------------------

@COMMANDS.command(0x89, "COMPARE AND WRITE", _usage(0x89, 0xF8, *[0xFF] * 8, 0, 0, 0, 0xFF, 0x1F,
                                                    CONTROL), Direction.OUT,
                  access=Access.WRITE, block=extent.COMPARE_AND_WRITE)
def compare_and_write(lu, task) -> None:
    """SBC-4 5.3: compare the first half of the Data-Out with the medium; if equal, write
    the second half. The medium access is one step, and the task set lets no overlapping
    task run beside it, so it is atomic against every other command on the LU."""
    flags, lba, count = _CAW.unpack_from(task.cdb)
    _no_protection(flags)
    lu.check_medium()
    lu.check_writable()
    if count > vpd_sbc.MAX_COMPARE_AND_WRITE:
        raise invalid_field_in_cdb(13)
    _check_range(lu, lba, count)
    bs = lu.block_size
    n = count * bs
    task.out_length = 2 * n
    data = task.data_out
    if (len(data) if data is not None else 0) != 2 * n:
        # The Data-Out must be exactly the verify and the write instance of the blocks;
        # anything else cannot be executed atomically as asked.
        raise invalid_field_in_cdb(13)
    if count == 0:
        return
    lu.io(task, _compare_and_write_io, lu.store, lba * bs, bytes(data[:n]), data[n:2 * n],
          bool(flags & 0x08 or not lu.mode.wce), lba)


def _compare_and_write_io(task, store, offset: int, verify: bytes, write, flush: bool,
                          lba: int) -> None:
    """Compare, then write only when equal: one step, which nothing overlapping interleaves
    with (the task set orders COMPARE AND WRITE against every overlapping task)."""
    _compare_io(task, store, offset, verify, lba)
    _write_io(task, store, offset, write, flush, lba)

