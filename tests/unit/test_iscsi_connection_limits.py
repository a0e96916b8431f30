"""The connection's limits (issue 15), sans-IO: sessions, write buffers, MAXIMUM TRANSFER
LENGTH, and the scratch buffer of a connection still logging in.

- A Login Request opening a session beyond max_sessions gets a Login Response with status
  03/02 (RFC 7143 11.13.5, "Out of resources"), its ITT and ISID echoed (11.13), and the
  connection ends (6.1).
- A WRITE whose Expected Data Transfer Length is over MAXIMUM TRANSFER LENGTH (the Block
  Limits VPD page, SBC-4 6.6.4) is answered CHECK CONDITION, ILLEGAL REQUEST, INVALID
  FIELD IN CDB with no R2T sent and no buffer made; the field pointer names WRITE(10)'s
  TRANSFER LENGTH, byte 7 (SBC-4 5.40), in the sense-key specific bytes of fixed sense
  (SPC-4 4.5.2.4.2: SKSV, C/D, FIELD POINTER).
- Write buffers beyond max_buffered bytes: TASK SET FULL (SAM-5 5.3), no R2T; the bound's
  bytes come back when a command is answered, so the next write gets its buffer.
- Large READs count their EDTL from arrival until answered: one that would pass the bound
  is answered TASK SET FULL in its CmdSN turn, never run.
- Until full feature phase the scratch buffer is sized for 8192-byte data segments (the
  MaxRecvDataSegmentLength in force during login, 13.12); a command pipelined behind the
  last Login Request in the same receive is still served (the buffer is replaced under
  the parser).
"""

from __future__ import annotations

import struct

import pytest

from target.backing.memory import MemoryStore
from target.iscsi import keys, pdu
from target.iscsi.connection import Connection, Phase
from target.iscsi.pdu import Bhs, Op
from target.iscsi.portal import Portal, TargetEntry
from target.iscsi.session import Session, SessionParams, SessionRegistry
from target.scsi.device import ScsiDevice
from target.scsi.disk import make_disk
from tests.unit.shell_util import execute_delivered
from tests.unit.test_iscsi_connection import Harness, write10

pytestmark = pytest.mark.unit

TNAME = "iqn.2026-11.local.test:disk"
INAME = "iqn.2026-11.local.test:initiator"
LOGIN = [("InitiatorName", INAME), ("TargetName", TNAME), ("SessionType", "Normal"),
         ("HeaderDigest", "None"), ("DataDigest", "None"), ("InitialR2T", "Yes"),
         ("ImmediateData", "Yes"), ("MaxRecvDataSegmentLength", "262144"),
         ("ErrorRecoveryLevel", "0")]


def _portal(max_sessions_held: int = 0) -> tuple[Portal, ScsiDevice]:
    device = ScsiDevice(TNAME)
    device.add(make_disk(0, MemoryStore(16 << 20), block_size=512))
    portal = Portal({TNAME: TargetEntry(TNAME, device, tpgt=1)}, ["127.0.0.1:3260"],
                    SessionRegistry())
    for i in range(max_sessions_held):
        p = SessionParams(initiator_name=INAME, target_name=TNAME, isid=i + 1, tsih=i + 1)
        portal.registry.add(Session(p, device))
    return portal, device


def _login_pdu(isid: int = 0x400000000001, itt: int = 0x77) -> bytes:
    text = keys.encode(LOGIN)
    header = pdu.login_request(flags=0x80 | 1 << 2 | 3, dsl=len(text), isid=isid, itt=itt,
                               cmdsn=5, exp_statsn=9)
    return header + text + pdu.padding(len(text))


def _responses(conn: Connection) -> list[tuple[Bhs, bytes]]:
    raw = b"".join(bytes(b) for b in conn.data_to_send())
    out, pos = [], 0
    while pos < len(raw):
        bhs = Bhs(raw[pos:pos + 48])
        out.append((bhs, raw[pos + 48:pos + 48 + bhs.dsl]))
        pos += 48 + bhs.dsl + pdu.pad_len(bhs.dsl)
    return out


