"""Medium access off the event loop (target.shell.dispatch, LogicalUnit.io): the ordering rules
hold against tasks whose store calls are still running on a worker thread.

The real Connection, Dispatcher, task set and SBC handlers run in-process; the loop and
the worker threads are test doubles (tests/unit/shell_util.py) so that the test decides
when each medium access runs and when its completion reaches the loop. What is asserted
is the standard's: SPC-4 7.5.8 (QUEUE ALGORITHM MODIFIER 0h: overlapping tasks keep their
order), SAM-5 8.6 (ORDERED, HEAD OF QUEUE), SBC-4 5.3 (COMPARE AND WRITE is atomic
against every other command), SAM-5 7.2 / RFC 7143 11.5.1 (an aborted task's status is
not sent), SPC-4 5.13 (one PERSISTENT RESERVE OUT at a time).
"""

from __future__ import annotations

import struct

import pytest

from target.backing.base import StoreError
from target.backing.memory import MemoryStore
from target.faults import Faults, parse_rule
from target.scsi.disk import make_disk
from tests.unit.shell_util import Shell

pytestmark = pytest.mark.unit

BS = 512
GOOD, CHECK_CONDITION = 0x00, 0x02
ORDERED, HEAD_OF_QUEUE = 2, 3


def read10(lba: int, n: int) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, n, 0)


def write10(lba: int, n: int, fua: bool = False) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0x08 if fua else 0, lba, 0, n, 0)


def caw(lba: int, n: int) -> bytes:
    return struct.pack(">BBQxxxBxx", 0x89, 0, lba, n)


def block(byte: int, n: int = 1) -> bytes:
    return bytes([byte]) * (BS * n)


@pytest.fixture
def shell():
    lu = make_disk(0, MemoryStore(8 << 20))
    return Shell([lu])


def test_a_read_waits_for_an_overlapping_write_still_on_its_worker(shell):
    """QAM=0: the WRITE's store call has not run yet; the READ of the same block that
    arrives after it must not run before it, and then returns the WRITE's data."""
    s = shell.initiator(1)
    w = s.send(write10(10, 1), data=block(0xAA))
    assert len(shell.workers.jobs) == 1 and s.responses() == {}
    r = s.send(read10(10, 1), read=BS)
    assert len(shell.workers.jobs) == 1, "the READ started beside an overlapping WRITE"
    shell.workers.run(0)
    shell.loop.run()
    assert s.responses() == {w: (GOOD, b"", b"")}
    assert len(shell.workers.jobs) == 1  # now the READ's access
    shell.workers.run_all(shell.loop)
    assert s.responses() == {r: (GOOD, block(0xAA), b"")}


def test_tasks_on_other_blocks_run_side_by_side(shell):
    s = shell.initiator(1)
    s.send(write10(0, 1), data=block(1))
    s.send(read10(100, 1), read=BS)
    s.send(write10(200, 1), data=block(2))
    assert len(shell.workers.jobs) == 3
    lu = next(iter(shell.device.luns.values()))
    assert lu.taskset.running == 3
    shell.workers.run(2)
    shell.workers.run(0)
    shell.workers.run(0)
    shell.loop.run()
    assert [r[0] for r in s.responses().values()] == [GOOD] * 3
    assert len(lu.taskset) == 0 and lu.io_stats.in_flight == 0


def test_another_session_is_ordered_against_the_running_write(shell):
    """The task set is the LU's, shared by every I_T nexus: another session's READ waits
    for the overlapping WRITE in flight too (QAM=0 keeps data integrity for every nexus)."""
    a, b = shell.initiator(1), shell.initiator(2)
    a.send(write10(5, 4), data=block(0x5A, 4))
    r = b.send(read10(7, 1), read=BS)
    assert len(shell.workers.jobs) == 1
    shell.workers.run_all(shell.loop)
    assert b.responses()[r] == (GOOD, block(0x5A), b"")


