"""Test doubles for the asyncio shell, so the real Dispatcher and Connection run in-process
under the test's control: a loop whose time and callbacks the test advances, worker
threads whose jobs the test runs one at a time in the order it chooses, and a link that
keeps a connection's output until the test takes it (a peer that has not read it yet).

Only unit tests use these; the product's shell is target.shell.server and target.shell.dispatch.
"""

from __future__ import annotations

import heapq
import itertools
import struct
from collections import deque
from types import SimpleNamespace

from target.iscsi import pdu
from target.iscsi.connection import Connection
from target.iscsi.events import TaskSetChanged, TasksReady
from target.iscsi.pdu import Bhs, Op
from target.iscsi.session import Session, SessionParams, SessionRegistry
from target.scsi.device import ScsiDevice
from target.shell.dispatch import Dispatcher, pump_all, run_ready


def execute_delivered(conn: Connection, device: ScsiDevice) -> None:
    """Execute what a connection delivered (its TasksReady events), with no task set: a
    task whose Data-Out is still arriving (data_pending) runs when it comes back in the
    event's data_in, and those (admitted earlier) before the newly admitted ones."""
    while (event := conn.next_event()) is not None:
        if not isinstance(event, TasksReady):
            continue
        while event.data_in or event.tasks:
            task = (event.data_in or event.tasks).popleft()
            if task.data_pending:
                continue
            device.execute(task)
            conn.complete(task)


class FakeLoop:
    """time(), call_soon(), call_soon_threadsafe(), call_later(): nothing runs until the
    test calls run() or advance()."""

    def __init__(self) -> None:
        self.now = 0.0
        self.ready: deque = deque()
        self.timers: list = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_soon(self, cb, *args) -> None:
        self.ready.append((cb, args))

    call_soon_threadsafe = call_soon

    def call_later(self, delay: float, cb, *args) -> None:
        heapq.heappush(self.timers, (self.now + delay, next(self._seq), cb, args))

    def run(self) -> None:
        """Run the callbacks that are ready (and those they make ready)."""
        while self.ready:
            cb, args = self.ready.popleft()
            cb(*args)

    def advance(self, seconds: float) -> None:
        """Move the clock on, firing the timers that fall due, in order."""
        end = self.now + seconds
        while self.timers and self.timers[0][0] <= end:
            when, _, cb, args = heapq.heappop(self.timers)
            self.now = max(self.now, when)
            cb(*args)
            self.run()
        self.now = end
        self.run()


class FakeWorkers:
    """The executor a Dispatcher submits medium accesses to; run(i) does job i now (its
    completion is then posted to the loop, as a worker thread's would be)."""

    def __init__(self) -> None:
        self.jobs: list = []

    def submit(self, fn, *args) -> None:
        self.jobs.append((fn, args))

    def run(self, index: int = 0) -> None:
        fn, args = self.jobs.pop(index)
        fn(*args)

    def run_all(self, loop: FakeLoop) -> None:
        while self.jobs:
            self.run(0)
            loop.run()


class FakeLink:
    """A Link without a socket: feed() is a receive burst, take() what the peer reads."""

    def __init__(self, portal, peer: str, dispatchers: dict, loop: FakeLoop) -> None:
        self.conn = Connection(portal, "127.0.0.1:3260", peer, wakeup=self._wakeup)
        self.dispatchers = dispatchers
        self.loop = loop
        self.closed = False

    def feed(self, data: bytes) -> None:
        """A receive burst, then its events handled as target.shell.server's Link does."""
        self.conn.receive_data(data)
        while (event := self.conn.next_event()) is not None:
            if type(event) is TasksReady:
                run_ready(self, event, self.dispatchers)
            elif type(event) is TaskSetChanged:
                pump_all(self, self.dispatchers)

    def flush(self) -> None:
        """The output stays queued until take(): a peer slow to read."""

    def _wakeup(self) -> None:
        self.loop.call_soon(self._on_wakeup)

    def _on_wakeup(self) -> None:
        while (event := self.conn.next_event()) is not None:
            if type(event) is TaskSetChanged:
                pump_all(self, self.dispatchers)
            elif type(event) is TasksReady and not self.closed:
                run_ready(self, event, self.dispatchers)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.conn.connection_lost()
            while (event := self.conn.next_event()) is not None:
                if type(event) is TaskSetChanged:
                    self.loop.call_soon(pump_all, self, self.dispatchers)

    def take(self) -> list[tuple[Bhs, bytes]]:
        """The PDUs sent so far (no digests), decoded."""
        raw = b"".join(bytes(b) for b in self.conn.data_to_send())
        out, pos = [], 0
        while pos < len(raw):
            bhs = Bhs(raw[pos:pos + 48])
            pos += 48
            out.append((bhs, raw[pos:pos + bhs.dsl]))
            pos += bhs.dsl + pdu.pad_len(bhs.dsl)
        return out


