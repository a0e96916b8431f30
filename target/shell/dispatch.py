"""The asyncio shell of a logical unit's task set: tasks in, executed, completions out.

Rules:
- One Dispatcher per LU, made by the server for every LU it serves. Links hand over the
  TasksReady events of their connections (target.iscsi.events): run_ready() submits the
  tasks admitted, in CmdSN order (a whole receive burst at once, so the elevator sees
  them together), then reports data_ready() for those whose Data-Out has since come in,
  and then pump(); a TaskSetChanged event is pump_all(). pump() starts every task the
  task set lets run (up to its dispatch depth), executes it against the LU at once, and
  completes it either at once or, with a rotational disk model, after the model's
  service time (loop.call_later). The data moves when the task starts; only the completion waits.
- Medium access off the event loop (DESIGN.md principle 7): a LU whose store can sleep
  (a file on a disk, a block device; lu.io_threads > 0) leaves each command's store calls
  in task.io (LogicalUnit.io). They run on the LU's own worker threads, as tgt's bs_rdwr
  threads do, while the loop goes on serving every other session, LU, NOP-In and TMF; the
  worker hands the task back with call_soon_threadsafe and the LU finishes it on the loop
  (complete_io), then it completes like any other. A task stays RUNNING in the task set
  while its access runs, so the ordering rules (QAM=0 overlaps, ORDERED, atomic commands,
  HEAD OF QUEUE) hold against it; a task the idle fast path started is adopted into
  the set for that time (TaskSet.adopt). Stores that never sleep (memory, tmpfs) keep
  the synchronous path: measured on a tmpfs file (tools/bench --ours-args "--io-threads 8"), 4 KiB
  commands through 8 workers reach about a third of the IOPS they reach on the loop.
- A task the task set does not queue (INQUIRY, REPORT LUNS, REQUEST SENSE, unknown
  opcodes) runs at once; one refused with TASK SET FULL completes at once as it is.
- A completed task goes back to the connection that sent it (task.shell holds the Link
  and the start time while the task is in the task set) unless it was aborted while
  running or its link is gone; every Link that got output is flushed after the pump.
- Completing a task can enable others (ORDERED, QAM=0 overlaps, depth): pump() loops
  until nothing more may start; a completion that arrives while pumping (the synchronous
  case) just releases its dependents for the loop in progress.
- Fault rules (target.faults), when there are any, are matched first, on the task as
  its LU parsed it (for a task whose Data-Out is still arriving: when it is all in): an
  error status completes the task at once without running it, "drop" closes the link,
  "delay" lets it run in its turn (the ordering rules hold) and sends its status that
  much later, "medium-delay" makes its medium access take longer, on a worker thread
  whatever the store, as a slow disk would (the loop and the other LUs are not held up).
- With a tracer, each command is recorded at completion with its latency from submit
  (queueing included) and the task set's state.
- Background operations (a SANITIZE, SBC-4 4.11): the dispatcher makes the LU start them
  rather than run them to the end (LogicalUnit.attach_shell) and drives them a step at a
  time (call_soon, or call_later at the LU's sanitize rate; each step's store calls on a
  worker thread when the LU has them). A task the LU marks `deferred` (IMMED=0) leaves the
  task set at once, so it holds nothing back, and is completed when the operation ends
  (lu.finished_deferred()); if it was aborted or its connection went away meanwhile, the
  transport drops the completion.
- close() waits for the medium accesses in flight (at shutdown, before the stores close).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from target.faults import Faults

if TYPE_CHECKING:
    import asyncio

    from target.iscsi.events import TasksReady
    from target.scsi.lu import LogicalUnit
    from target.scsi.task import ScsiTask
    from target.trace import Tracer

FORCED_IO_THREADS = 4  # workers of a LU without its own, for medium-delay faults


def run_ready(link, event: TasksReady, dispatchers: dict, tracer: Tracer | None = None) -> None:
    """Hand the tasks of the link's connection's TasksReady event (a whole receive burst)
    to their LUs' task sets, then the ones whose Data-Out is now all in, emptying both
    queues; then let each task set start what it may. A task for a LUN with no LU is
    answered by the device at once (when its data is in). `dispatchers` maps each LU to
    its Dispatcher."""
    conn = link.conn
    device = conn.session.device if conn.session is not None else None
    touched = []
    for queue, data_in in ((event.tasks, False), (event.data_in, True)):
        while queue:
            task = queue.popleft()
            lu = device.luns.get(task.lun)
            if lu is None:
                if task.data_pending:
                    continue  # answered when its data is in
                start = time.perf_counter_ns()
                device.execute(task)
                conn.complete(task)
                if tracer is not None:
                    tracer.record(conn.peer, task, start, time.perf_counter_ns())
                continue
            d = dispatchers[lu]
            if data_in:
                d.data_ready(link, task)
            else:
                d.submit(link, task)
            if d not in touched:
                touched.append(d)
    for d in touched:
        d.pump(link)


def pump_all(link, dispatchers: dict) -> None:
    """Task sets changed outside a submit (the link's connection's TaskSetChanged: it
    aborted tasks): start what may start now on every LU of its target."""
    conn = link.conn
    device = conn.session.device if conn.session is not None else None
    if device is None:
        return
    for lu in device.luns.values():
        d = dispatchers.get(lu)
        if d is not None:
            d.pump(link)


class IoStats:
    """Medium access run off the event loop, for `scsi-target status`."""

    __slots__ = ("threads", "offloaded", "in_flight", "max_in_flight")

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.offloaded = 0
        self.in_flight = 0
        self.max_in_flight = 0

    def as_dict(self) -> dict:
        return {"threads": self.threads, "offloaded": self.offloaded,
                "in_flight": self.in_flight, "max_in_flight": self.max_in_flight}


class Dispatcher:
    def __init__(self, loop: asyncio.AbstractEventLoop, lu: LogicalUnit,
                 tracer: Tracer | None = None, faults: Faults | None = None,
                 target: str = "", executor=None) -> None:
        self.loop = loop
        self.lu = lu
        self.faults = faults if faults is not None else Faults()
        self.target = target
        self.taskset = lu.taskset
        self.tracer = tracer
        self._pumping = False
        self._dirty: set = set()
        self._driving = False
        self._deferred: dict[ScsiTask, tuple[object, int]] = {}  # task -> (link, start)
        threads = lu.io_threads
        self.io = IoStats(threads)
        lu.attach_shell(inline_io=threads == 0 and executor is None, io_stats=self.io)
        self._executor = executor  # anything with submit(fn, *args); made when first needed

    # --- entering -----------------------------------------------------------------------

    def submit(self, link, task: ScsiTask) -> None:
        """A task admitted in CmdSN order: into the task set, or run at once (bypass). One
        whose Data-Out is still arriving (task.data_pending) takes its place in the task
        set now and runs after data_ready(); a bypass command waits outside for its data."""
        start = time.perf_counter_ns() if self.tracer is not None else 0
        ts = self.taskset
        if task.data_pending:
            if ts.queue(task, self.loop.time(), data_ready=False):  # (= ts.submit: no
                # idle fast path for a task that cannot run yet)
                task.shell = (link, start)
            elif task.status:  # TASK SET FULL: answered now, its late data is dropped
                self._complete(link, task, start)
            return  # (bypass: submitted again by data_ready())
        if self.faults.rules:
            if task.command is None and task.rejection is None:
                self.lu.parse(task)  # the one lookup, before the rules read its range
            if self._inject(link, task, start):
                return
        if not ts.direct(task) and ts.queue(task, self.loop.time()):  # (ts.submit, with
            task.shell = (link, start)  # the clock read only when the task is queued)
            return
        if task.status == 0:  # bypass: not TASK SET FULL
            self.lu.execute(task)
            if task.io is not None:
                # The idle fast path started it and its medium access goes on off the loop:
                # a running member of the task set until it ends.
                ts.adopt(task, self.loop.time())
                task.shell = (link, start)
                self._offload(task, self._io_finished)
                return
            if (task.deferred or self.lu.sanitize.active is not None) \
                    and self._background(task, link, start):
                return
        self._complete(link, task, start)

    def data_ready(self, link, task: ScsiTask) -> None:
        """The Data-Out of a submitted task is all in: it may run now (the caller pumps)."""
        ts = self.taskset
        if task not in ts:
            self.submit(link, task)  # a bypass command, waiting outside the set
            return
        if self.faults.rules:
            fault = self.faults.match(task, self.target)
            if fault is not None and not self._slow(fault, task):
                # An error status or a drop: the task leaves the set without running.
                link, start = task.shell
                task.shell = None
                ts.discard(task, self.loop.time())
                self._apply(fault, link, task, start)
                return
        ts.data_ready(task, self.loop.time())

    def _inject(self, link, task: ScsiTask, start: int) -> bool:
        """Apply a matching fault rule (target.faults); True when the task is taken care of."""
        fault = self.faults.match(task, self.target)
        if fault is None or self._slow(fault, task):
            return False  # the normal path (perhaps slower)
        self._apply(fault, link, task, start)
        return True

    @staticmethod
    def _slow(fault, task: ScsiTask) -> bool:
        """A delay or medium-delay rule: noted on the task, which then runs normally."""
        if fault.medium_delay:
            task.medium_delay = fault.medium_delay
            return True
        if fault.delay:
            task.completion_delay = fault.delay
            return True
        return False

    def _apply(self, fault, link, task: ScsiTask, start: int) -> None:
        """An error status or a drop: the task is not run."""
        if fault.drop:
            link.close()
            return
        if fault.check is not None:
            self.lu.fail(task, fault.check)
        else:
            task.status = fault.status
            task.data_in = None
        self._complete(link, task, start)

    def _complete(self, link, task: ScsiTask, start: int) -> None:
        """Send the task's status (now, or after a delay rule's time)."""
        delay = task.completion_delay
        if delay:
            task.completion_delay = 0.0
            self.loop.call_later(delay, self._complete_later, link, task, start)
            return
        link.conn.complete(task)
        if self.tracer is not None:
            self.tracer.record(link.conn.peer, task, start, time.perf_counter_ns())

    def _complete_later(self, link, task: ScsiTask, start: int) -> None:
        if not link.closed:
            self._complete(link, task, start)
            link.flush()

    # --- running ------------------------------------------------------------------------

    def pump(self, current=None) -> None:
        """Start every task the task set lets start; flush the links that got output
        (except `current`, the link whose receive loop is running and flushes itself)."""
        if self._pumping:
            return
        ts = self.taskset
        if not ts.members and not self._dirty:
            return  # an empty task set starts nothing (the idle fast path ran its task)
        self._pumping = True
        loop = self.loop
        execute = self.lu.execute
        sanitize = self.lu.sanitize
        try:
            while (task := ts.dispatch(loop.time())) is not None:
                execute(task)
                if task.io is not None:
                    self._offload(task, self._io_finished)
                    continue
                if (task.deferred or sanitize.active is not None) \
                        and self._background(task, *task.shell):
                    task.shell = None
                    ts.done(task, loop.time())
                    continue
                self._service(task)
        finally:
            self._pumping = False
        self._flush_dirty(current)

    def _service(self, task: ScsiTask) -> None:
        """The task has done its work: complete it now, or after the disk model's time."""
        delay = self.taskset.service_time(task)
        if delay > 0:
            self.loop.call_later(delay, self._finish_later, task)
        else:
            self._finish(task)

    # --- medium access on worker threads ---------------------------------------------------

    def _offload(self, task: ScsiTask, then) -> None:
        """Run task.io on a worker thread; then(task) on the loop once the LU finished it."""
        io = self.io
        io.offloaded += 1
        io.in_flight += 1
        if io.in_flight > io.max_in_flight:
            io.max_in_flight = io.in_flight
        self._workers().submit(self._perform, task, then)

    def _workers(self):
        """The LU's worker threads (made at first use; a LU that runs its store on the loop
        gets a few for medium-delay faults)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self.io.threads or FORCED_IO_THREADS,
                                                thread_name_prefix=f"lun{self.lu.lun}-io")
        return self._executor

    def _perform(self, task: ScsiTask, then) -> None:
        """On a worker thread: the medium access (after a slow medium's delay)."""
        if task.medium_delay:
            time.sleep(task.medium_delay)
        error = self.lu.perform_io(task)
        self.loop.call_soon_threadsafe(self._io_done, task, error, then)

    def _io_done(self, task: ScsiTask, error: Exception | None, then) -> None:
        self.io.in_flight -= 1
        self.lu.complete_io(task, error)
        then(task)

    def _io_finished(self, task: ScsiTask) -> None:
        self._service(task)
        self.pump()
        self._flush_dirty()

    def close(self) -> None:
        """Wait for the medium accesses in flight (their completions are then dropped)."""
        executor, self._executor = self._executor, None
        if isinstance(executor, ThreadPoolExecutor):  # ours, or a pool handed in
            executor.shutdown(wait=True)

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
        """One step of the background operation, on the loop or on a worker thread."""
        sanitize = self.lu.sanitize
        if self.lu.inline_io:
            self._advanced(sanitize.advance())
            return
        step = sanitize.next_step()
        if step is None:
            self._advanced(None)
            return
        op, budget = step
        self._workers().submit(self._step, op, budget)

    def _step(self, op, budget: int) -> None:
        """On a worker thread: one step of a sanitize operation's store calls."""
        before = op.done
        try:
            outcome: bool | Exception = op.step(budget)
        except Exception as exc:
            outcome = exc
        self.loop.call_soon_threadsafe(self._stepped, op, before, outcome)

    def _stepped(self, op, before: int, outcome) -> None:
        self._advanced(self.lu.sanitize.stepped(op, before, outcome))

    def _advanced(self, delay: float | None) -> None:
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

    # --- completing ------------------------------------------------------------------------

    def _finish(self, task: ScsiTask) -> None:
        link, start = task.shell
        task.shell = None
        aborted = self.taskset.done(task, self.loop.time())
        if aborted or link.closed:
            return
        if task.completion_delay:  # a delay rule: its status goes later
            self._complete(link, task, start)
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