def test_head_of_queue_waits_for_a_running_write_and_passes_a_queued_one(shell):
    """SAM-5 8.6.4: a HEAD OF QUEUE task goes before the tasks that have not started, but a
    running one cannot be called back: a HEAD OF QUEUE READ never runs beside an overlapping
    WRITE's access, and a WRITE still waiting in the set is held until the READ is done."""
    s = shell.initiator(1)
    shell.device.luns[0].store.write(0, block(0x11, 2))
    s.send(write10(0, 1), data=block(0x22))       # running: its access is on a worker
    s.send(read10(50, 1), read=BS)                # running, elsewhere
    s.send(write10(1, 1), data=block(0x33))       # waits? no overlap with 0: runs
    assert len(shell.workers.jobs) == 3
    queued = s.send(write10(0, 2), data=block(0x44, 2))  # overlaps the running WRITE: waits
    assert len(shell.workers.jobs) == 3
    hoq = s.send(read10(0, 2), read=2 * BS, attr=HEAD_OF_QUEUE)
    assert len(shell.workers.jobs) == 3, "HEAD OF QUEUE ran beside a running overlapping WRITE"
    shell.workers.run(0)  # the first WRITE of block 0
    shell.loop.run()
    shell.workers.run(1)  # the WRITE of block 1
    shell.loop.run()
    assert len(shell.workers.jobs) == 2  # the READ at 50, and now the HEAD OF QUEUE READ
    shell.workers.run(1)
    shell.loop.run()
    done = s.responses()
    assert done[hoq] == (GOOD, block(0x22) + block(0x33), b"")  # before the queued WRITE
    assert queued not in done
    shell.workers.run_all(shell.loop)
    assert s.responses()[queued][0] == GOOD
    assert bytes(shell.device.luns[0].store.read(0, 2 * BS)) == block(0x44, 2)


def test_ordered_task_waits_for_every_older_one_in_flight(shell):
    s = shell.initiator(1)
    s.send(write10(0, 1), data=block(1))
    s.send(read10(100, 1), read=BS)
    o = s.send(read10(300, 1), read=BS, attr=ORDERED)
    later = s.send(read10(400, 1), read=BS)
    assert len(shell.workers.jobs) == 2
    shell.workers.run_all(shell.loop)
    done = s.responses()
    assert set(done) == {1, 2, o, later}
    order = list(done)
    assert order.index(o) < order.index(later)


def test_compare_and_write_is_atomic_under_qam_1(shell):
    """SBC-4 5.3: with QAM=1 the task set may reorder SIMPLE tasks, but never lets a WRITE
    of the same blocks run beside a COMPARE AND WRITE whose access is in flight."""
    lu = shell.device.luns[0]
    lu.mode.qam = 1
    s = shell.initiator(1)
    lu.store.write(8 * BS, block(0x10, 2))
    c = s.send(caw(8, 2), data=block(0x10, 2) + block(0x20, 2))
    w = s.send(write10(9, 1), data=block(0x30))
    assert len(shell.workers.jobs) == 1
    shell.workers.run_all(shell.loop)
    done = s.responses()
    assert done[c][0] == GOOD and done[w][0] == GOOD
    assert bytes(lu.store.read(8 * BS, 2 * BS)) == block(0x20) + block(0x30)


def test_abort_of_a_running_write_sends_no_status_and_keeps_its_slot(shell):
    """RFC 7143 11.5.1 / SAM-5 7.2: ABORT TASK of a task whose store call is running is
    Function Complete and the task's status is never sent; until its access ends, a later
    overlapping task still waits for it (it may still reach the medium)."""
    s = shell.initiator(1)
    w = s.send(write10(20, 1), data=block(0x77))
    s.tmf(1, ref_itt=w)
    (tmf_itt, (response, _, _)), = s.responses().items()
    assert response == 0  # Function complete
    r = s.send(read10(20, 1), read=BS)
    assert len(shell.workers.jobs) == 1
    shell.workers.run_all(shell.loop)
    done = s.responses()
    assert w not in done and done[r][0] == GOOD
    assert len(shell.device.luns[0].taskset) == 0


