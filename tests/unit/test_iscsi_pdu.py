"""The BHS codec against a declarative construct description (RFC 7143 section 11).

DESIGN.md principle 4: the hot path uses one precompiled struct; construct describes the
same layouts field by field and serves as the oracle, so a test asserts both agree.
"""

import construct as c
import crc32c
import pytest

from target.iscsi import pdu
from target.iscsi.pdu import Bhs, Op

pytestmark = pytest.mark.unit

# RFC 7143 11.3: SCSI Command
SCSI_COMMAND = c.Struct(
    "opcode" / c.BitStruct("reserved" / c.Flag, "immediate" / c.Flag, "opcode" / c.BitsInteger(6)),
    "flags" / c.BitStruct("final" / c.Flag, "read" / c.Flag, "write" / c.Flag,
                          "reserved" / c.BitsInteger(2), "attr" / c.BitsInteger(3)),
    "reserved" / c.Bytes(2),
    "total_ahs_length" / c.Int8ub,
    "data_segment_length" / c.Int24ub,
    "lun" / c.Bytes(8),
    "itt" / c.Int32ub,
    "edtl" / c.Int32ub,
    "cmdsn" / c.Int32ub,
    "exp_stat_sn" / c.Int32ub,
    "cdb" / c.Bytes(16),
)

# RFC 7143 11.7: SCSI Data-In
DATA_IN = c.Struct(
    "opcode" / c.Int8ub,
    "flags" / c.BitStruct("final" / c.Flag, "ack" / c.Flag, "reserved" / c.BitsInteger(3),
                          "overflow" / c.Flag, "underflow" / c.Flag, "status_present" / c.Flag),
    "reserved" / c.Int8ub,
    "status" / c.Int8ub,
    "total_ahs_length" / c.Int8ub,
    "data_segment_length" / c.Int24ub,
    "lun" / c.Bytes(8),
    "itt" / c.Int32ub,
    "ttt" / c.Int32ub,
    "stat_sn" / c.Int32ub,
    "exp_cmdsn" / c.Int32ub,
    "max_cmdsn" / c.Int32ub,
    "datasn" / c.Int32ub,
    "buffer_offset" / c.Int32ub,
    "residual_count" / c.Int32ub,
)

# RFC 7143 11.12: Login Request
LOGIN_REQUEST = c.Struct(
    "opcode" / c.Int8ub,
    "flags" / c.BitStruct("transit" / c.Flag, "cont" / c.Flag, "reserved" / c.BitsInteger(2),
                          "csg" / c.BitsInteger(2), "nsg" / c.BitsInteger(2)),
    "version_max" / c.Int8ub,
    "version_min" / c.Int8ub,
    "total_ahs_length" / c.Int8ub,
    "data_segment_length" / c.Int24ub,
    "isid" / c.BytesInteger(6),
    "tsih" / c.Int16ub,
    "itt" / c.Int32ub,
    "cid" / c.Int16ub,
    "reserved" / c.Int16ub,
    "cmdsn" / c.Int32ub,
    "exp_stat_sn" / c.Int32ub,
    "reserved2" / c.Bytes(16),
)


def test_scsi_command_fields_agree_with_construct():
    """11.3: EDTL at 20, CmdSN at 24, ExpStatSN at 28, CDB at 32..47, ATTR in byte 1."""
    cdb = bytes(range(0x28, 0x28 + 16))
    raw = SCSI_COMMAND.build(dict(
        opcode=dict(reserved=False, immediate=True, opcode=Op.SCSI_COMMAND),
        flags=dict(final=True, read=True, write=False, reserved=0, attr=2),
        reserved=b"\0\0", total_ahs_length=0, data_segment_length=512,
        lun=bytes([0, 3, 0, 0, 0, 0, 0, 0]), itt=0x1234, edtl=4096, cmdsn=77,
        exp_stat_sn=9, cdb=cdb))
    bhs = Bhs(raw)
    assert bhs.opcode == Op.SCSI_COMMAND and bhs.immediate
    assert bhs.flags & pdu.F_READ and not bhs.flags & pdu.F_WRITE
    assert bhs.flags & pdu.ATTR_MASK == 2
    assert (bhs.dsl, bhs.itt, bhs.edtl, bhs.cmdsn, bhs.exp_stat_sn) == (512, 0x1234, 4096, 77, 9)
    assert bhs.cdb == cdb
    assert bhs.lun == bytes([0, 3, 0, 0, 0, 0, 0, 0])


