"""Third-party copy: the copy manager of each LU, EXTENDED COPY (LID1), RECEIVE COPY
RESULTS and the Third-party Copy VPD page.

Clauses (SPC-4): EXTENDED COPY (LID1) 6.4 (parameter list, CSCD descriptors, segment
descriptors, errors before and during segment processing); RECEIVE COPY RESULTS 6.27,
service actions COPY STATUS 00h, RECEIVE DATA 01h, OPERATING PARAMETERS 03h, FAILED
SEGMENT DETAILS 04h; Third-party Copy VPD page 8Fh 7.8.17; sense data 4.5 (segment
pointer 4.5.2.4.5, command-specific information 4.5.2.3); reservations 5.13.

Rules:
- Supported descriptors: CSCD (target) descriptor E4h, identification descriptor; segment
  descriptors 02h, block device to block device, and 0Ah, block device with byte offset to
  block device with byte offset. Anything else is ILLEGAL REQUEST, UNSUPPORTED TARGET
  DESCRIPTOR TYPE CODE (26h/07h) or UNSUPPORTED SEGMENT DESCRIPTOR TYPE CODE (26h/09h).
- Limits, advertised alike by OPERATING PARAMETERS and by the 8Fh page, and enforced:
  MAX_CSCD_DESCRIPTORS (else TOO MANY TARGET DESCRIPTORS, 26h/06h), MAX_SEGMENT_DESCRIPTORS
  (else TOO MANY SEGMENT DESCRIPTORS, 26h/08h), MAX_DESCRIPTOR_LIST_LENGTH for the CSCD
  and segment descriptor lists together (else PARAMETER LIST LENGTH ERROR, 1Ah/00h; this is
  checked before the counts), MAX_SEGMENT_LENGTH bytes per segment (INVALID FIELD IN
  PARAMETER LIST at its length field), no inline data (INLINE DATA LENGTH EXCEEDED,
  26h/0Bh), no held data (HELD DATA LIMIT 0), one copy at a time per LU (TOTAL
  CONCURRENT COPIES 1) only under QAM=0: the command is Access.WRITE and the task set
  lets no other changer of the LU run beside it; with QAM=1 two copies may run at once.
- Order of the checks on the parameter list (errors detected before segment processing,
  ILLEGAL REQUEST with a field pointer into the parameter list, C/D=0): PARAMETER LIST
  LENGTH 0 is GOOD and does nothing; a list shorter than its header or than the lengths
  its header gives is PARAMETER LIST LENGTH ERROR; LIST ID USAGE 01b (reserved), or 11b
  with a LIST IDENTIFIER other than 0, is INVALID FIELD IN PARAMETER LIST; then the limits
  above; then each descriptor's type and fields. A LIST IDENTIFIER still in use by a copy
  of the same I_T nexus is OPERATION IN PROGRESS (00h/16h); one that has completed is
  reused (its old results are replaced).
- Segments are processed in order. An error found while processing one ends the command
  in COPY ABORTED with the segment's number in COMMAND-SPECIFIC INFORMATION and a segment
  pointer (SD=0: offset in the parameter list) at the field at fault; the segments before
  it stay copied, as SEGMENTS PROCESSED says:
  * a CSCD descriptor ID naming no descriptor, or an identification descriptor that names
    no LU, or more than one: UNREACHABLE COPY TARGET (08h/04h);
  * PERIPHERAL DEVICE TYPE other than the LU's: INCORRECT COPY TARGET DEVICE TYPE
    (0Dh/03h); DISK BLOCK LENGTH other than the LU's block size: PARAMETER VALUE INVALID;
  * blocks beyond either LU's capacity: NO ADDITIONAL SENSE INFORMATION, the pointer at
    the LOGICAL BLOCK ADDRESS field (libiscsi accepts 00h/00h, 08h/04h or 0Dh/02h there);
  * a destination that is write protected (read_only, or SWP): WRITE PROTECTED; a LU
    without medium: MEDIUM NOT PRESENT; store errors: UNRECOVERED READ ERROR/WRITE ERROR;
  * a byte count that is not a whole number of blocks at both ends (DC, block sizes) is
    UNEXPECTED INEXACT SEGMENT (26h/0Ah) unless the PAD bit of the short end's CSCD
    descriptor asks for padding (destination: zeros to the block end) or stripping
    (source: the rest of its last block is not copied); CAT=1 is not supported.
- Security (the lesson of LIO's CVE-2020-28374): an identification descriptor resolves
  only to an LU of the same SCSI target device as the LU that received the command, among
  the LUs the issuing I_T nexus can address (lu.device.luns), by a logical-unit designator
  of its Device Identification VPD page (83h, association 00b: NAA, T10 vendor ID); never
  to another target's LU. Reservations of every copy source and destination are checked
  before any data moves, as if the issuing I_T nexus had sent a READ to each source and a
  WRITE to each destination: a conflict ends the command in RESERVATION CONFLICT.
- The table entry of EXTENDED COPY is Access.WRITE: the receiving LU orders it as a write
  in its task set (QAM=0) and meets its reservations as a write.
- Copy status is kept per (I_T nexus, LIST IDENTIFIER) for LIST ID USAGE 00b and 10b, in
  each LU's copy manager (LogicalUnit.copies, target.scsi.copyresults: at most MAX_STATUS
  entries, the oldest dropped first, dropped on I_T nexus loss and LU reset): COPY
  STATUS answers from it, FAILED SEGMENT DETAILS (00b only) returns the SCSI status and
  sense of a copy that failed and is then discarded, RECEIVE DATA (00b only) returns the
  held data, always none here. A LIST IDENTIFIER the copy manager has nothing for is
  INVALID FIELD IN CDB pointing at CDB byte 2.
- Every segment is checked before any data moves; the data then moves as the command's
  medium access (LogicalUnit.io: on a worker thread when the LU has them), in segment
  order, up to a segment whose check failed, which ends the copy there as above. The
  copy's writes to another LU of the device do not go through that LU's task set, as a
  copy manager's own writes would not (other commands to those blocks meanwhile may see
  a chunk before or after it, not a defined order).
- Data moves from store to store in CHUNK pieces (each read of the source is a copy of the
  medium, so a copy inside one store never reads what it has already written: overlapping
  ranges copy backwards when the destination is above the source); a destination with
  WCE=0 is flushed after each segment (SBC-4 4.15).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from target.backing.base import Store, StoreError
from target.scsi.commands import Access, Command, CommandSet
from target.scsi.copyresults import (
    COMPLETED,
    FAILED,
    USAGE_HOLD,
    USAGE_NO_LIST_ID,
    CopyStatus,
)
from target.scsi.sense import (
    INCORRECT_COPY_TARGET_DEVICE_TYPE,
    INLINE_DATA_LENGTH_EXCEEDED,
    MEDIUM_NOT_PRESENT,
    NO_ADDITIONAL_SENSE,
    PARAMETER_VALUE_INVALID,
    TOO_MANY_SEGMENT_DESCRIPTORS,
    TOO_MANY_TARGET_DESCRIPTORS,
    UNEXPECTED_INEXACT_SEGMENT,
    UNREACHABLE_COPY_TARGET,
    UNRECOVERED_READ_ERROR,
    UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE,
    UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE,
    WRITE_ERROR,
    WRITE_PROTECTED,
    Asc,
    CheckCondition,
    ReservationConflict,
    SenseKey,
    invalid_field_in_cdb,
    invalid_field_in_parameter_list,
    parameter_list_length_error,
)
from target.scsi.task import Direction, Nexus, Status

if TYPE_CHECKING:
    from target.scsi.lu import LogicalUnit
    from target.scsi.task import ScsiTask

COMMANDS = CommandSet("xcopy")

EXTENDED_COPY = 0x83
RECEIVE_COPY_RESULTS = 0x84
SA_EXTENDED_COPY_LID1 = 0x00
SA_COPY_STATUS = 0x00
SA_RECEIVE_DATA = 0x01
SA_OPERATING_PARAMETERS = 0x03
SA_FAILED_SEGMENT_DETAILS = 0x04

# --- limits (OPERATING PARAMETERS and VPD 8Fh say them; extended_copy enforces them) ---
MAX_CSCD_DESCRIPTORS = 16
MAX_SEGMENT_DESCRIPTORS = 16
MAX_DESCRIPTOR_LIST_LENGTH = 1024  # CSCD + segment descriptor lists, bytes
MAX_SEGMENT_LENGTH = 32 << 20  # bytes one segment descriptor may move
MAX_INLINE_DATA_LENGTH = 0
HELD_DATA_LIMIT = 0
TOTAL_CONCURRENT_COPIES = 1
MAX_IDENTIFIED_CONCURRENT_COPIES = 1
CHUNK = 1 << 20

# Descriptor type codes (SPC-4 6.4.5, 6.4.6).
SEG_BLOCK_TO_BLOCK = 0x02
SEG_BLOCK_OFFSET_TO_BLOCK_OFFSET = 0x0A
CSCD_IDENTIFICATION = 0xE4
SEGMENT_LENGTHS = {SEG_BLOCK_TO_BLOCK: 0x1C, SEG_BLOCK_OFFSET_TO_BLOCK_OFFSET: 0x20}
SUPPORTED_DESCRIPTORS = (SEG_BLOCK_TO_BLOCK, SEG_BLOCK_OFFSET_TO_BLOCK_OFFSET,
                         CSCD_IDENTIFICATION)
_CSCD_LONG = frozenset({0xEA, 0xEB})  # IPv6 and IP copy service CSCD descriptors: 64 bytes
BLOCK_DEVICE_TYPES = frozenset({0x00, 0x04, 0x05, 0x07, 0x0E})  # device type specific: PAD,
#                                                                  DISK BLOCK LENGTH
PDT_DIRECT_ACCESS = 0x00

HEADER_LENGTH = 16
_HEADER = struct.Struct(">BBH4xII")  # LIST ID, flags, CSCD list, segment list, inline data
_E4 = struct.Struct(">BBHBBxB")  # type, LU ID TYPE/NUL/PDT, RIPI, code set, assoc/type, len
_SEG_HEAD = struct.Struct(">BBHHH")  # type, DC/CAT, DESCRIPTOR LENGTH, source, destination
_B2B = struct.Struct(">2xHQQ")  # at +8: NUMBER OF BLOCKS, source LBA, destination LBA
_BO2BO = struct.Struct(">IQQHH")  # at +8: bytes, source LBA, destination LBA, byte offsets
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


# --- the parameter list ------------------------------------------------------------------


@dataclass(frozen=True)
class Cscd:
    """A CSCD (copy source or copy destination) descriptor; `offset` in the parameter list."""

    offset: int
    type_code: int
    pdt: int
    code_set: int
    association: int
    designator_type: int
    designator: bytes
    pad: bool
    block_length: int


@dataclass(frozen=True)
class Segment:
    """A segment descriptor: 02h counts blocks, 0Ah counts bytes from byte offsets."""

    offset: int
    type_code: int
    dc: bool
    cat: bool
    src: int
    dst: int
    count: int  # NUMBER OF BLOCKS (02h) or NUMBER OF BYTES (0Ah)
    src_lba: int
    dst_lba: int
    src_byte: int = 0
    dst_byte: int = 0


@dataclass(frozen=True)
class ParameterList:
    list_id: int
    usage: int
    cscds: tuple[Cscd, ...]
    segments: tuple[Segment, ...]


def _cscd_length(type_code: int) -> int:
    return 64 if type_code in _CSCD_LONG else 32


def parse(data: bytes) -> ParameterList:
    """The EXTENDED COPY (LID1) parameter list (SPC-4 6.4), checked in the order the module
    rules give; CheckCondition (ILLEGAL REQUEST) for the first fault."""
    if len(data) < HEADER_LENGTH:
        raise parameter_list_length_error()
    list_id, flags, cscd_len, seg_len, inline_len = _HEADER.unpack_from(data)
    usage = (flags >> 3) & 0x03
    if usage == 0b01:
        raise invalid_field_in_parameter_list(1, bit=4)
    if usage == USAGE_NO_LIST_ID and list_id:
        raise invalid_field_in_parameter_list(0)
    if HEADER_LENGTH + cscd_len + seg_len + inline_len > len(data):
        raise parameter_list_length_error()
    if cscd_len + seg_len > MAX_DESCRIPTOR_LIST_LENGTH:
        raise parameter_list_length_error()
    if inline_len > MAX_INLINE_DATA_LENGTH:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, INLINE_DATA_LENGTH_EXCEEDED,
                             field=12, cd=False)

    # Walk both lists first: the counts are checked before the contents.
    cscd_at = []
    pos, end = HEADER_LENGTH, HEADER_LENGTH + cscd_len
    while pos < end:
        size = _cscd_length(data[pos])
        if pos + size > end:
            raise invalid_field_in_parameter_list(2)  # CSCD DESCRIPTOR LIST LENGTH
        cscd_at.append(pos)
        pos += size
    if len(cscd_at) > MAX_CSCD_DESCRIPTORS:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, TOO_MANY_TARGET_DESCRIPTORS,
                             field=2, cd=False)
    seg_at = []
    pos, end = end, end + seg_len
    while pos < end:
        if pos + 4 > end:
            raise invalid_field_in_parameter_list(8)  # SEGMENT DESCRIPTOR LIST LENGTH
        size = 4 + _U16.unpack_from(data, pos + 2)[0]
        if pos + size > end:
            raise invalid_field_in_parameter_list(8)
        seg_at.append(pos)
        pos += size
    if len(seg_at) > MAX_SEGMENT_DESCRIPTORS:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, TOO_MANY_SEGMENT_DESCRIPTORS,
                             field=8, cd=False)

    cscds = tuple(_parse_cscd(data, at) for at in cscd_at)
    segments = tuple(_parse_segment(data, at, cscds) for at in seg_at)
    return ParameterList(list_id, usage, cscds, segments)


def _parse_cscd(data: bytes, at: int) -> Cscd:
    """An identification descriptor CSCD descriptor, E4h (SPC-4 6.4.5): the designator of
    a logical unit (format of 7.8.6.1) and the device type specific parameters. LU ID TYPE
    is ignored and NUL is obsolete in SPC-4."""
    type_code = data[at]
    if type_code != CSCD_IDENTIFICATION:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE,
                             field=at, cd=False)
    _t, b1, _ripi, b4, b5, length = _E4.unpack_from(data, at)
    if length > 20:  # DESIGNATOR fills bytes 8-27 at most
        raise invalid_field_in_parameter_list(at + 7)
    pdt = b1 & 0x1F
    pad, block_length = False, 0
    if pdt in BLOCK_DEVICE_TYPES:
        pad = bool(data[at + 28] & 0x04)
        block_length = int.from_bytes(data[at + 29 : at + 32], "big")
    return Cscd(at, type_code, pdt, b4 & 0x0F, (b5 >> 4) & 0x03, b5 & 0x0F,
                bytes(data[at + 8 : at + 8 + length]), pad, block_length)


def _parse_segment(data: bytes, at: int, cscds: tuple[Cscd, ...]) -> Segment:
    type_code, flags, length, src, dst = _SEG_HEAD.unpack_from(data, at)
    want = SEGMENT_LENGTHS.get(type_code)
    if want is None:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE,
                             field=at, cd=False)
    if length + 4 != want:
        raise invalid_field_in_parameter_list(at + 2)  # DESCRIPTOR LENGTH
    dc, cat = bool(flags & 0x02), bool(flags & 0x01)
    if type_code == SEG_BLOCK_TO_BLOCK:
        blocks, src_lba, dst_lba = _B2B.unpack_from(data, at + 8)
        seg = Segment(at, type_code, dc, cat, src, dst, blocks, src_lba, dst_lba)
        # The segment's size in bytes, from the DISK BLOCK LENGTH of its CSCD descriptors.
        ref = dst if dc else src
        size = blocks * cscds[ref].block_length if ref < len(cscds) else 0
        if size > MAX_SEGMENT_LENGTH:
            raise invalid_field_in_parameter_list(at + 10)
        return seg
    nbytes, src_lba, dst_lba, src_byte, dst_byte = _BO2BO.unpack_from(data, at + 8)
    if nbytes > MAX_SEGMENT_LENGTH:
        raise invalid_field_in_parameter_list(at + 8)
    return Segment(at, type_code, dc, cat, src, dst, nbytes, src_lba, dst_lba, src_byte,
                   dst_byte)


# --- resolving CSCD descriptors ----------------------------------------------------------


def visible_lus(lu: LogicalUnit, nexus: Nexus) -> list[LogicalUnit]:
    """The LUs of this SCSI target device the I_T nexus can address: the only candidates
    a CSCD descriptor may name."""
    device = lu.device
    if device is None:
        return [lu]
    return list(device.luns.values())


def lu_designators(lu: LogicalUnit, nexus: Nexus) -> set[tuple[int, int, bytes]]:
    """(code set, designator type, designator) of the LU's logical-unit designators in its
    Device Identification VPD page (SPC-4 7.8.6, association 00b)."""
    from target.scsi import spc

    page = spc.device_identification(lu, nexus)
    found = set()
    pos = 0
    while pos + 4 <= len(page):
        b0, b1, _r, length = page[pos : pos + 4]
        if (b1 >> 4) & 0x03 == 0:
            found.add((b0 & 0x0F, b1 & 0x0F, bytes(page[pos + 4 : pos + 4 + length])))
        pos += 4 + length
    return found


def _copy_aborted(code: Asc, field: int | None = None) -> CheckCondition:
    return CheckCondition(SenseKey.COPY_ABORTED, code, field=field, cd=False)


def _resolve(lu: LogicalUnit, nexus: Nexus, cscds: tuple[Cscd, ...], ident: int,
             id_field: int) -> tuple[LogicalUnit, Cscd]:
    """The LU a segment's CSCD descriptor ID names (SPC-4 6.4.5, 6.4.6.1)."""
    if ident >= len(cscds):
        raise _copy_aborted(UNREACHABLE_COPY_TARGET, id_field)
    cscd = cscds[ident]
    wanted = (cscd.code_set, cscd.designator_type, cscd.designator)
    matches = []
    if cscd.association == 0 and cscd.designator:
        matches = [c for c in visible_lus(lu, nexus) if wanted in lu_designators(c, nexus)]
    if len(matches) != 1:
        raise _copy_aborted(UNREACHABLE_COPY_TARGET, cscd.offset + 4)
    target = matches[0]
    if cscd.pdt != PDT_DIRECT_ACCESS:
        raise _copy_aborted(INCORRECT_COPY_TARGET_DEVICE_TYPE, cscd.offset + 1)
    if cscd.block_length != target.block_size:
        raise _copy_aborted(PARAMETER_VALUE_INVALID, cscd.offset + 29)
    if not target.medium_present:
        raise _copy_aborted(MEDIUM_NOT_PRESENT, cscd.offset)
    return target, cscd


