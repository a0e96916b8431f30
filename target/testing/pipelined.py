"""An asyncio iSCSI initiator with many commands in flight per session (RFC 7143), for tools
and tests that watch what a target does with pipelined, concurrent work.

Rules:
- One TCP connection per session (MaxConnections=1), ErrorRecoveryLevel=0, no digests.
  Login goes straight to the operational stage (6.3: the security stage may be skipped
  when no authentication is required) and on to full feature phase. The caller chooses
  the operational keys (ImmediateData, InitialR2T, FirstBurstLength, MaxBurstLength,
  MaxRecvDataSegmentLength, MaxOutstandingR2T, ...); the target's answers are what is used
  (13.10 InitialR2T: OR; 13.11 ImmediateData: AND; 13.13/13.14 burst lengths and 13.17
  MaxOutstandingR2T: the minimum, i.e. the answer; 13.12 MaxRecvDataSegmentLength is
  declared by each side for what it receives).
- CmdSN (3.2.2.1, 4.2.2.1): every non-immediate command takes the next CmdSN in the order
  submit() is called and is sent only while CmdSN <= MaxCmdSN; commands that do not fit
  wait, in order. ExpCmdSN and MaxCmdSN are taken from every PDU that carries them and
  ignored when MaxCmdSN < ExpCmdSN - 1 (serial arithmetic). TMFs, NOP-Outs and Logout are
  immediate: they carry the next CmdSN without taking it.
- Once the session has failed (a send or receive error, close()), PDUs still read from the
  socket are counted in `after_close` and not checked: their commands have ended already
  (a send can fail on ECONNRESET before the Data-In the target sent is parsed).
- Write data (4.2.5, 11.3.1, 11.7, 11.8): immediate data up to min(FirstBurstLength, the
  target's MaxRecvDataSegmentLength) when ImmediateData=Yes; with InitialR2T=No,
  unsolicited Data-Out (TTT FFFFFFFFh, DataSN from 0, F on the last) up to
  FirstBurstLength, and the command's F bit is 0 while unsolicited Data-Out follows; the
  rest only in answer to R2Ts: Data-Out PDUs of at most the target's
  MaxRecvDataSegmentLength, DataSN from 0 per R2T, F on the last, the R2T's TTT and
  offsets. Several R2Ts may be outstanding.
- What the target must do is checked and recorded in `target_errors` (the command then
  fails with TargetError where it cannot go on): an R2T beyond the EDTL or for a command
  without data to send, more than MaxOutstandingR2T outstanding R2Ts (an R2T counts until
  its last Data-Out has been handed to the kernel), Data-In beyond the EDTL, above our
  MaxRecvDataSegmentLength, a Data-In sequence above MaxBurstLength (13.13: it limits
  Data-In sequences too), DataSN out of order (11.7.3), StatSN out of order (4.2.2.2), a
  response for an unknown task, a PDU (SCSI Response, Data-In, R2T) for a task that has
  ended with its status (one of the last RECENT_ENDED; 11.4: a task ends with one SCSI
  Response, and nothing of it follows).
  `data_segment_limit` caps our own Data-Out segments below the target's
  MaxRecvDataSegmentLength, so unsolicited bursts come in several PDUs.
- Data-In (11.7) lands at its Buffer Offset. Status comes from the Data-In with S=1 or the
  SCSI Response (11.4) with its residual count and o/u flags (11.4.5) and sense (11.4.7:
  SenseLength, then the sense data).
- TMFs (11.5) are immediate. When one answers Function complete, the commands it covers
  (ABORT TASK: the referenced one; ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET: this
  session's on that LUN; target resets: all) that have no response yet end as aborted,
  without status: at ERL 0 the target sends none for them (11.5.1).
- A NOP-In with a TTT (a target ping, 11.19) is answered at once by a NOP-Out echoing it
  (immediate, ITT FFFFFFFFh). Logout (11.14) ends the session; a lost connection fails
  every command still waiting with SessionClosed.
- Output: every PDU goes through one FIFO, so the wire order is the order of submission.
  A segmenter (RandomSegmenter) cuts the byte stream into pieces, across PDU boundaries,
  with optional tiny pauses; burst() sends several commands (with their immediate and
  unsolicited data) in one socket write. TCP_NODELAY is set, so a write leaves as cut.
- Timing knowledge for ordering checks (target.testing.ordering): a command's `sent` is
  the clock read just before the send() that carries its first byte, and `done` the clock
  read when its status has been parsed. The clock is one process-wide, strictly increasing
  counter, and this module's code runs on one thread, so done(A) < sent(B) proves that
  A's status had arrived before B left: the target completed A before B reached it.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from target.iscsi import pdu
from target.iscsi.pdu import Bhs, Op, TmfFunction, TmfResponse
from target.scsi.task import TaskAttr, encode_lun

SIMPLE = TaskAttr.SIMPLE
ORDERED = TaskAttr.ORDERED
HEAD_OF_QUEUE = TaskAttr.HEAD_OF_QUEUE

RESERVED = pdu.RESERVED_TAG
_SENSE_LEN = struct.Struct(">H")
_RECV_CHUNK = 1 << 18
RECENT_ENDED = 4096  # ITTs of tasks that ended with a status, remembered for duplicates
_STATUS_PDUS = frozenset({Op.SCSI_RESPONSE, Op.TASK_MGMT_RESPONSE, Op.LOGOUT_RESPONSE,
                          Op.TEXT_RESPONSE, Op.REJECT, Op.ASYNC_MESSAGE})
_WINDOW_PDUS = frozenset({Op.SCSI_RESPONSE, Op.DATA_IN, Op.R2T, Op.NOP_IN,
                          Op.TASK_MGMT_RESPONSE, Op.LOGOUT_RESPONSE, Op.TEXT_RESPONSE,
                          Op.ASYNC_MESSAGE, Op.REJECT})
# The operational keys a caller may set, with the value this initiator offers by default.
DEFAULT_KEYS: dict[str, str] = {
    "HeaderDigest": "None", "DataDigest": "None", "MaxConnections": "1",
    "InitialR2T": "Yes", "ImmediateData": "Yes", "MaxRecvDataSegmentLength": "262144",
    "MaxBurstLength": "1048576", "FirstBurstLength": "262144", "MaxOutstandingR2T": "1",
    "DataPDUInOrder": "Yes", "DataSequenceInOrder": "Yes", "DefaultTime2Wait": "0",
    "DefaultTime2Retain": "0", "ErrorRecoveryLevel": "0",
}


class Clock:
    """Strictly increasing nanoseconds (time.monotonic_ns, bumped on ties)."""

    def __init__(self) -> None:
        self._last = 0

    def __call__(self) -> int:
        now = time.monotonic_ns()
        if now <= self._last:
            now = self._last + 1
        self._last = now
        return now


CLOCK = Clock()


class SessionClosed(ConnectionError):
    """The connection ended (or was never up) before the command's status arrived."""


