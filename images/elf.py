# Minimal ELF64 reader for building guest images: what a binary needs at run time.
#
# Rules:
# - Reads only little-endian ELF64 (x86-64 guests); anything else raises ElfError.
# - Answers three questions and nothing more: the shared libraries a binary names
#   (DT_NEEDED, from the SHT_DYNAMIC section and its linked string table), its program
#   interpreter (PT_INTERP), and the key=value pairs of a kernel module's .modinfo
#   section (what modinfo(8) prints: name, depends, softdep, ...).
# - Pure parsing of bytes: no subprocesses, no host tools, so image builds do not depend
#   on binutils or kmod being installed.
# Layouts: System V ABI, "ELF-64 Object File Format" (header, program and section headers,
# dynamic section); Linux include/linux/moduleparam.h for .modinfo.

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

ELF_MAGIC = b"\x7fELF"
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_DYN = struct.Struct("<qQ")

PT_INTERP = 3
SHT_DYNAMIC = 6
DT_NULL = 0
DT_NEEDED = 1


class ElfError(ValueError):
    """The file is not an ELF64 little-endian object this reader understands."""


@dataclass(frozen=True)
class Section:
    name: str
    type: int
    offset: int
    size: int
    link: int


def is_elf(path: Path) -> bool:
    """True if the file starts with the ELF magic."""
    with open(path, "rb") as f:
        return f.read(4) == ELF_MAGIC


def _header(data: bytes) -> tuple:
    if len(data) < _EHDR.size or data[:4] != ELF_MAGIC:
        raise ElfError("not an ELF file")
    ident = data[:16]
    if ident[4] != 2 or ident[5] != 1:
        raise ElfError("not ELF64 little-endian")
    return _EHDR.unpack_from(data, 0)


def _cstr(data: bytes, offset: int) -> str:
    end = data.index(b"\0", offset)
    return data[offset:end].decode("utf-8", "replace")


def sections(data: bytes) -> list[Section]:
    """All section headers, named through the section-name string table."""
    h = _header(data)
    shoff, shentsize, shnum, shstrndx = h[6], h[11], h[12], h[13]
    raw = [_SHDR.unpack_from(data, shoff + i * shentsize) for i in range(shnum)]
    if not raw:
        return []
    strtab_off = raw[shstrndx][4]
    return [Section(_cstr(data, strtab_off + s[0]), s[1], s[4], s[5], s[6]) for s in raw]


def interpreter(data: bytes) -> str | None:
    """The PT_INTERP path (the dynamic loader), or None for a static binary."""
    h = _header(data)
    phoff, phentsize, phnum = h[5], h[9], h[10]
    for i in range(phnum):
        p_type, _flags, p_offset, *_rest = _PHDR.unpack_from(data, phoff + i * phentsize)
        if p_type == PT_INTERP:
            return _cstr(data, p_offset)
    return None


def needed(data: bytes) -> list[str]:
    """The DT_NEEDED sonames, in the order the binary lists them."""
    secs = sections(data)
    out: list[str] = []
    for sec in secs:
        if sec.type != SHT_DYNAMIC:
            continue
        strtab = secs[sec.link]
        for off in range(sec.offset, sec.offset + sec.size, _DYN.size):
            tag, val = _DYN.unpack_from(data, off)
            if tag == DT_NULL:
                break
            if tag == DT_NEEDED:
                out.append(_cstr(data, strtab.offset + val))
    return out


def modinfo(data: bytes) -> dict[str, list[str]]:
    """The .modinfo key=value strings of a kernel module; a key may repeat (alias, softdep)."""
    info: dict[str, list[str]] = {}
    for sec in sections(data):
        if sec.name != ".modinfo":
            continue
        for item in data[sec.offset:sec.offset + sec.size].split(b"\0"):
            key, sep, value = item.decode("utf-8", "replace").partition("=")
            if sep:
                info.setdefault(key, []).append(value)
    return info
