"""LZJB as illumos crash dumps use it: usr/src/uts/common/os/compress.c.

Format (the item stream; written here from the algorithm the source's comment describes):
- A copy map byte precedes every 8 items; bit N (LSB first) set means item N is a copy.
- A literal item is one byte. A copy item is two bytes: byte0 = (length - 3) << 2 |
  offset >> 8, byte1 = offset & 0xff (MATCH_BITS 6, MATCH_MIN 3, so lengths 3..66;
  offsets 1..1023, OFFSET_MASK 0x3ff). A copy may overlap its own output (memmove-like
  in the forward direction, byte by byte).
- The dump variant (compress.c, unlike ZFS's lzjb.c) stores a block that does not
  shrink as-is: compress() copies the source and returns s_len when its output would
  come within 1 + 2*NBBY bytes of s_len, and decompress() copies the source when
  s_len >= d_len. Hence a page whose compressed size equals the page size is raw.
- The compressor: a 256-entry history of 16-bit positions hashed from the next three
  bytes ((b0 + 13) ^ (b1 - 13) ^ b2) & 255; a match needs its three bytes equal and its
  offset in range; the last MATCH_MAX bytes are always literals. Any history contents
  decode the same (illumos leaves it uninitialised), so our output need not be
  byte-identical to the kernel's; a decoder is what has to agree.

Rules: decompress() never reads past the source nor writes past d_len; corrupt input
(an offset reaching before the start, or offset 0, which compress() never produces)
ends decoding early, and the short result is the caller's to report, as savecore checks
`dsize != pagesize`.
"""

from __future__ import annotations

MATCH_BITS = 6
MATCH_MIN = 3
MATCH_MAX = (1 << MATCH_BITS) + MATCH_MIN - 1     # 66
OFFSET_MASK = (1 << (16 - MATCH_BITS)) - 1        # 1023
LEMPEL_SIZE = 256
NBBY = 8


def compress(src: bytes) -> bytes:
    """The LZJB encoding of `src`, or `src` itself when it does not shrink."""
    s_len = len(src)
    limit = s_len - 1 - 2 * NBBY
    last_match = s_len - MATCH_MAX
    lempel = [0] * LEMPEL_SIZE
    dst = bytearray()
    copymap = 0
    copymask = 1 << (NBBY - 1)
    i = 0
    while i < s_len:
        copymask <<= 1
        if copymask == 1 << NBBY:
            if len(dst) >= limit:
                return bytes(src)
            copymask = 1
            copymap = len(dst)
            dst.append(0)
        if i > last_match:
            dst.append(src[i])
            i += 1
            continue
        b0, b1, b2 = src[i], src[i + 1], src[i + 2]
        h = ((b0 + 13) ^ (b1 - 13) ^ b2) & (LEMPEL_SIZE - 1)
        offset = (i - lempel[h]) & OFFSET_MASK
        lempel[h] = i & 0xFFFF
        j = i - offset
        if j >= 0 and offset and src[j] == b0 and src[j + 1] == b1 and src[j + 2] == b2:
            dst[copymap] |= copymask
            mlen = MATCH_MIN
            while mlen < MATCH_MAX and src[i + mlen] == src[j + mlen]:
                mlen += 1
            dst.append(((mlen - MATCH_MIN) << (NBBY - MATCH_BITS)) | (offset >> NBBY))
            dst.append(offset & 0xFF)
            i += mlen
        else:
            dst.append(b0)
            i += 1
    return bytes(dst)


def decompress(src: bytes, d_len: int) -> bytes:
    """Up to `d_len` bytes decoded from `src` (fewer when `src` is corrupt or short)."""
    s_len = len(src)
    if s_len >= d_len:
        return bytes(src[:d_len])
    out = bytearray()
    i = 0
    copymap = 0
    copymask = 1 << (NBBY - 1)
    while i < s_len and len(out) < d_len:
        copymask <<= 1
        if copymask == 1 << NBBY:
            copymask = 1
            copymap = src[i]
            i += 1
            if i >= s_len:
                break
        if copymap & copymask:
            if i + 1 >= s_len:
                break
            mlen = (src[i] >> (NBBY - MATCH_BITS)) + MATCH_MIN
            offset = ((src[i] << NBBY) | src[i + 1]) & OFFSET_MASK
            i += 2
            start = len(out) - offset
            if offset == 0 or start < 0:
                break
            mlen = min(mlen, d_len - len(out))
            if offset >= mlen:
                out += out[start:start + mlen]
            else:
                for k in range(mlen):
                    out.append(out[start + k])
        else:
            out.append(src[i])
            i += 1
    return bytes(out)
