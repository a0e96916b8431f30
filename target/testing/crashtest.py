"""Crash durability: what the target acknowledged survives SIGKILL and a restart.

One trial serves two image files from one target (LUN 0: the data LU, LUN 1: the
persistent-reservation LU, so that a reservation never blocks the writers), starts
client sessions, kills the target process with SIGKILL by its PID at a random moment,
restarts it on the same files and checks what it serves against what was acknowledged.

Rules of this module (the oracle is the standard's durability rules, never our code):
- Writers (one session each, own initiator name and ISID) own disjoint extents of LUN 0
  and write whole blocks in one of three modes:
  (a) WRITE(10)/(16) with FUA=1: the write is durable when it completes with GOOD
      (SBC-4 4.15 and the FUA bit of WRITE(10)/WRITE(16): the device server writes the
      blocks to the medium or a non-volatile cache before GOOD);
  (b) FUA=0 with the write cache on, a SYNCHRONIZE CACHE(10) of the whole medium after a
      few writes: the writes that completed before it was sent are durable once it
      returns GOOD (SBC-4 5.26); until then a write may read back old or new;
  (c) write cache off: MODE SENSE(10) of the caching mode page (08h), MODE SELECT(10)
      of the same page with only WCE changed to 0, MODE SENSE again to see WCE=0
      (SBC-4 6.5.5, SPC-4 6.10); then every FUA=0 write that returns GOOD is durable
      (SBC-4 4.15: with WCE=0 the device completes a write only once on the medium).
  WCE is one value of the LU (SPC-4 7.5.1): a writer in mode (c) makes every write
  write-through; the checks only ever rely on a writer's own claims, so this only
  strengthens what the others get. A MODE SELECT raises MODE PARAMETERS CHANGED for the
  other nexuses (SPC-4 7.5.1): a command that ends in UNIT ATTENTION was not executed
  and is sent again (SAM-5 5.14).
- Every block carries a header (magic, LBA, writer, generation, trial), filler derived
  from a per-trial key, and a BLAKE2b digest over the rest, so a torn, misplaced, stale
  or foreign block is told from a good one. A writer numbers its writes (generation);
  each generation is recorded as attempted *before* it is sent.
- After the restart every block of LUN 0 is read. Per LBA: a block whose digest or magic
  is wrong is torn; a good block naming another LBA is misplaced; a generation that was
  never sent to this LBA (or any data on an LBA never written) is unknown; a generation
  older than the newest durably acknowledged one is stale; zeros where a durable write
  was acknowledged are lost. An LBA with no durable write may hold zeros or any
  generation sent to it (in flight at the kill, or acknowledged but not yet durable).
  A multi-block write is not atomic (only WRITE ATOMIC is), so each block is judged on
  its own.
- APTPL (SPC-4 5.13.5.1, 6.16.3): one more session loops PERSISTENT RESERVE OUT on LUN 1
  (REGISTER and REGISTER AND IGNORE EXISTING KEY with new keys and APTPL=1, RESERVE,
  RELEASE, unregistering). After the restart the target must start at all (it exits
  with status 2 naming the state file when the file is corrupt), READ KEYS and READ
  RESERVATION must show the state after the last acknowledged PR OUT or after the one
  in flight at the kill, PRgeneration must be 0 (SPC-4 6.15.2: set to zero by a power
  on), and no temporary file of the state file (`<image>.pr?*`) may be left beside the
  image.
- Limitation: SIGKILL ends the process, not the machine: data the target handed to the
  kernel survives in the page cache whether or not it was fsynced. The test finds
  acknowledgements given before the data reached the kernel (user-space buffering, a
  status sent before pwritev), lost or misdirected writes, and state files that a kill
  leaves broken; it cannot tell whether fdatasync was called (that needs power loss:
  a VM or dm-flakey).
- Every process is stopped by PID on every path (OurTarget's context manager); client
  threads end when their connection drops. Nothing here is timed as an assertion.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import signal
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from target.scsi.task import Status
from target.shell.initiator import Initiator
from target.testing.cdb import sense_key
from target.testing.servers import OurTarget, ServerError, initiator_iqn

IQN = "iqn.2026-11.local.scsi-target:crashtest"
DATA_LUN = 0
PR_LUN = 1
PR_IMAGE_SIZE = 1 << 20
EXTENT_BLOCKS = 8
READ_CHUNK = 1 << 20
MODES = "abc"

MAGIC = b"CRASHTS1"
_HEADER = struct.Struct(">8sQIQI")  # magic, lba, writer, generation, trial (32 bytes)
DIGEST_LEN = 32

_WRITE10 = struct.Struct(">BBIBHB")
_WRITE16 = struct.Struct(">BBQIBB")
_PR_OUT = struct.Struct(">BBB2xIB")
_PR_OUT_PARAMS = struct.Struct(">QQIBx2x")
_PR_IN = struct.Struct(">BB5xHB")
_FUA = 0x08
_UNIT_ATTENTION = 0x06

# PERSISTENT RESERVE OUT service actions (SPC-4 6.16.2 table 219) and types (6.16.3).
REGISTER, RESERVE, RELEASE, REGISTER_AND_IGNORE = 0x00, 0x01, 0x02, 0x06
PR_TYPES = (0x01, 0x03, 0x05, 0x06, 0x07, 0x08)
_ALL_REGISTRANTS = (0x07, 0x08)


class CrashTestError(RuntimeError):
    """The trial could not be run (not a finding about the target)."""


# --- blocks -------------------------------------------------------------------------------

def make_block(bs: int, key: bytes, lba: int, writer: int, gen: int, trial: int) -> bytes:
    """The one block content of (trial key, LBA, writer, generation)."""
    head = _HEADER.pack(MAGIC, lba, writer, gen, trial)
    filler = hashlib.shake_128(key + struct.pack(">QIQ", lba, writer, gen)).digest(
        bs - _HEADER.size - DIGEST_LEN)
    body = head + filler
    return body + hashlib.blake2b(body, digest_size=DIGEST_LEN).digest()


def parse_block(block: bytes) -> tuple[int, int, int, int] | None:
    """(lba, writer, generation, trial) of a block whose magic and digest hold, else None."""
    body, digest = block[:-DIGEST_LEN], block[-DIGEST_LEN:]
    if block[:8] != MAGIC or hashlib.blake2b(body, digest_size=DIGEST_LEN).digest() != digest:
        return None
    _, lba, writer, gen, trial = _HEADER.unpack_from(block)
    return lba, writer, gen, trial


@dataclass
class LbaHistory:
    """What one writer did to one LBA: generations sent, the newest durably acknowledged."""

    writer: int
    attempted: set[int] = field(default_factory=set)
    durable: int = -1  # newest generation durably acknowledged; -1: none


VERDICTS_OK = ("ok", "zero-unwritten", "zero-not-durable")
VERDICTS_BAD = ("lost", "torn", "misplaced", "unknown", "stale")


def classify(block: bytes, lba: int, hist: LbaHistory | None, bs: int, key: bytes,
             trial: int) -> tuple[str, int | None]:
    """The verdict on one block read back at `lba`, and the generation it holds."""
    if block.count(0) == bs:
        if hist is None:
            return "zero-unwritten", None
        return ("lost" if hist.durable >= 0 else "zero-not-durable"), None
    parsed = parse_block(block)
    if parsed is None:
        return "torn", None
    blba, writer, gen, btrial = parsed
    if blba != lba:
        return "misplaced", gen
    if (hist is None or writer != hist.writer or btrial != trial or gen not in hist.attempted
            or block != make_block(bs, key, lba, writer, gen, trial)):
        return "unknown", gen
    if gen < hist.durable:
        return "stale", gen
    return "ok", gen


# --- SCSI helpers -------------------------------------------------------------------------

def command(ini: Initiator, cdb: bytes, *, lun: int, read: int = 0, data: bytes = b"",
            retries: int = 8):
    """A command sent again while it ends in UNIT ATTENTION (not executed, SAM-5 5.14)."""
    for _ in range(retries):
        r = ini.command(cdb, lun=lun, read=read, data=data)
        if not (r.status == Status.CHECK_CONDITION and sense_key(r.sense) == _UNIT_ATTENTION):
            return r
    return r


def session(port: int, tag: str, isid: int, luns: tuple[int, ...]) -> Initiator:
    """A logged-in session whose first-contact unit attentions are consumed on `luns`."""
    ini = Initiator("127.0.0.1", port, IQN, initiator_name=initiator_iqn(tag), isid=isid,
                    timeout=20.0)
    ini.connect()
    ini.login()
    for lun in luns:
        r = command(ini, bytes(6), lun=lun)  # TEST UNIT READY
        if r.status != Status.GOOD:
            raise CrashTestError(f"{tag}: TEST UNIT READY on LUN {lun}: status {r.status:#x} "
                                 f"sense {r.sense.hex()}")
    return ini


def write_cdb(lba: int, count: int, fua: bool, sixteen: bool) -> bytes:
    flags = _FUA if fua else 0
    if sixteen:
        return _WRITE16.pack(0x8A, flags, lba, count, 0, 0)  # WRITE(16), SBC-4 5.43
    return _WRITE10.pack(0x2A, flags, lba, 0, count, 0)  # WRITE(10), SBC-4 5.40


SYNC_CACHE10 = _WRITE10.pack(0x35, 0, 0, 0, 0, 0)  # whole medium (SBC-4 5.26)


def read16(lba: int, count: int) -> bytes:
    return _WRITE16.pack(0x88, 0, lba, count, 0, 0)


def mode_sense_caching(ini: Initiator, pc: int = 0) -> bytes:
    """The caching mode page (08h) from MODE SENSE(10), DBD=1 (SPC-4 6.12)."""
    cdb = struct.pack(">BBBBxxxHB", 0x5A, 0x08, (pc << 6) | 0x08, 0, 252, 0)
    r = command(ini, cdb, lun=DATA_LUN, read=252)
    if r.status != Status.GOOD:
        raise CrashTestError(f"MODE SENSE(10) caching page: status {r.status:#x} "
                             f"sense {r.sense.hex()}")
    d = r.data
    bdlen = struct.unpack_from(">H", d, 6)[0]
    page = d[8 + bdlen:]
    if len(page) < 3 or page[0] & 0x3F != 0x08:
        raise CrashTestError(f"MODE SENSE(10) did not return the caching page: {d.hex()}")
    return page[:2 + page[1]]


def disable_write_cache(ini: Initiator) -> None:
    """MODE SELECT(10) of the caching page as read, with only WCE set to 0 (SBC-4 6.5.5)."""
    page = bytearray(mode_sense_caching(ini))
    if not mode_sense_caching(ini, pc=1)[2] & 0x04:
        raise CrashTestError("WCE is not changeable on this LU")
    page[0] &= 0x3F  # PS is reserved in MODE SELECT; SPF=0
    page[2] &= ~0x04 & 0xFF
    params = bytes(8) + bytes(page)  # header: mode data length reserved, no descriptors
    cdb = struct.pack(">BBxxxxxHB", 0x55, 0x10, len(params), 0)  # PF=1
    r = command(ini, cdb, lun=DATA_LUN, data=params)
    if r.status != Status.GOOD:
        raise CrashTestError(f"MODE SELECT(10) WCE=0: status {r.status:#x} "
                             f"sense {r.sense.hex()}")
    if mode_sense_caching(ini)[2] & 0x04:
        raise CrashTestError("MODE SELECT(10) WCE=0 returned GOOD but WCE still reads 1")


def pr_out(ini: Initiator, action: int, key: int, sa_key: int, type_: int = 0,
           aptpl: bool = False):
    cdb = _PR_OUT.pack(0x5F, action, type_, 24, 0)
    return ini.command(cdb, lun=PR_LUN,
                       data=_PR_OUT_PARAMS.pack(key, sa_key, 0, 0x01 if aptpl else 0))


def pr_in(ini: Initiator, action: int) -> bytes:
    r = command(ini, _PR_IN.pack(0x5E, action, 1024, 0), lun=PR_LUN, read=1024)
    if r.status != Status.GOOD:
        raise CrashTestError(f"PERSISTENT RESERVE IN {action}: status {r.status:#x} "
                             f"sense {r.sense.hex()}")
    return r.data


PrState = tuple[tuple[int, ...], tuple[int, int] | None]  # (keys, (reservation key, type))


def read_pr_state(ini: Initiator) -> tuple[int, PrState]:
    """(PRgeneration, state) from READ KEYS and READ RESERVATION (SPC-4 6.15.2, 6.15.3)."""
    d = pr_in(ini, 0x00)
    gen, n = struct.unpack_from(">II", d)
    keys = tuple(struct.unpack_from(">Q", d, 8 + 8 * i)[0] for i in range(n // 8))
    d = pr_in(ini, 0x01)
    _, n = struct.unpack_from(">II", d)
    res = None
    if n >= 16:
        rkey = struct.unpack_from(">Q", d, 8)[0]
        res = (rkey, d[21] & 0x0F)
    return gen, (keys, res)


# --- clients ------------------------------------------------------------------------------

@dataclass
class WriteRecord:
    writer: int
    gen: int
    lba: int
    count: int
    cdb: str
    fua: bool
    state: str = "sent"  # sent (no status), acked, durable, failed
    status: int | None = None


class _Client(threading.Thread):
    """A client thread: set up, meet at the barrier, loop until the connection drops."""

    def __init__(self, name: str, port: int, barrier: threading.Barrier,
                 killed: threading.Event, stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.port = port
        self.barrier = barrier
        self.killed = killed
        self.stop_event = stop
        self.ini: Initiator | None = None
        self.error: str | None = None  # an unexpected failure (before the kill)
        self.ended_by: str | None = None
        self.unexpected: list[str] = []

    def run(self) -> None:
        try:
            self.setup()
        except BaseException as exc:  # reported as the trial's error
            self.error = f"setup: {exc!r}"
            self.barrier.abort()
            self._close()
            return
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            self._close()
            return
        try:
            self.loop()
            self.ended_by = "stopped"
        except Exception as exc:  # OSError, InitiatorError: the connection dropped
            self._ended(exc)
        finally:
            self._close()

    def _ended(self, exc: BaseException) -> None:
        self.ended_by = f"{type(exc).__name__}: {exc}"
        if not self.killed.is_set():
            self.error = f"before the kill: {exc!r}"

    def _close(self) -> None:
        if self.ini is not None:
            self.ini.close()

    def setup(self) -> None:
        raise NotImplementedError

    def loop(self) -> None:
        raise NotImplementedError


class Writer(_Client):
    """One session writing its own extents of LUN 0 in mode a, b or c."""

    def __init__(self, wid: int, mode: str, extents: list[int], bs: int, key: bytes,
                 trial: int, seed: int, **kw: Any) -> None:
        super().__init__(f"writer-{wid}", **kw)
        self.wid = wid
        self.mode = mode
        self.extents = extents
        self.bs = bs
        self.key = key
        self.trial = trial
        self.rng = random.Random(seed)
        self.history: dict[int, LbaHistory] = {}
        self.writes: list[WriteRecord] = []
        self.syncs_sent = 0
        self.syncs_good = 0
        self.retried = 0

    def setup(self) -> None:
        self.ini = session(self.port, f"crashtest-w{self.wid}", 0x400000000100 + self.wid,
                           (DATA_LUN,))
        if self.mode == "c":
            disable_write_cache(self.ini)

    def _durable(self, rec: WriteRecord) -> None:
        rec.state = "durable"
        for lba in range(rec.lba, rec.lba + rec.count):
            hist = self.history[lba]
            hist.durable = max(hist.durable, rec.gen)

    def loop(self) -> None:
        ini, rng, bs = self.ini, self.rng, self.bs
        assert ini is not None
        pending: list[WriteRecord] = []  # acknowledged, not yet durable (mode b)
        sync_after = rng.randint(1, 8)
        gen = 0
        while not self.stop_event.is_set():
            gen += 1
            base = rng.choice(self.extents)
            off = rng.randrange(EXTENT_BLOCKS)
            count = rng.randint(1, EXTENT_BLOCKS - off)
            lba = base + off
            sixteen = rng.random() < 0.5
            fua = self.mode == "a"
            data = b"".join(make_block(bs, self.key, lba + i, self.wid, gen, self.trial)
                            for i in range(count))
            rec = WriteRecord(self.wid, gen, lba, count, "WRITE(16)" if sixteen else "WRITE(10)",
                              fua)
            self.writes.append(rec)
            for i in range(count):
                self.history.setdefault(lba + i, LbaHistory(self.wid)).attempted.add(gen)
            r = command(ini, write_cdb(lba, count, fua, sixteen), lun=DATA_LUN, data=data)
            rec.status = r.status
            if r.status != Status.GOOD:
                rec.state = "failed"
                self.unexpected.append(f"{rec.cdb} lba {lba} count {count}: status "
                                       f"{r.status:#x} sense {r.sense.hex()}")
                continue
            rec.state = "acked"
            if self.mode in "ac":
                self._durable(rec)
                continue
            pending.append(rec)
            if len(pending) >= sync_after:
                before = list(pending)  # completed before the SYNCHRONIZE CACHE is sent
                self.syncs_sent += 1
                r = command(ini, SYNC_CACHE10, lun=DATA_LUN)
                if r.status != Status.GOOD:
                    self.unexpected.append(f"SYNCHRONIZE CACHE(10): status {r.status:#x} "
                                           f"sense {r.sense.hex()}")
                    continue
                self.syncs_good += 1
                for done in before:
                    self._durable(done)
                pending.clear()
                sync_after = rng.randint(1, 8)


class PrClient(_Client):
    """One session looping PERSISTENT RESERVE OUT with APTPL=1 on LUN 1."""

    def __init__(self, seed: int, **kw: Any) -> None:
        super().__init__("pr-client", **kw)
        self.rng = random.Random(seed)
        self.acked: PrState = ((), None)  # after the last PR OUT that returned GOOD
        self.in_flight: tuple[str, PrState] | None = None  # sent, no status yet
        self.sent = 0
        self.good = 0
        self.last_action = ""

    def setup(self) -> None:
        self.ini = session(self.port, "crashtest-pr", 0x400000000F01, (PR_LUN,))

    def _new_key(self) -> int:
        return self.rng.getrandbits(63) | 1

    def _next(self) -> tuple[str, int, int, int, int, bool, PrState]:
        """(name, service action, key, service action key, type, APTPL, state after)."""
        keys, res = self.acked
        rng = self.rng
        if not keys:
            k = self._new_key()
            if rng.random() < 0.5:
                return "REGISTER", REGISTER, 0, k, 0, True, ((k,), None)
            return "REGISTER AND IGNORE", REGISTER_AND_IGNORE, 0, k, 0, True, ((k,), None)
        (key,) = keys
        choice = rng.randrange(4)
        if choice == 0 or choice == 1:  # a new key; the reservation stays with the nexus
            k = self._new_key()
            new_res = None if res is None else ((0 if res[1] in _ALL_REGISTRANTS else k),
                                                res[1])
            if choice == 0:
                return "REGISTER", REGISTER, key, k, 0, True, ((k,), new_res)
            return "REGISTER AND IGNORE", REGISTER_AND_IGNORE, 0, k, 0, True, ((k,), new_res)
        if choice == 2:
            if res is None:
                t = rng.choice(PR_TYPES)
                rkey = 0 if t in _ALL_REGISTRANTS else key
                return "RESERVE", RESERVE, key, 0, t, False, (keys, (rkey, t))
            return "RELEASE", RELEASE, key, 0, res[1], False, (keys, None)
        # Unregister (SPC-4 5.13.11.3): the holder's reservation goes with it.
        return "UNREGISTER", REGISTER, key, 0, 0, True, ((), None)

    def loop(self) -> None:
        ini = self.ini
        assert ini is not None
        while not self.stop_event.is_set():
            name, action, key, sa_key, type_, aptpl, after = self._next()
            self.last_action = name
            self.in_flight = (name, after)
            self.sent += 1
            r = pr_out(ini, action, key, sa_key, type_, aptpl)
            self.in_flight = None
            if r.status == Status.GOOD:
                self.good += 1
                self.acked = after
            else:
                self.unexpected.append(f"PR OUT {name}: status {r.status:#x} "
                                       f"sense {r.sense.hex()}")
                time.sleep(0.01)


# --- one trial ----------------------------------------------------------------------------

@dataclass
class Options:
    block_size: int = 512
    size: int = 64 << 20
    sessions: int = 4
    extents: int = 64  # per writer, of EXTENT_BLOCKS blocks
    kill_min: float = 0.2
    kill_max: float = 2.0
    kill_at: str = "random"  # or "pr-tmp": after the delay, once a .pr temporary file exists
    aptpl_share: float = 1.0
    modes: str = MODES
    c_share: float = 1 / 3  # share of trials with a writer in mode c (WCE=0)
    event_loop: str | None = None
    keep: bool = False


@dataclass
class TrialResult:
    trial: int
    seed: int
    block_size: int
    modes: str
    aptpl: bool
    kill_at: str
    kill_after_s: float = 0.0
    pr_tmp_at_kill: int = 0
    writes_sent: int = 0
    writes_acked: int = 0
    writes_durable: int = 0
    writes_verified: int = 0
    acked_not_durable_present: int = 0
    acked_not_durable_missing: int = 0
    syncs: int = 0
    lbas_written: int = 0
    blocks_read: int = 0
    verdicts: dict[str, int] = field(default_factory=dict)
    bad_blocks: list[dict[str, Any]] = field(default_factory=list)
    aptpl_ops_acked: int = 0
    aptpl_in_flight: str | None = None
    aptpl_expected: list[Any] = field(default_factory=list)
    aptpl_observed: Any = None
    aptpl_generation: int | None = None
    aptpl_verified: bool = False
    leftover_tmp: list[str] = field(default_factory=list)
    restart_failure: str | None = None
    errors: list[str] = field(default_factory=list)
    unexpected_status: list[str] = field(default_factory=list)
    event_loop: str | None = None
    duration_s: float = 0.0
    workdir: str = ""

    def losses(self) -> dict[str, int]:
        return {v: self.verdicts.get(v, 0) for v in VERDICTS_BAD}

    @property
    def passed(self) -> bool:
        return (not any(self.losses().values()) and self.writes_verified == self.writes_durable
                and not self.leftover_tmp and self.restart_failure is None and not self.errors
                and not self.unexpected_status
                and (not self.aptpl or self.aptpl_verified))

    def failures(self) -> list[str]:
        out = [f"{k}={v}" for k, v in self.losses().items() if v]
        if self.writes_verified != self.writes_durable:
            out.append(f"durable writes not verified: {self.writes_durable - self.writes_verified}")
        if self.restart_failure:
            out.append("restart failed")
        if self.aptpl and not self.aptpl_verified and not self.restart_failure:
            out.append("APTPL state wrong")
        if self.leftover_tmp:
            out.append(f"leftover tmp files: {len(self.leftover_tmp)}")
        if self.unexpected_status:
            out.append(f"unexpected status: {len(self.unexpected_status)}")
        if self.errors:
            out.append(f"errors: {len(self.errors)}")
        return out


@dataclass
class TrialContext:
    """What a tamper hook (the checker's own tests) sees between the kill and the restart."""

    data_image: Path
    pr_image: Path
    block_size: int
    key: bytes
    trial: int
    writers: list[Writer]
    pr: PrClient | None


Tamper = Callable[[TrialContext], None]


def pr_leftovers(pr_image: Path) -> list[str]:
    """Files beside the image named like the state file plus anything (`<image>.pr?*`)."""
    state = pr_image.name + ".pr"
    return sorted(p.name for p in pr_image.parent.iterdir()
                  if p.name.startswith(state) and p.name != state)


def _config(path: Path, data: Path, pr: Path, opts: Options) -> None:
    path.write_text(
        f'[[target]]\niqn = "{IQN}"\n\n'
        f'[[target.lun]]\nlun = {DATA_LUN}\nstore = "file"\npath = "{data}"\n'
        f"size = {opts.size}\nblock_size = {opts.block_size}\n\n"
        f'[[target.lun]]\nlun = {PR_LUN}\nstore = "file"\npath = "{pr}"\n'
        f"size = {PR_IMAGE_SIZE}\n")


def _server(config: Path, tdir: Path, opts: Options) -> OurTarget:
    args: list[str] = []
    if opts.event_loop:
        args += ["--event-loop", opts.event_loop]
    return OurTarget(args, config=config, workdir=tdir, iqn=IQN)


def _modes(rng: random.Random, opts: Options) -> str:
    plain = [m for m in opts.modes if m != "c"] or ["c"]
    modes = [rng.choice(plain) for _ in range(opts.sessions)]
    if "c" in opts.modes and (plain == ["c"] or rng.random() < opts.c_share):
        modes[rng.randrange(opts.sessions)] = "c"
    return "".join(modes)


def run_trial(trial: int, seed: int, opts: Options, root: Path,
              tamper: Tamper | None = None) -> TrialResult:
    """One trial in root/trial-NNNN (removed when it passes unless opts.keep)."""
    t_start = time.monotonic()
    rng = random.Random(seed)
    bs = opts.block_size
    tdir = root / f"trial-{trial:04d}"
    tdir.mkdir(parents=True, exist_ok=True)
    data_img, pr_img, config = tdir / "data.img", tdir / "pr.img", tdir / "target.toml"
    for img, size in ((data_img, opts.size), (pr_img, PR_IMAGE_SIZE)):
        with open(img, "wb") as f:
            f.truncate(size)
    _config(config, data_img, pr_img, opts)
    key = rng.randbytes(16)
    modes = _modes(rng, opts)
    aptpl = rng.random() < opts.aptpl_share
    kill_after = rng.uniform(opts.kill_min, opts.kill_max)
    res = TrialResult(trial, seed, bs, modes, aptpl, opts.kill_at, workdir=str(tdir))

    blocks = opts.size // bs
    slots = rng.sample(range(blocks // EXTENT_BLOCKS), opts.extents * opts.sessions)
    killed, stop = threading.Event(), threading.Event()
    clients: list[_Client] = []
    writers: list[Writer] = []
    pr: PrClient | None = None
    try:
        with _server(config, tdir, opts) as srv:
            barrier = threading.Barrier(opts.sessions + int(aptpl) + 1, timeout=60)
            common = dict(port=srv.port, barrier=barrier, killed=killed, stop=stop)
            for w in range(opts.sessions):
                extents = [s * EXTENT_BLOCKS for s in slots[w::opts.sessions]]
                writers.append(Writer(w, modes[w], extents, bs, key, trial,
                                      rng.getrandbits(64), **common))
            clients = list(writers)
            if aptpl:
                pr = PrClient(rng.getrandbits(64), **common)
                clients.append(pr)
            for c in clients:
                c.start()
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                raise CrashTestError("setup failed") from None
            t0 = time.monotonic()
            time.sleep(kill_after)
            if opts.kill_at == "pr-tmp" and pr is not None:
                # Then the first moment a PR OUT has its temporary file open (its write
                # and fsync take milliseconds on a real disk; polled every 0.2 ms).
                deadline = time.monotonic() + 5.0
                while not pr_leftovers(pr_img) and time.monotonic() < deadline:
                    time.sleep(0.0002)
            killed.set()
            os.kill(srv.pid, signal.SIGKILL)
            res.kill_after_s = round(time.monotonic() - t0, 3)
            srv.proc.wait(timeout=30)
            res.pr_tmp_at_kill = len(pr_leftovers(pr_img))
            for c in clients:
                c.join(timeout=30)
                if c.is_alive():
                    res.errors.append(f"{c.name} did not stop after the kill")
    except (CrashTestError, ServerError) as exc:
        res.errors.append(f"before the kill: {exc}")
    finally:
        stop.set()
        killed.set()
        for c in clients:
            c.join(timeout=5)
    for c in clients:
        if c.error:
            res.errors.append(f"{c.name}: {c.error}")
        res.unexpected_status += [f"{c.name}: {u}" for u in c.unexpected]
    if res.errors:
        res.duration_s = round(time.monotonic() - t_start, 2)
        return res

    if tamper is not None:
        tamper(TrialContext(data_img, pr_img, bs, key, trial, writers, pr))

    try:
        with _server(config, tdir, opts) as srv:
            _verify(srv, res, writers, pr, bs, key, trial, blocks)
    except ServerError as exc:
        res.restart_failure = str(exc)
    except Exception as exc:  # CrashTestError, InitiatorError, OSError: a failed check
        res.errors.append(f"after the restart: {exc!r}")
    res.leftover_tmp = pr_leftovers(pr_img)
    res.duration_s = round(time.monotonic() - t_start, 2)
    if res.passed and not opts.keep:
        shutil.rmtree(tdir, ignore_errors=True)
    return res


def _verify(srv: OurTarget, res: TrialResult, writers: list[Writer], pr: PrClient | None,
            bs: int, key: bytes, trial: int, blocks: int) -> None:
    history: dict[int, LbaHistory] = {}
    for w in writers:
        history.update(w.history)
        res.writes_sent += len(w.writes)
        res.syncs += w.syncs_good
    res.lbas_written = len(history)
    ini = session(srv.port, "crashtest-verify", 0x400000000E01, (DATA_LUN, PR_LUN))
    try:
        cap = command(ini, struct.pack(">BBQIBB", 0x9E, 0x10, 0, 32, 0, 0), lun=DATA_LUN,
                      read=32)
        last, got_bs = struct.unpack_from(">QI", cap.data.ljust(12, b"\0"))
        if cap.status != Status.GOOD or last + 1 != blocks or got_bs != bs:
            raise CrashTestError(f"READ CAPACITY(16) after the restart: {cap.data[:12].hex()}")
        generation: dict[int, int | None] = {}
        verdicts: dict[str, int] = {}
        per = READ_CHUNK // bs
        zero_chunk = bytes(per * bs)
        for start in range(0, blocks, per):
            n = min(per, blocks - start)
            r = command(ini, read16(start, n), lun=DATA_LUN, read=n * bs)
            if r.status != Status.GOOD or len(r.data) != n * bs:
                raise CrashTestError(f"READ(16) {start}+{n} after the restart: status "
                                     f"{r.status:#x} sense {r.sense.hex()}")
            data = r.data
            if data == zero_chunk[:n * bs] and not any(
                    lba in history for lba in range(start, start + n)):
                verdicts["zero-unwritten"] = verdicts.get("zero-unwritten", 0) + n
                continue
            for i in range(n):
                lba = start + i
                block = data[i * bs:(i + 1) * bs]
                hist = history.get(lba)
                verdict, gen = classify(block, lba, hist, bs, key, trial)
                verdicts[verdict] = verdicts.get(verdict, 0) + 1
                generation[lba] = gen
                if verdict in VERDICTS_BAD and len(res.bad_blocks) < 50:
                    res.bad_blocks.append({
                        "lba": lba, "verdict": verdict, "generation": gen,
                        "writer": None if hist is None else hist.writer,
                        "durable": None if hist is None else hist.durable,
                        "attempted": None if hist is None else sorted(hist.attempted)[-8:]})
        res.blocks_read = blocks
        res.verdicts = dict(sorted(verdicts.items()))
        for w in writers:
            for rec in w.writes:
                if rec.state not in ("acked", "durable"):
                    continue
                res.writes_acked += 1
                present = all(_at_least(generation.get(lba), rec.gen)
                              for lba in range(rec.lba, rec.lba + rec.count))
                if rec.state == "durable":
                    res.writes_durable += 1
                    res.writes_verified += int(present)
                elif present:
                    res.acked_not_durable_present += 1
                else:
                    res.acked_not_durable_missing += 1
        if pr is not None:
            allowed = [pr.acked] + ([pr.in_flight[1]] if pr.in_flight else [])
            res.aptpl_ops_acked = pr.good
            res.aptpl_in_flight = pr.in_flight[0] if pr.in_flight else None
            res.aptpl_expected = [_pr_json(s) for s in allowed]
            gen, state = read_pr_state(ini)
            res.aptpl_generation = gen
            res.aptpl_observed = _pr_json(state)
            res.aptpl_verified = gen == 0 and state in allowed
    finally:
        ini.close()


def _at_least(gen: int | None, wanted: int) -> bool:
    return gen is not None and gen >= wanted


def _pr_json(state: PrState) -> dict[str, Any]:
    keys, res = state
    return {"keys": [f"{k:#x}" for k in keys],
            "reservation": None if res is None else {"key": f"{res[0]:#x}", "type": res[1]}}


# --- many trials --------------------------------------------------------------------------

def trial_seeds(seed: int, trials: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.getrandbits(64) for _ in range(trials)]


def summarize(results: list[TrialResult]) -> dict[str, Any]:
    total: dict[str, Any] = {
        "trials": len(results),
        "passed": sum(r.passed for r in results),
        "writes_sent": sum(r.writes_sent for r in results),
        "writes_acked": sum(r.writes_acked for r in results),
        "writes_durable": sum(r.writes_durable for r in results),
        "writes_verified": sum(r.writes_verified for r in results),
        "acked_not_durable_present": sum(r.acked_not_durable_present for r in results),
        "acked_not_durable_missing": sum(r.acked_not_durable_missing for r in results),
        "syncs": sum(r.syncs for r in results),
        "blocks_read": sum(r.blocks_read for r in results),
        "aptpl_trials": sum(r.aptpl for r in results),
        "aptpl_states_verified": sum(r.aptpl and r.aptpl_verified for r in results),
        "aptpl_ops_acked": sum(r.aptpl_ops_acked for r in results),
        "aptpl_killed_in_flight": sum(r.aptpl_in_flight is not None for r in results),
        "pr_tmp_at_kill_trials": sum(r.pr_tmp_at_kill > 0 for r in results),
        "leftover_tmp_files": sum(len(r.leftover_tmp) for r in results),
        "leftover_tmp_trials": sum(bool(r.leftover_tmp) for r in results),
        "restart_failures": sum(r.restart_failure is not None for r in results),
        "unexpected_status": sum(len(r.unexpected_status) for r in results),
        "errors": sum(len(r.errors) for r in results),
        "modes": {m: sum(r.modes.count(m) for r in results) for m in MODES},
        "duration_s": round(sum(r.duration_s for r in results), 1),
    }
    for v in VERDICTS_BAD:
        total[v] = sum(r.verdicts.get(v, 0) for r in results)
    durations = sorted(r.duration_s for r in results)
    if durations:
        total["trial_s_min"] = durations[0]
        total["trial_s_median"] = durations[len(durations) // 2]
        total["trial_s_max"] = durations[-1]
    return total


def trial_line(r: TrialResult, of: int) -> str:
    losses = r.losses()
    pr = "-"
    if r.aptpl:
        pr = (f"{'ok' if r.aptpl_verified else 'WRONG'} ({r.aptpl_ops_acked} acked"
              f"{', 1 in flight' if r.aptpl_in_flight else ''})")
    verdict = "PASS" if r.passed else "FAIL " + ", ".join(r.failures())
    return (f"trial {r.trial + 1}/{of} seed={r.seed:#018x} bs={r.block_size} modes={r.modes} "
            f"kill={r.kill_after_s:.2f}s acked={r.writes_acked} durable={r.writes_durable} "
            f"verified={r.writes_verified} lost={losses['lost']} torn={losses['torn']} "
            f"stale={losses['stale']} misplaced={losses['misplaced']} "
            f"unknown={losses['unknown']} aptpl={pr} tmp={len(r.leftover_tmp)} "
            f"{r.duration_s:.1f}s {verdict}")


def result_json(r: TrialResult) -> dict[str, Any]:
    d = dataclasses.asdict(r)
    d["passed"] = r.passed
    d["seed"] = f"{r.seed:#018x}"
    return d


def write_json(path: Path, meta: dict[str, Any], results: list[TrialResult]) -> None:
    doc = {"meta": meta, "summary": summarize(results),
           "trials": [result_json(r) for r in results]}
    path.write_text(json.dumps(doc, indent=1) + "\n")
