"""Data integrity at the connection: what a read returns, CmdSN holes, unsolicited data.

Each test here was written against a defect found on the target (issue 11) and fails
without its fix:
- Task order (SAM-5 8.6, SPC-4 7.5.8 QUEUE ALGORITHM MODIFIER 0h): a read returns the
  medium's content at the moment its task is processed. A READ and an overlapping WRITE
  that arrive in one receive burst are processed in CmdSN order, so the READ's Data-In
  carries the data from before the WRITE, whatever store serves the LU, even though both
  are executed before the Data-In leaves.
- RFC 7143 11.5.1: ABORT TASK of a task the target never received, with RefCmdSN in the
  CmdSN window and below the TMF's own CmdSN: Function Complete, and that CmdSN counts as
  received (the hole closes and the commands held behind it run).
- RFC 7143 11.3.1: F=1 on a SCSI Command means no unsolicited Data-Out follows, even when
  InitialR2T=No; 11.7.1: the F bit of the last unsolicited Data-Out ends the unsolicited
  burst. The rest of the data is solicited with R2Ts.
- RFC 7143 11.4.5.1: a command that calls for Data-Out bytes the EDTL does not cover
  reports them as residual overflow, whether or not the W bit is set.
"""

from __future__ import annotations

import pytest

from target.backing.file import FileStore
from target.backing.memory import MemoryStore
from target.iscsi import pdu
from target.iscsi.pdu import Op, TmfResponse
from target.scsi.disk import DISK_COMMANDS
from target.scsi.task import Nexus
from tests.unit.test_iscsi_connection import BS, Harness, read10, write10

pytestmark = pytest.mark.unit

ABORT_TASK = 1


def stores(tmp_path):
    image = tmp_path / "lun.img"
    return {"memory": MemoryStore(16 << 20), "file": FileStore(image, size=16 << 20,
                                                               create=True)}


@pytest.fixture(params=["memory", "file"])
def store(request, tmp_path):
    s = stores(tmp_path)
    yield s[request.param]
    for st in s.values():
        st.close()


def disk(store, **params) -> Harness:
    return Harness(store=store, commands=DISK_COMMANDS, **params)


def tmf(h: Harness, function: int, ref_itt: int, ref_cmdsn: int, itt: int = 900) -> bytes:
    """An immediate TMF request carrying the CmdSN the initiator would use next."""
    return h.frame(pdu.task_management_request(
        immediate=True, function=function, lun=pdu.ZERO_LUN, itt=itt,
        referenced_task_tag=ref_itt, cmdsn=h.cmdsn, exp_statsn=0, ref_cmdsn=ref_cmdsn))


# --- a read sees its own moment ---------------------------------------------------------

def test_read_then_overlapping_write_in_one_burst_returns_the_old_data(store):
    """QAM=0: the READ (CmdSN n) is processed before the WRITE (CmdSN n+1) of the same
    blocks, so its Data-In holds the blocks as they were before the WRITE; the WRITE lands."""
    h = disk(store, immediate_data=True, first_burst_length=65536)
    old, new = b"\x11" * (8 * BS), b"\x22" * (8 * BS)
    h.feed(h.command(write10(64, 8), len(old), write=True, data=old))
    assert h.pdus()[0][0].b3 == 0
    burst = h.command(read10(64, 8), len(old), read=True)
    burst += h.command(write10(64, 8), len(new), write=True, data=new)
    h.feed(burst)
    (din, data), (resp, _) = h.pdus()
    assert din.opcode == Op.DATA_IN and din.flags & pdu.F_STATUS and din.b3 == 0
    assert data == old, "the READ's Data-In shows data written by a later command"
    assert resp.opcode == Op.SCSI_RESPONSE and resp.b3 == 0
    assert bytes(h.store.read(64 * BS, len(new))) == new