# --- reservations --------------------------------------------------------------------------


def _no_handler(lu: LogicalUnit, task: ScsiTask) -> None:  # pragma: no cover - never run
    raise AssertionError("a reservation probe is not a command")


# How the copy manager meets each CSCD's reservations: as a READ from every copy source and
# a WRITE to every copy destination sent by the I_T nexus of the EXTENDED COPY.
_READ_PROBE = Command(0x88, "EXTENDED COPY: read a copy source", 16, Direction.IN, _no_handler,
                      bytes(16), access=Access.READ)
_WRITE_PROBE = Command(0x8A, "EXTENDED COPY: write a copy destination", 16, Direction.OUT,
                       _no_handler, bytes(16), access=Access.WRITE)


def _conflicts(lu: LogicalUnit, task: ScsiTask, params: ParameterList) -> bool:
    for seg in params.segments:
        for ident, probe in ((seg.src, _READ_PROBE), (seg.dst, _WRITE_PROBE)):
            try:
                target, _cscd = _resolve(lu, task.nexus, params.cscds, ident, seg.offset)
            except CheckCondition:
                continue  # reported when the segment is processed
            if target.reservations.conflicts(task, probe):
                return True
    return False


# --- moving the data ---------------------------------------------------------------------


def _move(src: Store, src_at: int, dst: Store, dst_at: int, nbytes: int, read_field: int,
          write_field: int) -> None:
    """Copy nbytes between the stores, overlap-safe (a read is a copy of the medium, never a
    view that the writes change: base.py); StoreError becomes COPY ABORTED."""
    starts = range(0, nbytes, CHUNK)
    if src is dst and src_at < dst_at < src_at + nbytes:
        starts = reversed(starts)
    for off in starts:
        n = min(CHUNK, nbytes - off)
        try:
            data = src.read(src_at + off, n)
        except StoreError:
            raise _copy_aborted(UNRECOVERED_READ_ERROR, read_field) from None
        try:
            dst.write(dst_at + off, data)
        except StoreError:
            raise _copy_aborted(WRITE_ERROR, write_field) from None


