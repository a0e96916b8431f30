"""Dump format readers (target.dump.formats) and scan(), on dumps built here; the illumos
format itself is tests/unit/test_dump_illumos.py.

Real dumps are checked too: the kdump guest tests reassemble and summarise the vmcore a
Linux capture kernel wrote (tests/guest/test_linux_kdump.py).
"""

from __future__ import annotations

import io
import struct

import pytest

from target.dump import formats as F
from target.dump import illumos as ILL

pytestmark = pytest.mark.unit

SIZE = 16 << 20


def test_scan_finds_an_illumos_dump_where_savecore_looks():
    """savecore.c read_dumphdr(): the terminal header at P2ALIGN(size - DUMP_OFFSET,
    DUMP_OFFSET); scan() reports it there, on an unaligned device size too."""
    dev = io.BytesIO(bytes(SIZE + 1234))
    pages = bytes(range(256)) * 48  # 3 pages
    d = ILL.write_illumos_dump(dev, SIZE + 1234, pages, panic="zfs: allocating allocated "
                               "segment", nodename="omnios", crashtime=1_700_000_000)
    assert d.header_offset == SIZE - ILL.DUMP_OFFSET
    assert F.scan(dev, SIZE + 1234) == [(SIZE - ILL.DUMP_OFFSET, "illumos")]
    assert F.scan(io.BytesIO(bytes(SIZE)), SIZE) == []
    assert F.identify(dev, 0) == "unknown"


def elf_vmcore(info: bytes) -> bytes:
    """ELF64 ET_CORE with one PT_NOTE (a VMCOREINFO note) and one PT_LOAD."""
    name = b"VMCOREINFO\0"
    note = struct.pack("<III", len(name), len(info), 0) + name.ljust(12, b"\0") + \
        info.ljust(-(-len(info) // 4) * 4, b"\0")
    phoff, phnum = 64, 2
    note_off = phoff + 56 * phnum
    load_off = note_off + len(note)
    eh = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + struct.pack(
        "<HHIQQQIHHHHHH", 4, 62, 1, 0, phoff, 0, 0, 64, 56, phnum, 0, 0, 0)
    ph_note = struct.pack("<IIQQQQQQ", 4, 0, note_off, 0, 0, len(note), len(note), 0)
    ph_load = struct.pack("<IIQQQQQQ", 1, 7, load_off, 0xFFFF880000000000, 0x1000, 4096,
                          4096, 0)
    return eh + ph_note + ph_load + note + bytes(4096)


def test_elf_vmcoreinfo():
    data = elf_vmcore(b"OSRELEASE=6.1.0-test\nPAGESIZE=4096\nCRASHTIME=1700000001\n")
    f = io.BytesIO(data)
    assert F.identify(f) == "elf"
    e = F.parse_elf(f)
    assert e.release == "6.1.0-test" and e.loads == [(0x1000, len(data) - 4096, 4096)]
    s = F.summarize_file(f, len(data))
    assert (s.os, s.format, s.crashtime, s.pagesize) == ("linux", "elf", 1700000001, 4096)
    with pytest.raises(F.DumpFormatError, match="ET_CORE"):
        F.parse_elf(io.BytesIO(data[:16] + b"\x02\x00" + data[18:]))


def flattened(pieces: list[tuple[int, bytes]]) -> bytes:
    head = F.FLAT_SIGNATURE.ljust(16, b"\0") + struct.pack(">qq", 1, 1)
    out = head.ljust(F.FLAT_HEADER_SIZE, b"\0")
    for offset, data in pieces:
        out += struct.pack(">qq", offset, len(data)) + data
    return out + struct.pack(">qq", -1, -1)


def test_flattened_reassembles_records_out_of_order():
    """makedumpfile.h: records of (offset, size) big-endian, any order, then (-1, -1)."""
    stream = flattened([(8192, b"C" * 100), (0, b"A" * 4096), (4096, b"B" * 4096)])
    src = io.BytesIO(b"junk" * 10 + stream + b"trailing")
    assert F.flattened_length(src, 40) == len(stream)
    dst = io.BytesIO()
    assert F.reassemble_flattened(src, dst, 40) == 8292
    assert dst.getvalue() == b"A" * 4096 + b"B" * 4096 + b"C" * 100
    with pytest.raises(F.DumpFormatError, match="without the end marker"):
        F.flattened_length(io.BytesIO(stream[:-16]))


def kdump_compressed(release: str, info: bytes) -> bytes:
    uts = b"".join(v.encode().ljust(65, b"\0") for v in
                   ("Linux", "guest", release, "#1 SMP", "x86_64", "(none)"))
    hdr = b"KDUMP   " + struct.pack("<i", 6) + uts + bytes(6) + struct.pack(
        "<qqIiiIIIIIIi", 1700000002, 0, 0, 4096, 1, 1, 1 << 17, 1 << 17, 0, 0, 0, 1)
    sub = struct.pack("<QiiQQqQqQ", 0, 31, 0, 0, 1 << 17, 8192, len(info), 0, 0)
    return hdr.ljust(4096, b"\0") + sub.ljust(4096, b"\0") + info.ljust(4096, b"\0")


def test_kdump_compressed_header_and_vmcoreinfo():
    """diskdump_mod.h: disk_dump_header in block 0, kdump_sub_header in block 1."""
    data = kdump_compressed("6.1.0-56-amd64", b"OSRELEASE=6.1.0-56-amd64\nPAGESIZE=4096\n")
    f = io.BytesIO(data)
    k = F.parse_kdump(f)
    assert (k.release, k.block_size, k.dump_level, k.timestamp) == (
        "6.1.0-56-amd64", 4096, 31, 1700000002)
    assert k.vmcoreinfo["OSRELEASE"] == "6.1.0-56-amd64"
    bad = bytearray(data)
    bad[428:432] = struct.pack("<i", 1000)
    with pytest.raises(F.DumpFormatError, match="block_size"):
        F.parse_kdump(io.BytesIO(bytes(bad)))


def test_scan_finds_dumps_at_mib_boundaries():
    image = bytearray(8 << 20)
    stream = flattened([(0, kdump_compressed("6.1.0-x", b"OSRELEASE=6.1.0-x\n"))])
    image[3 << 20:(3 << 20) + len(stream)] = stream
    assert F.scan(io.BytesIO(bytes(image)), len(image)) == [(3 << 20, "flattened")]
