"""SPC-4 primary commands for every logical unit: the "spc" command table.

Rules:
- Handlers take (lu, task), decode the CDB themselves, raise CheckCondition for errors
  (with the sense-key specific field pointer, SPC-4 4.5.2.4.2) and set task.data_in cut to
  the ALLOCATION LENGTH (SPC-4 4.2.5.6: the data is truncated, never the length fields in
  it). Unit attentions, the NACA bit and reservation conflicts are handled by lu.py
  before a handler runs; the table's `access` / `reserve6` say how each command meets
  reservations (SPC-4 5.13.1 table 62, SPC-2 5.5.1).
- Commands (clause of SPC-4):
  INQUIRY 6.6 (standard data 6.6.2; VPD 7.8: 00h supported pages 7.8.16, 80h unit serial
  number 7.8.17, 83h device identification 7.8.6, 86h extended INQUIRY data 7.8.7, and
  the SBC-4 pages B0h/B1h/B2h from vpd_sbc), TEST UNIT READY 6.47, REQUEST SENSE 6.39,
  REPORT LUNS 6.33, MODE SENSE(6)/(10) 6.11/6.12 and MODE SELECT(6)/(10) 6.9/6.10 (in
  modepages.py), LOG SENSE 6.8 (logpages.py; LOG SELECT 6.7 is not implemented),
  REPORT SUPPORTED OPERATION CODES 6.35, PERSISTENT RESERVE IN 6.15 and
  OUT 6.16 (state in reservations.py), RESERVE(6)/(10) and RELEASE(6)/(10) (SPC-2 7.21,
  7.22, 7.16, 7.17).
- INQUIRY to a LUN with no LU behind it answers PERIPHERAL QUALIFIER 011b and DEVICE TYPE
  1Fh (SPC-4 6.6.2); REPORT LUNS is served the same through any LUN (absent_lun()).
- Identification (SPC-4 7.8.6): an NAA designator (NAA 3h, locally assigned, derived from
  the serial unless lu.identity.naa is set), a T10 vendor ID designator (vendor, product,
  serial), and with PROTOCOL IDENTIFIER 5h (iSCSI) and PIV=1: the relative target port
  and the SCSI name string of the target port ("iqn...,t,0x0001"), both association 01b,
  and the SCSI name string of the target device (association 10b). SCSI name strings are
  UTF-8, null-terminated and null-padded to a multiple of four bytes (SPC-4 7.8.6.11).
- A LUN with no medium (lu.medium_present false; SBC START STOP UNIT with LOEJ) answers TEST
  UNIT READY and REQUEST SENSE with NOT READY, MEDIUM NOT PRESENT (3Ah/00h).
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from target.scsi import logpages
from target.scsi.commands import Access, CommandSet, Handler
from target.scsi.reservations import PrType
from target.scsi.sense import (
    INVALID_RELEASE_OF_PERSISTENT_RESERVATION,
    MEDIUM_NOT_PRESENT,
    NO_ADDITIONAL_SENSE,
    CheckCondition,
    ReservationConflict,
    SenseKey,
    invalid_field_in_cdb,
    invalid_field_in_parameter_list,
    parameter_list_length_error,
)
from target.scsi.task import Direction, Identity, Nexus, Status, encode_lun

if TYPE_CHECKING:
    from target.scsi.lu import LogicalUnit
    from target.scsi.task import ScsiTask

COMMANDS = CommandSet("spc")

PDT_DIRECT_ACCESS = 0x00
PQ_NOT_SUPPORTED = 0x60  # PERIPHERAL QUALIFIER 011b
PDT_UNKNOWN = 0x1F

# Version descriptors (SPC-4 table 143): SAM-5, iSCSI, SPC-4, SBC-3 (SBC-3 is what
# initiators such as libiscsi's test tool look for before trying 16-byte CDBs).
VERSION_DESCRIPTORS = (0x00A0, 0x0960, 0x0460, 0x04C0)

PROTOCOL_ISCSI = 0x5
CODE_SET_BINARY = 0x1
CODE_SET_ASCII = 0x2
CODE_SET_UTF8 = 0x3
ASSOC_LU = 0x00
ASSOC_TARGET_PORT = 0x10
ASSOC_TARGET_DEVICE = 0x20
DESIG_T10_VENDOR = 0x1
DESIG_NAA = 0x3
DESIG_RELATIVE_PORT = 0x4
DESIG_SCSI_NAME = 0x8

# Timeouts reported by RSOC with RCTD=1 (SPC-4 6.35.4), in seconds.
NOMINAL_TIMEOUT = 0
RECOMMENDED_TIMEOUT = 30


def _alloc(task: ScsiTask, data: bytes, alloc: int) -> None:
    task.data_in = data[:alloc]


def _ascii(text: str, size: int) -> bytes:
    raw = text.encode("ascii", "replace")[:size]
    return raw.ljust(size, b" ")


# --- identification --------------------------------------------------------------------


def serial_number(lu: LogicalUnit) -> str:
    """The unit serial number: lu.identity.serial, or one derived from target and LUN."""
    if lu.identity.serial:
        return lu.identity.serial
    name = lu.device.name if lu.device is not None else ""
    digest = hashlib.sha256(f"{name}\0{lu.lun}".encode()).hexdigest()
    return digest[:16].upper()


def naa_designator(lu: LogicalUnit) -> bytes:
    """NAA designator (SPC-4 7.8.6.6): lu.identity.naa, else NAA 3h from the serial."""
    if lu.identity.naa:
        return bytes(lu.identity.naa)
    digest = hashlib.sha256(b"naa:" + serial_number(lu).encode()).digest()
    value = int.from_bytes(digest[:8], "big") & ((1 << 60) - 1)
    return struct.pack(">Q", (0x3 << 60) | value)


def _designator(proto: int, code_set: int, assoc: int, dtype: int, data: bytes) -> bytes:
    piv = 0x80 if assoc != ASSOC_LU else 0
    return bytes(((proto << 4) | code_set, piv | assoc | dtype, 0, len(data))) + data


def _scsi_name(name: str) -> bytes:
    raw = name.encode("utf-8") + b"\0"
    return raw + bytes(-len(raw) % 4)


def _target_name(nexus: Nexus) -> str:
    return nexus.target_name or nexus.target_port.split(",t,")[0]


# --- INQUIRY ----------------------------------------------------------------------------


def standard_inquiry(lu: LogicalUnit | None, identity: Identity, pq_pdt: int) -> bytes:
    """Standard INQUIRY data, 96 bytes (SPC-4 6.6.2 table 140)."""
    removable = 0x80 if lu is not None and lu.removable else 0
    data = bytearray(96)
    data[0] = pq_pdt
    data[1] = removable
    data[2] = 0x06  # VERSION: SPC-4
    data[3] = 0x12  # HISUP=1, RESPONSE DATA FORMAT=2
    data[4] = len(data) - 5
    if lu is not None and lu.commands.find(0x83, 0x00) is not None:
        data[5] = 0x08  # 3PC: EXTENDED COPY (LID1) is supported (xcopy.py)
    data[7] = 0x02  # CMDQUE
    data[8:16] = _ascii(identity.vendor, 8)
    data[16:32] = _ascii(identity.product, 16)
    data[32:36] = _ascii(identity.revision, 4)
    for i, code in enumerate(VERSION_DESCRIPTORS):
        struct.pack_into(">H", data, 58 + 2 * i, code)
    return bytes(data)


def _vpd(code: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", PDT_DIRECT_ACCESS, code, len(payload)) + payload


def supported_vpd_pages(lu: LogicalUnit) -> list[int]:
    """The page codes of the LU's table (CommandSet.vpd), ascending (SPC-4 7.8.16)."""
    return sorted(lu.commands.vpd_pages)


