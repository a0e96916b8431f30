"""The keyword PDU builders of target.iscsi.pdu and the named fields of Bhs, against the
BHS layouts of RFC 7143 section 11.

The oracle is the RFC's figures, not our struct: each expected header is written here
byte by byte at the offsets the figure gives (helper `_bhs`), with a distinct value in
every field so that a field moved, dropped or swapped fails. The same layouts are in the
Linux kernel's include/scsi/iscsi_proto.h (struct iscsi_scsi_req, iscsi_data, iscsi_nopout,
iscsi_tm, iscsi_logout, iscsi_text, iscsi_login_req, iscsi_login_rsp, iscsi_r2t_rsp,
iscsi_data_rsp, iscsi_scsi_rsp, iscsi_logout_rsp), which these offsets were checked
against. Each test also builds the PDU with the positional pdu.pack call the code used
before the builders, so that the bytes on the wire are shown not to have changed.
"""

from __future__ import annotations

import pytest

from target.iscsi import pdu
from target.iscsi.pdu import Bhs, Op

LUN = bytes.fromhex("0001000000000000")  # LUN 1, peripheral addressing (SAM-5 4.7)


def _bhs(fields: dict[int, tuple[int, int]]) -> bytes:
    """A 48-byte BHS with `fields` {byte offset: (size in bytes, value)}, big endian
    (RFC 7143 11.2.1: multi-byte fields are in network byte order); the rest 0."""
    raw = bytearray(pdu.BHS_LEN)
    for offset, (size, value) in fields.items():
        raw[offset:offset + size] = value.to_bytes(size, "big")
    return bytes(raw)


def _lun() -> tuple[int, int]:
    return 8, int.from_bytes(LUN, "big")


# --- initiator PDUs ----------------------------------------------------------------------

def test_scsi_command_11_3() -> None:
    """11.3 figure: 0 .|I|0x01, 1 F R W . . ATTR, 4 TotalAHSLength, 5-7 DataSegmentLength,
    8-15 LUN, 16 ITT, 20 Expected Data Transfer Length, 24 CmdSN, 28 ExpStatSN, 32-47 CDB."""
    cdb = bytes.fromhex("2a000000102000000800")  # WRITE(10) LBA 0x1020, 8 blocks
    flags = pdu.F_FINAL | pdu.F_WRITE | 1  # SIMPLE
    expected = bytearray(_bhs({0: (1, 0x40 | 0x01), 1: (1, 0xA1), 5: (3, 512), 8: _lun(),
                               16: (4, 0x11223344), 20: (4, 4096), 24: (4, 0x55667788),
                               28: (4, 0x99AABBCC)}))
    expected[32:42] = cdb
    built = pdu.scsi_command(immediate=True, flags=flags, dsl=512, lun=LUN, itt=0x11223344,
                             edtl=4096, cmdsn=0x55667788, exp_statsn=0x99AABBCC, cdb=cdb)
    old = bytearray(pdu.pack(Op.SCSI_COMMAND | pdu.IMMEDIATE, flags, 0, 0, 512, LUN,
                             0x11223344, 4096, 0x55667788, 0x99AABBCC))
    old[32:32 + len(cdb)] = cdb
    assert built == bytes(expected) == bytes(old)
    bhs = Bhs(built)
    assert (bhs.opcode, bhs.immediate, bhs.edtl, bhs.cmdsn, bhs.exp_stat_sn) == (
        Op.SCSI_COMMAND, True, 4096, 0x55667788, 0x99AABBCC)
    assert bhs.cdb == cdb + bytes(6)


def test_scsi_command_16_byte_cdb_fills_the_field_and_17_needs_an_ahs() -> None:
    """11.3.5: the CDB field is 16 bytes; a longer CDB goes in an Extended CDB AHS
    (11.2.1.3), which the builder does not make."""
    cdb = bytes(range(0x88, 0x98))  # 16 bytes
    built = pdu.scsi_command(flags=pdu.F_FINAL | pdu.F_READ, dsl=0, lun=LUN, itt=1, edtl=0,
                             cmdsn=2, exp_statsn=3, cdb=cdb)
    assert built[0] == 0x01 and built[1] == 0xC0 and built[32:48] == cdb
    assert len(built) == pdu.BHS_LEN
    with pytest.raises(ValueError):
        pdu.scsi_command(flags=0, dsl=0, lun=LUN, itt=1, edtl=0, cmdsn=2, exp_statsn=3,
                         cdb=bytes(17))


