"""READ DEFECT DATA (10) and (12) (SBC-4 5.23, 5.24): an emulated medium without defects.

Rules:
- The medium has no defects: the primary list (PLIST) and the grown list (GLIST) exist and
  are empty. The parameter data is the defect list header with no address descriptors:
  PLISTV and GLISTV as REQ_PLIST and REQ_GLIST asked (the requested list is returned, and
  it is empty), DEFECT LIST LENGTH 0. REQ_PLIST=0 and REQ_GLIST=0 ask for the header alone.
- DEFECT LIST FORMAT (the address descriptor formats of FORMAT UNIT, SBC-4 6.2):
  000b short block, 001b extended bytes from index, 010b extended physical sector, 011b
  long block, 100b bytes from index, 101b physical sector. An empty list is returned in
  any of them, so the header reports the requested format. 110b is vendor specific and
  none is defined here: the list comes in the default format, 101b, as SBC-4 directs a
  device server unable to return the requested format to do. 111b is reserved: INVALID
  FIELD IN CDB.
- (10): REQ_PLIST, REQ_GLIST and the format are in CDB byte 2, ALLOCATION LENGTH in bytes
  7-8; the header is 4 bytes (DEFECT LIST LENGTH in bytes 2-3).
  (12): the same fields in CDB byte 1, ADDRESS DESCRIPTOR INDEX bytes 2-5 (the first
  descriptor to return: none exists at any index), ALLOCATION LENGTH bytes 6-9; the header
  is 8 bytes: GENERATION CODE bytes 2-3 (0001h: the list never changes) and DEFECT LIST
  LENGTH bytes 4-7.
- Reserved CDB bits and bytes that are nonzero are INVALID FIELD IN CDB with the field
  pointer; the data is cut to the ALLOCATION LENGTH (SPC-4 4.2.5.6), 0 being no data.
- A LU without a medium answers NOT READY, MEDIUM NOT PRESENT. Reservations: Access.READ
  (conflicts only under the Exclusive Access types, and with RESERVE(6)).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from target.scsi.commands import Access, CommandSet
from target.scsi.sense import invalid_field_in_cdb
from target.scsi.task import Direction

if TYPE_CHECKING:
    from target.scsi.lu import LogicalUnit
    from target.scsi.task import ScsiTask

COMMANDS = CommandSet("defects")

REQ_PLIST = 0x10
REQ_GLIST = 0x08
FORMAT_VENDOR = 0b110
FORMAT_RESERVED = 0b111
DEFAULT_FORMAT = 0b101  # physical sector format
GENERATION_CODE = 0x0001

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


def _flags(lu: LogicalUnit, cdb, byte: int) -> int:
    """Byte 1 of the defect list header for the request in CDB byte `byte`."""
    b = cdb[byte]
    if b & 0xE0:
        raise invalid_field_in_cdb(byte, bit=7)
    fmt = b & 0x07
    if fmt == FORMAT_RESERVED:
        raise invalid_field_in_cdb(byte, bit=2)
    lu.check_medium()
    if fmt == FORMAT_VENDOR:
        fmt = DEFAULT_FORMAT
    return (b & (REQ_PLIST | REQ_GLIST)) | fmt  # PLISTV, GLISTV: the lists returned


@COMMANDS.command(0x37, "READ DEFECT DATA(10)", [0x37, 0, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, 0x04],
                  Direction.IN, access=Access.READ)
def read_defect_data10(lu: LogicalUnit, task: ScsiTask) -> None:
    cdb = task.cdb
    for i in (1, 3, 4, 5, 6):
        if cdb[i]:
            raise invalid_field_in_cdb(i)
    flags = _flags(lu, cdb, 2)
    alloc = _U16.unpack_from(cdb, 7)[0]
    header = struct.pack(">BBH", 0, flags, 0)  # DEFECT LIST LENGTH 0: no descriptors
    task.data_in = header[:alloc]


@COMMANDS.command(0xB7, "READ DEFECT DATA(12)",
                  [0xB7, 0x1F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04],
                  Direction.IN, access=Access.READ)
def read_defect_data12(lu: LogicalUnit, task: ScsiTask) -> None:
    cdb = task.cdb
    if cdb[10]:
        raise invalid_field_in_cdb(10)
    flags = _flags(lu, cdb, 1)
    alloc = _U32.unpack_from(cdb, 6)[0]
    # ADDRESS DESCRIPTOR INDEX (bytes 2-5): whatever it names, there is no descriptor.
    header = struct.pack(">BBHI", 0, flags, GENERATION_CODE, 0)
    task.data_in = header[:alloc]
