"""The task manager of one SCSI target device (SAM-5 7): each task management function is
one call, and its outcome says what happened to each task and which unit attentions it set.

Rules:
- Sans-IO and owned by the SCSI side: one TaskManager per ScsiDevice (device.tmf), not per
  LU, because the target resets and I_T NEXUS RESET span every LU of the target, and an
  I_T nexus subscribes once for all of them. LIO keeps this in target_core_tmr.c and tgt in
  usr/target.c (target_mgmt_request): the fabric maps its PDUs to these calls.
- Each I_T nexus has one owner (the transport connection that carries it) which attach()es
  itself. The owner knows its tasks, including the ones the task set has not seen yet (an
  iSCSI command held behind a CmdSN hole, one still in the transport's ready queue), and
  reports them through tasks(lun). It learns what happened to them through the one event
  it subscribed to, task_management_event(TmfEvent): the manager never scans sessions.
- Which tasks (SAM-5 7.2-7.7): ABORT TASK the one task named; ABORT TASK SET every task of
  the issuing I_T nexus on that LU; CLEAR TASK SET and LOGICAL UNIT RESET every task of
  every I_T nexus on that LU; the target resets every task on every LU; I_T NEXUS RESET
  every task of that nexus (SAM-5 6.3.3, 7.8); PREEMPT AND ABORT every task of the
  preempted I_T nexuses on that LU but the PERSISTENT RESERVE OUT itself (SPC-4
  5.13.11.2.4 / 6.16 PREEMPT AND ABORT service action).
- How each ends (SAM-5 5.6, SPC-4 7.5.8 TAS): a task of the issuing nexus is dropped
  silently (the function's own response covers it); a task of another I_T nexus ends in
  TASK ABORTED status when the control mode page of its LU has TAS=1, and is dropped
  silently when TAS=0. A task for a LUN with no LU behind it is dropped.
- Unit attentions: with TAS=0, CLEAR TASK SET and PREEMPT AND ABORT give each other
  I_T nexus that lost a task COMMANDS CLEARED BY ANOTHER INITIATOR (2Fh/00h, SAM-5 5.6,
  SPC-4 5.13.11.2.4); LOGICAL UNIT RESET and TARGET WARM RESET give every I_T nexus BUS
  DEVICE RESET FUNCTION OCCURRED (29h/03h), TARGET COLD RESET POWER ON OCCURRED (29h/01h)
  (SAM-5 6.3, 5.14; the LU's state resets are ScsiDevice.lu_reset / target_reset). A reset
  does not add 2Fh/00h: its own 29h says it.
- A task the task set holds leaves it here (TaskSet.discard: one not started is taken out,
  one running is marked so its completion is dropped); the owner then forgets its
  transport state and, for TASK ABORTED, sends that status (task.status is set here). The
  transport ending a task itself (connection lost, a data-out error) uses release().
- TARGET COLD RESET also ends every other I_T nexus (RFC 7143 11.5.1: every connection is
  closed): their events carry `cold_reset`; the issuing owner closes after its response.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from target.scsi.sense import (
    BUS_DEVICE_RESET_FUNCTION_OCCURRED,
    COMMANDS_CLEARED_BY_ANOTHER_INITIATOR,
    POWER_ON_OCCURRED,
    Asc,
)
from target.scsi.task import Nexus, ScsiTask, Status

if TYPE_CHECKING:
    from target.scsi.modepages import ModePages
    from target.scsi.taskset import TaskSet
    from target.scsi.ua import UnitAttentions


class Unit(Protocol):
    """What the task manager uses of an LU (target.scsi.lu.LogicalUnit): its task set,
    its control mode page (TAS) and its unit attentions."""

    lun: int
    taskset: TaskSet
    mode: ModePages
    ua: UnitAttentions


class Device(Protocol):
    """What the task manager uses of its SCSI target device (target.scsi.device.ScsiDevice,
    which builds on this module): its LUs and the state resets it fans out to them."""

    @property
    def luns(self) -> Mapping[int, Unit]: ...

    def lu_reset(self, lun: int) -> bool: ...

    def target_reset(self, cold: bool) -> None: ...

    def nexus_lost(self, nexus: Nexus) -> None: ...


class Function(Enum):
    """The task management functions (SAM-5 7.1, table 40; the target resets: RFC 7143
    11.5.1)."""

    ABORT_TASK = "ABORT TASK"
    ABORT_TASK_SET = "ABORT TASK SET"
    CLEAR_TASK_SET = "CLEAR TASK SET"
    LOGICAL_UNIT_RESET = "LOGICAL UNIT RESET"
    I_T_NEXUS_RESET = "I_T NEXUS RESET"
    TARGET_WARM_RESET = "TARGET WARM RESET"
    TARGET_COLD_RESET = "TARGET COLD RESET"
    PREEMPT_AND_ABORT = "PREEMPT AND ABORT"  # SPC-4 5.13.11.2.4: not a TMF, the same work


class ServiceResponse(Enum):
    """Service responses of a task management function (SAM-5 7.1)."""

    FUNCTION_COMPLETE = "FUNCTION COMPLETE"
    INCORRECT_LOGICAL_UNIT_NUMBER = "INCORRECT LOGICAL UNIT NUMBER"


class Disposition(Enum):
    DROPPED = "dropped"              # no status is sent for it
    TASK_ABORTED = "task aborted"    # ends in TASK ABORTED status (TAS=1, another nexus)


@dataclass(frozen=True)
class AbortedTask:
    task: ScsiTask
    nexus: Nexus
    disposition: Disposition


@dataclass(frozen=True)
class UnitAttentionSet:
    lun: int
    code: Asc
    nexus: Nexus | None  # None: every I_T nexus the LU knows


@dataclass
class Outcome:
    """What one call did."""

    function: Function
    response: ServiceResponse = ServiceResponse.FUNCTION_COMPLETE
    aborted: list[AbortedTask] = field(default_factory=list)
    unit_attentions: list[UnitAttentionSet] = field(default_factory=list)


@dataclass
class TmfEvent:
    """What one owner learns of a call: its tasks that were aborted (and how), whether any
    of them left a task set (the shell should pump it), whether it issued the call, and
    (TARGET COLD RESET by another nexus) that its nexus ends."""

    function: Function
    aborted: list[AbortedTask]
    taskset_changed: bool = False
    issuer: bool = False
    cold_reset: bool = False


class TaskOwner(Protocol):
    """The transport side of one I_T nexus (an iSCSI connection)."""

    nexus: Nexus | None

    def tasks(self, lun: int | None) -> list[ScsiTask]:
        """Its tasks not yet completed, for one LUN or (None) every LUN."""
        ...

    def task_management_event(self, event: TmfEvent) -> None:
        ...


Group = tuple["TaskOwner | None", list[ScsiTask]]  # an owner and the tasks of it to abort
Delivery = tuple["TaskOwner", TmfEvent]


class TaskManager:
    """Task management for the LUs of one ScsiDevice."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self._owners: dict[TaskOwner, None] = {}  # attach order, as events are delivered

    # --- subscription ---------------------------------------------------------------

    def attach(self, owner: TaskOwner) -> None:
        self._owners[owner] = None

    def detach(self, owner: TaskOwner) -> None:
        self._owners.pop(owner, None)

    def owners(self) -> list[TaskOwner]:
        return list(self._owners)

    # --- the functions --------------------------------------------------------------

    def abort_task(self, nexus: Nexus, task: ScsiTask) -> Outcome:
        """ABORT TASK (SAM-5 7.2): the task, of the issuing nexus, is dropped."""
        out = Outcome(Function.ABORT_TASK)
        owner = self._owner_of(nexus)
        self._abort(out, [(owner, [task])], issuer=nexus, tas_applies=False)
        return out

    def abort_task_set(self, nexus: Nexus, lun: int) -> Outcome:
        """ABORT TASK SET (SAM-5 7.3): the issuing nexus's tasks on the LU are dropped."""
        out = Outcome(Function.ABORT_TASK_SET)
        if lun not in self.device.luns:
            out.response = ServiceResponse.INCORRECT_LOGICAL_UNIT_NUMBER
            return out
        owner = self._owner_of(nexus)
        self._abort(out, [(owner, owner.tasks(lun) if owner else [])], issuer=nexus,
                    tas_applies=False)
        return out

    def clear_task_set(self, nexus: Nexus, lun: int) -> Outcome:
        """CLEAR TASK SET (SAM-5 7.4): every task on the LU; another nexus's end TASK
        ABORTED (TAS=1) or go with COMMANDS CLEARED BY ANOTHER INITIATOR (TAS=0)."""
        out = Outcome(Function.CLEAR_TASK_SET)
        if lun not in self.device.luns:
            out.response = ServiceResponse.INCORRECT_LOGICAL_UNIT_NUMBER
            return out
        self._abort(out, self._everyone(lun), issuer=nexus, cleared_ua=True)
        return out

    def lu_reset(self, nexus: Nexus, lun: int) -> Outcome:
        """LOGICAL UNIT RESET (SAM-5 7.7): every task on the LU, then the LU resets and
        every nexus gets 29h/03h."""
        out = Outcome(Function.LOGICAL_UNIT_RESET)
        if lun not in self.device.luns:
            out.response = ServiceResponse.INCORRECT_LOGICAL_UNIT_NUMBER
            return out
        events = self._abort(out, self._everyone(lun), issuer=nexus, deliver=False)
        self.device.lu_reset(lun)
        out.unit_attentions.append(UnitAttentionSet(lun, BUS_DEVICE_RESET_FUNCTION_OCCURRED,
                                                    None))
        self._deliver(events)
        return out

    def target_warm_reset(self, nexus: Nexus) -> Outcome:
        """TARGET WARM RESET (RFC 7143 11.5.1, SAM-5 6.3.1 hard reset): every task on every
        LU; every LU resets, 29h/03h to every nexus."""
        return self._target_reset(nexus, cold=False)

    def target_cold_reset(self, nexus: Nexus) -> Outcome:
        """TARGET COLD RESET (RFC 7143 11.5.1): a warm reset, then power on (29h/01h);
        every other nexus ends (its event says cold_reset)."""
        return self._target_reset(nexus, cold=True)

    def i_t_nexus_reset(self, nexus: Nexus) -> Outcome:
        """I_T NEXUS RESET (SAM-5 7.8): the nexus's tasks are dropped and the nexus is lost
        to every LU (SAM-5 6.3.3: its reservations, its unit attention state)."""
        out = Outcome(Function.I_T_NEXUS_RESET)
        owner = self._owner_of(nexus)
        events = self._abort(out, [(owner, owner.tasks(None) if owner else [])],
                             issuer=nexus, tas_applies=False, deliver=False)
        self._deliver(events)
        self.device.nexus_lost(nexus)
        return out

    def preempt_and_abort(self, lun: int, victims: list[Nexus],
                          spare: ScsiTask | None = None) -> Outcome:
        """PREEMPT AND ABORT (SPC-4 5.13.11.2.4): every task of the preempted nexuses on
        the LU, but `spare` (the PERSISTENT RESERVE OUT), is aborted as by another
        initiator's CLEAR TASK SET: TASK ABORTED (TAS=1) or 2Fh/00h (TAS=0)."""
        out = Outcome(Function.PREEMPT_AND_ABORT)
        wanted = set(victims)
        groups = [(o, [t for t in o.tasks(lun) if t is not spare])
                  for o in self.owners() if o.nexus in wanted]
        self._abort(out, groups, issuer=None, cleared_ua=True)
        return out

    def release(self, task: ScsiTask) -> bool:
        """The transport ended a task itself (its connection is gone, a Data-Out error): out
        of its LU's task set. True when the task set changed (the shell pumps it)."""
        lu = self.device.luns.get(task.lun)
        if lu is None or task not in lu.taskset:
            return False
        lu.taskset.discard(task)
        return True

    # --- the work -------------------------------------------------------------------

    def _target_reset(self, nexus: Nexus, cold: bool) -> Outcome:
        out = Outcome(Function.TARGET_COLD_RESET if cold else Function.TARGET_WARM_RESET)
        events = self._abort(out, self._everyone(None), issuer=nexus, deliver=False)
        self.device.target_reset(cold)
        code = POWER_ON_OCCURRED if cold else BUS_DEVICE_RESET_FUNCTION_OCCURRED
        for lun in self.device.luns:
            out.unit_attentions.append(UnitAttentionSet(lun, code, None))
        if cold:
            seen = {id(o) for o, _e in events}
            for o in self.owners():
                if o.nexus != nexus and id(o) not in seen:
                    events.append((o, TmfEvent(out.function, [])))
            for o, e in events:
                e.cold_reset = o.nexus != nexus
        self._deliver(events)
        return out

    def _owner_of(self, nexus: Nexus) -> TaskOwner | None:
        for o in self._owners:
            if o.nexus == nexus:
                return o
        return None

    def _everyone(self, lun: int | None) -> list[Group]:
        """Every owner's tasks, the issuer's among them (its tasks are dropped)."""
        return [(o, o.tasks(lun)) for o in self.owners()]

    def _abort(self, out: Outcome, groups: list[Group], *, issuer: Nexus | None,
               cleared_ua: bool = False, tas_applies: bool = True,
               deliver: bool = True) -> list[Delivery]:
        """Abort each owner's tasks: decide each one's end, take it out of its task set and
        set the unit attentions; then (deliver) tell each owner that lost a task."""
        luns = self.device.luns
        events: list[Delivery] = []
        for owner, tasks in groups:
            if owner is None:
                continue
            own = owner.nexus == issuer
            changed = False
            aborted = []
            for task in tasks:
                lu = luns.get(task.lun)
                disposition = Disposition.DROPPED
                if lu is not None:
                    if task in lu.taskset:
                        lu.taskset.discard(task)
                        changed = True
                    if not own and tas_applies:
                        if lu.mode.tas:
                            disposition = Disposition.TASK_ABORTED
                            task.status = Status.TASK_ABORTED
                        elif cleared_ua:
                            lu.ua.establish(COMMANDS_CLEARED_BY_ANOTHER_INITIATOR,
                                            nexus=owner.nexus)
                            ua = UnitAttentionSet(lu.lun, COMMANDS_CLEARED_BY_ANOTHER_INITIATOR,
                                                  owner.nexus)
                            if ua not in out.unit_attentions:
                                out.unit_attentions.append(ua)
                a = AbortedTask(task, owner.nexus, disposition)
                aborted.append(a)
                out.aborted.append(a)
            if aborted:
                events.append((owner, TmfEvent(out.function, aborted, changed, own)))
        if deliver:
            self._deliver(events)
        return events

    @staticmethod
    def _deliver(events: list[Delivery]) -> None:
        for owner, event in events:
            owner.task_management_event(event)
