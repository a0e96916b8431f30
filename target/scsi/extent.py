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
- The CDB is decoded once per command, when its table entry is looked up on arrival
  (CommandSet.parse): the layout's precompiled `fields` unpack puts the LBA and the
  length on the task (ScsiTask.lba, ScsiTask.blocks; None without a range, or for a CDB
  too short for its layout, which the LU rejects). The task set (overlaps, the disk
  head) and the READ/WRITE handlers read those fields; of_task() makes them an Extent
  for the trace and the fault rules without decoding the CDB again. decode() is for a
  CDB no table entry was looked up for; neither raises.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NamedTuple

# (LBA, length) of each layout, precompiled (the hot path: one unpack per CDB); each needs
# the layout's whole CDB length (LAYOUT_LENGTH) and raises on a shorter one.
_FIELDS_10 = struct.Struct(">2xIxHx").unpack_from
_FIELDS_12 = struct.Struct(">2xIIxx").unpack_from
_FIELDS_16 = struct.Struct(">2xQIxx").unpack_from
_FIELDS_CAW = struct.Struct(">2xQ3xBxx").unpack_from
_FIELDS_ATOMIC16 = struct.Struct(">2xQ2xHxx").unpack_from


def _fields_6(cdb: bytes | memoryview) -> tuple[int, int]:
    if len(cdb) < 6:
        raise IndexError("short CDB")
    return (cdb[1] & 0x1F) << 16 | cdb[2] << 8 | cdb[3], cdb[4] or 256


_FIELDS = {"6": _fields_6, "10": _FIELDS_10, "12": _FIELDS_12, "16": _FIELDS_16,
           "caw": _FIELDS_CAW, "atomic16": _FIELDS_ATOMIC16}
LAYOUT_LENGTH = {"6": 6, "10": 10, "12": 12, "16": 16, "caw": 16, "atomic16": 16}
TO_END = 1 << 62  # the length recorded for "through the last LBA"
_new = tuple.__new__


class BlockCdb(NamedTuple):
    layout: str     # a key of LAYOUT_LENGTH
    writes: bool    # changes the medium (or, for SYNCHRONIZE CACHE, makes writes durable)
    zero_is_all: bool  # a length of 0 means through the last LBA
    flags: dict[int, str]  # byte-1 bits worth naming in a trace
    atomic: bool = False  # all or nothing against every overlapping command
    fields: Callable[[bytes | memoryview], tuple[int, int]] = _fields_6  # (LBA, length)


def _layout(layout: str, writes: bool, zero_is_all: bool, flags: dict[int, str],
            atomic: bool = False) -> BlockCdb:
    return BlockCdb(layout, writes, zero_is_all, flags, atomic, _FIELDS[layout])


_RW = {0x08: "FUA", 0x10: "DPO"}
_BYTCHK = {0x02: "BYTCHK"}
_IMMED = {0x02: "IMMED"}

# The layouts the SBC-4 tables use (sbc.py), by name.
READ_6 = _layout("6", False, False, {})
WRITE_6 = _layout("6", True, False, {})
READ_10 = _layout("10", False, False, _RW)
WRITE_10 = _layout("10", True, False, _RW)
WRITE_VERIFY_10 = _layout("10", True, False, _BYTCHK)
VERIFY_10 = _layout("10", False, False, _BYTCHK)
PREFETCH_10 = _layout("10", False, True, _IMMED)
SYNC_10 = _layout("10", True, True, _IMMED)
WRITE_SAME_10 = _layout("10", True, True, {0x08: "UNMAP", 0x10: "ANCHOR"})
READ_12 = _layout("12", False, False, _RW)
WRITE_12 = _layout("12", True, False, _RW)
WRITE_VERIFY_12 = _layout("12", True, False, _BYTCHK)
VERIFY_12 = _layout("12", False, False, _BYTCHK)
READ_16 = _layout("16", False, False, _RW)
WRITE_16 = _layout("16", True, False, _RW)
WRITE_VERIFY_16 = _layout("16", True, False, _BYTCHK)
VERIFY_16 = _layout("16", False, False, _BYTCHK)
PREFETCH_16 = _layout("16", False, True, _IMMED)
SYNC_16 = _layout("16", True, True, _IMMED)
WRITE_SAME_16 = _layout("16", True, True, {0x08: "UNMAP", 0x10: "ANCHOR", 0x01: "NDOB"})
COMPARE_AND_WRITE = _layout("caw", True, False, _RW, True)
WRITE_ATOMIC_16 = _layout("atomic16", True, False, _RW, True)


class Extent(NamedTuple):
    lba: int
    blocks: int     # as the CDB says (0 stays 0; see end)
    writes: bool
    end: int        # one past the last block addressed (TO_END for "through the last LBA")
    atomic: bool = False


def decode(cdb: bytes | memoryview, entry: BlockCdb) -> Extent | None:
    """The block range of a CDB in the layout `entry`, or None when it is too short."""
    try:
        lba, length = entry.fields(cdb)
    except (struct.error, IndexError):
        return None
    end = TO_END if (length == 0 and entry.zero_is_all) else lba + length
    return _new(Extent, (lba, length, entry.writes, end, entry.atomic))


def of_task(task) -> Extent | None:
    """The block range decoded on arrival (task.lba, task.blocks), as an Extent."""
    lba = task.lba
    if lba is None:
        return None
    entry = task.command.block
    length = task.blocks
    end = TO_END if (length == 0 and entry.zero_is_all) else lba + length
    return _new(Extent, (lba, length, entry.writes, end, entry.atomic))


def flag_names(cdb: bytes | memoryview, entry: BlockCdb) -> list[str]:
    """The named byte-1 flags set in a block CDB (FUA, DPO, BYTCHK, UNMAP, ...)."""
    if len(cdb) < 2:
        return []
    return [name for bit, name in entry.flags.items() if cdb[1] & bit]
