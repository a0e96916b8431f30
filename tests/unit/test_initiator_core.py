"""The initiator's sans-IO core (target.iscsi.initiator) against the target's, with no socket.

The oracle is the target's own sans-IO connection (target.iscsi.connection.Connection, with
target.iscsi.login and a real disk LU, target.scsi.disk.make_disk, over a MemoryStore):
what the core's data_to_send() hands back is fed to it, and its output fed back to the
core, until neither has anything to say. The target rejects or closes on what RFC 7143
forbids (a wrong header digest, a Data-Out out of sequence or beyond what an R2T asked,
11.7.5, 11.8); so a command that ends GOOD, with its bytes in the store, shows the core
framed what the target accepts; the read data is checked against the store's bytes.
Both ends are ours, so this shows they agree; the peer we did not write is tgtd, which
tests/integration/test_dump_polled.py drives with this core's blocking shell (login,
the dump path's WRITEs, READs, task management, REQUEST SENSE).
"""

from __future__ import annotations

import struct

import pytest

from target.backing.memory import MemoryStore
from target.iscsi import pdu
from target.iscsi.connection import Connection
from target.iscsi.initiator import (
    CommandDone,
    InitiatorConnection,
    InitiatorError,
    LoginComplete,
    LoginFailed,
    LogoutDone,
    NopIn,
    PduReceived,
    TaskManagementDone,
)
from target.iscsi.pdu import Bhs, Op
from target.iscsi.portal import Portal, TargetEntry
from target.iscsi.session import SessionRegistry
from target.scsi.device import ScsiDevice
from target.scsi.disk import make_disk
from tests.unit.shell_util import execute_delivered

pytestmark = pytest.mark.unit

TNAME = "iqn.2026-11.local.test:disk"
INAME = "iqn.2026-11.local.test:core"
BS = 512
GOOD, CHECK_CONDITION = 0x00, 0x02
UNIT_ATTENTION = 0x6


def read10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)


def write10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0, lba, 0, blocks, 0)


class Pair:
    """The core and a target Connection joined by the test instead of a socket."""

    def __init__(self, **offers) -> None:
        self.store = MemoryStore(8 << 20)
        self.device = ScsiDevice(TNAME, [make_disk(0, self.store, block_size=BS)])
        portal = Portal({TNAME: TargetEntry(TNAME, self.device)}, ["127.0.0.1:3260"],
                        SessionRegistry(), **offers)
        self.target = Connection(portal, "127.0.0.1:3260", "core")
        self.core = InitiatorConnection()
        self.to_target: list[bytes] = []  # every byte the core sent, in order
        self.to_core: list[bytes] = []    # every byte the target sent

    def pump(self, *, step: int | None = None) -> list:
        """Exchange bytes until both sides are quiet; the core's events, in order. step
        feeds the core through get_buffer()/buffer_updated() at most `step` bytes a time."""
        events = []
        while True:
            out = b"".join(bytes(b) for b in self.core.data_to_send())
            if out:
                self.to_target.append(out)
                self.target.receive_data(out)
                self._run_target()
            back = b"".join(bytes(b) for b in self.target.data_to_send())
            if back:
                self.to_core.append(back)
                if step is None:
                    self.core.receive_data(back)
                else:
                    view = memoryview(back)
                    while view:
                        buf = self.core.get_buffer()
                        n = min(len(buf), len(view), step)
                        buf[:n] = view[:n]
                        self.core.buffer_updated(n)
                        view = view[n:]
            while (event := self.core.next_event()) is not None:
                events.append(event)
            if not out and not back:
                return events

    def _run_target(self) -> None:
        """What target.shell.dispatch does, with no task set: run each task whose data
        is in, and hand it back (shell_util.execute_delivered)."""
        execute_delivered(self.target, self.device)

    def login(self, **kw) -> dict[str, str]:
        self.core.login(initiator_name=INAME, target_name=TNAME, isid=0x400000000001, **kw)
        events = self.pump()
        assert [type(e) for e in events] == [LoginComplete]
        # the power-on unit attention of the new nexus (SAM-5 5.14) out of the way
        self.core.command(bytes(6))
        (ua,) = self.pump()
        assert ua.result.status == CHECK_CONDITION and ua.result.sense[2] & 0xF == UNIT_ATTENTION
        return events[0].keys

    def run(self, cdb: bytes, **kw):
        sent, back = len(self.to_target), len(self.to_core)
        itt = self.core.command(cdb, **kw)
        events = self.pump()
        self.sent, self.back = self.to_target[sent:], self.to_core[back:]  # this command's
        assert [type(e) for e in events] == [CommandDone] and events[0].itt == itt
        return events[0].result