@pytest.mark.parametrize("final", [True, False])
def test_data_out_11_7(final: bool) -> None:
    """11.7 figure (Data-Out): 0 0x05, 1 F, 5-7 DSL, 8 LUN, 16 ITT, 20 TTT, 24 reserved,
    28 ExpStatSN, 32 reserved, 36 DataSN, 40 Buffer Offset, 44 reserved."""
    expected = _bhs({0: (1, 0x05), 1: (1, 0x80 if final else 0), 5: (3, 8192), 8: _lun(),
                     16: (4, 0x0A0B0C0D), 20: (4, 0x1A1B1C1D), 28: (4, 0x2A2B2C2D),
                     36: (4, 7), 40: (4, 0x00123400)})
    built = pdu.data_out(final=final, dsl=8192, lun=LUN, itt=0x0A0B0C0D, ttt=0x1A1B1C1D,
                         exp_statsn=0x2A2B2C2D, datasn=7, buffer_offset=0x00123400)
    old = pdu.pack(Op.DATA_OUT, pdu.F_FINAL if final else 0, 0, 0, 8192, LUN, 0x0A0B0C0D,
                   0x1A1B1C1D, 0, 0x2A2B2C2D, 0, 7, 0x00123400, 0)
    assert built == expected == old
    bhs = Bhs(built)
    assert (bhs.ttt, bhs.exp_stat_sn, bhs.datasn, bhs.buffer_offset) == (
        0x1A1B1C1D, 0x2A2B2C2D, 7, 0x00123400)


def test_data_out_unsolicited_ttt_is_reserved() -> None:
    """11.7.4: unsolicited Data-Out carries Target Transfer Tag 0xffffffff."""
    built = pdu.data_out(final=True, dsl=1, lun=LUN, itt=1, exp_statsn=0, datasn=0,
                         buffer_offset=0)
    assert built[20:24] == b"\xff\xff\xff\xff"


def test_nop_out_ping_and_answer_11_18() -> None:
    """11.18 figure: 0 .|I|0x00, 1 F=1, 5-7 DSL, 8 LUN, 16 ITT, 20 TTT, 24 CmdSN, 28
    ExpStatSN, 32-47 reserved. A ping: TTT ffffffff (11.18.2); an answer to a NOP-In: ITT
    ffffffff and the NOP-In's TTT (11.18.1)."""
    ping = _bhs({0: (1, 0x40), 1: (1, 0x80), 5: (3, 5), 16: (4, 0x77), 20: (4, 0xFFFFFFFF),
                 24: (4, 0x100), 28: (4, 0x200)})
    assert pdu.nop_out(immediate=True, dsl=5, itt=0x77, cmdsn=0x100, exp_statsn=0x200) \
        == ping == pdu.pack(Op.NOP_OUT | pdu.IMMEDIATE, pdu.F_FINAL, 0, 0, 5, bytes(8), 0x77,
                            pdu.RESERVED_TAG, 0x100, 0x200)
    answer = _bhs({0: (1, 0x40), 1: (1, 0x80), 16: (4, 0xFFFFFFFF), 20: (4, 0x5A5A),
                   24: (4, 9), 28: (4, 10)})
    assert pdu.nop_out(immediate=True, itt=pdu.RESERVED_TAG, ttt=0x5A5A, cmdsn=9,
                       exp_statsn=10) == answer
    # not immediate: byte 0 is the bare opcode
    assert pdu.nop_out(itt=1, cmdsn=1, exp_statsn=1)[0] == 0x00


def test_task_management_request_11_5() -> None:
    """11.5 figure: 0 .|I|0x02, 1 1|Function, 8 LUN, 16 ITT, 20 Referenced Task Tag, 24
    CmdSN, 28 ExpStatSN, 32 RefCmdSN, 36 ExpDataSN, 40-47 reserved."""
    expected = _bhs({0: (1, 0x42), 1: (1, 0x80 | pdu.TmfFunction.ABORT_TASK), 8: _lun(),
                     16: (4, 0x31), 20: (4, 0x30), 24: (4, 0x1000), 28: (4, 0x2000),
                     32: (4, 0x0FFF), 36: (4, 0x3)})
    built = pdu.task_management_request(immediate=True, function=pdu.TmfFunction.ABORT_TASK,
                                        lun=LUN, itt=0x31, referenced_task_tag=0x30,
                                        cmdsn=0x1000, exp_statsn=0x2000, ref_cmdsn=0x0FFF,
                                        exp_datasn=3)
    assert built == expected
    bhs = Bhs(built)
    assert (bhs.flags & 0x7F, bhs.referenced_task_tag, bhs.ref_cmdsn) == (1, 0x30, 0x0FFF)
    # the old positional call (ExpDataSN 0, the Referenced Task Tag reserved)
    assert pdu.task_management_request(
        immediate=True, function=pdu.TmfFunction.LOGICAL_UNIT_RESET, lun=LUN, itt=5,
        cmdsn=6, exp_statsn=7) == pdu.pack(Op.TASK_MGMT_REQUEST | pdu.IMMEDIATE, 0x80 | 5,
                                           0, 0, 0, LUN, 5, pdu.RESERVED_TAG, 6, 7, 0)