def test_connection_lost_while_the_access_runs(shell):
    s = shell.initiator(1)
    s.send(write10(30, 1), data=block(0x66))
    s.link.close()
    shell.workers.run_all(shell.loop)
    lu = shell.device.luns[0]
    assert len(lu.taskset) == 0 and lu.io_stats.in_flight == 0
    assert bytes(lu.store.read(30 * BS, BS)) == block(0x66)  # it had all its data


class FailingStore(MemoryStore):
    def write(self, offset, data):
        raise StoreError("the medium is gone")


def test_store_error_on_a_worker_becomes_medium_error():
    """SBC-4 4.18 / the store's rule: an I/O error is MEDIUM ERROR, WRITE ERROR (0Ch/00h)
    with the LBA in INFORMATION, also when it happens on a worker thread."""
    shell = Shell([make_disk(0, FailingStore(1 << 20))])
    s = shell.initiator(1)
    w = s.send(write10(7, 1), data=block(1))
    shell.workers.run_all(shell.loop)
    status, _, sense = s.responses()[w]
    assert status == CHECK_CONDITION
    assert (sense[2] & 0x0F, sense[12], sense[13]) == (0x03, 0x0C, 0x00)
    assert sense[0] & 0x80 and struct.unpack_from(">I", sense, 3)[0] == 7


def test_inline_lu_runs_its_access_at_once():
    shell = Shell([make_disk(0, MemoryStore(1 << 20))], inline_luns=(0,))
    s = shell.initiator(1)
    w = s.send(write10(0, 1), data=block(3))
    assert shell.workers.jobs == [] and s.responses()[w][0] == GOOD


def test_idle_fast_path_counts_each_task_once_and_a_busy_set_queues():
    """The task set's idle fast path (taskset.py's rules): on an idle LU each task runs at
    once, outside the set, counted once as direct; one that arrives while another's
    access runs on a worker (adopted into the set) is queued, and both complete."""
    shell = Shell([make_disk(0, MemoryStore(1 << 20))], inline_luns=(0,))
    lu = next(iter(shell.dispatchers))
    s = shell.initiator(1)
    for i in range(3):
        itt = s.send(write10(i, 1), data=block(i))
        assert s.responses()[itt][0] == GOOD
    assert (lu.taskset.stats.direct, lu.taskset.stats.submitted) == (3, 0)
    lu = make_disk(0, MemoryStore(1 << 20))
    shell = Shell([lu])
    s = shell.initiator(1)
    w = s.send(write10(0, 1), data=block(7))  # direct, then adopted: its access on a worker
    r = s.send(read10(8, 1), read=BS)
    assert (lu.taskset.stats.direct, lu.taskset.stats.submitted) == (1, 1)
    shell.workers.run_all(shell.loop)
    assert s.responses() == {w: (GOOD, b"", b""), r: (GOOD, bytes(BS), b"")}


def test_medium_delay_fault_moves_an_inline_lus_access_to_a_worker():
    """target.faults medium-delay: the access takes longer, on a worker thread even for a
    store that is otherwise served on the loop; its result is unchanged."""
    lu = make_disk(0, MemoryStore(1 << 20))
    shell = Shell([lu], inline_luns=(0,))
    d = shell.dispatchers[lu]
    d.faults = Faults([parse_rule({"action": "medium-delay", "op": "WRITE(10)",
                                   "delay_ms": 1})])
    d._executor = shell.workers
    s = shell.initiator(1)
    w = s.send(write10(0, 1), data=block(9))
    assert len(shell.workers.jobs) == 1 and s.responses() == {}
    shell.workers.run_all(shell.loop)
    assert s.responses()[w][0] == GOOD and bytes(lu.store.read(0, BS)) == block(9)
    r = s.send(read10(0, 1), read=BS)  # not matched: inline again
    assert shell.workers.jobs == [] and s.responses()[r] == (GOOD, block(9), b"")


