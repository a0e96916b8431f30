"""A long mixed workload against our target with fio-style verification of every block read
(the logic behind tools/soak and tests/integration/test_soak.py).

Rules:
- Our target runs with --luns LUs on one target (by default 4: a thin memory LU of 512-byte
  blocks, a fully provisioned memory LU of 4096-byte blocks, a file LU on /dev/shm and a
  thin file LU on the real disk under /var/tmp), a control socket and NOP-In pings. The
  soak's files and the target are removed / stopped by PID on the way out, also on errors.
- --sessions sessions (target.testing.pipelined), each with its own initiator name and
  ISID and one of several login profiles (immediate and unsolicited data; R2T only with a
  small MaxBurstLength and Data-Out segment limit, so writes take several R2Ts and PDUs;
  small Data-In segments; a randomly segmented byte stream), keep --qd commands in flight
  on any of the LUs: READ/WRITE(10)/(16) of 1..64 blocks (some with FUA), WRITE SAME(10)/
  (16) (with UNMAP or NDOB on thin LUs), UNMAP (thin LUs), SYNCHRONIZE CACHE(10), and
  ordering chains (below). Meanwhile: ABORT TASK of outstanding commands (of the session's
  current connection: ITTs start again in each), LOGICAL UNIT RESET, connections closed
  (FIN), reset (RST, also while a write is between its R2T and its status, or a large read
  is outstanding) or dropped by a fault rule, each followed by a new login with the same
  ISID (session reinstatement, RFC 7143 6.3.5), and fault rules added and cleared
  through the control socket (CHECK CONDITION with a sense only the soak uses, BUSY, TASK
  SET FULL, delay).
- The model (fio's verify): every written block carries magic, LUN, its LBA (WRITE SAME:
  the command's first LBA and block count), a write generation unique per command and LU,
  a CRC-32 over the block and filler derived from LUN and generation. Zeros are
  generation 0: the LUs start zeroed, and UNMAP / WRITE SAME with UNMAP or NDOB on a thin LU
  read back as zeros (SBC-4 4.7.4.5, LBPRZ=1). Each block holds one expected generation,
  or a set of the few possible ones after a command whose effect is unknown.
- What a command's end means for the model: GOOD: written (SBC-4). BUSY, TASK SET FULL
  (SAM-5 5.3), CHECK CONDITION with UNIT ATTENTION (SAM-5 5.14: not processed) or with a
  sense the soak's own fault rules use (target.faults: a failed write changes nothing):
  not executed. Aborted (ABORT TASK, LU RESET, TASK ABORTED of another nexus's reset with
  TAS=1), dropped connection, or any other status: may or may not have written, so each
  of its blocks may hold its old possibilities or the new generation; any other CHECK
  CONDITION is also an error of its own. Uncertain ranges are read back soon after: the
  read narrows each block to what it holds, which must be one of the possibilities.
  When a session's connection went while it had a range, the range stays locked until the
  session has logged in again: a login with the same ISID reinstates the session and the
  target reads no more of the old connection (6.3.5), so none of its writes can land
  after a later read of the range (without this, another session's read could narrow a
  block to its old contents while the target still had the lost write in its socket).
- The model is exact because the soak never has two outstanding commands on overlapping
  ranges of one LU (a per-LU range lock over all sessions), except in ordering chains:
  two or three commands of one session in one burst (`chains`, CHAIN_SHAPES: RW, WR, WW,
  WWR; all SIMPLE, QAM=0), the first on the locked range, each later one on that range or
  a few blocks of it, so a later command can be complete on arrival while an earlier WRITE
  waits for its Data-Out. Their outcomes are applied in CmdSN order, as SPC-4 7.5.8
  (QAM=0: the result is as if all were ORDERED) and RFC 7143 3.2.2.1 (commands reach the
  SCSI layer in CmdSN order) require: a READ sees the writes before it and none after it.
  The default is every shape (the ones with a WRITE first found the target's defect of
  its day, a command entering the task set only once its Data-Out was in;
  tests/integration/test_soak.py reproduces it).
- TAS=1 is set on every LU (MODE SELECT(10)) before the workload and again after each LU
  reset (which restores the defaults), one reset at a time, so another session's commands
  aborted by a reset end with TASK ABORTED instead of no status at all.
- Verify errors are counted once per block (the block is then unknown until written
  again), kept with the expected and found contents and the journal of the commands that
  wrote the generations involved, and make the run fail. The run also fails when the
  target dies, a command gets no answer in COMMAND_TIMEOUT, the target breaks RFC 7143
  (pipelined's target_errors, except kinds in `tolerate`: known defects, still counted
  and reported), a command ends with an unexpected status,
  a task is left in a task set after all sessions logged out, the target does not serve
  a new session at the end, its log holds a traceback, tasks of the soak do not end
  (their stacks are reported; SIGUSR1 prints every task's stack at any time), or RSS
  did not level off or went beyond its bound (below).
- Phases: fill (every block written once, so the memory LUs reach their size early),
  mixed (--minutes), final verify (every block read back), logout, final checks.
- Figures: every --report-every seconds ops/s (reads, writes, others), verify errors and
  the target's RSS (VmRSS of /proc/PID/status), open fds and sessions; RSS is sampled each
  second. RSS levelled off when the last third of the mixed phase's samples peaks no more
  than LEVEL_MARGIN (5 %) + LEVEL_SLACK (4 MiB) above the middle third's peak; a mixed
  phase shorter than LEVEL_MIN_SECONDS (120 s) gets no decision (None): measured here, the
  target's RSS rises for the first 40-90 s, until its first full garbage collections
  (each command's buffers are freed by the cyclic collector, not when it completes).
  Whatever the length, RSS is bounded: the mixed phase's peak may exceed the RSS after
  the fill by at most twice the data in flight (sessions x qd x 256 KiB: receive buffers
  and read copies) plus GARBAGE_ALLOWANCE (64 MiB).
- Self-test (`corrupt`): blocks of the file LUs are changed behind the target's back (the
  image file written directly, or a WRITE through an extra LUN on the same file) in each of
  CORRUPTIONS' ways, then read through the target; each must be reported as a verify error
  with its reason, and nothing else.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import signal
import socket
import struct
import tempfile
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from target.iscsi.pdu import TmfResponse
from target.scsi.task import Status
from target.shell.control import ControlError
from target.shell.control import request as control_request
from target.testing import cdb
from target.testing.pipelined import (
    Command,
    LoginFailed,
    RandomSegmenter,
    Request,
    Response,
    Session,
    SessionClosed,
    TargetError,
)
from target.testing.servers import HOST, OurTarget, initiator_iqn

MiB = 1 << 20
MAGIC = b"SOAKBLK1"
HEADER = struct.Struct(">8sHBBIQQ")  # magic, LUN, kind, 0, block count, LBA, generation
CRC = struct.Struct(">I")
HEADER_LEN = HEADER.size + CRC.size  # 36
KIND_WRITE, KIND_SAME = 1, 2
UNKNOWN = -1                 # a block after a verify error: not checked until written again
FOREIGN_GEN = 1 << 62        # generations the soak never writes (self-test)
COMMAND_TIMEOUT = 30.0
STOP_TIMEOUT = COMMAND_TIMEOUT + 30  # workers end within this after the mixed phase
LEVEL_MARGIN = 0.05
LEVEL_SLACK = 4 * MiB
LEVEL_MIN_SECONDS = 120.0    # shorter mixed phases get no levelling decision
GARBAGE_ALLOWANCE = 64 * MiB  # cyclic garbage awaiting a full collection (measured <= 60)
MAX_BLOCKS = 64
JOURNAL = 50000              # generations per LU whose command is remembered for reports
FAULT_SENSES = {"03/0C/02": (0x03, 0x0C, 0x02), "03/11/00": (0x03, 0x11, 0x00)}
CHAIN_SHAPES = ("RW", "WR", "WW", "WWR")
CORRUPTIONS = ("bitflip", "garbage", "zeros", "misplaced", "stale-generation", "wrong-lun")
TARGET_IQN = "iqn.2026-11.local.scsi-target:soak"
UNIT_ATTENTION = 0x06
ALIAS_OFFSET = 100           # the self-test's alias of LUN n is LUN n + 100


@dataclass
class LuSpec:
    lun: int
    store: str           # "memory" or "file"
    block_size: int
    size: int            # bytes
    thin: bool
    path: str | None = None
    where: str = "memory"

    @property
    def blocks(self) -> int:
        return self.size // self.block_size


@dataclass
class SoakOptions:
    minutes: float = 1.0
    seed: int | None = None
    sessions: int = 8
    luns: int = 4
    qd: int = 16
    json_path: Path | None = None
    event_loop: str | None = None        # the target's (serve --event-loop)
    report_every: float = 10.0
    lu_mib: int = 64
    shm_dir: Path = Path("/dev/shm")
    disk_dir: Path = Path("/var/tmp")
    workdir: Path | None = None
    abort_every: float = 0.25            # mean seconds between ABORT TASKs (0: none)
    reset_every: float = 10.0            # mean seconds between LU resets
    drop_every: float = 3.0              # mean seconds between dropped connections
    fault_every: float = 2.5             # mean seconds between fault windows
    corrupt: int = 0                     # self-test: this many corruptions (see CORRUPTIONS)
    chains: tuple[str, ...] = CHAIN_SHAPES  # ordering-chain shapes
    tolerate: frozenset[str] = frozenset()  # protocol-error kinds reported, not failures
    print: Callable[[str], None] | None = print


# --- blocks ------------------------------------------------------------------------------

def _filler(lun: int, gen: int, bs: int) -> bytes:
    return hashlib.shake_128(struct.pack(">HQ", lun, gen)).digest(bs - HEADER_LEN)


def make_block(lun: int, origin: int, count: int, gen: int, bs: int, kind: int,
               fill: bytes | None = None) -> bytes:
    if fill is None:
        fill = _filler(lun, gen, bs)
    head = HEADER.pack(MAGIC, lun, kind, 0, count, origin, gen)
    return head + CRC.pack(zlib.crc32(fill, zlib.crc32(head))) + fill


def write_data(lun: int, lba: int, n: int, gen: int, bs: int) -> bytes:
    fill = _filler(lun, gen, bs)
    return b"".join(make_block(lun, lba + i, n, gen, bs, KIND_WRITE, fill) for i in range(n))


def inspect_block(blk: memoryview, lun: int, lba: int, zero: bytes) -> tuple[str | None, int]:
    """(problem or None, the generation the block holds; 0 for zeros, -1 if none)."""
    if blk == zero:
        return None, 0
    magic, blun, kind, _, count, origin, gen = HEADER.unpack_from(blk)
    if magic != MAGIC:
        return "not a soak block", -1
    if CRC.unpack_from(blk, HEADER.size)[0] != zlib.crc32(blk[HEADER_LEN:],
                                                          zlib.crc32(blk[:HEADER.size])):
        return "checksum", gen
    if blun != lun:
        return f"wrong LUN (block of LUN {blun})", gen
    if kind == KIND_WRITE:
        placed = origin == lba
    elif kind == KIND_SAME:
        placed = origin <= lba < origin + count
    else:
        placed = False
    if not placed:
        return f"misplaced (block written for LBA {origin}, kind {kind}, count {count})", gen
    return None, gen


# --- the model -----------------------------------------------------------------------------

class LuModel:
    """What each block of one LU must hold, and the range lock over all sessions."""

    def __init__(self, spec: LuSpec) -> None:
        self.spec = spec
        self.lun = spec.lun
        self.bs = spec.block_size
        self.blocks = spec.blocks
        self.zero = bytes(self.bs)
        self.cur = array.array("q", bytes(8 * self.blocks))
        self.uncertain: dict[int, set[int]] = {}
        self.gen = 0
        self.held: dict[int, int] = {}    # start LBA -> end LBA of ranges in use
        self.narrow: deque[tuple[int, int]] = deque()
        self.verified_blocks = 0
        # The last JOURNAL commands that wrote a generation: gen -> what and how it ended.
        self.journal: dict[int, list[Any]] = {}
        self._journal_order: deque[int] = deque()

    def note(self, gen: int, what: list[Any]) -> None:
        self.journal[gen] = what
        self._journal_order.append(gen)
        if len(self._journal_order) > JOURNAL:
            self.journal.pop(self._journal_order.popleft(), None)

    def story(self, gens) -> dict[int, Any]:
        return {g: self.journal.get(g) for g in gens if g > 0}

    def next_gen(self) -> int:
        self.gen += 1
        return self.gen

    def lock(self, lba: int, n: int) -> bool:
        end = lba + n
        for start, stop in self.held.items():
            if start < end and lba < stop:
                return False
        self.held[lba] = end
        return True

    def unlock(self, lba: int) -> None:
        del self.held[lba]

    def possible(self, lba: int) -> set[int]:
        got = self.uncertain.get(lba)
        return set(got) if got is not None else {self.cur[lba]}

    def written(self, lba: int, n: int, gen: int) -> None:
        """The command is known to have written `gen` (0: zeros) to [lba, lba+n)."""
        cur, unc = self.cur, self.uncertain
        for b in range(lba, lba + n):
            cur[b] = gen
            if unc:
                unc.pop(b, None)

    def maybe_written(self, lba: int, n: int, gen: int) -> None:
        """The command may or may not have written `gen` to any block of [lba, lba+n)."""
        cur, unc = self.cur, self.uncertain
        for b in range(lba, lba + n):
            old = unc.get(b)
            if old is None:
                if cur[b] == UNKNOWN:
                    continue
                unc[b] = {cur[b], gen}
            elif UNKNOWN not in old:
                old.add(gen)
        self.narrow.append((lba, n))

    def verify(self, lba: int, n: int, data: bytes, where: str, now: float,
               expect: dict[int, set[int]] | None = None) -> list[dict[str, Any]]:
        """Check each block read against the model; narrow uncertain ones to what they hold.
        `expect` overrides the model's possibilities for some blocks (ordering chains)."""
        bs, zero, lun = self.bs, self.zero, self.lun
        view = memoryview(data)
        errors = []
        if len(data) != n * bs:
            return [{"t": round(now, 3), "lun": lun, "lba": lba, "blocks": n, "where": where,
                     "reason": f"read returned {len(data)} bytes, wanted {n * bs}"}]
        cur, unc = self.cur, self.uncertain
        for i in range(n):
            b = lba + i
            if expect is not None and b in expect:
                want = expect[b]
            elif unc and b in unc:
                want = unc[b]
            else:
                g = cur[b]
                if g == UNKNOWN:
                    continue
                want = (g,)
            if UNKNOWN in want:
                continue
            problem, got = inspect_block(view[i * bs:(i + 1) * bs], lun, b, zero)
            if problem is None and got not in want:
                problem = "generation"
            if problem is not None:
                errors.append({"t": round(now, 3), "lun": lun, "lba": b, "where": where,
                               "reason": problem, "expected": sorted(want), "found": got,
                               "head": bytes(view[i * bs:i * bs + HEADER_LEN]).hex(),
                               "journal": self.story([*want, got])})
                cur[b] = UNKNOWN
                unc.pop(b, None)
                continue
            if len(want) > 1 or expect is not None or (unc and b in unc):
                cur[b] = got
                unc.pop(b, None)
        self.verified_blocks += n
        return errors


