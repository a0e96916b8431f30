"""The task manager (target.scsi.tmf) on its own: the outcome of each call, against the
clauses that say which tasks each function aborts and how each ends.

- SAM-5 7.2-7.8 (ABORT TASK, ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET, I_T NEXUS
  RESET) and RFC 7143 11.5.1 (TARGET WARM RESET, TARGET COLD RESET): which tasks.
- SAM-5 5.6 and SPC-4 7.5.8 (control mode page TAS): a task of another I_T nexus ends in
  TASK ABORTED (40h) with TAS=1; with TAS=0 it goes unanswered, and CLEAR TASK SET gives
  that nexus COMMANDS CLEARED BY ANOTHER INITIATOR (2Fh/00h); the issuing nexus's tasks
  always go unanswered.
- SAM-5 6.3 / 5.14 (unit attentions after resets): 29h/03h after LOGICAL UNIT RESET and
  TARGET WARM RESET, 29h/01h POWER ON OCCURRED after TARGET COLD RESET, to every nexus.
- SPC-4 5.13.11.2.4 / 6.16: PREEMPT AND ABORT aborts the preempted nexuses' tasks on the
  LU (but the PERSISTENT RESERVE OUT itself), as another initiator's CLEAR TASK SET would.
The owners here are plain test doubles (no iSCSI), and the LUs and task sets are real, so
that a task taken out of a task set is checked in the task set itself.
"""

from __future__ import annotations

import struct

import pytest

from target.backing.memory import MemoryStore
from target.scsi.device import ScsiDevice
from target.scsi.disk import DISK_COMMANDS
from target.scsi.lu import LogicalUnit
from target.scsi.sense import (
    BUS_DEVICE_RESET_FUNCTION_OCCURRED,
    COMMANDS_CLEARED_BY_ANOTHER_INITIATOR,
    POWER_ON_OCCURRED,
    POWER_ON_RESET_OR_BUS_DEVICE_RESET_OCCURRED,
)
from target.scsi.task import Nexus, ScsiTask, Status
from target.scsi.tmf import (
    Disposition,
    Function,
    ServiceResponse,
    TmfEvent,
    UnitAttentionSet,
)

pytestmark = pytest.mark.unit

TARGET = "iqn.2026-12.local.test:t,t,0x0001"
A = Nexus("iqn.2026-12.local.test:a,i,0x400000000001", TARGET)
B = Nexus("iqn.2026-12.local.test:b,i,0x400000000002", TARGET)
C = Nexus("iqn.2026-12.local.test:c,i,0x400000000003", TARGET)


def read10(lba: int) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, 8, 0)


class Owner:
    """The transport side of one nexus: its tasks, and the events it was sent."""

    def __init__(self, nexus: Nexus) -> None:
        self.nexus = nexus
        self.held: list[ScsiTask] = []
        self.events: list[TmfEvent] = []

    def tasks(self, lun: int | None) -> list[ScsiTask]:
        return [t for t in self.held if lun is None or t.lun == lun]

    def task_management_event(self, event: TmfEvent) -> None:
        self.events.append(event)
        gone = {id(a.task) for a in event.aborted}
        self.held = [t for t in self.held if id(t) not in gone]


class Rig:
    def __init__(self, tas: bool = False) -> None:
        self.lus = [LogicalUnit(n, MemoryStore(1 << 20), DISK_COMMANDS) for n in (0, 1)]
        self.device = ScsiDevice("iqn.2026-12.local.test:t", self.lus)
        self.owners = {n: Owner(n) for n in (A, B, C)}
        for o in self.owners.values():
            self.device.tmf.attach(o)
        for lu in self.lus:
            lu.mode.tas = tas
            for n in (A, B, C):
                lu.ua.pop(n)  # known to the LU, nothing pending

    def queued(self, nexus: Nexus, lun: int, tag: int) -> ScsiTask:
        """A task in its LU's task set (waiting for its Data-Out, so it stays there)."""
        task = ScsiTask(nexus, lun, read10(tag), tag)
        assert self.lus[lun].taskset.submit(task, data_ready=False)
        self.owners[nexus].held.append(task)
        return task

    def held(self, nexus: Nexus, lun: int, tag: int) -> ScsiTask:
        """A task its transport holds that the task set has not seen (behind a CmdSN hole)."""
        task = ScsiTask(nexus, lun, read10(tag), tag)
        self.owners[nexus].held.append(task)
        return task

    def ua(self, nexus: Nexus, lun: int = 0):
        return self.lus[lun].ua.peek(nexus)


