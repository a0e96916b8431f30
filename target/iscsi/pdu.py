"""The iSCSI Basic Header Segment codec (RFC 7143 section 11).

Rules:
- Every BHS is 48 bytes. All of them share one layout of fields at fixed offsets
  (11.2.1): byte 0 I bit and opcode, byte 1 flags, bytes 2-3 opcode specific, byte 4
  TotalAHSLength, bytes 5-7 DataSegmentLength, bytes 8-15 LUN (or ISID/TSIH for login),
  16-19 Initiator Task Tag, and eight 32-bit words at 20..44 whose meaning depends on the
  opcode. One precompiled struct parses and builds them all (DESIGN.md principle 4); the
  names of the words per opcode are given by the accessors below.
- The data segment is padded to a multiple of 4 bytes (11.2.3); digests (CRC32C, 13.1)
  are sent after the header (+AHS) and after the padded data, least significant byte
  first, as the reference initiators do.
- Every PDU is built by a keyword builder named after its RFC 7143 section: the target's
  (scsi_response, data_in, r2t, nop_in, async_message, text_response, login_response,
  logout_response, task_management_response, reject) and the initiators' (scsi_command,
  data_out, nop_out, task_management_request, logout_request, text_request,
  login_request), all over the same struct; pack() stays for deliberately odd PDUs.
- Nothing here allocates per data byte: data segments travel as separate buffers.
"""

from __future__ import annotations

import struct
from enum import IntEnum

import crc32c as _crc32c

BHS_LEN = 48
DIGEST_LEN = 4
RESERVED_TAG = 0xFFFFFFFF

# op, flags, b2, b3, ahs_dsl (TotalAHSLength << 24 | DataSegmentLength), lun (8 bytes),
# itt, w20, w24, w28, w32, w36, w40, w44
BHS = struct.Struct(">BBBBI8sIIIIIIII")
_DIGEST = struct.Struct("<I")
_U32 = struct.Struct(">I")
ZERO_LUN = bytes(8)
PAD = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")  # indexed by len % 4


class Op(IntEnum):
    """Opcodes (RFC 7143 11.2.1.2)."""

    NOP_OUT = 0x00
    SCSI_COMMAND = 0x01
    TASK_MGMT_REQUEST = 0x02
    LOGIN_REQUEST = 0x03
    TEXT_REQUEST = 0x04
    DATA_OUT = 0x05
    LOGOUT_REQUEST = 0x06
    SNACK_REQUEST = 0x10
    NOP_IN = 0x20
    SCSI_RESPONSE = 0x21
    TASK_MGMT_RESPONSE = 0x22
    LOGIN_RESPONSE = 0x23
    TEXT_RESPONSE = 0x24
    DATA_IN = 0x25
    LOGOUT_RESPONSE = 0x26
    R2T = 0x31
    ASYNC_MESSAGE = 0x32
    REJECT = 0x3F


INITIATOR_OPCODES = frozenset(
    {Op.NOP_OUT, Op.SCSI_COMMAND, Op.TASK_MGMT_REQUEST, Op.LOGIN_REQUEST, Op.TEXT_REQUEST,
     Op.DATA_OUT, Op.LOGOUT_REQUEST, Op.SNACK_REQUEST}
)

# Flags
F_FINAL = 0x80
F_CONTINUE = 0x40  # Login/Text C bit
F_READ = 0x40  # SCSI Command R
F_WRITE = 0x20  # SCSI Command W
ATTR_MASK = 0x07
F_ACK = 0x40  # Data-In A
F_OVERFLOW = 0x04  # o (SCSI Response, Data-In)
F_UNDERFLOW = 0x02  # u
F_STATUS = 0x01  # Data-In S
IMMEDIATE = 0x40  # byte 0 I bit
LOGIN_TRANSIT = 0x80