def test_data_in_built_by_struct_parses_in_construct():
    """11.7: a status-carrying Data-In with underflow: flags F|U|S, status in byte 3."""
    raw = pdu.pack(Op.DATA_IN, pdu.F_FINAL | pdu.F_UNDERFLOW | pdu.F_STATUS, 0, 0x02, 4096,
                   bytes(8), 7, pdu.RESERVED_TAG, 100, 200, 327, 3, 8192, 512)
    d = DATA_IN.parse(raw)
    assert d.opcode == Op.DATA_IN and d.status == 2
    assert d.flags.final and d.flags.underflow and d.flags.status_present
    assert not d.flags.overflow and not d.flags.ack
    assert (d.data_segment_length, d.itt, d.ttt) == (4096, 7, 0xFFFFFFFF)
    assert (d.stat_sn, d.exp_cmdsn, d.max_cmdsn) == (100, 200, 327)
    assert (d.datasn, d.buffer_offset, d.residual_count) == (3, 8192, 512)


def test_login_request_isid_tsih_cid():
    """11.12: ISID in bytes 8-13, TSIH 14-15, CID 20-21."""
    raw = LOGIN_REQUEST.build(dict(
        opcode=0x43, flags=dict(transit=True, cont=False, reserved=0, csg=1, nsg=3),
        version_max=0, version_min=0, total_ahs_length=0, data_segment_length=33,
        isid=0x23D000000001, tsih=5, itt=1, cid=0x0102, reserved=0, cmdsn=1, exp_stat_sn=0,
        reserved2=bytes(16)))
    bhs = Bhs(raw)
    assert bhs.opcode == Op.LOGIN_REQUEST and bhs.immediate
    assert bhs.isid == 0x23D000000001 and bhs.tsih == 5 and bhs.cid == 0x0102
    assert bhs.dsl == 33 and bhs.cmdsn == 1


def test_total_ahs_length_counts_words():
    """11.2.1.4: TotalAHSLength is in 4-byte words."""
    raw = bytearray(pdu.pack(Op.SCSI_COMMAND))
    raw[4] = 5
    assert Bhs(raw).ahs_len == 20


def test_digest_is_crc32c_least_significant_byte_first():
    """13.1 / RFC 3385: CRC32C; sent as the reference initiators do (little-endian)."""
    assert pdu.digest(b"123456789") == (0xE3069283).to_bytes(4, "little")
    assert pdu.digest(b"1234", b"56789") == pdu.digest(b"123456789")
    assert pdu.crc([b"abc"]) == crc32c.crc32c(b"abc")


@pytest.mark.parametrize("length,pad", [(0, 0), (1, 3), (2, 2), (3, 1), (4, 0), (513, 3)])
def test_padding_to_four_bytes(length, pad):
    """11.2.3: the data segment is padded to an integer number of 4-byte words."""
    assert pdu.pad_len(length) == pad
    assert len(pdu.padding(length)) == pad


def test_serial_number_arithmetic_wraps():
    """4.2.2.1 / RFC 1982: comparisons of 32-bit sequence numbers wrap."""
    assert pdu.sn_lt(0xFFFFFFFF, 0)
    assert not pdu.sn_lt(0, 0xFFFFFFFF)
    assert pdu.sn_le(5, 5) and pdu.sn_lt(5, 6) and not pdu.sn_lt(6, 5)


# --- the keyword builders of target PDUs, against construct layouts from RFC 7143 --------

def _common(*fields) -> c.Struct:
    """Bytes 0-19 every target PDU below shares (11.2.1): opcode, flags, bytes 2-3,
    TotalAHSLength, DataSegmentLength, LUN (or reserved), ITT; then `fields` from 20."""
    return c.Struct("opcode" / c.Int8ub, "flags" / c.Int8ub, "byte2" / c.Int8ub,
                    "byte3" / c.Int8ub, "total_ahs_length" / c.Int8ub,
                    "data_segment_length" / c.Int24ub, "lun" / c.Bytes(8),
                    "itt" / c.Int32ub, *fields)


# RFC 7143 11.4: SCSI Response (byte 2 Response, byte 3 Status)
SCSI_RESPONSE = _common("snack_tag" / c.Int32ub, "stat_sn" / c.Int32ub,
                        "exp_cmdsn" / c.Int32ub, "max_cmdsn" / c.Int32ub,
                        "exp_datasn" / c.Int32ub, "bidi_residual" / c.Int32ub,
                        "residual" / c.Int32ub)
# RFC 7143 11.8: Ready To Transfer
R2T = _common("ttt" / c.Int32ub, "stat_sn" / c.Int32ub, "exp_cmdsn" / c.Int32ub,
              "max_cmdsn" / c.Int32ub, "r2tsn" / c.Int32ub, "buffer_offset" / c.Int32ub,
              "desired_length" / c.Int32ub)
# RFC 7143 11.9: Asynchronous Message
ASYNC = _common("reserved" / c.Int32ub, "stat_sn" / c.Int32ub, "exp_cmdsn" / c.Int32ub,
                "max_cmdsn" / c.Int32ub, "event" / c.Int8ub, "vcode" / c.Int8ub,
                "parameter1" / c.Int16ub, "parameter2" / c.Int16ub,
                "parameter3" / c.Int16ub, "reserved2" / c.Int32ub)