@dataclass
class _Plan:
    """One segment, checked: what its medium access moves (store calls only)."""

    src: Store
    src_start: int
    dst: Store
    dst_start: int
    nbytes: int
    pad: int            # zeros written after the data, to the destination's block end
    flush: bool         # the destination has WCE=0
    src_field: int      # segment-pointer targets for a read or write error
    dst_field: int

    def run(self) -> int:
        """Move the data (any thread); the number of bytes written."""
        if self.nbytes:
            _move(self.src, self.src_start, self.dst, self.dst_start, self.nbytes,
                  self.src_field, self.dst_field)
        try:
            if self.pad:
                self.dst.write(self.dst_start + self.nbytes, bytes(self.pad))
            if (self.nbytes or self.pad) and self.flush:
                self.dst.flush()
        except StoreError:
            raise _copy_aborted(WRITE_ERROR, self.dst_field) from None
        return self.nbytes + self.pad


def _segment(lu: LogicalUnit, task: ScsiTask, params: ParameterList, seg: Segment) -> _Plan:
    """Check one segment descriptor (SPC-4 6.4.6) and plan its data movement."""
    at = seg.offset
    src, src_cscd = _resolve(lu, task.nexus, params.cscds, seg.src, at + 4)
    dst, dst_cscd = _resolve(lu, task.nexus, params.cscds, seg.dst, at + 6)
    sbs, dbs = src.block_size, dst.block_size
    pad = 0
    if seg.type_code == SEG_BLOCK_TO_BLOCK:
        nbytes = seg.count * (dbs if seg.dc else sbs)
        src_start, dst_start = seg.src_lba * sbs, seg.dst_lba * dbs
        src_residue, dst_residue = nbytes % sbs, nbytes % dbs
        if src_residue and (seg.cat or not src_cscd.pad):
            raise _copy_aborted(UNEXPECTED_INEXACT_SEGMENT, at + 10)
        if dst_residue:
            if seg.cat or not dst_cscd.pad:
                raise _copy_aborted(UNEXPECTED_INEXACT_SEGMENT, at + 10)
            pad = dbs - dst_residue
        src_end = src_start + nbytes + (sbs - src_residue if src_residue else 0)
        dst_end = dst_start + nbytes + pad
        src_lba_field, dst_lba_field = at + 12, at + 20
    else:
        nbytes = seg.count
        src_start = seg.src_lba * sbs + seg.src_byte
        dst_start = seg.dst_lba * dbs + seg.dst_byte
        src_end, dst_end = src_start + nbytes, dst_start + nbytes
        src_lba_field, dst_lba_field = at + 12, at + 20
    if src_end > src.num_blocks * sbs:
        raise _copy_aborted(NO_ADDITIONAL_SENSE, src_lba_field)
    if dst_end > dst.num_blocks * dbs:
        raise _copy_aborted(NO_ADDITIONAL_SENSE, dst_lba_field)
    if dst.mode.write_protected:
        raise _copy_aborted(WRITE_PROTECTED, at + 6)
    return _Plan(src.store, src_start, dst.store, dst_start, nbytes, pad, not dst.mode.wce,
                 src_lba_field, dst_lba_field)