class TargetError(Exception):
    """The target broke RFC 7143 in a way the command cannot survive."""


class LoginFailed(Exception):
    def __init__(self, status_class: int, status_detail: int) -> None:
        super().__init__(f"login failed: status {status_class:02x}/{status_detail:02x}")
        self.status_class = status_class
        self.status_detail = status_detail


@dataclass
class Response:
    """What a command ended with. status is None when it ended without one (aborted)."""

    status: int | None
    data: bytes = b""
    sense: bytes = b""
    residual: int = 0
    overflow: bool = False
    underflow: bool = False
    response: int = 0          # iSCSI Response (11.4.3): 0 = command completed at target
    aborted: bool = False

    @property
    def sense_key(self) -> int | None:
        return _sense_fields(self.sense)[0]

    @property
    def asc_ascq(self) -> tuple[int, int] | None:
        f = _sense_fields(self.sense)
        return None if f[1] is None else (f[1], f[2])


def _sense_fields(sense: bytes) -> tuple[int | None, int | None, int | None]:
    if len(sense) < 3:
        return None, None, None
    code = sense[0] & 0x7F
    if code in (0x72, 0x73) and len(sense) >= 4:
        return sense[1] & 0x0F, sense[2], sense[3]
    if code in (0x70, 0x71) and len(sense) >= 14:
        return sense[2] & 0x0F, sense[12], sense[13]
    return None, None, None


@dataclass
class Request:
    """One SCSI command for burst(): `read` bytes expected in, `data` sent out."""

    cdb: bytes
    lun: int = 0
    read: int = 0
    data: bytes = b""
    attr: int = SIMPLE


class Command:
    """A submitted command: await it (or .future) for its Response."""

    __slots__ = ("session", "itt", "cmdsn", "order", "lun", "cdb", "attr", "read", "data",
                 "future", "sent", "done", "buf", "received", "next_datasn", "burst_bytes",
                 "outstanding_r2t", "r2ts", "data_in_pdus", "unsolicited")

    def __init__(self, session: Session, itt: int, req: Request) -> None:
        self.session = session
        self.itt = itt
        self.cmdsn = -1
        self.order = -1            # this session's submission index (CmdSN, unwrapped)
        self.lun = req.lun
        self.cdb = bytes(req.cdb)
        self.attr = int(req.attr)
        self.read = req.read
        self.data = bytes(req.data)
        self.future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.sent: int | None = None
        self.done: int | None = None
        self.buf = bytearray(req.read) if req.read else None
        self.received = 0
        self.next_datasn = 0
        self.burst_bytes = 0
        self.outstanding_r2t = 0
        self.r2ts = 0
        self.data_in_pdus = 0
        self.unsolicited = 0

    def __await__(self):
        return self.future.__await__()

    def __repr__(self) -> str:
        return (f"<Command itt={self.itt:#x} cmdsn={self.cmdsn} cdb={self.cdb[:1].hex()} "
                f"lun={self.lun}>")


@dataclass
class Negotiated:
    """The operational parameters in force once login is over."""

    immediate_data: bool = True
    initial_r2t: bool = True
    first_burst_length: int = 65536
    max_burst_length: int = 262144
    max_outstanding_r2t: int = 1
    send_segment: int = 8192       # the target's MaxRecvDataSegmentLength: what we may send
    recv_segment: int = 8192       # ours: what the target may send us
    keys: dict[str, str] = field(default_factory=dict)  # the target's answers