class RejectReason(IntEnum):
    """RFC 7143 11.17.1."""

    DATA_DIGEST_ERROR = 0x02
    SNACK_REJECT = 0x03
    PROTOCOL_ERROR = 0x04
    COMMAND_NOT_SUPPORTED = 0x05
    IMMEDIATE_COMMAND_REJECT = 0x06
    TASK_IN_PROGRESS = 0x07
    INVALID_DATA_ACK = 0x08
    INVALID_PDU_FIELD = 0x09
    LONG_OPERATION_REJECT = 0x0A
    WAITING_FOR_LOGOUT = 0x0C


class TmfFunction(IntEnum):
    """RFC 7143 11.5.1."""

    ABORT_TASK = 1
    ABORT_TASK_SET = 2
    CLEAR_ACA = 3
    CLEAR_TASK_SET = 4
    LOGICAL_UNIT_RESET = 5
    TARGET_WARM_RESET = 6
    TARGET_COLD_RESET = 7
    TASK_REASSIGN = 8
    QUERY_TASK = 9
    QUERY_TASK_SET = 10
    I_T_NEXUS_RESET = 11
    QUERY_ASYNC_EVENT = 12


class TmfResponse(IntEnum):
    """RFC 7143 11.6.1."""

    COMPLETE = 0
    TASK_DOES_NOT_EXIST = 1
    LUN_DOES_NOT_EXIST = 2
    TASK_STILL_ALLEGIANT = 3
    REASSIGNMENT_NOT_SUPPORTED = 4
    NOT_SUPPORTED = 5
    AUTHORIZATION_FAILED = 6
    REJECTED = 255


class Bhs:
    """A received Basic Header Segment, parsed in one unpack; words named by accessors."""

    __slots__ = ("opcode", "immediate", "flags", "b2", "b3", "ahs_len", "dsl", "lun", "itt",
                 "w20", "w24", "w28", "w32", "w36", "w40", "w44", "raw")

    def __init__(self, raw: bytes | bytearray | memoryview) -> None:
        (op, self.flags, self.b2, self.b3, ahs_dsl, self.lun, self.itt, self.w20, self.w24,
         self.w28, self.w32, self.w36, self.w40, self.w44) = BHS.unpack_from(raw)
        self.opcode = op & 0x3F
        self.immediate = bool(op & IMMEDIATE)
        self.ahs_len = (ahs_dsl >> 24) * 4
        self.dsl = ahs_dsl & 0xFFFFFF
        self.raw = bytes(raw[:BHS_LEN])

    # Names of the words, per RFC 7143 section 11; the PDUs each name is valid for are in
    # the comment (a word means something else in other PDUs). Properties, so that parsing
    # does no more work than the one unpack.
    # -- initiator PDUs
    @property
    def cmdsn(self) -> int:  # SCSI Command, NOP-Out, TMF, Login, Text, Logout: bytes 24-27
        return self.w24

    @property
    def exp_stat_sn(self) -> int:  # SCSI Command, NOP-Out, TMF, Login, Text, Logout,
        return self.w28  # Data-Out: ExpStatSN, bytes 28-31

    @property
    def edtl(self) -> int:  # SCSI Command: Expected Data Transfer Length, bytes 20-23
        return self.w20

    @property
    def ttt(self) -> int:  # Data-Out, NOP-Out, Text Request, and the target's Data-In, R2T,
        return self.w20  # NOP-In, Text Response: Target Transfer Tag, bytes 20-23

    @property
    def datasn(self) -> int:  # Data-Out, Data-In: DataSN, bytes 36-39
        return self.w36

    @property
    def buffer_offset(self) -> int:  # Data-Out, Data-In, R2T: Buffer Offset, bytes 40-43
        return self.w40

    @property
    def cdb(self) -> bytes:  # SCSI Command, bytes 32-47
        return self.raw[32:48]

    @property
    def referenced_task_tag(self) -> int:  # TMF Request, bytes 20-23
        return self.w20

    @property
    def ref_cmdsn(self) -> int:  # TMF Request: RefCmdSN, bytes 32-35
        return self.w32

    @property
    def isid(self) -> int:  # Login Request and Response: bytes 8-13
        return int.from_bytes(self.lun[:6], "big")

    @property
    def tsih(self) -> int:  # Login Request and Response: bytes 14-15
        return int.from_bytes(self.lun[6:8], "big")

    @property
    def cid(self) -> int:  # Login, Logout Request: bytes 20-21
        return self.w20 >> 16

    # -- target PDUs (11.4 SCSI Response, 11.6 TMF Response, 11.7 Data-In, 11.8 R2T,
    #    11.9 Async, 11.11 Text Response, 11.13 Login Response, 11.15 Logout Response,
    #    11.17 Reject, 11.19 NOP-In)
    @property
    def statsn(self) -> int:  # every target PDU: StatSN, bytes 24-27 (Data-In: with S only)
        return self.w24

    @property
    def exp_cmdsn(self) -> int:  # every target PDU: ExpCmdSN, bytes 28-31
        return self.w28

    @property
    def max_cmdsn(self) -> int:  # every target PDU: MaxCmdSN, bytes 32-35
        return self.w32

    @property
    def exp_datasn(self) -> int:  # SCSI Response: ExpDataSN, bytes 36-39
        return self.w36

    @property
    def r2tsn(self) -> int:  # R2T: R2TSN, bytes 36-39
        return self.w36

    @property
    def bidi_residual_count(self) -> int:  # SCSI Response: Bidirectional Read Residual
        return self.w40  # Count, bytes 40-43

    @property
    def residual_count(self) -> int:  # SCSI Response, Data-In: Residual Count, bytes 44-47
        return self.w44

    @property
    def desired_length(self) -> int:  # R2T: Desired Data Transfer Length, bytes 44-47
        return self.w44

    @property
    def status_class(self) -> int:  # Login Response: Status-Class, byte 36
        return self.w36 >> 24

    @property
    def status_detail(self) -> int:  # Login Response: Status-Detail, byte 37
        return (self.w36 >> 16) & 0xFF

    @property
    def time2wait(self) -> int:  # Logout Response: Time2Wait, bytes 40-41
        return self.w40 >> 16

    @property
    def time2retain(self) -> int:  # Logout Response: Time2Retain, bytes 42-43
        return self.w40 & 0xFFFF

    def __repr__(self) -> str:
        try:
            name = Op(self.opcode).name
        except ValueError:
            name = f"opcode {self.opcode:#x}"
        return f"<Bhs {name} itt={self.itt:#x} dsl={self.dsl}>"