def prout_register(key: int, aptpl: bool = True) -> tuple[bytes, bytes]:
    """PERSISTENT RESERVE OUT, REGISTER (SPC-4 6.16): (CDB, parameter list)."""
    params = struct.pack(">QQIBBH", 0, key, 0, 0x01 if aptpl else 0, 0, 0)
    return struct.pack(">BBBBBIB", 0x5F, 0, 0, 0, 0, 24, 0), params


def test_persistent_reserve_out_writes_its_state_on_a_worker_one_at_a_time(tmp_path):
    """SPC-4 5.13.5.1 (APTPL): the state file is written before the command's status, on a
    worker thread; a second PERSISTENT RESERVE OUT (from another nexus) starts only once
    the first has committed, so each transaction starts from a committed state."""
    from target.backing.file import FileStore

    image = tmp_path / "lun.img"
    lu = make_disk(0, FileStore(image, size=1 << 20, create=True))
    shell = Shell([lu])
    a, b = shell.initiator(1), shell.initiator(2)
    cdb, params = prout_register(0xA1)
    ra = a.send(cdb, data=params)
    cdb, params = prout_register(0xB2)
    rb = b.send(cdb, data=params)
    assert len(shell.workers.jobs) == 1, "two PERSISTENT RESERVE OUT transactions at once"
    assert a.responses() == {} and not (tmp_path / "lun.img.pr").exists()
    shell.workers.run(0)
    shell.loop.run()
    assert a.responses()[ra][0] == GOOD and (tmp_path / "lun.img.pr").exists()
    assert len(shell.workers.jobs) == 1  # now the second one's write
    shell.workers.run_all(shell.loop)
    assert b.responses()[rb][0] == GOOD
    state = (tmp_path / "lun.img.pr").read_text()
    assert "0x00000000000000a1" in state and "0x00000000000000b2" in state
    lu.close()


def test_state_file_write_failing_on_a_worker_rolls_back(tmp_path, monkeypatch):
    """The write fails on the worker: HARDWARE ERROR, INTERNAL TARGET FAILURE (44h/00h)
    and nothing of the command remains (reservations.py)."""
    from target.backing import sidecar
    from target.backing.file import FileStore

    lu = make_disk(0, FileStore(tmp_path / "lun.img", size=1 << 20, create=True))
    shell = Shell([lu])
    a = shell.initiator(1)

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sidecar.os, "replace", fail)
    cdb, params = prout_register(0xA1)
    r = a.send(cdb, data=params)
    shell.workers.run_all(shell.loop)
    status, _, sense = a.responses()[r]
    assert status == CHECK_CONDITION and (sense[2] & 0x0F, sense[12]) == (0x04, 0x44)
    assert lu.reservations.registrations == {} and lu.reservations.generation == 0
    lu.close()


def test_sanitize_steps_run_on_workers_while_the_loop_answers():
    """SBC-4 4.11: while a sanitize runs (its steps' store calls on workers), other
    commands get NOT READY, SANITIZE IN PROGRESS (04h/1Bh); the IMMED=0 SANITIZE completes
    with GOOD when the last step has run."""
    lu = make_disk(0, MemoryStore(20 << 20), thin=True)
    shell = Shell([lu])
    s = shell.initiator(1)
    san = s.send(struct.pack(">BB5xHB", 0x48, 0x02, 0, 0))  # BLOCK ERASE, IMMED=0
    shell.loop.run()
    assert len(shell.workers.jobs) == 1 and s.responses() == {}
    t = s.send(bytes(6))  # TEST UNIT READY meanwhile
    status, _, sense = s.responses()[t]
    assert status == CHECK_CONDITION and (sense[2] & 0x0F, sense[12], sense[13]) == (2, 4, 0x1B)
    steps = 0
    while shell.workers.jobs:
        shell.workers.run(0)
        shell.loop.run()
        steps += 1
    assert steps == 3  # 20 MiB in steps of 8 MiB
    assert s.responses()[san][0] == GOOD