def target_pdus(chunks: list[bytes], header_digest: bool = False) -> list[tuple[Bhs, bytes]]:
    raw = b"".join(chunks)
    out, pos = [], 0
    while pos < len(raw):
        bhs = Bhs(raw[pos:pos + 48])
        pos += 48 + (4 if header_digest else 0)
        out.append((bhs, raw[pos:pos + bhs.dsl]))
        pos += bhs.dsl + pdu.pad_len(bhs.dsl)
    return out


def test_login_operational_stage_to_full_feature_6_3():
    """6.3: a login straight to the operational stage reaches full feature phase; the
    answer's keys are what the core then uses (13.12 MaxRecvDataSegmentLength, 13.14)."""
    p = Pair(max_recv_data_segment_length=16384, first_burst_length=32768)
    keys = p.login()
    assert p.target.phase.name == "FULL_FEATURE"
    assert p.target.session.params.initiator_name == INAME
    assert keys["MaxRecvDataSegmentLength"] == "16384"
    assert p.core.max_send == 16384 and p.core.first_burst == 32768
    assert p.core.tsih == p.target.session.params.tsih != 0
    # 11.13: ExpStatSN acknowledges every status the target sent
    assert p.core.exp_stat_sn == p.target.stat_sn


def test_login_refused_is_an_event_11_13_5():
    """11.13.5: an unknown TargetName is Status-Class 2, Status-Detail 03 (not found)."""
    p = Pair()
    p.core.login(initiator_name=INAME, target_name="iqn.2026-11.local.test:nobody",
                 isid=0x400000000001)
    (event,) = p.pump()
    assert type(event) is LoginFailed and event.status == 0x0203