# --- outcomes ------------------------------------------------------------------------------

DONE, NOT_EXECUTED, UNCERTAIN = "done", "not-executed", "uncertain"


def sense_triple(resp: Response) -> tuple[int, int, int] | None:
    key, aa = resp.sense_key, resp.asc_ascq
    return None if key is None or aa is None else (key, aa[0], aa[1])


def outcome(resp: Response | BaseException) -> tuple[str, str]:
    """(DONE | NOT_EXECUTED | UNCERTAIN, what happened) by the rules in the header."""
    if isinstance(resp, BaseException):
        return UNCERTAIN, type(resp).__name__
    if resp.status is None:
        return UNCERTAIN, "aborted"
    st = resp.status
    if st == Status.GOOD:
        return DONE, "good"
    if st == Status.BUSY:
        return NOT_EXECUTED, "busy"
    if st == Status.TASK_SET_FULL:
        return NOT_EXECUTED, "task-set-full"
    if st == Status.TASK_ABORTED:
        return UNCERTAIN, "task-aborted"
    if st == Status.CHECK_CONDITION:
        s = sense_triple(resp)
        if s is not None and s[0] == UNIT_ATTENTION:
            return NOT_EXECUTED, f"unit-attention {s[1]:02X}/{s[2]:02X}"
        if s in FAULT_SENSES.values():
            return NOT_EXECUTED, "injected-check-condition"
        what = "no sense" if s is None else f"{s[0]:X}/{s[1]:02X}/{s[2]:02X}"
        return UNCERTAIN, f"unexpected check condition {what}"
    return UNCERTAIN, f"unexpected status {st:#x}"