class RandomSegmenter:
    """Cut a byte stream into pieces of random sizes, with an optional tiny pause after
    some of them. Deterministic for a given seed (or random.Random)."""

    def __init__(self, rng: random.Random | int | None = None, *, min_size: int = 1,
                 max_size: int = 4096, pause_probability: float = 0.0,
                 max_pause: float = 0.0005) -> None:
        self.rng = rng if isinstance(rng, random.Random) else random.Random(rng)
        self.min_size = max(1, min_size)
        self.max_size = max(self.min_size, max_size)
        self.pause_probability = pause_probability
        self.max_pause = max_pause

    def __call__(self, data: bytes) -> list[tuple[int, float]]:
        """(end offset, pause after) of each piece of `data`."""
        cuts = []
        pos = 0
        rng = self.rng
        while pos < len(data):
            pos = min(len(data), pos + rng.randint(self.min_size, self.max_size))
            pause = (rng.uniform(0, self.max_pause)
                     if rng.random() < self.pause_probability else 0.0)
            cuts.append((pos, pause))
        return cuts


class _Item:
    """Bytes to send, with the callbacks run before the first and after the last byte
    leaves (`whole`: send in one write, never cut)."""

    __slots__ = ("data", "before", "after", "whole")

    def __init__(self, data: bytes, before: Callable[[int], None] | None = None,
                 after: Callable[[], None] | None = None, whole: bool = False) -> None:
        self.data = data
        self.before = before
        self.after = after
        self.whole = whole