def ends(outcome) -> dict[int, Disposition]:
    return {a.task.tag: a.disposition for a in outcome.aborted}


def test_abort_task_drops_the_one_task_of_the_issuer():
    """SAM-5 7.2: only the task named is aborted; the issuer's own task gets no status."""
    r = Rig(tas=True)
    t1, t2 = r.queued(A, 0, 1), r.queued(A, 0, 2)
    out = r.device.tmf.abort_task(A, t1)
    assert out.function is Function.ABORT_TASK
    assert out.response is ServiceResponse.FUNCTION_COMPLETE
    assert ends(out) == {1: Disposition.DROPPED}
    assert t1 not in r.lus[0].taskset and t2 in r.lus[0].taskset
    assert t1.status == Status.GOOD and out.unit_attentions == []
    (ev,), = [r.owners[A].events]
    assert ev.issuer and ev.taskset_changed and [a.task for a in ev.aborted] == [t1]
    assert r.owners[B].events == []


def test_abort_task_set_is_the_issuers_tasks_on_that_lu_only():
    """SAM-5 7.3: the tasks of the I_T_L nexus; no other nexus, no other LU; no UA."""
    r = Rig(tas=True)
    r.queued(A, 0, 1), r.held(A, 0, 2), r.queued(A, 1, 3), r.queued(B, 0, 4)
    out = r.device.tmf.abort_task_set(A, 0)
    assert ends(out) == {1: Disposition.DROPPED, 2: Disposition.DROPPED}
    assert out.unit_attentions == [] and r.owners[B].events == []
    assert [t.tag for t in r.owners[A].held] == [3]
    assert r.ua(B) is None


@pytest.mark.parametrize("call", ["abort_task_set", "clear_task_set", "lu_reset"])
def test_a_lun_without_a_logical_unit(call):
    """SAM-5 7.1: INCORRECT LOGICAL UNIT NUMBER, and nothing is aborted."""
    r = Rig()
    r.queued(A, 0, 1)
    out = getattr(r.device.tmf, call)(A, 7)
    assert out.response is ServiceResponse.INCORRECT_LOGICAL_UNIT_NUMBER
    assert out.aborted == [] and r.owners[A].events == []


def test_clear_task_set_tas0_other_nexus_unanswered_with_commands_cleared():
    """SAM-5 7.4, 5.6 with TAS=0: every task on the LU goes unanswered; the other nexus
    that lost tasks gets 2Fh/00h, the issuer and a nexus that lost none get nothing."""
    r = Rig(tas=False)
    r.queued(A, 0, 1), r.queued(B, 0, 2), r.held(B, 0, 3), r.queued(C, 1, 4)
    out = r.device.tmf.clear_task_set(A, 0)
    assert ends(out) == {1: Disposition.DROPPED, 2: Disposition.DROPPED,
                         3: Disposition.DROPPED}
    assert out.unit_attentions == [UnitAttentionSet(0, COMMANDS_CLEARED_BY_ANOTHER_INITIATOR,
                                                    B)]
    assert r.ua(B) == COMMANDS_CLEARED_BY_ANOTHER_INITIATOR
    assert r.ua(A) is None and r.ua(C) is None and r.ua(B, 1) is None
    assert len(r.lus[0].taskset) == 0 and len(r.lus[1].taskset) == 1
    (ev,), = [r.owners[B].events]
    assert not ev.issuer and ev.taskset_changed and len(ev.aborted) == 2


