"""The full feature phase of one connection (RFC 7143), driven PDU by PDU.

The connection is put in full feature phase with negotiated parameters directly; the SCSI
side is a real ScsiDevice over a MemoryStore with a small test command table (READ(10),
WRITE(10), TEST UNIT READY) so the iSCSI rules are tested on their own.
"""

from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest

from target.backing.memory import MemoryStore
from target.iscsi import pdu
from target.iscsi.connection import Connection, Phase
from target.iscsi.pdu import Bhs, Op
from target.iscsi.session import Session, SessionParams, SessionRegistry
from target.scsi.commands import Access, CommandSet
from target.scsi.device import ScsiDevice
from target.scsi.lu import LogicalUnit
from target.scsi.task import Direction
from tests.unit.shell_util import execute_delivered

pytestmark = pytest.mark.unit

BS = 512
CMDS = CommandSet("test")


@CMDS.command(0x00, "TEST UNIT READY", [0x00, 0, 0, 0, 0, 0x07], access=Access.ALLOWED)
def _tur(lu, task):
    pass


@CMDS.command(0x28, "READ(10)", [0x28, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0x07],
              Direction.IN, access=Access.READ)
def _read10(lu, task):
    lba, n = struct.unpack_from(">IxH", task.cdb, 2)
    task.data_in = lu.store.read(lba * BS, n * BS)


@CMDS.command(0x2A, "WRITE(10)", [0x2A, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0x07],
              Direction.OUT, access=Access.WRITE)
def _write10(lu, task):
    lba, n = struct.unpack_from(">IxH", task.cdb, 2)
    task.out_length = n * BS
    have = min(len(task.data_out), n * BS) // BS * BS
    lu.store.write(lba * BS, task.data_out[:have])


class Harness:
    """One connection in full feature phase plus the loop a shell would run."""

    def __init__(self, *, store=None, commands=CMDS, exp_cmdsn=1, window=128,
                 **params) -> None:
        self.store = store if store is not None else MemoryStore(16 << 20)
        self.lu = LogicalUnit(0, self.store, commands, block_size=BS)
        self.device = ScsiDevice("iqn.2026-11.local.test:t", [self.lu])
        self.portal = SimpleNamespace(max_recv_data_segment_length=262144,
                                      registry=SessionRegistry())
        self.conn = Connection(self.portal, "127.0.0.1:3260", "test")
        p = SessionParams(initiator_name="iqn.2026-11.local.test:i", target_name=self.device.name,
                          isid=0x400000000001, tsih=1)
        for k, v in params.items():
            setattr(p, k, v)
        self.session = Session(p, self.device, exp_cmdsn=exp_cmdsn, window=window)
        self.portal.registry.add(self.session)
        self.conn.enter_full_feature(self.session, 100)
        self.cmdsn = exp_cmdsn
        self.itt = 1
        self.lu.ua.clear(self.conn.nexus)  # a known nexus with nothing pending

    def feed(self, *chunks: bytes, step: int | None = None) -> None:
        for chunk in chunks:
            if step:
                for i in range(0, len(chunk), step):
                    self.conn.receive_data(chunk[i:i + step])
                    self.run()
            else:
                self.conn.receive_data(chunk)
                self.run()

    def run(self) -> None:
        """Execute what the connection delivered, with no task set (execute_delivered)."""
        execute_delivered(self.conn, self.device)

    def pdus(self) -> list[tuple[Bhs, bytes]]:
        raw = b"".join(bytes(b) for b in self.conn.data_to_send())
        out = []
        hd = 4 if self.conn.params.header_digest else 0
        dd = 4 if self.conn.params.data_digest else 0
        pos = 0
        while pos < len(raw):
            bhs = Bhs(raw[pos:pos + 48])
            if hd:
                assert pdu.digest(raw[pos:pos + 48]) == raw[pos + 48:pos + 52]
            pos += 48 + hd
            data = raw[pos:pos + bhs.dsl]
            pos += bhs.dsl + pdu.pad_len(bhs.dsl)
            if dd and bhs.dsl:
                assert pdu.digest(data, pdu.padding(bhs.dsl)) == raw[pos:pos + 4]
                pos += 4
            out.append((bhs, data))
        return out

    def command(self, cdb: bytes, edtl: int, *, read=False, write=False, data=b"",
                immediate=False, cmdsn=None, itt=None, final=True) -> bytes:
        """A SCSI Command PDU; final=False when unsolicited Data-Out follows (11.3.1)."""
        flags = ((pdu.F_FINAL if final else 0) | (pdu.F_READ if read else 0)
                 | (pdu.F_WRITE if write else 0) | 1)
        if cmdsn is None:
            cmdsn = self.cmdsn
            if not immediate:
                self.cmdsn += 1
        if itt is None:
            itt = self.itt
            self.itt += 1
        hdr = pdu.scsi_command(immediate=immediate, flags=flags, dsl=len(data),
                               lun=pdu.ZERO_LUN, itt=itt, edtl=edtl, cmdsn=cmdsn, exp_statsn=0,
                               cdb=cdb)
        return self.frame(hdr, data)

    def frame(self, hdr: bytes, data: bytes = b"") -> bytes:
        out = hdr
        if self.conn.params.header_digest:
            out += pdu.digest(hdr)
        if data:
            out += data + pdu.padding(len(data))
            if self.conn.params.data_digest:
                out += pdu.digest(data, pdu.padding(len(data)))
        return out

    def data_out(self, itt: int, ttt: int, datasn: int, offset: int, data: bytes,
                 final: bool = True) -> bytes:
        hdr = pdu.data_out(final=final, dsl=len(data), lun=pdu.ZERO_LUN, itt=itt, ttt=ttt,
                           exp_statsn=0, datasn=datasn, buffer_offset=offset)
        return self.frame(hdr, data)


