"""illumos crash dumps as the kernel writes them and savecore(8) reads them.

Sources (illumos-gate, read as the layout and algorithm; no code copied):
- usr/src/uts/common/sys/dumphdr.h: dumphdr_t, the dump_flags (DF_VALID 1, DF_COMPLETE 2,
  DF_LIVE 4, DF_COMPRESSED 8; content DF_KERNEL 0x10000, DF_ALL 0x20000, DF_CURPROC
  0x40000), dump_map_t and DUMP_HASH, the dumpcsize_t word (tag in bits 20..31, size in
  bits 0..19: tag 1..4095 a stream block, tag 0 with size 1..pagesize one lzjb page, 0 the
  end of data), dumpstreamhdr_t ("StrmHdr", first page number, page count), dumpdatahdr_t
  (magic 'dhdr', version 1, dump_data_csize, dump_maxcsize, dump_maxrange, dump_nstreams,
  dump_clevel 0 serial lzjb / 1 parallel lzjb / 2 bzip2).
- usr/src/uts/common/os/dumpsubr.c, dumpsys(): dump_start = DUMP_OFFSET (64 KiB) on a
  dedicated device; the symbol table at dump_start + PAGESIZE (dump_ksyms_size ==
  dump_ksyms_csize: no longer compressed), then the translation data (dump_nvtop
  mem_vtop_t {as, va, pfn}) at dump_map, the pfn table (dump_npages pfn_t, ascending) at
  dump_pfn, the compressed pages at dump_data, each section starting on a page boundary
  (dumpvp_flush()). Pages go in ranges of at most CBUF_MAPSIZE (4 MiB) of pfns; serially
  as <csize, lzjb data> per page (dumpsys_lzjb_page()), or by helpers into stream blocks
  of at most CBUF_SIZE (128 KiB) with the helper's tag: a stream header per range, then
  <csize, lzjb data> per page (dumpsys_lzjbrun()) or, for bzip2, one bzip2 stream (level
  dump_bzip2_level = 1) of stream headers and raw pages cut into blocks
  (dumpsys_bzrun()). A zero word ends the data; then the initial header at dump_start,
  the terminal one at dumpvp_size - DUMP_OFFSET (dumpvp_size = size & -DUMP_OFFSET),
  followed by the data header.
- usr/src/cmd/savecore/savecore.c: read_dumphdr() (the checks of read_dump() below, in
  its order), copy_crashfile() (vmdump.N: write_vmdump()), build_corefile(),
  build_dump_map() and decompress_pages() (unix.N and vmcore.N: write_vmcore()),
  getbounds() and the `bounds` file (next_bounds()).
- usr/src/uts/common/os/compress.c: the lzjb variant (target.dump.lzjb).

Layouts: every struct is described once as (field, C type) and laid out for the ABI of
the dump's dump_wordsize: 64 = amd64 LP64, 32 = i386 ILP32 (long, ulong, size_t, time_t,
pointers 4 bytes; offset_t and uint64_t 8 bytes aligned to 4). Little-endian only (x86).

Rules:
- Validation is read_dumphdr()'s: the terminal header's magic; DF_VALID clear is a
  warning here (savecore stops with "dump already processed" unless -d; this is a
  read-only inspector); dump_version must be DUMP_VERSION; dump_wordsize 32 or 64 (savecore
  accepts only its own); a data header with the magic must be version 1, one without
  is zeroed with maxcsize = pagesize (old kernels); the initial header must equal the
  terminal one with DF_VALID masked out ("initial dump header corrupt"). A dump without
  DF_COMPLETE is a warning ("incomplete dump on dump device"), not a refusal. Every
  error is a DumpFormatError naming the field and its offset.
- Reading streams: iter_pages() yields the pages record by record (one stream block, one
  page at a time; bzip2 with a bounded output size), so a dump never sits in memory.
  The pfn table and the dump map are held as savecore holds them (8 and 40 bytes per
  page on amd64), the pages never.
- vmcore.N is written as build_corefile() writes it, except that it is extended to its
  full length (zero pages are skipped, as savecore skips them, leaving holes; savecore
  leaves the file short when the last pages are zero).
- The writer omits what savecore does not need to lay out the dump: no log, ereport or
  summary save areas (the limit is the terminal header less DUMP_LOGSIZE), no metrics,
  a caller-supplied (default: placeholder) symbol table instead of ksyms_snapshot().
"""

from __future__ import annotations

import bz2
import os
import struct
from array import array
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Generic, NamedTuple, TypeVar

from construct import Container, Int16ul, Int32sl, Int32ul, Int64sl, Int64ul, Padding, Struct

from target.dump import lzjb
from target.dump.common import DumpFormatError, DumpSummary, cstr

DUMP_MAGIC = 0xDEFEC8ED
DUMP_VERSION = 10
DUMP_OFFSET = 64 << 10
DUMP_PANICSIZE = 200
DUMP_LOGSIZE = 2 * 1048576                     # 2 * LOG_HIWAT (sys/log.h)
DF_VALID, DF_COMPLETE, DF_LIVE, DF_COMPRESSED = 0x1, 0x2, 0x4, 0x8
DF_KERNEL, DF_ALL, DF_CURPROC = 0x10000, 0x20000, 0x40000
SYS_NMLN = 257
DUMP_MAX_TAG = 0xFFF
DUMP_MAX_CSIZE = 0xFFFFF
DUMP_STREAM_MAGIC = b"StrmHdr\0"
DUMP_DATAHDR_MAGIC = (ord("d") << 24) | (ord("h") << 16) | (ord("d") << 8) | ord("r")
DUMP_DATAHDR_VERSION = 1
DUMP_CLEVEL_SERIAL, DUMP_CLEVEL_LZJB, DUMP_CLEVEL_BZIP2 = 0, 1, 2
CBUF_SIZE = 1 << 17
CBUF_MAPSIZE = 1 << 22
CHUNK = 1 << 20
CSIZE = struct.Struct("<I")                    # dumpcsize_t