# --- sessions ------------------------------------------------------------------------------

PROFILES: list[tuple[str, dict[str, Any], int | None, bool]] = [
    # name, login keys, our Data-Out segment limit, segmented stream
    ("immediate+unsolicited", {"ImmediateData": True, "InitialR2T": False,
                               "FirstBurstLength": 65536, "MaxBurstLength": 262144,
                               "MaxRecvDataSegmentLength": 262144}, None, False),
    ("r2t-only", {"ImmediateData": False, "InitialR2T": True, "MaxBurstLength": 16384,
                  "MaxOutstandingR2T": 4, "MaxRecvDataSegmentLength": 65536}, 4096, False),
    ("small-segments", {"ImmediateData": True, "InitialR2T": True, "FirstBurstLength": 8192,
                        "MaxBurstLength": 65536, "MaxRecvDataSegmentLength": 8192}, 8192,
     False),
    ("segmented", {"ImmediateData": True, "InitialR2T": False, "FirstBurstLength": 16384,
                   "MaxBurstLength": 131072}, 16384, True),
]


class Initiator:
    """One session of the soak: its Session (replaced after a drop), its commands."""

    def __init__(self, soak: Soak, index: int) -> None:
        self.soak = soak
        self.index = index
        self.name = initiator_iqn(f"soak-{index}")
        self.isid = 0x400000001000 + index
        self.profile, self.keys, self.segment_limit, self.segmented = \
            PROFILES[index % len(PROFILES)]
        self.s: Session | None = None
        self.up = asyncio.Event()
        self.inflight: dict[Command, str] = {}
        self.logins = 0
        self._reconnecting: asyncio.Task | None = None
        self.retired = False

    def _session(self) -> Session:
        seg = None
        if self.segmented:
            seg = RandomSegmenter(self.soak.rng.randrange(1 << 30), min_size=1, max_size=1500,
                                  pause_probability=0.002, max_pause=0.0005)
        return Session(HOST, self.soak.port, TARGET_IQN, initiator_name=self.name,
                       isid=self.isid, segmenter=seg, timeout=20.0,
                       name=f"soak-{self.index}", data_segment_limit=self.segment_limit,
                       **self.keys)

    async def connect(self) -> None:
        soak = self.soak
        for attempt in range(60):
            s = self._session()
            try:
                await s.open()
            except (TimeoutError, OSError, SessionClosed, LoginFailed, TargetError) as exc:
                await s.close()
                soak.count("login failures", type(exc).__name__)
                if not soak.target.alive:
                    raise SessionClosed("the target died") from exc
                await asyncio.sleep(min(0.05 * (attempt + 1), 1.0))
                continue
            self.s = s
            self.logins += 1
            self.up.set()
            return
        raise SessionClosed(f"{self.name}: no login in 60 attempts")

    def lost(self) -> None:
        """A command saw the connection go: log in again (once)."""
        if self.retired or (self._reconnecting is not None and not self._reconnecting.done()):
            return
        if self.s is not None and not self.s.closed:
            return
        self._reconnecting = asyncio.get_running_loop().create_task(self.reconnect())

    async def reconnect(self, how: str | None = None) -> None:
        self.up.clear()
        old, self.s = self.s, None
        if old is not None:
            if how == "rst" and old.sock is not None:
                with contextlib.suppress(OSError):
                    old.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
            await old.close()
            self.soak.retire(old)
        if not self.retired:
            try:
                await self.connect()
            except SessionClosed as exc:
                self.soak.fail(f"session {self.index}: {exc}")
                self.retired = True
                self.up.set()  # let its workers see it and stop

    async def drop(self, how: str) -> None:
        if self._reconnecting is not None and not self._reconnecting.done():
            return
        self._reconnecting = asyncio.get_running_loop().create_task(self.reconnect(how))
        await asyncio.shield(self._reconnecting)


# --- the soak ------------------------------------------------------------------------------