def vpd_page(lu: LogicalUnit, nexus: Nexus, code: int) -> bytes:
    """One VPD page, header included; CheckCondition for a page not implemented."""
    page = lu.commands.vpd_pages.get(code)
    if page is None:
        raise invalid_field_in_cdb(2)
    return bytes(page.build(lu, nexus))


@COMMANDS.vpd(0x00, "Supported VPD Pages")
def supported_vpd_pages_page(lu: LogicalUnit, nexus: Nexus) -> bytes:
    return _vpd(0x00, bytes(supported_vpd_pages(lu)))


@COMMANDS.vpd(0x80, "Unit Serial Number")
def unit_serial_number_page(lu: LogicalUnit, nexus: Nexus) -> bytes:
    return _vpd(0x80, serial_number(lu).encode("ascii", "replace"))


@COMMANDS.vpd(0x83, "Device Identification")
def device_identification_page(lu: LogicalUnit, nexus: Nexus) -> bytes:
    return _vpd(0x83, device_identification(lu, nexus))


@COMMANDS.vpd(0x86, "Extended INQUIRY Data")
def extended_inquiry_page(lu: LogicalUnit, nexus: Nexus) -> bytes:
    ext = bytearray(60)
    ext[1] = 0x07  # HEADSUP, ORDSUP, SIMPSUP
    ext[3] = 0x01  # LUICLR
    return _vpd(0x86, bytes(ext))