def test_logout_request_11_14() -> None:
    """11.14 figure: 0 .|I|0x06, 1 1|Reason Code, 8-15 reserved, 16 ITT, 20-21 CID, 22-23
    reserved, 24 CmdSN, 28 ExpStatSN, 32-47 reserved."""
    expected = _bhs({0: (1, 0x46), 1: (1, 0x81), 16: (4, 0x44), 20: (2, 0xBEEF),
                     24: (4, 0x45), 28: (4, 0x46)})
    built = pdu.logout_request(immediate=True, reason=1, itt=0x44, cid=0xBEEF, cmdsn=0x45,
                               exp_statsn=0x46)
    assert built == expected
    assert Bhs(built).cid == 0xBEEF
    assert pdu.logout_request(immediate=True, itt=3, cmdsn=4, exp_statsn=5) == pdu.pack(
        Op.LOGOUT_REQUEST | pdu.IMMEDIATE, 0x80, 0, 0, 0, bytes(8), 3, 0, 4, 5)


def test_text_request_11_10() -> None:
    """11.10 figure: 0 .|I|0x04, 1 F C, 5-7 DSL, 8 LUN, 16 ITT, 20 TTT, 24 CmdSN, 28
    ExpStatSN, 32-47 reserved."""
    expected = _bhs({0: (1, 0x44), 1: (1, 0x80), 5: (3, 16), 16: (4, 0x21), 20: (4, 0x22),
                     24: (4, 0x23), 28: (4, 0x24)})
    built = pdu.text_request(immediate=True, dsl=16, itt=0x21, ttt=0x22, cmdsn=0x23,
                             exp_statsn=0x24)
    old = pdu.pack(Op.TEXT_REQUEST | pdu.IMMEDIATE, pdu.F_FINAL, 0, 0, 16, bytes(8), 0x21,
                   0x22, 0x23, 0x24)
    assert built == expected == old
    assert pdu.text_request(flags=pdu.F_CONTINUE, dsl=0, itt=1, cmdsn=1,
                            exp_statsn=1)[:2] == b"\x04\x40"  # C without F, not immediate


def test_login_request_11_12() -> None:
    """11.12 figure: 0 .|1|0x03 (I always 1), 1 T C . . CSG NSG, 2 Version-max, 3
    Version-min, 5-7 DSL, 8-13 ISID, 14-15 TSIH, 16 ITT, 20-21 CID, 24 CmdSN, 28
    ExpStatSN, 32-47 reserved."""
    flags = pdu.LOGIN_TRANSIT | 1 << 2 | 3  # T, CSG 1, NSG 3
    isid = 0x80_12_34_56_78_9A  # OUI format (11.12.5)
    expected = _bhs({0: (1, 0x43), 1: (1, 0x87), 2: (1, 0x02), 3: (1, 0x01), 5: (3, 300),
                     8: (6, isid), 14: (2, 0x0102), 16: (4, 0x61), 20: (2, 0x0304),
                     24: (4, 0x62), 28: (4, 0x63)})
    built = pdu.login_request(flags=flags, version_max=2, version_min=1, dsl=300, isid=isid,
                              tsih=0x0102, itt=0x61, cid=0x0304, cmdsn=0x62, exp_statsn=0x63)
    assert built == expected
    bhs = Bhs(built)
    assert (bhs.immediate, bhs.isid, bhs.tsih, bhs.cid, bhs.cmdsn, bhs.exp_stat_sn) == (
        True, isid, 0x0102, 0x0304, 0x62, 0x63)
    # the old positional calls (versions 0, CID 0)
    assert pdu.login_request(flags=flags, dsl=300, isid=isid, tsih=7, itt=1, cmdsn=2,
                             exp_statsn=3) == pdu.pack(
        Op.LOGIN_REQUEST | pdu.IMMEDIATE, flags, 0, 0, 300,
        isid.to_bytes(6, "big") + (7).to_bytes(2, "big"), 1, 0, 2, 3)


# --- target PDUs -------------------------------------------------------------------------