class Initiator:
    """PDUs of one session (CmdSN, ITT) in full feature phase on a FakeLink."""

    def __init__(self, shell: Shell, number: int, **params) -> None:
        portal = shell.portal
        self.link = FakeLink(portal, f"initiator-{number}", shell.dispatchers, shell.loop)
        self.conn = self.link.conn
        p = SessionParams(initiator_name=f"iqn.2026-12.local.test:i{number}",
                          target_name=shell.device.name, isid=0x400000000000 + number,
                          tsih=number, immediate_data=True, first_burst_length=262144,
                          max_burst_length=262144, max_recv_data_segment_length=262144)
        for k, v in params.items():
            setattr(p, k, v)
        self.session = Session(p, shell.device, exp_cmdsn=1)
        portal.registry.add(self.session)
        self.conn.enter_full_feature(self.session, 1)
        self.cmdsn = 1
        self.itt = 1
        self.immediate_data = p.immediate_data
        self.out_data: dict[int, bytes] = {}  # ITT -> write data not sent with the command
        self.r2ts: list[bytes] = []           # Data-Out PDUs answering R2Ts, not yet sent
        for lu in shell.device.luns.values():
            lu.ua.clear(self.conn.nexus)  # a known nexus, nothing pending

    def command(self, cdb: bytes, *, lun: int = 0, read: int = 0, data: bytes = b"",
                attr: int = 1) -> tuple[int, bytes]:
        """(ITT, the PDU bytes) of a SCSI Command with its data immediate, or (ImmediateData
        =No) with none: the target then asks for it with R2Ts (answered by take())."""
        itt, self.itt = self.itt, self.itt + 1
        flags = (pdu.F_FINAL | (pdu.F_READ if read else 0) | (pdu.F_WRITE if data else 0)
                 | attr)
        immediate = data if self.immediate_data else b""
        if data and not self.immediate_data:
            self.out_data[itt] = data
        hdr = pdu.scsi_command(flags=flags, dsl=len(immediate),
                               lun=bytes((0, lun, 0, 0, 0, 0, 0, 0)), itt=itt,
                               edtl=read or len(data), cmdsn=self.cmdsn, exp_statsn=0, cdb=cdb)
        self.cmdsn += 1
        return itt, hdr + immediate + pdu.padding(len(immediate))

    def send(self, cdb: bytes, **kw) -> int:
        itt, raw = self.command(cdb, **kw)
        self.link.feed(raw)
        return itt

    def tmf(self, function: int, *, ref_itt: int = 0xFFFFFFFF, lun: int = 0) -> None:
        itt, self.itt = self.itt, self.itt + 1
        self.link.feed(pdu.task_management_request(
            immediate=True, function=function, lun=bytes((0, lun, 0, 0, 0, 0, 0, 0)), itt=itt,
            referenced_task_tag=ref_itt, cmdsn=self.cmdsn, exp_statsn=0,
            ref_cmdsn=self.cmdsn - 1))

    def responses(self) -> dict[int, tuple[int, bytes, bytes]]:
        """ITT -> (status, Data-In bytes, sense) of every command answered since last time."""
        done: dict[int, tuple[int, bytes, bytes]] = {}
        data: dict[int, bytearray] = {}
        for bhs, payload in self.link.take():
            if bhs.opcode == Op.R2T:  # Data-Out for it, sent by the test when it likes
                out = self.out_data[bhs.itt]
                offset, length = bhs.buffer_offset, bhs.desired_length
                self.r2ts.append(pdu.data_out(final=True, dsl=length, lun=bhs.lun, itt=bhs.itt,
                                              ttt=bhs.ttt, exp_statsn=0, datasn=0,
                                              buffer_offset=offset)
                                 + out[offset:offset + length] + pdu.padding(length))
                continue
            if bhs.opcode == Op.DATA_IN:
                buf = data.setdefault(bhs.itt, bytearray())
                buf[bhs.buffer_offset:bhs.buffer_offset + len(payload)] = payload
                if bhs.flags & pdu.F_STATUS:
                    done[bhs.itt] = (bhs.b3, bytes(data.pop(bhs.itt)), b"")
            elif bhs.opcode == Op.SCSI_RESPONSE:
                sense = b""
                if len(payload) >= 2:
                    sense = payload[2:2 + struct.unpack_from(">H", payload)[0]]
                done[bhs.itt] = (bhs.b3, bytes(data.pop(bhs.itt, b"")), sense)
            elif bhs.opcode == Op.TASK_MGMT_RESPONSE:
                done[bhs.itt] = (bhs.b2, b"", b"")
        return done


class Shell:
    """A SCSI device with its LUs' Dispatchers on a FakeLoop; `workers` run the medium
    access of every LU (offloaded, whatever its store, unless inline_luns names it)."""

    def __init__(self, lus, *, inline_luns=(), tracer=None) -> None:
        self.loop = FakeLoop()
        self.workers = FakeWorkers()
        self.device = ScsiDevice("iqn.2026-12.local.test:t", lus)
        self.portal = SimpleNamespace(max_recv_data_segment_length=262144,
                                      registry=SessionRegistry())
        self.dispatchers = {}
        for lu in lus:
            if lu.lun in inline_luns:
                lu.io_threads = 0
                self.dispatchers[lu] = Dispatcher(self.loop, lu, tracer)
            else:
                self.dispatchers[lu] = Dispatcher(self.loop, lu, tracer, executor=self.workers)

    def initiator(self, number: int, **params) -> Initiator:
        return Initiator(self, number, **params)