def test_login_beyond_max_sessions_is_refused_out_of_resources():
    portal, _ = _portal(max_sessions_held=2)
    conn = Connection(portal, "127.0.0.1:3260", "peer", max_sessions=2)
    conn.receive_data(_login_pdu(itt=0x77))
    (bhs, data), = _responses(conn)
    assert bhs.opcode == Op.LOGIN_RESPONSE
    assert (bhs.status_class, bhs.status_detail) == (0x03, 0x02)  # 11.13.5
    assert bhs.itt == 0x77 and bhs.isid == 0x400000000001 and bhs.tsih == 0
    assert conn.want_close and conn.phase is Phase.CLOSED
    assert len(portal.registry.sessions) == 2


def test_login_under_max_sessions_goes_on():
    portal, _ = _portal(max_sessions_held=1)
    conn = Connection(portal, "127.0.0.1:3260", "peer", max_sessions=2)
    conn.receive_data(_login_pdu())
    (bhs, _), = _responses(conn)
    assert (bhs.status_class, bhs.status_detail) == (0, 0)
    assert conn.phase is Phase.FULL_FEATURE


def test_scratch_buffer_is_login_sized_until_full_feature_and_pipelined_pdus_survive():
    portal, device = _portal()
    conn = Connection(portal, "127.0.0.1:3260", "peer")
    assert len(conn.get_buffer()) <= 2 * (8192 + 4096)  # 13.12: 8192 during login
    tur = pdu.scsi_command(flags=pdu.F_FINAL | 1, dsl=0, lun=pdu.ZERO_LUN, itt=0x10, edtl=0,
                           cmdsn=5, exp_statsn=10, cdb=bytes(6))
    conn.receive_data(_login_pdu() + tur)  # one receive: the login, then a command
    assert conn.phase is Phase.FULL_FEATURE
    assert len(conn.get_buffer()) >= 262144  # the negotiated MaxRecvDataSegmentLength
    execute_delivered(conn, device)
    login, answer = _responses(conn)
    assert login[0].opcode == Op.LOGIN_RESPONSE
    assert answer[0].opcode == Op.SCSI_RESPONSE and answer[0].itt == 0x10


def _sense(data: bytes) -> bytes:
    return data[2:2 + struct.unpack_from(">H", data)[0]]