# --- EXTENDED COPY (LID1) ----------------------------------------------------------------


def _parameter_data(task: ScsiTask) -> bytes:
    plen = _U32.unpack_from(task.cdb, 10)[0]
    task.out_length = plen
    data = bytes(task.data_out or b"")[:plen]
    if len(data) < plen:
        raise parameter_list_length_error()
    return data


@COMMANDS.command(EXTENDED_COPY, "EXTENDED COPY(LID1)",
                  [EXTENDED_COPY, SA_EXTENDED_COPY_LID1, 0, 0, 0, 0, 0, 0, 0, 0,
                   0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04],
                  Direction.OUT, service_action=SA_EXTENDED_COPY_LID1, access=Access.WRITE)
def extended_copy(lu: LogicalUnit, task: ScsiTask) -> None:
    """SPC-4 6.4: copy the segments, keep the status for RECEIVE COPY RESULTS."""
    data = _parameter_data(task)
    if not data:
        return  # PARAMETER LIST LENGTH 0: nothing is copied and nothing changes
    params = parse(data)
    status = lu.copies.begin(task.nexus, params.list_id, params.usage)
    try:
        conflict = _conflicts(lu, task, params)
    except Exception as exc:
        _copy_ended(lu, status, task, exc)  # raises
        raise
    if conflict:
        status.state, status.scsi_status = FAILED, Status.RESERVATION_CONFLICT
        raise ReservationConflict
    # Every segment is checked now; the data moves as the command's medium access (off the
    # event loop when the LU has worker threads), segment after segment, up to the first
    # one whose check failed, which then ends the copy as if found when it was reached.
    plans: list[_Plan] = []
    failure: tuple[int, CheckCondition] | None = None
    for number, seg in enumerate(params.segments):
        try:
            plans.append(_segment(lu, task, params, seg))
        except CheckCondition as cc:
            failure = (number, cc)
            break
    lu.io(task, _copy_io, status, plans, failure,
          then=lambda task, error: _copy_ended(lu, status, task, error))