def test_clear_task_set_tas1_other_nexus_task_aborted():
    """SAM-5 5.6, SPC-4 7.5.8 TAS=1: the other nexus's tasks end TASK ABORTED (and get no
    UA); the issuer's own are still unanswered."""
    r = Rig(tas=True)
    mine, theirs = r.queued(A, 0, 1), r.held(B, 0, 2)
    out = r.device.tmf.clear_task_set(A, 0)
    assert ends(out) == {1: Disposition.DROPPED, 2: Disposition.TASK_ABORTED}
    assert theirs.status == Status.TASK_ABORTED and mine.status == Status.GOOD
    assert out.unit_attentions == [] and r.ua(B) is None
    (ev,), = [r.owners[B].events]
    assert not ev.taskset_changed  # its task was held, never in the task set


@pytest.mark.parametrize("tas", [False, True])
def test_lu_reset(tas):
    """SAM-5 7.7: every task on the LU (TAS as in CLEAR TASK SET, but no 2Fh/00h: the reset's
    own 29h/03h goes to every nexus, the issuer's too); the other LU is untouched."""
    r = Rig(tas=tas)
    r.queued(A, 0, 1), r.queued(B, 0, 2), r.queued(B, 1, 3)
    out = r.device.tmf.lu_reset(A, 0)
    other = Disposition.TASK_ABORTED if tas else Disposition.DROPPED
    assert ends(out) == {1: Disposition.DROPPED, 2: other}
    assert out.unit_attentions == [UnitAttentionSet(0, BUS_DEVICE_RESET_FUNCTION_OCCURRED,
                                                    None)]
    for n in (A, B, C):
        assert r.ua(n) == BUS_DEVICE_RESET_FUNCTION_OCCURRED
        assert r.ua(n, 1) is None
    assert len(r.lus[1].taskset) == 1


@pytest.mark.parametrize("cold", [False, True])
def test_target_resets(cold):
    """RFC 7143 11.5.1: every task on every LU; each LU resets: 29h/03h (warm) or 29h/01h
    POWER ON OCCURRED (cold) to every nexus. Cold: every other nexus ends, one without a
    task too; the issuer closes after its response, so its event does not say so."""
    r = Rig(tas=True)
    r.queued(A, 0, 1), r.queued(B, 1, 2)
    tmf = r.device.tmf
    out = tmf.target_cold_reset(A) if cold else tmf.target_warm_reset(A)
    code = POWER_ON_OCCURRED if cold else BUS_DEVICE_RESET_FUNCTION_OCCURRED
    assert out.function is (Function.TARGET_COLD_RESET if cold else Function.TARGET_WARM_RESET)
    assert ends(out) == {1: Disposition.DROPPED, 2: Disposition.TASK_ABORTED}
    assert out.unit_attentions == [UnitAttentionSet(0, code, None),
                                   UnitAttentionSet(1, code, None)]
    assert all(r.ua(n, lun) == code for n in (A, B, C) for lun in (0, 1))
    assert [e.cold_reset for e in r.owners[A].events] == [False]
    assert [e.cold_reset for e in r.owners[B].events] == [cold]
    assert [e.cold_reset for e in r.owners[C].events] == ([True] if cold else [])


def test_i_t_nexus_reset_drops_the_nexus_tasks_and_loses_the_nexus():
    """SAM-5 7.8 / 6.3.3: the nexus's tasks on every LU are aborted, the others' are not,
    and the nexus is lost: its next command starts afresh with 29h/00h."""
    r = Rig(tas=True)
    r.queued(A, 0, 1), r.queued(A, 1, 2), r.queued(B, 0, 3)
    out = r.device.tmf.i_t_nexus_reset(A)
    assert ends(out) == {1: Disposition.DROPPED, 2: Disposition.DROPPED}
    assert r.owners[B].events == [] and len(r.lus[0].taskset) == 1
    assert r.ua(A) == POWER_ON_RESET_OR_BUS_DEVICE_RESET_OCCURRED and r.ua(B) is None