def device_identification(lu: LogicalUnit, nexus: Nexus) -> bytes:
    """The designation descriptors of VPD page 83h (SPC-4 7.8.6)."""
    ident = lu.identity
    vendor_id = _ascii(ident.vendor, 8) + _ascii(ident.product, 16) + \
        serial_number(lu).encode("ascii", "replace")
    return b"".join((
        _designator(0, CODE_SET_BINARY, ASSOC_LU, DESIG_NAA, naa_designator(lu)),
        _designator(0, CODE_SET_ASCII, ASSOC_LU, DESIG_T10_VENDOR, vendor_id),
        _designator(PROTOCOL_ISCSI, CODE_SET_BINARY, ASSOC_TARGET_PORT, DESIG_RELATIVE_PORT,
                    struct.pack(">HH", 0, nexus.relative_target_port & 0xFFFF)),
        _designator(PROTOCOL_ISCSI, CODE_SET_UTF8, ASSOC_TARGET_PORT, DESIG_SCSI_NAME,
                    _scsi_name(nexus.target_port)),
        _designator(PROTOCOL_ISCSI, CODE_SET_UTF8, ASSOC_TARGET_DEVICE, DESIG_SCSI_NAME,
                    _scsi_name(_target_name(nexus))),
    ))


def _inquiry_fields(task: ScsiTask) -> tuple[bool, int, int]:
    cdb = task.cdb
    if cdb[1] & 0x02:  # CMDDT (obsolete): not supported
        raise invalid_field_in_cdb(1, bit=1)
    evpd = bool(cdb[1] & 0x01)
    page = cdb[2]
    if not evpd and page:
        raise invalid_field_in_cdb(2)
    return evpd, page, struct.unpack_from(">H", cdb, 3)[0]


# INQUIRY, REPORT LUNS and REQUEST SENSE are served whatever is pending: a unit attention
# (SAM-5 5.14) or a sanitize operation, running or failed (SBC-4 4.11).
_ALWAYS_SERVED = {"ua_exempt": True, "in_sanitize": True, "in_sanitize_failure": True}


@COMMANDS.command(0x12, "INQUIRY", [0x12, 0x01, 0xFF, 0xFF, 0xFF, 0x04], Direction.IN,
                  access=Access.ALLOWED, reserve6=False, queue=False, **_ALWAYS_SERVED)
def inquiry(lu: LogicalUnit, task: ScsiTask) -> None:
    evpd, page, alloc = _inquiry_fields(task)
    if evpd:
        data = vpd_page(lu, task.nexus, page)
    else:
        data = standard_inquiry(lu, lu.identity, PDT_DIRECT_ACCESS)
    _alloc(task, data, alloc)


# --- TEST UNIT READY, REQUEST SENSE ---------------------------------------------------------


@COMMANDS.command(0x00, "TEST UNIT READY", [0x00, 0, 0, 0, 0, 0x04], access=Access.ALLOWED)
def test_unit_ready(lu: LogicalUnit, task: ScsiTask) -> None:
    if not lu.medium_present:
        raise CheckCondition(SenseKey.NOT_READY, MEDIUM_NOT_PRESENT)


@COMMANDS.command(0x03, "REQUEST SENSE", [0x03, 0x01, 0, 0, 0xFF, 0x04], Direction.IN,
                  access=Access.ALLOWED, reserve6=False, queue=False, **_ALWAYS_SERVED)
def request_sense(lu: LogicalUnit, task: ScsiTask) -> None:
    """Return (and clear) a pending unit attention, else the LU's state (SPC-4 6.39)."""
    desc = bool(task.cdb[1] & 0x01)
    code = lu.ua.pop(task.nexus)
    sanitize = lu.sanitize.condition()  # SBC-4 4.11: its progress, or its failure
    if code is not None:
        cc = CheckCondition(SenseKey.UNIT_ATTENTION, code)
    elif sanitize is not None:
        cc = sanitize
    elif not lu.medium_present:
        cc = CheckCondition(SenseKey.NOT_READY, MEDIUM_NOT_PRESENT)
    else:
        cc = CheckCondition(SenseKey.NO_SENSE, NO_ADDITIONAL_SENSE)
    _alloc(task, cc.sense(desc), task.cdb[4])


# --- REPORT LUNS ------------------------------------------------------------------------------


def report_luns_data(luns: list[int], task: ScsiTask) -> bytes:
    """REPORT LUNS parameter data (SPC-4 6.33.2), after checking the CDB."""
    cdb = task.cdb
    select = cdb[2]
    alloc = struct.unpack_from(">I", cdb, 6)[0]
    if select not in (0x00, 0x01, 0x02):
        raise invalid_field_in_cdb(2)
    if alloc < 16:
        raise invalid_field_in_cdb(6)
    listed = sorted(luns) if select in (0x00, 0x02) else []  # no well-known LUs
    body = b"".join(encode_lun(n) for n in listed)
    return (struct.pack(">II", len(body), 0) + body)[:alloc]