def _copy_io(task: ScsiTask, status: CopyStatus, plans: list[_Plan],
             failure: tuple[int, CheckCondition] | None) -> None:
    """The copy's data movement (store calls and the status counters only)."""
    number = 0
    try:
        for number, plan in enumerate(plans):
            status.transferred += plan.run()
            status.segments = number + 1
        if failure is not None:
            number, cc = failure
            raise cc
    except CheckCondition as cc:
        if cc.key == SenseKey.COPY_ABORTED:
            cc.cmd_info = number
        raise


def _copy_ended(lu: LogicalUnit, status: CopyStatus, task: ScsiTask,
                error: Exception | None) -> None:
    """On the event loop: the copy's status for RECEIVE COPY RESULTS, and its outcome."""
    if error is None:
        status.state = COMPLETED
        return
    status.state, status.scsi_status = FAILED, Status.CHECK_CONDITION
    if isinstance(error, CheckCondition):
        status.sense = error.sense(lu.mode.d_sense)
    raise error


# --- RECEIVE COPY RESULTS ------------------------------------------------------------------


def _rcr(sa: int, name: str, list_id: bool = True):
    usage = [RECEIVE_COPY_RESULTS, sa, 0xFF if list_id else 0, 0, 0, 0, 0, 0, 0, 0,
             0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04]
    return COMMANDS.command(RECEIVE_COPY_RESULTS, name, usage, Direction.IN,
                            service_action=sa, access=Access.ALLOWED, reserve6=False)


