"""Malformed, truncated and out-of-sequence PDUs against the real server.

RFC 7143 requires a Reject (11.17) or the end of the offending connection (ERL 0, 7.1.5);
the issue adds: never a traceback, and never a disturbance of other sessions. A healthy
session (our own initiator) keeps working while another connection misbehaves, and the
server's log has no traceback at the end.
"""

from __future__ import annotations

import socket
import struct

import pytest

from target.iscsi import pdu
from target.iscsi.pdu import Op
from target.shell.initiator import Initiator, InitiatorError
from target.testing.servers import OurTarget

pytestmark = pytest.mark.integration

INQUIRY = bytes([0x12, 0, 0, 0, 96, 0])
TUR = bytes(6)


@pytest.fixture
def target(tmp_path):
    with OurTarget(["--size", "16M"], workdir=tmp_path) as t:
        yield t
        assert "Traceback" not in t.log_path.read_text(), t.log_path.read_text()


def healthy(target) -> Initiator:
    ini = Initiator("127.0.0.1", target.port, target.iqn,
                    initiator_name="iqn.2026-11.local.test:healthy")
    ini.login()
    while ini.command(TUR).status != 0:  # 29h/00h on a new nexus first (SAM-5 5.14)
        pass
    return ini


def misbehaving(target, isid: int) -> Initiator:
    ini = Initiator("127.0.0.1", target.port, target.iqn,
                    initiator_name="iqn.2026-11.local.test:rogue", isid=isid)
    ini.login()
    return ini


def closed_by_target(ini: Initiator) -> bool:
    """True when the target has closed the connection (EOF), after any Reject it sent."""
    try:
        while True:
            bhs, _ = ini.recv_pdu()
            if bhs.opcode not in (Op.REJECT, Op.NOP_IN, Op.SCSI_RESPONSE, Op.R2T):
                return False
    except InitiatorError:
        return True
    except TimeoutError:
        return False


def test_garbage_before_login_closes_only_that_connection(target):
    """6.1: the first PDU must be a Login Request; anything else ends the connection."""
    good = healthy(target)
    with socket.create_connection(("127.0.0.1", target.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(40))
        assert s.recv(4096) == b""
    assert good.command(INQUIRY, read=96).status == 0


def test_truncated_pdu_then_close(target):
    """A connection that drops in the middle of a PDU ends only its own session."""
    good = healthy(target)
    with socket.create_connection(("127.0.0.1", target.port), timeout=5) as s:
        s.sendall(pdu.pack(Op.LOGIN_REQUEST | 0x40, 0x87, 0, 0, 500)[:30])
    assert good.command(TUR).status == 0


def test_oversized_data_segment_is_rejected_and_closed(target):
    """13.12 MaxRecvDataSegmentLength: a longer data segment is a protocol error."""
    good = healthy(target)
    rogue = misbehaving(target, 0x400000000002)
    rogue.send_raw(pdu.pack(Op.NOP_OUT | 0x40, 0x80, 0, 0, 0xFFFFFF, bytes(8), 7,
                            pdu.RESERVED_TAG, rogue.cmdsn, rogue.exp_stat_sn))
    bhs, data = rogue.recv_pdu()
    assert bhs.opcode == Op.REJECT and pdu.Bhs(data).opcode == Op.NOP_OUT
    assert closed_by_target(rogue)
    assert good.command(INQUIRY, read=96).status == 0


def test_unknown_opcode_rejected_session_continues(target):
    """11.17.1: reason 05h Command not supported; the connection stays up."""
    rogue = misbehaving(target, 0x400000000003)
    rogue.send_pdu(pdu.pack(0x1E | 0x40, 0x80, 0, 0, 0, bytes(8), 9, 0, rogue.cmdsn,
                            rogue.exp_stat_sn))
    bhs, _ = rogue.recv_pdu()
    assert bhs.opcode == Op.REJECT and bhs.b2 == pdu.RejectReason.COMMAND_NOT_SUPPORTED
    assert rogue.nop(b"still here") == b"still here"


def test_data_out_for_unknown_task_is_discarded(target):
    """11.5.1: Data-Out for a task the target does not have (e.g. aborted) is discarded."""
    good = healthy(target)
    rogue = misbehaving(target, 0x400000000004)
    rogue.send_pdu(pdu.pack(Op.DATA_OUT, 0x80, 0, 0, 512, bytes(8), 3, 0x5555, 0,
                            rogue.exp_stat_sn, 0, 0, 0, 0), b"x" * 512)
    # An unknown ITT: the data is for no task we have (e.g. aborted): silently discarded.
    assert rogue.nop(b"ok") == b"ok"
    assert good.command(TUR).status == 0


def test_cmdsn_beyond_window_is_ignored(target):
    """4.2.2.1: a non-immediate command with CmdSN > MaxCmdSN is silently ignored."""
    rogue = misbehaving(target, 0x400000000005)
    header = bytearray(pdu.pack(Op.SCSI_COMMAND, 0x80 | 1, 0, 0, 0, bytes(8), 11, 0,
                                (rogue.cmdsn + 100000) & 0xFFFFFFFF, rogue.exp_stat_sn))
    rogue.send_pdu(bytes(header))
    assert rogue.nop(b"ping") == b"ping"  # answered; the ignored command got nothing
    result = rogue.command(TUR)  # the window still starts where it did
    assert result.status in (0, 2)


def test_header_digest_error_closes(target):
    """13.1 at ERL 0: a PDU whose header digest fails cannot be trusted: connection ends."""
    good = healthy(target)
    rogue = Initiator("127.0.0.1", target.port, target.iqn, header_digest=True,
                      initiator_name="iqn.2026-11.local.test:rogue", isid=0x400000000006)
    answer = rogue.login()
    assert answer["HeaderDigest"] == "CRC32C"
    hdr = pdu.pack(Op.NOP_OUT | 0x40, 0x80, 0, 0, 0, bytes(8), 5, pdu.RESERVED_TAG,
                   rogue.cmdsn, rogue.exp_stat_sn)
    rogue.send_raw(hdr + struct.pack("<I", 0xDEADBEEF))
    assert closed_by_target(rogue)
    assert good.command(TUR).status == 0


def test_session_reinstatement_closes_the_old_connection(target):
    """6.3.5: a login with the same InitiatorName and ISID and TSIH 0 reinstates the
    session; the old connection is closed."""
    old = misbehaving(target, 0x400000000007)
    new = misbehaving(target, 0x400000000007)
    assert closed_by_target(old)
    assert new.nop(b"x") == b"x"


def test_logout(target):
    """11.14/11.15: Logout reason 0 answered with response 0, then the target closes."""
    ini = healthy(target)
    assert ini.logout() == 0
    assert closed_by_target(ini)