# --- C layouts ---------------------------------------------------------------------------

# C type -> (size, alignment, construct) per dump_wordsize
_ABI = {
    64: {"uint16_t": (2, 2, Int16ul), "uint32_t": (4, 4, Int32ul),
         "uint64_t": (8, 8, Int64ul), "offset_t": (8, 8, Int64sl), "long": (8, 8, Int64sl),
         "ulong_t": (8, 8, Int64ul)},
    32: {"uint16_t": (2, 2, Int16ul), "uint32_t": (4, 4, Int32ul),
         "uint64_t": (8, 4, Int64ul), "offset_t": (8, 4, Int64sl), "long": (4, 4, Int32sl),
         "ulong_t": (4, 4, Int32ul)},
}
# typedefs of sys/types.h
_TYPEDEFS = {"time_t": "long", "pgcnt_t": "ulong_t", "pfn_t": "ulong_t", "size_t": "ulong_t",
             "uintptr_t": "ulong_t", "void *": "ulong_t"}

UTSNAME_FIELDS = [(n, f"char[{SYS_NMLN}]") for n in
                  ("sysname", "nodename", "release", "version", "machine")]
DUMPHDR_FIELDS = [
    ("dump_magic", "uint32_t"), ("dump_version", "uint32_t"), ("dump_flags", "uint32_t"),
    ("dump_wordsize", "uint32_t"), ("dump_start", "offset_t"), ("dump_ksyms", "offset_t"),
    ("dump_pfn", "offset_t"), ("dump_map", "offset_t"), ("dump_data", "offset_t"),
    ("dump_utsname", "struct utsname"), ("dump_platform", f"char[{SYS_NMLN}]"),
    ("dump_panicstring", f"char[{DUMP_PANICSIZE}]"), ("dump_crashtime", "time_t"),
    ("dump_pageshift", "long"), ("dump_pagesize", "long"), ("dump_hashmask", "long"),
    ("dump_nvtop", "long"), ("dump_npages", "pgcnt_t"), ("dump_ksyms_size", "size_t"),
    ("dump_ksyms_csize", "size_t"), ("dump_fm_panic", "uint32_t"), ("dump_uuid", "char[37]"),
]
DUMPDATAHDR_FIELDS = [
    ("dump_datahdr_magic", "uint32_t"), ("dump_datahdr_version", "uint32_t"),
    ("dump_data_csize", "uint64_t"), ("dump_maxcsize", "uint32_t"),
    ("dump_maxrange", "uint32_t"), ("dump_nstreams", "uint16_t"), ("dump_clevel", "uint16_t"),
    ("dump_metrics", "uint32_t"),
]
DUMPSTREAMHDR_FIELDS = [("stream_magic", "char[8]"), ("stream_pagenum", "pgcnt_t"),
                        ("stream_npages", "pgcnt_t")]
MEM_VTOP_FIELDS = [("m_as", "void *"), ("m_va", "void *"), ("m_pfn", "pfn_t")]
DUMP_MAP_FIELDS = [("dm_first", "offset_t"), ("dm_next", "offset_t"), ("dm_data", "offset_t"),
                   ("dm_as", "void *"), ("dm_va", "uintptr_t")]
STRUCTS = {"utsname": UTSNAME_FIELDS, "dumphdr": DUMPHDR_FIELDS,
           "dumpdatahdr": DUMPDATAHDR_FIELDS, "dumpstreamhdr": DUMPSTREAMHDR_FIELDS,
           "mem_vtop": MEM_VTOP_FIELDS, "dump_map": DUMP_MAP_FIELDS}


@dataclass(frozen=True)
class CLayout:
    """One C struct laid out for one ABI: construct, field offsets, sizeof, alignment."""
    name: str
    struct: Struct
    offsets: dict[str, int]
    size: int
    align: int


def _c_layout(name: str, word: int) -> CLayout:
    abi = _ABI[word]
    parts, offsets, off, align_max = [], {}, 0, 1
    for fname, ctype in STRUCTS[name]:
        ctype = _TYPEDEFS.get(ctype, ctype)
        if ctype.startswith("char["):
            n = int(ctype[5:-1])
            size, align, sub = n, 1, cstr(n)
        elif ctype.startswith("struct "):
            inner = _c_layout(ctype[7:], word)
            size, align, sub = inner.size, inner.align, inner.struct
        else:
            size, align, sub = abi[ctype]
        if off % align:
            parts.append(Padding(-off % align))
            off += -off % align
        offsets[fname] = off
        parts.append(fname / sub)
        off += size
        align_max = max(align_max, align)
    if off % align_max:
        parts.append(Padding(-off % align_max))
        off += -off % align_max
    return CLayout(name, Struct(*parts), offsets, off, align_max)


@dataclass(frozen=True)
class Layout:
    """The structures of a dump of one dump_wordsize."""
    wordsize: int
    dumphdr: CLayout
    datahdr: CLayout
    streamhdr: CLayout
    mem_vtop: CLayout
    dump_map: CLayout
    pfn: struct.Struct                         # pfn_t
    pfn_code: str                              # array typecode of pfn_t (8 or 4 bytes)


def _layout(word: int) -> Layout:
    return Layout(word, *(_c_layout(n, word) for n in
                          ("dumphdr", "dumpdatahdr", "dumpstreamhdr", "mem_vtop", "dump_map")),
                  struct.Struct("<Q" if word == 64 else "<I"), "Q" if word == 64 else "I")