def _device_luns(lu: LogicalUnit) -> list[int]:
    return list(lu.device.luns) if lu.device is not None else [lu.lun]


@COMMANDS.command(0xA0, "REPORT LUNS", [0xA0, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04],
                  Direction.IN, access=Access.ALLOWED, reserve6=False, queue=False,
                  **_ALWAYS_SERVED)
def report_luns(lu: LogicalUnit, task: ScsiTask) -> None:
    task.data_in = report_luns_data(_device_luns(lu), task)


# --- MODE SENSE / MODE SELECT ----------------------------------------------------------------


@COMMANDS.command(0x1A, "MODE SENSE(6)", [0x1A, 0x08, 0xFF, 0xFF, 0xFF, 0x04], Direction.IN,
                  access=Access.READ)
def mode_sense6(lu: LogicalUnit, task: ScsiTask) -> None:
    lu.mode.sense(task, ten=False)


@COMMANDS.command(0x5A, "MODE SENSE(10)", [0x5A, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0x04],
                  Direction.IN, access=Access.READ)
def mode_sense10(lu: LogicalUnit, task: ScsiTask) -> None:
    lu.mode.sense(task, ten=True)


@COMMANDS.command(0x15, "MODE SELECT(6)", [0x15, 0x11, 0, 0, 0xFF, 0x04], Direction.OUT,
                  access=Access.EXCLUSIVE)
def mode_select6(lu: LogicalUnit, task: ScsiTask) -> None:
    lu.mode.select(task, ten=False)


@COMMANDS.command(0x55, "MODE SELECT(10)", [0x55, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x04],
                  Direction.OUT, access=Access.EXCLUSIVE)
def mode_select10(lu: LogicalUnit, task: ScsiTask) -> None:
    lu.mode.select(task, ten=True)


# --- LOG SENSE ---------------------------------------------------------------------------------

# SP (byte 1 bit 0), PC and PAGE CODE, SUBPAGE CODE, PARAMETER POINTER, ALLOCATION LENGTH,
# NACA; PPC (byte 1 bit 1) is obsolete since SPC-4 r18 and refused, byte 4 is reserved.
COMMANDS.command(0x4D, "LOG SENSE", [0x4D, 0x01, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x04],
                 Direction.IN, access=Access.ALLOWED, reserve6=False)(logpages.log_sense)


# --- REPORT SUPPORTED OPERATION CODES -------------------------------------------------------


def _timeouts() -> bytes:
    return struct.pack(">HBBII", 0x0A, 0, 0, NOMINAL_TIMEOUT, RECOMMENDED_TIMEOUT)


@COMMANDS.command(0xA3, "REPORT SUPPORTED OPERATION CODES",
                  [0xA3, 0x0C, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04],
                  Direction.IN, service_action=0x0C, access=Access.READ)
def report_supported_operation_codes(lu: LogicalUnit, task: ScsiTask) -> None:
    """SPC-4 6.35: all commands (option 000b) or one command (001b, 010b, 011b)."""
    cdb = task.cdb
    rctd = bool(cdb[2] & 0x80)
    option = cdb[2] & 0x07
    opcode = cdb[3]
    sa = struct.unpack_from(">H", cdb, 4)[0]
    alloc = struct.unpack_from(">I", cdb, 6)[0]
    table = lu.commands
    if option == 0:
        descs = []
        for cmd in table.sorted():
            servactv = cmd.service_action is not None
            flags = (0x02 if rctd else 0) | (0x01 if servactv else 0)
            descs.append(struct.pack(">BBHBBH", cmd.opcode, 0, cmd.service_action or 0, 0,
                                     flags, cmd.cdb_length))
            if rctd:
                descs.append(_timeouts())
        body = b"".join(descs)
        _alloc(task, struct.pack(">I", len(body)) + body, alloc)
        return
    if option == 1:
        if table.has_service_actions(opcode):
            raise invalid_field_in_cdb(2, bit=2)
        cmd = table.find(opcode)
    elif option == 2:
        if table.find(opcode) is not None:
            raise invalid_field_in_cdb(2, bit=2)
        cmd = table.find(opcode, sa)
    elif option == 3:
        if table.has_service_actions(opcode):
            cmd = table.find(opcode, sa)
        else:
            cmd = table.find(opcode)
    else:
        raise invalid_field_in_cdb(2, bit=2)
    if cmd is None:
        data = struct.pack(">BBH", 0, 0x01, 0)  # SUPPORT 001b: not supported
    else:
        data = struct.pack(">BBH", 0, (0x80 if rctd else 0) | 0x03, cmd.cdb_length) + cmd.usage
        if rctd:
            data += _timeouts()
    _alloc(task, data, alloc)


