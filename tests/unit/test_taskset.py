"""The task set's ordering rules (SAM-5 8.6 task attributes, SPC-4 7.5.8 queue algorithm
modifier), its bypass, TASK SET FULL and aborts, checked against random schedules.

The task set runs without its idle fast path here (idle_fast_path=False) so every task
is queued and the rules are exercised; the server uses the fast path only when the LU has
no disk model and nothing queued, where no rule can apply.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from target.scsi.disk import DISK_COMMANDS
from target.scsi.elevator import DiskModel
from target.scsi.task import Nexus, ScsiTask, Status, TaskAttr
from target.scsi.taskset import Queueing, TaskSet

pytestmark = pytest.mark.unit

NEXUS = Nexus("iqn.2026-11.test:i,i,0x1", "iqn.2026-11.test:t,t,0x1")
SIMPLE, ORDERED, HOQ = TaskAttr.SIMPLE, TaskAttr.ORDERED, TaskAttr.HEAD_OF_QUEUE


def rw(op: int, lba: int, blocks: int, attr: int = SIMPLE, tag: int = 0) -> ScsiTask:
    cdb = struct.pack(">BBIBHB", op, 0, lba, 0, blocks, 0)
    return ScsiTask(NEXUS, 0, cdb, tag, attr)


def read(lba: int, blocks: int = 8, attr: int = SIMPLE, tag: int = 0) -> ScsiTask:
    return rw(0x28, lba, blocks, attr, tag)


def write(lba: int, blocks: int = 8, attr: int = SIMPLE, tag: int = 0) -> ScsiTask:
    return rw(0x2A, lba, blocks, attr, tag)


def plain(opcode: int, attr: int = SIMPLE) -> ScsiTask:
    cdb = bytes([opcode]) + bytes(5 if opcode < 0x20 else 9)
    return ScsiTask(NEXUS, 0, cdb, 0, attr)


def drain(ts: TaskSet) -> list[ScsiTask]:
    out = []
    while (t := ts.dispatch()) is not None:
        out.append(t)
        ts.done(t)
    return out


def test_simple_reads_are_served_by_the_elevator():
    ts = TaskSet(commands=DISK_COMMANDS, idle_fast_path=False, depth=1, deadline=None)
    tasks = [read(lba) for lba in (500, 100, 900, 300)]
    for t in tasks:
        assert ts.submit(t)
    first = ts.dispatch()
    ts.done(first)
    # C-SCAN from head 0: the first task dispatched is the lowest LBA, then ascending.
    assert [first, *drain(ts)] == [tasks[1], tasks[3], tasks[0], tasks[2]]


def test_fifo_policy_keeps_arrival_order():
    ts = TaskSet(commands=DISK_COMMANDS, idle_fast_path=False, policy="fifo")
    tasks = [read(lba) for lba in (500, 100, 900, 300)]
    for t in tasks:
        ts.submit(t)
    assert drain(ts) == tasks


def test_ordered_task_is_a_barrier():
    """SAM-5 8.6.2: an ORDERED task starts after every older task completed, and no newer
    SIMPLE task starts before it completes."""
    ts = TaskSet(commands=DISK_COMMANDS, idle_fast_path=False, depth=8)
    a, b = read(900), read(800)
    o = write(5000, attr=ORDERED)
    c = read(10)
    for t in (a, b, o, c):
        ts.submit(t)
    started = [ts.dispatch(), ts.dispatch(), ts.dispatch()]
    assert set(started) == {a, b, None}
    ts.done(a)
    assert ts.dispatch() is None  # o still waits for b
    ts.done(b)
    assert ts.dispatch() is o
    assert ts.dispatch() is None  # c waits for o
    ts.done(o)
    assert ts.dispatch() is c


def test_aborting_the_newest_ordered_task_keeps_the_older_barrier():
    """A SIMPLE task waits for the newest ORDERED task, which waits for the older ones;
    aborting the newest must not let the SIMPLE task pass the older ORDERED one."""
    ts = TaskSet(commands=DISK_COMMANDS, idle_fast_path=False, depth=4)
    first = read(1)
    o1, o2 = read(2, attr=ORDERED), read(3, attr=ORDERED)
    s = read(4)
    for t in (first, o1, o2, s):
        ts.submit(t)
    assert ts.dispatch() is first
    assert ts.discard(o2) is True
    assert ts.dispatch() is None  # s still waits for o1, which waits for `first`
    ts.done(first)
    assert ts.dispatch() is o1
    assert ts.dispatch() is None
    ts.done(o1)
    assert ts.dispatch() is s


def test_head_of_queue_goes_first_newest_first():
    ts = TaskSet(commands=DISK_COMMANDS, idle_fast_path=False, depth=1)
    a = read(10)
    ts.submit(a)
    h1, h2 = plain(0x00, HOQ), plain(0x25, HOQ)  # TEST UNIT READY, READ CAPACITY(10)
    ts.submit(h1)
    ts.submit(h2)
    assert drain(ts) == [h2, h1, a]


def test_qam0_overlapping_write_keeps_its_order_and_qam1_lets_it_go():
    """SPC-4 7.5.8: with QAM=0 the device server keeps data integrity: a read of blocks an
    older write covers waits for the write; with QAM=1 only task attributes order tasks."""
    ts = TaskSet(commands=DISK_COMMANDS, idle_fast_path=False, depth=1, deadline=None)
    ts.submit(write(1000, 16))
    ts.submit(read(0))
    later = read(1008, 8)  # overlaps the write; the elevator alone would serve it second
    ts.submit(later)
    order = drain(ts)
    assert order.index(later) > 0 and order[0].cdb[0] == 0x28 and order[1].cdb[0] == 0x2A


def test_inquiry_report_luns_request_sense_are_never_queued():
    ts = TaskSet(commands=DISK_COMMANDS, idle_fast_path=False, depth=1)
    ts.submit(read(5))
    for opcode in (0x12, 0xA0, 0x03):
        t = plain(opcode)
        assert ts.submit(t) is False and t.status == Status.GOOD
    assert len(ts) == 1


def test_task_set_full_beyond_the_queue_limit():
    """SAM-5 5.3.3: TASK SET FULL when the task set cannot take another task."""
    ts = TaskSet(commands=DISK_COMMANDS, idle_fast_path=False, queue_limit=2)
    assert ts.submit(read(1)) and ts.submit(read(2))
    t = read(3)
    assert ts.submit(t) is False and t.status == Status.TASK_SET_FULL
    assert ts.stats.task_set_full == 1


def test_discard_releases_waiting_tasks_and_running_ones_are_marked():
    ts = TaskSet(commands=DISK_COMMANDS, idle_fast_path=False, depth=1)
    o = write(0, attr=ORDERED)
    later = read(50)
    ts.submit(o)
    ts.submit(later)
    assert ts.discard(o) is True
    assert drain(ts) == [later]
    running = read(7)
    ts.submit(running)
    assert ts.dispatch() is running
    assert ts.discard(running) is False  # already running: marked, slot kept
    assert ts.dispatch() is None
    assert ts.done(running) is True  # aborted: its completion is not reported
    assert len(ts) == 0


def test_idle_fast_path_and_model_service_time():
    ts = TaskSet(commands=DISK_COMMANDS)
    assert ts.submit(read(1)) is False and ts.stats.direct == 1
    model = DiskModel(capacity_blocks=1 << 21)
    ts = TaskSet(commands=DISK_COMMANDS, model=model, depth=1)
    t = read(1 << 20)
    assert ts.submit(t) is True
    assert ts.dispatch() is t
    assert ts.service_time(t) == pytest.approx(model.service_time(0, 1 << 20, 8))


# --- random schedules ---------------------------------------------------------------------

op_strategy = st.one_of(
    st.tuples(st.just("submit"), st.sampled_from(["read", "write", "tur", "modesel"]),
              st.integers(0, 63), st.integers(1, 8),
              st.sampled_from([SIMPLE, SIMPLE, SIMPLE, ORDERED, HOQ])),
    st.tuples(st.just("dispatch")),
    st.tuples(st.just("done"), st.integers(0, 1000)),
    st.tuples(st.just("abort"), st.integers(0, 1000)),
)


def make(kind: str, lba: int, blocks: int, attr: int) -> ScsiTask:
    if kind == "read":
        return read(lba, blocks, attr)
    if kind == "write":
        return write(lba, blocks, attr)
    if kind == "tur":
        return plain(0x00, attr)
    cdb = bytes([0x15, 0x10, 0, 0, 0, 0])  # MODE SELECT(6): changes the LU, no range
    return ScsiTask(NEXUS, 0, cdb, 0, attr)


def extent(t: ScsiTask) -> tuple[int, int, bool] | None:
    if t.cdb[0] in (0x28, 0x2A):
        lba, blocks = struct.unpack_from(">I", t.cdb, 2)[0], struct.unpack_from(">H", t.cdb, 7)[0]
        return lba, lba + blocks, t.cdb[0] == 0x2A
    if t.cdb[0] == 0x15:
        return 0, 1 << 62, True
    return None


def must_wait(older: ScsiTask, newer: ScsiTask) -> bool:
    """Whether SAM/SPC (QAM=0) forbid `newer` to start before `older` completes."""
    if newer.attr == HOQ:
        return False
    if newer.attr == ORDERED or older.attr in (ORDERED, HOQ):
        return True
    a, b = extent(older), extent(newer)
    if a is None or b is None:
        return False
    return (a[2] or b[2]) and a[0] < b[1] and b[0] < a[1]


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(op_strategy, max_size=80), depth=st.integers(1, 4),
       policy=st.sampled_from(["fifo", "disksort"]))
def test_random_schedules_keep_sam_ordering_and_serve_each_task_once(ops, depth, policy):
    ts = TaskSet(commands=DISK_COMMANDS, idle_fast_path=False, depth=depth, policy=policy,
                 max_passes=3)
    arrival: list[ScsiTask] = []      # queued tasks in arrival order
    completed: set[int] = set()       # ids of completed or aborted tasks
    started: list[ScsiTask] = []
    running: list[ScsiTask] = []

    def check_start(t: ScsiTask) -> None:
        assert id(t) not in {id(s) for s in started}, "a task started twice"
        for older in arrival[:arrival.index(t)]:
            if id(older) not in completed and must_wait(older, t):
                raise AssertionError(f"{t} started before older {older}")
        started.append(t)

    def do_dispatch() -> None:
        t = ts.dispatch()
        if t is not None:
            check_start(t)
            running.append(t)
            assert len(running) <= depth

    for op in ops:
        if op[0] == "submit":
            t = make(*op[1:])
            if ts.submit(t):
                arrival.append(t)
        elif op[0] == "dispatch":
            do_dispatch()
        elif op[0] == "done" and running:
            t = running.pop(op[1] % len(running))
            assert ts.done(t) is False
            completed.add(id(t))
        elif op[0] == "abort" and arrival:
            t = arrival[op[1] % len(arrival)]
            if id(t) not in completed and t not in running:
                assert ts.discard(t) is True
                completed.add(id(t))
    # drain: every queued task starts exactly once
    while running or len(ts):
        t = ts.dispatch()
        if t is not None:
            check_start(t)
            running.append(t)
            continue
        assert running, "tasks left that can never start"
        t = running.pop(0)
        ts.done(t)
        completed.add(id(t))
    assert all(id(t) in completed for t in arrival)
    assert len({id(t) for t in started}) == len(started)


def test_aca_task_is_refused_with_invalid_message_error():
    """This device server never establishes an ACA condition (NACA=1 is refused), so a
    task with the ACA attribute is an error (SAM-5 8.6.5): CHECK CONDITION, ILLEGAL
    REQUEST, INVALID MESSAGE ERROR (49h/00h). It is not queued."""
    from target.backing.memory import MemoryStore
    from target.scsi.lu import LogicalUnit

    lu = LogicalUnit(0, MemoryStore(1 << 20), DISK_COMMANDS,
                     queueing=Queueing(idle_fast_path=False))
    lu.ua.clear(NEXUS)  # a known nexus with nothing pending
    t = read(0, attr=TaskAttr.ACA)
    assert lu.taskset.submit(t) is False
    lu.execute(t)
    assert t.status == Status.CHECK_CONDITION
    assert t.sense[2] & 0x0F == 0x05 and t.sense[12:14] == b"\x49\x00"