def test_login_response_11_13() -> None:
    """11.13 figure: 0 0x23, 1 T C . . CSG NSG, 2 Version-max, 3 Version-active, 5-7 DSL,
    8-13 ISID, 14-15 TSIH, 16 ITT, 20 reserved, 24 StatSN, 28 ExpCmdSN, 32 MaxCmdSN, 36
    Status-Class, 37 Status-Detail, 38-47 reserved."""
    isid = 0x40_00_01_37_00_00
    expected = _bhs({0: (1, 0x23), 1: (1, 0x87), 2: (1, 0), 3: (1, 0), 5: (3, 77),
                     8: (6, isid), 14: (2, 0x0A0B), 16: (4, 0x71), 24: (4, 0x72),
                     28: (4, 0x73), 32: (4, 0x74), 36: (1, 0x02), 37: (1, 0x01)})
    built = pdu.login_response(flags=0x87, version_max=0, version_active=0, dsl=77,
                               isid=isid, tsih=0x0A0B, itt=0x71, statsn=0x72,
                               exp_cmdsn=0x73, max_cmdsn=0x74, status_class=2,
                               status_detail=1)
    old = pdu.pack(Op.LOGIN_RESPONSE, 0x87, 0, 0, 77,
                   isid.to_bytes(6, "big") + (0x0A0B).to_bytes(2, "big"), 0x71, 0, 0x72, 0x73,
                   0x74, 2 << 24 | 1 << 16)
    assert built == expected == old
    bhs = Bhs(built)
    assert (bhs.isid, bhs.tsih, bhs.statsn, bhs.exp_cmdsn, bhs.max_cmdsn) == (
        isid, 0x0A0B, 0x72, 0x73, 0x74)
    assert (bhs.status_class, bhs.status_detail) == (2, 1)
    # versions are bytes 2 and 3 (the builder's keywords, not the old call's)
    versioned = pdu.login_response(flags=0, version_max=5, version_active=4, dsl=0, isid=0,
                                   tsih=0, itt=0, statsn=0, exp_cmdsn=0, max_cmdsn=0)
    assert versioned[2:4] == b"\x05\x04"


# --- the named fields of Bhs on target PDUs, from headers written at the RFC's offsets ---

def test_bhs_names_of_the_scsi_response_words_11_4() -> None:
    """11.4 figure: 24 StatSN, 28 ExpCmdSN, 32 MaxCmdSN, 36 ExpDataSN, 40 Bidirectional
    Read Residual Count, 44 Residual Count."""
    bhs = Bhs(_bhs({0: (1, 0x21), 1: (1, 0x82), 24: (4, 101), 28: (4, 102), 32: (4, 103),
                    36: (4, 104), 40: (4, 105), 44: (4, 106)}))
    assert (bhs.statsn, bhs.exp_cmdsn, bhs.max_cmdsn, bhs.exp_datasn,
            bhs.bidi_residual_count, bhs.residual_count) == (101, 102, 103, 104, 105, 106)


def test_bhs_names_of_the_data_in_words_11_7() -> None:
    """11.7 figure (Data-In): 20 TTT, 24 StatSN, 28 ExpCmdSN, 32 MaxCmdSN, 36 DataSN, 40
    Buffer Offset, 44 Residual Count."""
    bhs = Bhs(_bhs({0: (1, 0x25), 1: (1, 0x81), 20: (4, 200), 24: (4, 201), 28: (4, 202),
                    32: (4, 203), 36: (4, 204), 40: (4, 205), 44: (4, 206)}))
    assert (bhs.ttt, bhs.statsn, bhs.exp_cmdsn, bhs.max_cmdsn, bhs.datasn,
            bhs.buffer_offset, bhs.residual_count) == (200, 201, 202, 203, 204, 205, 206)


def test_bhs_names_of_the_r2t_words_11_8() -> None:
    """11.8 figure: 20 TTT, 24 StatSN, 28 ExpCmdSN, 32 MaxCmdSN, 36 R2TSN, 40 Buffer
    Offset, 44 Desired Data Transfer Length."""
    bhs = Bhs(_bhs({0: (1, 0x31), 1: (1, 0x80), 20: (4, 300), 24: (4, 301), 28: (4, 302),
                    32: (4, 303), 36: (4, 304), 40: (4, 305), 44: (4, 306)}))
    assert (bhs.ttt, bhs.statsn, bhs.exp_cmdsn, bhs.max_cmdsn, bhs.r2tsn, bhs.buffer_offset,
            bhs.desired_length) == (300, 301, 302, 303, 304, 305, 306)


def test_bhs_names_of_the_logout_response_words_11_15() -> None:
    """11.15 figure: 24 StatSN, 28 ExpCmdSN, 32 MaxCmdSN, 40-41 Time2Wait, 42-43
    Time2Retain."""
    bhs = Bhs(_bhs({0: (1, 0x26), 1: (1, 0x80), 24: (4, 401), 28: (4, 402), 32: (4, 403),
                    40: (2, 2), 42: (2, 20)}))
    assert (bhs.statsn, bhs.exp_cmdsn, bhs.max_cmdsn, bhs.time2wait, bhs.time2retain) == (
        401, 402, 403, 2, 20)
