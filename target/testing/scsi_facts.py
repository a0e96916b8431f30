"""What a logical unit says about itself, asked two ways so the answers can be compared.

Rules:
- `query_target()` asks the target from the host with our initiator (target.shell.initiator):
  standard INQUIRY (SPC-4 6.6.2: T10 vendor identification bytes 8-15, product
  identification bytes 16-31), the Unit Serial Number VPD page 80h (SPC-4 7.8.15), the
  Device Identification VPD page 83h (SPC-4 7.8.6: the NAA designators associated with the
  logical unit) and READ CAPACITY(16) (SBC-4 5.16: RETURNED LOGICAL BLOCK ADDRESS is the
  last LBA, then LOGICAL BLOCK LENGTH IN BYTES).
- `parse_sg_inq`, `parse_sg_vpd_83`, `parse_sg_readcap` read the text that sg3_utils 1.46
  (`sg_inq`, `sg_vpd -p 0x83`, `sg_readcap -l`) prints in a guest, into the same fields.
- Text fields are compared with trailing blanks removed (INQUIRY pads with spaces), the
  serial number with leading ones too (SPC-4 7.8.15: right-aligned ASCII, tgtd pads it);
  a field a tool did not print is None, never a guess.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from target.shell.initiator import Initiator, InitiatorError

GOOD = 0x00
CHECK_CONDITION = 0x02
UNIT_ATTENTION = 0x6
ASSOC_LU = 0
DESIG_NAA = 0x3


@dataclass
class ScsiFacts:
    vendor: str | None = None
    product: str | None = None
    serial: str | None = None
    naa: list[str] = field(default_factory=list)  # "0x" + hex, logical-unit association
    blocks: int | None = None                     # last LBA + 1
    block_size: int | None = None


def _sense_key(sense: bytes) -> int:
    if not sense:
        return -1
    if sense[0] & 0x7F in (0x72, 0x73):  # descriptor format (SPC-4 4.5.2)
        return sense[1] & 0xF if len(sense) > 1 else -1
    return sense[2] & 0xF if len(sense) > 2 else -1


def _run(ini: Initiator, cdb: bytes, lun: int, read: int, what: str) -> bytes:
    """One command; a UNIT ATTENTION (the new nexus's power on/reset, SAM-5 5.14) is
    reported once per condition, so the command is repeated a few times."""
    for _ in range(4):
        result = ini.command(cdb, lun=lun, read=read)
        if result.status != CHECK_CONDITION or _sense_key(result.sense) != UNIT_ATTENTION:
            break
    return _check(result, what)


def _check(result, what: str) -> bytes:
    if result.status != GOOD:
        raise InitiatorError(f"{what}: status 0x{result.status:02x}, sense {result.sense.hex()}")
    return result.data


def naa_designators(page83: bytes) -> list[str]:
    """The NAA designators (SPC-4 7.8.6.6) of a page 83h with logical-unit association."""
    found = []
    end = min(len(page83), 4 + int.from_bytes(page83[2:4], "big"))
    off = 4
    while off + 4 <= end:
        assoc = (page83[off + 1] >> 4) & 0x3
        dtype = page83[off + 1] & 0xF
        length = page83[off + 3]
        if assoc == ASSOC_LU and dtype == DESIG_NAA:
            found.append("0x" + page83[off + 4:off + 4 + length].hex())
        off += 4 + length
    return found


def query_target(host: str, port: int, iqn: str, lun: int, *,
                 initiator_name: str = "iqn.2026-11.local.scsi-target:facts") -> ScsiFacts:
    """Ask one LUN for its identity and capacity from the host; raises InitiatorError."""
    with Initiator(host, port, iqn, initiator_name=initiator_name) as ini:
        ini.login()
        std = _run(ini, bytes([0x12, 0, 0, 0, 96, 0]), lun, 96, "INQUIRY")
        serial = None
        vpd0 = _run(ini, bytes([0x12, 1, 0, 0, 255, 0]), lun, 255,
                      "INQUIRY VPD 00h")
        if 0x80 in vpd0[4:4 + vpd0[3]]:
            p80 = _run(ini, bytes([0x12, 1, 0x80, 0, 255, 0]), lun, 255,
                         "INQUIRY VPD 80h")
            serial = p80[4:4 + p80[3]].decode("ascii", "replace").strip()
        p83 = _run(ini, bytes([0x12, 1, 0x83, 0x4, 0, 0]), lun, 1024,
                     "INQUIRY VPD 83h")
        cdb = bytes([0x9E, 0x10]) + bytes(8) + struct.pack(">I", 32) + bytes(2)
        cap = _run(ini, cdb, lun, 32, "READ CAPACITY(16)")
        last_lba, block_size = struct.unpack_from(">QI", cap)
        try:
            ini.logout()
        except (InitiatorError, OSError):
            pass
    return ScsiFacts(vendor=std[8:16].decode("ascii", "replace").rstrip(),
                     product=std[16:32].decode("ascii", "replace").rstrip(),
                     serial=serial, naa=naa_designators(p83),
                     blocks=last_lba + 1, block_size=block_size)


def _field(text: str, label: str) -> str | None:
    m = re.search(rf"^\s*{re.escape(label)}:\s?(.*?)\s*$", text, re.M)
    return m.group(1) if m else None


def parse_sg_inq(text: str) -> ScsiFacts:
    """`sg_inq DEV`: Vendor identification, Product identification, Unit serial number."""
    return ScsiFacts(vendor=_field(text, "Vendor identification"),
                     product=_field(text, "Product identification"),
                     serial=_strip(_field(text, "Unit serial number")))


def _strip(value: str | None) -> str | None:
    return value.strip() if value is not None else None


def parse_sg_vpd_83(text: str) -> list[str]:
    """`sg_vpd -p 0x83 DEV`: the NAA designators under "Addressed logical unit"."""
    m = re.search(r"Addressed logical unit:\n(.*?)(?=\n  \S|\Z)", text, re.S)
    section = m.group(1) if m else ""
    return re.findall(r"designator type: NAA,.*\n\s+(0x[0-9a-fA-F]+)", section)


def parse_sg_readcap(text: str) -> ScsiFacts:
    """`sg_readcap -l DEV`: Number of logical blocks and Logical block length."""
    blocks = re.search(r"Number of logical blocks=(\d+)", text)
    length = re.search(r"Logical block length=(\d+) bytes", text)
    return ScsiFacts(blocks=int(blocks.group(1)) if blocks else None,
                     block_size=int(length.group(1)) if length else None)