def pack(
    op: int,
    flags: int = 0,
    b2: int = 0,
    b3: int = 0,
    dsl: int = 0,
    lun: bytes = ZERO_LUN,
    itt: int = RESERVED_TAG,
    w20: int = 0,
    w24: int = 0,
    w28: int = 0,
    w32: int = 0,
    w36: int = 0,
    w40: int = 0,
    w44: int = 0,
) -> bytes:
    """Build a BHS (no AHS)."""
    return BHS.pack(op, flags, b2, b3, dsl, lun, itt, w20, w24, w28, w32, w36, w40, w44)


def digest(*buffers: bytes | bytearray | memoryview) -> bytes:
    """The CRC32C digest of the buffers, in the byte order it travels (RFC 7143 13.1)."""
    crc = 0
    for b in buffers:
        crc = _crc32c.crc32c(b, crc)
    return _DIGEST.pack(crc)


def crc(buffers: list, start: int = 0) -> int:
    value = start
    for b in buffers:
        value = _crc32c.crc32c(b, value)
    return value


def digest_value(raw: bytes | bytearray | memoryview) -> int:
    return _DIGEST.unpack_from(raw)[0]


def padding(length: int) -> bytes:
    return PAD[length & 3]


def pad_len(length: int) -> int:
    return -length & 3


def u32(raw: bytes | bytearray | memoryview, offset: int = 0) -> int:
    return _U32.unpack_from(raw, offset)[0]