def _alloc(task: ScsiTask) -> int:
    return _U32.unpack_from(task.cdb, 10)[0]


def _kept(lu: LogicalUnit, task: ScsiTask, hold_only: bool) -> CopyStatus:
    status = lu.copies.find(task.nexus, task.cdb[2])
    if status is None or (hold_only and status.usage != USAGE_HOLD):
        raise invalid_field_in_cdb(2)  # LIST IDENTIFIER
    return status


def _transfer_count(nbytes: int) -> tuple[int, int]:
    """(TRANSFER COUNT UNITS, TRANSFER COUNT): bytes, or 2^10, 2^20 ... units, truncated."""
    units = 0
    while nbytes >> (10 * units) > 0xFFFFFFFF:
        units += 1
    return units, nbytes >> (10 * units)


@_rcr(SA_COPY_STATUS, "RECEIVE COPY RESULTS/COPY STATUS")
def copy_status(lu: LogicalUnit, task: ScsiTask) -> None:
    """COPY STATUS: state, segments processed and transfer count of a copy (SPC-4 6.27)."""
    st = _kept(lu, task, hold_only=False)
    units, count = _transfer_count(st.transferred)
    data = struct.pack(">IBHBI", 8, st.state & 0x7F, min(st.segments, 0xFFFF), units, count)
    task.data_in = data[: _alloc(task)]


