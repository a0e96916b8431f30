"""Fuzz targets `config`, `dump` and `trace`: the readers of files a user hands us.

Rules:
- `config`: TOML text built from the config's own keys (target.config's header: the
  top-level keys, [[portal]], [[target]], [[target.lun]], its scheduler and disk tables,
  [[fault]]) with values of every TOML type, sizes with and without suffixes, names good
  and bad; one input in eight is raw bytes. It goes through target.config.load (a file
  in a temporary directory, tomllib, from_dict). Allowed: a Config, or ConfigError.
- `dump`: the image `scsi-target dump inspect` reads (target.dump.inspect.inspect on a
  file: scan, the illumos checks of savecore's read_dumphdr(), the Linux formats'
  parsers, the flattened reassembly), built per format and then edited: an illumos dump
  as dumpsys() lays it out (target.dump.illumos.illumos_dump_image: lzjb, bzip2 or
  serial lzjb, 32- or 64-bit), an ELF vmcore, a kdump-compressed header and a flattened
  stream (the layouts of makedumpfile's diskdump_mod.h and makedumpfile.h, as
  tests/unit/test_dump_formats.py builds them), or raw bytes. When an illumos dump is
  found, its pages are read (iter_pages) and saved as savecore does, into sinks that
  count bytes instead of files (write_vmdump, write_vmcore). lzjb.decompress also gets
  raw blocks. Allowed: summaries, DumpFormatError, SourceError. Bounds: 5 s per input
  (harness), and no save larger than SAVE_LIMIT.
- `trace`: target.trace.Reader.records over bytes: a real trace (a Tracer's file of
  commands of the cdb target's LU), edited, cut, or raw bytes. Allowed: records, or
  TraceError.
"""

from __future__ import annotations

import functools
import io
import os
import struct
import tempfile
from pathlib import Path

from target import config, trace
from target.dump import formats, illumos, inspect, lzjb
from target.dump.common import DumpFormatError
from target.dump.source import SourceError
from tests.fuzz.harness import Finding, Target
from tests.fuzz.provider import Provider

SAVE_LIMIT = 256 << 20
_TMP = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@functools.cache
def _scratch() -> Path:
    """One directory per process for the inputs' files (removed with the process's tmp)."""
    return Path(tempfile.mkdtemp(prefix="scsi-target-fuzz-", dir=_TMP))


def _edits(p: Provider, size: int, hot: list[int]) -> list[tuple[int, bytes]]:
    """Up to eight edits of an image of `size` bytes: bytes, or an edge integer, at a hot
    spot (a header) or anywhere."""
    out: list[tuple[int, bytes]] = []
    for _ in range(p.int_in_range(0, 8)):
        if not size:
            break
        base = p.pick(hot) if hot and not p.chance(4) else 0
        at = (base + p.int_in_range(0, 4095 if base or not p.bool() else size)) % size
        if p.bool():
            width = p.pick((1, 2, 4, 8))
            value = p.pick((0, 1, 0x7F, 0x80, 0xFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 31,
                            (1 << 64) - 1, 1 << 63, p.int_in_range(0, (1 << 64) - 1)))
            chunk = (value & ((1 << 8 * width) - 1)).to_bytes(width, p.pick(("little", "big")))
        else:
            chunk = p.bytes(p.int_in_range(1, 16))
        out.append((at, chunk[:size - at]))
    return out


def _edit(p: Provider, image: bytearray, hot: list[int]) -> None:
    for at, chunk in _edits(p, len(image), hot):
        image[at:at + len(chunk)] = chunk


# --- config -----------------------------------------------------------------------------

_TOP = {"nop_interval": "n", "busy_poll_us": "n"}
_PORTAL = {"listen": "listen"}
_TARGET = {"iqn": "iqn", "alias": "s", "initiators": "iqns", "tpgt": "i"}
_LUN = {"lun": "i", "store": "store", "path": "s", "size": "size", "block_size": "bs",
        "vendor": "s", "product": "s", "revision": "s", "serial": "s", "read_only": "b",
        "thin": "b", "removable": "b", "physical_block_size": "bs", "sanitize_mb_s": "n",
        "io_threads": "i"}
_SCHED = {"elevator": "elevator", "dispatch_depth": "i", "queue_depth": "i",
          "max_passes": "i", "deadline_ms": "n", "cylinder_blocks": "i"}
_DISK = {"rpm": "i", "average_seek_ms": "n", "track_to_track_ms": "n", "media_mb_s": "n",
         "full_stroke_ms": "n"}
