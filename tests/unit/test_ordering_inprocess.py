"""The ordering checker in-process: random concurrent workloads through the real iSCSI
connections, dispatchers, task sets and SBC handlers, checked against the task-set rules
by the ordering oracle (target.testing.ordering, with strong knowledge: the order commands
were delivered for execution, which is the order they must take in the task set, RFC 7143
3.2.2.1, and when each completed).

Hypothesis chooses the workload (several sessions; three LUs: a thin memory LU and a file
LU whose medium access runs on "worker threads", and a memory LU served on the loop;
SIMPLE, ORDERED and HEAD OF QUEUE tasks; READ, WRITE, WRITE SAME, UNMAP, COMPARE AND
WRITE, WRITE ATOMIC on a few hot blocks; QAM 0 or 1 per LU; one session sending its write
data only when asked by R2Ts) and the schedule: how the
sessions' byte streams are cut into receive bursts, in which order the workers' medium
accesses run and their completions reach the loop, and when each peer reads its
responses (a READ's Data-In may wait in the send queue while later commands run: the
defect of issue 11). Every read must show, for each block, a writer the rules allow, and
COMPARE AND WRITE / WRITE ATOMIC all or nothing (SAM-5 8.6, SPC-4 7.5.8, SBC-4 5.3, 4.29).

The checker can fail: the same search finds the violations of the two defects of 180a2fc,
a memory store that returns live views of its pages and a connection that hands a WRITE
to the task set only once its R2T data is in, and of a task set without the QAM=0 overlap
rule.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

from target.backing.file import FileStore
from target.backing.memory import MemoryStore
from target.scsi.disk import make_disk
from target.testing import cdb as C
from target.testing import ordering as o
from tests.unit.shell_util import Shell

pytestmark = pytest.mark.unit

BS = 512
HOT = 8                # blocks the workload works on, per LU
KINDS = (o.READ, o.READ, o.WRITE, o.WRITE, o.WRITE_SAME, o.UNMAP, o.COMPARE_AND_WRITE,
         o.WRITE_ATOMIC)
ATTRS = (o.SIMPLE, o.SIMPLE, o.SIMPLE, o.ORDERED, o.HEAD_OF_QUEUE)
_IMAGES = itertools.count(1)


class LiveViewStore(MemoryStore):
    """The memory store as it was at 180a2fc: read() hands out a view of the pages."""

    def read(self, offset: int, length: int):
        return self._view[offset:offset + length]


@dataclass
class Planned:
    id: int
    session: int
    lun: int
    kind: str
    lba: int
    blocks: int
    attr: int
    unmap_bit: bool = False


@dataclass
class Plan:
    sessions: int
    qam: dict[int, int]
    ops: list[Planned]
    choices: list[int] = field(default_factory=list)


@st.composite
def plans(draw) -> Plan:
    sessions = draw(st.integers(1, 3))
    qam = {lun: draw(st.sampled_from((0, 0, 1))) for lun in (0, 1, 2)}
    ops = []
    for i in range(draw(st.integers(2, 14))):
        kind = draw(st.sampled_from(KINDS))
        lun = draw(st.sampled_from((0, 1, 2)))
        if kind == o.UNMAP:
            lun = 0  # the thin LU: UNMAP exists only there (SBC-4 4.7.3.1)
        lba = draw(st.integers(0, HOT - 1))
        blocks = draw(st.integers(1, min(3, HOT - lba)))
        ops.append(Planned(i + 1, draw(st.integers(0, sessions - 1)), lun, kind, lba, blocks,
                           draw(st.sampled_from(ATTRS)),
                           kind == o.WRITE_SAME and lun == 0 and draw(st.booleans())))
    choices = draw(st.lists(st.integers(0, 255), min_size=20, max_size=120))
    return Plan(sessions, qam, ops, choices)


class Run:
    """One plan driven through the in-process shell; history() is what the oracle checks."""

    def __init__(self, plan: Plan, tmp, store_class=MemoryStore) -> None:
        self.plan = plan
        self.image = tmp / f"lun1-{next(_IMAGES)}.img"  # a new, empty image every run
        self.image.unlink(missing_ok=True)
        self.lus = [make_disk(0, store_class(1 << 20), thin=True),
                    make_disk(1, FileStore(self.image, size=1 << 20, create=True)),
                    make_disk(2, store_class(1 << 20))]
        for lu in self.lus:
            lu.mode.qam = plan.qam[lu.lun]
        self.shell = Shell(self.lus, inline_luns=(2,))
        # The last session sends write data only when asked (R2T, ImmediateData=No), so its
        # WRITEs sit in the task set waiting for their data while newer commands arrive.
        self.inis = [self.shell.initiator(n + 1, immediate_data=n == 0 or n + 1 < plan.sessions,
                                          max_burst_length=BS, max_outstanding_r2t=4)
                     for n in range(plan.sessions)]
        self.clock = itertools.count(1)
        self.entered: dict[tuple[int, int], int] = {}
        self.completed: dict[tuple[int, int], int] = {}
        self.itt: dict[int, tuple[int, int]] = {}      # op id -> (session, ITT)
        self.results: dict[int, tuple[int, bytes, bytes]] = {}
        self.sent_data: dict[int, bytes] = {}
        self._hook()
        self.queues = [[p for p in plan.ops if p.session == s] for s in range(plan.sessions)]
        self.order = {p.id: n for s in self.queues for n, p in enumerate(s)}
        self.last_written: dict[tuple[int, int], object] = {}

    def _hook(self) -> None:
        """Strong knowledge: when each command is delivered for execution (admitted in
        CmdSN order, RFC 7143 3.2.2.1: what enters the LU's task set, in that order) and
        when it completes."""
        for n, ini in enumerate(self.inis):
            start = ini.conn._start_command
            complete = ini.conn.complete

            def admitted(cmd, _start=start, _n=n):
                self.entered.setdefault((_n, cmd.itt), next(self.clock))
                _start(cmd)

            def completing(task, _complete=complete, _n=n):
                self.completed.setdefault((_n, task.tag), next(self.clock))
                _complete(task)

            ini.conn._start_command = admitted
            ini.conn.complete = completing

    def _command(self, p: Planned) -> bytes:
        """The PDU of one planned command; written blocks are unique tags (oracle)."""
        ini = self.inis[p.session]
        kind = p.kind
        if kind == o.READ:
            itt, raw = ini.command(C.read10(p.lba, p.blocks), lun=p.lun, read=p.blocks * BS,
                                   attr=p.attr)
        elif kind in (o.WRITE, o.WRITE_ATOMIC):
            data = b"".join(o.encode_block(p.id, p.lba + i, BS) for i in range(p.blocks))
            c = C.write10(p.lba, p.blocks) if kind == o.WRITE else C.write_atomic16(p.lba,
                                                                                 p.blocks)
            itt, raw = ini.command(c, lun=p.lun, data=data, attr=p.attr)
        elif kind == o.WRITE_SAME:
            data = bytes(BS) if p.unmap_bit else o.encode_block(p.id, p.lba, BS)
            itt, raw = ini.command(C.write_same10(p.lba, p.blocks, unmap=p.unmap_bit),
                                   lun=p.lun, data=data, attr=p.attr)
        elif kind == o.UNMAP:
            c, params = C.unmap([(p.lba, p.blocks)])
            itt, raw = ini.command(c, lun=p.lun, data=params, attr=p.attr)
        else:  # COMPARE AND WRITE: verify what this plan last wrote there (or zeros)
            verify = b"".join(self._last(p.lun, p.lba + i) for i in range(p.blocks))
            self.sent_data[p.id] = verify
            new = b"".join(o.encode_block(p.id, p.lba + i, BS) for i in range(p.blocks))
            itt, raw = ini.command(C.compare_and_write(p.lba, p.blocks), lun=p.lun,
                                   data=verify + new, attr=p.attr)
        self.itt[p.id] = (p.session, itt)
        if kind in o.WRITING:
            for i in range(p.blocks):
                self.last_written[(p.lun, p.lba + i)] = (p.id, p.lba + (0 if kind ==
                                                                       o.WRITE_SAME else i))
        return raw

    def _last(self, lun: int, lba: int) -> bytes:
        w = self.last_written.get((lun, lba))
        return bytes(BS) if w is None else o.encode_block(w[0], w[1], BS)

    def drive(self) -> None:
        choices = iter(self.plan.choices)
        shell = self.shell

        def choose(n: int) -> int:
            return next(choices, 0) % n

        while True:
            actions = []
            if any(self.queues):
                actions.append("send")
            if shell.workers.jobs:
                actions.append("work")
            if shell.loop.ready:
                actions.append("loop")
            if any(ini.conn.has_output for ini in self.inis):
                actions.append("take")
            if any(ini.r2ts for ini in self.inis):
                actions.append("data")
            if not actions:
                break
            action = actions[choose(len(actions))]
            if action == "send":
                waiting = [s for s, q in enumerate(self.queues) if q]
                s = waiting[choose(len(waiting))]
                count = 1 + choose(min(3, len(self.queues[s])))
                self.send(s, count, [choose(1 << 16) for _ in range(choose(3))])
            elif action == "work":
                shell.workers.run(choose(len(shell.workers.jobs)))
            elif action == "loop":
                shell.loop.run()
            elif action == "data":
                answering = [ini for ini in self.inis if ini.r2ts]
                ini = answering[choose(len(answering))]
                pdus = ini.r2ts[:1 + choose(len(ini.r2ts))]
                del ini.r2ts[:len(pdus)]
                ini.link.feed(b"".join(pdus))
            else:
                talking = [n for n, ini in enumerate(self.inis) if ini.conn.has_output]
                self.take(talking[choose(len(talking))])
        for n in range(len(self.inis)):
            self.take(n)
        if any(ini.r2ts for ini in self.inis):  # data the schedule had not sent yet
            for ini in self.inis:
                ini.link.feed(b"".join(ini.r2ts))
                ini.r2ts.clear()
            self.shell.workers.run_all(self.shell.loop)
            self.drive()

    def send(self, s: int, count: int, cuts: list[int] = ()) -> None:
        """Session s sends its next `count` commands as one byte stream, fed to the target
        in pieces cut at the given offsets (modulo its length): its receive bursts."""
        burst = [self.queues[s].pop(0) for _ in range(count)]
        stream = b"".join(self._command(p) for p in burst)
        pos = 0
        for cut in [*sorted({c % len(stream) for c in cuts}), len(stream)]:
            if cut > pos:
                self.inis[s].link.feed(stream[pos:cut])
                pos = cut

    def take(self, n: int) -> None:
        """Session n's peer reads the responses sent so far."""
        for itt, result in self.inis[n].responses().items():
            self.results[(n, itt)] = result

    def history(self) -> list[o.Op]:
        ops = []
        for p in self.plan.ops:
            key = self.itt[p.id]
            status, data, sense = self.results.get(key, (None, b"", b""))
            kw = dict(lu=p.lun, session=p.session, order=self.order[p.id], attr=p.attr,
                      status=status, entered=self.entered.get(key),
                      completed=self.completed.get(key))
            if p.kind == o.READ:
                values = [o.decode_block(data[i * BS:(i + 1) * BS]) for i in range(p.blocks)]
                op = o.read(p.id, p.lba, values, **kw)
            elif p.kind in (o.WRITE, o.WRITE_ATOMIC):
                op = o.write(p.id, p.lba, p.blocks, kind=p.kind, **kw)
            elif p.kind == o.WRITE_SAME:
                op = o.write_same(p.id, p.lba, p.blocks, unmap=p.unmap_bit, **kw)
            elif p.kind == o.UNMAP:
                op = o.unmap(p.id, [(p.lba, p.blocks)], **kw)
            else:
                verify = self.sent_data[p.id]
                miscompare = status == 0x02 and len(sense) > 2 and sense[2] & 0x0F == 0x0E
                op = o.compare_and_write(
                    p.id, p.lba, [o.decode_block(verify[i * BS:(i + 1) * BS])
                                  for i in range(p.blocks)], miscompare=miscompare, **kw)
            ops.append(op)
        return ops

    def close(self) -> None:
        for lu in self.lus:
            lu.close()
        self.image.unlink(missing_ok=True)


def simulate(plan: Plan, tmp, store_class=MemoryStore) -> o.Report:
    run = Run(plan, tmp, store_class)
    try:
        run.drive()
        for p in plan.ops:  # every command got its status: nothing is aborted here
            assert run.itt[p.id] in run.results, f"op {p.id} never completed"
            status = run.results[run.itt[p.id]][0]
            assert status in (0x00, 0x02), f"op {p.id}: status {status:#x}"
        return o.check(run.history(), knowledge="strong", qam=plan.qam)
    finally:
        run.close()


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(plan=plans())
def test_every_read_shows_what_the_task_order_allows(plan, tmp_path):
    report = simulate(plan, tmp_path)
    assert report.ok, "\n".join(str(v) for v in report.violations)


def _finds_a_violation(tmp_path, store_class=MemoryStore) -> Plan:
    return find(plans(), lambda p: not simulate(p, tmp_path, store_class).ok,
                settings=settings(max_examples=2000, deadline=None, database=None,
                                  phases=[Phase.generate],  # the first one found will do
                                  suppress_health_check=list(HealthCheck)))


def test_the_checker_finds_a_store_that_hands_out_live_views(tmp_path):
    """The memory store of 180a2fc: a READ's Data-In still queued when a later WRITE of
    the same blocks runs shows the WRITE's data."""
    plan = _finds_a_violation(tmp_path, LiveViewStore)
    assert any(p.kind == o.READ for p in plan.ops) and any(p.kind in o.WRITING
                                                           for p in plan.ops)


def test_the_checker_finds_a_task_set_without_the_overlap_rule(tmp_path, monkeypatch):
    """A task set that lets overlapping tasks run side by side (no QAM=0 rule) lets a READ
    see a WRITE that arrived after it, or miss one before it."""
    from target.scsi.taskset import TaskSet

    monkeypatch.setattr(TaskSet, "_order_by_range", lambda self, e: None)
    _finds_a_violation(tmp_path)


def test_a_read_behind_a_write_in_one_burst_on_the_loop(tmp_path):
    """The defect itself, on the LU served on the loop: a WRITE, then READ X and WRITE X in
    one receive burst, the responses read afterwards: the READ shows the first WRITE's
    data (fails with the store of 180a2fc: forced-after, the second WRITE's data)."""
    ops = [Planned(1, 0, 2, o.WRITE, 0, 1, o.SIMPLE), Planned(2, 0, 2, o.READ, 0, 1, o.SIMPLE),
           Planned(3, 0, 2, o.WRITE, 0, 1, o.SIMPLE)]
    for store, ok in ((MemoryStore, True), (LiveViewStore, False)):
        run = Run(Plan(1, {0: 0, 1: 0, 2: 0}, ops), tmp_path, store)
        run.send(0, 1)
        run.take(0)
        run.send(0, 2)
        run.take(0)
        report = o.check(run.history(), knowledge="strong", qam=0)
        run.close()
        assert report.ok == ok, report.violations
        if not ok:
            assert {v.rule for v in report.violations} == {"forced-after"}


def test_the_checker_finds_writes_that_enter_the_task_set_after_their_data(tmp_path,
                                                                            monkeypatch):
    """The connection of 180a2fc handed a WRITE to the task set only once its R2T data was
    in, so newer commands overtook it (RFC 7143 3.2.2.1 delivers in CmdSN order)."""
    from target.iscsi.connection import Connection

    def queue(self, cmd):  # onto the ready queue, as Connection._start_command does
        if not cmd.queued:
            cmd.queued = True
            self.ready.append(cmd.task)

    def start_command(self, cmd):
        cmd.admitted = True
        if cmd.aborted:
            return
        if cmd.write and cmd.received < cmd.edtl:
            self._send_r2ts(cmd)
        else:
            queue(self, cmd)

    data_out = Connection._data_out

    def late_queue(self, bhs):
        cmd = self._cmds.get(bhs.itt)
        data_out(self, bhs)
        if cmd is not None and cmd.received >= cmd.edtl and cmd.admitted and not cmd.aborted:
            queue(self, cmd)

    monkeypatch.setattr(Connection, "_start_command", start_command)
    monkeypatch.setattr(Connection, "_data_out", late_queue)
    plan = _finds_a_violation(tmp_path)
    assert plan.sessions >= 2  # the R2T session's WRITE and another's newer command