@_rcr(SA_RECEIVE_DATA, "RECEIVE COPY RESULTS/RECEIVE DATA")
def receive_data(lu: LogicalUnit, task: ScsiTask) -> None:
    """RECEIVE DATA: the data held for the application client; no supported segment
    descriptor holds any, so AVAILABLE DATA is 0."""
    _kept(lu, task, hold_only=True)
    task.data_in = bytes(4)[: _alloc(task)]


def operating_parameters_data(lu: LogicalUnit) -> bytes:
    """OPERATING PARAMETERS parameter data (SPC-4 6.27): SNLID=1 (LIST ID USAGE 11b is
    supported), the limits, and the descriptor type codes implemented."""
    codes = bytes(SUPPORTED_DESCRIPTORS)
    body = struct.pack(
        ">B3xHHIIIII2xHBBBB3xB",
        0x01,  # SNLID
        MAX_CSCD_DESCRIPTORS,
        MAX_SEGMENT_DESCRIPTORS,
        MAX_DESCRIPTOR_LIST_LENGTH,
        MAX_SEGMENT_LENGTH,
        MAX_INLINE_DATA_LENGTH,
        HELD_DATA_LIMIT,
        0,  # MAXIMUM STREAM DEVICE TRANSFER SIZE
        TOTAL_CONCURRENT_COPIES,
        MAX_IDENTIFIED_CONCURRENT_COPIES,
        _granularity(lu),  # DATA SEGMENT GRANULARITY (log2)
        0,  # INLINE DATA GRANULARITY (log2)
        0,  # HELD DATA GRANULARITY (log2)
        len(codes),
    ) + codes
    return struct.pack(">I", len(body)) + body