def sn_lt(a: int, b: int) -> bool:
    """Serial number arithmetic, 32 bits (RFC 1982 / RFC 7143 4.2.2.1): a < b."""
    return a != b and ((b - a) & 0xFFFFFFFF) < 0x80000000


def sn_le(a: int, b: int) -> bool:
    return a == b or sn_lt(a, b)


# --- target PDUs by name (keyword builders over the one BHS struct) ----------------------
# Each names the fields of its RFC 7143 section; words it does not name are reserved (0).

_pack = BHS.pack
# The opcodes of the PDUs every command's answer is made of, as plain ints in globals: an
# IntEnum member read through its class (Op.DATA_IN) costs about 900 instructions under
# CPython 3.11, a global one load.
_SCSI_RESPONSE = int(Op.SCSI_RESPONSE)
_DATA_IN = int(Op.DATA_IN)
_R2T = int(Op.R2T)
_NOP_IN = int(Op.NOP_IN)


def scsi_response(*, flags: int, response: int = 0, status: int, dsl: int, itt: int,
                  statsn: int, exp_cmdsn: int, max_cmdsn: int, exp_datasn: int = 0,
                  bidi_residual: int = 0, residual: int = 0) -> bytes:
    """SCSI Response (11.4): flags o/u/O/U besides F; LUN reserved; 20 SNACK Tag (0)."""
    return _pack(_SCSI_RESPONSE, F_FINAL | flags, response, status, dsl, ZERO_LUN, itt,
                 0, statsn, exp_cmdsn, max_cmdsn, exp_datasn, bidi_residual, residual)


def data_in(*, flags: int, status: int = 0, dsl: int, lun: bytes, itt: int,
            ttt: int = RESERVED_TAG, statsn: int = 0, exp_cmdsn: int, max_cmdsn: int,
            datasn: int, buffer_offset: int, residual: int = 0) -> bytes:
    """SCSI Data-In (11.7): flags F/A/O/U/S; Status and StatSN only with S."""
    return _pack(_DATA_IN, flags, 0, status, dsl, lun, itt, ttt, statsn, exp_cmdsn,
                 max_cmdsn, datasn, buffer_offset, residual)


def r2t(*, lun: bytes, itt: int, ttt: int, statsn: int, exp_cmdsn: int, max_cmdsn: int,
        r2tsn: int, buffer_offset: int, desired_length: int) -> bytes:
    """Ready To Transfer (11.8)."""
    return _pack(_R2T, F_FINAL, 0, 0, 0, lun, itt, ttt, statsn, exp_cmdsn, max_cmdsn,
                 r2tsn, buffer_offset, desired_length)


def nop_in(*, dsl: int = 0, lun: bytes = ZERO_LUN, itt: int, ttt: int, statsn: int,
           exp_cmdsn: int, max_cmdsn: int) -> bytes:
    """NOP-In (11.19)."""
    return _pack(_NOP_IN, F_FINAL, 0, 0, dsl, lun, itt, ttt, statsn, exp_cmdsn, max_cmdsn,
                 0, 0, 0)


def async_message(*, event: int, vcode: int = 0, parameter1: int = 0, parameter2: int = 0,
                  parameter3: int = 0, dsl: int = 0, lun: bytes = ZERO_LUN, statsn: int,
                  exp_cmdsn: int, max_cmdsn: int) -> bytes:
    """Asynchronous Message (11.9): ITT ffffffff; 36 AsyncEvent, 37 AsyncVCode, 38-43
    Parameter1..3."""
    return _pack(Op.ASYNC_MESSAGE, F_FINAL, 0, 0, dsl, lun, RESERVED_TAG, 0, statsn,
                 exp_cmdsn, max_cmdsn, event << 24 | vcode << 16 | parameter1,
                 parameter2 << 16 | parameter3, 0)


