"""CDB builders for the block commands that tools and tests send (SBC-4, SPC-4).

Rules:
- Each function returns the CDB bytes exactly as the clause lays them out; CONTROL is 0,
  GROUP NUMBER 0, no protection fields. Lengths are in logical blocks.
- READ/WRITE(10) (SBC-4 5.16, 5.38): LBA bytes 2-5, TRANSFER LENGTH 7-8.
  READ/WRITE(16) (5.17, 5.40): LBA 2-9, TRANSFER LENGTH 10-13.
  WRITE SAME(10)/(16) (5.44, 5.45): byte 1 bit 3 UNMAP, bit 0 (16 only) NDOB.
  UNMAP (5.30): PARAMETER LIST LENGTH bytes 7-8; the parameter list has an 8-byte header
  (UNMAP DATA LENGTH, BLOCK DESCRIPTOR DATA LENGTH) and 16-byte descriptors (LBA, NUMBER
  OF LOGICAL BLOCKS).
  COMPARE AND WRITE (5.3): LBA 2-9, NUMBER OF LOGICAL BLOCKS byte 13; Data-Out is the
  verify instance then the write instance.
  WRITE ATOMIC(16) (5.48): LBA 2-9, ATOMIC BOUNDARY 10-11, TRANSFER LENGTH 12-13.
  SYNCHRONIZE CACHE(10) (5.24): byte 1 bit 1 IMMED, LBA 2-5, NUMBER OF LOGICAL BLOCKS 7-8
  (0: to the end of the medium).
- MODE SENSE(10) (SPC-4 6.14) with DBD=1 for one page; control_mode_qam() reads QAM
  from the returned control mode page (SPC-4 7.5.8: byte 3 bits 7-4).
- MODE SELECT(10) (SPC-4 6.12): byte 1 PF (bit 4) and SP (bit 0), PARAMETER LIST LENGTH
  7-8. control_page_select() makes its parameter list from MODE SENSE(10) data holding
  the control mode page: an 8-byte mode parameter header with MODE DATA LENGTH 0 (reserved
  in MODE SELECT, 7.5.5), no block descriptors, the page with PS cleared; `tas` sets or
  clears TAS (byte 5 bit 6 of the page, 7.5.8).
- sense_key() reads the SENSE KEY of what comes back: fixed sense data (70h/71h) byte 2,
  descriptor sense data (72h/73h) byte 1 (SPC-4 4.5.2, 4.5.3).
"""

from __future__ import annotations

import struct

TEST_UNIT_READY = bytes(6)
CONTROL_PAGE = 0x0A


def read10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)


def write10(lba: int, blocks: int, fua: bool = False) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0x08 if fua else 0, lba, 0, blocks, 0)


def read16(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBQIBB", 0x88, 0, lba, blocks, 0, 0)


def write16(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBQIBB", 0x8A, 0, lba, blocks, 0, 0)


def write_same10(lba: int, blocks: int, unmap: bool = False) -> bytes:
    return struct.pack(">BBIBHB", 0x41, 0x08 if unmap else 0, lba, 0, blocks, 0)


def write_same16(lba: int, blocks: int, unmap: bool = False, ndob: bool = False) -> bytes:
    flags = (0x08 if unmap else 0) | (0x01 if ndob else 0)
    return struct.pack(">BBQIBB", 0x93, flags, lba, blocks, 0, 0)


def unmap(ranges: list[tuple[int, int]]) -> tuple[bytes, bytes]:
    """The UNMAP CDB and its parameter list for (lba, blocks) ranges."""
    descriptors = b"".join(struct.pack(">QI4x", lba, n) for lba, n in ranges)
    params = struct.pack(">HH4x", 6 + len(descriptors), len(descriptors)) + descriptors
    cdb = struct.pack(">BB4xBHB", 0x42, 0, 0, len(params), 0)
    return cdb, params


def synchronize_cache10(lba: int = 0, blocks: int = 0, immed: bool = False) -> bytes:
    return struct.pack(">BBIBHB", 0x35, 0x02 if immed else 0, lba, 0, blocks, 0)


def compare_and_write(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBQ3xBBB", 0x89, 0, lba, blocks, 0, 0)


def write_atomic16(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBQHHBB", 0x9C, 0, lba, 0, blocks, 0, 0)


def mode_sense10(page: int, allocation: int = 252) -> bytes:
    return struct.pack(">BBBBxxxHB", 0x5A, 0x08, page & 0x3F, 0, allocation, 0)


def mode_select10(length: int, save: bool = False) -> bytes:
    return struct.pack(">BB5xHB", 0x55, 0x10 | (0x01 if save else 0), length, 0)


def _control_page(mode_data: bytes) -> bytes:
    block_descriptors = struct.unpack_from(">H", mode_data, 6)[0]
    page = mode_data[8 + block_descriptors:]
    if len(page) < 12 or page[0] & 0x3F != CONTROL_PAGE or page[1] != 10:
        raise ValueError("no control mode page in the MODE SENSE data")
    return page[:12]


def control_page_select(mode_data: bytes, *, tas: bool) -> bytes:
    """The MODE SELECT(10) parameter list that sets the control page's TAS bit."""
    page = bytearray(_control_page(mode_data))
    page[0] &= 0x7F  # PS is reserved in MODE SELECT
    page[5] = (page[5] | 0x40) if tas else (page[5] & ~0x40)
    return bytes(8) + bytes(page)


def control_mode_tas(mode_data: bytes) -> bool:
    """TAS from MODE SENSE(10) data (DBD=1) holding the control mode page."""
    return bool(_control_page(mode_data)[5] & 0x40)


def control_mode_qam(mode_data: bytes) -> int:
    """QAM from MODE SENSE(10) data (DBD=1) holding the control mode page."""
    block_descriptors = struct.unpack_from(">H", mode_data, 6)[0]
    page = mode_data[8 + block_descriptors:]
    if len(page) < 4 or page[0] & 0x3F != CONTROL_PAGE:
        raise ValueError("no control mode page in the MODE SENSE data")
    return page[3] >> 4


def sense_key(sense: bytes) -> int | None:
    """SENSE KEY of fixed (70h/71h) or descriptor (72h/73h) sense data (SPC-4 4.5)."""
    if len(sense) < 3:
        return None
    if sense[0] & 0x7F in (0x72, 0x73):
        return sense[1] & 0x0F
    return sense[2] & 0x0F
