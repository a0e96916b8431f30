"""The block range a CDB addresses: its LBA, its length in blocks and whether it writes.

Rules:
- Field positions (SBC-4 5.x): 6-byte READ/WRITE: 21-bit LBA in bytes 1-3, TRANSFER
  LENGTH in byte 4 (0 means 256 blocks, SBC-4 5.19/5.42); 10-byte: LBA bytes 2-5, length
  7-8; 12-byte: LBA 2-5, length 6-9; 16-byte: LBA 2-9, length 10-13; COMPARE AND WRITE:
  LBA 2-9, NUMBER OF LOGICAL BLOCKS byte 13; WRITE ATOMIC(16): LBA 2-9, TRANSFER LENGTH
  12-13 (SBC-4 5.48).
- BLOCK_CDBS declares, once, which opcodes carry a block range, in which layout, whether
  they change the medium (for the task set's ordering rules; SYNCHRONIZE CACHE counts as
  one: it must follow the writes it makes durable), and whether a length of 0 means
  "through the last LBA" (SYNCHRONIZE CACHE, PRE-FETCH, WRITE SAME with WSNZ=0;
  SBC-4 5.26, 5.10, 5.47), and whether the command is atomic (COMPARE AND WRITE, SBC-4
  5.3, and WRITE ATOMIC, 4.29: no overlapping command may run beside it, whatever the
  queue algorithm modifier).
- decode() never raises: a CDB too short for its layout has no extent (the LU rejects it).
- Consumers: target.trace (the LBA/length it records) and target.scsi.taskset (which
  tasks overlap, for the QAM=0 ordering rule, and where the disk head goes).
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

BLOCK_CDBS: dict[int, BlockCdb] = {
    0x08: BlockCdb("6", False, False, {}),             # READ(6)
    0x0A: BlockCdb("6", True, False, {}),              # WRITE(6)
    0x28: BlockCdb("10", False, False, _RW),           # READ(10)
    0x2A: BlockCdb("10", True, False, _RW),            # WRITE(10)
    0x2E: BlockCdb("10", True, False, _BYTCHK),        # WRITE AND VERIFY(10)
    0x2F: BlockCdb("10", False, False, _BYTCHK),       # VERIFY(10)
    0x34: BlockCdb("10", False, True, _IMMED),         # PRE-FETCH(10)
    0x35: BlockCdb("10", True, True, _IMMED),          # SYNCHRONIZE CACHE(10)
    0x41: BlockCdb("10", True, True, {0x08: "UNMAP", 0x10: "ANCHOR"}),  # WRITE SAME(10)
    0xA8: BlockCdb("12", False, False, _RW),           # READ(12)
    0xAA: BlockCdb("12", True, False, _RW),            # WRITE(12)
    0xAE: BlockCdb("12", True, False, _BYTCHK),        # WRITE AND VERIFY(12)
    0xAF: BlockCdb("12", False, False, _BYTCHK),       # VERIFY(12)
    0x88: BlockCdb("16", False, False, _RW),           # READ(16)
    0x8A: BlockCdb("16", True, False, _RW),            # WRITE(16)
    0x8B: BlockCdb("16", True, False, _RW),            # ORWRITE(16)
    0x8E: BlockCdb("16", True, False, _BYTCHK),        # WRITE AND VERIFY(16)
    0x8F: BlockCdb("16", False, False, _BYTCHK),       # VERIFY(16)
    0x90: BlockCdb("16", False, True, _IMMED),         # PRE-FETCH(16)
    0x91: BlockCdb("16", True, True, _IMMED),          # SYNCHRONIZE CACHE(16)
    0x93: BlockCdb("16", True, True, {0x08: "UNMAP", 0x10: "ANCHOR", 0x01: "NDOB"}),
    0x89: BlockCdb("caw", True, False, _RW, True),     # COMPARE AND WRITE
    0x9C: BlockCdb("atomic16", True, False, _RW, True),  # WRITE ATOMIC(16)
}


class Extent(NamedTuple):
    lba: int
    blocks: int     # as the CDB says (0 stays 0; see end)
    writes: bool
    end: int        # one past the last block addressed (TO_END for "through the last LBA")
    atomic: bool = False


def decode(cdb: bytes | memoryview) -> Extent | None:
    """The block range of a CDB, or None for commands without one (or too short)."""
    if not cdb:
        return None
    entry = BLOCK_CDBS.get(cdb[0])
    if entry is None or len(cdb) < LAYOUT_LENGTH[entry.layout]:
        return None
    layout = entry.layout
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


def flag_names(cdb: bytes | memoryview) -> list[str]:
    """The named byte-1 flags set in a block CDB (FUA, DPO, BYTCHK, UNMAP, ...)."""
    entry = BLOCK_CDBS.get(cdb[0]) if cdb else None
    if entry is None or len(cdb) < 2:
        return []
    return [name for bit, name in entry.flags.items() if cdb[1] & bit]