LAYOUTS = {64: _layout(64), 32: _layout(32)}
DUMPHDR_SIZE = LAYOUTS[64].dumphdr.size


def _roundup(x: int, a: int) -> int:
    return -(-x // a) * a


def header_position(size: int) -> int:
    """Where savecore reads the terminal header: P2ALIGN(size - DUMP_OFFSET, DUMP_OFFSET)."""
    return (size & -DUMP_OFFSET) - DUMP_OFFSET


def _pread(f: BinaryIO, offset: int, n: int, what: str) -> bytes:
    f.seek(offset)
    data = f.read(n)
    if len(data) != n:
        raise DumpFormatError(f"illumos dump: {what} at {offset}: {len(data)} of {n} bytes")
    return data


# --- the dump and its checks ------------------------------------------------------------

_T = TypeVar("_T")


class _DumpField(Generic[_T]):
    """IllumosDump.X: the field dump_X of its terminal header (a declared attribute)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.key = f"dump_{name}"

    def __get__(self, dump: IllumosDump, owner: type | None = None) -> _T:
        return dump.header[self.key]


@dataclass
class IllumosDump:
    """What read_dump() found: the terminal header, the data header, the layout."""
    layout: Layout
    header: Container
    datahdr: Container
    header_offset: int                         # the terminal header (savecore's endoff)
    size: int                                  # of the device or file
    has_datahdr: bool
    warnings: list[str] = field(default_factory=list)

    # The terminal header's fields, dumphdr_t's dump_X read as X (sys/dumphdr.h).
    magic = _DumpField[int]()
    version = _DumpField[int]()
    flags = _DumpField[int]()
    wordsize = _DumpField[int]()
    start = _DumpField[int]()                  # offset_t: where the dump begins
    ksyms = _DumpField[int]()
    pfn = _DumpField[int]()
    map = _DumpField[int]()
    data = _DumpField[int]()
    utsname = _DumpField[Container]()
    platform = _DumpField[str]()
    panicstring = _DumpField[str]()
    crashtime = _DumpField[int]()
    pageshift = _DumpField[int]()
    pagesize = _DumpField[int]()
    hashmask = _DumpField[int]()
    nvtop = _DumpField[int]()
    npages = _DumpField[int]()
    ksyms_size = _DumpField[int]()
    ksyms_csize = _DumpField[int]()
    fm_panic = _DumpField[int]()
    uuid = _DumpField[str]()

    @property
    def complete(self) -> bool:
        return bool(self.flags & DF_COMPLETE)

    @property
    def valid(self) -> bool:
        return bool(self.flags & DF_VALID)

    @property
    def compressed(self) -> bool:
        return bool(self.flags & DF_COMPRESSED)

    @property
    def panic(self) -> str:
        return self.header.dump_panicstring

    @property
    def release(self) -> str:
        return self.header.dump_utsname.release


def _check_header(raw: bytes, offset: int, what: str) -> tuple[int, int, int]:
    magic, version, flags, word = struct.unpack_from("<4I", raw)
    if magic != DUMP_MAGIC:
        raise DumpFormatError(f"illumos {what} at {offset}: dump_magic {magic:#x} is not "
                              f"{DUMP_MAGIC:#x}")
    return version, flags, word


def read_dump(f: BinaryIO, size: int) -> IllumosDump:
    """read_dumphdr() on a device or file of `size` bytes (vmdump.N files too)."""
    endoff = header_position(size)
    if endoff < 0:
        raise DumpFormatError(f"illumos dump: a {size}-byte source has no terminal header")
    raw = _pread(f, endoff, 16, "terminal dumphdr")
    version, flags, word = _check_header(raw, endoff, "terminal dumphdr")
    warnings = []
    if not flags & DF_VALID:
        warnings.append("dump already processed: DF_VALID is clear (savecore would stop "
                        "unless -d)")
    if version != DUMP_VERSION:
        raise DumpFormatError(f"illumos terminal dumphdr at {endoff + 4}: dump_version "
                              f"{version} is not DUMP_VERSION {DUMP_VERSION}")
    if word not in LAYOUTS:
        raise DumpFormatError(f"illumos terminal dumphdr at {endoff + 12}: dump_wordsize "
                              f"{word} is neither 32 nor 64")
    lay = LAYOUTS[word]
    raw = _pread(f, endoff, lay.dumphdr.size, "terminal dumphdr")
    h = lay.dumphdr.struct.parse(raw)
    # The shift is tested first: 1 << a shift from a corrupt header (up to 2^32-1, or
    # 2^64-1 in a 64-bit header) would be an integer of gigabytes.
    if (not 0 <= h.dump_pageshift < 64 or h.dump_pagesize <= 0
            or h.dump_pagesize != 1 << h.dump_pageshift):
        at = endoff + lay.dumphdr.offsets["dump_pagesize"]
        raise DumpFormatError(f"illumos terminal dumphdr at {at}: dump_pagesize "
                              f"{h.dump_pagesize} and dump_pageshift {h.dump_pageshift} "
                              "disagree")
    dh_at = endoff + lay.dumphdr.size
    d = lay.datahdr.struct.parse(_pread(f, dh_at, lay.datahdr.size, "dumpdatahdr"))
    has = d.dump_datahdr_magic == DUMP_DATAHDR_MAGIC
    if has and d.dump_datahdr_version != DUMP_DATAHDR_VERSION:
        raise DumpFormatError(f"illumos dumpdatahdr at {dh_at + 4}: dump_datahdr_version "
                              f"{d.dump_datahdr_version} is not {DUMP_DATAHDR_VERSION}")
    if not has:
        d = Container({k: 0 for k, _ in DUMPDATAHDR_FIELDS})
        d.dump_maxcsize = h.dump_pagesize
    start = h.dump_start
    if not 0 <= start <= size - lay.dumphdr.size:
        raise DumpFormatError(f"illumos terminal dumphdr at "
                              f"{endoff + lay.dumphdr.offsets['dump_start']}: dump_start "
                              f"{start} is outside the {size}-byte source")
    init = _pread(f, start, lay.dumphdr.size, "initial dumphdr")
    _compare_headers(init, raw, start, endoff, lay)
    if not flags & DF_COMPLETE:
        warnings.append("incomplete dump on dump device: DF_COMPLETE is clear")
    return IllumosDump(lay, h, d, endoff, size, has, warnings)


def _compare_headers(init: bytes, term: bytes, start: int, endoff: int, lay: Layout) -> None:
    """savecore: both headers with DF_VALID cleared must be byte-identical."""
    flag_at = lay.dumphdr.offsets["dump_flags"]
    a, b = bytearray(init), bytearray(term)
    for buf in (a, b):
        struct.pack_into("<I", buf, flag_at, struct.unpack_from("<I", buf, flag_at)[0]
                         & ~DF_VALID)
    if a == b:
        return
    first = next(i for i in range(len(a)) if a[i] != b[i])
    name = "padding"
    for fname, off in sorted(lay.dumphdr.offsets.items(), key=lambda kv: kv[1]):
        if off <= first:
            name = fname
    raise DumpFormatError(f"illumos initial dumphdr at {start}: initial dump header corrupt: "
                          f"{name} at {start + first} differs from the terminal header's at "
                          f"{endoff + first}")


# --- pages -------------------------------------------------------------------------------

class Page(NamedTuple):
    pagenum: int                               # index in the pfn table
    pfn: int
    data: bytes


class _Reader:
    """Sequential reads at a position of f, through a bounded buffer (f may be shared)."""

    def __init__(self, f: BinaryIO, pos: int, end: int):
        self.f, self.pos, self.end = f, pos, end
        self.buf, self.at = b"", pos

    def read(self, n: int, what: str) -> bytes:
        if self.pos + n > self.at + len(self.buf):
            if self.pos + n > self.end:
                raise DumpFormatError(f"illumos dump data: {what} at {self.pos}: {n} bytes "
                                      f"run past the end of the source ({self.end})")
            self.f.seek(self.pos)
            self.buf, self.at = self.f.read(max(n, CHUNK)), self.pos
            if len(self.buf) < n:
                raise DumpFormatError(f"illumos dump data: {what} at {self.pos}: "
                                      f"{len(self.buf)} of {n} bytes")
        lo = self.pos - self.at
        self.pos += n
        return self.buf[lo:lo + n]


class _PfnTable:
    """pfn_t entries of the pfn table, read a window at a time."""

    def __init__(self, f: BinaryIO, dump: IllumosDump):
        self.f, self.dump, self.lo, self.items = f, dump, -1, array(dump.layout.pfn_code)
        self.win = CHUNK // dump.layout.pfn.size

    def __getitem__(self, pagenum: int) -> int:
        if not self.lo <= pagenum < self.lo + len(self.items):
            self.lo = pagenum - pagenum % self.win
            n = min(self.win, self.dump.npages - self.lo)
            size = self.dump.layout.pfn.size
            raw = _pread(self.f, self.dump.pfn + self.lo * size, n * size, "pfn table")
            self.items = array(self.dump.layout.pfn_code, raw)
        return self.items[pagenum - self.lo]


class _Stream:
    """One tagged stream (savecore's stream_t): stream headers, then their pages."""

    def __init__(self, dump: IllumosDump, tag: int):
        self.dump, self.tag, self.bzip2 = dump, tag, dump.datahdr.dump_clevel >= 2
        self.sh = dump.layout.streamhdr
        self.left = 0                          # pages left in the current range
        self.pagenum = 0
        self.pending = bytearray()             # bzip2 output not yet parsed
        self.bz = bz2.BZ2Decompressor() if self.bzip2 else None

    def _start(self, raw: bytes, at: int) -> None:
        sh = self.sh.struct.parse(raw)
        if raw[:8] != DUMP_STREAM_MAGIC:
            raise DumpFormatError(f"illumos stream {self.tag} at {at}: stream_magic "
                                  f"{raw[:8]!r} is not \"StrmHdr\" (bad stream header)")
        if sh.stream_npages > self.dump.datahdr.dump_maxrange:
            raise DumpFormatError(f"illumos stream {self.tag} at {at}: stream_npages "
                                  f"{sh.stream_npages} > dump_maxrange "
                                  f"{self.dump.datahdr.dump_maxrange} (bad range)")
        self.pagenum, self.left = sh.stream_pagenum, sh.stream_npages

    def block(self, data: bytes, at: int) -> Iterator[tuple[int, bytes]]:
        return self._bz2(data, at) if self.bzip2 else self._lzjb(data, at)

    def _lzjb(self, data: bytes, at: int) -> Iterator[tuple[int, bytes]]:
        # no object is split over a block boundary (savecore lzjbblock())
        pagesize, n, i = self.dump.pagesize, self.sh.size, 0
        while i < len(data):
            if self.left == 0:
                if i + n > len(data):
                    raise DumpFormatError(f"illumos stream {self.tag} at {at + i}: a stream "
                                          "header split over a block")
                self._start(data[i:i + n], at + i)
                i += n
                continue
            (word,) = CSIZE.unpack_from(data, i)
            csize = word & DUMP_MAX_CSIZE
            if csize > pagesize or i + 4 + csize > len(data):
                raise DumpFormatError(f"illumos stream {self.tag} at {at + i}: csize {csize} "
                                      f"(page size {pagesize}, block {len(data)})")
            page = lzjb.decompress(data[i + 4:i + 4 + csize], pagesize)
            if len(page) != pagesize:
                raise DumpFormatError(f"illumos stream {self.tag} at {at + i + 4}: lzjb gave "
                                      f"{len(page)} of {pagesize} bytes")
            i += 4 + csize
            yield self._next(page)

    def _next(self, page: bytes) -> tuple[int, bytes]:
        pagenum = self.pagenum
        self.pagenum += 1
        self.left -= 1
        return pagenum, page

    def _bz2(self, data: bytes, at: int) -> Iterator[tuple[int, bytes]]:
        pagesize = self.dump.pagesize
        while True:
            want = self.sh.size if self.left == 0 else pagesize
            while len(self.pending) < want:
                if self.bz.eof:                # a finished bzip2 stream: the next starts
                    rest, self.bz = self.bz.unused_data, bz2.BZ2Decompressor()
                    data = rest + data
                if not data and self.bz.needs_input:
                    return
                try:
                    self.pending += self.bz.decompress(data, max_length=4 * pagesize)
                except (OSError, EOFError) as exc:
                    raise DumpFormatError(f"illumos stream {self.tag} block at {at}: bzip2: "
                                          f"{exc}") from None
                data = b""
            obj = bytes(self.pending[:want])
            del self.pending[:want]
            if self.left == 0:
                self._start(obj, at)
            else:
                yield self._next(obj)


def iter_pages(f: BinaryIO, dump: IllumosDump) -> Iterator[Page]:
    """The pages at dump_data, decompressed one record at a time (decompress_pages())."""
    pfns = _PfnTable(f, dump)
    if not dump.compressed:                    # pages as they are, dump_npages of them
        r = _Reader(f, dump.data, dump.size)
        for n in range(dump.npages):
            yield Page(n, pfns[n], r.read(dump.pagesize, "page"))
        return
    pagesize, npages = dump.pagesize, dump.npages
    d = dump.datahdr
    r = _Reader(f, dump.data, dump.size)
    streams: dict[int, _Stream] = {}
    saved = 0
    seen = bytearray(-(-npages // 8))

    def page(pagenum: int, data: bytes, at: int) -> Page:
        nonlocal saved
        if not 0 <= pagenum < npages:
            raise DumpFormatError(f"illumos dump data at {at}: page number {pagenum} is not "
                                  f"below dump_npages {npages}")
        if seen[pagenum >> 3] & (1 << (pagenum & 7)):
            raise DumpFormatError(f"illumos dump data at {at}: page {pagenum} twice")
        seen[pagenum >> 3] |= 1 << (pagenum & 7)
        saved += 1
        return Page(pagenum, pfns[pagenum], data)

    while True:
        at = r.pos
        (word,) = CSIZE.unpack(r.read(4, "dumpcsize_t"))
        tag, csize = (word >> 20) & DUMP_MAX_TAG, word & DUMP_MAX_CSIZE
        if tag:
            if d.dump_nstreams == 0:
                raise DumpFormatError(f"illumos dump data at {at}: stream tag {tag} but "
                                      "the data header is missing (dump_nstreams 0)")
            if tag > d.dump_nstreams:
                raise DumpFormatError(f"illumos dump data at {at}: stream tag {tag} not in "
                                      f"1..dump_nstreams {d.dump_nstreams}")
            if csize > d.dump_maxcsize:
                raise DumpFormatError(f"illumos dump data at {at}: block size {csize:#x} > "
                                      f"dump_maxcsize {d.dump_maxcsize:#x}")
            s = streams.setdefault(tag, _Stream(dump, tag))
            block = r.read(csize, f"stream {tag} block")
            for pagenum, data in s.block(block, at + 4):
                yield page(pagenum, data, at)
        elif csize:
            if csize > pagesize:
                raise DumpFormatError(f"illumos dump data at {at}: csize {csize:#x} > "
                                      f"pagesize {pagesize:#x}")
            data = lzjb.decompress(r.read(csize, "lzjb page"), pagesize)
            if len(data) != pagesize:
                raise DumpFormatError(f"illumos dump data at {at + 4}: lzjb gave {len(data)} "
                                      f"of {pagesize} bytes")
            yield page(saved, data, at)
            if saved >= npages:                # serial lzjb has no blocks: stop here
                break
        else:
            break
    if saved != npages:
        dump.warnings.append(f"bad data after page {saved} (of dump_npages {npages})")


# --- savecore's outputs ------------------------------------------------------------------

def next_bounds(savedir: str | os.PathLike) -> int:
    """read_number_from_file("bounds", 0): the N of the next vmdump.N / vmcore.N."""
    try:
        with open(os.path.join(savedir, "bounds")) as f:
            text = f.read().split()
        value = int(text[0]) if text else -1
    except (OSError, ValueError):
        value = -1
    return value if value >= 0 else 0


def write_bounds(savedir: str | os.PathLike, bounds: int) -> None:
    """savecore writes bounds + 1 after saving (not when given -f vmdump.N)."""
    with open(os.path.join(savedir, "bounds"), "w") as out:
        out.write(f"{bounds + 1}\n")


def getbounds(path: str) -> int:
    """savecore getbounds(): N of a file named vmdump.N, or -1."""
    name = os.path.basename(path)
    if not name.startswith("vmdump"):
        i = path.find("vmdump")
        name = path[i:] if i >= 0 else name
    digits = ""
    if name.startswith("vmdump."):
        for c in name[7:]:
            if not c.isdigit():
                break
            digits += c
    return int(digits) if digits else -1


def _copy(f: BinaryIO, src: int, n: int, out: BinaryIO, dst: int, what: str) -> int:
    out.seek(dst)
    while n > 0:
        chunk = _pread(f, src, min(n, CHUNK), what)
        out.write(chunk)
        src, dst, n = src + len(chunk), dst + len(chunk), n - len(chunk)
    return dst


def _corehdr(f: BinaryIO, dump: IllumosDump) -> Container:
    """The initial header with DF_VALID cleared, as read_dumphdr() leaves corehdr."""
    lay = dump.layout.dumphdr
    h = lay.struct.parse(_pread(f, dump.start, lay.size, "initial dumphdr"))
    h.dump_flags &= ~DF_VALID
    return h


def write_vmdump(f: BinaryIO, dump: IllumosDump, out: BinaryIO) -> int:
    """copy_crashfile(): the dump still compressed, as a file laid out like a dump
    device (dump_start 0); returns its size."""
    lay, pagesize = dump.layout, dump.pagesize
    core = _corehdr(f, dump)
    core.dump_flags |= DF_COMPRESSED | DF_VALID
    core.dump_start = 0
    off = _roundup(lay.dumphdr.size, pagesize)
    core.dump_ksyms = off
    off = _copy(f, dump.ksyms, dump.ksyms_csize, out, off, "symbol table")
    off = _roundup(off, pagesize)
    core.dump_pfn = off
    off = _copy(f, dump.pfn, dump.npages * lay.pfn.size, out, off, "pfn table")
    off = _roundup(off, pagesize)
    core.dump_map = off
    off = _copy(f, dump.map, dump.nvtop * lay.mem_vtop.size, out, off, "dump map")
    off = _roundup(off, pagesize)
    core.dump_data = off
    if dump.datahdr.dump_data_csize:
        off = _copy(f, dump.data, dump.datahdr.dump_data_csize, out, off, "dump data")
    else:                                      # CopyPages(): old serial dumps
        r, out_at = _Reader(f, dump.data, dump.size), off
        out.seek(out_at)
        for n in range(dump.npages):
            word = r.read(4, "csize")
            (csize,) = CSIZE.unpack(word)
            if csize == 0 or csize > pagesize:
                dump.warnings.append(f"CopyPages: page {n} csize {csize:#x}")
                break
            out.write(word + r.read(csize, "lzjb page"))
        off = out.tell()
    off += DUMP_OFFSET - (off & (DUMP_OFFSET - 1))
    datahdr = Container(dump.datahdr)
    datahdr.dump_metrics = 0
    hdr = lay.dumphdr.struct.build(core)
    tail = hdr + (lay.datahdr.struct.build(datahdr) if dump.has_datahdr else b"")
    out.seek(off)
    out.write(tail)
    off += len(tail)
    off += DUMP_OFFSET - (off & (DUMP_OFFSET - 1))
    out.seek(0)
    out.write(hdr)
    out.truncate(off)
    out.flush()
    return off


def dump_hash(hashmask: int, pageshift: int, as_: int, va: int, word: int = 64) -> int:
    """DUMP_HASH(dhp, as, va) of dumphdr.h."""
    mask = (1 << word) - 1
    return (((as_ & mask) >> 3) + ((va & mask) >> pageshift)) & hashmask


def write_vmcore(f: BinaryIO, dump: IllumosDump, core: BinaryIO, unix: BinaryIO) -> int:
    """build_corefile(): the symbol table to unix.N, the pages decompressed to vmcore.N at
    dump_data + pagenum * pagesize (zero pages left as holes), the pfn table and the
    hashed dump map; returns the pages saved."""
    lay, pagesize = dump.layout, dump.pagesize
    h = _corehdr(f, dump)
    h.dump_flags &= ~DF_COMPRESSED
    h.dump_ksyms = pagesize
    kc = _pread(f, dump.ksyms, dump.ksyms_csize, "symbol table")
    core.seek(h.dump_ksyms)
    core.write(kc)
    ks = lzjb.decompress(kc, dump.ksyms_size)
    if len(ks) != dump.ksyms_size:
        dump.warnings.append(f"bad data in symbol table, {len(ks)} of {dump.ksyms_size} "
                             "bytes saved")
    unix.write(ks.ljust(dump.ksyms_size, b"\0"))
    table_size = dump.npages * lay.pfn.size
    pfns = array(lay.pfn_code, _pread(f, dump.pfn, table_size, "pfn table"))
    h.dump_pfn = h.dump_ksyms + _roundup(dump.ksyms_size, pagesize)
    core.seek(h.dump_pfn)
    core.write(pfns.tobytes())
    h.dump_map = h.dump_pfn + _roundup(table_size, pagesize)
    mapsize = (dump.hashmask + 1) * lay.dump_map.size
    h.dump_data = h.dump_map + _roundup(mapsize, pagesize)
    _build_dump_map(f, dump, h, pfns, core)
    del pfns
    saved = 0
    for p in iter_pages(f, dump):
        saved += 1
        if p.data.count(0) != pagesize:
            core.seek(h.dump_data + p.pagenum * pagesize)
            core.write(p.data)
    if saved != dump.npages:
        dump.warnings.append(f"bad data after page {saved}")
    core.seek(0)
    core.write(lay.dumphdr.struct.build(h))
    core.truncate(h.dump_data + dump.npages * pagesize)
    core.flush()
    unix.flush()
    return saved


def _build_dump_map(f: BinaryIO, dump: IllumosDump, h: Container, pfns: array,
                    core: BinaryIO) -> None:
    """build_dump_map(): each mem_vtop_t whose pfn is in the table becomes dump_map_t i,
    chained from the bucket DUMP_HASH(as, va)."""
    lay = dump.layout
    entry, vt = lay.dump_map, lay.mem_vtop
    nb = dump.hashmask + 1
    table = bytearray(nb * entry.size)             # dump_map_t[hashmask + 1], zeroed
    off = entry.offsets
    q = "<q"                                       # offset_t
    ptr = "<Q" if lay.wordsize == 64 else "<I"
    r = _Reader(f, dump.map, dump.size)
    misses = 0
    for i in range(min(dump.nvtop, nb)):
        m = vt.struct.parse(r.read(vt.size, "mem_vtop_t"))
        k = bisect_left(pfns, m.m_pfn)
        if k == len(pfns) or pfns[k] != m.m_pfn:
            misses += 1
            continue
        e = i * entry.size
        struct.pack_into(ptr, table, e + off["dm_as"], m.m_as)
        struct.pack_into(ptr, table, e + off["dm_va"], m.m_va)
        struct.pack_into(q, table, e + off["dm_data"], h.dump_data + (k << h.dump_pageshift))
        b = dump_hash(h.dump_hashmask, h.dump_pageshift, m.m_as, m.m_va, lay.wordsize)
        bucket = b * entry.size + off["dm_first"]
        struct.pack_into(q, table, e + off["dm_next"], struct.unpack_from(q, table, bucket)[0])
        struct.pack_into(q, table, bucket, h.dump_map + e)
    if misses:
        dump.warnings.append(f"{misses} translations name a pfn not in the pfn table")
    core.seek(h.dump_map)
    core.write(table)


def summary(dump: IllumosDump) -> DumpSummary:
    h = dump.header
    return DumpSummary(
        "illumos", "illumos", h.dump_utsname.release, h.dump_panicstring,
        dump.npages * dump.pagesize, h.dump_crashtime, dump.pagesize, offset=dump.start,
        details={"complete": dump.complete, "valid": dump.valid,
                 "compressed": dump.compressed, "flags": hex(h.dump_flags),
                 "version": h.dump_version, "wordsize": h.dump_wordsize,
                 "nodename": h.dump_utsname.nodename, "os_version": h.dump_utsname.version,
                 "npages": dump.npages, "uuid": h.dump_uuid,
                 "clevel": dump.datahdr.dump_clevel, "nstreams": dump.datahdr.dump_nstreams,
                 "data_csize": dump.datahdr.dump_data_csize,
                 "header_offset": dump.header_offset, "warnings": list(dump.warnings)})


# --- the writer (dumpsys()) -------------------------------------------------------------

def _pad(b: bytes | bytearray, pagesize: int) -> bytes:
    return bytes(b) + bytes(-len(b) % pagesize)


def _ranges(pfns: Sequence[int], pagesize: int) -> list[tuple[int, int]]:
    """(first pagenum, npages) of the CBUF_MAPSIZE windows of pfns the main task maps."""
    mapnp = CBUF_MAPSIZE // pagesize
    out: list[tuple[int, int]] = []
    for n, pfn in enumerate(pfns):
        if out and pfns[out[-1][0]] // mapnp == pfn // mapnp:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((n, 1))
    return out


def _lzjb_blocks(tag: int, items: list[bytes]) -> list[bytes]:
    """dumpsys_lzjbrun(): objects into blocks of at most CBUF_SIZE with a tag word."""
    blocks, cur = [], bytearray(4)
    for obj in items:
        if len(cur) + len(obj) > CBUF_SIZE:
            CSIZE.pack_into(cur, 0, (tag << 20) | (len(cur) - 4))
            blocks.append(bytes(cur))
            cur = bytearray(4)
        cur += obj
    if len(cur) > 4:
        CSIZE.pack_into(cur, 0, (tag << 20) | (len(cur) - 4))
        blocks.append(bytes(cur))
    return blocks


def _bz2_blocks(tag: int, items: list[bytes]) -> list[bytes]:
    """dumpsys_bzrun(): one bzip2 stream cut into blocks of CBUF_SIZE - 4 bytes."""
    c = bz2.BZ2Compressor(1)
    out = bytearray()
    for obj in items:
        out += c.compress(obj)
    out += c.flush()
    room = CBUF_SIZE - 4
    return [CSIZE.pack((tag << 20) | len(out[i:i + room])) + bytes(out[i:i + room])
            for i in range(0, len(out), room)]


def _data_stream(pages: list[bytes], pfns: Sequence[int], pagesize: int, compression: str,
                 nstreams: int, lay: Layout) -> bytes:
    out = bytearray()
    if compression == "lzjb-serial":
        for p in pages:
            c = lzjb.compress(p)
            out += CSIZE.pack(len(c)) + c
    else:
        per: list[list[bytes]] = [[] for _ in range(nstreams)]
        for k, (first, n) in enumerate(_ranges(pfns, pagesize)):
            items = per[k % nstreams]
            items.append(lay.streamhdr.struct.build(dict(
                stream_magic="StrmHdr", stream_pagenum=first, stream_npages=n)))
            for p in pages[first:first + n]:
                if compression == "lzjb":
                    c = lzjb.compress(p)
                    items.append(CSIZE.pack(len(c)) + c)
                else:
                    items.append(p)
        make = _lzjb_blocks if compression == "lzjb" else _bz2_blocks
        lists = [make(tag + 1, items) for tag, items in enumerate(per)]
        while any(lists):                      # the helpers' blocks interleave
            for blocks in lists:
                if blocks:
                    out += blocks.pop(0)
    out += CSIZE.pack(0)                       # end of stream blocks
    return bytes(out)


def illumos_dump_image(size: int, payload: bytes, *, panic: str, release: str = "5.11",
                       nodename: str = "st-guest", version: str = "scsi-target",
                       crashtime: int = 0, pagesize: int = 4096, start: int = DUMP_OFFSET,
                       compression: str = "lzjb", nstreams: int = 2,
                       pfns: Sequence[int] | None = None, ksyms: bytes | None = None,
                       wordsize: int = 64, complete: bool = True, content: int = DF_KERNEL,
                       uuid: str = "") -> list[tuple[int, bytes]]:
    """The (offset, bytes) pieces dumpsys() writes for the pages of `payload` on a device
    of `size` bytes. compression: "lzjb" (helpers' stream blocks, clevel 1), "bzip2"
    (clevel 2) or "lzjb-serial" (single pages, clevel 0). `complete=False` clears
    DF_COMPLETE as an I/O error does. Raises ValueError when it does not fit."""
    if compression not in ("lzjb", "bzip2", "lzjb-serial"):
        raise ValueError(f"compression {compression!r}")
    lay = LAYOUTS[wordsize]
    if len(payload) % pagesize:
        payload += bytes(pagesize - len(payload) % pagesize)
    pages = [payload[i:i + pagesize] for i in range(0, len(payload), pagesize)]
    npages = len(pages)
    pfns = list(range(0x100, 0x100 + npages)) if pfns is None else list(pfns)
    if len(pfns) != npages or sorted(set(pfns)) != pfns:
        raise ValueError("pfns: one ascending, distinct pfn per page")
    if ksyms is None:
        ksyms = b"\x7fELF placeholder symbol table (not ksyms_snapshot)\n".ljust(3000, b"\0")
    word_mask = (1 << wordsize) - 1
    kas = 0xFFFFFFFFFBC3A8C0 & word_mask if wordsize == 64 else 0xFEC3A8C0
    kbase = 0xFFFFFE0000000000 & word_mask if wordsize == 64 else 0xD4000000
    vtop = b"".join(lay.mem_vtop.struct.build(dict(
        m_as=kas, m_va=(kbase + n * pagesize) & word_mask, m_pfn=pfn))
        for n, pfn in enumerate(pfns))
    nvtop = npages
    hashmask = (1 << (nvtop - 1).bit_length()) - 1 if nvtop > 1 else 0
    ksyms_at = start + pagesize
    map_at = ksyms_at + _roundup(len(ksyms), pagesize)
    pfn_at = map_at + _roundup(len(vtop), pagesize)
    pfn_table = b"".join(lay.pfn.pack(p) for p in pfns)
    data_at = pfn_at + _roundup(len(pfn_table), pagesize)
    stream = _pad(_data_stream(pages, pfns, pagesize, compression, nstreams, lay), pagesize)
    end_hdr = header_position(size)
    limit = end_hdr - DUMP_LOGSIZE
    if data_at + len(stream) > limit:
        raise ValueError(f"a dump of {npages} pages ({len(stream)} bytes compressed) does "
                         f"not fit a {size}-byte device")
    flags = DF_VALID | DF_COMPRESSED | content | (DF_COMPLETE if complete else 0)
    uts = {"sysname": "SunOS", "nodename": nodename, "release": release,
           "version": version, "machine": "i86pc"}
    header = lay.dumphdr.struct.build({
        "dump_magic": DUMP_MAGIC, "dump_version": DUMP_VERSION, "dump_flags": flags,
        "dump_wordsize": wordsize, "dump_start": start, "dump_ksyms": ksyms_at,
        "dump_pfn": pfn_at, "dump_map": map_at, "dump_data": data_at,
        "dump_utsname": uts, "dump_platform": "i86pc",
        "dump_panicstring": panic[:DUMP_PANICSIZE - 1], "dump_crashtime": crashtime,
        "dump_pageshift": pagesize.bit_length() - 1, "dump_pagesize": pagesize,
        "dump_hashmask": hashmask, "dump_nvtop": nvtop, "dump_npages": npages,
        "dump_ksyms_size": len(ksyms), "dump_ksyms_csize": len(ksyms), "dump_fm_panic": 0,
        "dump_uuid": uuid})
    clevel = {"lzjb-serial": DUMP_CLEVEL_SERIAL, "lzjb": DUMP_CLEVEL_LZJB,
              "bzip2": DUMP_CLEVEL_BZIP2}[compression]
    datahdr = lay.datahdr.struct.build({
        "dump_datahdr_magic": DUMP_DATAHDR_MAGIC, "dump_datahdr_version": DUMP_DATAHDR_VERSION,
        "dump_data_csize": len(stream), "dump_maxcsize": CBUF_SIZE,
        "dump_maxrange": CBUF_MAPSIZE // pagesize,
        "dump_nstreams": 1 if compression == "lzjb-serial" else nstreams,
        "dump_clevel": clevel, "dump_metrics": 0})
    return [(start, _pad(header, pagesize)), (ksyms_at, _pad(ksyms, pagesize)),
            (map_at, _pad(vtop, pagesize)), (pfn_at, _pad(pfn_table, pagesize)),
            (data_at, stream), (end_hdr, _pad(header + datahdr, pagesize))]


def write_illumos_dump(f: BinaryIO, size: int, payload: bytes, **kw) -> IllumosDump:
    """illumos_dump_image() written into f (a device image of `size` bytes), read back."""
    for offset, piece in illumos_dump_image(size, payload, **kw):
        f.seek(offset)
        f.write(piece)
    f.flush()
    return read_dump(f, size)


def find_dump(f: BinaryIO, size: int) -> IllumosDump | None:
    """The dump savecore would find on a device of `size` bytes, or None (no magic)."""
    pos = header_position(size)
    if pos < 0:
        return None
    f.seek(pos)
    if struct.unpack("<I", f.read(4).ljust(4, b"\0"))[0] != DUMP_MAGIC:
        return None
    return read_dump(f, size)