def read10(lba: int, n: int) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, n, 0)


def write10(lba: int, n: int) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0, lba, 0, n, 0)


def test_read_splits_into_data_in_pdus_with_status_in_the_last():
    """11.7: Data-In of at most MaxRecvDataSegmentLength, DataSN from 0, offsets ascending,
    F on the last PDU of each MaxBurstLength sequence; 11.7.4: phase collapse (S bit)."""
    h = Harness(max_recv_data_segment_length=8192, max_burst_length=16384)
    h.store.write(0, bytes(range(256)) * 128)  # 32 KiB pattern
    h.feed(h.command(read10(0, 64), 32768, read=True))
    pdus = h.pdus()
    assert [b.opcode for b, _ in pdus] == [Op.DATA_IN] * 4
    assert [b.datasn for b, _ in pdus] == [0, 1, 2, 3]
    assert [b.buffer_offset for b, _ in pdus] == [0, 8192, 16384, 24576]
    assert [bool(b.flags & pdu.F_FINAL) for b, _ in pdus] == [False, True, False, True]
    assert [bool(b.flags & pdu.F_STATUS) for b, _ in pdus] == [False, False, False, True]
    assert b"".join(d for _, d in pdus) == bytes(range(256)) * 128
    last = pdus[-1][0]
    assert last.b3 == 0 and last.statsn == 100  # GOOD, StatSN continues from login
    assert h.conn.stat_sn == 101


def test_read_residual_underflow_and_overflow():
    """11.4.5.1 / 11.7.5: U when less than EDTL is sent, O with the count not sent."""
    h = Harness()
    h.feed(h.command(read10(0, 1), 4096, read=True))
    (bhs, data), = h.pdus()
    assert bhs.flags & pdu.F_UNDERFLOW and bhs.residual_count == 4096 - 512 and len(data) == 512
    h.feed(h.command(read10(0, 8), 1024, read=True))
    (bhs, data), = h.pdus()
    assert bhs.flags & pdu.F_OVERFLOW and bhs.residual_count == 4096 - 1024 and len(data) == 1024


