"""Log pages and the LOG SENSE command (SPC-4 r37 6.8, log pages 7.3).

Rules:
- Pages kept, as data (SPC-4 7.3, table of log page codes): Supported Log Pages (00h/00h,
  7.3.18), Supported Log Pages and Subpages (00h/FFh, 7.3.19), Temperature (0Dh/00h, 7.3.21)
  and Informational Exceptions (2Fh/00h, 7.3.8). These are the pages illumos sd asks for
  (sd.c: sd_log_page_supported() reads 00h; the DKIOCGTEMPERATURE ioctl reads 0Dh) and
  smartctl reads (smartmontools scsiprint.cpp scsiGetSupportedLogPages(), scsicmds.cpp
  scsiCheckIE(), scsiGetTemp()). Any other page code, or a subpage other than 00h (FFh
  with page 00h only), is ILLEGAL REQUEST, INVALID FIELD IN CDB with the field pointer
  (byte 2 bit 5 for the page code, byte 3 for the subpage code).
- Page format (SPC-4 7.3.1): byte 0 DS | SPF | PAGE CODE, byte 1 SUBPAGE CODE, bytes 2-3
  PAGE LENGTH (the bytes after the header), then the log parameters in ascending order of
  PARAMETER CODE: each is PARAMETER CODE (2 bytes), the parameter control byte, PARAMETER
  LENGTH and the value. DS=1 on every page: no log parameter is saved. SPF=1 only on the
  subpage form 00h/FFh.
- Parameters: the emulated disk has no sensor; it reports fixed temperatures,
  CURRENT_TEMPERATURE and REFERENCE_TEMPERATURE (degrees Celsius; 0Dh parameters 0000h and
  0001h, each two bytes: reserved, value; that is the layout sd.c's sd_dkio_get_temp()
  reads at bytes 7/9 and 13/15). The Informational Exceptions general parameter (0000h)
  carries INFORMATIONAL EXCEPTION ADDITIONAL SENSE CODE and QUALIFIER 00h/00h (no
  failure predicted) and the MOST RECENT TEMPERATURE READING. All three are list
  parameters (FORMAT AND LINKING 11b, binary format list, SPC-4 7.3.2.2.2) with DU=0,
  ETC=0, TMC=00b and TSD=1 (the device server never saves them): control byte 23h.
- CDB (SPC-4 6.8.1): SP=1 (save) is INVALID FIELD IN CDB, byte 1 bit 0, saving being
  unimplemented. PPC (byte 1 bit 1) was made obsolete in SPC-4 r18; set, it is refused like
  the reserved bits 7-2 of byte 1 and reserved byte 4. PC (byte 2 bits 7-6): 00b
  threshold, 01b cumulative, 10b default threshold, 11b default cumulative values; the
  PC field does not apply to list parameters, so every PC value returns the same page.
  PARAMETER POINTER (bytes 5-6): the page holds the parameters whose code is at least the
  pointer (PAGE LENGTH counts those alone); a pointer above the page's largest parameter
  code is INVALID FIELD IN CDB, byte 5; the two supported-pages pages hold no log
  parameters, so only pointer 0 is valid there. ALLOCATION LENGTH (bytes 7-8): the data is
  cut to it, no error, the PAGE LENGTH untouched (SPC-4 4.2.5.6).
- LOG SELECT (4Ch, SPC-4 6.7) is not implemented: it is optional, and nothing here could
  be reset (PCR) or set: every parameter is a list parameter, none a counter or a
  threshold. The opcode is absent from the table, so it is INVALID COMMAND OPERATION CODE
  and absent from REPORT SUPPORTED OPERATION CODES.
- Reservations: LOG SENSE is allowed under every persistent reservation type (SPC-4 5.13.1
  table 62) and under RESERVE(6) (SPC-2 5.5.1): the registration is in spc.py.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from target.scsi.sense import NO_ADDITIONAL_SENSE, invalid_field_in_cdb

if TYPE_CHECKING:
    from target.scsi.lu import LogicalUnit
    from target.scsi.task import ScsiTask

SUPPORTED_PAGES = 0x00
TEMPERATURE = 0x0D
INFORMATIONAL_EXCEPTIONS = 0x2F
SUBPAGE_NONE = 0x00
SUBPAGE_ALL = 0xFF  # with page 00h: Supported Log Pages and Subpages

# Log page header byte 0 (SPC-4 7.3.1): DS (bit 7), SPF (bit 6), PAGE CODE (bits 5-0).
DS = 0x80
SPF = 0x40

# Parameter control byte of a list parameter (SPC-4 7.3.2.2.2): DU=0 (bit 7), TSD=1
# (bit 5: never saved), ETC=0, TMC=00b, FORMAT AND LINKING (bits 1-0) 11b binary list.
CONTROL_BINARY_LIST = 0x23

CURRENT_TEMPERATURE = 35  # degrees Celsius; FFh would mean "no valid reading"
REFERENCE_TEMPERATURE = 65  # the highest at which the disk may operate continuously

# Page control (SPC-4 6.8.1): every value is accepted (list parameters only).
PC_THRESHOLD = 0
PC_CUMULATIVE = 1
PC_DEFAULT_THRESHOLD = 2
PC_DEFAULT_CUMULATIVE = 3

_HEADER = struct.Struct(">BBH")
_PARAMETER = struct.Struct(">HBB")
_U16 = struct.Struct(">H")


@dataclass(frozen=True)
class LogParameter:
    """One log parameter (SPC-4 7.3.1 table: log parameter)."""

    code: int
    control: int
    value: bytes

    def encode(self) -> bytes:
        return _PARAMETER.pack(self.code, self.control, len(self.value)) + self.value


@dataclass(frozen=True)
class LogPage:
    """A log page: either log parameters, or (the supported-pages pages) a plain list."""

    page_code: int
    subpage_code: int
    name: str
    parameters: Callable[[LogicalUnit], list[LogParameter]] | None = None
    listing: Callable[[], bytes] | None = None


def temperature_parameters(lu: LogicalUnit) -> list[LogParameter]:
    """Temperature log page (SPC-4 7.3.21): 0000h TEMPERATURE, 0001h REFERENCE TEMPERATURE."""
    return [
        LogParameter(0x0000, CONTROL_BINARY_LIST, bytes((0, CURRENT_TEMPERATURE))),
        LogParameter(0x0001, CONTROL_BINARY_LIST, bytes((0, REFERENCE_TEMPERATURE))),
    ]


def informational_exceptions_parameters(lu: LogicalUnit) -> list[LogParameter]:
    """Informational Exceptions log page (SPC-4 7.3.8): the general parameter 0000h with
    ASC/ASCQ 00h/00h (no informational exception condition) and the temperature."""
    asc = NO_ADDITIONAL_SENSE
    return [LogParameter(0x0000, CONTROL_BINARY_LIST,
                         bytes((asc.asc, asc.ascq, CURRENT_TEMPERATURE)))]


def _supported_pages() -> bytes:
    """PAGE CODE of each page with subpage 00h, ascending (SPC-4 7.3.18)."""
    return bytes(sorted({p for p, s in PAGES if s == SUBPAGE_NONE}))


def _supported_pages_and_subpages() -> bytes:
    """(PAGE CODE, SUBPAGE CODE) of every page, ascending (SPC-4 7.3.19)."""
    return b"".join(bytes(key) for key in sorted(PAGES))


PAGES: dict[tuple[int, int], LogPage] = {
    (SUPPORTED_PAGES, SUBPAGE_NONE): LogPage(SUPPORTED_PAGES, SUBPAGE_NONE,
                                             "Supported Log Pages", listing=_supported_pages),
    (SUPPORTED_PAGES, SUBPAGE_ALL): LogPage(SUPPORTED_PAGES, SUBPAGE_ALL,
                                            "Supported Log Pages and Subpages",
                                            listing=_supported_pages_and_subpages),
    (TEMPERATURE, SUBPAGE_NONE): LogPage(TEMPERATURE, SUBPAGE_NONE, "Temperature",
                                         parameters=temperature_parameters),
    (INFORMATIONAL_EXCEPTIONS, SUBPAGE_NONE): LogPage(
        INFORMATIONAL_EXCEPTIONS, SUBPAGE_NONE, "Informational Exceptions",
        parameters=informational_exceptions_parameters),
}


def log_page(lu: LogicalUnit, page_code: int, subpage_code: int,
             parameter_pointer: int = 0) -> bytes:
    """The whole page as LOG SENSE returns it (before the allocation length cut);
    CheckCondition for an unsupported page or subpage or a pointer past the last code."""
    page = PAGES.get((page_code, subpage_code))
    if page is None:
        if any(p == page_code for p, _ in PAGES):
            raise invalid_field_in_cdb(3)  # the page exists, not this subpage
        raise invalid_field_in_cdb(2, bit=5)
    if page.parameters is None:
        if parameter_pointer:  # no log parameters: no code reaches a non-zero pointer
            raise invalid_field_in_cdb(5)
        body = page.listing() if page.listing is not None else b""
    else:
        params = page.parameters(lu)
        if parameter_pointer > max(p.code for p in params):
            raise invalid_field_in_cdb(5)
        body = b"".join(p.encode() for p in params if p.code >= parameter_pointer)
    byte0 = DS | (SPF if subpage_code else 0) | page_code
    return _HEADER.pack(byte0, subpage_code, len(body)) + body


def log_sense(lu: LogicalUnit, task: ScsiTask) -> None:
    """LOG SENSE (SPC-4 6.8)."""
    cdb = task.cdb
    if cdb[1] & 0xFE:  # reserved bits 7-2, obsolete PPC (bit 1)
        raise invalid_field_in_cdb(1, bit=(cdb[1] & 0xFE).bit_length() - 1)
    if cdb[1] & 0x01:  # SP: saving log parameters is not implemented
        raise invalid_field_in_cdb(1, bit=0)
    if cdb[4]:
        raise invalid_field_in_cdb(4)
    page_code = cdb[2] & 0x3F  # PC (bits 7-6): the same page for each value
    data = log_page(lu, page_code, cdb[3], _U16.unpack_from(cdb, 5)[0])
    task.data_in = data[: _U16.unpack_from(cdb, 7)[0]]