# --- PERSISTENT RESERVE IN ------------------------------------------------------------------


def transport_id(nexus: Nexus) -> bytes:
    """iSCSI TransportID (SPC-4 7.6.4.6): format 01b with the ISID, or 00b (name only)."""
    if ",i,0x" in nexus.initiator_port:
        raw = nexus.initiator_port.encode("utf-8") + b"\0"
        fmt = 0x40
    else:
        raw = (nexus.initiator_name or nexus.initiator_port).encode("utf-8") + b"\0"
        fmt = 0x00
    raw += bytes(-len(raw) % 4)
    if len(raw) < 20:
        raw += bytes(20 - len(raw))
    return struct.pack(">BBH", fmt | PROTOCOL_ISCSI, 0, len(raw)) + raw


def _pr_in_usage(sa: int) -> list[int]:
    return [0x5E, sa, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x04]


def _pr_in(sa: int, name: str) -> Callable[[Handler], Handler]:
    return COMMANDS.command(0x5E, name, _pr_in_usage(sa), Direction.IN, service_action=sa,
                            access=Access.ALLOWED, reserve6=False)


def _pr_alloc(task: ScsiTask) -> int:
    return struct.unpack_from(">H", task.cdb, 7)[0]


@_pr_in(0x00, "PERSISTENT RESERVE IN/READ KEYS")
def pr_in_read_keys(lu: LogicalUnit, task: ScsiTask) -> None:
    res = lu.reservations
    keys = b"".join(struct.pack(">Q", k) for k in res.registrations.values())
    _alloc(task, struct.pack(">II", res.generation, len(keys)) + keys, _pr_alloc(task))


@_pr_in(0x01, "PERSISTENT RESERVE IN/READ RESERVATION")
def pr_in_read_reservation(lu: LogicalUnit, task: ScsiTask) -> None:
    res = lu.reservations
    body = b""
    if res.reservation is not None:
        r = res.reservation
        key = 0 if r.type.all_registrants else res.registrations.get(r.holder, 0)
        body = struct.pack(">QIBBH", key, 0, 0, r.type, 0)
    _alloc(task, struct.pack(">II", res.generation, len(body)) + body, _pr_alloc(task))


@_pr_in(0x02, "PERSISTENT RESERVE IN/REPORT CAPABILITIES")
def pr_in_report_capabilities(lu: LogicalUnit, task: ScsiTask) -> None:
    # CRH=1; SIP_C=ATP_C=0; PTPL_C per LU (an image file: 1; memory, block device: 0);
    # TMV=1, ALLOW COMMANDS=011b, PTPL_A = APTPL active; every type (SPC-4 6.15.4).
    res = lu.reservations
    data = struct.pack(">HBBBBH", 8, 0x10 | int(res.ptpl_capable),
                       0x80 | 0x30 | int(res.aptpl), 0xEA, 0x01, 0)
    _alloc(task, data, _pr_alloc(task))


@_pr_in(0x03, "PERSISTENT RESERVE IN/READ FULL STATUS")
def pr_in_read_full_status(lu: LogicalUnit, task: ScsiTask) -> None:
    res = lu.reservations
    descs = []
    for nexus, key in res.registrations.items():
        holder = res.is_holder(nexus)
        scope_type = res.reservation.type if holder and res.reservation else 0
        tid = transport_id(nexus)
        descs.append(struct.pack(">QIBBIHI", key, 0, 0x01 if holder else 0, scope_type, 0,
                                 nexus.relative_target_port & 0xFFFF, len(tid)) + tid)
    body = b"".join(descs)
    _alloc(task, struct.pack(">II", res.generation, len(body)) + body, _pr_alloc(task))


# --- PERSISTENT RESERVE OUT -----------------------------------------------------------------

REGISTER = 0x00
RESERVE = 0x01
RELEASE = 0x02
CLEAR = 0x03
PREEMPT = 0x04
PREEMPT_AND_ABORT = 0x05
REGISTER_AND_IGNORE_EXISTING_KEY = 0x06
REGISTER_AND_MOVE = 0x07


def _pr_out_params(task: ScsiTask, move: bool) -> bytes:
    plen = struct.unpack_from(">I", task.cdb, 5)[0]
    task.out_length = plen
    data = bytes(task.data_out or b"")[:plen]
    if len(data) < plen or plen < 24 or (not move and plen != 24):
        raise parameter_list_length_error()
    return data


def _pr_type(task: ScsiTask) -> PrType:
    scope_type = task.cdb[2]
    if scope_type >> 4:  # only LU_SCOPE (SPC-4 6.16.3.3)
        raise invalid_field_in_cdb(2, bit=7)
    try:
        return PrType(scope_type & 0x0F)
    except ValueError:
        raise invalid_field_in_cdb(2, bit=3) from None


