"""The SBC-4 VPD pages: block limits (B0h), block device characteristics (B1h) and logical
block provisioning (B2h), each returned whole, header included (SBC-4 6.6).

Rules:
- What the pages promise is what sbc.py enforces: MAXIMUM TRANSFER LENGTH
  (lu.max_transfer_blocks), MAXIMUM WRITE SAME LENGTH, MAXIMUM COMPARE AND WRITE LENGTH,
  the unmap limits (only on thin LUs), WSNZ=0 (a WRITE SAME of 0 blocks runs to the end).
- WRITE ATOMIC(16): atomic writes of up to MAXIMUM TRANSFER LENGTH, aligned to and in
  multiples of the physical block (lu.lbppb_exponent); no atomic boundaries.
- MAXIMUM WRITE SAME LENGTH is FFFFh blocks (the most WRITE SAME(10) can name), MAXIMUM
  UNMAP LBA COUNT 2^20 blocks per command; the optimal unmap (and transfer length)
  granularity is the physical block or 4 KiB, whichever is larger.
- Provisioning: a thin LU reports LBPU, LBPWS, LBPWS10 and LBPRZ with provisioning type
  thin (010b); a fully provisioned LU reports none of them (type 000b), and its WRITE SAME
  refuses the UNMAP bit, as libiscsi's WriteSame*.UnmapVPD tests check.
"""

from __future__ import annotations

import struct

MAX_TRANSFER_BYTES = 8 << 20  # per command; the block limits page says it in blocks
MAX_WRITE_SAME_BLOCKS = 0xFFFF  # what WRITE SAME(10) can ask for; (16) is held to it too
MAX_COMPARE_AND_WRITE = 255  # blocks
MAX_UNMAP_DESCRIPTORS = 256
MAX_UNMAP_BLOCKS = 1 << 20  # per UNMAP command, summed over its descriptors


def max_transfer_blocks(lu) -> int:
    return MAX_TRANSFER_BYTES // lu.block_size


def max_write_same_blocks(lu) -> int:
    return MAX_WRITE_SAME_BLOCKS


def max_unmap_blocks(lu) -> int:
    return MAX_UNMAP_BLOCKS


def lbppb(lu) -> int:
    """Logical blocks per physical block (SBC-4 5.20.2): the unit of unmapping."""
    return 1 << lu.lbppb_exponent


def max_atomic_blocks(lu) -> int:
    """MAXIMUM ATOMIC TRANSFER LENGTH: any transfer, in whole physical blocks."""
    return max_transfer_blocks(lu) - max_transfer_blocks(lu) % lbppb(lu)


def atomic_alignment(lu) -> int:
    return lbppb(lu)


def atomic_granularity(lu) -> int:
    return lbppb(lu)


def block_limits(lu) -> bytes:
    """Block Limits VPD page, B0h (SBC-4 6.6.4), 64 bytes."""
    unmap_lba = max_unmap_blocks(lu) if lu.thin else 0
    unmap_desc = MAX_UNMAP_DESCRIPTORS if lu.thin else 0
    granularity = max(lbppb(lu), 4096 // lu.block_size)
    return struct.pack(
        ">BBHBBHIIIIIIIQIIIII",
        0x00, 0xB0, 0x3C,
        0x00,  # WSNZ = 0
        MAX_COMPARE_AND_WRITE,
        granularity,  # OPTIMAL TRANSFER LENGTH GRANULARITY
        max_transfer_blocks(lu),  # MAXIMUM TRANSFER LENGTH
        (1 << 20) // lu.block_size,  # OPTIMAL TRANSFER LENGTH
        0,  # MAXIMUM PREFETCH LENGTH
        unmap_lba,  # MAXIMUM UNMAP LBA COUNT
        unmap_desc,  # MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT
        granularity if lu.thin else 0,  # OPTIMAL UNMAP GRANULARITY
        0,  # UGAVALID / UNMAP GRANULARITY ALIGNMENT
        max_write_same_blocks(lu),  # MAXIMUM WRITE SAME LENGTH
        max_atomic_blocks(lu),  # MAXIMUM ATOMIC TRANSFER LENGTH (WRITE ATOMIC(16))
        atomic_alignment(lu),  # ATOMIC ALIGNMENT
        atomic_granularity(lu),  # ATOMIC TRANSFER LENGTH GRANULARITY
        0, 0,  # no atomic boundaries (MAXIMUM ATOMIC BOUNDARY SIZE 0)
    )


def block_device_characteristics(lu) -> bytes:
    """Block Device Characteristics VPD page, B1h (SBC-4 6.6.2): MEDIUM ROTATION RATE is the
    LU's (its rotational model's rpm, or 0001h, a non-rotating medium).
    WABEREQ = WACEREQ = 01b: after a sanitize block erase or cryptographic erase a read
    completes with GOOD status (the LBAs are deallocated and read as zeros; sanitize.py)."""
    rate = lu.rotation_rate  # 0001h: non-rotating; else rpm (SBC-4 6.6.2, table 237)
    wabereq, wacereq = 0b01, 0b01
    return struct.pack(">BBHHBB56x", 0x00, 0xB1, 0x3C, rate, 0, wabereq << 6 | wacereq << 4)


def logical_block_provisioning(lu) -> bytes:
    """Logical Block Provisioning VPD page, B2h (SBC-4 6.6.6)."""
    if lu.thin:
        flags = 0x80 | 0x40 | 0x20 | 0x04  # LBPU, LBPWS, LBPWS10, LBPRZ
        ptype = 0x02  # thin provisioned
    else:
        flags, ptype = 0, 0
    return struct.pack(">BBHBBBB", 0x00, 0xB2, 0x04, 0, flags, ptype, 0)
