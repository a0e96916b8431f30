"""Sense data and the CheckCondition error (SPC-4 4.5).

Rules:
- A handler reports a failed command by raising CheckCondition(sense_key, asc/ascq, ...).
  LogicalUnit._ended (for execute() and complete_io()) catches it, ScsiTask.check_condition
  sets the status and CheckCondition.sense() / build_sense() turn it into sense data;
  nothing else in the project formats sense (REQUEST SENSE and RECEIVE COPY RESULTS call
  the same CheckCondition.sense()).
- The format follows D_SENSE of the control mode page (SPC-4 7.5.8): fixed format,
  response code 70h (SPC-4 4.5.3), or descriptor format, 72h (SPC-4 4.5.2).
- ILLEGAL REQUEST carries a sense-key specific field pointer (SPC-4 4.5.2.4.2): SKSV=1,
  C/D=1 when the bad field is in the CDB and 0 when it is in the parameter list, BPV and
  the bit pointer when one bit is named, and the byte offset of the field.
- NOT READY may carry a progress indication instead (SPC-4 4.5.2.4.4).
- The INFORMATION field (SPC-4 4.5.2.2 and fixed bytes 3-6) is set when `info` is given;
  in fixed format an information value over 32 bits is not VALID.
- The COMMAND-SPECIFIC INFORMATION field (SPC-4 4.5.2.3 and fixed bytes 8-11) is set when
  `cmd_info` is given: EXTENDED COPY puts the number of the segment descriptor being
  processed there (SPC-4 6.4); with sense key COPY ABORTED the sense-key specific bytes
  are a segment pointer (SPC-4 4.5.2.4.5), whose SD bit is where C/D is for a field
  pointer, so cd=False gives SD=0 (the pointer counts from the parameter list start).
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import NamedTuple


class SenseKey(IntEnum):
    """SPC-4 table 28."""

    NO_SENSE = 0x0
    RECOVERED_ERROR = 0x1
    NOT_READY = 0x2
    MEDIUM_ERROR = 0x3
    HARDWARE_ERROR = 0x4
    ILLEGAL_REQUEST = 0x5
    UNIT_ATTENTION = 0x6
    DATA_PROTECT = 0x7
    BLANK_CHECK = 0x8
    VENDOR_SPECIFIC = 0x9
    COPY_ABORTED = 0xA
    ABORTED_COMMAND = 0xB
    VOLUME_OVERFLOW = 0xD
    MISCOMPARE = 0xE
    COMPLETED = 0xF


class Asc(NamedTuple):
    """An additional sense code and qualifier (SPC-4 table 29 / annex D)."""

    asc: int
    ascq: int


NO_ADDITIONAL_SENSE = Asc(0x00, 0x00)
OPERATION_IN_PROGRESS = Asc(0x00, 0x16)
LU_NOT_READY_CAUSE_NOT_REPORTABLE = Asc(0x04, 0x00)
LU_NOT_READY_INITIALIZING_COMMAND_REQUIRED = Asc(0x04, 0x02)
LU_NOT_READY_FORMAT_IN_PROGRESS = Asc(0x04, 0x04)
LU_NOT_READY_SANITIZE_IN_PROGRESS = Asc(0x04, 0x1B)
UNREACHABLE_COPY_TARGET = Asc(0x08, 0x04)
WRITE_ERROR = Asc(0x0C, 0x00)
COPY_TARGET_DEVICE_NOT_REACHABLE = Asc(0x0D, 0x02)
INCORRECT_COPY_TARGET_DEVICE_TYPE = Asc(0x0D, 0x03)
INVALID_FIELD_IN_INFORMATION_UNIT = Asc(0x0E, 0x03)
UNRECOVERED_READ_ERROR = Asc(0x11, 0x00)
MISCOMPARE_DURING_VERIFY = Asc(0x1D, 0x00)
PARAMETER_LIST_LENGTH_ERROR = Asc(0x1A, 0x00)
INVALID_COMMAND_OPERATION_CODE = Asc(0x20, 0x00)
LBA_OUT_OF_RANGE = Asc(0x21, 0x00)
INVALID_FIELD_IN_CDB = Asc(0x24, 0x00)
LOGICAL_UNIT_NOT_SUPPORTED = Asc(0x25, 0x00)
INVALID_FIELD_IN_PARAMETER_LIST = Asc(0x26, 0x00)
PARAMETER_NOT_SUPPORTED = Asc(0x26, 0x01)
PARAMETER_VALUE_INVALID = Asc(0x26, 0x02)
INVALID_RELEASE_OF_PERSISTENT_RESERVATION = Asc(0x26, 0x04)
TOO_MANY_TARGET_DESCRIPTORS = Asc(0x26, 0x06)
UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE = Asc(0x26, 0x07)
TOO_MANY_SEGMENT_DESCRIPTORS = Asc(0x26, 0x08)
UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE = Asc(0x26, 0x09)
UNEXPECTED_INEXACT_SEGMENT = Asc(0x26, 0x0A)
INLINE_DATA_LENGTH_EXCEEDED = Asc(0x26, 0x0B)
WRITE_PROTECTED = Asc(0x27, 0x00)
POWER_ON_RESET_OR_BUS_DEVICE_RESET_OCCURRED = Asc(0x29, 0x00)
POWER_ON_OCCURRED = Asc(0x29, 0x01)
SCSI_BUS_RESET_OCCURRED = Asc(0x29, 0x02)
BUS_DEVICE_RESET_FUNCTION_OCCURRED = Asc(0x29, 0x03)
DEVICE_INTERNAL_RESET = Asc(0x29, 0x04)
I_T_NEXUS_LOSS_OCCURRED = Asc(0x29, 0x07)
PARAMETERS_CHANGED = Asc(0x2A, 0x00)
MODE_PARAMETERS_CHANGED = Asc(0x2A, 0x01)
RESERVATIONS_PREEMPTED = Asc(0x2A, 0x03)
RESERVATIONS_RELEASED = Asc(0x2A, 0x04)
REGISTRATIONS_PREEMPTED = Asc(0x2A, 0x05)
CAPACITY_DATA_HAS_CHANGED = Asc(0x2A, 0x09)
COMMANDS_CLEARED_BY_ANOTHER_INITIATOR = Asc(0x2F, 0x00)
COMMANDS_CLEARED_BY_DEVICE_SERVER = Asc(0x2F, 0x02)
SAVING_PARAMETERS_NOT_SUPPORTED = Asc(0x39, 0x00)
MEDIUM_NOT_PRESENT = Asc(0x3A, 0x00)
INQUIRY_DATA_HAS_CHANGED = Asc(0x3F, 0x03)
REPORTED_LUNS_DATA_HAS_CHANGED = Asc(0x3F, 0x0E)
INTERNAL_TARGET_FAILURE = Asc(0x44, 0x00)
INVALID_MESSAGE_ERROR = Asc(0x49, 0x00)
MEDIUM_REMOVAL_PREVENTED = Asc(0x53, 0x02)
INSUFFICIENT_REGISTRATION_RESOURCES = Asc(0x55, 0x04)


class ReservationConflict(Exception):
    """A command ends in RESERVATION CONFLICT status (SAM-5 5.3.1, SPC-4 5.13.1, SPC-2
    7.21): raised where the conflict is found (the LU's check against the table entry,
    RESERVE/RELEASE, PERSISTENT RESERVE OUT, EXTENDED COPY) and turned into the status in
    one place, LogicalUnit._ended (for execute and complete_io), as CheckCondition is into sense."""


class CheckCondition(Exception):
    """A command ends in CHECK CONDITION with this sense (SAM-5 5.3.1)."""

    def __init__(
        self,
        key: int,
        code: Asc,
        *,
        field: int | None = None,
        bit: int | None = None,
        cd: bool = True,
        info: int | None = None,
        progress: int | None = None,
        ili: bool = False,
        cmd_info: int | None = None,
    ) -> None:
        super().__init__(f"{SenseKey(key).name} {code.asc:02X}/{code.ascq:02X}")
        self.key = key
        self.code = code
        self.field = field  # byte offset of the bad field (sense-key specific)
        self.bit = bit  # bit within that byte, when one bit is named
        self.cd = cd  # True: the field is in the CDB; False: in the parameter data
        self.info = info  # INFORMATION field
        self.progress = progress  # progress indication, 0..65535 (NOT READY)
        self.ili = ili
        self.cmd_info = cmd_info  # COMMAND-SPECIFIC INFORMATION field

    def sense(self, descriptor: bool) -> bytes:
        return build_sense(self, descriptor)


def invalid_field_in_cdb(byte: int, bit: int | None = None) -> CheckCondition:
    """ILLEGAL REQUEST / INVALID FIELD IN CDB with the field pointer (SPC-4 4.5.2.4.2)."""
    return CheckCondition(SenseKey.ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB, field=byte, bit=bit)


def invalid_field_in_parameter_list(byte: int, bit: int | None = None) -> CheckCondition:
    """ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST, pointer into the data (C/D=0)."""
    return CheckCondition(
        SenseKey.ILLEGAL_REQUEST, INVALID_FIELD_IN_PARAMETER_LIST, field=byte, bit=bit, cd=False
    )


def parameter_list_length_error() -> CheckCondition:
    return CheckCondition(SenseKey.ILLEGAL_REQUEST, PARAMETER_LIST_LENGTH_ERROR)


def lba_out_of_range(info: int | None = None) -> CheckCondition:
    """ILLEGAL REQUEST / LOGICAL BLOCK ADDRESS OUT OF RANGE (SBC-4 4.5)."""
    return CheckCondition(SenseKey.ILLEGAL_REQUEST, LBA_OUT_OF_RANGE, info=info)


def invalid_opcode() -> CheckCondition:
    """ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE, pointing at CDB byte 0."""
    return CheckCondition(
        SenseKey.ILLEGAL_REQUEST, INVALID_COMMAND_OPERATION_CODE, field=0
    )


def write_protected() -> CheckCondition:
    return CheckCondition(SenseKey.DATA_PROTECT, WRITE_PROTECTED)


def _sense_key_specific(cc: CheckCondition) -> bytes | None:
    """The three SKS bytes (SPC-4 4.5.2.4), or None when there is nothing to say."""
    if cc.progress is not None:
        return struct.pack(">BH", 0x80, cc.progress & 0xFFFF)
    if cc.field is None:
        return None
    b0 = 0x80 | (0x40 if cc.cd else 0)
    if cc.bit is not None:
        b0 |= 0x08 | (cc.bit & 0x07)
    return struct.pack(">BH", b0, cc.field & 0xFFFF)


def build_sense(cc: CheckCondition, descriptor: bool) -> bytes:
    """Sense data for `cc`: descriptor format (72h) when `descriptor`, else fixed (70h)."""
    sks = _sense_key_specific(cc)
    if descriptor:
        descs = b""
        if cc.info is not None:
            # Information sense data descriptor (SPC-4 4.5.2.2): type 0, VALID=1.
            descs += struct.pack(">BBBBQ", 0x00, 0x0A, 0x80, 0, cc.info & 0xFFFFFFFFFFFFFFFF)
        if cc.cmd_info is not None:
            # Command-specific information sense data descriptor (SPC-4 4.5.2.3): type 1.
            descs += struct.pack(">BBBBQ", 0x01, 0x0A, 0, 0,
                                 cc.cmd_info & 0xFFFFFFFFFFFFFFFF)
        if sks is not None:
            # Sense key specific sense data descriptor (SPC-4 4.5.2.4): type 2.
            descs += struct.pack(">BBBB", 0x02, 0x06, 0, 0) + sks + b"\x00"
        if cc.ili:
            # Block commands sense data descriptor (SBC-4 4.18.2): type 5, ILI.
            descs += struct.pack(">BBBB", 0x05, 0x02, 0, 0x20)
        header = struct.pack(
            ">BBBBBBBB", 0x72, cc.key & 0x0F, cc.code.asc, cc.code.ascq, 0, 0, 0, len(descs)
        )
        return header + descs
    info = cc.info if cc.info is not None and cc.info <= 0xFFFFFFFF else None
    b0 = 0x70 | (0x80 if info is not None else 0)
    b2 = (cc.key & 0x0F) | (0x20 if cc.ili else 0)
    return struct.pack(
        ">BBBIBIBBB3s",
        b0,
        0,
        b2,
        info or 0,
        10,
        (cc.cmd_info or 0) & 0xFFFFFFFF,
        cc.code.asc,
        cc.code.ascq,
        0,
        sks or b"\x00\x00\x00",
    )


def sense_key_asc(sense: bytes) -> tuple[int, int, int]:
    """(sense key, asc, ascq) of fixed or descriptor sense data; for logs and traces."""
    if not sense:
        return (0, 0, 0)
    code = sense[0] & 0x7F
    if code in (0x72, 0x73) and len(sense) >= 4:
        return (sense[1] & 0x0F, sense[2], sense[3])
    if code in (0x70, 0x71) and len(sense) >= 14:
        return (sense[2] & 0x0F, sense[12], sense[13])
    return (0, 0, 0)