def _check_key(lu: LogicalUnit, nexus: Nexus, key: int) -> None:
    if lu.reservations.registrations.get(nexus) != key:
        raise ReservationConflict


def _pr_out(sa: int, name: str) -> Callable[[Handler], Handler]:
    usage = [0x5F, sa, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x04]

    def wrap(body: Callable[[LogicalUnit, ScsiTask], Callable[[], None] | None]) -> Handler:
        def handler(lu: LogicalUnit, task: ScsiTask) -> None:
            # One transaction per command: the state file (APTPL) is written and the unit
            # attentions are sent only when the action succeeded (reservations.py). The
            # write is the command's medium access (lu.io: off the event loop when the LU's
            # store can sleep); the table marks the command serial, so the next PERSISTENT
            # RESERVE OUT starts only from a committed or rolled back state. A body may
            # return what to do once committed (PREEMPT AND ABORT: abort the tasks).
            res = lu.reservations
            res.begin()
            try:
                after = body(lu, task)
            except ReservationConflict:
                res.rollback()
                raise
            except BaseException:
                res.rollback()
                raise
            changed, data = res.pending_state()
            if not changed:
                res.committed(data)
                if after is not None:
                    after()
                return
            lu.io(task, _write_pr_state, res, data,
                  then=functools.partial(_pr_committed, res, data, after))

        handler.__name__ = body.__name__
        handler.__doc__ = body.__doc__
        COMMANDS.command(0x5F, name, usage, Direction.OUT, service_action=sa,
                         access=Access.ALLOWED, reserve6=False, serial=True)(handler)
        return handler

    return wrap


def _basic_params(task: ScsiTask) -> tuple[int, int, int]:
    """RESERVATION KEY, SERVICE ACTION RESERVATION KEY and the flags byte (SPC-4 6.16.3)."""
    data = _pr_out_params(task, move=False)
    key, sa_key = struct.unpack_from(">QQ", data, 0)
    flags = data[20]
    if flags & 0x08:  # SPEC_I_PT: SIP_C=0
        raise invalid_field_in_parameter_list(20, bit=3)
    if flags & 0x04:  # ALL_TG_PT: ATP_C=0
        raise invalid_field_in_parameter_list(20, bit=2)
    return key, sa_key, flags


def _aptpl(lu: LogicalUnit, flags: int, byte: int) -> bool:
    """The APTPL bit of a REGISTER, REGISTER AND IGNORE EXISTING KEY (byte 20) or REGISTER
    AND MOVE (byte 17) parameter list; set on a PTPL_C=0 LU it is INVALID FIELD IN
    PARAMETER LIST (SPC-4 6.16.3, 6.16.4). The other service actions ignore it (6.16.3)."""
    aptpl = bool(flags & 0x01)
    if aptpl and not lu.reservations.ptpl_capable:
        raise invalid_field_in_parameter_list(byte, bit=0)
    return aptpl


@_pr_out(REGISTER, "PERSISTENT RESERVE OUT/REGISTER")
def pr_out_register(lu: LogicalUnit, task: ScsiTask) -> None:
    """SPC-4 5.13.7: the RESERVATION KEY must be the current one (0 when unregistered)."""
    key, sa_key, flags = _basic_params(task)
    aptpl = _aptpl(lu, flags, 20)
    res = lu.reservations
    current = res.registrations.get(task.nexus)
    if key != (current or 0):
        raise ReservationConflict
    if current is None and sa_key == 0:
        return  # "no further action": APTPL state unchanged too (SPC-4 5.13.7)
    res.register(task.nexus, sa_key)
    res.set_aptpl(aptpl)


@_pr_out(REGISTER_AND_IGNORE_EXISTING_KEY,
         "PERSISTENT RESERVE OUT/REGISTER AND IGNORE EXISTING KEY")
def pr_out_register_ignore(lu: LogicalUnit, task: ScsiTask) -> None:
    _key, sa_key, flags = _basic_params(task)
    aptpl = _aptpl(lu, flags, 20)
    res = lu.reservations
    if task.nexus not in res.registrations and sa_key == 0:
        return
    res.register(task.nexus, sa_key)
    res.set_aptpl(aptpl)


@_pr_out(RESERVE, "PERSISTENT RESERVE OUT/RESERVE")
def pr_out_reserve(lu: LogicalUnit, task: ScsiTask) -> None:
    """SPC-4 5.13.9: only a registered nexus; no change of an existing reservation."""
    type_ = _pr_type(task)
    key, _sa_key, _flags = _basic_params(task)
    _check_key(lu, task.nexus, key)
    res = lu.reservations
    if res.reservation is not None:
        if res.is_holder(task.nexus) and res.reservation.type == type_:
            return
        raise ReservationConflict
    res.reserve(task.nexus, type_)


