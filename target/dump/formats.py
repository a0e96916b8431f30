"""Readers of what Linux guests dump; identify() and scan() for every format.

Formats (layouts as the named headers define them; construct for every header):
- ELF vmcore (/proc/vmcore, makedumpfile -E): ELF64 header, program headers, PT_NOTE
  segments; the "VMCOREINFO" note holds KEY=value lines (OSRELEASE, PAGESIZE, CRASHTIME).
- makedumpfile flattened (-F), makedumpfile.h: a 4 KiB header, signature "makedumpfile"
  in char[16], then int64 type and version (big-endian); then records, each a
  `makedumpfile_data_header` {int64 offset; int64 buf_size} big-endian and buf_size bytes
  for that offset of the output file, ended by offset = buf_size = -1
  (END_FLAG_FLAT_HEADER). reassemble_flattened() writes the file the records describe,
  as `makedumpfile -R` does, streaming. A record that ends beyond MAX_FLAT_END (2^52: the
  x86-64 physical address space, more than any dump of it holds) is refused, as is one
  the output file cannot be seeked to or grown to (a file system's size limit).
- kdump-compressed, diskdump_mod.h: `struct disk_dump_header` (signature "KDUMP   ",
  header_version, new_utsname of six 65-byte strings, timestamp, status, block_size,
  sub_hdr_size, bitmap_blocks, max_mapnr, ...) in the first block, `kdump_sub_header`
  (phys_base, dump_level, split, start_pfn, end_pfn, offset_vmcoreinfo, size_vmcoreinfo,
  offset_note, size_note, ...) in the next; little-endian on x86-64.

illumos dumps (sys/dumphdr.h, compressed as dumpsys() writes them) are target.dump.illumos;
scan() finds them where savecore looks.

Every reader raises DumpFormatError naming the format, the field and the offset; it and
DumpSummary live in target.dump.common (shared with the illumos reader), imported here.
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass, field
from typing import BinaryIO

from construct import (
    Const,
    ConstructError,
    Int32sl,
    Int32ul,
    Int64sb,
    Int64sl,
    Int64ul,
    Padding,
    Struct,
)

from target.dump import illumos
from target.dump.common import DumpFormatError, DumpSummary, cstr

FLAT_HEADER_SIZE = 4096
FLAT_SIGNATURE = b"makedumpfile"
KDUMP_SIGNATURE = b"KDUMP   "
CHUNK = 1 << 20
MAX_FLAT_END = 1 << 52
MAX_NOTES = 1 << 24  # a PT_NOTE's largest size read (VMCOREINFO and the CPUs' notes: KiBs)


FLAT_HEADER = Struct("signature" / cstr(16), "type" / Int64sb, "version" / Int64sb)
FLAT_RECORD = struct.Struct(">qq")

NEW_UTSNAME = Struct(*(n / cstr(65) for n in ("sysname", "nodename", "release", "version",
                                                "machine", "domainname")))
DISK_DUMP_HEADER = Struct(
    "signature" / Const(KDUMP_SIGNATURE), "header_version" / Int32sl,
    "utsname" / NEW_UTSNAME, Padding(6),           # 12 + 390 = 402, timeval at 408
    "tv_sec" / Int64sl, "tv_usec" / Int64sl,
    "status" / Int32ul, "block_size" / Int32sl, "sub_hdr_size" / Int32sl,
    "bitmap_blocks" / Int32ul, "max_mapnr" / Int32ul, "total_ram_blocks" / Int32ul,
    "device_blocks" / Int32ul, "written_blocks" / Int32ul, "current_cpu" / Int32ul,
    "nr_cpus" / Int32sl,
)
KDUMP_SUB_HEADER = Struct(
    "phys_base" / Int64ul, "dump_level" / Int32sl, "split" / Int32sl,
    "start_pfn" / Int64ul, "end_pfn" / Int64ul, "offset_vmcoreinfo" / Int64sl,
    "size_vmcoreinfo" / Int64ul, "offset_note" / Int64sl, "size_note" / Int64ul,
)


# --- data classes ------------------------------------------------------------------------

@dataclass
class ElfVmcore:
    vmcoreinfo: dict[str, str]
    loads: list[tuple[int, int, int]] = field(default_factory=list)  # (paddr, offset, size)

    @property
    def release(self) -> str | None:
        return self.vmcoreinfo.get("OSRELEASE")


@dataclass
class KdumpCompressed:
    release: str
    nodename: str
    machine: str
    timestamp: int
    block_size: int
    dump_level: int
    max_mapnr: int
    vmcoreinfo: dict[str, str]


# --- ELF ---------------------------------------------------------------------------------

def _decimal(value: str | None) -> int | None:
    """A VMCOREINFO number (PAGESIZE, CRASHTIME: ASCII decimal, as the kernel's
    VMCOREINFO_NUMBER/PAGESIZE print them); None when absent or not a number (the note is
    the crashed kernel's: the summary says unknown rather than failing)."""
    if value and value.isascii() and value.isdigit():
        return int(value)
    return None


def parse_vmcoreinfo(text: bytes) -> dict[str, str]:
    info = {}
    for line in text.decode("latin-1").splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            info[k] = v.rstrip("\0")
    return info


def parse_elf(f: BinaryIO) -> ElfVmcore:
    """Every offset and size the headers give is checked against the image's end before
    it is read (a PT_NOTE also against MAX_NOTES), so a corrupt header is a
    DumpFormatError and never a read of what is not there."""
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    eh = f.read(64)
    if eh[:4] != b"\x7fELF":
        raise DumpFormatError("ELF vmcore at 0: no ELF magic")
    if len(eh) < 64:
        raise DumpFormatError(f"ELF vmcore at 0: ELF header truncated ({len(eh)} of 64 bytes)")
    if eh[4] != 2 or eh[5] != 1:
        raise DumpFormatError("ELF vmcore at 4: only ELF64 little-endian is read")
    e_type, = struct.unpack_from("<H", eh, 16)
    if e_type != 4:
        raise DumpFormatError(f"ELF vmcore at 16: e_type {e_type} is not ET_CORE (4)")
    phoff, = struct.unpack_from("<Q", eh, 32)
    phentsize, phnum = struct.unpack_from("<HH", eh, 54)
    if phnum and (phentsize < 56 or phoff + phnum * phentsize > size):
        raise DumpFormatError(f"ELF vmcore at 32: {phnum} program headers of {phentsize} "
                              f"bytes at {phoff} do not fit the {size}-byte image")
    info: dict[str, str] = {}
    loads = []
    for i in range(phnum):
        f.seek(phoff + i * phentsize)
        ph = f.read(56)
        p_type, _flags, p_offset, _vaddr, p_paddr, p_filesz = struct.unpack_from("<IIQQQQ", ph)
        if p_type == 1:
            loads.append((p_paddr, p_offset, p_filesz))
        elif p_type == 4:
            if p_filesz > MAX_NOTES or p_offset + p_filesz > size:
                raise DumpFormatError(f"ELF vmcore at {phoff + i * phentsize}: PT_NOTE of "
                                      f"{p_filesz} bytes at {p_offset} does not fit the "
                                      f"{size}-byte image (or is over {MAX_NOTES})")
            f.seek(p_offset)
            notes = f.read(p_filesz)
            info.update(_vmcoreinfo_in_notes(notes, p_offset))
    return ElfVmcore(info, loads)


def _vmcoreinfo_in_notes(notes: bytes, base: int) -> dict[str, str]:
    pos = 0
    while pos + 12 <= len(notes):
        namesz, descsz, _type = struct.unpack_from("<III", notes, pos)
        name = notes[pos + 12:pos + 12 + namesz].rstrip(b"\0")
        desc_at = pos + 12 + (-(-namesz // 4) * 4)
        if desc_at + descsz > len(notes):
            raise DumpFormatError(f"ELF vmcore at {base + pos}: note runs past its segment")
        if name == b"VMCOREINFO":
            return parse_vmcoreinfo(notes[desc_at:desc_at + descsz])
        pos = desc_at + (-(-descsz // 4) * 4)
    return {}


# --- makedumpfile flattened -------------------------------------------------------------

def is_flattened(head: bytes) -> bool:
    return head[:16].rstrip(b"\0") == FLAT_SIGNATURE


def flattened_records(f: BinaryIO, start: int = 0):
    """Yield (output offset, size, position of the data in f) of each record; the last
    value yielded is (None, 0, end of the stream)."""
    f.seek(start)
    head = f.read(FLAT_HEADER_SIZE)
    if len(head) < FLAT_HEADER_SIZE or not is_flattened(head):
        raise DumpFormatError(f"flattened dump at {start}: no \"makedumpfile\" signature")
    pos = start + FLAT_HEADER_SIZE
    while True:
        f.seek(pos)
        raw = f.read(FLAT_RECORD.size)
        if len(raw) < FLAT_RECORD.size:
            raise DumpFormatError(f"flattened dump at {pos}: ends without the end marker")
        offset, size = FLAT_RECORD.unpack(raw)
        pos += FLAT_RECORD.size
        if offset == -1 and size == -1:
            yield None, 0, pos
            return
        if offset < 0 or not 0 <= size <= 1 << 32 or offset + size > MAX_FLAT_END:
            raise DumpFormatError(f"flattened dump at {pos - 16}: record offset {offset} "
                                  f"size {size}")
        yield offset, size, pos
        pos += size


def flattened_length(f: BinaryIO, start: int = 0) -> int:
    """Bytes the flattened stream at `start` occupies (header to end marker)."""
    for offset, _size, pos in flattened_records(f, start):
        if offset is None:
            return pos - start
    raise AssertionError("unreachable")


def reassemble_flattened(src: BinaryIO, dst: BinaryIO, start: int = 0) -> int:
    """Write the file the records describe (`makedumpfile -R`); returns its size."""
    end = 0
    for offset, size, pos in flattened_records(src, start):
        if offset is None:
            break
        src.seek(pos)
        left = size
        try:
            dst.seek(offset)
            while left:
                chunk = src.read(min(left, CHUNK))
                if not chunk:
                    raise DumpFormatError(f"flattened dump at {pos}: record data truncated")
                dst.write(chunk)
                left -= len(chunk)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EFBIG):
                raise  # the destination's own I/O error (ENOSPC, EIO), not the dump's
            raise DumpFormatError(f"flattened dump at {pos - 16}: record offset {offset} "
                                  f"size {size}: the output cannot hold it "
                                  f"({exc.strerror})") from None
        end = max(end, offset + size)
    dst.truncate(end)
    dst.flush()
    return end


# --- kdump-compressed --------------------------------------------------------------------

def parse_kdump(f: BinaryIO) -> KdumpCompressed:
    f.seek(0)
    raw = f.read(DISK_DUMP_HEADER.sizeof())
    try:
        h = DISK_DUMP_HEADER.parse(raw)
    except ConstructError as exc:
        raise DumpFormatError(f"kdump-compressed at 0: {exc}") from None
    if not 512 <= h.block_size <= 1 << 20 or h.block_size & (h.block_size - 1):
        raise DumpFormatError(f"kdump-compressed at 428: block_size {h.block_size}")
    f.seek(h.block_size)
    sub = KDUMP_SUB_HEADER.parse(f.read(KDUMP_SUB_HEADER.sizeof()).ljust(
        KDUMP_SUB_HEADER.sizeof(), b"\0"))
    info: dict[str, str] = {}
    if sub.offset_vmcoreinfo > 0 and 0 < sub.size_vmcoreinfo < 1 << 20:
        f.seek(sub.offset_vmcoreinfo)
        info = parse_vmcoreinfo(f.read(sub.size_vmcoreinfo))
    return KdumpCompressed(h.utsname.release, h.utsname.nodename, h.utsname.machine,
                           h.tv_sec, h.block_size, sub.dump_level, h.max_mapnr, info)


# --- identify and summarise --------------------------------------------------------------

def identify(f: BinaryIO, start: int = 0) -> str:
    """"flattened", "kdump", "elf", or "unknown" for what begins at `start`."""
    f.seek(start)
    head = f.read(16)
    if is_flattened(head):
        return "flattened"
    if head[:8] == KDUMP_SIGNATURE:
        return "kdump"
    if head[:4] == b"\x7fELF":
        return "elf"
    return "unknown"


def summarize_file(f: BinaryIO, size: int) -> DumpSummary:
    """A dump that begins at offset 0 of f (ELF or kdump-compressed)."""
    kind = identify(f)
    if kind == "kdump":
        k = parse_kdump(f)
        return DumpSummary("linux", "kdump", k.release, None, size, k.timestamp,
                           _decimal(k.vmcoreinfo.get("PAGESIZE")) or None,
                           details={"dump_level": k.dump_level, "nodename": k.nodename,
                                    "machine": k.machine, "block_size": k.block_size,
                                    "vmcoreinfo_release": k.vmcoreinfo.get("OSRELEASE")})
    if kind == "elf":
        e = parse_elf(f)
        crash = e.vmcoreinfo.get("CRASHTIME")
        return DumpSummary("linux", "elf", e.release, None, size,
                           _decimal(crash), _decimal(e.vmcoreinfo.get("PAGESIZE")) or None,
                           details={"loads": len(e.loads)})
    raise DumpFormatError(f"not a dump this reads (format {kind})")


def scan(f: BinaryIO, size: int, step: int = 1 << 20) -> list[tuple[int, str]]:
    """Where dumps begin on a device or image: the illumos header position, then every
    `step` bytes a flattened, kdump-compressed or ELF signature."""
    found: list[tuple[int, str]] = []
    if size >= 2 * illumos.DUMP_OFFSET:
        pos = illumos.header_position(size)
        f.seek(pos)
        if struct.unpack("<I", f.read(4).ljust(4, b"\0"))[0] == illumos.DUMP_MAGIC:
            found.append((pos, "illumos"))
    for offset in range(0, size, step):
        kind = identify(f, offset)
        if kind != "unknown":
            found.append((offset, kind))
    return found


def file_size(f: BinaryIO) -> int:
    return f.seek(0, os.SEEK_END)