_FAULT = {"action": "action", "lun": "i", "op": "op", "ops": "ops", "lba": "lba",
          "first": "i", "every": "i", "once": "b", "sense": "sense", "delay_ms": "n",
          "initiator": "s", "target": "iqn", "id": "s"}
_VALUES = {
    "n": ("0", "1", "0.5", "-1", "10000", "10001", "1e309", "nan", "inf", "3"),
    "i": ("0", "1", "-1", "7", "255", "16383", "16384", "65535", "4294967296", "2.5"),
    "b": ("true", "false", "1", '"yes"'),
    "s": ('"x"', '""', '"' + "A" * 65 + '"', '"\\u00e9"', '"disk\\u0000"', "[]", "{}"),
    "listen": ('"127.0.0.1:3260"', '"[::1]:0"', '"host"', '"127.0.0.1:99999"',
               '"127.0.0.1:-1"', '":"', '"[::1"', "3260"),
    "iqn": ('"iqn.2026-11.local.fuzz:disk"', '"iqn.2026-11.local.fuzz:disk2"',
            '"eui.0123456789abcdef"', '"naa.0123456789abcdef"', '"IQN.bad"', '""', "1"),
    "iqns": ('["iqn.2026-11.local.fuzz:i"]', "[]", '[""]', "[1, 2]", '"iqn.x"'),
    "store": ('"memory"', '"file"', '"tape"', "0"),
    "size": ('"1M"', '"64K"', '"1G"', "1048576", "513", '"0"', '"-1M"', '"1.5G"', '"1 MiB"',
             '"16T"', '"99999999999999999999T"', "true"),
    "bs": ("512", "4096", "1024", "520", "0", "65536", '"512"'),
    "elevator": ('"disksort"', '"fifo"', '"scan"'),
    "action": ('"check-condition"', '"busy"', '"task-set-full"', '"delay"',
               '"medium-delay"', '"drop"', '"explode"'),
    "op": ('"WRITE(10)"', '"0x2a"', '"READ(16)"', '"0x1ff"', '"NOPE"', "42"),
    "ops": ('["0x28", "WRITE(10)"]', "[]", '["0xzz"]', '"0x28"'),
    "lba": ('"0-100"', '"100-0"', '"5"', '"a-b"', '"0-18446744073709551616"', "7"),
    "sense": ('"03/0C/00"', '"3/11/0"', '"0F/00/00"', '"10/00/00"', '"03/0C"', '"x"'),
}


def _table(p: Provider, keys: dict[str, str]) -> list[str]:
    lines = []
    names = list(keys)
    for _ in range(p.int_in_range(0, len(names) + 1)):
        if p.chance(16):
            lines.append(f"unknown_{p.int_in_range(0, 3)} = 1")
            continue
        key = p.pick(names)
        lines.append(f"{key} = {p.pick(_VALUES[keys[key]])}")
    return lines


def config_text(p: Provider) -> bytes:
    """A TOML config (target.config's layout), or raw bytes."""
    if p.chance(8):
        return p.rest()
    lines = _table(p, _TOP)
    for _ in range(p.int_in_range(0, 2)):
        lines += ["[[portal]]", *_table(p, _PORTAL)]
    for _ in range(p.int_in_range(0, 3)):
        lines += ["[[target]]", *_table(p, _TARGET)]
        for _ in range(p.int_in_range(0, 3)):
            lines += ["[[target.lun]]", *_table(p, _LUN)]
            if p.chance(4):
                lines += ["[target.lun.scheduler]", *_table(p, _SCHED)]
                if p.bool():
                    lines += ["[target.lun.scheduler.disk]", *_table(p, _DISK)]
    for _ in range(p.int_in_range(0, 2)):
        lines += ["[[fault]]", *_table(p, _FAULT)]
    if p.chance(16):
        lines.append(p.pick(("[target]", "portal = 1", "[[target.lun.scheduler]]", "x = ")))
    return "\n".join(lines).encode() + b"\n"


def run_config(data: bytes) -> None:
    p = Provider(data)
    path = _scratch() / "config.toml"
    path.write_bytes(config_text(p))
    try:
        config.load(path)
    except config.ConfigError:
        pass


# --- dumps ------------------------------------------------------------------------------

@functools.cache
def _illumos_pieces(size: int, compression: str, wordsize: int, npages: int,
                    nstreams: int) -> tuple[tuple[tuple[int, bytes], ...], int]:
    """The pieces dumpsys() writes for one dump on a device of `size` bytes (the rest of
    the device reads as zeros), and where its terminal header is."""
    payload = b"".join(bytes([i]) * 2048 + bytes(range(256)) * 8 for i in range(npages))
    pieces = illumos.illumos_dump_image(size, payload, panic="fuzz panic", crashtime=1,
                                        compression=compression, wordsize=wordsize,
                                        nstreams=nstreams)
    return tuple(pieces), illumos.header_position(size)


