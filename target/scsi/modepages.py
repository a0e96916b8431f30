"""Mode parameters: MODE SENSE(6)/(10) and MODE SELECT(6)/(10) (SPC-4 6.9-6.12, 7.5).

Rules:
- Pages kept (SPC-4 7.5.7 table 451 / SBC-4 6.5): read-write error recovery (01h,
  SBC-4 6.5.9), caching (08h, SBC-4 6.5.5), control (0Ah, SPC-4 7.5.8) and the
  Informational Exceptions Control mode page (1Ch, SPC-4 7.5): smartctl reads it before it
  reports the health of the Informational Exceptions log page (smartmontools
  scsicmds.cpp scsiFetchIECmpage(); scsiprint.cpp prints "SMART Health Status: OK" only
  when it was read). Page 3Fh
  returns every page in ascending order (SPC-4 7.5.7). No page has subpages: subpage FFh
  means "the page and its subpages" and gives the page alone, any other non-zero subpage
  is INVALID FIELD IN CDB.
- Page control (SPC-4 6.11.1 table 157): 00b current, 01b changeable (a mask of the bits
  MODE SELECT may change), 10b default; 11b saved is not supported and ends in ILLEGAL
  REQUEST, SAVING PARAMETERS NOT SUPPORTED (39h/00h). MODE SELECT with SP=1 is INVALID
  FIELD IN CDB (SPC-4 6.9.1).
- Informational exceptions control: PERF=EBF=EWASC=TEST=EBACKERR=LOGERR=0, DEXCPT=0
  (reporting enabled), MRIE 6h (only report an informational exception condition on
  request: REQUEST SENSE and the log page 2Fh, logpages.py; none ever arises here),
  INTERVAL TIMER 0, REPORT COUNT 0. Nothing in it is changeable.
- Changeable: caching WCE; control D_SENSE, QAM (0 or 1), SWP, TAS. Everything else must
  be sent back with its current value; a difference is INVALID FIELD IN PARAMETER LIST with
  a field pointer into the parameter list (C/D=0), as is an unknown page or a wrong PAGE
  LENGTH (SPC-4 6.9.1). A list that ends inside a header, descriptor or page is PARAMETER
  LIST LENGTH ERROR. Nothing is applied unless the whole list is valid.
- Header (SPC-4 7.5.4/7.5.5): the device-specific parameter carries WP (read-only LU or
  SWP) and DPOFUA=1 (SBC-4 6.5.1); it and the MODE DATA LENGTH are ignored by MODE SELECT.
  The MEDIUM TYPE must be 00h.
- Block descriptors (SBC-4 6.5.2): short (8 bytes; NUMBER OF LOGICAL BLOCKS is
  FFFFFFFFh when the count does not fit) unless MODE SENSE(10) sets LLBAA, then long
  (16 bytes, LONGLBA=1). DBD=1 omits them. In MODE SELECT a descriptor may carry 0 or the
  current block count and must carry the current logical block length.
- MODE DATA LENGTH is the length of all the data, never cut to the allocation length;
  the data sent is cut to it (SPC-4 4.2.5.6).
- A MODE SELECT that changes a value establishes MODE PARAMETERS CHANGED (2Ah/01h) for
  every other I_T nexus (SPC-4 7.5.1: the control page's TST=000b, one shared task set).
- reset() (logical unit reset, hard reset: SAM-5 6.3) returns every value to its default.

State read elsewhere: `d_sense` (lu.py, sense format), `swp` (SBC write path: DATA PROTECT
/ WRITE PROTECTED, as lu.read_only), `wce` (SBC write path: write through when False),
`qam` and `tas` (the task set).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Protocol

from target.scsi.sense import (
    MODE_PARAMETERS_CHANGED,
    SAVING_PARAMETERS_NOT_SUPPORTED,
    CheckCondition,
    SenseKey,
    invalid_field_in_cdb,
    invalid_field_in_parameter_list,
    parameter_list_length_error,
)

if TYPE_CHECKING:
    from target.scsi.task import ScsiTask
    from target.scsi.ua import UnitAttentions


class Unit(Protocol):
    """What the mode pages read of their LU (target.scsi.lu.LogicalUnit, which builds on
    this module): its geometry, whether it is read-only, and its unit attentions."""

    block_size: int
    read_only: bool
    ua: UnitAttentions

    @property
    def num_blocks(self) -> int: ...

PC_CURRENT = 0
PC_CHANGEABLE = 1
PC_DEFAULT = 2
PC_SAVED = 3

RW_ERROR_RECOVERY = 0x01
CACHING = 0x08
CONTROL = 0x0A
INFORMATIONAL_EXCEPTIONS_CONTROL = 0x1C
ALL_PAGES = 0x3F

# Method of reporting informational exceptions (SPC-4 7.5, MRIE): 6h, only on request.
MRIE_ON_REQUEST = 0x6

# Busy timeout period of the control page: FFFFh, unlimited (SPC-4 7.5.8).
_BUSY_TIMEOUT_UNLIMITED = 0xFFFF


class ModePages:
    """The mode parameters of one logical unit: current values, masks and defaults."""

    def __init__(self, lu: Unit, *, wce: bool = True, d_sense: bool = False) -> None:
        self.lu = lu
        self._default_wce = wce
        self._default_d_sense = d_sense
        self.d_sense = d_sense  # control page: descriptor-format sense
        self.swp = False  # control page: software write protect
        self.qam = 0  # control page: queue algorithm modifier (0 restricted, 1 unrestricted)
        self.tas = False  # control page: task aborted status
        self.wce = wce  # caching page: write cache enable

    def reset(self) -> None:
        """Back to the default values (no saved values exist; SAM-5 6.3.3)."""
        self.d_sense = self._default_d_sense
        self.swp = False
        self.qam = 0
        self.tas = False
        self.wce = self._default_wce

    @property
    def write_protected(self) -> bool:
        """WP of the device-specific parameter (SBC-4 6.5.1)."""
        return bool(self.lu.read_only or self.swp)

    # --- page images --------------------------------------------------------------------

    def page_codes(self) -> list[int]:
        return [RW_ERROR_RECOVERY, CACHING, CONTROL, INFORMATIONAL_EXCEPTIONS_CONTROL]

    def page(self, code: int, pc: int) -> bytes:
        """The page in the form MODE SENSE returns it for page control `pc` (0..2)."""
        if code == RW_ERROR_RECOVERY:
            body = bytes(10)  # AWRE=ARRE=0, no retries, no recovery time limit
        elif code == CACHING:
            wce = {PC_CURRENT: self.wce, PC_CHANGEABLE: True, PC_DEFAULT: self._default_wce}[pc]
            body = bytearray(18)
            body[0] = 0x04 if wce else 0x00  # WCE; RCD=0 (read cache enabled)
        elif code == CONTROL:
            body = bytearray(10)
            if pc == PC_CHANGEABLE:
                body[0] = 0x04  # D_SENSE
                body[1] = 0xF0  # QUEUE ALGORITHM MODIFIER
                body[2] = 0x08  # SWP
                body[3] = 0x40  # TAS
            else:
                current = pc == PC_CURRENT
                d_sense = self.d_sense if current else self._default_d_sense
                qam = self.qam if current else 0
                swp = self.swp if current else False
                tas = self.tas if current else False
                body[0] = 0x04 if d_sense else 0  # TST=000b, TMF_ONLY=0, GLTSD=0, RLEC=0
                body[1] = (qam & 0x0F) << 4  # NUAR=0, QERR=00b
                body[2] = 0x08 if swp else 0  # RAC=0, UA_INTLCK_CTRL=00b
                body[3] = 0x40 if tas else 0  # ATO=0, AUTOLOAD MODE=000b
                struct.pack_into(">H", body, 6, _BUSY_TIMEOUT_UNLIMITED)
        elif code == INFORMATIONAL_EXCEPTIONS_CONTROL:
            body = bytearray(10)  # byte 2 flags 0: DEXCPT=0, EWASC=0, TEST=0, ...
            if pc != PC_CHANGEABLE:
                body[1] = MRIE_ON_REQUEST  # INTERVAL TIMER, REPORT COUNT: 0
        else:
            raise KeyError(code)
        return bytes((code, len(body))) + bytes(body)

    # --- MODE SENSE ----------------------------------------------------------------------

    def sense(self, task: ScsiTask, ten: bool) -> None:
        """MODE SENSE(6) (SPC-4 6.11) or MODE SENSE(10) (SPC-4 6.12)."""
        cdb = task.cdb
        dbd = bool(cdb[1] & 0x08)
        llbaa = ten and bool(cdb[1] & 0x10)
        pc = cdb[2] >> 6
        code = cdb[2] & 0x3F
        subpage = cdb[3]
        alloc = struct.unpack_from(">H", cdb, 7)[0] if ten else cdb[4]
        if pc == PC_SAVED:
            raise CheckCondition(SenseKey.ILLEGAL_REQUEST, SAVING_PARAMETERS_NOT_SUPPORTED,
                                 field=2, bit=7)
        if code == ALL_PAGES:
            if subpage not in (0x00, 0xFF):
                raise invalid_field_in_cdb(3)
            pages = b"".join(self.page(c, pc) for c in self.page_codes())
        elif code in self.page_codes():
            if subpage not in (0x00, 0xFF):
                raise invalid_field_in_cdb(3)
            pages = self.page(code, pc)
        else:
            raise invalid_field_in_cdb(2, bit=5)

        blockdesc = b"" if dbd else self._block_descriptor(llbaa)
        dsp = (0x80 if self.write_protected else 0) | 0x10  # WP, DPOFUA
        if ten:
            total = 8 + len(blockdesc) + len(pages)
            header = struct.pack(">HBBBBH", total - 2, 0, dsp, 0x01 if llbaa and blockdesc else 0,
                                 0, len(blockdesc))
        else:
            total = 4 + len(blockdesc) + len(pages)
            header = struct.pack(">BBBB", total - 1, 0, dsp, len(blockdesc))
        task.data_in = (header + blockdesc + pages)[:alloc]

    def _block_descriptor(self, long: bool) -> bytes:
        blocks = self.lu.num_blocks
        if long:
            return struct.pack(">QII", blocks, 0, self.lu.block_size)
        return struct.pack(">II", min(blocks, 0xFFFFFFFF), self.lu.block_size & 0xFFFFFF)

    # --- MODE SELECT ---------------------------------------------------------------------

    def select(self, task: ScsiTask, ten: bool) -> None:
        """MODE SELECT(6) (SPC-4 6.9) or MODE SELECT(10) (SPC-4 6.10)."""
        cdb = task.cdb
        if cdb[1] & 0x01:  # SP: no saved pages
            raise invalid_field_in_cdb(1, bit=0)
        length = struct.unpack_from(">H", cdb, 7)[0] if ten else cdb[4]
        task.out_length = length
        if length == 0:
            return
        data = bytes(task.data_out or b"")[:length]
        if len(data) < length:
            raise parameter_list_length_error()

        hlen = 8 if ten else 4
        if len(data) < hlen:
            raise parameter_list_length_error()
        if ten:
            medium, _dsp, longlba, bdlen = data[2], data[3], data[4] & 0x01, \
                struct.unpack_from(">H", data, 6)[0]
        else:
            medium, _dsp, longlba, bdlen = data[1], data[2], 0, data[3]
        if medium != 0:
            raise invalid_field_in_parameter_list(2 if ten else 1)
        pos = hlen
        desc_size = 16 if longlba else 8
        if bdlen not in (0, desc_size):
            raise invalid_field_in_parameter_list(6 if ten else 3)
        if pos + bdlen > len(data):
            raise parameter_list_length_error()
        if bdlen:
            self._check_block_descriptor(data, pos, bool(longlba))
        pos += bdlen

        changes: dict[int, bytes] = {}
        while pos < len(data):
            if pos + 2 > len(data):
                raise parameter_list_length_error()
            code = data[pos] & 0x3F
            if data[pos] & 0x40:  # SPF: no page here has subpages
                raise invalid_field_in_parameter_list(pos, bit=6)
            if code not in self.page_codes() or code in changes:
                raise invalid_field_in_parameter_list(pos, bit=5)
            current = self.page(code, PC_CURRENT)
            if data[pos + 1] != len(current) - 2:
                raise invalid_field_in_parameter_list(pos + 1)
            end = pos + len(current)
            if end > len(data):
                raise parameter_list_length_error()
            sent = data[pos:end]
            mask = self.page(code, PC_CHANGEABLE)
            for i in range(2, len(current)):
                diff = (sent[i] ^ current[i]) & ~mask[i] & 0xFF
                if diff:
                    raise invalid_field_in_parameter_list(pos + i, bit=diff.bit_length() - 1)
            if code == CONTROL and (sent[3] >> 4) not in (0, 1):
                raise invalid_field_in_parameter_list(pos + 3, bit=7)
            changes[code] = sent
            pos = end

        before = self._values()
        for code, sent in changes.items():
            if code == CACHING:
                self.wce = bool(sent[2] & 0x04)
            elif code == CONTROL:
                self.d_sense = bool(sent[2] & 0x04)
                self.qam = sent[3] >> 4
                self.swp = bool(sent[4] & 0x08)
                self.tas = bool(sent[5] & 0x40)
        if self._values() != before:
            self.lu.ua.establish(MODE_PARAMETERS_CHANGED, exclude=task.nexus)

    def _check_block_descriptor(self, data: bytes, pos: int, long: bool) -> None:
        if long:
            blocks, _, size = struct.unpack_from(">QII", data, pos)
            size_at = pos + 12
            fits = blocks in (0, self.lu.num_blocks)
        else:
            blocks, size = struct.unpack_from(">II", data, pos)
            size &= 0xFFFFFF
            size_at = pos + 5
            fits = blocks in (0, min(self.lu.num_blocks, 0xFFFFFFFF))
        if not fits:
            raise invalid_field_in_parameter_list(pos)
        if size != self.lu.block_size:
            raise invalid_field_in_parameter_list(size_at)

    def _values(self) -> tuple[bool, bool, int, bool, bool]:
        return (self.d_sense, self.swp, self.qam, self.tas, self.wce)
