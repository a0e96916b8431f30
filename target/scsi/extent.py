"""The block range a CDB addresses: its LBA, its length in blocks and whether it writes.

Rules:
- Field positions (SBC-4 5.x): 6-byte READ/WRITE: 21-bit LBA in bytes 1-3, TRANSFER
  LENGTH in byte 4 (0 means 256 blocks, SBC-4 5.19/5.42); 10-byte: LBA bytes 2-5, length
  7-8; 12-byte: LBA 2-5, length 6-9; 16-byte: LBA 2-9, length 10-13; COMPARE AND WRITE:
  LBA 2-9, NUMBER OF LOGICAL BLOCKS byte 13; WRITE ATOMIC(16): LBA 2-9, TRANSFER LENGTH
  12-13 (SBC-4 5.48).
- A BlockCdb is one command's block-range facts, kept in its table entry
  (target.scsi.commands.Command.block; the tables in sbc.py declare them): the layout,
  whether it changes the medium (for the task set's ordering rules; SYNCHRONIZE CACHE
  counts as one: it must follow the writes it makes durable), whether a length of 0 means
  "through the last LBA" (SYNCHRONIZE CACHE, PRE-FETCH, WRITE SAME with WSNZ=0; SBC-4
  5.26, 5.10, 5.47), the byte-1 flags worth naming in a trace, and whether the command is
  atomic (COMPARE AND WRITE, SBC-4 5.3, and WRITE ATOMIC, 4.29: no overlapping command may
  run beside it, whatever the queue algorithm modifier).
- decode() runs once per command, when the table entry is looked up on arrival
  (CommandSet.parse); the Extent is kept on the task (ScsiTask.extent) and read from
  there by the task set (overlaps, the disk head), the handlers, the trace and the fault
  rules. It never raises: a CDB too short for its layout has no extent (the LU rejects
  it).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

_U32_AT2 = struct.Struct(">I")
_U16_AT7 = struct.Struct(">H")
_U32X2_AT2 = struct.Struct(">II")
_U64_U32_AT2 = struct.Struct(">QI")
_U64_AT2 = struct.Struct(">Q")
_U16_AT12 = struct.Struct(">H")

LAYOUT_LENGTH = {"6": 6, "10": 10, "12": 12, "16": 16, "caw": 16, "atomic16": 16}
TO_END = 1 << 62  # the length recorded for "through the last LBA"


class BlockCdb(NamedTuple):
    layout: str     # a key of LAYOUT_LENGTH
    writes: bool    # changes the medium (or, for SYNCHRONIZE CACHE, makes writes durable)
    zero_is_all: bool  # a length of 0 means through the last LBA
    flags: dict[int, str]  # byte-1 bits worth naming in a trace
    atomic: bool = False  # all or nothing against every overlapping command


_RW = {0x08: "FUA", 0x10: "DPO"}
_BYTCHK = {0x02: "BYTCHK"}
_IMMED = {0x02: "IMMED"}

# The layouts the SBC-4 tables use (sbc.py), by name.
READ_6 = BlockCdb("6", False, False, {})
WRITE_6 = BlockCdb("6", True, False, {})
READ_10 = BlockCdb("10", False, False, _RW)
WRITE_10 = BlockCdb("10", True, False, _RW)
WRITE_VERIFY_10 = BlockCdb("10", True, False, _BYTCHK)
VERIFY_10 = BlockCdb("10", False, False, _BYTCHK)
PREFETCH_10 = BlockCdb("10", False, True, _IMMED)
SYNC_10 = BlockCdb("10", True, True, _IMMED)
WRITE_SAME_10 = BlockCdb("10", True, True, {0x08: "UNMAP", 0x10: "ANCHOR"})
READ_12 = BlockCdb("12", False, False, _RW)
WRITE_12 = BlockCdb("12", True, False, _RW)
WRITE_VERIFY_12 = BlockCdb("12", True, False, _BYTCHK)
VERIFY_12 = BlockCdb("12", False, False, _BYTCHK)
READ_16 = BlockCdb("16", False, False, _RW)
WRITE_16 = BlockCdb("16", True, False, _RW)
WRITE_VERIFY_16 = BlockCdb("16", True, False, _BYTCHK)
VERIFY_16 = BlockCdb("16", False, False, _BYTCHK)
PREFETCH_16 = BlockCdb("16", False, True, _IMMED)
SYNC_16 = BlockCdb("16", True, True, _IMMED)
WRITE_SAME_16 = BlockCdb("16", True, True, {0x08: "UNMAP", 0x10: "ANCHOR", 0x01: "NDOB"})
COMPARE_AND_WRITE = BlockCdb("caw", True, False, _RW, True)
WRITE_ATOMIC_16 = BlockCdb("atomic16", True, False, _RW, True)


class Extent(NamedTuple):
    lba: int
    blocks: int     # as the CDB says (0 stays 0; see end)
    writes: bool
    end: int        # one past the last block addressed (TO_END for "through the last LBA")
    atomic: bool = False


def decode(cdb: bytes | memoryview, entry: BlockCdb) -> Extent | None:
    """The block range of a CDB in the layout `entry`, or None when it is too short."""
    layout = entry.layout
    if len(cdb) < LAYOUT_LENGTH[layout]:
        return None
    if layout == "10":
        lba = _U32_AT2.unpack_from(cdb, 2)[0]
        length = _U16_AT7.unpack_from(cdb, 7)[0]
    elif layout == "16":
        lba, length = _U64_U32_AT2.unpack_from(cdb, 2)
    elif layout == "6":
        lba = (cdb[1] & 0x1F) << 16 | cdb[2] << 8 | cdb[3]
        length = cdb[4] or 256
    elif layout == "12":
        lba, length = _U32X2_AT2.unpack_from(cdb, 2)
    elif layout == "caw":
        lba, length = _U64_AT2.unpack_from(cdb, 2)[0], cdb[13]
    else:  # atomic16
        lba, length = _U64_AT2.unpack_from(cdb, 2)[0], _U16_AT12.unpack_from(cdb, 12)[0]
    end = TO_END if (length == 0 and entry.zero_is_all) else lba + length
    return Extent(lba, length, entry.writes, end, entry.atomic)


def flag_names(cdb: bytes | memoryview, entry: BlockCdb) -> list[str]:
    """The named byte-1 flags set in a block CDB (FUA, DPO, BYTCHK, UNMAP, ...)."""
    if len(cdb) < 2:
        return []
    return [name for bit, name in entry.flags.items() if cdb[1] & bit]