class Soak:
    def __init__(self, options: SoakOptions, target: OurTarget, specs: list[LuSpec],
                 control: Path, alias: LuSpec | None = None) -> None:
        self.o = options
        self.seed = options.seed if options.seed is not None else random.randrange(1 << 32)
        self.rng = random.Random(self.seed)
        self.target = target
        self.port = target.port
        self.control = control
        self.models = [LuModel(s) for s in specs]
        self.by_lun = {m.lun: m for m in self.models}
        self.alias = alias            # an extra LUN on a file LU's image (self-test)
        self.alias_of = self.by_lun[alias.lun - ALIAS_OFFSET] if alias else None
        self.ops_at_start: Counter[str] = Counter()
        self.ops_at_end: Counter[str] = Counter()
        self.initiators: list[Initiator] = []
        self.counters: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.ops = Counter()                # reads / writes / others ended with a status
        self.errors: list[dict[str, Any]] = []     # verify errors
        self.verify_errors = 0
        self.failures: list[str] = []
        self.unexpected: list[str] = []
        self.protocol: Counter[str] = Counter()
        self.protocol_examples: dict[str, str] = {}
        self.late_responses = 0
        self.after_close = 0
        self.rejects = 0
        self.nop_ins = 0
        self.samples: list[dict[str, Any]] = []    # each second: t, rss, fds
        self.reports: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []
        self.phase = "start"
        self.stopping = False
        self.t0 = time.monotonic()
        self.reset_lock = asyncio.Lock()
        self.events_done = asyncio.Event()
        self.corruptions: list[dict[str, Any]] = []
        self.mixed_span: tuple[float, float] = (0.0, 0.0)
        self.final: dict[str, Any] = {}

    # --- bookkeeping ---------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str) -> None:
        if self.o.print is not None:
            self.o.print(text)

    def count(self, what: str, detail: str = "") -> None:
        self.counters[f"{what}: {detail}" if detail else what] += 1

    def fail(self, why: str) -> None:
        if why not in self.failures:
            self.failures.append(why)
            self.say(f"FAIL: {why}")

    def retire(self, s: Session) -> None:
        """Keep what a session object saw of the target's protocol behaviour."""
        for kind, n in s.target_errors.items():
            self.protocol[kind] += n
            self.protocol_examples.setdefault(kind, s.target_error_examples.get(kind, kind))
        s.target_errors = {}
        self.late_responses += s.late_responses
        s.late_responses = 0
        self.rejects += len(s.rejects)
        s.rejects = []
        self.nop_ins += s.nop_ins_answered
        s.nop_ins_answered = 0
        self.after_close += s.after_close
        s.after_close = 0

    def add_errors(self, errors: list[dict[str, Any]]) -> None:
        for e in errors:
            self.verify_errors += 1
            if len(self.errors) < 1000:
                self.errors.append(e)
            if self.verify_errors <= 20:
                self.say(f"VERIFY ERROR: LUN {e['lun']} LBA {e['lba']} ({e['where']}): "
                         f"{e['reason']}, expected {e.get('expected')}, found {e.get('found')}")

    async def ctl(self, req: dict[str, Any]) -> dict[str, Any]:
        try:
            answer = await asyncio.to_thread(control_request, self.control, req, 10.0)
        except ControlError as exc:
            self.count("control errors", str(exc)[:80])
            return {"ok": False, "error": str(exc)}
        if not answer.get("ok"):
            self.count("control refusals", str(answer.get("error"))[:80])
        return answer

    # --- one command ---------------------------------------------------------------------

    async def issue(self, ini: Initiator, req: Request, kind: str) -> Response | BaseException:
        """Submit and wait; a lost connection or a hang becomes the exception it is."""
        s = ini.s
        if s is None or s.closed:
            raise SessionClosed("session down")
        cmd = s.submit(req.cdb, lun=req.lun, read=req.read, data=req.data, attr=req.attr)
        return await self.wait(ini, cmd, kind)

    async def wait(self, ini: Initiator, cmd: Command, kind: str) -> Response | BaseException:
        ini.inflight[cmd] = kind
        try:
            return await asyncio.wait_for(asyncio.shield(cmd.future), COMMAND_TIMEOUT)
        except TimeoutError:
            self.fail(f"a command got no answer in {COMMAND_TIMEOUT:g} s: {cmd!r} "
                      f"(session {ini.index})")
            self.count("hung commands")
            asyncio.get_running_loop().create_task(ini.drop("rst"))
            with contextlib.suppress(BaseException):
                return await asyncio.wait_for(asyncio.shield(cmd.future), 5)
            return SessionClosed("hung")
        except (SessionClosed, TargetError) as exc:
            return exc
        finally:
            ini.inflight.pop(cmd, None)

    def settle(self, ini: Initiator, resp: Response | BaseException, kind: str,
               category: str) -> str:
        """Count a command's end; returns its outcome class."""
        cls, what = outcome(resp)
        self.outcomes[f"{kind}: {what}"] += 1
        if isinstance(resp, Response):
            self.ops[category] += 1
        if isinstance(resp, SessionClosed):
            ini.lost()
        elif isinstance(resp, TargetError):
            self.fail(f"protocol: {resp}")
            ini.lost()
        if what.startswith("unexpected"):
            msg = f"{kind}: {what} (session {ini.index})"
            self.unexpected.append(msg)
            if len(self.unexpected) <= 10:
                self.say(f"UNEXPECTED: {msg}")
        return cls

    # --- the operations -----------------------------------------------------------------

    def pick_range(self, m: LuModel, most: int) -> tuple[int, int] | None:
        rng = self.rng
        for _ in range(8):
            n = rng.randint(1, most) if rng.random() < 0.5 else rng.randint(1, min(8, most))
            lba = rng.randrange(0, m.blocks - n + 1)
            if m.lock(lba, n):
                return lba, n
        return None

    async def op_read(self, ini: Initiator, m: LuModel, lba: int, n: int, where: str) -> str:
        c = cdb.read10(lba, n) if self.rng.random() < 0.6 else cdb.read16(lba, n)
        resp = await self.issue(ini, Request(c, m.lun, read=n * m.bs), "READ")
        cls = self.settle(ini, resp, "READ", "reads")
        if cls == DONE:
            self.add_errors(m.verify(lba, n, resp.data, where, self.now()))
        return cls

    async def op_write(self, ini: Initiator, m: LuModel, lba: int, n: int) -> str:
        gen = m.next_gen()
        r = self.rng.random()
        c = (cdb.write10(lba, n) if r < 0.45 else cdb.write16(lba, n) if r < 0.9
             else cdb.write10(lba, n, fua=True))
        resp = await self.issue(ini, Request(c, m.lun, data=write_data(m.lun, lba, n, gen,
                                                                       m.bs)), "WRITE")
        return self.apply(ini, m, resp, "WRITE", "writes", lba, n, gen)

    def apply(self, ini: Initiator, m: LuModel, resp: Response | BaseException, kind: str,
              category: str, lba: int, n: int, gen: int) -> str:
        cls = self.settle(ini, resp, kind, category)
        if gen:
            m.note(gen, [kind, lba, n, ini.index, round(self.now(), 3), outcome(resp)[1]])
        if cls == DONE:
            m.written(lba, n, gen)
        elif cls == UNCERTAIN:
            m.maybe_written(lba, n, gen)
        return cls

    async def op_write_same(self, ini: Initiator, m: LuModel, lba: int, n: int) -> str:
        rng = self.rng
        unmap = m.spec.thin and rng.random() < 0.5
        ndob = m.spec.thin and not unmap and rng.random() < 0.3
        if ndob or unmap or rng.random() < 0.5:
            c = cdb.write_same16(lba, n, unmap=unmap, ndob=ndob)
        else:
            c = cdb.write_same10(lba, n)
        if unmap or ndob:
            gen, data, category = 0, (b"" if ndob else m.zero), "others"
            if not ndob and rng.random() < 0.5:
                # SBC-4 4.7.4.5/5.50: with UNMAP the blocks are deallocated whatever the
                # Data-Out holds; LBPRZ=1 makes them read as zeros.
                data = make_block(m.lun, lba, n, m.next_gen(), m.bs, KIND_SAME)
        else:
            gen = m.next_gen()
            data, category = make_block(m.lun, lba, n, gen, m.bs, KIND_SAME), "writes"
        resp = await self.issue(ini, Request(c, m.lun, data=data), "WRITE SAME")
        return self.apply(ini, m, resp, "WRITE SAME", category, lba, n, gen)

    async def op_unmap(self, ini: Initiator, m: LuModel, lba: int, n: int) -> str:
        rng = self.rng
        ranges = []
        pos = lba
        while pos < lba + n and len(ranges) < 3:
            length = rng.randint(1, lba + n - pos)
            ranges.append((pos, length))
            pos += length + rng.randint(0, 8)
        c, params = cdb.unmap(ranges)
        resp = await self.issue(ini, Request(c, m.lun, data=params), "UNMAP")
        cls = self.settle(ini, resp, "UNMAP", "others")
        for start, length in ranges:
            if cls == DONE:
                m.written(start, length, 0)
            elif cls == UNCERTAIN:
                m.maybe_written(start, length, 0)
        return cls

    async def op_sync(self, ini: Initiator, m: LuModel) -> str:
        resp = await self.issue(ini, Request(cdb.synchronize_cache10(), m.lun),
                                "SYNCHRONIZE CACHE")
        return self.settle(ini, resp, "SYNCHRONIZE CACHE", "others")

    async def op_chain(self, ini: Initiator, m: LuModel, lba: int, n: int) -> None:
        """Overlapping commands of one session in one burst, applied in CmdSN order. The
        first covers [lba, lba+n); each later one that range or a small part of it, so a
        later command can have all its data in while an earlier one still waits for its
        Data-Out."""
        rng = self.rng
        shape = rng.choice(self.o.chains)
        reqs, plan = [], []
        for i, step in enumerate(shape):
            a, k = lba, n
            if i and rng.random() < 0.5:
                k = rng.randint(1, min(4, n))
                a = lba + rng.randrange(n - k + 1)
            if step == "W":
                gen = m.next_gen()
                reqs.append(Request(cdb.write10(a, k), m.lun,
                                    data=write_data(m.lun, a, k, gen, m.bs)))
            else:
                gen = 0
                reqs.append(Request(cdb.read10(a, k), m.lun, read=k * m.bs))
            plan.append((step, gen, a, k))
        s = ini.s
        if s is None or s.closed:
            raise SessionClosed("session down")
        cmds = await s.burst(reqs)
        results = [await self.wait(ini, c, f"chain {shape}") for c in cmds]
        state = {b: m.possible(b) for b in range(lba, lba + n)}
        before = {b: sorted(v) for b, v in state.items()}
        story = [f"{step}{gen or ''}@{a}+{k}:{outcome(r)[1]}"
                 for (step, gen, a, k), r in zip(plan, results, strict=True)]
        for (step, gen, a, k), resp in zip(plan, results, strict=True):
            blocks = range(a, a + k)
            if step == "W":
                cls = self.settle(ini, resp, f"chain {shape} WRITE", "writes")
                m.note(gen, [f"chain {shape} WRITE", a, k, ini.index, round(self.now(), 3),
                             outcome(resp)[1]])
                for b in blocks:
                    if cls == DONE:
                        state[b] = {gen}
                    elif cls == UNCERTAIN:
                        state[b] = state[b] | {gen}
            else:
                cls = self.settle(ini, resp, f"chain {shape} READ", "reads")
                if cls == DONE:
                    errors = m.verify(a, k, resp.data, f"chain {shape}", self.now(),
                                      expect={b: state[b] for b in blocks})
                    for e in errors:
                        e.update(session=ini.index, profile=ini.profile, chain=story,
                                 before=before[e["lba"]] if "lba" in e else None)
                    self.add_errors(errors)
                    for b in blocks:
                        state[b] = m.possible(b)  # narrowed by the read
        # What the chain leaves: each block's possibilities after its last command
        # (UNKNOWN: a verify error earlier, until a certain write).
        uncertain = False
        for b, v in state.items():
            if UNKNOWN in v or len(v) == 1:
                m.cur[b] = UNKNOWN if UNKNOWN in v else next(iter(v))
                m.uncertain.pop(b, None)
            else:
                m.uncertain[b] = v
                uncertain = True
        if uncertain:
            m.narrow.append((lba, n))

    async def release(self, ini: Initiator, m: LuModel, lba: int, login: int) -> None:
        """Unlock a range; if the session's connection was lost meanwhile, only once it has
        logged in again: by then the target has ended the old connection's commands (a
        login with the same ISID reinstates the session, RFC 7143 6.3.5; the old connection
        is no longer read), so no write of it can land after a later read of the range."""
        if ini.logins == login and (ini.s is None or ini.s.closed):
            self.count("ranges held until the session's new login")
            deadline = self.now() + 120
            while ini.logins == login and not ini.retired and self.now() < deadline:
                await asyncio.sleep(0.005)
        m.unlock(lba)

    async def worker(self, ini: Initiator) -> None:
        rng = self.rng
        while not self.stopping:
            await ini.up.wait()
            if self.stopping or ini.retired:
                return
            m = rng.choice(self.models)
            login = ini.logins
            narrowing = None
            if m.narrow and rng.random() < 0.7:
                lba, n = m.narrow.popleft()
                if m.lock(lba, n):
                    narrowing = (lba, n)
                else:
                    m.narrow.append((lba, n))
            try:
                if narrowing is not None:
                    lba, n = narrowing
                    try:
                        await self.op_read(ini, m, lba, n, "narrow")
                    finally:
                        await self.release(ini, m, lba, login)
                    continue
                r = rng.random()
                if r < 0.03:
                    await self.op_sync(ini, m)
                    continue
                most = 256 if r < 0.14 else MAX_BLOCKS
                got = self.pick_range(m, most)
                if got is None:
                    await asyncio.sleep(0.001)
                    continue
                lba, n = got
                try:
                    if r < 0.09:
                        await self.op_write_same(ini, m, lba, n)
                    elif r < 0.14:
                        if m.spec.thin:
                            await self.op_unmap(ini, m, lba, n)
                        else:
                            await self.op_write_same(ini, m, lba, n)
                    elif r < 0.18 and self.o.chains:
                        await self.op_chain(ini, m, lba, min(n, MAX_BLOCKS))
                    elif r < 0.58:
                        await self.op_read(ini, m, lba, n, "read")
                    else:
                        await self.op_write(ini, m, lba, n)
                finally:
                    await self.release(ini, m, lba, login)
            except SessionClosed:
                ini.lost()
                await asyncio.sleep(0.001)

    # --- sweeps (fill, final verify) -----------------------------------------------------

    async def sweep(self, what: str) -> None:
        """Write (fill) or read (verify) every block of every LU, all sessions at --qd."""
        jobs: deque[tuple[LuModel, int, int]] = deque()
        for m in self.models:
            chunk = max(MAX_BLOCKS, (128 << 10) // m.bs)
            for lba in range(0, m.blocks, chunk):
                jobs.append((m, lba, min(chunk, m.blocks - lba)))

        async def one(ini: Initiator) -> None:
            while jobs:
                m, lba, n = jobs.popleft()
                for attempt in range(50):
                    await ini.up.wait()
                    login = ini.logins
                    if not m.lock(lba, n):
                        await asyncio.sleep(0.001)
                        continue
                    try:
                        if what == "fill":
                            cls = await self.op_write(ini, m, lba, n)
                        else:
                            cls = await self.op_read(ini, m, lba, n, "final")
                    except SessionClosed:
                        cls = UNCERTAIN
                        ini.lost()
                    finally:
                        await self.release(ini, m, lba, login)
                    if cls == DONE:
                        break
                    await asyncio.sleep(0.01 * attempt)
                else:
                    self.fail(f"{what}: LUN {m.lun} LBA {lba}+{n} did not complete in 50 tries")

        await asyncio.gather(*(one(ini) for ini in self.initiators for _ in range(self.o.qd)))

    # --- events --------------------------------------------------------------------------

    def _interval(self, mean: float) -> float:
        return self.rng.expovariate(1.0 / mean)

    async def pause(self, seconds: float) -> bool:
        """Sleep between events; True when the events are to stop. (They stop on this
        flag, not by cancellation: on Python 3.11 asyncio.wait_for, which pipelined uses
        for TMFs, can swallow a cancellation that comes as its future completes, CPython
        gh-86296, and the task would go on.)"""
        if self.events_done.is_set():
            return True
        try:
            await asyncio.wait_for(self.events_done.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def aborter(self) -> None:
        while not await self.pause(self._interval(self.o.abort_every)):
            ups = [i for i in self.initiators if i.up.is_set() and i.inflight]
            if not ups:
                continue
            ini = self.rng.choice(ups)
            s = ini.s
            # Only this connection's commands: ITTs start again in every new session, so
            # an older command's ITT may name another task now.
            cands = [c for c in ini.inflight
                     if c.session is s and c.sent is not None and not c.future.done()]
            writes = [c for c in cands if c.r2ts and c.data]
            if not cands or s is None:
                continue
            victim = self.rng.choice(writes or cands) if self.rng.random() < 0.5 else \
                self.rng.choice(cands)
            try:
                code = await s.abort_task(victim)
            except (TimeoutError, SessionClosed, TargetError) as exc:
                self.count("ABORT TASK", type(exc).__name__)
                continue
            self.ops["others"] += 1
            self.count("ABORT TASK", _tmf_name(code))

    async def set_tas(self, ini: Initiator, lun: int) -> bool:
        """MODE SELECT(10) the control page with TAS=1 (retrying over UA, BUSY...). A session
        that is down does not use up an attempt: the loop waits for its new login (a closed
        session whose reconnection has not started yet is handed to lost() first, or the
        attempts would all go at once while `up` is still set)."""
        attempts = 0
        while attempts < 40:
            s = ini.s
            if s is None or s.closed:
                ini.lost()
                await asyncio.sleep(0.05)
                await ini.up.wait()
                if ini.retired:
                    return False
                continue
            attempts += 1
            try:
                sense = await s.command(cdb.mode_sense10(cdb.CONTROL_PAGE), lun=lun, read=252)
                if sense.status != Status.GOOD:
                    await asyncio.sleep(0.01)
                    continue
                if cdb.control_mode_tas(sense.data):
                    return True
                params = cdb.control_page_select(sense.data, tas=True)
                sel = await s.command(cdb.mode_select10(len(params)), lun=lun, data=params)
                self.ops["others"] += 2
                if sel.status == Status.GOOD:
                    return True
                if sel.status == Status.CHECK_CONDITION and sel.sense_key != UNIT_ATTENTION:
                    self.fail(f"MODE SELECT TAS=1 on LUN {lun}: sense {sel.sense.hex()}")
                    return False
            except (TimeoutError, SessionClosed, TargetError):
                ini.lost()
                await asyncio.sleep(0.05)
        self.fail(f"could not set TAS=1 on LUN {lun}")
        return False

    async def resetter(self) -> None:
        while not await self.pause(self._interval(self.o.reset_every)):
            ups = [i for i in self.initiators if i.up.is_set()]
            if not ups:
                continue
            ini = self.rng.choice(ups)
            m = self.rng.choice(self.models)
            async with self.reset_lock:
                s = ini.s
                if s is None:
                    continue
                try:
                    code = await s.lu_reset(m.lun)
                except (TimeoutError, SessionClosed, TargetError) as exc:
                    self.count("LOGICAL UNIT RESET", type(exc).__name__)
                    ini.lost()
                    continue
                self.ops["others"] += 1
                self.count("LOGICAL UNIT RESET", _tmf_name(code))
                if code != TmfResponse.COMPLETE:
                    self.fail(f"LOGICAL UNIT RESET of LUN {m.lun} answered {_tmf_name(code)}")
                await self.set_tas(ini, m.lun)

    async def dropper(self) -> None:
        modes = ("close", "rst", "rst-mid-write", "close-mid-read", "target-drop")
        while not await self.pause(self._interval(self.o.drop_every)):
            ups = [i for i in self.initiators if i.up.is_set()]
            if not ups:
                continue
            ini = self.rng.choice(ups)
            how = self.rng.choice(modes)
            if how == "target-drop":
                answer = await self.ctl({"command": "fault-add", "rule": {
                    "action": "drop", "initiator": ini.name,
                    "ops": ["WRITE(10)", "WRITE(16)"], "once": True}})
                if answer.get("ok"):
                    for _ in range(200):
                        if not ini.up.is_set():
                            break
                        await asyncio.sleep(0.01)
                    await self.ctl({"command": "fault-clear", "id": answer["id"]})
                self.count("drops", how if not ini.up.is_set() else how + " (no write came)")
                continue
            if how.endswith("mid-write") or how.endswith("mid-read"):
                want_write = how.endswith("mid-write")
                caught = False
                for _ in range(250):
                    # a write between its R2T and its status; a read of 32 KiB or more
                    # sent and not answered (Data-In is parsed in one go, so "between
                    # its first Data-In and its status" cannot be seen from here)
                    if any((c.r2ts and c.data) if want_write else
                           (c.read >= 32768 and c.sent is not None)
                           for c in ini.inflight if not c.future.done()):
                        caught = True
                        break
                    await asyncio.sleep(0.002)
                how += "" if caught else " (none in progress)"
            self.count("drops", how)
            await ini.drop("rst" if how.startswith("rst") else "close")

    async def faulter(self) -> None:
        rng = self.rng
        while not await self.pause(self._interval(self.o.fault_every)):
            ids = []
            for _ in range(rng.randint(1, 2)):
                lun = rng.choice(self.models).lun
                rule = rng.choice([
                    {"action": "check-condition", "lun": lun, "sense": "03/0C/02",
                     "ops": ["WRITE(10)", "WRITE(16)", "WRITE SAME(10)", "WRITE SAME(16)"],
                     "every": rng.randint(2, 9)},
                    {"action": "check-condition", "lun": lun, "sense": "03/11/00",
                     "ops": ["READ(10)", "READ(16)"], "every": rng.randint(3, 9)},
                    {"action": "busy", "lun": lun, "every": rng.randint(3, 12)},
                    {"action": "task-set-full", "every": rng.randint(5, 20)},
                    {"action": "delay", "lun": lun, "delay_ms": round(rng.uniform(2, 60), 1),
                     "every": rng.randint(2, 8)},
                ])
                answer = await self.ctl({"command": "fault-add", "rule": rule})
                if answer.get("ok"):
                    ids.append(answer["id"])
                    self.count("fault rules", rule["action"])
            await asyncio.sleep(rng.uniform(0.3, 2.0))
            for rid in ids:
                await self.ctl({"command": "fault-clear", "id": rid})

    async def corrupter(self) -> None:
        """Self-test: change blocks behind the target's back, read them, expect errors."""
        files = [m for m in self.models if m.spec.store == "file"]
        for k in range(self.o.corrupt):
            await asyncio.sleep(0.3)
            kind = CORRUPTIONS[k % len(CORRUPTIONS)]
            m = self.alias_of if kind == "wrong-lun" else files[k % len(files)]
            for _ in range(1000):
                lba = self.rng.randrange(m.blocks)
                g = m.cur[lba]
                if lba not in m.uncertain and g > 0 and m.lock(lba, 1):
                    break
            else:
                self.fail("corrupter: no block to corrupt")
                return
            try:
                await self._corrupt(m, lba, g, kind)
            finally:
                m.unlock(lba)

    async def _corrupt(self, m: LuModel, lba: int, g: int, kind: str) -> None:
        bs = m.bs
        with open(m.spec.path, "r+b") as f:
            f.seek(lba * bs)
            old = f.read(bs)
        if kind == "bitflip":
            new = bytearray(old)
            new[HEADER_LEN + self.rng.randrange(bs - HEADER_LEN)] ^= 1 << self.rng.randrange(8)
            new = bytes(new)
        elif kind == "garbage":
            new = self.rng.randbytes(bs)
        elif kind == "zeros":
            new = bytes(bs)
        elif kind == "misplaced":
            other = (lba + 1) % m.blocks
            new = make_block(m.lun, other, 1, max(1, m.cur[other]), bs, KIND_WRITE)
        elif kind == "stale-generation":
            new = make_block(m.lun, lba, 1, g - 1 if g > 1 else FOREIGN_GEN, bs, KIND_WRITE)
        else:  # wrong-lun: a WRITE through the alias LUN on the same file
            new = None
        ini = next((i for i in self.initiators if i.up.is_set()), None)
        if ini is None:
            await self.initiators[0].up.wait()
            ini = self.initiators[0]
        if new is not None:
            fd = os.open(m.spec.path, os.O_WRONLY)
            try:
                os.pwrite(fd, new, lba * bs)
            finally:
                os.close(fd)
        else:
            data = make_block(self.alias.lun, lba, 1, FOREIGN_GEN, bs, KIND_WRITE)
            for _ in range(20):
                resp = await self.issue(ini, Request(cdb.write10(lba, 1), self.alias.lun,
                                                     data=data), "WRITE (alias)")
                if isinstance(resp, Response) and resp.status == Status.GOOD:
                    break
        self.corruptions.append({"lun": m.lun, "lba": lba, "kind": kind})
        before = self.verify_errors
        for _ in range(20):
            if await self.op_read(ini, m, lba, 1, f"corrupt {kind}") == DONE:
                break
        if self.verify_errors == before:
            self.say(f"self-test: corruption {kind} at LUN {m.lun} LBA {lba} not detected")

    # --- figures -------------------------------------------------------------------------

    def sample(self) -> dict[str, Any]:
        pid = self.target.pid
        mem: dict[str, int] = {}
        fds = None
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    mem[key] = int(value.split()[0]) * 1024
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
        rec = {"t": round(self.now(), 2), "phase": self.phase, "rss": mem.get("VmRSS"),
               "anon": mem.get("RssAnon"), "file": mem.get("RssFile"),
               "shmem": mem.get("RssShmem"), "fds": fds,
               "events": {k: sum(v for e, v in self.counters.items() if e.startswith(k))
                          for k in ("drops", "LOGICAL UNIT RESET", "ABORT TASK",
                                    "fault rules")}}
        self.samples.append(rec)
        return rec

    async def sampler(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.sample()
            if not self.target.alive:
                self.fail(f"the target died (exit {self.target.proc.returncode})")
                self.stopping = True
                for ini in self.initiators:
                    ini.retired = True
                    ini.up.set()
                return

    async def status(self) -> dict[str, Any] | None:
        answer = await self.ctl({"command": "status"})
        if not answer.get("ok"):
            return None
        names = [(s["initiator"], s["isid"]) for s in answer["sessions"]]
        dup = [n for n, k in Counter(names).items() if k > 1]
        if dup:
            self.count("duplicate sessions in the target's registry")
            self.fail(f"the target lists a session twice: {dup}")
        luns = answer["targets"][0]["luns"]
        rec = {"t": round(self.now(), 2), "sessions": len(answer["sessions"]),
               "task_sets": {lu["lun"]: {"queued": lu["task_set"]["queued_now"],
                                         "running": lu["task_set"]["running"],
                                         "aborted": lu["task_set"]["aborted"],
                                         "task_set_full": lu["task_set"]["task_set_full"]}
                             for lu in luns},
               "faults": len(answer.get("faults", []))}
        self.statuses.append(rec)
        return rec

    async def reporter(self) -> None:
        last_ops, last_t = Counter(self.ops), self.now()
        while True:
            await asyncio.sleep(self.o.report_every)
            st = await self.status()
            rec = self.sample()
            t = self.now()
            dt = max(t - last_t, 1e-6)
            rates = {k: round((self.ops[k] - last_ops[k]) / dt, 1)
                     for k in ("reads", "writes", "others")}
            last_ops, last_t = Counter(self.ops), t
            uncertain = sum(len(m.uncertain) for m in self.models)
            report = {"t": round(t, 1), "phase": self.phase, "ops_per_s": rates,
                      "verify_errors": self.verify_errors, "rss": rec["rss"], "fds": rec["fds"],
                      "sessions": st["sessions"] if st else None, "uncertain_blocks": uncertain,
                      "drops": sum(v for k, v in self.counters.items() if k.startswith("drops")),
                      "logins": sum(i.logins for i in self.initiators)}
            self.reports.append(report)
            self.say(f"[{t:7.1f}s {self.phase:>6}] ops/s read {rates['reads']:7.1f} write "
                     f"{rates['writes']:7.1f} other {rates['others']:6.1f} | verify errors "
                     f"{self.verify_errors} | RSS {_mib(rec['rss'])} MiB, fds {rec['fds']}, "
                     f"sessions {report['sessions']} | drops {report['drops']}, logins "
                     f"{report['logins']}, uncertain blocks {uncertain}")

    # --- the run -------------------------------------------------------------------------

    async def run(self) -> None:
        o = self.o
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self.dump_tasks)
        self.sample()
        self.initiators = [Initiator(self, i) for i in range(o.sessions)]
        await asyncio.gather(*(i.connect() for i in self.initiators))
        background = [asyncio.create_task(self.sampler()), asyncio.create_task(self.reporter())]
        try:
            self.phase = "fill"
            self.say(f"soak: seed {self.seed}, {o.sessions} sessions x QD{o.qd}, "
                     f"{len(self.models)} LUs, {o.minutes:g} min; filling the LUs")
            await self.sweep("fill")
            for m in self.models:
                await self.set_tas(self.initiators[0], m.lun)
            if self.alias is not None:
                await self.set_tas(self.initiators[0], self.alias.lun)
            self.phase = "mixed"
            start = self.now()
            self.ops_at_start = Counter(self.ops)
            self.sample()
            events = []
            for mean, fn in ((o.abort_every, self.aborter), (o.reset_every, self.resetter),
                             (o.drop_every, self.dropper), (o.fault_every, self.faulter)):
                if mean > 0:
                    events.append(asyncio.create_task(fn()))
            workers = [asyncio.create_task(self.worker(ini)) for ini in self.initiators
                       for _ in range(o.qd)]
            corrupter = asyncio.create_task(self.corrupter()) if o.corrupt else None
            deadline = start + o.minutes * 60
            while self.now() < deadline and not self.stopping:
                await asyncio.sleep(min(0.5, max(0.0, deadline - self.now())))
            if corrupter is not None:
                await corrupter
            self.events_done.set()
            await self.join(events, "event tasks", STOP_TIMEOUT)
            await self.ctl({"command": "fault-clear"})
            self.stopping = True
            await self.join(workers, "workers", STOP_TIMEOUT)
            self.mixed_span = (start, self.now())
            self.ops_at_end = Counter(self.ops)
            self.sample()
            if not self.target.alive:
                return
            self.phase = "verify"
            self.stopping = False
            for ini in self.initiators:
                if ini._reconnecting is not None:
                    await ini._reconnecting
                if not ini.up.is_set():
                    await ini.reconnect()
            await self.sweep("verify")
            self.sample()
            self.phase = "end"
            await self.finish()
        finally:
            for t in background:
                t.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            for ini in self.initiators:
                ini.retired = True
                if ini.s is not None:
                    await ini.s.close()
                    self.retire(ini.s)

    async def join(self, tasks: list[asyncio.Task], what: str,
                   timeout: float = 30.0) -> None:
        """Wait for tasks to end; those that do not (a hang) are a failure, with stacks."""
        if not tasks:
            return
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for t in done:
            if not t.cancelled() and t.exception() is not None:
                self.fail(f"{what}: {t.get_name()} failed: {t.exception()!r}")
        if pending:
            self.fail(f"{len(pending)} {what} still running {timeout:g} s after the end:\n"
                      + "\n".join(task_stack(t) for t in list(pending)[:5]))
            for t in pending:
                t.cancel()
            await asyncio.wait(pending, timeout=5)

    def dump_tasks(self) -> None:
        """SIGUSR1: every task's stack, to see where a soak hangs."""
        self.say("\n".join(task_stack(t) for t in asyncio.all_tasks()))

    async def finish(self) -> None:
        """Log every session out; then the task sets must be empty and a new session
        must be served."""
        for ini in self.initiators:
            ini.retired = True
            s = ini.s
            if s is None:
                continue
            try:
                await s.drain(10)
                await s.logout()
            except (TimeoutError, SessionClosed, TargetError) as exc:
                self.fail(f"logout of session {ini.index}: {exc!r}")
            await s.close()
            self.retire(s)
            ini.s = None
        st = None
        for _ in range(50):
            st = await self.status()
            if st is not None and st["sessions"] == 0:
                break
            await asyncio.sleep(0.1)
        left = {lun: v for lun, v in (st or {}).get("task_sets", {}).items()
                if v["queued"] or v["running"]}
        self.final["sessions_after_logout"] = st["sessions"] if st else None
        self.final["tasks_left"] = left
        if st is None or st["sessions"]:
            self.fail(f"sessions left after logout: {st and st['sessions']}")
        if left:
            self.fail(f"tasks left in the task sets after all sessions logged out: {left}")
        self.final["serving"] = await self.serving()
        if not self.final["serving"]:
            self.fail("the target does not serve a new session at the end")
        self.sample()

    async def serving(self) -> bool:
        m = self.models[0]
        s = Session(HOST, self.port, TARGET_IQN, initiator_name=initiator_iqn("soak-final"),
                    isid=0x400000002000, timeout=10.0)
        try:
            await s.open()
            for _ in range(8):
                if (await s.command(cdb.TEST_UNIT_READY, lun=m.lun)).status == Status.GOOD:
                    break
            resp = await s.command(cdb.read10(0, 8), lun=m.lun, read=8 * m.bs)
            if resp.status != Status.GOOD:
                return False
            self.add_errors(m.verify(0, 8, resp.data, "serving", self.now()))
            await s.logout()
            return True
        except (TimeoutError, OSError, SessionClosed, LoginFailed, TargetError):
            return False
        finally:
            await s.close()
            self.retire(s)

    # --- summary -------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        start, end = self.mixed_span
        span = max(end - start, 1e-6)
        mixed = [s for s in self.samples if s["rss"] is not None and start <= s["t"] <= end]
        rss = [s["rss"] for s in self.samples if s["rss"] is not None]
        fds = [s["fds"] for s in mixed if s["fds"] is not None]
        level = levelled([(s["t"], s["rss"]) for s in mixed])
        if level["levelled"] is False:
            self.fail(f"RSS did not level off: {level['decision']}")
        bound = bounded(mixed, self.o)
        if bound["bounded"] is False:
            self.fail(f"RSS beyond its bound: {bound['bound_decision']}")
        broken = {k: v for k, v in self.protocol.items() if k not in self.o.tolerate}
        if broken:
            self.fail(f"the target broke RFC 7143: {broken}")
        if self.unexpected:
            self.fail(f"{len(self.unexpected)} commands ended with an unexpected status")
        if self.verify_errors:
            self.fail(f"{self.verify_errors} verify errors")
        return {
            "seed": self.seed,
            "options": {k: (str(v) if isinstance(v, Path) else sorted(v)
                            if isinstance(v, frozenset) else v)
                        for k, v in asdict(self.o).items() if k != "print"},
            "luns": [asdict(m.spec) for m in self.models],
            "mixed_seconds": round(span, 1),
            "ops": dict(self.ops),
            "ops_per_s_mixed": {k: round((self.ops_at_end[k] - self.ops_at_start[k]) / span, 1)
                                for k in ("reads", "writes", "others")},
            "verify_errors": self.verify_errors,
            "errors": self.errors,
            "blocks_verified": sum(m.verified_blocks for m in self.models),
            "uncertain_blocks_left": sum(len(m.uncertain) for m in self.models),
            "unknown_blocks_left": sum(m.cur.count(UNKNOWN) for m in self.models),
            "outcomes": dict(sorted(self.outcomes.items())),
            "events": dict(sorted(self.counters.items())),
            "unexpected": self.unexpected[:100],
            "protocol_errors": dict(self.protocol),
            "protocol_examples": self.protocol_examples,
            "late_responses": self.late_responses,
            "pdus_after_close": self.after_close,
            "rejects": self.rejects,
            "nop_ins_answered": self.nop_ins,
            "logins": sum(i.logins for i in self.initiators),
            "rss": {"start": rss[0] if rss else None,
                    "after_fill": mixed[0]["rss"] if mixed else None,
                    "peak": max(rss) if rss else None, "end": rss[-1] if rss else None,
                    **level, **bound},
            "fds": {"min": min(fds) if fds else None, "max": max(fds) if fds else None},
            "final": self.final,
            "corruptions": self.corruptions,
            "samples": self.samples,
            "reports": self.reports,
            "statuses": self.statuses,
        }


def levelled(samples: list[tuple[float, int]], margin: float = LEVEL_MARGIN,
             slack: int = LEVEL_SLACK) -> dict[str, Any]:
    """RSS levelled off when the last third's peak is at most the middle third's peak
    plus `margin` and `slack` (by time, over the mixed phase)."""
    if len(samples) < 6 or samples[-1][0] - samples[0][0] < LEVEL_MIN_SECONDS:
        return {"levelled": None, "decision": f"too short to decide ({len(samples)} samples; "
                f"the rule needs {LEVEL_MIN_SECONDS:g} s)"}
    t0, t1 = samples[0][0], samples[-1][0]
    third = (t1 - t0) / 3
    middle = [r for t, r in samples if t0 + third <= t < t0 + 2 * third]
    last = [r for t, r in samples if t >= t0 + 2 * third]
    if not middle or not last:
        return {"levelled": None, "decision": "a third without samples"}
    mid_max, last_max = max(middle), max(last)
    limit = int(mid_max * (1 + margin) + slack)
    ok = last_max <= limit
    # the slope over the last two thirds, for information
    pts = [(t, r) for t, r in samples if t >= t0 + third]
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    mr = sum(r for _, r in pts) / n
    var = sum((t - mt) ** 2 for t, _ in pts)
    slope = sum((t - mt) * (r - mr) for t, r in pts) / var if var else 0.0
    return {"levelled": ok, "middle_third_max": mid_max, "last_third_max": last_max,
            "limit": limit, "slope_mib_per_min": round(slope * 60 / MiB, 2),
            "decision": (f"last third's peak {_mib(last_max)} MiB "
                         f"{'<=' if ok else '>'} middle third's peak {_mib(mid_max)} MiB "
                         f"+ {margin:.0%} + {_mib(slack)} MiB = {_mib(limit)} MiB")}


def bounded(mixed: list[dict[str, Any]], o: SoakOptions) -> dict[str, Any]:
    """The mixed phase's RSS peak against the RSS after the fill plus twice the data in
    flight plus GARBAGE_ALLOWANCE."""
    rss = [s["rss"] for s in mixed if s["rss"] is not None]
    if not rss:
        return {"bounded": None, "bound_decision": "no samples"}
    allowance = 2 * o.sessions * o.qd * MAX_BLOCKS * 4096 + GARBAGE_ALLOWANCE
    limit = rss[0] + allowance
    peak = max(rss)
    ok = peak <= limit
    return {"bounded": ok, "bound": limit,
            "bound_decision": f"mixed-phase peak {_mib(peak)} MiB {'<=' if ok else '>'} "
                              f"{_mib(rss[0])} MiB after the fill + {_mib(allowance)} MiB "
                              f"= {_mib(limit)} MiB"}


def task_stack(task: asyncio.Task) -> str:
    out = io.StringIO()
    task.print_stack(limit=12, file=out)
    return f"--- {task.get_name()}:\n{out.getvalue()}"


def _mib(n: int | None) -> str:
    return "?" if n is None else f"{n / MiB:.1f}"


def _tmf_name(code: int) -> str:
    try:
        return TmfResponse(code).name
    except ValueError:
        return f"response {code}"


# --- setting up ------------------------------------------------------------------------------

def lu_specs(o: SoakOptions, tag: str) -> list[LuSpec]:
    size = o.lu_mib * MiB
    kinds = [
        ("memory", 512, True, None),
        ("memory", 4096, False, None),
        ("file", 512, False, o.shm_dir),
        ("file", 4096, True, o.disk_dir),
    ]
    specs = []
    for i in range(o.luns):
        store, bs, thin, where = kinds[i % len(kinds)]
        path = str(Path(where) / f"soak-{tag}-lun{i}.img") if where else None
        specs.append(LuSpec(i, store, bs, size, thin, path, str(where or "memory")))
    return specs


def write_config(path: Path, specs: list[LuSpec], alias: LuSpec | None) -> None:
    lines = ["nop_interval = 5", "", "[[target]]", f'iqn = "{TARGET_IQN}"', ""]
    for s in [*specs, *([alias] if alias else [])]:
        lines += ["[[target.lun]]", f"lun = {s.lun}", f'store = "{s.store}"',
                  f"block_size = {s.block_size}", f"thin = {'true' if s.thin else 'false'}"]
        if s.store == "file":
            lines += [f'path = "{s.path}"']
            if s is not alias:
                lines += [f"size = {s.size}"]
        else:
            lines += [f"size = {s.size}"]
        lines.append("")
    path.write_text("\n".join(lines))


def run(o: SoakOptions) -> tuple[int, dict[str, Any]]:
    """Start the target, soak it, stop it; (exit code, summary)."""
    own = o.workdir is None
    workdir = Path(o.workdir or tempfile.mkdtemp(prefix="soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{int(time.time() * 1000) % 10**8}"
    specs = lu_specs(o, tag)
    alias = None
    if o.corrupt:
        base = next((s for s in specs if s.store == "file"), None)
        if base is None:
            raise ValueError("the self-test needs a file LU (--luns 3 or more)")
        alias = LuSpec(base.lun + ALIAS_OFFSET, "file", base.block_size, base.size, base.thin,
                       base.path, base.where)
    files = [Path(s.path) for s in specs if s.path]
    config = workdir / "soak.toml"
    write_config(config, specs, alias)
    control = workdir / "control.sock"
    args = ["--config", str(config), "--control", str(control), "-q"]
    if o.event_loop:
        args += ["--event-loop", o.event_loop]
    summary: dict[str, Any] = {}
    try:
        with OurTarget(args, workdir=workdir, iqn=TARGET_IQN) as target:
            soak = Soak(o, target, specs, control, alias)
            t0 = time.monotonic()

            asyncio.run(soak.run())
            summary = soak.summary()
            alive = target.alive
            target.stop()
            log = target.log_path.read_text(errors="replace") if target.log_path else ""
            summary["target_log"] = str(target.log_path)
            summary["target_exit"] = target.proc.returncode if target.proc else None
            tracebacks = log.count("Traceback")
            summary["target_log_tracebacks"] = tracebacks
            if tracebacks:
                soak.fail(f"the target's log has {tracebacks} traceback(s): {target.log_path}")
            if not alive:
                soak.fail("the target was not running at the end")
            summary["seconds"] = round(time.monotonic() - t0, 1)
            summary["failures"] = soak.failures
            summary["ok"] = not soak.failures
    finally:
        for f in files:
            f.unlink(missing_ok=True)
            Path(str(f) + ".pr").unlink(missing_ok=True)
        if own and (summary.get("ok") or not summary):
            shutil.rmtree(workdir, ignore_errors=True)
    if o.json_path is not None:
        Path(o.json_path).write_text(json.dumps(summary, indent=1, default=str))
    return (0 if summary.get("ok") else 1), summary


def render_summary(s: dict[str, Any]) -> str:
    r = s["rss"]
    lines = [
        f"soak summary (seed {s['seed']}): {s['mixed_seconds']} s mixed, "
        f"{'OK' if s.get('ok') else 'FAILED'}",
        "  ops/s in the mixed phase: " + ", ".join(f"{k} {v}" for k, v in
                                                     s["ops_per_s_mixed"].items()),
        f"  commands with a status: {s['ops']}; blocks verified {s['blocks_verified']}",
        f"  verify errors: {s['verify_errors']}; uncertain blocks left "
        f"{s['uncertain_blocks_left']}, unknown {s['unknown_blocks_left']}",
        f"  RSS: start {_mib(r['start'])} MiB, after fill {_mib(r['after_fill'])}, peak "
        f"{_mib(r['peak'])}, end {_mib(r['end'])}; levelled: {r['levelled']} "
        f"({r['decision']}; slope {r.get('slope_mib_per_min')} MiB/min); bounded: "
        f"{r.get('bounded')} ({r.get('bound_decision')})",
        f"  fds {s['fds']['min']}..{s['fds']['max']}; logins {s['logins']}; NOP-Ins answered "
        f"{s['nop_ins_answered']}; late responses {s['late_responses']}; rejects "
        f"{s['rejects']}; PDUs after a session failed {s.get('pdus_after_close')}",
        "  events: " + ", ".join(f"{k} {v}" for k, v in s["events"].items()),
        f"  final: {s['final']}",
    ]
    if s["protocol_errors"]:
        lines.append(f"  protocol errors: {s['protocol_examples']}")
    for f in s.get("failures", []):
        lines.append(f"  FAILURE: {f}")
    rss_series = [x for x in s["samples"] if x["rss"] is not None]
    if rss_series:
        step = max(1, len(rss_series) // 12)
        lines.append("  RSS over time: " + ", ".join(
            f"{x['t']:.0f}s {_mib(x['rss'])}" for x in rss_series[::step]))
    return "\n".join(lines)