class Session:
    """One iSCSI session, one connection; `async with Session(...) as s:` logs in and out."""

    def __init__(self, host: str, port: int, target_name: str, *,
                 initiator_name: str = "iqn.2026-11.local.scsi-target:pipelined",
                 isid: int = 0x400000000002, segmenter: Callable | None = None,
                 clock: Callable[[], int] = CLOCK, timeout: float = 30.0,
                 name: str = "", data_segment_limit: int | None = None,
                 **keys: str | int | bool) -> None:
        unknown = set(keys) - set(DEFAULT_KEYS)
        if unknown:
            raise ValueError(f"unknown or unsupported login keys: {sorted(unknown)}")
        self.host = host
        self.port = port
        self.target_name = target_name
        self.initiator_name = initiator_name
        self.isid = isid
        self.segmenter = segmenter
        self.clock = clock
        self.timeout = timeout
        self.name = name or f"{initiator_name},{isid:#014x}"
        self.offer = dict(DEFAULT_KEYS)
        for k, v in keys.items():
            self.offer[k] = ("Yes" if v else "No") if isinstance(v, bool) else str(v)
        self.data_segment_limit = data_segment_limit  # our own cap on Data-Out segments
        self.params = Negotiated()
        self.target_errors: dict[str, int] = {}        # kind -> times seen
        self.target_error_examples: dict[str, str] = {}  # kind -> the first one, in full
        self.window_waits = 0      # commands that waited for the CmdSN window
        self.max_r2t_outstanding = 0  # most R2Ts of one command outstanding at once
        self.rejects: list[tuple[int, bytes]] = []   # (reason, rejected header)
        self.async_events: list[int] = []
        self.nop_ins_answered = 0
        self.late_responses = 0    # responses for tasks a TMF had already ended
        self.after_close = 0       # PDUs read after the session failed (not checked)
        self.sock: socket.socket | None = None
        self.tsih = 0
        self.cmdsn = 1
        self.exp_cmdsn = 1
        self.max_cmdsn = 1
        self.exp_stat_sn = 0
        self._order = itertools.count()
        self._itt = itertools.count(1)
        self._cmds: dict[int, Command] = {}
        self._ended: set[int] = set()      # ITTs ended by a TMF, for late responses
        self._answered: set[int] = set()   # ITTs of the last RECENT_ENDED answered tasks
        self._answered_order: deque[int] = deque()
        self._waiting: deque[tuple[Command, bool]] = deque()  # not yet in the window
        self._r2ts: dict[tuple[int, int], int] = {}
        self._pending: dict[int, asyncio.Future] = {}  # TMF / NOP / logout by ITT
        self._outq: deque[_Item] = deque()
        self._out_ready: asyncio.Event | None = None
        self._window: asyncio.Event | None = None
        self._rbuf = bytearray()
        self._rpos = 0
        self._tasks: list[asyncio.Task] = []
        self._closed: BaseException | None = None
        self._logged_out = False
        self.loop: asyncio.AbstractEventLoop | None = None

    # --- context -------------------------------------------------------------------------

    async def __aenter__(self) -> Session:
        await self.open()
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and self._closed is None:
                await self.drain()
                await self.logout()
        finally:
            await self.close()

    async def open(self) -> dict[str, str]:
        """Connect and log in to full feature phase; returns the target's keys."""
        self.loop = asyncio.get_running_loop()
        self._out_ready = asyncio.Event()
        self._window = asyncio.Event()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(self.loop.sock_connect(sock, (self.host, self.port)),
                                   self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        answer = await asyncio.wait_for(self._login(), self.timeout)
        self._tasks = [self.loop.create_task(self._reader(), name=f"{self.name} reader"),
                       self.loop.create_task(self._sender(), name=f"{self.name} sender")]
        return answer

    async def close(self) -> None:
        """Drop the connection (no logout); every waiting command fails."""
        self._fail_all(SessionClosed("session closed"))
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks = []
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    @property
    def closed(self) -> bool:
        return self._closed is not None

    # --- login / logout ------------------------------------------------------------------

    async def _login(self) -> dict[str, str]:
        keys = {"InitiatorName": self.initiator_name, "SessionType": "Normal",
                "TargetName": self.target_name, **self.offer}
        text = "".join(f"{k}={v}\0" for k, v in keys.items()).encode()
        itt = next(self._itt)
        flags = pdu.LOGIN_TRANSIT | (1 << 2) | 3  # T, CSG operational, NSG full feature
        await self._send_now(pdu.login_request(flags=flags, dsl=len(text), isid=self.isid,
                                               itt=itt, cmdsn=self.cmdsn,
                                               exp_statsn=self.exp_stat_sn)
                             + text + pdu.padding(len(text)))
        answer: dict[str, str] = {}
        while True:
            bhs, data = await self._recv_pdu()
            if bhs.opcode != Op.LOGIN_RESPONSE:
                raise TargetError(f"expected a Login Response, got {bhs!r}")
            self.exp_stat_sn = (bhs.statsn + 1) & 0xFFFFFFFF
            if bhs.status_class or bhs.status_detail:
                raise LoginFailed(bhs.status_class, bhs.status_detail)
            for pair in data.split(b"\0"):
                if b"=" in pair:
                    k, v = pair.decode().split("=", 1)
                    answer[k] = v
            self.exp_cmdsn, self.max_cmdsn = bhs.exp_cmdsn, bhs.max_cmdsn
            if bhs.flags & pdu.LOGIN_TRANSIT and bhs.flags & 3 == 3:
                break
            await self._send_now(pdu.login_request(flags=flags, dsl=0, isid=self.isid, itt=itt,
                                                   cmdsn=self.cmdsn,
                                                   exp_statsn=self.exp_stat_sn))
        self.tsih = bhs.tsih
        self.params = self._negotiated(answer)
        return answer

    def _negotiated(self, answer: dict[str, str]) -> Negotiated:
        def value(key: str) -> str:
            return answer.get(key, self.offer[key])

        mine = self.offer
        p = Negotiated(keys=dict(answer))
        p.immediate_data = mine["ImmediateData"] == "Yes" and value("ImmediateData") == "Yes"
        p.initial_r2t = mine["InitialR2T"] == "Yes" or value("InitialR2T") == "Yes"
        p.max_burst_length = min(int(mine["MaxBurstLength"]), int(value("MaxBurstLength")))
        p.first_burst_length = min(int(mine["FirstBurstLength"]),
                                   int(value("FirstBurstLength")), p.max_burst_length)
        p.max_outstanding_r2t = min(int(mine["MaxOutstandingR2T"]),
                                    int(value("MaxOutstandingR2T")))
        p.send_segment = int(answer.get("MaxRecvDataSegmentLength", "8192"))
        if self.data_segment_limit:
            p.send_segment = min(p.send_segment, self.data_segment_limit)
        p.recv_segment = int(mine["MaxRecvDataSegmentLength"])
        return p

    async def logout(self, reason: int = 0) -> int:
        """Logout Request (11.14), reason 0 closes the session; returns the Response code."""
        if self._closed is not None:
            raise SessionClosed("session closed")
        itt = next(self._itt)
        fut = self.loop.create_future()
        self._pending[itt] = fut
        self._logged_out = True
        self._enqueue(_Item(pdu.logout_request(immediate=True, reason=reason, itt=itt,
                                               cmdsn=self.cmdsn, exp_statsn=self.exp_stat_sn)))
        bhs = await asyncio.wait_for(fut, self.timeout)
        return bhs.b2

    # --- commands ------------------------------------------------------------------------

    def submit(self, cdb: bytes, *, lun: int = 0, read: int = 0, data: bytes = b"",
               attr: int = SIMPLE) -> Command:
        """Send a command as soon as the CmdSN window allows; await the Command."""
        return self._submit(Request(cdb, lun, read, data, attr))

    def _submit(self, req: Request, whole: bool = False) -> Command:
        if self._closed is not None:
            raise SessionClosed(f"session closed: {self._closed}")
        if len(req.cdb) > 16:
            raise ValueError("CDBs over 16 bytes (an AHS) are not supported")
        cmd = Command(self, self._next_itt(), req)
        cmd.order = next(self._order)
        self._cmds[cmd.itt] = cmd
        if self._waiting or not pdu.sn_le(self.cmdsn, self.max_cmdsn):
            self.window_waits += 1
            self._waiting.append((cmd, whole))
        else:
            self._enqueue(self._command_item(cmd, whole))
        return cmd

    async def command(self, cdb: bytes, *, lun: int = 0, read: int = 0, data: bytes = b"",
                      attr: int = SIMPLE, timeout: float | None = None) -> Response:
        cmd = self.submit(cdb, lun=lun, read=read, data=data, attr=attr)
        return await asyncio.wait_for(cmd.future, timeout or self.timeout)

    async def burst(self, requests: Sequence[Request | dict]) -> list[Command]:
        """Send several commands (with their immediate and unsolicited data) in one socket
        write, once the CmdSN window holds them all; returns their Commands."""
        reqs = [r if isinstance(r, Request) else Request(**r) for r in requests]
        while self._waiting or not pdu.sn_le((self.cmdsn + len(reqs) - 1) & 0xFFFFFFFF,
                                             self.max_cmdsn):
            if self._closed is not None:
                raise SessionClosed(f"session closed: {self._closed}")
            self._window.clear()
            await self._window.wait()
        cmds = []
        parts: list[bytes] = []
        for req in reqs:
            cmd = Command(self, self._next_itt(), req)
            cmd.order = next(self._order)
            self._cmds[cmd.itt] = cmd
            cmds.append(cmd)
            parts.append(self._command_bytes(cmd))

        def stamp(now: int) -> None:
            for c in cmds:
                c.sent = now

        self._enqueue(_Item(b"".join(parts), stamp, None, whole=True))
        return cmds

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until every submitted command has ended (status, abort or failure)."""
        futs = [c.future for c in self._cmds.values()]
        if futs:
            await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True),
                                   timeout or self.timeout)

    @property
    def outstanding(self) -> int:
        return len(self._cmds)

    def _next_itt(self) -> int:
        while True:
            itt = next(self._itt) & 0x7FFFFFFF
            if itt and itt not in self._cmds and itt not in self._pending \
                    and itt not in self._answered:
                return itt

    def _command_item(self, cmd: Command, whole: bool) -> _Item:
        data = self._command_bytes(cmd)

        def stamp(now: int) -> None:
            cmd.sent = now

        return _Item(data, stamp, None, whole)

    def _command_bytes(self, cmd: Command) -> bytes:
        """The SCSI Command PDU, its immediate data and unsolicited Data-Out; takes a CmdSN."""
        p = self.params
        data = cmd.data
        edtl = cmd.read or len(data)
        imm = b""
        if data and p.immediate_data:
            imm = data[:min(p.first_burst_length, p.send_segment)]
        unsol_end = len(imm)
        if data and not p.initial_r2t:
            unsol_end = max(unsol_end, min(p.first_burst_length, len(data)))
        final = pdu.F_FINAL if unsol_end == len(imm) else 0
        flags = (final | (pdu.F_READ if cmd.read else 0) | (pdu.F_WRITE if data else 0)
                 | (cmd.attr & pdu.ATTR_MASK))
        cmd.cmdsn = self.cmdsn
        self.cmdsn = (self.cmdsn + 1) & 0xFFFFFFFF
        lun = encode_lun(cmd.lun)
        header = pdu.scsi_command(flags=flags, dsl=len(imm), lun=lun, itt=cmd.itt, edtl=edtl,
                                  cmdsn=cmd.cmdsn, exp_statsn=self.exp_stat_sn, cdb=cmd.cdb)
        parts = [header, imm, pdu.padding(len(imm))]
        offset, datasn = len(imm), 0
        while offset < unsol_end:
            n = min(p.send_segment, unsol_end - offset)
            parts.append(pdu.data_out(final=offset + n == unsol_end, dsl=n, lun=lun,
                                      itt=cmd.itt, exp_statsn=self.exp_stat_sn, datasn=datasn,
                                      buffer_offset=offset))
            parts.append(data[offset:offset + n])
            parts.append(pdu.padding(n))
            offset += n
            datasn += 1
        cmd.unsolicited = unsol_end - len(imm)
        return b"".join(parts)

    def _admit_waiting(self) -> None:
        while self._waiting and pdu.sn_le(self.cmdsn, self.max_cmdsn):
            cmd, whole = self._waiting.popleft()
            if cmd.future.done():
                continue
            self._enqueue(self._command_item(cmd, whole))
        if self._window is not None:
            self._window.set()

    # --- task management, NOP ------------------------------------------------------------

    async def task_management(self, function: int, *, lun: int = 0,
                              ref: Command | None = None) -> int:
        """A TMF request (11.5); returns the TMF Response code (11.6.1)."""
        if self._closed is not None:
            raise SessionClosed("session closed")
        itt = self._next_itt()
        fut = self.loop.create_future()
        self._pending[itt] = fut
        ref_itt = ref.itt if ref is not None else RESERVED
        ref_cmdsn = ref.cmdsn if ref is not None and ref.cmdsn >= 0 else 0
        covered = [c for c in self._cmds.values() if c.sent is not None or c.cmdsn >= 0]
        self._enqueue(_Item(pdu.task_management_request(
            immediate=True, function=function, lun=encode_lun(lun), itt=itt,
            referenced_task_tag=ref_itt, cmdsn=self.cmdsn, exp_statsn=self.exp_stat_sn,
            ref_cmdsn=ref_cmdsn)))
        bhs = await asyncio.wait_for(fut, self.timeout)
        response = bhs.b2
        if response == TmfResponse.COMPLETE:
            if function == TmfFunction.ABORT_TASK:
                victims = [ref] if ref is not None else []
            elif function in (TmfFunction.ABORT_TASK_SET, TmfFunction.CLEAR_TASK_SET,
                              TmfFunction.LOGICAL_UNIT_RESET):
                victims = [c for c in covered if c.lun == lun]
            elif function in (TmfFunction.TARGET_WARM_RESET, TmfFunction.TARGET_COLD_RESET):
                victims = covered
            else:
                victims = []
            for c in victims:
                if c is not None and not c.future.done():
                    self._end(c, Response(None, aborted=True))
                    self._ended.add(c.itt)
        return response

    async def abort_task(self, cmd: Command) -> int:
        return await self.task_management(TmfFunction.ABORT_TASK, lun=cmd.lun, ref=cmd)

    async def abort_task_set(self, lun: int = 0) -> int:
        return await self.task_management(TmfFunction.ABORT_TASK_SET, lun=lun)

    async def lu_reset(self, lun: int = 0) -> int:
        return await self.task_management(TmfFunction.LOGICAL_UNIT_RESET, lun=lun)

    async def nop(self, payload: bytes = b"") -> bytes:
        """NOP-Out ping (11.18); returns the NOP-In's data."""
        if self._closed is not None:
            raise SessionClosed("session closed")
        itt = self._next_itt()
        fut = self.loop.create_future()
        self._pending[itt] = fut
        self._enqueue(_Item(pdu.nop_out(immediate=True, dsl=len(payload), itt=itt,
                                        cmdsn=self.cmdsn, exp_statsn=self.exp_stat_sn)
                            + payload + pdu.padding(len(payload))))
        _, data = await asyncio.wait_for(fut, self.timeout)
        return data

    # --- output --------------------------------------------------------------------------

    def _enqueue(self, item: _Item) -> None:
        self._outq.append(item)
        self._out_ready.set()

    async def _sender(self) -> None:
        try:
            while True:
                if not self._outq:
                    self._out_ready.clear()
                    await self._out_ready.wait()
                    continue
                items: list[_Item] = []
                size = 0
                while self._outq and size < (1 << 20):
                    item = self._outq.popleft()
                    items.append(item)
                    size += len(item.data)
                await self._send_items(items)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the connection is gone
            self._fail_all(SessionClosed(f"send failed: {exc}"))

    async def _send_items(self, items: list[_Item]) -> None:
        """Send the items' bytes: whole items in one write each; the rest as one stream,
        cut by the segmenter. Callbacks run next to the send() of first and last byte."""
        run: list[_Item] = []
        for item in items:
            if item.whole and self.segmenter is not None:
                if run:
                    await self._send_stream(run, True)
                    run = []
                await self._send_stream([item], False)
            else:
                run.append(item)
        if run:
            await self._send_stream(run, self.segmenter is not None)

    async def _send_stream(self, items: list[_Item], cut: bool) -> None:
        blob = items[0].data if len(items) == 1 else b"".join(i.data for i in items)
        starts = []
        pos = 0
        for item in items:
            starts.append(pos)
            pos += len(item.data)
        pieces = self.segmenter(blob) if cut else [(len(blob), 0.0)]
        view = memoryview(blob)
        sent = 0
        first = 0   # items whose `before` has not run
        last = 0    # items whose `after` has not run
        for end, pause in pieces:
            while sent < end:
                # Stamp every item this send() may start; some may not leave yet, and so
                # carry a stamp earlier than their first byte: never a later one.
                while first < len(items) and starts[first] < end:
                    if items[first].before is not None:
                        items[first].before(self.clock())
                    first += 1
                n = await self._send_some(view[sent:end])
                sent += n
                while last < len(items) and starts[last] + len(items[last].data) <= sent:
                    if items[last].after is not None:
                        items[last].after()
                    last += 1
            if pause:
                await asyncio.sleep(pause)

    async def _send_some(self, view: memoryview) -> int:
        """One send() of as much of `view` as the kernel takes; waits while it takes none."""
        sock = self.sock
        if sock is None:
            raise SessionClosed("no connection")
        while True:
            try:
                return sock.send(view)
            except (BlockingIOError, InterruptedError):
                fut = self.loop.create_future()
                fd = sock.fileno()
                self.loop.add_writer(fd, _wake, fut)
                try:
                    await fut
                finally:
                    self.loop.remove_writer(fd)

    async def _send_now(self, data: bytes) -> None:
        """Send during login (no queue yet)."""
        view = memoryview(data)
        while view:
            n = await self._send_some(view)
            view = view[n:]

    # --- input ---------------------------------------------------------------------------

    async def _recv_exact(self, n: int) -> bytes:
        buf = self._rbuf
        while len(buf) - self._rpos < n:
            if self._rpos > (1 << 20) or (self._rpos and self._rpos == len(buf)):
                del buf[:self._rpos]
                self._rpos = 0
            chunk = await self.loop.sock_recv(self.sock, _RECV_CHUNK)
            if not chunk:
                raise SessionClosed("connection closed by the target")
            buf += chunk
        out = bytes(buf[self._rpos:self._rpos + n])
        self._rpos += n
        return out

    async def _recv_pdu(self) -> tuple[Bhs, bytes]:
        bhs = Bhs(await self._recv_exact(pdu.BHS_LEN))
        if bhs.ahs_len:
            await self._recv_exact(bhs.ahs_len)
        data = b""
        if bhs.dsl:
            data = (await self._recv_exact(bhs.dsl + pdu.pad_len(bhs.dsl)))[:bhs.dsl]
        return bhs, data

    async def _reader(self) -> None:
        try:
            while True:
                bhs, data = await self._recv_pdu()
                self._handle(bhs, data)
        except asyncio.CancelledError:
            raise
        except SessionClosed as exc:
            self._fail_all(exc if not self._logged_out else SessionClosed("logged out"))
        except Exception as exc:  # noqa: BLE001 - a broken stream ends the session
            self._fail_all(SessionClosed(f"receive failed: {exc!r}"))

    def _error(self, kind: str, detail: str = "") -> None:
        self.target_errors[kind] = self.target_errors.get(kind, 0) + 1
        self.target_error_examples.setdefault(kind, detail or kind)

    def _handle(self, bhs: Bhs, data: bytes) -> None:
        if self._closed is not None:
            self.after_close += 1  # the commands have ended: nothing here to check
            return
        op = bhs.opcode
        if op in _WINDOW_PDUS:
            self._update_window(bhs.exp_cmdsn, bhs.max_cmdsn)
        if op in _STATUS_PDUS or (op == Op.DATA_IN and bhs.flags & pdu.F_STATUS) or (
                op == Op.NOP_IN and bhs.itt != RESERVED):
            statsn = bhs.statsn
            if statsn != self.exp_stat_sn:
                self._error("StatSN out of order", f"StatSN {statsn:#x}, expected "
                            f"{self.exp_stat_sn:#x} ({Op(op).name})")
            self.exp_stat_sn = (statsn + 1) & 0xFFFFFFFF
        if op == Op.DATA_IN:
            self._data_in(bhs, data)
        elif op == Op.SCSI_RESPONSE:
            self._scsi_response(bhs, data)
        elif op == Op.R2T:
            self._r2t(bhs)
        elif op == Op.NOP_IN:
            self._nop_in(bhs, data)
        elif op in (Op.TASK_MGMT_RESPONSE, Op.LOGOUT_RESPONSE):
            fut = self._pending.pop(bhs.itt, None)
            if fut is None:
                self._error("response for an unknown task",
                            f"{Op(op).name} for unknown ITT {bhs.itt:#x}")
            elif not fut.done():
                fut.set_result(bhs)
        elif op == Op.REJECT:
            self._reject(bhs, data)
        elif op == Op.ASYNC_MESSAGE:
            self.async_events.append(bhs.raw[36])
        else:
            self._error("unexpected PDU", repr(bhs))

    def _update_window(self, exp: int, mx: int) -> None:
        if pdu.sn_lt(mx, (exp - 1) & 0xFFFFFFFF):
            return  # MaxCmdSN < ExpCmdSN - 1: both ignored (4.2.2.1)
        if pdu.sn_lt(self.exp_cmdsn, exp):
            self.exp_cmdsn = exp
        if pdu.sn_lt(self.max_cmdsn, mx):
            self.max_cmdsn = mx
            self._admit_waiting()

    def _task(self, bhs: Bhs, what: str) -> Command | None:
        cmd = self._cmds.get(bhs.itt)
        if cmd is None:
            if bhs.itt in self._ended:
                self.late_responses += 1
            elif bhs.itt in self._answered:
                self._error("PDU for a task that has ended", f"{what} for ITT {bhs.itt:#x}, "
                            "which has ended with its status")
            else:
                self._error("response for an unknown task", f"{what} for unknown ITT "
                            f"{bhs.itt:#x}")
        return cmd

    def _data_in(self, bhs: Bhs, data: bytes) -> None:
        cmd = self._task(bhs, "Data-In")
        if cmd is None:
            return
        p = self.params
        if bhs.dsl > p.recv_segment:
            self._error("Data-In segment above MaxRecvDataSegmentLength",
                        f"Data-In of {bhs.dsl} bytes, ours is {p.recv_segment}")
        datasn = bhs.datasn
        if datasn != cmd.next_datasn:
            self._error("Data-In DataSN out of order", f"DataSN {datasn}, expected "
                        f"{cmd.next_datasn} (ITT {cmd.itt:#x})")
        cmd.next_datasn = datasn + 1
        cmd.data_in_pdus += 1
        offset = bhs.buffer_offset
        buf = cmd.buf
        if buf is None or offset + len(data) > len(buf):
            self._error("Data-In beyond the EDTL",
                        f"Data-In at {offset}+{len(data)}, EDTL {cmd.read}")
            self._end(cmd, exc=TargetError("Data-In beyond the Expected Data Transfer Length"))
            return
        buf[offset:offset + len(data)] = data
        cmd.received = max(cmd.received, offset + len(data))
        cmd.burst_bytes += len(data)
        if cmd.burst_bytes > p.max_burst_length:
            self._error("Data-In sequence above MaxBurstLength",
                        f"{cmd.burst_bytes} bytes in one sequence, MaxBurstLength "
                        f"{p.max_burst_length}")
        if bhs.flags & pdu.F_FINAL:
            cmd.burst_bytes = 0
        if bhs.flags & pdu.F_STATUS:
            self._end(cmd, Response(bhs.b3, bytes(buf[:cmd.received]), b"", bhs.residual_count,
                                    bool(bhs.flags & pdu.F_OVERFLOW),
                                    bool(bhs.flags & pdu.F_UNDERFLOW)))

    def _scsi_response(self, bhs: Bhs, data: bytes) -> None:
        cmd = self._task(bhs, "SCSI Response")
        if cmd is None:
            return
        sense = b""
        if len(data) >= 2:
            n = _SENSE_LEN.unpack_from(data)[0]
            sense = data[2:2 + n]
        got = bytes(cmd.buf[:cmd.received]) if cmd.buf is not None else b""
        self._end(cmd, Response(bhs.b3, got, sense, bhs.residual_count,
                                bool(bhs.flags & pdu.F_OVERFLOW),
                                bool(bhs.flags & pdu.F_UNDERFLOW), bhs.b2))

    def _r2t(self, bhs: Bhs) -> None:
        cmd = self._task(bhs, "R2T")
        if cmd is None:
            return
        offset, length, ttt = bhs.buffer_offset, bhs.desired_length, bhs.ttt
        if not cmd.data or offset + length > len(cmd.data) or length == 0:
            self._error("R2T outside the command's data",
                        f"R2T for {offset}+{length}, {len(cmd.data)} bytes to send")
            self._end(cmd, exc=TargetError("R2T outside the command's data"))
            return
        if length > self.params.max_burst_length:
            self._error("R2T above MaxBurstLength", f"R2T of {length} bytes, "
                        f"MaxBurstLength {self.params.max_burst_length}")
        cmd.r2ts += 1
        cmd.outstanding_r2t += 1
        self.max_r2t_outstanding = max(self.max_r2t_outstanding, cmd.outstanding_r2t)
        if cmd.outstanding_r2t > self.params.max_outstanding_r2t:
            self._error("more R2Ts outstanding than MaxOutstandingR2T",
                        f"{cmd.outstanding_r2t} outstanding for ITT {cmd.itt:#x}, "
                        f"MaxOutstandingR2T={self.params.max_outstanding_r2t}")
        seg = self.params.send_segment
        lun = encode_lun(cmd.lun)
        parts = []
        datasn = 0
        pos, end = offset, offset + length
        while pos < end:
            n = min(seg, end - pos)
            parts.append(pdu.data_out(final=pos + n == end, dsl=n, lun=lun, itt=cmd.itt,
                                      ttt=ttt, exp_statsn=self.exp_stat_sn, datasn=datasn,
                                      buffer_offset=pos))
            parts.append(cmd.data[pos:pos + n])
            parts.append(pdu.padding(n))
            datasn += 1
            pos += n

        def answered() -> None:
            cmd.outstanding_r2t -= 1

        self._enqueue(_Item(b"".join(parts), None, answered))

    def _nop_in(self, bhs: Bhs, data: bytes) -> None:
        if bhs.itt == RESERVED:
            if bhs.ttt != RESERVED:  # a ping from the target: answer it (11.18)
                self.nop_ins_answered += 1
                self._enqueue(_Item(pdu.nop_out(immediate=True, itt=RESERVED, ttt=bhs.ttt,
                                                cmdsn=self.cmdsn,
                                                exp_statsn=self.exp_stat_sn)))
            return
        fut = self._pending.pop(bhs.itt, None)
        if fut is None:
            self._error("response for an unknown task", f"NOP-In for unknown ITT "
                        f"{bhs.itt:#x}")
        elif not fut.done():
            fut.set_result((bhs, data))

    def _reject(self, bhs: Bhs, data: bytes) -> None:
        self.rejects.append((bhs.b2, data[:pdu.BHS_LEN]))
        if len(data) >= pdu.BHS_LEN:
            rejected = Bhs(data[:pdu.BHS_LEN])
            cmd = self._cmds.get(rejected.itt)
            if cmd is not None and rejected.opcode == Op.SCSI_COMMAND:
                self._end(cmd, exc=TargetError(f"command rejected, reason {bhs.b2:#x}"))
            fut = self._pending.pop(rejected.itt, None)
            if fut is not None and not fut.done():
                fut.set_exception(TargetError(f"request rejected, reason {bhs.b2:#x}"))

    # --- ending --------------------------------------------------------------------------

    def _end(self, cmd: Command, response: Response | None = None,
             exc: BaseException | None = None) -> None:
        cmd.done = self.clock()
        if self._cmds.get(cmd.itt) is cmd:
            del self._cmds[cmd.itt]
            if response is not None and response.status is not None:
                self._answered.add(cmd.itt)
                self._answered_order.append(cmd.itt)
                if len(self._answered_order) > RECENT_ENDED:
                    self._answered.discard(self._answered_order.popleft())
        if not cmd.future.done():
            if exc is not None:
                cmd.future.set_exception(exc)
            else:
                cmd.future.set_result(response)

    def _fail_all(self, exc: BaseException) -> None:
        if self._closed is None:
            self._closed = exc
        for cmd in list(self._cmds.values()):
            self._end(cmd, exc=exc)
            cmd.done = None  # it did not end at a known time
        self._waiting.clear()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self._pending.clear()
        if self._window is not None:
            self._window.set()


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def responses(cmds: Iterable[Command]) -> list[Response | BaseException]:
    """The outcome of each (finished) command: its Response or its exception."""
    out: list[Response | BaseException] = []
    for c in cmds:
        exc = c.future.exception() if c.future.done() else SessionClosed("not finished")
        out.append(exc if exc is not None else c.future.result())
    return out
