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