def test_write_over_max_transfer_length_refused_without_buffer_or_r2t():
    h = Harness(immediate_data=True, initial_r2t=True)
    mtl = h.lu.max_transfer_blocks * h.lu.block_size
    edtl = mtl + 512
    h.feed(h.command(write10(0, edtl // 512), edtl, write=True))
    (bhs, data), = h.pdus()
    assert bhs.opcode == Op.SCSI_RESPONSE and bhs.b3 == 0x02  # CHECK CONDITION, no R2T
    sense = _sense(data)
    assert sense[2] & 0x0F == 0x05 and (sense[12], sense[13]) == (0x24, 0x00)
    assert sense[15] & 0xC0 == 0xC0 and struct.unpack_from(">H", sense, 16)[0] == 7
    assert h.conn.buffered == 0 and h.conn.quiescent


def test_write_of_max_transfer_length_is_taken():
    h = Harness(immediate_data=True, initial_r2t=True, max_burst_length=1 << 20)
    mtl = h.lu.max_transfer_blocks * h.lu.block_size
    h.feed(h.command(write10(0, mtl // 512), mtl, write=True))
    assert [b.opcode for b, _ in h.pdus()] == [Op.R2T]
    assert h.conn.buffered == mtl


def test_buffers_beyond_max_buffered_get_task_set_full_until_one_is_answered():
    h = Harness(immediate_data=True, initial_r2t=True, max_burst_length=1 << 20,
                max_outstanding_r2t=1)
    h.conn._max_buffered = 3 << 20
    size = 1 << 20
    h.feed(*(h.command(write10(i * 2048, 2048), size, write=True) for i in range(4)))
    pdus = h.pdus()
    assert [b.opcode for b, _ in pdus] == [Op.R2T] * 3 + [Op.SCSI_RESPONSE]
    assert pdus[3][0].b3 == 0x28 and pdus[3][0].itt == 4  # TASK SET FULL, the fourth
    assert h.conn.buffered == 3 << 20
    r2t = pdus[0][0]
    chunk = bytes(range(256)) * 1024  # 256 KiB, within MaxRecvDataSegmentLength
    for i in range(4):
        h.feed(h.data_out(1, r2t.ttt, i, i * len(chunk), chunk, final=i == 3))
    (done, _), = h.pdus()
    assert done.opcode == Op.SCSI_RESPONSE and done.itt == 1 and done.b3 == 0
    assert h.conn.buffered == 2 << 20  # its bytes left the bound
    h.feed(h.command(write10(0, 2048), size, write=True))
    assert [b.opcode for b, _ in h.pdus()] == [Op.R2T]  # room again
    assert h.store.read(0, len(chunk)) == chunk


def test_connection_lost_returns_the_bound():
    h = Harness(immediate_data=True, initial_r2t=True, max_burst_length=1 << 20)
    h.feed(h.command(write10(0, 4096), 2 << 20, write=True))
    assert h.conn.buffered == 2 << 20
    h.conn.connection_lost()
    assert h.conn.buffered == 0


def test_small_writes_are_not_counted():
    """SMALL_WRITE: the CmdSN window bounds them; the hot path keeps no count."""
    h = Harness(immediate_data=True)
    h.feed(h.command(write10(0, 8), 4096, write=True, data=bytes(4096)))
    assert h.conn.buffered == 0
    (bhs, _), = h.pdus()
    assert bhs.b3 == 0



def read10(lba: int, n: int) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, n, 0)


def test_reads_beyond_max_buffered_get_task_set_full():
    h = Harness(max_recv_data_segment_length=262144, max_burst_length=1 << 20)
    h.conn._max_buffered = 2 << 20
    size = 1 << 20
    # Three READs in one receive: all are parsed before any runs (the shell's order).
    h.conn.receive_data(b"".join(h.command(read10(0, 2048), size, read=True)
                                 for _ in range(3)))
    assert h.conn.buffered == 2 << 20
    h.run()
    pdus = h.pdus()
    done = [b for b, _ in pdus if b.opcode == Op.SCSI_RESPONSE
            or (b.opcode == Op.DATA_IN and b.flags & pdu.F_STATUS)]
    assert sorted((b.itt, b.b3) for b in done) == [(1, 0x00), (2, 0x00), (3, 0x28)]
    assert h.conn.buffered == 0
    h.feed(h.command(read10(0, 2048), size, read=True))  # room again
    assert [b.b3 for b, _ in h.pdus() if b.flags & pdu.F_STATUS] == [0x00]


def _nop_out(h: Harness, cmdsn: int, itt: int, data: bytes) -> bytes:
    return h.frame(pdu.nop_out(dsl=len(data), itt=itt, cmdsn=cmdsn, exp_statsn=0), data)


def test_data_held_for_cmdsn_order_counts_and_is_returned():
    """4.2.2.1: PDUs past a CmdSN hole wait; their copied data segments count in the
    bound and leave it when the hole closes and they are answered (NOP-In, 11.19)."""
    h = Harness()
    h.conn._max_buffered = 64 << 10
    ping = bytes(8192)
    h.feed(*(_nop_out(h, h.cmdsn + 1 + i, 10 + i, ping) for i in range(4)))
    assert h.pdus() == [] and h.conn.buffered == 4 * 8192
    h.feed(_nop_out(h, h.cmdsn, 9, b""))  # the hole closes
    assert [b.itt for b, _ in h.pdus()] == [9, 10, 11, 12, 13]
    assert h.conn.buffered == 0


def test_data_held_beyond_the_bound_ends_the_connection_with_a_reject():
    h = Harness()
    h.conn._max_buffered = 64 << 10
    ping = bytes(8192)
    h.feed(*(_nop_out(h, h.cmdsn + 1 + i, 10 + i, ping) for i in range(9)))
    (bhs, data), = h.pdus()
    assert bhs.opcode == Op.REJECT and Bhs(data).itt == 18  # the ninth, 11.17
    assert h.conn.want_close
    h.conn.connection_lost()
    assert h.conn.buffered == 0
