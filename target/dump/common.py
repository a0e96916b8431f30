"""What every dump reader shares: its error, its summary, and C's char[n] as text.

Rules:
- DumpFormatError: a dump that does not parse; the message names the format, the field
  and the offset.
- DumpSummary: what `scsi-target inspect` reports of any dump, Linux or illumos.
- cstr(n): a NUL-padded char[n] (sys/utsname.h, dumphdr.h, makedumpfile.h) as text,
  latin-1 so that any byte decodes; text that does not fit with its NUL does not encode.
- Below both target.dump.formats and target.dump.illumos, so that formats' scan() can find
  illumos dumps with no import cycle between the two readers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from construct import Adapter, Bytes, ConstructError


class DumpFormatError(ValueError):
    """A dump that does not parse: names the format, the field and the offset."""


@dataclass
class DumpSummary:
    os: str                      # "illumos" or "linux"
    format: str                  # "illumos", "elf", "flattened", "kdump"
    release: str | None
    panic: str | None
    size: int                    # bytes of the dump (the reassembled size if flattened)
    crashtime: int | None
    pagesize: int | None
    offset: int = 0              # where on the device or image it starts
    details: dict = field(default_factory=dict)


class CStr(Adapter):
    """A NUL-padded char[n] as text (latin-1: any byte decodes)."""

    def _decode(self, obj: bytes, context, path) -> str:
        return obj.split(b"\0", 1)[0].decode("latin-1")

    def _encode(self, obj: str, context, path) -> bytes:
        raw = obj.encode("latin-1")
        if len(raw) >= self.subcon.length:
            raise ConstructError(f"{obj[:20]!r}... is longer than char[{self.subcon.length}]")
        return raw.ljust(self.subcon.length, b"\0")


def cstr(n: int) -> CStr:
    return CStr(Bytes(n))