def test_write_with_immediate_data_then_r2ts():
    """11.8: after immediate data, R2Ts of at most MaxBurstLength with TTT, R2TSN from 0 and
    at most MaxOutstandingR2T outstanding; 11.4: ExpDataSN counts the R2Ts."""
    h = Harness(immediate_data=True, initial_r2t=True, first_burst_length=65536,
                max_burst_length=65536, max_outstanding_r2t=2)
    total = 65536 * 4 + 4096
    payload = bytes((i * 7) & 0xFF for i in range(total))
    h.feed(h.command(write10(100, total // BS), total, write=True, data=payload[:8192]))
    r2ts = h.pdus()
    assert [b.opcode for b, _ in r2ts] == [Op.R2T, Op.R2T]
    assert [(b.r2tsn, b.buffer_offset, b.desired_length) for b, _ in r2ts] == [
        (0, 8192, 65536), (1, 73728, 65536)]
    assert r2ts[0][0].ttt != r2ts[1][0].ttt
    assert r2ts[0][0].statsn == 100  # R2T carries StatSN without advancing it
    pending = [(b.ttt, b.buffer_offset, b.desired_length) for b, _ in r2ts]
    seen = 2
    while pending:
        ttt, off, length = pending.pop(0)
        for i, o in enumerate(range(off, off + length, 8192)):
            n = min(8192, off + length - o)
            h.feed(h.data_out(1, ttt, i, o, payload[o:o + n], final=o + n == off + length))
        for b, _ in h.pdus():
            if b.opcode == Op.R2T:
                assert b.r2tsn == seen
                seen += 1
                pending.append((b.ttt, b.buffer_offset, b.desired_length))
            else:
                assert b.opcode == Op.SCSI_RESPONSE
                assert b.b3 == 0 and b.exp_datasn == seen  # GOOD; ExpDataSN = R2Ts sent
    assert bytes(h.store.read(100 * BS, total)) == payload


def test_unsolicited_data_out_up_to_first_burst():
    """11.7 / 13.11: with InitialR2T=No, Data-Out with TTT ffffffff up to FirstBurstLength."""
    h = Harness(immediate_data=False, initial_r2t=False, first_burst_length=16384)
    payload = b"\xa5" * 20480
    h.feed(h.command(write10(0, 40), 20480, write=True, final=False))
    (r2t, _), = h.pdus()  # solicited only beyond the first burst, asked for at once
    assert r2t.opcode == Op.R2T and (r2t.buffer_offset, r2t.desired_length) == (16384, 4096)
    h.feed(h.data_out(1, 0xFFFFFFFF, 0, 0, payload[:8192], final=False),
           h.data_out(1, 0xFFFFFFFF, 1, 8192, payload[8192:16384]))
    assert h.pdus() == []
    h.feed(h.data_out(1, r2t.ttt, 0, 16384, payload[16384:]))
    (resp, _), = h.pdus()
    assert resp.opcode == Op.SCSI_RESPONSE and resp.b3 == 0
    assert bytes(h.store.read(0, 20480)) == payload


@pytest.mark.parametrize("step", [1, 7, 4096, None])
def test_write_data_received_in_any_chunking(step):
    """Bytes may arrive split anywhere; the result is the same (TCP is a byte stream)."""
    h = Harness(immediate_data=True, initial_r2t=False, first_burst_length=65536)
    payload = bytes(range(256)) * 16
    stream = h.command(write10(8, 8), 4096, write=True, data=payload[:1024], final=False)
    stream += h.data_out(1, 0xFFFFFFFF, 0, 1024, payload[1024:])
    stream += h.command(read10(8, 8), 4096, read=True)
    h.feed(stream, step=step)
    out = h.pdus()
    assert out[0][0].opcode == Op.SCSI_RESPONSE
    assert out[-1][0].opcode == Op.DATA_IN and out[-1][1] == payload


def test_cmdsn_window():
    """4.2.2.1: commands run in CmdSN order; a CmdSN beyond MaxCmdSN is silently ignored."""
    h = Harness()
    tur = bytes(6)
    h.feed(h.command(tur, 0, cmdsn=3, itt=30), h.command(tur, 0, cmdsn=2, itt=20))
    assert h.pdus() == []  # waiting for CmdSN 1
    h.feed(h.command(tur, 0, cmdsn=1, itt=10))
    assert [b.itt for b, _ in h.pdus()] == [10, 20, 30]
    assert h.session.exp_cmdsn == 4
    h.feed(h.command(tur, 0, cmdsn=h.session.max_cmdsn + 1, itt=40))
    h.feed(h.command(tur, 0, cmdsn=2, itt=41))  # below ExpCmdSN: ignored too
    assert h.pdus() == [] and not h.conn.want_close
    h.feed(h.command(tur, 0, cmdsn=4, itt=42))
    (resp, _), = h.pdus()
    assert resp.itt == 42 and resp.exp_cmdsn == 5 and resp.max_cmdsn == h.session.max_cmdsn


def test_max_cmdsn_moves_with_exp_cmdsn():
    """4.2.2.1: every response carries ExpCmdSN and MaxCmdSN, and the window (MaxCmdSN -
    ExpCmdSN + 1, what login set) stays the same as commands are received, in order or
    once a hole closes, across the 2**32 wrap (serial arithmetic, RFC 1982); a command at
    the MaxCmdSN announced is taken, one past it is silently ignored."""
    h = Harness(exp_cmdsn=0xFFFFFFFE, window=4)
    tur = bytes(6)
    h.feed(h.command(tur, 0, cmdsn=0xFFFFFFFE, itt=1))
    (r, _), = h.pdus()
    assert (r.exp_cmdsn, r.max_cmdsn) == (0xFFFFFFFF, 2)
    h.feed(h.command(tur, 0, cmdsn=0, itt=3), h.command(tur, 0, cmdsn=1, itt=4))
    assert h.pdus() == []  # held behind 0xFFFFFFFF
    h.feed(h.command(tur, 0, cmdsn=0xFFFFFFFF, itt=2))
    out = h.pdus()
    assert [b.itt for b, _ in out] == [2, 3, 4]
    assert all((b.max_cmdsn - b.exp_cmdsn + 1) & 0xFFFFFFFF == 4 for b, _ in out)
    assert (out[-1][0].exp_cmdsn, out[-1][0].max_cmdsn) == (2, 5)
    h.feed(h.command(tur, 0, cmdsn=5, itt=6), h.command(tur, 0, cmdsn=6, itt=7))
    assert h.pdus() == []  # 5 (= MaxCmdSN) held, 6 beyond the window ignored
    h.feed(*(h.command(tur, 0, cmdsn=sn, itt=sn + 1) for sn in (2, 3, 4)))
    out = h.pdus()
    assert [b.itt for b, _ in out] == [3, 4, 5, 6]
    assert (out[-1][0].exp_cmdsn, out[-1][0].max_cmdsn) == (6, 9)


def test_immediate_command_bypasses_ordering():
    """3.2.2.1: an immediate command is delivered at once and does not advance ExpCmdSN."""
    h = Harness()
    h.feed(h.command(bytes(6), 0, cmdsn=1, immediate=True, itt=5))
    (resp, _), = h.pdus()
    assert resp.itt == 5 and h.session.exp_cmdsn == 1


def sense_of(data: bytes) -> tuple[int, int, int]:
    sense = data[2:2 + struct.unpack(">H", data[:2])[0]]
    return sense[2] & 0x0F, sense[12], sense[13]


def test_bad_datasn_rejects_the_pdu_and_aborts_the_command():
    """11.7.2 / 11.17 / 11.4.7.2: a DataSN out of sequence is Rejected and its command ends
    in CHECK CONDITION, ABORTED COMMAND (4Bh/00h DATA PHASE ERROR); the session goes on and
    late data for the aborted command is discarded."""
    h = Harness(immediate_data=False, initial_r2t=True)
    h.feed(h.command(write10(0, 2), 1024, write=True))
    (r2t, _), = h.pdus()
    h.feed(h.data_out(1, r2t.ttt, 27, 0, b"x" * 512, final=False))
    (rej, data), (resp, sense) = h.pdus()
    assert rej.opcode == Op.REJECT and rej.b2 == pdu.RejectReason.PROTOCOL_ERROR
    assert Bhs(data).opcode == Op.DATA_OUT
    assert resp.opcode == Op.SCSI_RESPONSE and resp.itt == 1 and resp.b3 == 0x02
    assert sense_of(sense) == (0x0B, 0x4B, 0x00)
    h.feed(h.data_out(1, r2t.ttt, 1, 512, b"y" * 512))
    assert h.pdus() == [] and not h.conn.want_close
    h.feed(h.command(bytes(6), 0))
    assert h.pdus()[0][0].b3 == 0


def test_data_beyond_r2t_is_rejected():
    """11.8.3: Data-Out must stay inside the R2T's range: Reject, and the command ends with
    ABORTED COMMAND / DATA OFFSET ERROR (4Bh/05h, 11.4.7.2)."""
    h = Harness(immediate_data=False, initial_r2t=True)
    h.feed(h.command(write10(0, 1), 512, write=True))
    (r2t, _), = h.pdus()
    h.feed(h.data_out(1, r2t.ttt, 0, 0, b"x" * 1024))
    (rej, _), (resp, sense) = h.pdus()
    assert rej.opcode == Op.REJECT and rej.b2 == pdu.RejectReason.INVALID_PDU_FIELD
    assert sense_of(sense) == (0x0B, 0x4B, 0x05)
    assert not h.conn.want_close


def test_unknown_opcode_is_rejected_and_the_connection_goes_on():
    """11.17.1: Command not supported; the session continues."""
    h = Harness()
    # deliberately an opcode RFC 7143 10.2.1.2 does not define, so no builder: pack(),
    # ITT 9 and CmdSN 1 at the offsets of the other initiator PDUs (16, 24)
    h.feed(h.frame(pdu.pack(0x1C | 0x40, pdu.F_FINAL, 0, 0, 0, pdu.ZERO_LUN, 9, 0, 1)))
    (rej, _), = h.pdus()
    assert rej.opcode == Op.REJECT and rej.b2 == pdu.RejectReason.COMMAND_NOT_SUPPORTED
    assert not h.conn.want_close
    h.feed(h.command(bytes(6), 0))
    assert h.pdus()[0][0].opcode == Op.SCSI_RESPONSE


def test_nop_out_ping_is_echoed():
    """11.18/11.19: a NOP-Out with a valid ITT is answered by a NOP-In with its data."""
    h = Harness()
    h.feed(h.frame(pdu.nop_out(dsl=5, itt=77, cmdsn=1, exp_statsn=0), b"hello"))
    (nop, data), = h.pdus()
    assert nop.opcode == Op.NOP_IN and nop.itt == 77 and nop.ttt == 0xFFFFFFFF
    assert data == b"hello" and nop.statsn == 100 and h.session.exp_cmdsn == 2


def test_target_ping_and_answer():
    """11.19: our NOP-In has ITT ffffffff and a TTT the NOP-Out echoes."""
    h = Harness()
    assert h.conn.ping()
    (nop, _), = h.pdus()
    assert nop.itt == 0xFFFFFFFF and nop.ttt != 0xFFFFFFFF and nop.statsn == 100
    assert not h.conn.ping()  # still unanswered
    h.feed(h.frame(pdu.nop_out(immediate=True, itt=0xFFFFFFFF, ttt=nop.ttt, cmdsn=h.cmdsn,
                               exp_statsn=0)))
    assert h.pdus() == [] and h.conn.ping()


def test_digests_checked_and_sent():
    """13.1/13.2: CRC32C header and data digests on every PDU; a bad header digest closes."""
    h = Harness(header_digest=True, data_digest=True)
    h.conn._hdigest = h.conn._ddigest = True
    h.feed(h.command(write10(0, 1), 512, write=True, data=b"d" * 512))
    h.feed(h.command(read10(0, 1), 512, read=True))
    resp, (din, data) = h.pdus()  # pdus() verifies our digests
    assert data == b"d" * 512
    bad = bytearray(h.command(bytes(6), 0))
    bad[48] ^= 0xFF
    h.feed(bytes(bad))
    assert h.conn.want_close


@pytest.mark.parametrize("step", [1, 5, 52, None])
@pytest.mark.parametrize("digests", [False, True])
def test_pdus_without_data_segment_in_any_chunking(step, digests):
    """11.2 (PDU layout), 13.1/13.2: a PDU with DataSegmentLength 0 is its BHS (and the header
    digest) alone, with no padding and no data digest; a stream of them (TEST UNIT READY,
    a NOP-Out ping, READ(10)), split anywhere or in one piece, is answered whole: the ping
    at once, the commands when the SCSI layer is done (3.2.2.1 orders their delivery, not
    the responses), with consecutive StatSNs (11.4.4)."""
    h = Harness(header_digest=digests, data_digest=digests)
    h.conn._hdigest = h.conn._ddigest = digests
    h.store.write(0, b"r" * 512)
    stream = h.command(bytes(6), 0)
    stream += h.frame(pdu.nop_out(itt=500, cmdsn=h.cmdsn, exp_statsn=0))
    h.cmdsn += 1
    stream += h.command(read10(0, 1), 512, read=True)
    assert len(stream) == 3 * (48 + (4 if digests else 0))  # no data digest on any
    h.feed(stream, step=step)
    out = h.pdus()  # pdus() verifies our digests
    assert {b.itt: b.opcode for b, _ in out} == {1: Op.SCSI_RESPONSE, 500: Op.NOP_IN,
                                                 2: Op.DATA_IN}
    assert [b.statsn for b, _ in out] == [100, 101, 102]
    assert out[-1][1] == b"r" * 512 and not h.conn.want_close


def test_logout_closes_session():
    """11.14/11.15: Logout reason 0 answered with response 0, then the connection ends."""
    h = Harness()
    h.feed(h.frame(pdu.logout_request(immediate=True, itt=3, cmdsn=1, exp_statsn=0)))
    (resp, _), = h.pdus()
    assert resp.opcode == Op.LOGOUT_RESPONSE and resp.b2 == 0
    assert h.conn.want_close and h.conn.phase is Phase.CLOSED
    assert h.session.params.tsih not in h.portal.registry.sessions


def test_abort_task_waiting_for_data():
    """11.5.1: ABORT TASK of a write still waiting for Data-Out: Function complete, no
    response for the task, its late data discarded; an unknown task: Task does not exist."""
    h = Harness(immediate_data=False, initial_r2t=True)
    h.feed(h.command(write10(0, 1), 512, write=True, itt=50))
    (r2t, _), = h.pdus()
    tmf = pdu.task_management_request(immediate=True, function=pdu.TmfFunction.ABORT_TASK,
                                      lun=pdu.ZERO_LUN, itt=51, referenced_task_tag=50,
                                      cmdsn=h.cmdsn, exp_statsn=0, ref_cmdsn=1)
    h.feed(h.frame(tmf))
    (resp, _), = h.pdus()
    assert resp.opcode == Op.TASK_MGMT_RESPONSE and resp.b2 == pdu.TmfResponse.COMPLETE
    h.feed(h.data_out(50, r2t.ttt, 0, 0, b"x" * 512))
    assert h.pdus() == [] and not h.conn.want_close
    h.feed(h.frame(pdu.task_management_request(
        immediate=True, function=pdu.TmfFunction.ABORT_TASK, lun=pdu.ZERO_LUN, itt=52,
        referenced_task_tag=50, cmdsn=h.cmdsn, exp_statsn=0, ref_cmdsn=1)))
    (resp, _), = h.pdus()
    assert resp.b2 == pdu.TmfResponse.TASK_DOES_NOT_EXIST


def test_lun_reset_sets_unit_attention():
    """11.5.1 + SAM-5 6.6: LOGICAL UNIT RESET completes and the next command of the nexus
    gets CHECK CONDITION / UNIT ATTENTION 29h/03h with autosense in the SCSI Response."""
    h = Harness()
    h.feed(h.frame(pdu.task_management_request(
        immediate=True, function=pdu.TmfFunction.LOGICAL_UNIT_RESET, lun=pdu.ZERO_LUN, itt=60,
        cmdsn=h.cmdsn, exp_statsn=0)))
    (resp, _), = h.pdus()
    assert resp.b2 == pdu.TmfResponse.COMPLETE
    h.feed(h.command(bytes(6), 0))
    (resp, data), = h.pdus()
    assert resp.b3 == 0x02
    sense = data[2:2 + struct.unpack(">H", data[:2])[0]]
    assert sense[2] & 0x0F == 0x06 and (sense[12], sense[13]) == (0x29, 0x03)


def test_oversized_data_segment_closes():
    """13.12: a data segment over our MaxRecvDataSegmentLength is a protocol error."""
    h = Harness()
    h.conn._max_recv = 8192
    h.feed(h.frame(pdu.nop_out(dsl=9000, itt=1, cmdsn=1, exp_statsn=0)))
    assert h.conn.want_close


# RFC 7143 10.2.1.2 (initiator opcodes), written out from the RFC, not from target.iscsi.
RFC_INITIATOR_OPCODES = {0x00: "NOP-Out", 0x01: "SCSI Command", 0x02: "SCSI Task Management",
                         0x03: "Login", 0x04: "Text", 0x05: "SCSI Data-Out", 0x06: "Logout",
                         0x10: "SNACK"}


def test_request_table_has_a_row_for_each_initiator_opcode():
    """10.2.1.2: the request table covers the initiator opcodes, no more; only the Login
    Request is allowed before full feature phase (6.1), and only Data-Out and SNACK
    carry no CmdSN (11.7.1, 11.16.1: their words 24-28 are ExpStatSN, not CmdSN)."""
    from target.iscsi.connection import REQUESTS, Ordering

    assert set(REQUESTS) == set(RFC_INITIATOR_OPCODES)
    assert {op for op, r in REQUESTS.items() if Phase.LOGIN in r.phases} == {0x03}
    assert {op for op, r in REQUESTS.items() if Phase.FULL_FEATURE in r.phases} == \
        set(RFC_INITIATOR_OPCODES) - {0x03}
    no_cmdsn = {op for op, r in REQUESTS.items() if r.ordering is Ordering.NONE}
    assert no_cmdsn == {0x05, 0x10, 0x03}  # Login's CmdSN is the login's own (6.2)


def test_discovery_session_rejects_task_management_and_answers_nop_out():
    """Discovery sessions carry Text and Logout (RFC 7143 4.3); a TMF there is Rejected
    (11.17.1, Protocol Error) and the connection goes on; a NOP-Out ping is answered."""
    h = Harness(session_type="Discovery")
    h.conn._discovery = True  # as enter_full_feature sets it for SessionType=Discovery
    h.feed(h.frame(pdu.task_management_request(
        immediate=True, function=pdu.TmfFunction.ABORT_TASK, lun=pdu.ZERO_LUN, itt=5,
        referenced_task_tag=0, cmdsn=h.cmdsn, exp_statsn=0)))
    (rej, data), = h.pdus()
    assert rej.opcode == Op.REJECT and rej.b2 == 0x04  # 11.17.1: Protocol Error
    assert Bhs(data).itt == 5 and not h.conn.want_close
    h.feed(h.frame(pdu.nop_out(immediate=True, itt=6, cmdsn=h.cmdsn, exp_statsn=0)))
    (nop, _), = h.pdus()
    assert nop.opcode == Op.NOP_IN and nop.itt == 6


def test_snack_is_rejected_at_error_recovery_level_0():
    """11.16, 11.17.1: SNACK Reject (reason 0x03) when no recovery is supported; the
    connection goes on."""
    h = Harness()
    # SNACK (11.16) has no builder: the target never asks for one at ErrorRecoveryLevel 0
    h.feed(h.frame(pdu.pack(Op.SNACK_REQUEST, pdu.F_FINAL, itt=0xFFFFFFFF)))
    (rej, _), = h.pdus()
    assert rej.opcode == Op.REJECT and rej.b2 == 0x03 and not h.conn.want_close