@pytest.mark.parametrize("tas", [False, True])
def test_preempt_and_abort(tas):
    """SPC-4 5.13.11.2.4: the preempted nexuses' tasks on the LU are aborted as by another
    initiator's CLEAR TASK SET (TASK ABORTED, or 2Fh/00h with TAS=0), but not the PREEMPT
    AND ABORT command itself, nor a task of a nexus not preempted or on another LU."""
    r = Rig(tas=tas)
    pr_out = r.queued(A, 0, 1)
    r.queued(B, 0, 2), r.held(B, 0, 3), r.queued(B, 1, 4), r.queued(C, 0, 5)
    out = r.device.tmf.preempt_and_abort(0, [B], spare=pr_out)
    how = Disposition.TASK_ABORTED if tas else Disposition.DROPPED
    assert ends(out) == {2: how, 3: how}
    assert pr_out in r.lus[0].taskset and r.owners[A].events == []
    assert r.owners[C].events == []
    assert r.ua(B) == (None if tas else COMMANDS_CLEARED_BY_ANOTHER_INITIATOR)
    assert r.ua(C) is None and r.ua(B, 1) is None


def test_a_running_task_is_marked_and_its_completion_dropped():
    """SAM-5 5.6: a task already started is aborted too; the task set keeps its slot until
    it ends, and done() says its completion must not be reported."""
    r = Rig(tas=False)
    ts = r.lus[0].taskset
    task = r.queued(B, 0, 1)
    ts.data_ready(task)
    assert ts.dispatch() is task
    out = r.device.tmf.clear_task_set(A, 0)
    assert ends(out) == {1: Disposition.DROPPED}
    assert ts.running == 1 and ts.aborted(task)
    assert ts.done(task) is True and ts.running == 0


def test_release_and_detach():
    """release(): a task its transport ended leaves the task set (True when it was there);
    a detached owner is no longer asked for its tasks."""
    r = Rig()
    task = r.queued(A, 0, 1)
    assert r.device.tmf.release(task) is True and task not in r.lus[0].taskset
    assert r.device.tmf.release(task) is False
    r.owners[A].held.remove(task)  # its transport forgot it
    r.queued(B, 0, 2)
    r.device.tmf.detach(r.owners[B])
    assert r.device.tmf.clear_task_set(A, 0).aborted == []


def test_through_two_connections_another_sessions_lu_reset_reaches_a_held_command():
    """The same through two iSCSI connections (tests.unit.shell_util: the real Connection,
    Dispatcher and TaskSet): session b's LOGICAL UNIT RESET (RFC 7143 11.5.1) reaches
    session a's READ still held behind a CmdSN hole, through a's subscription to the task
    manager: with TAS=1 it is answered TASK ABORTED (SAM-5 5.6) and b's TMF with Function
    complete; both nexuses then see 29h/03h (SAM-5 6.3)."""
    from tests.unit.shell_util import Shell

    lu = LogicalUnit(0, MemoryStore(1 << 20), DISK_COMMANDS)
    lu.mode.tas = True
    shell = Shell([lu], inline_luns=(0,))
    a, b = shell.initiator(1), shell.initiator(2)
    a.cmdsn += 1                                  # CmdSN 1 never arrives
    held = a.send(read10(0), read=4096)
    assert a.responses() == {}
    b.tmf(5)                                      # LOGICAL UNIT RESET
    assert list(b.responses().values()) == [(0, b"", b"")]
    assert a.responses() == {held: (Status.TASK_ABORTED, b"", b"")}
    assert lu.ua.peek(a.conn.nexus) == BUS_DEVICE_RESET_FUNCTION_OCCURRED
    assert lu.ua.peek(b.conn.nexus) == BUS_DEVICE_RESET_FUNCTION_OCCURRED