def _elf(info: bytes) -> bytes:
    """ELF64 ET_CORE, one PT_NOTE (VMCOREINFO) and one PT_LOAD (the ELF-64 object file
    format; kexec-tools' crashdump-elf.c writes this layout)."""
    name = b"VMCOREINFO\0"
    note = struct.pack("<III", len(name), len(info), 0) + name.ljust(12, b"\0") + \
        info.ljust(-(-len(info) // 4) * 4, b"\0")
    note_off = 64 + 56 * 2
    eh = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + struct.pack(
        "<HHIQQQIHHHHHH", 4, 62, 1, 0, 64, 0, 0, 64, 56, 2, 0, 0, 0)
    ph_note = struct.pack("<IIQQQQQQ", 4, 0, note_off, 0, 0, len(note), len(note), 0)
    ph_load = struct.pack("<IIQQQQQQ", 1, 7, note_off + len(note), 0xFFFF880000000000,
                          0x1000, 4096, 4096, 0)
    return eh + ph_note + ph_load + note + bytes(4096)


def _kdump(info: bytes) -> bytes:
    """disk_dump_header in block 0 and kdump_sub_header in block 1 (diskdump_mod.h)."""
    uts = b"".join(v.ljust(65, b"\0") for v in
                   (b"Linux", b"guest", b"6.1.0-fuzz", b"#1 SMP", b"x86_64", b"(none)"))
    hdr = b"KDUMP   " + struct.pack("<i", 6) + uts + bytes(6) + struct.pack(
        "<qqIiiIIIIIIi", 1700000002, 0, 0, 4096, 1, 1, 1 << 17, 1 << 17, 0, 0, 0, 1)
    sub = struct.pack("<QiiQQqQqQ", 0, 31, 0, 0, 1 << 17, 8192, len(info), 0, 0)
    return hdr.ljust(4096, b"\0") + sub.ljust(4096, b"\0") + info.ljust(4096, b"\0")


def _flattened(inner: bytes) -> bytes:
    """makedumpfile.h's flattened format: a 4 KiB header, (offset, size) records
    big-endian, the end marker (-1, -1)."""
    head = formats.FLAT_SIGNATURE.ljust(16, b"\0") + struct.pack(">qq", 1, 1)
    out = head.ljust(formats.FLAT_HEADER_SIZE, b"\0")
    half = len(inner) // 2
    for offset, data in ((half, inner[half:]), (0, inner[:half])):
        out += struct.pack(">qq", offset, len(data)) + data
    return out + struct.pack(">qq", -1, -1)


_INFO = b"OSRELEASE=6.1.0-fuzz\nPAGESIZE=4096\nCRASHTIME=1700000001\n"


class _Sink(io.RawIOBase):
    """A file that keeps nothing: savecore's outputs, counted and bounded (SAVE_LIMIT)."""

    def __init__(self) -> None:
        self.pos = 0
        self.end = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, b) -> int:
        n = len(b)
        self.pos += n
        self.end = max(self.end, self.pos)
        if self.end > SAVE_LIMIT:
            raise Finding(f"a save of over {SAVE_LIMIT} bytes")
        return n

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos if whence == 0 else (self.pos + pos if whence == 1 else self.end + pos)
        if self.pos > SAVE_LIMIT:
            raise Finding(f"a save seeks to {self.pos}, over {SAVE_LIMIT} bytes")
        return self.pos

    def tell(self) -> int:
        return self.pos

    def truncate(self, size: int | None = None) -> int:
        self.end = self.pos if size is None else size
        if self.end > SAVE_LIMIT:
            raise Finding(f"a save truncated to {self.end}, over {SAVE_LIMIT} bytes")
        return self.end


def write_image(p: Provider, path: Path) -> None:
    """The image of one input, as a sparse file: a dump of a format, edited, or raw."""
    kind = p.int_in_range(0, 5)
    if kind == 0:
        size = p.pick((3 << 20, 4 << 20))  # the log area (DUMP_LOGSIZE) is 2 MiB
        compression = p.pick(("lzjb", "bzip2", "lzjb-serial"))
        pieces, at = _illumos_pieces(size, compression, p.pick((64, 32)), p.pick((3, 1, 8)),
                                     p.pick((2, 1)))
        edits = _edits(p, size, [at, illumos.DUMP_OFFSET, at - 4096])
        with open(path, "wb") as f:
            f.truncate(size)
            for offset, chunk in (*pieces, *edits):
                f.seek(offset)
                f.write(chunk)
        return
    if kind in (1, 2, 3):
        inner = _elf(_INFO) if kind == 1 else _kdump(_INFO)
        if kind == 3:
            inner = _flattened(inner if p.bool() else _elf(_INFO))
        image = bytearray(inner)
        _edit(p, image, [0, 4096, 8192, 64])
        at = (1 << 20) if p.bool() else 0  # where kdump's capture may write it
        with open(path, "wb") as f:
            f.truncate(at)
            f.seek(at)
            f.write(image)
        return
    path.write_bytes(p.rest())


def run_dump(data: bytes) -> None:
    p = Provider(data)
    if p.chance(8):  # lzjb blocks straight (a dump's page compression)
        d_len = p.pick((4096, 8192, 1, 0, 1 << 20))
        try:
            out = lzjb.decompress(p.rest(), d_len)
        except DumpFormatError:
            return
        if len(out) > max(d_len, 0):
            raise Finding(f"lzjb gave {len(out)} bytes for a {d_len}-byte page")
        return
    path = _scratch() / "image"
    write_image(p, path)
    try:
        inspect.inspect(str(path))
        with open(path, "rb") as f:
            size = formats.file_size(f)
            dump = illumos.find_dump(f, size)
            if dump is None:
                return
            for _page in illumos.iter_pages(f, dump):
                pass
            illumos.write_vmdump(f, dump, _Sink())
            illumos.write_vmcore(f, dump, _Sink(), _Sink())
    except (DumpFormatError, SourceError):
        pass


# --- trace ------------------------------------------------------------------------------

@functools.cache
def real_trace() -> bytes:
    """A Tracer's file of twelve commands on a memory LU (the cdb target's)."""
    from target.backing.memory import MemoryStore
    from target.scsi.disk import make_disk
    from target.scsi.task import ScsiTask
    from tests.fuzz import scsi

    lu = make_disk(0, MemoryStore(1 << 20))
    path = _scratch() / "seed.trace"
    path.unlink(missing_ok=True)
    tracer = trace.Tracer(path)
    cdbs = [bytes(6), bytes.fromhex("12000000ff00"), bytes.fromhex("28000000000000000800"),
            bytes.fromhex("2a000000000800000800"), bytes.fromhex("ff00"), bytes(16)]
    for i, c in enumerate(cdbs * 2):
        task = ScsiTask(scsi.nexus(i % 2), 0, c, i, data_out=memoryview(bytes(4096)),
                        expected_in=4096)
        scsi.execute(lu, task)
        tracer.record(f"127.0.0.1:{4000 + i % 2}", task, 1000 * i, 1000 * i + 500, i)
    tracer.close()
    return path.read_bytes()


def run_trace(data: bytes) -> None:
    p = Provider(data)
    kind = p.int_in_range(0, 3)
    if kind == 3:
        raw = bytearray(p.rest())
    else:
        raw = bytearray(real_trace())
        _edit(p, raw, [0, 16, 32, 64, 128])
        if kind == 1:
            raw = raw[:p.int_in_range(0, len(raw))]
        elif kind == 2:
            raw += raw[:p.int_in_range(0, len(raw))]
    reader = trace.Reader("fuzz")
    try:
        for _record in reader.records(bytes(raw)):
            pass
    except trace.TraceError:
        pass


def seed_config() -> list[bytes]:
    """The header's example as raw TOML (the raw draw, 7 of 0..7, is the last byte), and
    the built configs of a few short inputs."""
    example = config.__doc__.split("Example:", 1)[1].split('"""', 1)[0]
    text = "\n".join(line[4:] for line in example.splitlines()).encode()
    return [b"", bytes(range(64)), text + bytes([7])]


def seed_dump() -> list[bytes]:
    """Each format unedited (the kind is the second draw, the lzjb chance the first) and
    an lzjb block."""
    return [bytes([kind, 0]) for kind in range(5)] + [bytes(range(200)) + bytes([7])]


def seed_trace() -> list[bytes]:
    return [bytes([kind]) for kind in range(4)]


CONFIG = Target("config", run_config, "the config parser (target.config.load)", seed_config)
DUMP = Target("dump", run_dump, "every dump reader of `dump inspect`", seed_dump,
              time_limit=5.0)
TRACE = Target("trace", run_trace, "the trace reader (target.trace.Reader.records)",
               seed_trace)
