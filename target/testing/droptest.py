"""Connection loss mid-transfer: many random drops against our target, and nothing leaked.

What a drop is (one fresh connection each, a few in parallel, choices from a seeded RNG
per trial, so trial i does the same thing whatever the thread interleaving):
- `r2t`: log in, send a WRITE whose data needs R2Ts (ImmediateData=No, or data beyond
  FirstBurstLength, or unsolicited Data-Out up to FirstBurstLength then R2Ts; RFC 7143
  11.7, 11.8, 13.10-13.14), answer the R2Ts with Data-Out of assorted PDU sizes and stop
  before the last byte: at a PDU boundary, inside a Data-Out BHS, or inside its data.
- `data-in`: log in, send one or two READs of 1-8 MiB, take none or part of the Data-In.
- `unread`: log in, send several commands (TEST UNIT READY, small READs and WRITEs with
  immediate data, NOP-Outs) and usually a partial PDU in one write, and reset at once, so
  the reset can arrive while bytes are still unread in the target's receive queue.
- `mid-header`: a partial BHS, after login or (one in four) before it, as a Login Request.
- `atomic`: COMPARE AND WRITE (SBC-4 5.3) or WRITE ATOMIC(16) (SBC-4 5.48, 4.29) whose
  Data-Out is cut like `r2t` (or, one in five, sent whole and not waited for). The worker
  owns its LBA range and wrote the old data itself; once the target has noticed the drop
  the range must read back all-old or all-new, never a mix (SBC-4 4.29.1: an atomic write
  is performed completely or not at all; 5.3: COMPARE AND WRITE is one atomic operation).
Each drop ends the connection with a FIN (close) or an RST (SO_LINGER on, timeout 0, then
close); `unread` always resets.

Reservations (LUN 1 only, one such trial at a time): some trials first take RESERVE(6)
(SPC-2 7.21) or PERSISTENT RESERVE OUT REGISTER + RESERVE, Write Exclusive (SPC-4 6.16),
then drop as above on LUN 0. RESERVE(6): an I_T nexus loss releases it (SPC-2 5.5.1), so
another initiator's RESERVE(6) must succeed within the settle time, never meet
RESERVATION CONFLICT for good. A persistent reservation survives nexus loss by design
(SPC-4 5.13.1), so the check is that it is still there, that the dropped nexus's tasks
are gone from every task set (SAM-5 6.3.4: nexus loss aborts the nexus's tasks), and then
the healthy initiator REGISTERs and CLEARs it (SPC-4 5.13.11.3) for the next trial.

Between drops a healthy session (its own initiator name) keeps reading; it must always
answer GOOD. Every `check_every` trials, and at the end, the driver waits for the target
to settle (the target is idle then) and reads the oracles it did not write:
- the target's `status` (control socket): no session but the healthy one, every LU's task
  set `queued_now` == 0 and `running` == 0;
- /proc/PID/fd: the open fds back at the baseline (FD_SLACK allows a few lazily opened);
- /proc/PID/status: VmRSS after at most baseline + rss_bound(store), VmHWM (the kernel's
  peak), and over the last half of the trials no more than rss_growth() above the first
  half's highest checkpoint. What the bounds leave room for is memory freed late, not
  leaked: glibc keeps freed heap chunks resident (its mmap threshold rises after the
  first large free) and a file store reads into fresh buffers of up to 2 x 8 MiB a
  trial, so RSS climbs in steps. A dropped connection keeps nothing in a reference cycle
  (Connection.connection_lost, Link.close), so its buffers go at once. Measured on clean
  runs (asyncio, 1000 drops, 4 workers, seeds 1-3): with a memory store the end at most
  14 MiB above the baseline and the last half at most 4 MiB above the first half's
  highest checkpoint; with a file store 61 and 11 MiB (before the cycles were broken:
  43/28 and 102/51). The bounds are about twice the largest of those: rss_bound() 48 MiB
  (memory) and 112 MiB (file), rss_growth() 24 and 48 MiB. The leak they are for is a
  session's worth per drop or more: uvloop's defect of 180a2fc ended 264 MiB (memory) and
  316 MiB (file) above the baseline and added 137-145 MiB over the last half of 1000 drops.
Leaked sessions are named by their ISID, which is unique per trial, so each leak points
at the trial (kind, variant, close or reset) that caused it.

Processes: one target per event loop, started by target.testing.servers.OurTarget and
stopped by its PID; stopped_reset_trials() SIGSTOPs and SIGCONTs that PID only, and
always sends SIGCONT before it returns.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import struct
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from target.iscsi import pdu
from target.iscsi.pdu import F_FINAL, F_READ, F_WRITE, RESERVED_TAG, Bhs, Op, TmfFunction
from target.scsi.task import encode_lun
from target.shell.control import ControlError, request
from target.shell.initiator import Initiator, InitiatorError, Result
from target.testing.cdb import sense_key
from target.testing.servers import HOST, OurTarget, tail

KiB, MiB = 1 << 10, 1 << 20
BLOCK = 512
DATA_LUN, RES_LUN = 0, 1
DATA_LU_SIZE = 32 * MiB  # filled before the baseline, so written pages are resident already
RES_LU_SIZE = 1 * MiB
LOW_REGION = 16 * MiB  # r2t/unread/data-in writes land below this; atomics own the rest
TARGET_IQN = "iqn.2026-11.local.scsi-target:droptest"
HEALTHY_IQN = "iqn.2026-11.local.scsi-target:droptest-healthy"
DROP_IQN = "iqn.2026-11.local.scsi-target:droptest-drop"
HEALTHY_ISID = 0x400000000001
TRIAL_ISID = 0x400000010000  # + trial number: each trial its own I_T nexus
KINDS = ("r2t", "data-in", "unread", "mid-header", "atomic")
FD_SLACK = 4
SETTLE = 3.0  # seconds an idle target gets to notice the drops, at the end
CHECK_SETTLE = 1.0  # the same at the periodic checks
TRIAL_SETTLE = 1.0  # a busy target, for one trial's session (before an atomic's READ)


def rss_bound(store: str) -> int:
    """How far VmRSS may end above the baseline (see the module's rules)."""
    return 112 * MiB if store == "file" else 48 * MiB


def rss_growth(store: str) -> int:
    """How far the last half's RSS may rise above the first half's (the module's rules)."""
    return 48 * MiB if store == "file" else 24 * MiB
TIMEOUT = 10.0  # every socket operation of a trial
GOOD, CHECK_CONDITION, RESERVATION_CONFLICT = 0x00, 0x02, 0x18
UNIT_ATTENTION = 0x6
PR_TYPE_WE = 1
_PATTERN = memoryview(bytes(range(256)) * (8 * MiB // 256))  # Data-Out that is never run


# --- oracles outside our code ---------------------------------------------------------

def open_fds(pid: int) -> int:
    """Open file descriptors of `pid`: the entries of /proc/PID/fd."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_status_kib(pid: int, key: str) -> int:
    """A kB field of /proc/PID/status (VmRSS, VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def wait_control(control: Path, timeout: float = 10.0) -> dict[str, Any]:
    """The first `status` answer: the server writes its port file once it listens and only
    then opens the control socket, so a just-started target may not answer yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return request(control, {"command": "status"})
        except ControlError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


# --- CDBs ------------------------------------------------------------------------------

def tur() -> bytes:
    return bytes(6)


def read10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)


def write10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0, lba, 0, blocks, 0)


def compare_and_write(lba: int, blocks: int) -> bytes:
    """SBC-4 5.3: 16 bytes, NUMBER OF LOGICAL BLOCKS in byte 13."""
    return struct.pack(">BBQ3sBBB", 0x89, 0, lba, bytes(3), blocks, 0, 0)


def write_atomic16(lba: int, blocks: int) -> bytes:
    """SBC-4 5.48: ATOMIC BOUNDARY 0, TRANSFER LENGTH in bytes 12-13."""
    return struct.pack(">BBQHHBB", 0x9C, 0, lba, 0, blocks, 0, 0)


def reserve6() -> bytes:
    return bytes([0x16, 0, 0, 0, 0, 0])


def release6() -> bytes:
    return bytes([0x17, 0, 0, 0, 0, 0])


def pr_out(service_action: int, pr_type: int = 0) -> bytes:
    """PERSISTENT RESERVE OUT with a 24-byte basic parameter list (SPC-4 6.16): SERVICE
    ACTION in byte 1, SCOPE/TYPE in byte 2, PARAMETER LIST LENGTH in bytes 5-8."""
    return struct.pack(">BBBxxIB", 0x5F, service_action, pr_type, 24, 0)


def pr_params(key: int, sa_key: int) -> bytes:
    return struct.pack(">QQ8x", key, sa_key)


def pr_in_read_reservation() -> bytes:
    return struct.pack(">BBxxxxxHB", 0x5E, 0x01, 64, 0)


# --- sessions --------------------------------------------------------------------------

def good(ini: Initiator, cdb: bytes, *, lun: int = DATA_LUN, read: int = 0,
         data: bytes = b"") -> Result:
    """The command, repeated past UNIT ATTENTIONs (a new nexus first meets 29h/00h,
    SAM-5 5.14); other results are returned as they are."""
    for _ in range(6):
        r = ini.command(cdb, lun=lun, read=read, data=data)
        if r.status != CHECK_CONDITION or sense_key(r.sense) != UNIT_ATTENTION:
            return r
    return r


def rst_close(sock: socket.socket) -> None:
    """Close with a reset: SO_LINGER on with timeout 0, then close (RFC 793 abort)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Healthy:
    """The session that keeps working between the drops; one command at a time."""

    def __init__(self, port: int, iqn: str) -> None:
        self.ini = Initiator(HOST, port, iqn, initiator_name=HEALTHY_IQN, isid=HEALTHY_ISID,
                             timeout=TIMEOUT)
        self.ini.login()
        self.lock = threading.Lock()
        self.commands = 0
        self.failures: list[str] = []
        for lun in (DATA_LUN, RES_LUN):
            self.run(tur(), lun=lun)

    def run(self, cdb: bytes, *, lun: int = DATA_LUN, read: int = 0,
            data: bytes = b"") -> Result:
        with self.lock:
            self.commands += 1
            return good(self.ini, cdb, lun=lun, read=read, data=data)

    def check_read(self, rng: random.Random) -> None:
        """A READ the target must answer GOOD with all its data (it keeps serving)."""
        blocks = rng.choice((1, 8, 64))
        lba = rng.randrange(DATA_LU_SIZE // BLOCK - blocks)
        try:
            r = self.run(read10(lba, blocks), read=blocks * BLOCK)
        except (OSError, InitiatorError) as exc:
            self.failures.append(f"healthy READ(10) failed: {exc!r}")
            raise
        if r.status != GOOD or len(r.data) != blocks * BLOCK:
            self.failures.append(f"healthy READ(10) lba {lba}: status {r.status:#x}, "
                                 f"{len(r.data)} bytes")

    def close(self) -> None:
        with contextlib.suppress(OSError, InitiatorError), self.lock:
            self.ini.logout()
        self.ini.close()


@dataclass
class Trial:
    """What one trial did and what came of it."""

    number: int
    isid: int
    kind: str
    variant: str = ""
    close: str = "rst"
    reservation: str = ""  # "", "reserve6" or "pr"
    cut: str = ""  # where the transfer stopped
    atomic: str = ""  # "old", "new", "mixed", "other" (after an atomic trial)
    reservation_result: str = ""  # "released", "stuck", "refused", "survived", "lost"
    error: str = ""
    leaked: bool = False

    def fail(self, what: str) -> None:
        self.error = f"{self.error}; {what}" if self.error else what


class Cut:
    """Sends PDUs until the one whose data holds transfer byte `at`, and cuts that one:
    before it ("boundary"), inside its BHS ("bhs"), or inside its data ("data")."""

    def __init__(self, sock: socket.socket, at: int | None, how: str,
                 rng: random.Random) -> None:
        self.sock = sock
        self.at = at
        self.how = how
        self.rng = rng
        self.done = ""

    def pdu(self, header: bytes, offset: int, data: memoryview | bytes) -> bool:
        """Send one PDU whose data starts at transfer `offset`; False once cut."""
        n = len(data)
        at = self.at
        if at is not None and n and offset <= at < offset + n:
            if self.how == "boundary":
                self.done = f"boundary@{offset}"
            elif self.how == "bhs":
                k = self.rng.randint(1, pdu.BHS_LEN - 1)
                self.sock.sendall(header[:k])
                self.done = f"bhs[{k}]@{offset}"
            else:
                self.sock.sendall(header)
                if at > offset:
                    self.sock.sendall(data[:at - offset])
                self.done = f"data@{at}"
            return False
        self.sock.sendall(header)
        if n:
            self.sock.sendall(data)
            pad = pdu.padding(n)
            if pad:
                self.sock.sendall(pad)
        return True


def command_header(ini: Initiator, cdb: bytes, *, lun: int, edtl: int, read: bool = False,
                   write: bool = False, dsl: int = 0,
                   final: bool = True) -> tuple[bytes, int]:
    """A SCSI Command BHS (RFC 7143 11.3) with the session's next ITT and CmdSN; F=0
    (final=False) when unsolicited Data-Out follows it (11.3.1)."""
    itt = ini.itt
    ini.itt = (itt + 1) & 0x7FFFFFFF or 1
    flags = ((F_FINAL if final else 0) | (F_READ if read else 0) | (F_WRITE if write else 0)
             | 1)  # SIMPLE
    header = pdu.scsi_command(flags=flags, dsl=dsl, lun=encode_lun(lun), itt=itt, edtl=edtl,
                              cmdsn=ini.cmdsn, exp_statsn=ini.exp_stat_sn, cdb=cdb)
    ini.cmdsn = (ini.cmdsn + 1) & 0xFFFFFFFF
    return header, itt


def data_out_header(ini: Initiator, itt: int, ttt: int, datasn: int, offset: int, n: int,
                    final: bool, lun: int) -> bytes:
    """A SCSI Data-Out BHS (RFC 7143 11.7)."""
    return pdu.data_out(final=final, dsl=n, lun=encode_lun(lun), itt=itt, ttt=ttt,
                        exp_statsn=ini.exp_stat_sn, datasn=datasn, buffer_offset=offset)


def send_write(ini: Initiator, cdb: bytes, data: memoryview | bytes, cut: Cut, *,
               lun: int, immediate: bool, initial_r2t: bool, first_burst: int,
               max_pdu: int) -> tuple[bool, int, tuple[Bhs, bytes] | None]:
    """A write command and its Data-Out as RFC 7143 asks (immediate data, unsolicited
    Data-Out up to FirstBurstLength, then what each R2T solicits), until `cut` stops it.
    Returns whether every byte went out, the command's ITT, and its response when that
    came before all the data was asked for."""
    sock = ini.sock
    assert sock is not None
    edtl = len(data)
    imm = min(first_burst, ini.max_send, edtl) if immediate else 0
    unsolicited = not initial_r2t and imm < min(first_burst, edtl)
    header, itt = command_header(ini, cdb, lun=lun, edtl=edtl, write=True, dsl=imm,
                                 final=not unsolicited)
    if imm:
        if not cut.pdu(header, 0, data[:imm]):
            return False, itt, None
    else:
        sock.sendall(header)
    solicited_from = imm
    if unsolicited:  # unsolicited Data-Out: one sequence up to FirstBurstLength
        end = min(first_burst, edtl)
        offset, datasn = imm, 0
        while offset < end:
            n = min(max_pdu, end - offset)
            h = data_out_header(ini, itt, RESERVED_TAG, datasn, offset, n, offset + n == end,
                                lun)
            if not cut.pdu(h, offset, data[offset:offset + n]):
                return False, itt, None
            offset += n
            datasn += 1
        solicited_from = max(imm, end)
    solicited = edtl - solicited_from
    while solicited > 0:
        bhs, payload = recv_for(ini, itt)
        if bhs.opcode != Op.R2T:
            return True, itt, (bhs, payload)  # it ended early: nothing more to send
        ttt, offset, length = bhs.ttt, bhs.buffer_offset, bhs.desired_length
        end = offset + length
        datasn = 0
        while offset < end:
            n = min(max_pdu, end - offset)
            h = data_out_header(ini, itt, ttt, datasn, offset, n, offset + n == end, lun)
            if not cut.pdu(h, offset, data[offset:offset + n]):
                return False, itt, None
            offset += n
            datasn += 1
        solicited -= length
    return True, itt, None


def write_command(ini: Initiator, cdb: bytes, data: bytes, write: dict[str, Any], *,
                  lun: int = DATA_LUN) -> int:
    """A whole write command under any negotiated InitialR2T/ImmediateData (the small
    initiator knows InitialR2T=Yes only), past UNIT ATTENTIONs; returns the status."""
    assert ini.sock is not None
    for _ in range(6):
        _, itt, early = send_write(ini, cdb, data, Cut(ini.sock, None, "", random.Random()),
                                   lun=lun, max_pdu=ini.max_send, **write)
        bhs, payload = early or _response(ini, itt)
        if bhs.opcode == Op.REJECT:
            raise InitiatorError(f"command rejected, reason {bhs.b2:#x}")
        sense = payload[2:2 + struct.unpack_from(">H", payload)[0]] if len(payload) > 2 else b""
        if bhs.b3 != CHECK_CONDITION or sense_key(sense) != UNIT_ATTENTION:
            return bhs.b3
    return bhs.b3


def _response(ini: Initiator, itt: int) -> tuple[Bhs, bytes]:
    while True:
        bhs, payload = recv_for(ini, itt)
        if bhs.opcode in (Op.SCSI_RESPONSE, Op.REJECT):
            return bhs, payload


def recv_for(ini: Initiator, itt: int) -> tuple[Bhs, bytes]:
    """The next PDU of task `itt` (R2T or its response) or a Reject; NOP-In pings are
    answered, other PDUs skipped."""
    while True:
        bhs, payload = ini.recv_pdu()
        if bhs.opcode == Op.NOP_IN and bhs.itt == RESERVED_TAG:
            ini.nop_reply(bhs)
            continue
        if bhs.itt == itt or bhs.opcode == Op.REJECT:
            return bhs, payload


# --- the driver ------------------------------------------------------------------------

@dataclass
class Figures:
    """The figures of one run (one target, one event loop)."""

    event_loop: str
    store: str
    drops: int
    seed: int
    workers: int
    elapsed_s: float = 0.0
    drops_done: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    by_close: dict[str, int] = field(default_factory=dict)
    by_reservation: dict[str, int] = field(default_factory=dict)
    leaked_sessions: int = 0
    leaked_by_kind: dict[str, int] = field(default_factory=dict)
    leaked_at_checks: list[int] = field(default_factory=list)
    tasks_left: dict[str, int] = field(default_factory=dict)
    fds_before: int = 0
    fds_after: int = 0
    fds_at_checks: list[int] = field(default_factory=list)
    fds_without_session: int = 0  # leaked fds beyond the leaked sessions' (pre-login drops)
    rss_before_kib: int = 0
    rss_peak_kib: int = 0
    rss_first_half_kib: int = 0
    rss_after_kib: int = 0
    rss_at_checks_kib: list[int] = field(default_factory=list)
    atomics: dict[str, int] = field(default_factory=dict)
    half_applied_atomics: int = 0
    reservation_results: dict[str, int] = field(default_factory=dict)
    healthy_commands: int = 0
    trial_errors: int = 0
    target_alive: bool = True
    tracebacks_in_log: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


class DropTest:
    """One run: a target under one event loop, `drops` trials, the checks."""

    def __init__(self, *, drops: int = 1000, event_loop: str = "uvloop", seed: int = 1,
                 store: str = "memory", workers: int = 4, check_every: int = 100,
                 workdir: Path | None = None, stop_on_leak: bool = False,
                 log=None) -> None:
        self.drops = drops
        self.event_loop = event_loop
        self.seed = seed
        self.store = store
        self.workers = workers
        self.check_every = check_every
        self.workdir = workdir
        self.stop_on_leak = stop_on_leak
        self.log = log or (lambda msg: None)
        self.fig = Figures(event_loop, store, drops, seed, workers)
        self.trials: dict[int, Trial] = {}  # isid -> trial
        self.pending_atomic: dict[int, tuple[int, int, bytes, bytes]] = {}  # trial -> range
        self.res_lock = threading.Lock()
        self.known_leaks: set[int] = set()
        self.target: OurTarget | None = None
        self.healthy: Healthy | None = None
        self.control: Path | None = None

    # --- target ---------------------------------------------------------------------

    def config_text(self, workdir: Path) -> str:
        def lun(number: int, size: int) -> str:
            if self.store == "file":
                where = f'store = "file"\npath = "{workdir / f"lun{number}.img"}"\n'
            else:
                where = 'store = "memory"\n'
            return f"[[target.lun]]\nlun = {number}\n{where}size = {size}\n"

        return (f'[[target]]\niqn = "{TARGET_IQN}"\n'
                + lun(DATA_LUN, DATA_LU_SIZE) + lun(RES_LUN, RES_LU_SIZE))

    @contextlib.contextmanager
    def running_target(self) -> Iterator[OurTarget]:
        with contextlib.ExitStack() as stack:
            workdir = self.workdir
            if workdir is None:
                workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(
                    prefix=f"droptest-{self.event_loop}-")))
            workdir.mkdir(parents=True, exist_ok=True)
            cfg = workdir / "droptest.toml"
            cfg.write_text(self.config_text(workdir))
            self.control = workdir / "control.sock"
            target = stack.enter_context(OurTarget(
                ["--control", str(self.control), "--event-loop", self.event_loop, "-q"],
                config=cfg, workdir=workdir, iqn=TARGET_IQN))
            self.target = target
            yield target

    def status(self) -> dict[str, Any]:
        assert self.control is not None
        return request(self.control, {"command": "status"})

    # --- the run --------------------------------------------------------------------

    def run(self) -> Figures:
        fig = self.fig
        started = time.monotonic()
        with self.running_target() as target:
            assert self.control is not None
            st = wait_control(self.control)
            if st.get("event_loop") != self.event_loop:
                fig.failures.append(f"target runs {st.get('event_loop')!r}, not "
                                    f"{self.event_loop!r}")
            self.healthy = Healthy(target.port, target.iqn)
            try:
                self._fill()
                self._quiesce(SETTLE)
                fig.fds_before = quiet_fds(target.pid)
                fig.rss_before_kib = proc_status_kib(target.pid, "VmRSS")
                self.log(f"{self.event_loop}: baseline fds {fig.fds_before}, "
                         f"RSS {fig.rss_before_kib / 1024:.1f} MiB")
                try:
                    self._trials(target)
                except (ControlError, OSError, InitiatorError, RuntimeError) as exc:
                    fig.failures.append(f"the run stopped: {type(exc).__name__}: {exc}")
                if target.alive:
                    self._final(target)
                else:
                    fig.failures.append("the target exited; its log ends:\n"
                                        + tail(target.log_path, 30))
            finally:
                fig.healthy_commands = self.healthy.commands
                fig.failures.extend(self.healthy.failures[:5])
                self.healthy.close()
                fig.target_alive = target.alive
                text = target.log_path.read_text(errors="replace") if target.log_path else ""
                fig.tracebacks_in_log = text.count("Traceback")
                if fig.tracebacks_in_log:
                    fig.failures.append(f"{fig.tracebacks_in_log} traceback(s) in the target's "
                                        f"log:\n{tail(target.log_path, 30)}")
        fig.elapsed_s = round(time.monotonic() - started, 2)
        return fig

    def _fill(self) -> None:
        """Write the whole data LU once, so its pages are resident before the baseline."""
        assert self.healthy is not None
        chunk = 1 * MiB
        for off in range(0, DATA_LU_SIZE, chunk):
            r = self.healthy.run(write10(off // BLOCK, chunk // BLOCK),
                                 data=bytes(_PATTERN[:chunk]))
            if r.status != GOOD:
                raise RuntimeError(f"fill WRITE(10) at {off}: status {r.status:#x}")

    def _trials(self, target: OurTarget) -> None:
        fig = self.fig
        numbers = list(range(self.drops))
        mid = self.drops // 2
        for start in range(0, self.drops, self.check_every):
            batch = numbers[start:start + self.check_every]
            self._batch(batch)
            if not target.alive:
                fig.failures.append("the target exited during the trials")
                return
            self._quiesce(CHECK_SETTLE)
            if self.stop_on_leak and self.known_leaks:
                self.known_leaks = set()  # before stopping, give them the full settle time
                self._quiesce(SETTLE)
            leaks = self._leaked_isids()
            fig.leaked_at_checks.append(len(leaks))
            rss = proc_status_kib(target.pid, "VmRSS")
            fig.rss_at_checks_kib.append(rss)
            fig.fds_at_checks.append(quiet_fds(target.pid))
            if start + len(batch) <= mid:
                fig.rss_first_half_kib = max(fig.rss_first_half_kib, rss)
            self.log(f"{self.event_loop}: {start + len(batch)}/{self.drops} drops, "
                     f"{len(leaks)} sessions left, fds {open_fds(target.pid)}, "
                     f"RSS {rss / 1024:.1f} MiB")
            if self.healthy is not None and self.healthy.failures:
                return
            if self.stop_on_leak and leaks:
                fig.failures.append(f"stopped after {start + len(batch)} drops: "
                                    f"{len(leaks)} session(s) left")
                return

    def _batch(self, numbers: list[int]) -> None:
        todo = list(numbers)
        lock = threading.Lock()

        def worker(slot: int) -> None:
            while True:
                with lock:
                    if not todo:
                        return
                    n = todo.pop(0)
                self._one(n, slot)

        threads = [threading.Thread(target=worker, args=(slot,), daemon=True)
                   for slot in range(min(self.workers, len(numbers)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _one(self, number: int, slot: int) -> None:
        rng = random.Random(f"{self.seed}:{number}")
        trial = Trial(number, TRIAL_ISID + number, rng.choice(KINDS))
        trial.close = "rst" if trial.kind == "unread" else rng.choice(("close", "rst"))
        prelogin = trial.kind == "mid-header" and rng.random() < 0.25
        if not prelogin and rng.random() < 0.2:
            trial.reservation = rng.choice(("reserve6", "reserve6", "pr"))
        self.trials[trial.isid] = trial
        held = self.res_lock if trial.reservation else contextlib.nullcontext()
        with held:
            try:
                if prelogin:
                    trial.variant = "before login"
                    self._prelogin(trial, rng)
                else:
                    self._drop(trial, rng, slot)
            except (OSError, InitiatorError, RuntimeError) as exc:
                trial.fail(f"{type(exc).__name__}: {exc}")
            try:
                if trial.reservation:
                    self._check_reservation(trial)
                if trial.kind == "atomic" and trial.atomic == "pending":
                    self._check_atomic(trial)
            except (OSError, InitiatorError, RuntimeError) as exc:
                trial.fail(f"check: {type(exc).__name__}: {exc}")
        assert self.healthy is not None
        with contextlib.suppress(OSError, InitiatorError):
            self.healthy.check_read(rng)

    # --- kinds ----------------------------------------------------------------------

    def _session(self, trial: Trial, params: dict[str, str]) -> tuple[Initiator, bool]:
        """A logged-in session of the trial's own nexus, and whether InitialR2T=Yes."""
        assert self.target is not None
        ini = Initiator(HOST, self.target.port, self.target.iqn, initiator_name=DROP_IQN,
                        isid=trial.isid, timeout=TIMEOUT, params=params)
        answer = ini.login()
        return ini, answer.get("InitialR2T", "Yes") == "Yes"

    def _end(self, ini: Initiator, trial: Trial) -> None:
        assert ini.sock is not None
        if trial.close == "rst":
            rst_close(ini.sock)
        else:
            ini.sock.close()
        ini.sock = None

    def _prelogin(self, trial: Trial, rng: random.Random) -> None:
        assert self.target is not None
        sock = socket.create_connection((HOST, self.target.port), timeout=TIMEOUT)
        text = f"InitiatorName={DROP_IQN}\0SessionType=Normal\0".encode()
        login = pdu.login_request(flags=pdu.LOGIN_TRANSIT | 1 << 2 | 3,  # T, CSG 1, NSG 3
                                  dsl=len(text), isid=trial.isid, itt=1, cmdsn=1)
        if rng.random() < 0.5:
            k = rng.randint(1, pdu.BHS_LEN - 1)
            sock.sendall(login[:k])
            trial.cut = f"bhs[{k}]"
        else:
            k = rng.randint(0, len(text) - 1)
            sock.sendall(login + text[:k])
            trial.cut = f"login data[{k}]"
        if trial.close == "rst":
            rst_close(sock)
        else:
            sock.close()

    def _drop(self, trial: Trial, rng: random.Random, slot: int) -> None:
        mode = rng.choice(("r2t", "immediate", "unsolicited"))
        params = {"r2t": {"ImmediateData": "No", "InitialR2T": "Yes"},
                  "immediate": {"ImmediateData": "Yes", "InitialR2T": "Yes",
                                "FirstBurstLength": "65536"},
                  "unsolicited": {"ImmediateData": "No", "InitialR2T": "No",
                                  "FirstBurstLength": "131072"}}[mode]
        ini, initial_r2t = self._session(trial, params)
        write = {"immediate": ini.immediate_data, "initial_r2t": initial_r2t,
                 "first_burst": ini.first_burst}
        try:
            if good(ini, tur()).status != GOOD:
                raise RuntimeError("TEST UNIT READY of a new session is not GOOD")
            if trial.reservation:
                self._reserve(ini, trial, write)
            kind = trial.kind
            if kind == "r2t":
                self._r2t(ini, trial, rng, mode, write)
            elif kind == "atomic":
                self._atomic(ini, trial, rng, mode, write, slot)
            elif kind == "data-in":
                self._data_in(ini, trial, rng)
            elif kind == "unread":
                self._unread(ini, trial, rng)
            else:
                k = rng.randint(1, pdu.BHS_LEN - 1)
                header, _ = command_header(ini, read10(0, 8), lun=DATA_LUN, edtl=8 * BLOCK,
                                           read=True)
                ini.send_raw(header[:k])
                trial.variant, trial.cut = "after login", f"bhs[{k}]"
        finally:
            if ini.sock is not None:
                self._end(ini, trial)

    def _cut(self, ini: Initiator, rng: random.Random, edtl: int, whole: float = 0.0) -> Cut:
        assert ini.sock is not None
        at = None if rng.random() < whole else rng.randrange(edtl)
        return Cut(ini.sock, at, rng.choice(("boundary", "bhs", "data")), rng)

    def _r2t(self, ini: Initiator, trial: Trial, rng: random.Random, mode: str,
             write: dict[str, Any]) -> None:
        blocks = rng.randint(256, 8192)  # 128 KiB .. 4 MiB: beyond any first burst
        lba = rng.randrange(LOW_REGION // BLOCK - blocks)
        cut = self._cut(ini, rng, blocks * BLOCK)
        max_pdu = min(rng.choice((8 * KiB, 64 * KiB, 256 * KiB)), ini.max_send)
        trial.variant = f"{mode}, {blocks * BLOCK // KiB} KiB, Data-Out {max_pdu // KiB} KiB"
        send_write(ini, write10(lba, blocks), _PATTERN[:blocks * BLOCK], cut, lun=DATA_LUN,
                   max_pdu=max_pdu, **write)
        trial.cut = cut.done

    def _data_in(self, ini: Initiator, trial: Trial, rng: random.Random) -> None:
        reads = rng.choice((1, 1, 2))
        total = 0
        for _ in range(reads):
            blocks = rng.randint(2 * MiB // BLOCK, 8 * MiB // BLOCK) if rng.random() < 0.5 \
                else rng.randint(MiB // BLOCK, 2 * MiB // BLOCK)
            lba = rng.randrange(DATA_LU_SIZE // BLOCK - blocks)
            header, _ = command_header(ini, read10(lba, blocks), lun=DATA_LUN,
                                       edtl=blocks * BLOCK, read=True)
            ini.send_raw(header)
            total += blocks * BLOCK
        take = 0 if rng.random() < 0.3 else rng.randrange(total // 2)
        got = 0
        assert ini.sock is not None
        while got < take:
            chunk = ini.sock.recv(min(256 * KiB, take - got))
            if not chunk:
                raise RuntimeError("the target closed a connection with Data-In to send")
            got += len(chunk)
        trial.variant = f"{reads} READ, {total // KiB} KiB"
        trial.cut = f"read {got} of {total}"

    def _unread(self, ini: Initiator, trial: Trial, rng: random.Random) -> None:
        burst = bytearray()
        names = []
        for _ in range(rng.randint(2, 6)):
            what = rng.choice(("tur", "read", "write", "nop"))
            if what == "write" and not ini.immediate_data:
                what = "nop"
            names.append(what)
            if what == "tur":
                burst += command_header(ini, tur(), lun=DATA_LUN, edtl=0)[0]
            elif what == "read":
                blocks = rng.choice((8, 64, 512))
                lba = rng.randrange(DATA_LU_SIZE // BLOCK - blocks)
                burst += command_header(ini, read10(lba, blocks), lun=DATA_LUN,
                                        edtl=blocks * BLOCK, read=True)[0]
            elif what == "write":
                blocks = rng.choice((1, 8, 64))
                n = min(blocks * BLOCK, ini.first_burst, ini.max_send)
                blocks = n // BLOCK
                lba = rng.randrange(LOW_REGION // BLOCK - blocks)
                burst += command_header(ini, write10(lba, blocks), lun=DATA_LUN, edtl=n,
                                        write=True, dsl=n)[0]
                burst += _PATTERN[:n]
            else:
                itt = ini.itt
                ini.itt = (itt + 1) & 0x7FFFFFFF or 1
                burst += pdu.nop_out(immediate=True, itt=itt, cmdsn=ini.cmdsn,
                                     exp_statsn=ini.exp_stat_sn)
        partial = rng.random() < 0.7
        if partial:
            header, _ = command_header(ini, read10(0, 8), lun=DATA_LUN, edtl=8 * BLOCK,
                                       read=True)
            burst += header[:rng.randint(1, pdu.BHS_LEN - 1)]
        ini.send_raw(bytes(burst))
        trial.variant = "+".join(names) + ("+partial" if partial else "")
        trial.cut = f"{len(burst)} bytes then RST"

    # --- atomics --------------------------------------------------------------------

    def _region(self, slot: int) -> tuple[int, int]:
        """The LBA range this worker slot owns for its atomic trials."""
        size = (DATA_LU_SIZE - LOW_REGION) // BLOCK // max(self.workers, 1)
        first = LOW_REGION // BLOCK + slot * size
        return first, size

    @staticmethod
    def _blocks(tag: int, state: str, count: int) -> bytes:
        """`count` blocks each naming (trial, old/new, block): never equal to another's."""
        out = bytearray()
        for i in range(count):
            stamp = struct.pack(">4sII4s", b"DROP", tag, i, state.encode()[:4].ljust(4))
            out += stamp * (BLOCK // len(stamp))
        return bytes(out)

    def _atomic(self, ini: Initiator, trial: Trial, rng: random.Random, mode: str,
                write: dict[str, Any], slot: int) -> None:
        first, size = self._region(slot)
        caw = rng.random() < 0.5
        blocks = rng.randint(1, 255) if caw else rng.randint(8, min(2048, size))
        lba = first + rng.randrange(size - blocks + 1)
        old = self._blocks(trial.number, "old", blocks)
        new = self._blocks(trial.number, "new", blocks)
        status = write_command(ini, write10(lba, blocks), old, write)  # by this same nexus
        if status != GOOD:
            raise RuntimeError(f"WRITE(10) of the old data: status {status:#x}")
        cdb = compare_and_write(lba, blocks) if caw else write_atomic16(lba, blocks)
        data = old + new if caw else new
        cut = self._cut(ini, rng, len(data), whole=0.2)
        max_pdu = min(rng.choice((8 * KiB, 64 * KiB, 256 * KiB)), ini.max_send)
        trial.variant = (f"{'COMPARE AND WRITE' if caw else 'WRITE ATOMIC(16)'} {blocks} blocks, "
                         f"{mode}")
        trial.atomic = "pending"
        self.pending_atomic[trial.number] = (lba, blocks, old, new)
        whole, _, _ = send_write(ini, cdb, data, cut, lun=DATA_LUN, max_pdu=max_pdu, **write)
        trial.cut = "whole Data-Out, response not read" if whole else cut.done

    def _check_atomic(self, trial: Trial) -> None:
        """After the target noticed the drop: all-old or all-new (SBC-4 4.29.1, 5.3)."""
        self._wait_gone(trial.isid, TRIAL_SETTLE)
        lba, blocks, old, new = self.pending_atomic.pop(trial.number)
        assert self.healthy is not None
        r = self.healthy.run(read10(lba, blocks), read=blocks * BLOCK)
        if r.status != GOOD:
            raise RuntimeError(f"READ(10) of the atomic range: status {r.status:#x}")
        data = r.data
        if data == old:
            trial.atomic = "old"
        elif data == new:
            trial.atomic = "new"
        else:
            olds = sum(data[i * BLOCK:(i + 1) * BLOCK] == old[i * BLOCK:(i + 1) * BLOCK]
                       for i in range(blocks))
            news = sum(data[i * BLOCK:(i + 1) * BLOCK] == new[i * BLOCK:(i + 1) * BLOCK]
                       for i in range(blocks))
            trial.atomic = "mixed" if olds + news == blocks else "other"
            trial.fail(f"{trial.variant}: {olds} old and {news} new of {blocks} blocks "
                       f"at LBA {lba} ({trial.cut})")

    # --- reservations ---------------------------------------------------------------

    def _reserve(self, ini: Initiator, trial: Trial, write: dict[str, Any]) -> None:
        if trial.reservation == "reserve6":
            r = good(ini, reserve6(), lun=RES_LUN)
            if r.status != GOOD:
                trial.reservation_result = "refused"
                raise RuntimeError(f"RESERVE(6) by a new nexus: status {r.status:#x} (an "
                                   "earlier trial's reservation is still held)")
            return
        key = 0xD0000000_00000000 | trial.number
        for sa, pr_type, params in ((0, 0, pr_params(0, key)), (1, PR_TYPE_WE,
                                                                 pr_params(key, 0))):
            status = write_command(ini, pr_out(sa, pr_type), params, write, lun=RES_LUN)
            if status != GOOD:
                trial.reservation_result = "refused"
                raise RuntimeError(f"PERSISTENT RESERVE OUT sa {sa}: status {status:#x}")

    def _check_reservation(self, trial: Trial) -> None:
        if trial.reservation_result == "refused":
            return
        assert self.healthy is not None
        h = self.healthy
        gone = self._wait_gone(trial.isid, TRIAL_SETTLE)
        if trial.reservation == "reserve6":
            # SPC-2 5.5.1: the nexus loss released it; our RESERVE(6) succeeds (soon).
            deadline = time.monotonic() + SETTLE
            while True:
                r = h.run(reserve6(), lun=RES_LUN)
                if r.status == GOOD:
                    h.run(release6(), lun=RES_LUN)
                    trial.reservation_result = "released"
                    return
                if r.status != RESERVATION_CONFLICT:
                    raise RuntimeError(f"healthy RESERVE(6): status {r.status:#x}")
                if time.monotonic() > deadline:
                    trial.reservation_result = "stuck"
                    trial.fail(f"RESERVATION CONFLICT {TRIAL_SETTLE + SETTLE:g} s after the "
                               f"holder's connection was dropped (session "
                               f"{'gone' if gone else 'still listed'})")
                    # A LOGICAL UNIT RESET releases it (SPC-2 5.5.3), for the next trials.
                    with h.lock:
                        h.ini.task_management(TmfFunction.LOGICAL_UNIT_RESET, lun=RES_LUN)
                    return
                time.sleep(0.05)
        # Persistent: it stays (SPC-4 5.13.1); the dropped nexus's tasks must be gone.
        left = self._tasks_left(self.status(), trial.isid)
        r = h.run(pr_in_read_reservation(), lun=RES_LUN, read=64)
        key = 0xD0000000_00000000 | trial.number
        held = r.status == GOOD and len(r.data) >= 16 and struct.unpack_from(
            ">Q", r.data, 8)[0] == key
        trial.reservation_result = "survived" if held else "lost"
        if not held:
            trial.fail("the persistent reservation did not survive the nexus loss")
        if left and gone:
            trial.fail(f"tasks left after the nexus loss: {left}")
        healthy_key = 0xEEEE0000_00000000 | trial.number
        for sa, params in ((0, pr_params(0, healthy_key)), (3, pr_params(healthy_key, 0))):
            r = h.run(pr_out(sa), lun=RES_LUN, data=params)  # REGISTER, then CLEAR
            if r.status != GOOD:
                raise RuntimeError(f"healthy PERSISTENT RESERVE OUT sa {sa}: "
                                   f"status {r.status:#x}")

    # --- settling and the checks ----------------------------------------------------

    def _trial_sessions(self, st: dict[str, Any]) -> set[int]:
        return {int(s["isid"], 16) for s in st["sessions"] if s["initiator"] != HEALTHY_IQN}

    @staticmethod
    def _tasks_left(st: dict[str, Any], isid: int | None = None) -> dict[str, int]:
        """Tasks in the task sets: all of them, or (isid) those of one I_T nexus, which the
        status lists with their initiator port (RFC 7143 4.2.7.1: ",i,0x<ISID>")."""
        left: dict[str, int] = {}
        for t in st["targets"]:
            for lun in t["luns"]:
                ts = lun["task_set"]
                if isid is not None:
                    port = f",i,0x{isid:012x}"
                    mine = [k for k in ts.get("tasks", []) if k["initiator_port"].endswith(port)]
                    if mine:
                        left[f"LUN {lun['lun']} tasks of the nexus"] = len(mine)
                    continue
                for key in ("queued_now", "running"):
                    if ts[key]:
                        left[f"LUN {lun['lun']} {key}"] = ts[key]
        return left

    def _wait_gone(self, isid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while isid in self._trial_sessions(self.status()):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def _quiesce(self, timeout: float) -> dict[str, Any]:
        """Wait until no new trial session is listed and the task sets are empty."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            sessions = self._trial_sessions(st)
            if (sessions <= self.known_leaks and not self._tasks_left(st)) \
                    or time.monotonic() > deadline:
                self.known_leaks = sessions
                return st
            time.sleep(0.05)

    def _leaked_isids(self) -> set[int]:
        return set(self.known_leaks)

    def _final(self, target: OurTarget) -> None:
        fig = self.fig
        self.known_leaks = set()
        st = self._quiesce(SETTLE)
        leaks = self._trial_sessions(st)
        fig.tasks_left = self._tasks_left(st)
        deadline = time.monotonic() + SETTLE  # the control connection's fd closes soon
        while open_fds(target.pid) > fig.fds_before + FD_SLACK and time.monotonic() < deadline:
            time.sleep(0.05)
        fig.fds_after = quiet_fds(target.pid)
        fig.rss_after_kib = proc_status_kib(target.pid, "VmRSS")
        fig.rss_peak_kib = proc_status_kib(target.pid, "VmHWM")
        if not fig.rss_first_half_kib:
            fig.rss_first_half_kib = fig.rss_before_kib
        checks = len(fig.rss_at_checks_kib)
        late = max(fig.rss_at_checks_kib[checks // 2:] + [fig.rss_after_kib])
        trials = list(self.trials.values())
        fig.drops_done = len(trials)
        fig.by_kind = dict(Counter(t.kind for t in trials))
        fig.by_close = dict(Counter(t.close for t in trials))
        fig.by_reservation = dict(Counter(t.reservation for t in trials if t.reservation))
        for isid in leaks:
            if isid in self.trials:
                self.trials[isid].leaked = True
        leaked = [t for t in trials if t.leaked]
        fig.leaked_sessions = len(leaks)
        fig.fds_without_session = max(0, fig.fds_after - fig.fds_before - len(leaks))
        fig.leaked_by_kind = dict(Counter(f"{t.kind}/{t.close}" for t in leaked))
        fig.atomics = dict(Counter(t.atomic for t in trials if t.atomic))
        fig.half_applied_atomics = sum(t.atomic in ("mixed", "other") for t in trials)
        fig.reservation_results = dict(Counter(t.reservation_result for t in trials
                                               if t.reservation_result))
        errors = [t for t in trials if t.error]
        fig.trial_errors = len(errors)
        f = fig.failures
        if leaks:
            f.append(f"{len(leaks)} session(s) of dropped connections still listed "
                     f"{SETTLE:g} s after the last drop: " + "; ".join(
                         f"#{t.number} {t.kind} ({t.variant}; {t.cut}; {t.close})"
                         for t in leaked[:5]))
        if fig.tasks_left:
            f.append(f"task sets not empty after the drops: {fig.tasks_left}")
        if fig.fds_after > fig.fds_before + FD_SLACK:
            f.append(f"open fds {fig.fds_before} -> {fig.fds_after} "
                     f"(allowed +{FD_SLACK})")
        bound = rss_bound(self.store)
        if fig.rss_after_kib > fig.rss_before_kib + bound // KiB:
            f.append(f"RSS {fig.rss_before_kib // 1024} -> {fig.rss_after_kib // 1024} MiB "
                     f"(allowed +{bound // MiB} MiB)")
        growth = rss_growth(self.store)
        if late > fig.rss_first_half_kib + growth // KiB:
            f.append(f"RSS grew over the last half of the trials: at most "
                     f"{fig.rss_first_half_kib // 1024} MiB in the first half, "
                     f"{late // 1024} MiB in the last (allowed +{growth // MiB} MiB)")
        if fig.half_applied_atomics:
            f.append(f"{fig.half_applied_atomics} atomic write(s) half applied")
        for t in errors[:5]:
            f.append(f"trial #{t.number} {t.kind} ({t.variant}; {t.cut}; {t.close}"
                     f"{'; ' + t.reservation if t.reservation else ''}): {t.error}")
        if not target.alive:
            f.append("the target is not running")


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items()))


def render(fig: Figures) -> str:
    """The figures of a run as the tool prints them."""
    def mib(kib: int) -> str:
        return f"{kib / 1024:.1f}"

    leaks = f" ({_counts(fig.leaked_by_kind)})" if fig.leaked_by_kind else ""
    lines = [
        f"== {fig.event_loop}, {fig.store} store: {fig.drops_done} of {fig.drops} drops in "
        f"{fig.elapsed_s:.1f} s "
        f"({fig.workers} in parallel, seed {fig.seed}): {'PASS' if fig.ok else 'FAIL'}",
        f"  drops by kind: {_counts(fig.by_kind)}; ended by {_counts(fig.by_close)}",
        f"  reservations first: {_counts(fig.by_reservation) or 'none'}; afterwards: "
        f"{_counts(fig.reservation_results) or '-'}",
        f"  leaked sessions: {fig.leaked_sessions}{leaks}; listed at the checks: "
        f"{fig.leaked_at_checks}",
        f"  task sets left: {fig.tasks_left or 'empty'}",
        f"  open fds: {fig.fds_before} before, {fig.fds_after} after "
        f"({fig.fds_without_session} without a session); at the checks {fig.fds_at_checks}",
        f"  RSS MiB: {mib(fig.rss_before_kib)} before, {mib(fig.rss_peak_kib)} peak (VmHWM), "
        f"{mib(fig.rss_first_half_kib)} first-half max, {mib(fig.rss_after_kib)} after",
        f"  atomics: {_counts(fig.atomics) or 'none'}; half-applied: "
        f"{fig.half_applied_atomics}",
        f"  healthy session: {fig.healthy_commands} commands; trial errors: "
        f"{fig.trial_errors}",
    ]
    return "\n".join(lines + [f"  FAIL: {f}" for f in fig.failures])


def run(drops: int = 1000, event_loop: str = "uvloop", **kw: Any) -> Figures:
    """One drop test run; see DropTest for the keywords."""
    return DropTest(drops=drops, event_loop=event_loop, **kw).run()


# --- the deterministic case: a reset behind unread bytes --------------------------------

def wait_stopped(pid: int, timeout: float = 5.0) -> None:
    """Until every thread of `pid` is in state T (stopped): kill() returns before the
    SIGSTOP has taken effect, and a still running loop would read the bytes early."""
    deadline = time.monotonic() + timeout
    while True:
        states = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                states.append(stat.rsplit(")", 1)[1].split()[0])
        if states and all(s in ("T", "t") for s in states):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"process {pid} did not stop: thread states {states}")
        time.sleep(0.005)


def quiet_fds(pid: int, samples: int = 5, interval: float = 0.05) -> int:
    """The fewest open fds over a few samples: a control connection just answered is
    closed by the target a moment after the client has its answer."""
    counts = []
    for i in range(samples):
        if i:
            time.sleep(interval)
        counts.append(open_fds(pid))
    return min(counts)


def stopped_reset_trials(target: OurTarget, control: Path, rounds: int = 5,
                         settle: float = 5.0) -> dict[str, Any]:
    """RST behind unread bytes, in a fixed order: log in, SIGSTOP the target, send bytes
    that ask for no answer (a partial BHS, or part of the Data-Out an R2T asked for), RST,
    SIGCONT. The target's loop then sees the data and the reset at once. RFC 7143 7.1.5 /
    SAM-5 6.3.4: the connection is gone, so its session (ERL 0: the only connection) and
    the nexus's tasks must go. Returns the session counts before and after."""
    before = len(wait_control(control)["sessions"])
    fds_before = quiet_fds(target.pid)
    for i in range(rounds):
        r2t = i % 2 == 1
        params = {"ImmediateData": "No", "InitialR2T": "Yes"} if r2t else {}
        ini = Initiator(HOST, target.port, target.iqn, initiator_name=DROP_IQN,
                        isid=TRIAL_ISID + 0x8000 + i, timeout=TIMEOUT, params=params)
        ini.login()
        if good(ini, tur()).status != GOOD:
            raise RuntimeError("TEST UNIT READY of a new session is not GOOD")
        payload = b""
        if r2t:
            header, itt = command_header(ini, write10(0, 128), lun=DATA_LUN, edtl=64 * KiB,
                                         write=True)
            ini.send_raw(header)
            bhs, _ = recv_for(ini, itt)
            if bhs.opcode != Op.R2T:
                raise RuntimeError(f"expected an R2T, got {bhs!r}")
            payload = data_out_header(ini, itt, bhs.ttt, 0, 0, 8 * KiB, False, DATA_LUN) + \
                bytes(_PATTERN[:3000])
        else:
            header, _ = command_header(ini, tur(), lun=DATA_LUN, edtl=0)
            payload = header[:20]
        assert ini.sock is not None
        os.kill(target.pid, signal.SIGSTOP)
        try:
            wait_stopped(target.pid)
            ini.sock.sendall(payload)
            rst_close(ini.sock)
            ini.sock = None
            time.sleep(0.05)  # the bytes and the RST reach the (stopped) target's socket
        finally:
            os.kill(target.pid, signal.SIGCONT)
    deadline = time.monotonic() + settle
    while True:
        st = request(control, {"command": "status"})
        after = len(st["sessions"])
        if after <= before or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    while open_fds(target.pid) > fds_before and time.monotonic() < deadline:
        time.sleep(0.05)  # the control connections' fds close soon after their answers
    fds_after = open_fds(target.pid)
    with Initiator(HOST, target.port, target.iqn, initiator_name=HEALTHY_IQN,
                   timeout=TIMEOUT) as ini:  # the target still serves
        ini.login()
        serving = good(ini, tur()).status == GOOD
        ini.logout()
    return {"rounds": rounds, "sessions_before": before, "sessions_after": after,
            "fds_before": fds_before, "fds_after": fds_after, "serving": serving,
            "event_loop": st.get("event_loop")}