@_rcr(SA_OPERATING_PARAMETERS, "RECEIVE COPY RESULTS/OPERATING PARAMETERS", list_id=False)
def operating_parameters(lu: LogicalUnit, task: ScsiTask) -> None:
    task.data_in = operating_parameters_data(lu)[: _alloc(task)]


@_rcr(SA_FAILED_SEGMENT_DETAILS, "RECEIVE COPY RESULTS/FAILED SEGMENT DETAILS")
def failed_segment_details(lu: LogicalUnit, task: ScsiTask) -> None:
    """FAILED SEGMENT DETAILS: the status and sense of a copy that failed, discarded once
    transferred whole; AVAILABLE DATA 0 when there are none (in progress, completed
    without error, or already returned)."""
    st = _kept(lu, task, hold_only=True)
    alloc = _alloc(task)
    if st.state != FAILED or not (st.sense or st.scsi_status != Status.GOOD):
        task.data_in = bytes(4)[:alloc]
        return
    body = bytes(52) + struct.pack(">BxH", st.scsi_status, len(st.sense)) + st.sense
    data = struct.pack(">I", len(body)) + body
    task.data_in = data[:alloc]
    if alloc >= len(data):
        st.sense, st.scsi_status = b"", Status.GOOD


# --- the Third-party Copy VPD page -------------------------------------------------------


def _granularity(lu: LogicalUnit) -> int:
    return lu.block_size.bit_length() - 1


def _tpc_descriptor(type_: int, body: bytes) -> bytes:
    body += bytes(-(len(body) + 4) % 4)  # each descriptor is a multiple of four bytes
    return struct.pack(">HH", type_, len(body)) + body


@COMMANDS.vpd(0x8F, "Third-party Copy")
def third_party_copy_vpd(lu: LogicalUnit, nexus: Nexus) -> bytes:
    """Third-party Copy VPD page, 8Fh (SPC-4 7.8.17), header included: the descriptors a
    copy manager supporting EXTENDED COPY (LID1) reports: Supported Commands (0001h),
    Parameter Data (0004h), Supported Descriptors (0008h), Supported CSCD Descriptor IDs
    (000Ch, none beyond the list indexes 0000h-07FFh) and General Copy Operations
    (8001h). Registered in xcopy's table beside EXTENDED COPY, so only an LU with a copy
    manager has the page (others refuse it as any page they lack, spc.vpd_page)."""
    commands = b""
    for opcode in (EXTENDED_COPY, RECEIVE_COPY_RESULTS):
        actions = bytes(sorted(c.service_action or 0 for c in lu.commands
                               if c.opcode == opcode))
        if actions:
            commands += bytes((opcode, len(actions))) + actions
    descs = b"".join((
        _tpc_descriptor(0x0001, bytes((len(commands),)) + commands),
        _tpc_descriptor(0x0004, struct.pack(">4xHHII12x", MAX_CSCD_DESCRIPTORS,
                                            MAX_SEGMENT_DESCRIPTORS,
                                            MAX_DESCRIPTOR_LIST_LENGTH,
                                            MAX_INLINE_DATA_LENGTH)),
        _tpc_descriptor(0x0008, bytes((len(SUPPORTED_DESCRIPTORS),))
                        + bytes(SUPPORTED_DESCRIPTORS)),
        _tpc_descriptor(0x000C, _U16.pack(0)),
        _tpc_descriptor(0x8001, struct.pack(">IIIBB18x", TOTAL_CONCURRENT_COPIES,
                                            MAX_IDENTIFIED_CONCURRENT_COPIES,
                                            MAX_SEGMENT_LENGTH, _granularity(lu), 0)),
    ))
    return struct.pack(">BBH", PDT_DIRECT_ACCESS, 0x8F, len(descs)) + descs