def text_response(*, flags: int, dsl: int, lun: bytes, itt: int, ttt: int, statsn: int,
                  exp_cmdsn: int, max_cmdsn: int) -> bytes:
    """Text Response (11.11): flags F/C."""
    return _pack(Op.TEXT_RESPONSE, flags, 0, 0, dsl, lun, itt, ttt, statsn, exp_cmdsn,
                 max_cmdsn, 0, 0, 0)


def logout_response(*, response: int, itt: int, statsn: int, exp_cmdsn: int,
                    max_cmdsn: int, time2wait: int = 0, time2retain: int = 0) -> bytes:
    """Logout Response (11.15): 40-41 Time2Wait, 42-43 Time2Retain."""
    return _pack(Op.LOGOUT_RESPONSE, F_FINAL, response, 0, 0, ZERO_LUN, itt, 0, statsn,
                 exp_cmdsn, max_cmdsn, 0, time2wait << 16 | time2retain, 0)


def task_management_response(*, response: int, itt: int, statsn: int, exp_cmdsn: int,
                             max_cmdsn: int) -> bytes:
    """Task Management Function Response (11.6)."""
    return _pack(Op.TASK_MGMT_RESPONSE, F_FINAL, response, 0, 0, ZERO_LUN, itt, 0, statsn,
                 exp_cmdsn, max_cmdsn, 0, 0, 0)


def reject(*, reason: int, statsn: int, exp_cmdsn: int, max_cmdsn: int,
           datasn_r2tsn: int = 0) -> bytes:
    """Reject (11.17): the rejected header follows as the 48-byte data segment; ITT
    ffffffff."""
    return _pack(Op.REJECT, F_FINAL, reason, 0, BHS_LEN, ZERO_LUN, RESERVED_TAG, 0, statsn,
                 exp_cmdsn, max_cmdsn, datasn_r2tsn, 0, 0)


def _isid_tsih(isid: int, tsih: int) -> bytes:
    """Login bytes 8-15: ISID (6 bytes, 11.12.5) then TSIH (2 bytes, 11.12.6)."""
    return (isid << 16 | tsih).to_bytes(8, "big")


def login_response(*, flags: int, version_max: int = 0, version_active: int = 0, dsl: int,
                   isid: int, tsih: int, itt: int, statsn: int, exp_cmdsn: int,
                   max_cmdsn: int, status_class: int = 0, status_detail: int = 0) -> bytes:
    """Login Response (11.13): flags T/C/CSG/NSG; 2 Version-max, 3 Version-active; 8-13
    ISID, 14-15 TSIH; 36 Status-Class, 37 Status-Detail."""
    return _pack(Op.LOGIN_RESPONSE, flags, version_max, version_active, dsl,
                 _isid_tsih(isid, tsih), itt, 0, statsn, exp_cmdsn, max_cmdsn,
                 status_class << 24 | status_detail << 16, 0, 0)


# --- initiator PDUs by name (the initiators of target.iscsi, target.dump, target.testing) --
# Same rules: the words each does not name are reserved (0). `immediate` is byte 0's I bit
# (11.2.1.1); a Login Request always carries it (11.12).

_CDB_WORDS = struct.Struct(">IIII")  # the 16-byte CDB field as BHS words 32..44
CDB_FIELD_LEN = 16


def scsi_command(*, immediate: bool = False, flags: int, dsl: int, lun: bytes, itt: int,
                 edtl: int, cmdsn: int, exp_statsn: int, cdb: bytes) -> bytes:
    """SCSI Command (11.3): flags F/R/W/ATTR; 20 Expected Data Transfer Length; 32-47 the
    CDB, zero padded. A CDB over 16 bytes needs an Extended CDB AHS (11.2.1.3), which this
    builder does not make: ValueError."""
    if len(cdb) > CDB_FIELD_LEN:
        raise ValueError(f"a {len(cdb)}-byte CDB needs an Extended CDB AHS (11.2.1.3)")
    w32, w36, w40, w44 = _CDB_WORDS.unpack(bytes(cdb).ljust(CDB_FIELD_LEN, b"\x00"))
    return _pack(Op.SCSI_COMMAND | (IMMEDIATE if immediate else 0), flags, 0, 0, dsl, lun,
                 itt, edtl, cmdsn, exp_statsn, w32, w36, w40, w44)