@_pr_out(RELEASE, "PERSISTENT RESERVE OUT/RELEASE")
def pr_out_release(lu: LogicalUnit, task: ScsiTask) -> None:
    """SPC-4 5.13.11.2: a non-holder's RELEASE does nothing; a wrong TYPE is an error."""
    type_ = _pr_type(task)
    key, _sa_key, _flags = _basic_params(task)
    _check_key(lu, task.nexus, key)
    res = lu.reservations
    if res.reservation is None or not res.is_holder(task.nexus):
        return
    if res.reservation.type != type_:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, INVALID_RELEASE_OF_PERSISTENT_RESERVATION)
    res.release(task.nexus)


def _write_pr_state(task: ScsiTask, res, data: bytes | None) -> None:
    res.write_state(data)


def _pr_committed(res, data: bytes | None, after: Callable[[], None] | None, task: ScsiTask,
                  error: Exception | None) -> None:
    """After the state file's write: commit (UAs sent, then `after`), or roll back."""
    if error is not None:
        if not isinstance(error, OSError):
            res.rollback()
            raise error
        res.failed(error)
    res.committed(data)
    if after is not None:
        after()


@_pr_out(CLEAR, "PERSISTENT RESERVE OUT/CLEAR")
def pr_out_clear(lu: LogicalUnit, task: ScsiTask) -> None:
    key, _sa_key, _flags = _basic_params(task)
    _check_key(lu, task.nexus, key)
    lu.reservations.clear(task.nexus)


def _preempt(lu: LogicalUnit, task: ScsiTask) -> list[Nexus]:
    type_ = _pr_type(task)
    key, sa_key, _flags = _basic_params(task)
    _check_key(lu, task.nexus, key)
    res = lu.reservations
    all_reg = res.reservation is not None and res.reservation.type.all_registrants
    if sa_key == 0:
        if not all_reg:
            raise invalid_field_in_parameter_list(8)
    elif sa_key not in res.registrations.values():
        raise ReservationConflict
    return res.preempt(task.nexus, sa_key, type_)


@_pr_out(PREEMPT, "PERSISTENT RESERVE OUT/PREEMPT")
def pr_out_preempt(lu: LogicalUnit, task: ScsiTask) -> None:
    """SPC-4 5.13.11.4: remove registrations and take over the reservation."""
    _preempt(lu, task)


@_pr_out(PREEMPT_AND_ABORT, "PERSISTENT RESERVE OUT/PREEMPT AND ABORT")
def pr_out_preempt_and_abort(lu: LogicalUnit, task: ScsiTask) -> Callable[[], None] | None:
    """SPC-4 5.13.11.4.5: PREEMPT, then the target's task manager aborts the victims' tasks
    on this LU (lu.abort_tasks_of -> target.scsi.tmf; once the state is saved, APTPL, and
    the UAs are sent)."""
    victims = _preempt(lu, task)
    if victims:
        return functools.partial(lu.abort_tasks_of, victims, task)
    return None


def _parse_transport_id(data: bytes, pos: int) -> tuple[str, int | None]:
    """(iSCSI name, ISID or None) of an iSCSI TransportID at data[pos:] (SPC-4 7.6.4.6)."""
    if len(data) < pos + 4:
        raise parameter_list_length_error()
    fmt, proto = data[pos] >> 6, data[pos] & 0x0F
    if proto != PROTOCOL_ISCSI or fmt not in (0, 1):
        raise invalid_field_in_parameter_list(pos)
    length = struct.unpack_from(">H", data, pos + 2)[0]
    raw = data[pos + 4 : pos + 4 + length]
    if len(raw) < length:
        raise parameter_list_length_error()
    text = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    if fmt == 0:
        return text, None
    name, sep, isid = text.partition(",i,0x")
    if not sep:
        raise invalid_field_in_parameter_list(pos + 4)
    try:
        return name, int(isid, 16)
    except ValueError:
        raise invalid_field_in_parameter_list(pos + 4) from None