def test_extended_copy_moves_its_data_on_a_worker():
    """SPC-4 6.4: the copy's segments are checked when the command is processed and its
    data moves as the medium access (here on a worker); COPY STATUS answers meanwhile
    (IN PROGRESS) and afterwards (COMPLETED, SPC-4 6.27), and a segment that fails its
    check ends the copy with COPY ABORTED after the segments before it are copied."""
    from tests.unit.test_xcopy import b2b, e4, params, rcr_cdb, xcopy_cdb

    src, dst = make_disk(0, MemoryStore(1 << 20)), make_disk(1, MemoryStore(1 << 20))
    shell = Shell([src, dst])
    s = shell.initiator(1)
    src.store.write(0, block(0x3C, 8))
    plist = params([e4(src), e4(dst)], [b2b(0, 1, 8, 0, 16), b2b(0, 1, 8, 1 << 30, 0)])
    x = s.send(xcopy_cdb(len(plist)), data=plist)
    assert len(shell.workers.jobs) == 1
    st = s.send(rcr_cdb(0x00), read=1024)  # COPY STATUS
    assert s.responses()[st][1][4] & 0x7F == 0x00  # IN PROGRESS
    shell.workers.run_all(shell.loop)
    status, _, sense = s.responses()[x]
    assert status == CHECK_CONDITION and sense[2] & 0x0F == 0x0A  # COPY ABORTED
    assert struct.unpack_from(">I", sense, 8)[0] == 1  # the second segment failed
    assert bytes(dst.store.read(16 * BS, 8 * BS)) == block(0x3C, 8)  # the first is copied
    st = s.send(rcr_cdb(0x00), read=1024)
    assert s.responses()[st][1][4] & 0x7F == 0x02  # FAILED


def test_a_write_waiting_for_its_r2t_data_holds_its_place_in_the_task_set(shell):
    """RFC 7143 3.2.2.1: commands are delivered for execution in CmdSN order, so a WRITE
    whose Data-Out is still to come (ImmediateData=No: the target asks with an R2T) is in
    the task set before the READ of the same block sent after it; the READ waits for the
    WRITE's data and returns it (QAM=0; it failed on 180a2fc: the READ overtook it)."""
    s = shell.initiator(1, immediate_data=False)
    w = s.send(write10(40, 1), data=block(0x9A))
    r = s.send(read10(40, 1), read=BS)
    ordered = s.send(read10(100, 1), read=BS, attr=ORDERED)
    shell.workers.run_all(shell.loop)
    assert s.responses() == {}  # only the R2T went out: nothing may run before the WRITE
    assert len(s.r2ts) == 1
    s.link.feed(s.r2ts.pop())
    shell.workers.run_all(shell.loop)
    done = s.responses()
    assert done[w][0] == GOOD and done[r] == (GOOD, block(0x9A), b"")
    assert list(done) == [w, r, ordered]


def test_tasks_waiting_for_a_dropped_connections_task_start_when_it_goes():
    """A WRITE waiting for its R2T data holds back an overlapping READ of another session;
    when the WRITE's connection is lost (its task aborted, SAM-5 6.3.3 I_T nexus loss),
    the READ runs without waiting for any other event."""
    shell = Shell([make_disk(0, MemoryStore(1 << 20))])
    a, b = shell.initiator(1, immediate_data=False), shell.initiator(2)
    a.send(write10(60, 1), data=block(0x51))
    r = b.send(read10(60, 1), read=BS)
    shell.workers.run_all(shell.loop)
    assert b.responses() == {}
    a.link.close()
    shell.loop.run()
    shell.workers.run_all(shell.loop)
    assert b.responses()[r] == (GOOD, block(0), b"")
    assert len(shell.device.luns[0].taskset) == 0