def data_out(*, final: bool, dsl: int, lun: bytes, itt: int, ttt: int = RESERVED_TAG,
             exp_statsn: int, datasn: int, buffer_offset: int) -> bytes:
    """SCSI Data-Out (11.7): flag F only; 24 and 32 reserved; TTT ffffffff for unsolicited
    data (11.7.4)."""
    return _pack(Op.DATA_OUT, F_FINAL if final else 0, 0, 0, dsl, lun, itt, ttt, 0,
                 exp_statsn, 0, datasn, buffer_offset, 0)


def nop_out(*, immediate: bool = False, dsl: int = 0, lun: bytes = ZERO_LUN, itt: int,
            ttt: int = RESERVED_TAG, cmdsn: int, exp_statsn: int) -> bytes:
    """NOP-Out (11.18): F always 1; a ping has ITT != ffffffff and TTT ffffffff, an answer
    to a NOP-In ITT ffffffff and the NOP-In's TTT (11.18.1-2)."""
    return _pack(Op.NOP_OUT | (IMMEDIATE if immediate else 0), F_FINAL, 0, 0, dsl, lun, itt,
                 ttt, cmdsn, exp_statsn, 0, 0, 0, 0)


def task_management_request(*, immediate: bool = False, function: int, lun: bytes, itt: int,
                            referenced_task_tag: int = RESERVED_TAG, cmdsn: int,
                            exp_statsn: int, ref_cmdsn: int = 0,
                            exp_datasn: int = 0) -> bytes:
    """Task Management Function Request (11.5): byte 1 is 1 and the Function (7 bits); 20
    Referenced Task Tag, 32 RefCmdSN, 36 ExpDataSN."""
    return _pack(Op.TASK_MGMT_REQUEST | (IMMEDIATE if immediate else 0),
                 F_FINAL | function, 0, 0, 0, lun, itt, referenced_task_tag, cmdsn,
                 exp_statsn, ref_cmdsn, exp_datasn, 0, 0)


def logout_request(*, immediate: bool = False, reason: int = 0, itt: int, cid: int = 0,
                   cmdsn: int, exp_statsn: int) -> bytes:
    """Logout Request (11.14): byte 1 is 1 and the Reason Code (7 bits); 20-21 CID."""
    return _pack(Op.LOGOUT_REQUEST | (IMMEDIATE if immediate else 0), F_FINAL | reason, 0, 0,
                 0, ZERO_LUN, itt, cid << 16, cmdsn, exp_statsn, 0, 0, 0, 0)


def text_request(*, immediate: bool = False, flags: int = F_FINAL, dsl: int,
                 lun: bytes = ZERO_LUN, itt: int, ttt: int = RESERVED_TAG, cmdsn: int,
                 exp_statsn: int) -> bytes:
    """Text Request (11.10): flags F/C; 20 Target Transfer Tag (ffffffff but when
    continuing a response, 11.10.4)."""
    return _pack(Op.TEXT_REQUEST | (IMMEDIATE if immediate else 0), flags, 0, 0, dsl, lun,
                 itt, ttt, cmdsn, exp_statsn, 0, 0, 0, 0)


def login_request(*, flags: int, version_max: int = 0, version_min: int = 0, dsl: int,
                  isid: int, tsih: int = 0, itt: int, cid: int = 0, cmdsn: int,
                  exp_statsn: int = 0) -> bytes:
    """Login Request (11.12): I always 1; flags T/C/CSG/NSG; 2 Version-max, 3 Version-min;
    8-13 ISID, 14-15 TSIH; 20-21 CID."""
    return _pack(Op.LOGIN_REQUEST | IMMEDIATE, flags, version_max, version_min, dsl,
                 _isid_tsih(isid, tsih), itt, cid << 16, cmdsn, exp_statsn, 0, 0, 0, 0)