@_pr_out(REGISTER_AND_MOVE, "PERSISTENT RESERVE OUT/REGISTER AND MOVE")
def pr_out_register_and_move(lu: LogicalUnit, task: ScsiTask) -> None:
    """SPC-4 5.13.8: the holder registers another I_T nexus and hands it the reservation."""
    type_ = _pr_type(task)
    data = _pr_out_params(task, move=True)
    key, sa_key, _r, flags, rtp, tid_len = struct.unpack_from(">QQBBHI", data, 0)
    if 24 + tid_len > len(data):
        raise parameter_list_length_error()
    aptpl = _aptpl(lu, flags, 17)
    nexus = task.nexus
    _check_key(lu, nexus, key)
    res = lu.reservations
    if res.reservation is None or not res.is_holder(nexus):
        raise ReservationConflict
    if res.reservation.type.all_registrants:
        raise invalid_field_in_cdb(2, bit=3)
    if sa_key == 0:
        raise invalid_field_in_parameter_list(8)
    if rtp != nexus.relative_target_port:
        raise invalid_field_in_parameter_list(18)
    name, isid = _parse_transport_id(data, 24)
    if isid is None:  # a bare name covers every port of the initiator: not supported
        raise invalid_field_in_parameter_list(24)
    port = f"{name},i,0x{isid:012x}"
    known = (n for n in res.nexuses.values()
             if n.initiator_port.lower() == port.lower() and n.target_port == nexus.target_port)
    dest = next(known, None)
    if dest is None:
        dest = Nexus(port, nexus.target_port, initiator_name=name, target_name=nexus.target_name,
                     isid=isid, tpgt=nexus.tpgt, relative_target_port=nexus.relative_target_port)
    if dest == nexus:
        raise invalid_field_in_parameter_list(24)
    res.move(nexus, dest, sa_key, type_, unreg=bool(flags & 0x02))
    res.set_aptpl(aptpl)


# --- RESERVE / RELEASE (SPC-2) ----------------------------------------------------------------


def _reserve(lu: LogicalUnit, task: ScsiTask) -> None:
    if not lu.reservations.reserve6(task.nexus):
        raise ReservationConflict


def _release(lu: LogicalUnit, task: ScsiTask) -> None:
    if not lu.reservations.release6(task.nexus):
        raise ReservationConflict


@COMMANDS.command(0x16, "RESERVE(6)", [0x16, 0, 0, 0, 0, 0x04], access=Access.ALLOWED)
def reserve6(lu: LogicalUnit, task: ScsiTask) -> None:
    """SPC-2 7.21: reserve the LU for this I_T nexus; a holder may reserve again."""
    _reserve(lu, task)


@COMMANDS.command(0x17, "RELEASE(6)", [0x17, 0, 0, 0, 0, 0x04], access=Access.ALLOWED,
                  reserve6=False)
def release6(lu: LogicalUnit, task: ScsiTask) -> None:
    """SPC-2 7.16: release by a non-holder is GOOD and does nothing."""
    _release(lu, task)


def _no_third_party(task: ScsiTask) -> None:
    if task.cdb[1] & 0x10:  # 3RDPTY
        raise invalid_field_in_cdb(1, bit=4)
    if task.cdb[1] & 0x02:  # LONGID
        raise invalid_field_in_cdb(1, bit=1)


@COMMANDS.command(0x56, "RESERVE(10)", [0x56, 0x12, 0, 0, 0, 0, 0, 0, 0, 0x04],
                  access=Access.ALLOWED)
def reserve10(lu: LogicalUnit, task: ScsiTask) -> None:
    """SPC-2 7.22: as RESERVE(6); third-party reservations are not supported."""
    _no_third_party(task)
    _reserve(lu, task)


@COMMANDS.command(0x57, "RELEASE(10)", [0x57, 0x12, 0, 0, 0, 0, 0, 0, 0, 0x04],
                  access=Access.ALLOWED, reserve6=False)
def release10(lu: LogicalUnit, task: ScsiTask) -> None:
    """SPC-2 7.17."""
    _no_third_party(task)
    _release(lu, task)


# --- LUNs with no logical unit ------------------------------------------------------------------


def absent_lun(luns: list[int], task: ScsiTask) -> None:
    """INQUIRY and REPORT LUNS addressed to a LUN with no LU (SPC-4 6.6.2, 6.33), in a
    target whose LUs are `luns`; CheckCondition for a CDB in error (ScsiDevice.fail)."""
    opcode = task.cdb[0]
    if opcode == 0xA0:
        if len(task.cdb) < 12:
            raise invalid_field_in_cdb(0)
        task.data_in = report_luns_data(luns, task)
    elif opcode == 0x12:
        if len(task.cdb) < 6:
            raise invalid_field_in_cdb(0)
        evpd, page, alloc = _inquiry_fields(task)
        pq_pdt = PQ_NOT_SUPPORTED | PDT_UNKNOWN
        if not evpd:
            data = standard_inquiry(None, Identity(), pq_pdt)
        elif page == 0x00:
            data = struct.pack(">BBHB", pq_pdt, 0x00, 1, 0x00)
        else:
            raise invalid_field_in_cdb(2)
        _alloc(task, data, alloc)
    else:
        raise invalid_field_in_cdb(0)
    task.status = Status.GOOD