def test_read10_data_in_at_buffer_offsets_11_7():
    """A READ(10) of 600 KiB comes in several Data-In PDUs (target MaxRecvDataSegmentLength
    of ours, 262144), the last with S (phase collapse, 11.7.4); the data is the store's."""
    p = Pair()
    p.login()
    pattern = bytes(range(256)) * (1200 * BS // 256)
    p.store.write(100 * BS, pattern)
    result = p.run(read10(100, 1200), read=1200 * BS)
    data_ins = [b for b, _ in target_pdus(p.back) if b.opcode == Op.DATA_IN]
    assert len(data_ins) == 3 and data_ins[-1].flags & pdu.F_STATUS
    assert result.status == GOOD and result.residual == 0 and not result.underflow
    assert result.data == pattern


def test_read_fed_a_byte_at_a_time_and_never_past_a_pdu():
    """get_buffer() offers no more than the PDU being received: after each whole target
    PDU the next offer is a BHS of 48 bytes (so a shell never reads past a PDU)."""
    p = Pair()
    p.login()
    p.store.write(0, b"\xa5" * 4096)
    itt = p.core.command(read10(0, 8), read=4096)
    events = p.pump(step=1)
    assert type(events[0]) is CommandDone and events[0].itt == itt
    assert events[0].result.data == b"\xa5" * 4096
    assert len(p.core.get_buffer()) == pdu.BHS_LEN


def test_write10_answers_r2ts_11_8():
    """ImmediateData=No (13.11), InitialR2T=Yes (13.10): every byte of a WRITE(10) goes in
    Data-Out answering the target's R2Ts, MaxBurstLength 64 KiB each (11.8), in PDUs of at
    most the target's MaxRecvDataSegmentLength (8 KiB); the SCSI Response is GOOD (11.4)
    and the bytes are in the store."""
    p = Pair(immediate_data=False, max_burst_length=65536, first_burst_length=65536,
             max_recv_data_segment_length=8192, max_outstanding_r2t=1)
    keys = p.login()
    assert keys["ImmediateData"] == "No" and keys["InitialR2T"] == "Yes"
    data = bytes((i * 7) & 0xFF for i in range(200 * BS))
    result = p.run(write10(50, 200), data=data)
    assert result.status == GOOD and result.residual == 0
    assert p.store.read(50 * BS, len(data)) == data
    sent = target_pdus(p.sent)
    assert sent[0][0].opcode == Op.SCSI_COMMAND and sent[0][0].dsl == 0
    data_outs = [b for b, _ in sent if b.opcode == Op.DATA_OUT]
    assert data_outs and all(b.dsl <= 8192 for b in data_outs)
    assert sum(b.dsl for b in data_outs) == len(data)
    r2ts = [b for b, _ in target_pdus(p.back) if b.opcode == Op.R2T]
    assert len(r2ts) == -(-len(data) // 65536)  # ceil: one per MaxBurstLength


def test_write10_immediate_then_r2t_11_8():
    """ImmediateData=Yes: the first FirstBurstLength bytes (at most one PDU of the target's
    MaxRecvDataSegmentLength) go with the command, R2Ts ask for the rest."""
    p = Pair(first_burst_length=16384, max_recv_data_segment_length=16384)
    keys = p.login()
    assert keys["ImmediateData"] == "Yes"
    data = bytes((i * 13) & 0xFF for i in range(96 * BS))
    result = p.run(write10(7, 96), data=data)
    assert result.status == GOOD
    assert p.store.read(7 * BS, len(data)) == data
    command = target_pdus(p.sent)[0][0]
    assert command.opcode == Op.SCSI_COMMAND and command.dsl == 16384


def test_header_digest_both_ways_13_1():
    """HeaderDigest=CRC32C: the target checks the core's digests (a wrong one ends the
    connection) and the core checks the target's."""
    p = Pair()
    keys = p.login(header_digest=True)
    assert keys["HeaderDigest"] == "CRC32C" and p.core.header_digest
    p.store.write(0, b"\x5a" * 1024)
    assert p.run(read10(0, 2), read=1024).data == b"\x5a" * 1024
    assert not p.target.want_close


def test_corrupt_header_digest_is_an_error_13_1():
    p = Pair()
    p.login(header_digest=True)
    p.core.nop(b"x")
    raw = b"".join(bytes(b) for b in p.core.data_to_send())
    p.target.receive_data(raw)
    back = bytearray(b"".join(bytes(b) for b in p.target.data_to_send()))
    back[49] ^= 0xFF  # a bit of the digest of the NOP-In's header
    p.core.receive_data(bytes(back))
    with pytest.raises(InitiatorError, match="digest"):
        p.core.next_event()


def test_check_condition_sense_in_scsi_response_11_4_7():
    """A READ(10) past the last LBA: CHECK CONDITION, ILLEGAL REQUEST, LBA OUT OF RANGE
    (SBC-4 5.16, 21h/00h), the sense after its 2-byte SenseLength (11.4.7)."""
    p = Pair()
    p.login()
    result = p.run(read10((8 << 20) // BS, 1), read=BS)
    assert result.status == CHECK_CONDITION
    assert result.sense[2] & 0xF == 0x5 and result.sense[12:14] == b"\x21\x00"


def test_nop_tmf_logout_11_18_11_5_11_14():
    """NOP-Out ping data comes back in the NOP-In (11.19); LOGICAL UNIT RESET is Function
    Complete (11.6.1 response 0); Logout closes the session (11.15.1 response 0) and the
    target wants the connection closed."""
    p = Pair()
    p.login()
    p.core.nop(b"ping data")
    (event,) = p.pump()
    assert type(event) is NopIn and event.data == b"ping data"
    p.core.task_management(pdu.TmfFunction.LOGICAL_UNIT_RESET)
    (event,) = p.pump()
    assert type(event) is TaskManagementDone and event.response == 0
    p.core.logout()
    (event,) = p.pump()
    assert type(event) is LogoutDone and event.response == 0
    assert p.target.want_close
    assert p.core.exp_stat_sn == p.target.stat_sn


def test_untracked_pdu_is_handed_over_11_17():
    """A PDU the caller framed itself (an unsupported opcode, here a SNACK at ERL 0) is
    Rejected by the target; the Reject names no tracked request, so it comes as it is."""
    p = Pair()
    p.login()
    p.core.send_pdu(pdu.pack(Op.SNACK_REQUEST, 0x80, 0, 0, 0, bytes(8), 0x1234, 0, 0,
                             p.core.exp_stat_sn))
    events = p.pump()
    assert [type(e) for e in events] == [PduReceived]
    assert events[0].bhs.opcode == Op.REJECT and events[0].data[16:20] == b"\x00\x00\x12\x34"
