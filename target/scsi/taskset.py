"""The task set of one logical unit (SAM-5 8): which queued task the device server starts next.

Rules:
- Sans-IO: the shell submits tasks, asks dispatch() for the next one to run (while fewer
  than `depth` run), runs it, waits the service time the rotational model gives (if
  any), and reports done(). `now` (seconds) is passed in; there is no clock here.
- Idle fast path: with no task in the set and no disk model, a task runs at once. When
  its medium access completes inside execute() (inline stores) the set stays empty and
  nothing could be reordered; when it goes on off the event loop, the shell makes the
  task a running member (adopt()), so every later task is ordered against it as if it had been
  dispatched from the set.
- A task may enter the set before its Data-Out has all arrived (submit(data_ready=False):
  the transport delivers commands in CmdSN order, RFC 7143 3.2.2.1): it takes its place in
  the order at once, so newer tasks are ordered after it, but it is not dispatched until
  data_ready() says its data is in (an enabled task waiting for data is parked).
- Arrival: submit() looks the task's CDB up in the LU's table, once (CommandSet.parse:
  the entry, its block range and a refusal go on the task), before anything else; the
  ordering below reads the entry's facts and task.lba/blocks, and the LU executes from
  them.
- Bypass (never queued, never held): commands whose table entry has queue=False
  (INQUIRY, REPORT LUNS, REQUEST SENSE), CDBs the table does not know (the LU rejects
  them at once) and tasks with the ACA attribute (the LU refuses them, below). submit()
  returns False for them and the shell runs them right away.
- Task attributes (SAM-5 8.6): a SIMPLE task is enabled once every older ORDERED and
  HEAD OF QUEUE task has completed; an ORDERED task once every older task has completed,
  and it holds back every newer SIMPLE and ORDERED task until it completes; a HEAD OF
  QUEUE task is enabled at once and goes before every enabled task (several: the newest
  first, each put at the head of the queue), except that it waits for a running task
  whose range overlaps its own (either writing), and holds back the overlapping older
  ones not yet started: a task's medium access may run off the event loop, and two
  overlapping ones never run side by side. ACA: this device server never establishes
  an ACA condition (NACA=1 is rejected), so a task with the ACA attribute is answered
  CHECK CONDITION, ILLEGAL REQUEST, INVALID MESSAGE ERROR (SAM-5 8.6.5) by the LU.
- Queue algorithm modifier (SPC-4 7.5.8, control mode page): with QAM=0 (restricted
  reordering) a SIMPLE task whose block range overlaps an older uncompleted task's, where
  either writes, waits for it (data integrity for every nexus); a command without a block
  range that can change the LU (Access WRITE/EXCLUSIVE: MODE SELECT, UNMAP, FORMAT, PR
  OUT...) is ordered against every block task both ways; other commands without a block
  range (TEST UNIT READY, READ CAPACITY, MODE SENSE) are ordered against nothing. With
  QAM=1 only the task attributes order tasks, except for atomic commands (COMPARE AND
  WRITE, WRITE ATOMIC: their entries' block layouts, extent.py), which are ordered
  against overlapping tasks both ways under any QAM (SBC-4 5.3, 4.29: all or nothing
  for every other command). Serial commands (commands.py: PERSISTENT RESERVE OUT) wait
  for every older serial task.
- Enabled block tasks go through the elevator (target.scsi.elevator: fifo or disksort
  with its starvation bound); enabled tasks without a block range are served FIFO ahead
  of the elevator (they cost no seek).
- TASK SET FULL (SAM-5 5.3.3): a task arriving when `queue_limit` tasks are in the task
  set is answered with that status without entering it.
- Aborts (ABORT TASK, ABORT TASK SET, CLEAR TASK SET, LU/target reset, I_T nexus loss,
  PREEMPT AND ABORT, decided by the task manager target.scsi.tmf, which also discards
  the tasks their transport ended; a fault rule's error status, target.shell.dispatch):
  discard() takes a task out that has not started and releases the tasks that waited for
  it; a task already running is marked and its completion is not reported (the transport
  drops it), but it keeps its dispatch slot until done().
- Metrics: commands queued, maximum depth, seek distance (from the elevator), reorders,
  starvation-bound hits, TASK SET FULL answers, aborts; as_dict() for status and trace,
  with the tasks in the set now (initiator port, tag, opcode, state; the first 64).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from target.scsi import extent
from target.scsi.commands import Access
from target.scsi.elevator import DiskModel, Elevator
from target.scsi.task import ScsiTask, Status, TaskAttr

if TYPE_CHECKING:
    from target.scsi.commands import CommandSet
    from target.scsi.modepages import ModePages


class Unit(Protocol):
    """What a task set reads of its LU (target.scsi.lu.LogicalUnit, which builds on this
    module): the table its CDBs are looked up in, and the control mode page (QAM)."""

    commands: CommandSet
    mode: ModePages

DEFAULT_DEPTH = 64        # tasks running at once: plenty for the synchronous stores
DEFAULT_QUEUE_LIMIT = 512  # tasks in the task set before TASK SET FULL
WHOLE = (0, extent.TO_END)

BLOCKED, ENABLED, RUNNING, DONE = range(4)


class Entry:
    """One task in the task set."""

    __slots__ = ("task", "seq", "attr", "lba", "end", "blocks", "writes", "ranged",
                 "atomic", "serial", "deps", "dependents", "preds", "state", "aborted",
                 "arrival", "service", "awaiting_data")

    def __init__(self, task: ScsiTask, seq: int, now: float) -> None:
        self.task = task
        self.seq = seq
        self.attr = task.attr
        self.lba = 0
        self.end = 0
        self.blocks = 0
        self.writes = False
        self.ranged = False     # has a block range (goes through the elevator)
        self.atomic = False     # COMPARE AND WRITE, WRITE ATOMIC: ordered by range always
        self.serial = False     # PERSISTENT RESERVE OUT: after every older serial task
        self.awaiting_data = False  # its Data-Out is still arriving: not dispatched yet
        self.deps = 0           # older tasks it waits for
        self.dependents: list[Entry] = []
        self.preds: list[Entry] = []   # the older tasks it waits for
        self.state = BLOCKED
        self.aborted = False
        self.arrival = now
        self.service = 0.0      # seconds the rotational model gave it at dispatch


class TaskSetStats:
    __slots__ = ("submitted", "direct", "bypassed", "max_depth", "task_set_full", "aborted",
                 "held_by_order")

    def __init__(self) -> None:
        self.submitted = 0      # tasks that entered the task set
        self.direct = 0         # tasks run at once on an idle LU without a disk model
        self.bypassed = 0       # INQUIRY, REPORT LUNS, REQUEST SENSE, unknown opcodes
        self.max_depth = 0      # most tasks in the task set at once
        self.task_set_full = 0
        self.aborted = 0
        self.held_by_order = 0  # tasks that had to wait for an older one (ORDERED, QAM=0)


@dataclass(frozen=True)
class Queueing:
    """How an LU's task set queues and dispatches (a LUN's [scheduler] table): what
    LogicalUnit builds its TaskSet with."""

    policy: str = "disksort"
    depth: int = DEFAULT_DEPTH
    queue_limit: int = DEFAULT_QUEUE_LIMIT
    max_passes: int | None = 64
    deadline: float | None = 0.5
    blocks_per_cylinder: int | None = None
    model: DiskModel | None = None
    idle_fast_path: bool = True


class TaskSet:
    def __init__(self, lu: Unit | None = None, *, policy: str = "disksort",
                 depth: int = DEFAULT_DEPTH, queue_limit: int = DEFAULT_QUEUE_LIMIT,
                 max_passes: int | None = 64, deadline: float | None = 0.5,
                 blocks_per_cylinder: int | None = None,
                 model: DiskModel | None = None, idle_fast_path: bool = True,
                 commands: CommandSet | None = None) -> None:
        table = lu.commands if lu is not None else commands
        if table is None:
            raise ValueError("a task set needs its LU, or a command table to look CDBs up in")
        self._commands = table
        if depth < 1:
            raise ValueError(f"dispatch depth must be at least 1, not {depth}")
        if queue_limit < 1:
            raise ValueError(f"queue limit must be at least 1, not {queue_limit}")
        self.lu = lu
        self.depth = depth
        self.queue_limit = queue_limit
        self.model = model
        self.idle_fast_path = idle_fast_path
        self.elevator: Elevator[Entry] = Elevator(policy, max_passes=max_passes,
                                                  deadline=deadline,
                                                  blocks_per_cylinder=blocks_per_cylinder)
        self.stats = TaskSetStats()
        self._entries: dict[ScsiTask, Entry] = {}   # every task in the set, arrival order
        # The same dict, never replaced, for the shell's test of an empty set on every pump
        # (len() of the set is a call of the Python __len__): read it, never change it.
        self.members: dict[ScsiTask, Entry] = self._entries
        self._hoq: list[Entry] = []                 # enabled HEAD OF QUEUE: newest last
        self._plain: deque[Entry] = deque()         # enabled tasks without a block range
        self._running = 0
        self._seq = 0
        self.head = 0           # the modelled disk head: one past the last block dispatched
        self._ordered_pending: list[Entry] = []     # ORDERED tasks not completed, oldest first
        self._hoq_pending: list[Entry] = []         # HEAD OF QUEUE tasks not completed
        self._barriers: list[Entry] = []            # uncompleted range-less LU changers
        self._serial: list[Entry] = []              # uncompleted serial tasks
        self._atomics = 0                           # uncompleted atomic tasks

    # --- queries ------------------------------------------------------------------------

    @property
    def policy(self) -> str:
        return self.elevator.policy

    def __len__(self) -> int:
        """Tasks in the task set (queued and running)."""
        return len(self._entries)

    @property
    def running(self) -> int:
        return self._running

    def __contains__(self, task: ScsiTask) -> bool:
        return task in self._entries

    def tasks(self) -> list[ScsiTask]:
        return list(self._entries)

    def _qam(self) -> int:
        lu = self.lu
        return lu.mode.qam if lu is not None else 0

    # --- entering -----------------------------------------------------------------------

    def submit(self, task: ScsiTask, now: float = 0.0, data_ready: bool = True) -> bool:
        """Put a task in the task set. False: not queued; the caller runs it at once (bypass,
        or an idle LU) or, when task.status is TASK SET FULL, completes it as it is. With
        data_ready=False the task waits for data_ready() before it can be dispatched (and
        the idle fast path does not apply: it cannot run yet). The same as direct() and,
        when that is False, queue()."""
        if data_ready and self.direct(task):
            return False
        return self.queue(task, now, data_ready)

    def direct(self, task: ScsiTask) -> bool:
        """Arrival of a task whose data is in hand: the one lookup of its CDB, then True when
        the idle fast path runs it (the caller runs it at once; no clock is needed), False
        when queue() is to place it."""
        if task.command is None and task.rejection is None:  # arrival: the one lookup
            self._commands.parse(task)
        if self.idle_fast_path and not self._entries and self.model is None:
            # Idle and without a model: nothing to order against and no time to wait; the
            # task runs at once and completes before the next one arrives (synchronous
            # stores), so no queue ever forms - as in a driver whose device is free.
            self.stats.direct += 1
            return True
        return False

    def queue(self, task: ScsiTask, now: float = 0.0, data_ready: bool = True) -> bool:
        """submit() past the idle fast path: the task joins the set (True), or is a bypass
        or TASK SET FULL (False, as for submit())."""
        cmd = task.command
        if cmd is None and task.rejection is None:  # arrival (data_ready=False): the lookup
            cmd = self._commands.parse(task)
        if cmd is None or not cmd.queue or task.attr == TaskAttr.ACA:
            self.stats.bypassed += 1
            return False
        if len(self._entries) >= self.queue_limit:
            self.stats.task_set_full += 1
            task.status = Status.TASK_SET_FULL
            task.sense = b""
            task.data_in = None
            return False
        e = self._entry(task, cmd, now)
        e.awaiting_data = not data_ready
        attr = task.attr
        if attr == TaskAttr.HEAD_OF_QUEUE:
            if e.end > e.lba:
                self._head_of_queue_overlaps(e)
        elif attr == TaskAttr.ORDERED:
            for older in self._entries.values():
                self._depend(e, older)
        else:
            if self._ordered_pending:  # the newest waits for all the older ones
                self._depend(e, self._ordered_pending[-1])
            for older in self._hoq_pending:
                self._depend(e, older)
            if e.end > e.lba:
                if self._qam() == 0:
                    self._order_by_range(e)
                elif e.atomic or self._atomics:
                    self._order_atomics(e)
        if e.serial:
            for older in self._serial:
                self._depend(e, older)
        self._admit(e)
        self.stats.submitted += 1
        if e.deps == 0:
            self._enable(e, now)
        else:
            self.stats.held_by_order += 1
        return True

    def adopt(self, task: ScsiTask, now: float = 0.0) -> None:
        """A task the idle fast path started (submit() returned False, the set was empty)
        whose medium access goes on off the event loop: it joins the set as running, and
        the shell reports done() when it ends."""
        e = self._entry(task, task.command, now)
        e.state = RUNNING
        self._running += 1
        self._admit(e)
        if e.ranged and e.end != extent.TO_END:
            self.head = e.end

    def _entry(self, task: ScsiTask, cmd, now: float) -> Entry:
        self._seq += 1
        e = Entry(task, self._seq, now)
        lba = task.lba
        if lba is not None:  # decoded on arrival by the entry's layout
            block = cmd.block
            blocks = task.blocks
            e.ranged = True
            e.lba, e.blocks, e.writes, e.atomic = lba, blocks, block.writes, block.atomic
            e.end = extent.TO_END if (blocks == 0 and block.zero_is_all) else lba + blocks
        elif cmd is not None and cmd.access in (Access.WRITE, Access.EXCLUSIVE):
            e.lba, e.end = WHOLE
            e.writes = True
        e.serial = cmd is not None and cmd.serial
        return e

    def _admit(self, e: Entry) -> None:
        """Into the set (the bookkeeping newer tasks are ordered by)."""
        if e.attr == TaskAttr.HEAD_OF_QUEUE:
            self._hoq_pending.append(e)
        elif e.attr == TaskAttr.ORDERED:
            self._ordered_pending.append(e)
        if e.writes and not e.ranged:
            self._barriers.append(e)
        if e.serial:
            self._serial.append(e)
        if e.atomic:
            self._atomics += 1
        self._entries[e.task] = e
        if len(self._entries) > self.stats.max_depth:
            self.stats.max_depth = len(self._entries)

    def _order_atomics(self, e: Entry) -> None:
        """QAM=1: an atomic task waits for every older overlapping task, and any task for an
        older overlapping atomic one (SBC-4 5.3, 4.29: all or nothing for every command)."""
        lba, end = e.lba, e.end
        for older in self._entries.values():
            if (older.ranged and (e.atomic or older.atomic) and older.lba < end
                    and lba < older.end):
                self._depend(e, older)

    def _head_of_queue_overlaps(self, e: Entry) -> None:
        """A HEAD OF QUEUE task goes before the older tasks that have not started, and after
        the ones running (they cannot be called back): where their ranges overlap and either
        writes, it waits for a running one, and a waiting one now waits for it, so the two
        never run side by side (a read never sees half of a write)."""
        lba, end = e.lba, e.end
        for older in list(self._entries.values()):
            if not ((e.writes or older.writes) and older.end > older.lba and older.lba < end
                    and lba < older.end):
                continue
            if older.state == RUNNING:
                self._depend(e, older)
            elif older.state in (BLOCKED, ENABLED):
                if older.state == ENABLED:
                    self._withdraw(older)
                    older.state = BLOCKED
                self._depend(older, e)

    def _withdraw(self, e: Entry) -> None:
        """Take an enabled task out of the queue it waits in to be dispatched."""
        if e.awaiting_data:
            return  # parked: in no queue
        if e.attr == TaskAttr.HEAD_OF_QUEUE:
            self._hoq.remove(e)
        elif e.ranged:
            self.elevator.remove(e)
        else:
            self._plain.remove(e)

    @staticmethod
    def _depend(e: Entry, older: Entry) -> None:
        if older.state != DONE and older is not e:
            older.dependents.append(e)
            e.preds.append(older)
            e.deps += 1

    def _order_by_range(self, e: Entry) -> None:
        """QAM=0: wait for every older uncompleted task whose range overlaps, either writing."""
        lba, end, writes = e.lba, e.end, e.writes
        if not e.ranged:  # a range-less LU changer: after every block task
            for older in self._entries.values():
                if older.end > older.lba:
                    self._depend(e, older)
            return
        for b in self._barriers:
            self._depend(e, b)
        for older in self._entries.values():
            if (older.ranged and (writes or older.writes) and older.lba < end
                    and lba < older.end):
                self._depend(e, older)

    def data_ready(self, task: ScsiTask, now: float = 0.0) -> None:
        """The Data-Out of a task submitted with data_ready=False is all in: it may run."""
        e = self._entries.get(task)
        if e is None or not e.awaiting_data:
            return
        e.awaiting_data = False
        if e.state == ENABLED:
            self._enable(e, now)

    def _enable(self, e: Entry, now: float) -> None:
        e.state = ENABLED
        if e.awaiting_data:
            return  # parked until data_ready()
        if e.attr == TaskAttr.HEAD_OF_QUEUE:
            self._hoq.append(e)
        elif e.ranged:
            self.elevator.add(e, e.lba, e.blocks, now)
        else:
            self._plain.append(e)

    # --- leaving ------------------------------------------------------------------------

    def dispatch(self, now: float = 0.0) -> ScsiTask | None:
        """The next task to run, or None (depth reached, or nothing enabled)."""
        if self._running >= self.depth:
            return None
        if self._hoq:
            e = self._hoq.pop()
        elif self._plain:
            e = self._plain.popleft()
        else:
            e = self.elevator.next(now)
            if e is None:
                return None
        e.state = RUNNING
        self._running += 1
        if e.ranged:
            if self.model is not None:
                e.service = self.model.service_time(self.head, e.lba, max(e.blocks, 1))
            if e.end != extent.TO_END:
                self.head = e.end
        return e.task

    def service_time(self, task: ScsiTask) -> float:
        """Seconds the rotational model gave a dispatched task (0 without a model or range):
        seek from where the head was, rotational latency, media transfer."""
        e = self._entries.get(task)
        return e.service if e is not None else 0.0

    def done(self, task: ScsiTask, now: float = 0.0) -> bool:
        """A dispatched task finished: release its dependents. Returns True when it was
        aborted while it ran (its completion must not be reported)."""
        e = self._entries.get(task)
        if e is None:
            return True
        if e.state == RUNNING:
            self._running -= 1
        self._retire(e, now)
        return e.aborted

    def _retire(self, e: Entry, now: float) -> None:
        e.state = DONE
        del self._entries[e.task]
        if e.attr == TaskAttr.ORDERED:
            self._ordered_pending.remove(e)
        if e.attr == TaskAttr.HEAD_OF_QUEUE:
            self._hoq_pending.remove(e)
        if e.writes and not e.ranged:
            self._barriers.remove(e)
        if e.serial:
            self._serial.remove(e)
        if e.atomic:
            self._atomics -= 1
        for d in e.dependents:
            if d.state == DONE:  # discarded before e finished
                continue
            d.deps -= 1
            d.preds.remove(e)
            if d.deps == 0 and d.state == BLOCKED:
                self._enable(d, now)
        e.dependents = []
        e.preds = []

    def discard(self, task: ScsiTask, now: float = 0.0) -> bool:
        """Abort a task: out of the set if it has not started (True); if it runs, mark it
        (its completion is dropped by the transport) and keep its slot until done()."""
        e = self._entries.get(task)
        if e is None:
            return False
        self.stats.aborted += 1
        if e.state == RUNNING:
            e.aborted = True
            return False
        if e.state == ENABLED:
            self._withdraw(e)
        # What waited for e waited, through e, for what e waited for (a SIMPLE task waits
        # only for the newest ORDERED one): hand those waits on before e goes.
        for d in e.dependents:
            for p in e.preds:
                if p.state != DONE and p not in d.preds:
                    self._depend(d, p)
        self._retire(e, now)
        return True

    def aborted(self, task: ScsiTask) -> bool:
        e = self._entries.get(task)
        return e is not None and e.aborted

    def as_dict(self, max_tasks: int = 64) -> dict:
        s = self.stats
        names = {BLOCKED: "waiting", ENABLED: "enabled", RUNNING: "running"}
        tasks = []
        for e in list(self._entries.values())[:max_tasks]:
            nexus = e.task.nexus
            tasks.append({"initiator_port": nexus.initiator_port if nexus else "",
                          "tag": e.task.tag, "cdb": bytes(e.task.cdb[:1]).hex(),
                          "state": "awaiting data" if e.awaiting_data and e.state != RUNNING
                          else names.get(e.state, "done"),
                          "aborted": e.aborted})
        return {"policy": self.policy, "depth": self.depth, "queued_now": len(self._entries),
                "tasks": tasks,
                "running": self._running, "submitted": s.submitted, "direct": s.direct,
                "bypassed": s.bypassed,
                "max_depth": s.max_depth, "task_set_full": s.task_set_full,
                "aborted": s.aborted, "held_by_order": s.held_by_order,
                "elevator": self.elevator.stats.as_dict(),
                "model": None if self.model is None else {
                    "rpm": self.model.rpm, "average_seek_ms": self.model.average_seek_ms,
                    "track_to_track_ms": self.model.track_to_track_ms}}