# RFC 7143 11.15: Logout Response (byte 2 Response)
LOGOUT_RESPONSE = _common("reserved" / c.Int32ub, "stat_sn" / c.Int32ub,
                          "exp_cmdsn" / c.Int32ub, "max_cmdsn" / c.Int32ub,
                          "reserved2" / c.Int32ub, "time2wait" / c.Int16ub,
                          "time2retain" / c.Int16ub, "reserved3" / c.Int32ub)
# RFC 7143 11.17: Reject (byte 2 Reason)
REJECT = _common("reserved" / c.Int32ub, "stat_sn" / c.Int32ub, "exp_cmdsn" / c.Int32ub,
                 "max_cmdsn" / c.Int32ub, "datasn_r2tsn" / c.Int32ub,
                 "reserved2" / c.Bytes(8))


def test_scsi_response_builder():
    raw = pdu.scsi_response(flags=pdu.F_UNDERFLOW, status=0x02, dsl=20, itt=9, statsn=5,
                            exp_cmdsn=6, max_cmdsn=7, exp_datasn=2, residual=512)
    d = SCSI_RESPONSE.parse(raw)
    assert (d.opcode, d.flags, d.byte2, d.byte3) == (0x21, 0x80 | 0x02, 0, 0x02)
    assert (d.data_segment_length, d.lun, d.itt, d.snack_tag) == (20, bytes(8), 9, 0)
    assert (d.stat_sn, d.exp_cmdsn, d.max_cmdsn, d.exp_datasn) == (5, 6, 7, 2)
    assert (d.bidi_residual, d.residual) == (0, 512)


def test_data_in_builder():
    raw = pdu.data_in(flags=pdu.F_FINAL | pdu.F_OVERFLOW | pdu.F_STATUS, status=0, dsl=4096,
                      lun=bytes((0, 3, 0, 0, 0, 0, 0, 0)), itt=7, statsn=100, exp_cmdsn=200,
                      max_cmdsn=327, datasn=3, buffer_offset=8192, residual=512)
    d = DATA_IN.parse(raw)
    assert d.opcode == 0x25 and d.flags.final and d.flags.overflow and d.flags.status_present
    assert d.lun == bytes((0, 3, 0, 0, 0, 0, 0, 0)) and d.ttt == 0xFFFFFFFF
    assert (d.stat_sn, d.exp_cmdsn, d.max_cmdsn) == (100, 200, 327)
    assert (d.datasn, d.buffer_offset, d.residual_count) == (3, 8192, 512)


def test_r2t_builder():
    raw = pdu.r2t(lun=bytes(8), itt=4, ttt=11, statsn=9, exp_cmdsn=10, max_cmdsn=12, r2tsn=1,
                  buffer_offset=65536, desired_length=262144)
    d = R2T.parse(raw)
    assert (d.opcode, d.flags, d.data_segment_length) == (0x31, 0x80, 0)
    assert (d.itt, d.ttt, d.stat_sn, d.exp_cmdsn, d.max_cmdsn) == (4, 11, 9, 10, 12)
    assert (d.r2tsn, d.buffer_offset, d.desired_length) == (1, 65536, 262144)


def test_async_message_builder_logout_request():
    """11.9.1: AsyncEvent 1 asks for a Logout, Parameter3 the seconds to wait."""
    d = ASYNC.parse(pdu.async_message(event=1, parameter3=5, statsn=3, exp_cmdsn=4,
                                      max_cmdsn=8))
    assert (d.opcode, d.itt, d.event, d.vcode) == (0x32, 0xFFFFFFFF, 1, 0)
    assert (d.parameter1, d.parameter2, d.parameter3) == (0, 0, 5)
    assert (d.stat_sn, d.exp_cmdsn, d.max_cmdsn) == (3, 4, 8)


def test_logout_response_builder():
    d = LOGOUT_RESPONSE.parse(pdu.logout_response(response=2, itt=3, statsn=1, exp_cmdsn=2,
                                                  max_cmdsn=3, time2wait=4, time2retain=5))
    assert (d.opcode, d.flags, d.byte2, d.itt) == (0x26, 0x80, 2, 3)
    assert (d.time2wait, d.time2retain, d.stat_sn) == (4, 5, 1)


def test_reject_builder():
    """11.17: the rejected header is the 48-byte data segment; ITT ffffffff."""
    d = REJECT.parse(pdu.reject(reason=0x09, statsn=1, exp_cmdsn=2, max_cmdsn=3))
    assert (d.opcode, d.flags, d.byte2, d.data_segment_length) == (0x3F, 0x80, 0x09, 48)
    assert (d.itt, d.stat_sn, d.exp_cmdsn, d.max_cmdsn) == (0xFFFFFFFF, 1, 2, 3)
