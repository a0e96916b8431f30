"""The asyncio shell of a logical unit's task set: tasks in, executed, completions out.

Rules:
- One Dispatcher per LU, made by the server for every LU it serves. Links submit the
  tasks their connections made ready (a whole receive burst at once, so the elevator
  sees them together) and then pump(); pump() starts every task the task set lets run
  (up to its dispatch depth), executes it against the LU at once, and completes it
  either at once or, with a rotational disk model, after the model's service time
  (loop.call_later). The data moves when the task starts; only the completion waits.
- A task the task set does not queue (INQUIRY, REPORT LUNS, REQUEST SENSE, unknown
  opcodes) runs at once; one refused with TASK SET FULL completes at once as it is.
- A completed task goes back to the connection that sent it (task.shell holds the Link
  and the start time while the task is in the task set) unless it was aborted while
  running; every Link that got output is flushed after the pump.
- Completing a task can enable others (ORDERED, QAM=0 overlaps, depth): pump() loops
  until nothing more may start; a completion that arrives while pumping (the synchronous
  case) just releases its dependents for the loop in progress.
- Fault rules (target.faults), when there are any, are matched first: an error status
  completes the task at once without running it, "drop" closes the link, "delay" runs it
  at once and holds its completion (outside the task set).
- With a tracer, each command is recorded at completion with its latency from submit
  (queueing included) and the task set's state.
- Background operations (a SANITIZE, SBC-4 4.11): the dispatcher makes the LU start them
  rather than run them to the end (lu.sanitize.background) and drives them a step at a
  time on the loop (call_soon, or call_later at the LU's sanitize rate). A task the LU
  marks `deferred` (IMMED=0) leaves the task set at once, so it holds nothing back, and
  is completed when the operation ends (lu.finished_deferred()); if it was aborted or its
  connection went away meanwhile, the transport drops the completion.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from target.faults import Faults

if TYPE_CHECKING:
    import asyncio

    from target.scsi.lu import LogicalUnit
    from target.scsi.task import ScsiTask
    from target.trace import Tracer


class Dispatcher:
    def __init__(self, loop: asyncio.AbstractEventLoop, lu: LogicalUnit,
                 tracer: Tracer | None = None, faults: Faults | None = None,
                 target: str = "") -> None:
        self.loop = loop
        self.lu = lu
        self.faults = faults if faults is not None else Faults()
        self.target = target
        self.taskset = lu.taskset
        self.tracer = tracer
        self._pumping = False
        self._dirty: set = set()
        lu.sanitize.background = True
        self._driving = False
        self._deferred: dict[ScsiTask, tuple[object, int]] = {}  # task -> (link, start)

    def submit(self, link, task: ScsiTask) -> None:
        """A task whose data is all in: into the task set, or run at once (bypass)."""
        start = time.perf_counter_ns() if self.tracer is not None else 0
        if self.faults.rules and self._inject(link, task, start):
            return
        ts = self.taskset
        if ts.submit(task, self.loop.time()):
            task.shell = (link, start)
            return
        if task.status == 0:  # bypass: not TASK SET FULL
            self.lu.execute(task)
            if (task.deferred or self.lu.sanitize.active is not None) \
                    and self._background(task, link, start):
                return
        link.conn.complete(task)
        if self.tracer is not None:
            self.tracer.record(link.conn.peer, task, start, time.perf_counter_ns())

    def _inject(self, link, task: ScsiTask, start: int) -> bool:
        """Apply a matching fault rule (target.faults); True when the task is taken care of."""
        fault = self.faults.match(task, self.target, self.lu.mode.d_sense)
        if fault is None:
            return False
        if fault.drop:
            link.close()
            return True
        if fault.status is not None:
            task.status = fault.status
            task.sense = fault.sense
            task.data_in = None
            self._complete(link, task, start)
            return True
        # delay: runs at once, outside the task set; its completion waits
        self.lu.execute(task)
        if (task.deferred or self.lu.sanitize.active is not None) \
                and self._background(task, link, start):
            return True  # a deferred task completes when its operation ends
        self.loop.call_later(fault.delay, self._complete_later, link, task, start)
        return True

    def _complete(self, link, task: ScsiTask, start: int) -> None:
        link.conn.complete(task)
        if self.tracer is not None:
            self.tracer.record(link.conn.peer, task, start, time.perf_counter_ns())

    def _complete_later(self, link, task: ScsiTask, start: int) -> None:
        if not link.closed:
            self._complete(link, task, start)
            link.flush()

    def pump(self, current=None) -> None:
        """Start every task the task set lets start; flush the links that got output
        (except `current`, the link whose receive loop is running and flushes itself)."""
        if self._pumping:
            return
        self._pumping = True
        ts = self.taskset
        loop = self.loop
        execute = self.lu.execute
        sanitize = self.lu.sanitize
        try:
            while (task := ts.dispatch(loop.time())) is not None:
                execute(task)
                if (task.deferred or sanitize.active is not None) \
                        and self._background(task, *task.shell):
                    task.shell = None
                    ts.done(task, loop.time())
                    continue
                delay = ts.service_time(task)
                if delay > 0:
                    loop.call_later(delay, self._finish_later, task)
                else:
                    self._finish(task)
        finally:
            self._pumping = False
        self._flush_dirty(current)

    # --- background operations -----------------------------------------------------------

    def _background(self, task: ScsiTask, link, start: int) -> bool:
        """After execute(): keep a deferred task for later and start driving a background
        operation the command began; True when the task is not to be completed now."""
        if self.lu.sanitize.active is not None and not self._driving:
            self._driving = True
            self.loop.call_soon(self._advance)
        if not task.deferred:
            return False
        self._deferred[task] = (link, start)
        return True

    def _advance(self) -> None:
        delay = self.lu.sanitize.advance()
        if delay is not None:
            if delay > 0:
                self.loop.call_later(delay, self._advance)
            else:
                self.loop.call_soon(self._advance)
            return
        self._driving = False
        for task in self.lu.finished_deferred():
            link, start = self._deferred.pop(task)
            if not link.closed:
                self._complete(link, task, start)
                link.flush()

    def _finish(self, task: ScsiTask) -> None:
        link, start = task.shell
        task.shell = None
        aborted = self.taskset.done(task, self.loop.time())
        if aborted or link.closed:
            return
        link.conn.complete(task)
        self._dirty.add(link)
        if self.tracer is not None:
            self.tracer.record(link.conn.peer, task, start, time.perf_counter_ns(),
                               len(self.taskset))

    def _finish_later(self, task: ScsiTask) -> None:
        self._finish(task)
        self.pump()
        self._flush_dirty()

    def _flush_dirty(self, current=None) -> None:
        if self._dirty:
            dirty = self._dirty
            self._dirty = set()
            for link in dirty:
                if link is not current:
                    link.flush()