def test_large_read_data_unchanged_by_a_write_before_it_is_sent(store):
    """A read's buffer is the medium at the read's moment: later writes to the same blocks
    (here: from the same nexus, before the Data-In is taken for sending) leave it alone."""
    h = disk(store, immediate_data=True, first_burst_length=262144,
             max_recv_data_segment_length=65536)
    pattern = bytes(range(256)) * (1024 // 256) * 256  # 256 KiB
    h.store.write(0, pattern)
    h.feed(h.command(read10(0, len(pattern) // BS), len(pattern), read=True))
    for lba in range(0, len(pattern) // BS, 64):
        h.feed(h.command(write10(lba, 64), 64 * BS, write=True, data=b"\xee" * (64 * BS)))
    out = h.pdus()
    data = b"".join(d for b, d in out if b.opcode == Op.DATA_IN)
    assert data == pattern


# --- RFC 7143 11.5.1: ABORT TASK of a command lost in a CmdSN hole -----------------------

def test_abort_task_of_a_command_never_received_closes_the_cmdsn_hole():
    """11.5.1 b): the referenced task does not exist, RefCmdSN is in the window and below the
    TMF's CmdSN: Function Complete, and the CmdSN is considered received, so the command
    held behind the hole runs."""
    h = Harness()
    tur = bytes(6)
    lost_cmdsn = h.cmdsn          # CmdSN 1: the command that never arrives
    h.cmdsn += 1
    h.feed(h.command(tur, 0, itt=20))  # CmdSN 2 waits for 1
    assert h.pdus() == []
    h.feed(tmf(h, ABORT_TASK, ref_itt=10, ref_cmdsn=lost_cmdsn))
    out = h.pdus()
    assert out[0][0].opcode == Op.TASK_MGMT_RESPONSE
    assert out[0][0].b2 == TmfResponse.COMPLETE
    assert [b.itt for b, _ in out[1:]] == [20], "the command behind the hole did not run"
    assert h.session.exp_cmdsn == 3
    # The lost command arriving late is below ExpCmdSN now: ignored (4.2.2.1).
    h.feed(h.command(tur, 0, cmdsn=lost_cmdsn, itt=10))
    assert h.pdus() == []
    h.feed(h.command(tur, 0, itt=30))
    (resp, _), = h.pdus()
    assert resp.itt == 30 and resp.b3 == 0


def test_abort_task_outside_the_window_does_not_exist():
    """11.5.1 c): no such task and RefCmdSN outside [ExpCmdSN, MaxCmdSN]: Task does not
    exist, and ExpCmdSN does not move."""
    h = Harness()
    h.feed(h.command(bytes(6), 0, itt=5))  # CmdSN 1 done; ExpCmdSN 2
    h.pdus()
    h.feed(tmf(h, ABORT_TASK, ref_itt=4, ref_cmdsn=1))  # already below ExpCmdSN
    (resp, _), = h.pdus()
    assert resp.b2 == TmfResponse.TASK_DOES_NOT_EXIST
    h.feed(tmf(h, ABORT_TASK, ref_itt=4, ref_cmdsn=h.session.max_cmdsn + 1, itt=901))
    (resp, _), = h.pdus()
    assert resp.b2 == TmfResponse.TASK_DOES_NOT_EXIST
    assert h.session.exp_cmdsn == 2


def test_abort_task_of_a_held_command_aborts_it_and_the_hole_stays():
    """11.5.1 a): a task received but waiting behind a hole is aborted (Function Complete);
    the hole itself is not closed by that (its own CmdSN is still missing)."""
    h = Harness()
    tur = bytes(6)
    h.cmdsn += 1                                  # CmdSN 1 missing
    h.feed(h.command(tur, 0, itt=20))             # CmdSN 2, held
    h.feed(tmf(h, ABORT_TASK, ref_itt=20, ref_cmdsn=2))
    (resp, _), = h.pdus()
    assert resp.b2 == TmfResponse.COMPLETE
    h.feed(h.command(tur, 0, cmdsn=1, itt=10))
    assert [b.itt for b, _ in h.pdus()] == [10]   # 2 was aborted: no response for it
    assert h.session.exp_cmdsn == 3


@pytest.mark.parametrize("kind", ["WRITE", "READ"])
def test_held_command_aborted_by_another_nexus_with_tas_stays_aborted(kind):
    """SAM-5 5.6 / SPC-4 7.5.8 TAS=1: another I_T nexus's LOGICAL UNIT RESET aborts this
    nexus's tasks, each answered TASK ABORTED, among them one still held behind a CmdSN
    hole. When the hole closes later (11.5.1 b) it must not run: no R2T for a WRITE whose
    status went out (its Data-Out never comes, and on 180a2fc it then sat in the task set
    waiting for that data, holding back every overlapping task for good), no second
    status for a READ."""
    h = Harness()
    h.lu.mode.tas = True
    lost = h.cmdsn                                # CmdSN 1: never arrives
    h.cmdsn += 1
    if kind == "WRITE":
        h.feed(h.command(write10(8, 8), 8 * BS, write=True, itt=20))  # CmdSN 2, held
    else:
        h.feed(h.command(read10(8, 8), 8 * BS, read=True, itt=20))
    assert h.pdus() == []
    other = Nexus("iqn.2026-11.local.test:other,i,0x400000000002", h.conn.nexus.target_port)
    h.device.tmf.lu_reset(other, 0)               # the other session's reset, TAS=1
    (resp, _), = h.pdus()
    assert resp.opcode == Op.SCSI_RESPONSE and resp.itt == 20
    assert resp.b3 == 0x40                        # TASK ABORTED
    h.feed(tmf(h, ABORT_TASK, ref_itt=10, ref_cmdsn=lost))
    out = h.pdus()
    assert [b.opcode for b, _ in out] == [Op.TASK_MGMT_RESPONSE], \
        "the aborted command ran once its CmdSN hole closed"
    assert not h.conn.ready and not h.conn.data_ready
    assert h.session.exp_cmdsn == 3
    h.feed(h.command(read10(8, 8), 8 * BS, read=True, itt=30))
    assert [b.itt for b, _ in h.pdus()] == [30]


# --- RFC 7143 11.3.1 / 11.7.1: the F bit and unsolicited data -----------------------------

def test_initial_r2t_no_with_f_bit_solicits_all_the_data():
    """11.3.1: F=1 with no data segment: no unsolicited Data-Out follows although
    InitialR2T=No, so the target asks for every byte with R2Ts."""
    h = Harness(immediate_data=True, initial_r2t=False, first_burst_length=16384,
                max_burst_length=65536)
    payload = b"\x5a" * 8192
    h.feed(h.command(write10(0, 16), len(payload), write=True))  # F=1, no immediate data
    (r2t, _), = h.pdus()
    assert r2t.opcode == Op.R2T and (r2t.buffer_offset, r2t.desired_length) == (0, 8192)
    h.feed(h.data_out(1, r2t.ttt, 0, 0, payload))
    (resp, _), = h.pdus()
    assert resp.opcode == Op.SCSI_RESPONSE and resp.b3 == 0
    assert bytes(h.store.read(0, len(payload))) == payload


def test_immediate_data_with_f_bit_solicits_the_rest():
    """11.3.1: immediate data and F=1: only the rest, from the end of the immediate data,
    is solicited (no unsolicited Data-Out up to FirstBurstLength)."""
    h = Harness(immediate_data=True, initial_r2t=False, first_burst_length=16384,
                max_burst_length=65536)
    payload = bytes(range(256)) * 80  # 20 KiB
    h.feed(h.command(write10(0, 40), len(payload), write=True, data=payload[:1024]))
    (r2t, _), = h.pdus()
    assert r2t.opcode == Op.R2T
    assert (r2t.buffer_offset, r2t.desired_length) == (1024, len(payload) - 1024)
    h.feed(h.data_out(1, r2t.ttt, 0, 1024, payload[1024:]))
    (resp, _), = h.pdus()
    assert resp.b3 == 0 and bytes(h.store.read(0, len(payload))) == payload


def test_unsolicited_burst_ended_early_by_the_f_bit():
    """11.7.1: the last unsolicited Data-Out carries F=1; a burst that ends before
    FirstBurstLength is complete, and the rest is solicited from where it ended."""
    h = Harness(immediate_data=False, initial_r2t=False, first_burst_length=16384,
                max_burst_length=65536, max_outstanding_r2t=2)
    payload = bytes(range(256)) * 80
    hdr = pdu.scsi_command(flags=pdu.F_WRITE | 1, dsl=0, lun=pdu.ZERO_LUN, itt=1,
                           edtl=len(payload), cmdsn=h.cmdsn, exp_statsn=0,
                           cdb=write10(0, 40))  # F=0: unsolicited data follows
    h.cmdsn += 1
    h.feed(h.frame(hdr))
    (first_r2t, _), = h.pdus()
    assert (first_r2t.buffer_offset, first_r2t.desired_length) == (16384, len(payload) - 16384)
    h.feed(h.data_out(1, 0xFFFFFFFF, 0, 0, payload[:4096], final=True))
    (r2t, _), = h.pdus()
    assert r2t.opcode == Op.R2T and (r2t.buffer_offset, r2t.desired_length) == (4096, 16384 - 4096)
    h.feed(h.data_out(1, first_r2t.ttt, 0, 16384, payload[16384:]))
    assert h.pdus() == []
    h.feed(h.data_out(1, r2t.ttt, 0, 4096, payload[4096:16384]))
    (resp, _), = h.pdus()
    assert resp.opcode == Op.SCSI_RESPONSE and resp.b3 == 0
    assert bytes(h.store.read(0, len(payload))) == payload


# --- RFC 7143 11.4.5.1: residual of a write without the W bit ----------------------------

def test_write6_of_256_blocks_without_the_w_bit_reports_the_overflow():
    """WRITE(6) with TRANSFER LENGTH 0 asks for 256 blocks (SBC-4 5.42); with neither R nor
    W and EDTL 0 the initiator sends none of them: GOOD with residual overflow of all the
    bytes the CDB called for, and nothing is written."""
    h = disk(MemoryStore(16 << 20))
    h.store.write(0, b"\x77" * (256 * BS))
    cdb = bytes([0x0A, 0, 0, 0, 0, 0])
    h.feed(h.command(cdb, 0))
    (resp, _), = h.pdus()
    assert resp.opcode == Op.SCSI_RESPONSE and resp.b3 == 0
    assert resp.flags & pdu.F_OVERFLOW and resp.residual_count == 256 * BS
    assert bytes(h.store.read(0, 256 * BS)) == b"\x77" * (256 * BS)



def test_data_out_after_all_of_a_commands_data_leaves_the_command_alone():
    """A Data-Out for a command whose data is complete (it is with the SCSI layer, its
    buffer perhaps being written to the store) is Rejected (11.17) and its data dropped:
    the command and what it writes are unchanged, and the session goes on."""
    h = Harness(immediate_data=True, initial_r2t=True)
    # Received but not executed (the harness's run() is not called): a running command.
    h.conn.receive_data(h.command(write10(8, 1), 512, write=True, data=b"b" * 512, itt=77))
    task = h.conn.ready.popleft()  # all of its data is in
    h.conn.receive_data(h.data_out(77, 0xFFFFFFFF, 0, 0, b"X" * 512))
    (rej, data), = h.pdus()
    assert rej.opcode == Op.REJECT and rej.b2 == pdu.RejectReason.PROTOCOL_ERROR
    assert bytes(task.data_out) == b"b" * 512
    h.device.execute(task)
    h.conn.complete(task)
    (resp, _), = h.pdus()
    assert resp.itt == 77 and resp.b3 == 0 and not h.conn.want_close
    assert bytes(h.store.read(8 * BS, BS)) == b"b" * 512


def test_empty_data_out_with_an_unknown_transfer_tag_is_rejected():
    """11.7 / 11.17: a Data-Out without data is checked like any other: an unknown Target
    Transfer Tag is Rejected and ends its command with ABORTED COMMAND 4Bh/01h (11.4.7.2),
    and the connection goes on."""
    h = Harness(immediate_data=False, initial_r2t=True)
    h.feed(h.command(write10(0, 1), 512, write=True))
    (r2t, _), = h.pdus()
    h.feed(h.data_out(1, r2t.ttt + 1000, 0, 0, b""))
    (rej, _), (resp, sense) = h.pdus()
    assert rej.opcode == Op.REJECT and rej.b2 == pdu.RejectReason.INVALID_PDU_FIELD
    assert resp.opcode == Op.SCSI_RESPONSE and resp.b3 == 0x02
    assert sense[2 + 2] & 0x0F == 0x0B and (sense[2 + 12], sense[2 + 13]) == (0x4B, 0x01)
    assert not h.conn.want_close
