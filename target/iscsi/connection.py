"""One iSCSI connection as a sans-IO object (RFC 7143): bytes in, buffers and tasks out.

Rules:
- Receiving follows asyncio.BufferedProtocol: the shell asks get_buffer(), receives into
  it and reports buffer_updated(n). Headers and small data segments land in a scratch
  buffer; the data of SCSI writes (immediate data and Data-Out) is received straight into
  the command's own buffer at its buffer offset, so write data is never copied on the way
  in (DESIGN.md principle 5).
- The shell learns what to do from events (target.iscsi.events), as with h11 and
  aioquic: after feeding bytes, and when the wakeup callback it gave runs, it calls
  next_event() until None. The shell reads none of the connection's state and resets
  none of it; a flag is cleared by the connection when it hands out the event.
- Output is a list of buffers (data_to_send()): BHS bytes, and Data-In payloads as the
  SCSI layer's data itself or memoryviews of it, never joined (so not h11's one bytes
  object).
  The shell sends them with one sendmsg() each time.
- Commands reach the SCSI layer through the TasksReady event when they are admitted, in
  CmdSN order (3.2.2.1: delivered for execution in CmdSN order), so that the task set
  orders newer tasks after them (SAM-5 8.6, SPC-4 7.5.8 QAM=0) even while their Data-Out
  is still arriving: such a task has `data_pending` set, and when the last of its data
  is in it is put in the event's `data_in`; the shell runs it only then
  (target.shell.dispatch) and hands it back with complete(task).
- Requests are dispatched by one table, REQUESTS (opcode -> Request: handler, the phases
  it is allowed in, what a discovery session does with it, CmdSN ordering or none), as
  aioquic keeps its frame handlers. Phases follow the target states of RFC 7143 8.1
  (Phase), moved only through the _TRANSITIONS table.
- Login phase: only Login Requests, handled by target.iscsi.login (RFC 7143 6). Anything
  else closes the connection (6.1: the first PDU must be a Login Request).
- Full feature phase, ErrorRecoveryLevel 0 (7.1.5, 7.2): non-immediate commands are
  admitted in CmdSN order within [ExpCmdSN, MaxCmdSN] and silently ignored outside it
  (4.2.2.1); a header digest error, a DataSN or buffer offset out of sequence, data beyond
  what was asked for or a malformed PDU end the connection after a Reject naming the PDU
  (11.17); an unsupported opcode is Rejected and the connection goes on.
- Write data: immediate data (ImmediateData=Yes), then unsolicited Data-Out up to
  FirstBurstLength when InitialR2T=No, then R2Ts of at most MaxBurstLength, at most
  MaxOutstandingR2T at a time, each with its own Target Transfer Tag, R2TSN counting
  from 0 per command and DataSN from 0 per sequence (11.7, 11.8).
- Data-In: segments of at most the initiator's MaxRecvDataSegmentLength, F set on the
  last PDU of each MaxBurstLength sequence, DataSN from 0; the status goes in the last
  Data-In (phase collapse, 11.7.4) when the command ended GOOD, else in a SCSI Response
  with autosense (11.4.7). Residual over/underflow against the Expected Data Transfer
  Length per 11.4.5.1.
- StatSN counts every PDU that carries status (SCSI Response, Data-In with S, NOP-In
  answering a NOP-Out, TMF/Text/Logout responses, Reject); R2T and unsolicited NOP-In
  carry the current StatSN without advancing it (11.8.2, 11.19).
- Task management (11.5, 11.6) is the SCSI target's (target.scsi.tmf): a TMF Request is
  mapped to one TaskManager call and answered with its response; ABORT TASK's tag lookup
  and RefCmdSN rule (11.5.1 b: Function Complete, the CmdSN counts as received) and the
  tmf-reject fault hook (target.faults) stay here. The connection attaches itself as the
  owner of its I_T nexus: tasks() lists its commands (the held ones too) and
  task_management_event() is how it learns which were aborted, by any nexus, and which
  end in TASK ABORTED (TAS=1) or a cold reset ends it.
- Limits (target.config [limits], given by the shell): a Login Request that would open
  a session beyond `max_sessions` (TSIH 0 while that many exist) is answered 03/02 OUT OF
  RESOURCES (RFC 7143 11.13.5) and the connection ends. The write buffers of one
  connection's commands over SMALL_WRITE bytes hold at most `max_buffered` bytes (the
  smaller ones, at most one per CmdSN in the window, are not counted: the common write
  pays nothing for the bound): a command whose buffer would pass it is answered TASK SET
  FULL (SAM-5 5.3: the logical unit lacks the resources to accept it) when its CmdSN
  turn comes, with no buffer and no R2T; its data is discarded. READs over SMALL_WRITE
  count their EDTL the same way from arrival until answered (the Data-In they make is
  held here until the shell sends it; once answered it is the shell's, whose link stops
  reading past HIGH_WATER), so a window of large READs received at once cannot queue
  more than the bound; one that would pass it is answered TASK SET FULL too. The data
  segments of PDUs held for CmdSN order (NOP-Out, Text: copies) count as well; one that
  would pass the bound ends the connection after a Reject (11.17: a PDU the target
  cannot take), as no hole in the CmdSN order can be left.
- MAXIMUM TRANSFER LENGTH (the Block Limits VPD page, target.scsi.vpd_sbc; SBC-4 6.6.4:
  a command over it ends in CHECK CONDITION, ILLEGAL REQUEST, INVALID FIELD IN CDB): a
  command whose Data-Out (EDTL) is larger than any LU of the session accepts gets no
  buffer and is answered so when its turn comes, pointing at the CDB's TRANSFER LENGTH
  field (target.scsi.sbc.transfer_too_long). No buffer is allocated before that check.
- Memory is committed as data arrives: a write buffer of BIG_BUFFER bytes or more is an
  anonymous mapping (mmap), whose pages the kernel commits only when data is received
  into them and gives back at once when the last view of it goes; smaller ones come from
  the heap (target.malloc). The scratch buffer is sized for the login phase's
  MaxRecvDataSegmentLength (8192, 13.12) until full feature phase, so a connection that
  never logs in holds about 24 KiB of it, not the negotiated size.
- An aborted command stays aborted (TaskTransport.aborted) until it is gone, whatever
  answered it (nothing, or TASK ABORTED under TAS=1): one still held behind a CmdSN hole is
  skipped when the hole closes, and its Data-Out is discarded (11.5.1).
"""

from __future__ import annotations

import logging
import mmap
import struct
from collections import deque
from collections.abc import Callable
from enum import Enum

from target.iscsi import pdu
from target.iscsi.errors import ProtocolError
from target.iscsi.events import CLOSE_WANTED, TASKSET_CHANGED, Event, TasksReady
from target.iscsi.keys import OUT_OF_RESOURCES
from target.iscsi.login import Login, LoginOutcome
from target.iscsi.pdu import (
    BHS_LEN,
    DIGEST_LEN,
    F_FINAL,
    F_OVERFLOW,
    F_READ,
    F_STATUS,
    F_UNDERFLOW,
    F_WRITE,
    RESERVED_TAG,
    Bhs,
    Op,
    RejectReason,
    TmfFunction,
    TmfResponse,
)
from target.iscsi.portal import Portal
from target.iscsi.session import Session, SessionParams
from target.iscsi.text import TextResponder
from target.scsi.sbc import transfer_too_long
from target.scsi.sense import Asc, CheckCondition, SenseKey
from target.scsi.task import Nexus, ScsiTask, Status, decode_lun
from target.scsi.tmf import Disposition, Function, ServiceResponse, TmfEvent

log = logging.getLogger(__name__)

LOGIN_MAX_RECV = 8192  # MaxRecvDataSegmentLength before it is negotiated (13.12)
MAX_EDTL = 64 << 20  # largest write buffer of one command before the session's LUs are known
BIG_BUFFER = 2 << 20  # write buffers from this size are mmap'd: committed as data arrives
# Write buffers up to this size are not counted against max_buffered_bytes: the CmdSN
# window bounds them (cmd_window x SMALL_WRITE, 8 MiB at the default 128), and the common
# small write pays no bookkeeping (issue 14's hot path, docs/COST.md).
SMALL_WRITE = 64 << 10
_SENSE_LEN = struct.Struct(">H")
# ABORTED COMMAND additional sense codes for iSCSI data errors (RFC 7143 11.4.7.2).
DATA_PHASE_ERROR = Asc(0x4B, 0x00)
INVALID_TARGET_PORT_TRANSFER_TAG = Asc(0x4B, 0x01)
DATA_OFFSET_ERROR = Asc(0x4B, 0x05)
# Eight-byte LUN fields of LUNs 0..255 in peripheral device addressing (SAM-5 4.6.6).
_LUN_PREFIX = [bytes((0, n, 0, 0, 0, 0, 0, 0)) for n in range(256)]
_DIGEST = struct.Struct("<I")
_RECEIVED = ()  # a held CmdSN slot that counts as received with no command to run
# Enum members the hot path reads, as globals: a member read through its class costs
# several times a global load (EnumType's lookup).
_SCSI_COMMAND = int(Op.SCSI_COMMAND)  # Connection._dispatch's fast path compares plain ints
_DATA_OUT = int(Op.DATA_OUT)
_GOOD = int(Status.GOOD)


class Phase(Enum):
    """The connection's phase, after the target states of RFC 7143 8.1: LOGIN is XPT_UP
    and IN_LOGIN (transport up, login under way), FULL_FEATURE is LOGGED_IN, CLOSED is
    FREE. At ErrorRecoveryLevel 0 with no connection recovery the logout and cleanup
    states (IN_LOGOUT, LOGOUT_REQUESTED, CLEANUP_WAIT) are passed through at once: a
    Logout is answered and the connection closes with its response."""

    LOGIN = "login"
    FULL_FEATURE = "full feature"
    CLOSED = "closed"


_FULL_FEATURE = Phase.FULL_FEATURE  # a global: the hot path's test is one load
_IN_LOGIN = Phase.LOGIN


class Transition(Enum):
    """What moves a connection from one phase to the next (see _TRANSITIONS)."""

    LOGIN_COMPLETE = "final Login Response sent, T=1 into full feature phase (6.3)"
    LOGIN_FAILED = "Login Response with a failure status sent (6.1, 11.13.5)"
    LOGOUT = "Logout Response sent, the connection or session closes (11.14)"
    TRANSPORT_LOST = "the transport is gone (peer, error, or we closed it)"


_TRANSITIONS: dict[tuple[Phase, Transition], Phase] = {
    (Phase.LOGIN, Transition.LOGIN_COMPLETE): Phase.FULL_FEATURE,
    (Phase.LOGIN, Transition.LOGIN_FAILED): Phase.CLOSED,
    (Phase.FULL_FEATURE, Transition.LOGOUT): Phase.CLOSED,
    (Phase.LOGIN, Transition.TRANSPORT_LOST): Phase.CLOSED,
    (Phase.FULL_FEATURE, Transition.TRANSPORT_LOST): Phase.CLOSED,
    (Phase.CLOSED, Transition.TRANSPORT_LOST): Phase.CLOSED,
}


class Ordering(Enum):
    """How a request meets CmdSN ordering (RFC 7143 3.2.2.1, 4.2.2.1)."""

    CMDSN = "in CmdSN order, or at once with the I bit"
    NONE = "no CmdSN: handled as it arrives"  # Data-Out (11.7), SNACK (11.16)
    CMDSN_UNLESS_REPLY = "as CMDSN, but a reply to our NOP-In (ITT 0xffffffff) at once"


class InDiscovery(Enum):
    """What a request gets in a discovery session (4.3: Text and Logout are what it is
    for; NOP-Out is answered too)."""

    ALLOWED = "handled"
    REJECTED = "Reject (PROTOCOL_ERROR) and the connection goes on"
    ENDS = "Reject naming it and the connection ends"


class R2T:
    """One outstanding Ready To Transfer (11.8)."""

    __slots__ = ("ttt", "cmd", "offset", "end", "next_offset", "datasn")

    def __init__(self, ttt: int, cmd: TaskTransport, offset: int, length: int) -> None:
        self.ttt = ttt
        self.cmd = cmd
        self.offset = offset
        self.end = offset + length
        self.next_offset = offset
        self.datasn = 0


class TaskTransport:
    """The iSCSI transport state of one SCSI command (its ScsiTask's `transport`), from
    its PDU to its response: ITT, CmdSN, the write buffer, unsolicited data and R2Ts.
    Not target.scsi.commands.Command, the opcode table's entry."""

    __slots__ = ("task", "itt", "cmdsn", "lun_raw", "edtl", "read", "write", "buf", "view",
                 "received", "unsol_end", "unsol_next", "unsol_datasn", "r2t_next", "r2tsn",
                 "outstanding", "admitted", "queued", "aborted", "data_pdus", "gap", "held",
                 "refused")

    def __init__(self, task: ScsiTask, bhs: Bhs, cmdsn: int, edtl: int, read: bool,
                 write: bool) -> None:
        # CmdSN, EDTL and the R/W bits as Connection._new_command read them from `bhs`
        # (once: Bhs's named words are properties).
        self.task = task
        self.itt = bhs.itt
        self.cmdsn = cmdsn
        self.lun_raw = bhs.lun
        self.edtl = edtl
        self.read = read
        self.write = write
        self.buf: bytearray | mmap.mmap | None = None
        self.view: memoryview | None = None
        self.received = 0
        self.unsol_end = 0  # end of the unsolicited burst (immediate + unsolicited Data-Out)
        self.unsol_next = 0
        self.unsol_datasn = 0
        self.r2t_next = 0  # first offset not yet asked for by an R2T
        self.r2tsn = 0
        self.outstanding = 0
        self.admitted = False
        self.queued = False
        self.aborted = False
        self.data_pdus = 0  # R2Ts or Data-Ins sent, for ExpDataSN
        self.gap: tuple[int, int] | None = None  # unsolicited range left unsent (F bit)
        self.held = 0  # bytes it counts in Connection.buffered ([limits] max_buffered_bytes)
        self.refused = False  # a READ over the bound: TASK SET FULL in its turn (aborted too)



class Connection:
    """The protocol state of one TCP connection to the target."""

    def __init__(self, portal: Portal, local_address: str = "", peer: str = "",
                 wakeup: Callable[[], None] | None = None, tmf_faults=None, *,
                 max_sessions: int = 0, max_buffered: int = 1 << 62) -> None:
        self.portal = portal
        self.max_sessions = max_sessions  # 0: no bound ([limits] max_sessions)
        self._max_buffered = max_buffered  # bytes of write buffers ([limits])
        self.buffered = 0  # bytes of write buffers held now
        self._max_write = MAX_EDTL  # the session's largest MAXIMUM TRANSFER LENGTH, bytes
        self.peer = peer
        self.local_address = local_address
        self.phase = Phase.LOGIN
        self._discovery = False  # a discovery session (4.3): set at full feature phase
        self.login = None  # the Login state machine, made on the first Login Request
        self.session: Session | None = None
        self.params = SessionParams()
        self.nexus: Nexus | None = None
        self.stat_sn = 0
        self.ready: deque[ScsiTask] = deque()
        self.data_ready: deque[ScsiTask] = deque()  # tasks of `ready` whose data is now in
        self._tasks_ready = TasksReady(self.ready, self.data_ready)  # the one event object
        self.want_close = False  # state, for inspection: the shell is told by CloseWanted
        self._close_told = False
        self._taskset_changed = False  # tasks left an LU's task set: TaskSetChanged
        self.tmf_faults = tmf_faults  # target.faults.Faults whose tmf-reject rules TMFs meet
        self._wakeup = wakeup  # the shell's: events are waiting outside a receive
        self._out: list = []
        self._cmds: dict[int, TaskTransport] = {}
        self._r2ts: dict[int, R2T] = {}
        self._held: dict[int, tuple[Bhs, object, TaskTransport | None]] = {}
        self._next_ttt = 1
        self._text: TextResponder | None = None
        self._ping_ttt: int | None = None
        # receive side
        self._max_recv = LOGIN_MAX_RECV
        self._hdigest = False
        self._ddigest = False
        self._buf = bytearray(_scratch_size(LOGIN_MAX_RECV))
        self._view = memoryview(self._buf)
        self._rpos = 0
        self._wpos = 0
        self._pdu: Bhs | None = None
        self._ahs = b""
        self._dest: memoryview | None = None
        self._got = 0
        self._tail = 0
        self._direct = False
        self._incoming: TaskTransport | None = None
        self._stray = False  # the Data-Out being received was rejected: drop it

    # --- receive -----------------------------------------------------------------------

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Where the next received bytes go (asyncio.BufferedProtocol.get_buffer)."""
        if (self._dest is not None and self._rpos == self._wpos
                and self._pdu is not None and self._got < self._pdu.dsl):
            self._direct = True
            return self._dest[self._got:]
        self._direct = False
        if self._rpos == self._wpos:
            self._rpos = self._wpos = 0
        elif len(self._buf) - self._wpos < len(self._buf) // 2 and self._rpos:
            pending = self._wpos - self._rpos
            self._view[:pending] = self._view[self._rpos:self._wpos]
            self._rpos, self._wpos = 0, pending
        return self._view[self._wpos:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._direct:
            self._got += nbytes
            self._direct = False
        else:
            self._wpos += nbytes
        try:
            self._parse()
        except ProtocolError as exc:
            self._protocol_error(exc)
        except _Reparse:  # the login is over and the scratch buffer was replaced
            self.buffer_updated(0)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes (tests and simple shells): copies into get_buffer() as needed."""
        view = memoryview(data)
        while view and not self.want_close:
            buf = self.get_buffer()
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            view = view[n:]
            self.buffer_updated(n)

    def _parse(self) -> None:
        view = self._view  # a new one only at full feature phase, which raises _Reparse
        while not self.want_close:
            avail = self._wpos - self._rpos
            bhs = self._pdu
            if bhs is None:
                if avail < BHS_LEN:
                    return
                rpos = self._rpos
                bhs = Bhs(view[rpos:rpos + BHS_LEN])
                if bhs.dsl > self._max_recv:
                    raise ProtocolError(
                        f"data segment of {bhs.dsl} bytes exceeds MaxRecvDataSegmentLength "
                        f"{self._max_recv}", header=bhs.raw)
                if self.phase is _IN_LOGIN and bhs.opcode != Op.LOGIN_REQUEST:
                    raise ProtocolError(f"opcode {bhs.opcode:#x} during login")
                hlen = BHS_LEN + bhs.ahs_len
                total = hlen + (DIGEST_LEN if self._hdigest else 0)
                if avail < total:
                    return
                if self._hdigest:
                    got = _DIGEST.unpack_from(view, rpos + hlen)[0]
                    if pdu.crc([view[rpos:rpos + hlen]]) != got:
                        raise ProtocolError("header digest error")
                self._ahs = bytes(view[rpos + BHS_LEN:rpos + hlen]) if bhs.ahs_len else b""
                self._rpos += total
                dsl = bhs.dsl
                if not dsl:
                    # No data segment, so no padding and no data digest (the data digest
                    # follows a data segment, RFC 7143 11.2's PDU layout): the PDU is whole,
                    # dispatched as the data step below would with its empty data.
                    self._dispatch(bhs, b"")
                    continue
                self._pdu = bhs
                self._got = 0
                self._tail = pdu.pad_len(dsl) + (DIGEST_LEN if self._ddigest else 0)
                self._dest = self._destination(bhs)
                continue
            dsl = bhs.dsl
            rpos = self._rpos
            if self._dest is not None:
                need = dsl - self._got
                if need:
                    n = min(need, avail)
                    if n:
                        self._dest[self._got:self._got + n] = view[rpos:rpos + n]
                        self._got += n
                        rpos += n
                        avail -= n
                        self._rpos = rpos
                    if self._got < dsl:
                        return
                if avail < self._tail:
                    return
                data: object = self._dest
            else:
                if avail < dsl + self._tail:
                    return
                data = bytes(view[rpos:rpos + dsl])
                rpos += dsl
            if self._ddigest and dsl:
                got = _DIGEST.unpack_from(view, rpos + self._tail - DIGEST_LEN)[0]
                padbytes = pdu.padding(dsl)
                if pdu.crc([data, padbytes]) != got:
                    self._rpos = rpos + self._tail
                    self._pdu = None
                    self._dest = None
                    raise ProtocolError("data digest error", RejectReason.DATA_DIGEST_ERROR,
                                        bhs.raw)
            self._rpos = rpos + self._tail
            self._pdu = None
            self._dest = None
            self._dispatch(bhs, data)

    def _destination(self, bhs: Bhs) -> memoryview | None:
        """Where the data segment of this PDU goes, when it is write data."""
        if self.phase is not _FULL_FEATURE:
            return None
        op = bhs.opcode
        if op == _DATA_OUT:
            return self._data_out_destination(bhs)
        if op == _SCSI_COMMAND:
            cmd = self._incoming = self._new_command(bhs)
            if cmd is not None and cmd.view is not None:
                return cmd.view[:bhs.dsl]
        return None

    # --- dispatch ----------------------------------------------------------------------

    def _dispatch(self, bhs: Bhs, data) -> None:
        """One whole PDU, by the request table (REQUESTS): its phases, discovery rule and
        ordering are checked here, then its handler runs now or in CmdSN order."""
        phase = self.phase
        op = bhs.opcode
        if op == _SCSI_COMMAND and phase is _FULL_FEATURE and not self._discovery:
            # The fast path of the common PDU: what the table would decide for it (full
            # feature phase, not a discovery session, CmdSN ordering) without reading it.
            cmd = self._incoming if bhs.dsl else self._new_command(bhs)
            self._incoming = None
            if cmd is None:
                return
            if bhs.immediate:
                self._start_command(cmd)
                return
            session = self.session
            cmdsn = cmd.cmdsn  # the PDU's, as _new_command read it
            if cmdsn == session.exp_cmdsn and not self._held:  # 4.2.2.1: next in order
                session.advance()
                self._start_command(cmd)
                return
            self._admit(bhs, data, cmd)
            return
        if phase is Phase.CLOSED:
            return
        req = REQUESTS.get(op)
        if req is None or phase not in req.phases:
            if phase is Phase.LOGIN:  # 6.1: only Login Requests until the login is over
                raise ProtocolError(f"opcode {op:#x} during login")
            if req is None:
                self._reject(bhs, RejectReason.COMMAND_NOT_SUPPORTED)
                return
            raise ProtocolError(f"{req.name} in full feature phase", header=bhs.raw)
        if self._discovery and req.discovery is not InDiscovery.ALLOWED:
            if req.discovery is InDiscovery.ENDS:
                raise ProtocolError(f"{req.name} in a discovery session", header=bhs.raw)
            self._reject(bhs, RejectReason.PROTOCOL_ERROR)
            return
        ordering = req.ordering
        if ordering is Ordering.NONE or (ordering is Ordering.CMDSN_UNLESS_REPLY
                                         and bhs.itt == RESERVED_TAG):
            req.handler(self, bhs, data, None)
            return
        cmd = None
        if op == Op.SCSI_COMMAND:
            cmd = self._incoming if bhs.dsl else self._new_command(bhs)
            self._incoming = None
            if cmd is None:
                return
        if bhs.immediate:
            req.handler(self, bhs, data, cmd)
        else:
            self._admit(bhs, data, cmd)

    def _admit(self, bhs: Bhs, data, cmd: TaskTransport | None) -> None:
        """CmdSN ordering (RFC 7143 4.2.2.1): a command beyond ExpCmdSN waits for the ones
        before it; a CmdSN outside the window, or one already received, is ignored."""
        session = self.session
        assert session is not None
        cmdsn = bhs.cmdsn
        if cmdsn != session.exp_cmdsn:
            if self._in_window(cmdsn) and cmdsn not in self._held:
                if type(data) is bytes and data:  # a copy held here (no command buffer)
                    if self.buffered + len(data) > self._max_buffered:
                        raise ProtocolError(
                            f"{len(data)} more bytes held out of CmdSN order would pass "
                            f"[limits] max_buffered_bytes ({self._max_buffered})",
                            header=bhs.raw)
                    self.buffered += len(data)
                self._held[cmdsn] = (bhs, data, cmd)
            else:
                log.info("%s: ignoring CmdSN %#x outside [%#x, %#x] or received already",
                         self.peer, cmdsn, session.exp_cmdsn, session.max_cmdsn)
                if cmd is not None:
                    self._forget(cmd)
            return
        if not self._held:  # the common case: nothing waits behind it
            session.advance()
            REQUESTS[bhs.opcode].handler(self, bhs, data, cmd)
            if not self._held:
                return
            entry = self._pop_held(session.exp_cmdsn)
            if entry is None:
                return
            self._advance(entry)
            return
        self._advance((bhs, data, cmd))

    def _advance(self, entry: tuple) -> None:
        """Execute the command at ExpCmdSN (`entry`, or _RECEIVED for a CmdSN that counts as
        received with nothing to run), then every held one that follows without a gap."""
        session = self.session
        while True:
            session.advance()
            if entry is not _RECEIVED:
                bhs, data, cmd = entry
                REQUESTS[bhs.opcode].handler(self, bhs, data, cmd)
            entry = self._pop_held(session.exp_cmdsn)
            if entry is None:
                return

    def _pop_held(self, cmdsn: int) -> tuple | None:
        """The PDU held for `cmdsn`, if any; its copied data leaves the bound."""
        entry = self._held.pop(cmdsn, None)
        if entry is not None and entry is not _RECEIVED:
            data = entry[1]
            if type(data) is bytes:
                self.buffered -= len(data)
        return entry

    def _in_window(self, cmdsn: int) -> bool:
        session = self.session
        return pdu.sn_le(session.exp_cmdsn, cmdsn) and pdu.sn_le(cmdsn, session.max_cmdsn)

    def _consider_received(self, cmdsn: int) -> None:
        """RFC 7143 11.5.1 b): an ABORT TASK named a CmdSN in the window that never arrived;
        it counts as received, so the commands waiting behind it are not held for good."""
        if cmdsn == self.session.exp_cmdsn:
            self._advance(_RECEIVED)
        elif cmdsn not in self._held:
            self._held[cmdsn] = _RECEIVED

    # --- the requests' handlers (REQUESTS): (bhs, data, transport state or None) --------

    def _scsi_command(self, bhs: Bhs, data, cmd: TaskTransport | None) -> None:
        assert cmd is not None
        self._start_command(cmd)

    def _data_out_pdu(self, bhs: Bhs, data, cmd: None) -> None:
        if not bhs.dsl:  # checked as one with data would be, when it had a destination
            self._data_out_destination(bhs)
        self._data_out(bhs)

    def _nop_out_pdu(self, bhs: Bhs, data, cmd: None) -> None:
        self._nop_out(bhs, data)

    def _task_management_pdu(self, bhs: Bhs, data, cmd: None) -> None:
        self._task_management(bhs)

    def _text_pdu(self, bhs: Bhs, data, cmd: None) -> None:
        self._text_request(bhs, data)

    def _logout_pdu(self, bhs: Bhs, data, cmd: None) -> None:
        self._logout(bhs)

    def _login_pdu(self, bhs: Bhs, data, cmd: None) -> None:
        self._login(bhs, data)

    def _snack_pdu(self, bhs: Bhs, data, cmd: None) -> None:
        """SNACK (11.16): no retransmission at ErrorRecoveryLevel 0; Rejected (11.17.1)."""
        self._reject(bhs, RejectReason.SNACK_REJECT)

    def _move(self, transition: Transition) -> None:
        self.phase = _TRANSITIONS[(self.phase, transition)]

    # --- login -------------------------------------------------------------------------

    def _login(self, bhs: Bhs, data) -> None:
        if bhs.opcode != Op.LOGIN_REQUEST:
            raise ProtocolError(f"opcode {bhs.opcode:#x} during login")
        if self.login is None:
            registry = self.portal.registry
            if self.max_sessions and bhs.tsih == 0 \
                    and len(registry.sessions) >= self.max_sessions:
                self._login_refused(bhs, f"{len(registry.sessions)} sessions, the most "
                                    f"[limits] max_sessions allows")
                return
            self.login = Login(self.portal, self.local_address)
        step = self.login.receive(bhs, bytes(data))
        self._out.extend(step.pdus)
        if step.outcome is LoginOutcome.FAILED:
            self.want_close = True
            self._move(Transition.LOGIN_FAILED)
        elif step.outcome is LoginOutcome.COMPLETE:
            self.enter_full_feature(step.session, self.login.stat_sn)
            # _parse holds the old scratch buffer's view: it is to start again from the
            # new one (buffer_updated), with the PDUs pipelined behind this one.
            raise _Reparse

    def _login_refused(self, bhs: Bhs, why: str) -> None:
        """A Login Response 03/02 OUT OF RESOURCES (11.13.5) to the first Login Request,
        and the connection ends (6.1: a failed login closes it)."""
        log.warning("%s: login refused 03/02 (out of resources): %s", self.peer, why)
        header = pdu.login_response(flags=((bhs.flags >> 2) & 3) << 2, dsl=0, isid=bhs.isid,
                                    tsih=bhs.tsih, itt=bhs.itt, statsn=bhs.exp_stat_sn,
                                    exp_cmdsn=bhs.cmdsn, max_cmdsn=bhs.cmdsn,
                                    status_class=OUT_OF_RESOURCES[0],
                                    status_detail=OUT_OF_RESOURCES[1])
        self._out.append(header)
        self.want_close = True
        self._move(Transition.LOGIN_FAILED)

    def _grow_scratch(self) -> None:
        """The scratch buffer for the negotiated MaxRecvDataSegmentLength, with the bytes
        not parsed yet (PDUs pipelined behind the last Login Request) moved over."""
        size = _scratch_size(self._max_recv)
        if size <= len(self._buf):
            return
        pending = self._view[self._rpos:self._wpos]
        buf = bytearray(size)
        buf[:len(pending)] = pending
        self._buf, self._view = buf, memoryview(buf)
        self._rpos, self._wpos = 0, len(pending)

    def enter_full_feature(self, session: Session, stat_sn: int) -> None:
        """Login is over: the session's parameters, digests and nexus take effect."""
        self.session = session
        session.connection = self
        self.params = p = session.params
        self.stat_sn = stat_sn
        self._move(Transition.LOGIN_COMPLETE)
        self._discovery = p.session_type == "Discovery"
        self._max_recv = p.target_max_recv_data_segment_length
        self._hdigest = p.header_digest
        self._ddigest = p.data_digest
        self._grow_scratch()
        if session.device is not None:
            self._max_write = max((lu.max_transfer_blocks * lu.block_size
                                   for lu in session.device.luns.values()), default=0)
            self.nexus = Nexus(
                initiator_port=f"{p.initiator_name},i,0x{p.isid:012x}",
                target_port=f"{p.target_name},t,0x{p.tpgt:04x}",
                initiator_name=p.initiator_name,
                target_name=p.target_name,
                isid=p.isid,
                tpgt=p.tpgt,
                relative_target_port=p.tpgt,
            )
            session.device.tmf.attach(self)  # its TmfEvents (target.scsi.tmf)
        log.info("%s: %s session %s -> %s (TSIH %d)", self.peer, p.session_type,
                 p.initiator_name, p.target_name or "-", p.tsih)

    # --- SCSI commands -----------------------------------------------------------------

    def _new_command(self, bhs: Bhs) -> TaskTransport | None:
        """Validate a SCSI Command PDU and set up its state; None when it is ignored."""
        session = self.session
        if session is None or session.device is None:
            raise ProtocolError("SCSI Command in a discovery session", header=bhs.raw)
        cmdsn = bhs.cmdsn
        if not bhs.immediate and (cmdsn - session.exp_cmdsn) & 0xFFFFFFFF >= session.window:
            return None  # outside [ExpCmdSN, MaxCmdSN]: silently ignored, data discarded
        if bhs.itt == RESERVED_TAG or bhs.itt in self._cmds:
            raise ProtocolError(f"Initiator Task Tag {bhs.itt:#x} is reserved or in use",
                                RejectReason.INVALID_PDU_FIELD, bhs.raw)
        flags = bhs.flags
        read = flags & F_READ != 0
        write = flags & F_WRITE != 0
        edtl = bhs.edtl
        p = self.params
        if bhs.dsl:
            if not write:
                raise ProtocolError("data segment on a command without the W bit",
                                    header=bhs.raw)
            if not p.immediate_data:
                raise ProtocolError("immediate data with ImmediateData=No", header=bhs.raw)
            if bhs.dsl > min(edtl, p.first_burst_length):
                raise ProtocolError("immediate data beyond FirstBurstLength or the EDTL",
                                    header=bhs.raw)
        cdb = bhs.raw[32:48]
        if self._ahs:
            cdb = self._extended_cdb(cdb, self._ahs, bhs.raw)
        lun = bhs.lun
        task = ScsiTask(self.nexus, lun[1] if lun == _LUN_PREFIX[lun[1]] else decode_lun(lun),
                        cdb, bhs.itt, flags & 7, None, edtl if read else 0)
        cmd = TaskTransport(task, bhs, cmdsn, edtl, read, write)
        task.transport = cmd
        if write and edtl:
            if edtl <= SMALL_WRITE:  # the common case: the CmdSN window bounds these
                cmd.view = memoryview(bytearray(edtl))
            elif not self._big_buffer(cmd, edtl):
                # Refused when its turn comes (_start_command: no buffer, its data dropped).
                self._cmds[bhs.itt] = cmd
                return cmd
            task.data_out = cmd.view
            cmd.received = bhs.dsl  # immediate data lands at offset 0
            # Unsolicited Data-Out follows only with InitialR2T=No and F=0 (11.3.1).
            unsolicited = 0 if p.initial_r2t or flags & F_FINAL else min(
                p.first_burst_length, edtl)
            cmd.unsol_end = max(unsolicited, bhs.dsl)
            cmd.unsol_next = bhs.dsl
            cmd.r2t_next = cmd.unsol_end
        elif read and edtl > SMALL_WRITE:
            # Data-In the target will hold until sent: counted as write buffers are, as
            # at most MAXIMUM TRANSFER LENGTH (an EDTL of 4 GiB for a 36-byte INQUIRY is
            # the initiator's room, not our data; a longer READ is refused by its LU).
            held = min(edtl, self._max_write)
            if self.buffered + held > self._max_buffered:
                cmd.aborted = cmd.refused = True  # answered in its turn (_start_command)
            else:
                self.buffered += held
                cmd.held = held
        elif write:
            task.data_out = memoryview(b"")
        self._cmds[bhs.itt] = cmd
        return cmd

    def _big_buffer(self, cmd: TaskTransport, edtl: int) -> bool:
        """The write buffer of a command over SMALL_WRITE, if it may have one: within
        MAXIMUM TRANSFER LENGTH and [limits] max_buffered_bytes (counted in `buffered`
        until the command is answered or forgotten). From BIG_BUFFER bytes an anonymous
        mapping, whose pages are committed only as data is received into them."""
        if edtl > self._max_write or self.buffered + edtl > self._max_buffered:
            return False
        self.buffered += edtl
        cmd.held = edtl
        cmd.buf = bytearray(edtl) if edtl < BIG_BUFFER else mmap.mmap(-1, edtl)
        cmd.view = memoryview(cmd.buf)
        return True

    @staticmethod
    def _extended_cdb(cdb: bytes, ahs: bytes, header: bytes) -> bytes:
        """CDBs over 16 bytes continue in an Extended CDB AHS, type 1 (11.3.1.2). An AHS
        whose AHSLength runs past TotalAHSLength is a format error (11.2.2): the
        connection ends (ProtocolError)."""
        pos = 0
        while pos + 3 <= len(ahs):
            length = int.from_bytes(ahs[pos:pos + 2], "big")
            if pos + 3 + length > len(ahs):
                raise ProtocolError(f"an AHS of length {length} at byte {pos} runs past "
                                    f"TotalAHSLength ({len(ahs)} bytes)", header=header)
            if ahs[pos + 2] == 1:
                return cdb + ahs[pos + 4:pos + 3 + length]
            pos += 3 + length + (-(3 + length) & 3)
        return cdb

    def _start_command(self, cmd: TaskTransport) -> None:
        cmd.admitted = True
        if cmd.aborted:
            if cmd.refused:  # a READ over the bound (_new_command)
                cmd.aborted = False
                self._refuse(cmd)
            return
        if cmd.write and cmd.received < cmd.edtl:
            if cmd.view is None:
                self._refuse(cmd)
                return
            self._send_r2ts(cmd)
            cmd.task.data_pending = True  # into the task set now; it runs once its data is in
        if not cmd.queued:  # onto the ready queue, for the shell's next TasksReady
            cmd.queued = True
            self.ready.append(cmd.task)

    def _refuse(self, cmd: TaskTransport) -> None:
        """A write that was given no buffer (_new_command), answered now, in its CmdSN
        turn: over MAXIMUM TRANSFER LENGTH, CHECK CONDITION (SBC-4 6.6.4); over the
        connection's buffer bound, TASK SET FULL (SAM-5 5.3)."""
        task = cmd.task
        if cmd.write and cmd.edtl > self._max_write:
            log.info("%s: ITT %#x: %d bytes of Data-Out exceed MAXIMUM TRANSFER LENGTH "
                     "(%d bytes); refused", self.peer, cmd.itt, cmd.edtl, self._max_write)
            self.session.device.fail(task, transfer_too_long(task.cdb))
        else:
            log.info("%s: ITT %#x: %d bytes of data held, %d more would pass [limits] "
                     "max_buffered_bytes; TASK SET FULL", self.peer, cmd.itt, self.buffered,
                     cmd.edtl)
            task.status = Status.TASK_SET_FULL
        task.out_length = None
        self.complete(task)

    def _send_r2ts(self, cmd: TaskTransport) -> None:
        """R2Ts (11.8) for what is not asked for yet, at most MaxBurstLength each and
        MaxOutstandingR2T at a time: first a gap an unsolicited burst left (ended early by
        its F bit), then onwards from r2t_next."""
        p = self.params
        session = self.session
        assert session is not None
        while cmd.outstanding < p.max_outstanding_r2t:
            gap = cmd.gap
            if gap is not None:
                offset = gap[0]
                length = min(p.max_burst_length, gap[1] - offset)
                cmd.gap = (offset + length, gap[1]) if offset + length < gap[1] else None
            elif cmd.r2t_next < cmd.edtl:
                offset = cmd.r2t_next
                length = min(p.max_burst_length, cmd.edtl - offset)
                cmd.r2t_next += length
            else:
                return
            ttt = self._next_ttt
            self._next_ttt = (ttt + 1) & 0x7FFFFFFF or 1
            self._r2ts[ttt] = R2T(ttt, cmd, offset, length)
            self._send(pdu.r2t(lun=cmd.lun_raw, itt=cmd.itt, ttt=ttt, statsn=self.stat_sn,
                               exp_cmdsn=session.exp_cmdsn, max_cmdsn=session.max_cmdsn,
                               r2tsn=cmd.r2tsn, buffer_offset=offset, desired_length=length))
            cmd.r2tsn += 1
            cmd.data_pdus += 1
            cmd.outstanding += 1

    def _data_out_destination(self, bhs: Bhs) -> memoryview | None:
        cmd = self._cmds.get(bhs.itt)
        if cmd is None or cmd.view is None:
            return None  # data for a task we no longer have (aborted): discarded (11.5.1)
        if cmd.received >= cmd.edtl:
            # All its data is in and the command is with the SCSI layer (perhaps being
            # written to the store right now): a Data-Out beyond it is the initiator's
            # error alone. Reject it and drop its data; the command is left alone and its
            # buffer is not touched.
            log.warning("%s: Data-Out for ITT %#x after all of its data; rejected",
                        self.peer, cmd.itt)
            self._reject(bhs, RejectReason.PROTOCOL_ERROR)
            self._stray = True
            return None
        offset = bhs.buffer_offset
        end = offset + bhs.dsl
        if bhs.ttt == RESERVED_TAG:
            if bhs.datasn != cmd.unsol_datasn:
                return self._fail_data(cmd, bhs, DATA_PHASE_ERROR, RejectReason.PROTOCOL_ERROR,
                                       f"unsolicited DataSN {bhs.datasn}, expected "
                                       f"{cmd.unsol_datasn}")
            if offset != cmd.unsol_next or end > cmd.unsol_end:
                return self._fail_data(cmd, bhs, DATA_OFFSET_ERROR,
                                       RejectReason.INVALID_PDU_FIELD,
                                       f"unsolicited data at {offset}+{bhs.dsl} outside "
                                       f"[{cmd.unsol_next}, {cmd.unsol_end})")
        else:
            r2t = self._r2ts.get(bhs.ttt)
            if r2t is None or r2t.cmd is not cmd:
                return self._fail_data(cmd, bhs, INVALID_TARGET_PORT_TRANSFER_TAG,
                                       RejectReason.INVALID_PDU_FIELD,
                                       f"unknown Target Transfer Tag {bhs.ttt:#x}")
            if bhs.datasn != r2t.datasn:
                return self._fail_data(cmd, bhs, DATA_PHASE_ERROR, RejectReason.PROTOCOL_ERROR,
                                       f"DataSN {bhs.datasn}, expected {r2t.datasn}")
            if offset != r2t.next_offset or end > r2t.end:
                return self._fail_data(cmd, bhs, DATA_OFFSET_ERROR,
                                       RejectReason.INVALID_PDU_FIELD,
                                       f"data at {offset}+{bhs.dsl} outside R2T "
                                       f"[{r2t.next_offset}, {r2t.end})")
        return cmd.view[offset:end]

    def _fail_data(self, cmd: TaskTransport, bhs: Bhs, code: Asc, reason: int, what: str) -> None:
        """A Data-Out out of sequence or out of range: Reject it (11.17) and end its command
        with CHECK CONDITION, ABORTED COMMAND (11.4.7.2); the session goes on. The rest of
        the command's data, if any arrives, is discarded as data for no task."""
        log.warning("%s: Data-Out for ITT %#x: %s; command aborted", self.peer, cmd.itt, what)
        self._reject(bhs, reason)
        self._forget(cmd)
        task = cmd.task
        self.session.device.fail(task, CheckCondition(SenseKey.ABORTED_COMMAND, code))
        task.out_length = None
        self.complete(task)
        cmd.aborted = True
        return None

    def _data_out(self, bhs: Bhs) -> None:
        cmd = self._cmds.get(bhs.itt)
        if cmd is None or cmd.view is None or self._stray:
            self._stray = False
            return
        n = bhs.dsl
        if bhs.ttt == RESERVED_TAG:
            cmd.unsol_next += n
            cmd.unsol_datasn += 1
            if bhs.flags & F_FINAL and cmd.unsol_next < cmd.unsol_end:
                # 11.7.1: F ends the unsolicited burst; what it did not carry is solicited.
                cmd.gap = (cmd.unsol_next, cmd.unsol_end)
                cmd.unsol_end = cmd.unsol_next
                if cmd.admitted:
                    self._send_r2ts(cmd)
        else:
            r2t = self._r2ts[bhs.ttt]
            r2t.next_offset += n
            r2t.datasn += 1
            if r2t.next_offset == r2t.end:
                del self._r2ts[r2t.ttt]
                cmd.outstanding -= 1
                if cmd.admitted:
                    self._send_r2ts(cmd)
        cmd.received += n
        if cmd.received >= cmd.edtl and cmd.admitted and not cmd.aborted:
            task = cmd.task
            if task.data_pending:
                task.data_pending = False
                if task not in self.ready:  # the shell has it: tell it the data is in
                    self.data_ready.append(task)

    def complete(self, task: ScsiTask, aborted_status: bool = False) -> None:
        """The SCSI layer is done with `task`: send its data and status (for an aborted
        command only with `aborted_status`: TASK ABORTED under TAS=1)."""
        cmd: TaskTransport = task.transport
        if cmd is None:  # its connection is gone (connection_lost)
            return
        task.transport = None  # no task <-> command cycle once it is answered
        if self._cmds.get(cmd.itt) is cmd:
            del self._cmds[cmd.itt]
        if cmd.held:  # its data is stored (or produced): the bytes leave the bound
            self.buffered -= cmd.held
            cmd.held = 0
        if cmd.outstanding:  # answered before its data (TASK SET FULL): no more Data-Out
            for ttt in [t for t, r in self._r2ts.items() if r.cmd is cmd]:
                del self._r2ts[ttt]
            cmd.outstanding = 0
        if (cmd.aborted and not aborted_status) or self.phase is not _FULL_FEATURE:
            return
        session = self.session
        status = task.status
        edtl = cmd.edtl
        data = task.data_in
        n = 0
        resid_flag = 0
        resid = 0
        if data is not None:
            n = data.nbytes if isinstance(data, memoryview) else len(data)
        if cmd.read or (n and not cmd.write):
            limit = edtl if cmd.read else 0
            if n > limit:
                resid_flag, resid, n = F_OVERFLOW, n - limit, limit
            elif n < limit:
                resid_flag, resid = F_UNDERFLOW, limit - n
        elif cmd.write or task.out_length:  # W=0 but the CDB wants Data-Out: overflow
            wanted = task.out_length if task.out_length is not None else edtl
            if wanted > edtl:
                resid_flag, resid = F_OVERFLOW, wanted - edtl
            elif wanted < edtl:
                resid_flag, resid = F_UNDERFLOW, edtl - wanted
        collapse = status == _GOOD and not task.sense
        if n:
            p = self.params
            if (collapse and type(data) is bytes and n <= p.max_recv_data_segment_length
                    and n <= p.max_burst_length and not self._hdigest and not self._ddigest):
                # One Data-In with the status (11.7.4): what _send_data_in's loops make of
                # a single segment in a single sequence, built directly.
                out = self._out
                out.append(pdu.data_in(flags=F_FINAL | F_STATUS | resid_flag, status=status,
                                       dsl=n, lun=cmd.lun_raw, itt=cmd.itt,
                                       statsn=self._next_stat_sn(),
                                       exp_cmdsn=session.exp_cmdsn,
                                       max_cmdsn=session.max_cmdsn, datasn=0,
                                       buffer_offset=0, residual=resid))
                out.append(data if n == len(data) else memoryview(data)[:n])
                if n & 3:
                    out.append(pdu.PAD[n & 3])
                cmd.data_pdus = 1
                return
            self._send_data_in(cmd, data, n, status if collapse else None, resid_flag, resid)
            if collapse:
                return
        sense = task.sense
        exp = session.exp_cmdsn
        if sense:
            self._send(pdu.scsi_response(flags=resid_flag, status=status, dsl=2 + len(sense),
                                         itt=cmd.itt, statsn=self._next_stat_sn(),
                                         exp_cmdsn=exp, max_cmdsn=session.max_cmdsn,
                                         exp_datasn=cmd.data_pdus, residual=resid),
                       _SENSE_LEN.pack(len(sense)) + sense)
        else:
            self._send(pdu.scsi_response(flags=resid_flag, status=status, dsl=0, itt=cmd.itt,
                                         statsn=self._next_stat_sn(), exp_cmdsn=exp,
                                         max_cmdsn=session.max_cmdsn,
                                         exp_datasn=cmd.data_pdus, residual=resid))

    def _send_data_in(self, cmd: TaskTransport, data, n: int, status: int | None,
                      resid_flag: int, resid: int) -> None:
        view = data if isinstance(data, memoryview) else memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        p = self.params
        session = self.session
        seg_max = p.max_recv_data_segment_length
        burst = p.max_burst_length
        datasn = 0
        out = self._out
        hd, dd = self._hdigest, self._ddigest
        data_in = pdu.data_in
        offset = 0
        while offset < n:
            burst_end = min(n, offset + burst)
            while offset < burst_end:
                seg = min(seg_max, burst_end - offset)
                end = offset + seg
                if end == n and status is not None:
                    hdr = data_in(flags=F_FINAL | F_STATUS | resid_flag, status=status,
                                  dsl=seg, lun=cmd.lun_raw, itt=cmd.itt,
                                  statsn=self._next_stat_sn(), exp_cmdsn=session.exp_cmdsn,
                                  max_cmdsn=session.max_cmdsn, datasn=datasn,
                                  buffer_offset=offset, residual=resid)
                else:
                    hdr = data_in(flags=F_FINAL if end == burst_end else 0, dsl=seg,
                                  lun=cmd.lun_raw, itt=cmd.itt, exp_cmdsn=session.exp_cmdsn,
                                  max_cmdsn=session.max_cmdsn, datasn=datasn,
                                  buffer_offset=offset)
                chunk = view[offset:end]
                out.append(hdr + pdu.digest(hdr) if hd else hdr)
                out.append(chunk)
                pad = pdu.padding(seg)
                if pad:
                    out.append(pad)
                if dd:
                    out.append(pdu.digest(chunk, pad))
                datasn += 1
                offset = end
        cmd.data_pdus = datasn

    # --- other requests ----------------------------------------------------------------

    def _nop_out(self, bhs: Bhs, data) -> None:
        """NOP-Out (11.18): a ping to answer, or the answer to our ping."""
        if bhs.itt == RESERVED_TAG:
            if bhs.ttt != RESERVED_TAG and bhs.ttt == self._ping_ttt:
                self._ping_ttt = None
            return
        session = self.session
        ping = bytes(data)[: self.params.max_recv_data_segment_length] if bhs.dsl else b""
        self._send(pdu.nop_in(dsl=len(ping), lun=bhs.lun, itt=bhs.itt, ttt=RESERVED_TAG,
                              statsn=self._next_stat_sn(), exp_cmdsn=session.exp_cmdsn,
                              max_cmdsn=session.max_cmdsn), ping)

    @property
    def quiescent(self) -> bool:
        """No command is outstanding: every one received has been answered (the shell
        may then wait for the initiator's next PDU by polling, target.shell.server)."""
        return not self._cmds and not self._held

    def ping(self) -> bool:
        """Send a NOP-In asking for a NOP-Out (11.19); False if the last one is unanswered."""
        if self.phase is not Phase.FULL_FEATURE or self.want_close:
            return True
        if self._ping_ttt is not None:
            return False
        session = self.session
        ttt = self._next_ttt
        self._next_ttt = (ttt + 1) & 0x7FFFFFFF or 1
        self._ping_ttt = ttt
        self._send(pdu.nop_in(itt=RESERVED_TAG, ttt=ttt, statsn=self.stat_sn,
                              exp_cmdsn=session.exp_cmdsn, max_cmdsn=session.max_cmdsn))
        return True

    def request_logout(self, seconds: int) -> None:
        """Async Message, AsyncEvent 1: the target asks for a Logout (11.9.1)."""
        if self.phase is not Phase.FULL_FEATURE or self.want_close:
            return
        session = self.session
        self._send(pdu.async_message(event=1, parameter3=seconds & 0xFFFF,  # Time2Wait
                                     statsn=self._next_stat_sn(), exp_cmdsn=session.exp_cmdsn,
                                     max_cmdsn=session.max_cmdsn))

    def _text_request(self, bhs: Bhs, data) -> None:
        if self._text is None:
            self._text = TextResponder(self.session, self.portal, self.local_address)
        session = self.session
        for flags, ttt, payload in self._text.receive(bhs, bytes(data)):
            self._send(pdu.text_response(flags=flags, dsl=len(payload), lun=bhs.lun,
                                         itt=bhs.itt, ttt=ttt, statsn=self._next_stat_sn(),
                                         exp_cmdsn=session.exp_cmdsn,
                                         max_cmdsn=session.max_cmdsn), payload)

    def _logout(self, bhs: Bhs) -> None:
        """Logout (11.14, 11.15): close the session or this connection; ERL 0 only."""
        reason = bhs.flags & 0x7F
        session = self.session
        if reason == 1 and bhs.cid != session.params.cid:
            response = 1  # 11.15.1: CID not found (MaxConnections=1: only this one)
        else:
            response = 0 if reason in (0, 1) else 2  # 2: connection recovery not supported
        self._send(pdu.logout_response(response=response, itt=bhs.itt,
                                       statsn=self._next_stat_sn(),
                                       exp_cmdsn=session.exp_cmdsn,
                                       max_cmdsn=session.max_cmdsn))
        if response == 0:
            self.want_close = True
            self._move(Transition.LOGOUT)
            self._end_session()

    def _task_management(self, bhs: Bhs) -> None:
        """Task Management Function Request (11.5): mapped to one call of the SCSI
        target's task manager (target.scsi.tmf), answered per 11.6.1. What the call does
        to this connection's tasks, and to other nexuses', comes back as TmfEvents
        (task_management_event); ABORT TASK's tag and RefCmdSN rules are iSCSI's, here."""
        function = bhs.flags & 0x7F
        lun = decode_lun(bhs.lun)
        device = self.session.device
        tmf = device.tmf
        nexus = self.nexus
        response = TmfResponse.COMPLETE
        outcome = None
        received = None  # a CmdSN that ABORT TASK makes count as received (11.5.1 b)
        faults = self.tmf_faults
        rejected = None
        if faults is not None and faults.rules:  # target.faults tmf-reject: not performed
            rejected = faults.match_tmf(function, lun, nexus.target_name if nexus else "",
                                        nexus.initiator_name if nexus else None)
        if rejected is not None:
            response = rejected
        elif function == TmfFunction.ABORT_TASK:
            cmd = self._cmds.get(bhs.referenced_task_tag)
            ref = bhs.ref_cmdsn
            if cmd is not None and not cmd.aborted:
                outcome = tmf.abort_task(nexus, cmd.task)  # 11.5.1 a)
            elif self._in_window(ref) and pdu.sn_lt(ref, bhs.cmdsn):
                # 11.5.1 b): never received (or received under another tag): Function
                # complete, and the CmdSN counts as received, after this response.
                received = ref
            else:
                # 11.5.1 c): completed, aborted already, or RefCmdSN outside the window.
                response = TmfResponse.TASK_DOES_NOT_EXIST
        elif function == TmfFunction.ABORT_TASK_SET:
            outcome = tmf.abort_task_set(nexus, lun)
        elif function == TmfFunction.CLEAR_TASK_SET:
            outcome = tmf.clear_task_set(nexus, lun)
        elif function == TmfFunction.LOGICAL_UNIT_RESET:
            outcome = tmf.lu_reset(nexus, lun)
        elif function == TmfFunction.TARGET_WARM_RESET:
            outcome = tmf.target_warm_reset(nexus)
        elif function == TmfFunction.TARGET_COLD_RESET:
            outcome = tmf.target_cold_reset(nexus)
        elif function == TmfFunction.I_T_NEXUS_RESET:
            outcome = tmf.i_t_nexus_reset(nexus)
        elif function == TmfFunction.QUERY_TASK:
            cmd = self._cmds.get(bhs.referenced_task_tag)
            if cmd is None or cmd.aborted:
                response = TmfResponse.TASK_DOES_NOT_EXIST
        elif function == TmfFunction.QUERY_TASK_SET:
            if lun not in device.luns:
                response = TmfResponse.LUN_DOES_NOT_EXIST
            elif not any(c.task.lun == lun for c in self._cmds.values()):
                response = TmfResponse.TASK_DOES_NOT_EXIST
        elif function == TmfFunction.TASK_REASSIGN:
            response = TmfResponse.REASSIGNMENT_NOT_SUPPORTED
        else:
            response = TmfResponse.NOT_SUPPORTED
        incorrect_lun = ServiceResponse.INCORRECT_LOGICAL_UNIT_NUMBER
        if outcome is not None and outcome.response is incorrect_lun:
            response = TmfResponse.LUN_DOES_NOT_EXIST
        session = self.session
        self._send(pdu.task_management_response(response=response, itt=bhs.itt,
                                                statsn=self._next_stat_sn(),
                                                exp_cmdsn=session.exp_cmdsn,
                                                max_cmdsn=session.max_cmdsn))
        if received is not None:
            self._consider_received(received)
        if outcome is not None and outcome.function is Function.TARGET_COLD_RESET:
            self.want_close = True  # after the response, every connection ends (11.5.1)

    # --- events from the task manager (target.scsi.tmf) --------------------------------

    def tasks(self, lun: int | None) -> list[ScsiTask]:
        """This nexus's tasks not yet answered, for one LUN or every LUN (TaskOwner): the
        held ones behind a CmdSN hole and those still in `ready` among them."""
        return [c.task for c in self._cmds.values() if lun is None or c.task.lun == lun]

    def task_management_event(self, event: TmfEvent) -> None:
        """The task manager aborted tasks of this nexus (TaskOwner). Each stays aborted
        (TaskTransport.aborted): one held behind a CmdSN hole is skipped when the hole
        closes.
        TASK_ABORTED ones (TAS=1, another nexus's function) get that status now; the
        others go unanswered. Another nexus's TARGET COLD RESET ends this connection."""
        for a in event.aborted:
            cmd: TaskTransport | None = a.task.transport
            if cmd is None:
                continue
            self._abort(cmd, in_taskset=False)
            if a.disposition is Disposition.TASK_ABORTED:
                self.complete(cmd.task, aborted_status=True)
        if event.taskset_changed:
            self._taskset_changed = True
        if event.cold_reset:
            self.close_for_reinstatement()
        elif event.aborted and not event.issuer and self._wakeup:
            self._wakeup()

    def _abort(self, cmd: TaskTransport, in_taskset: bool = True) -> None:
        cmd.aborted = True
        self._forget(cmd, in_taskset)

    def _forget(self, cmd: TaskTransport, in_taskset: bool = True) -> None:
        """Drop a command's transport state; with `in_taskset`, also take its task out of
        the LU's task set (the task manager has done that when it aborted the task)."""
        if self._cmds.get(cmd.itt) is cmd:
            del self._cmds[cmd.itt]
        if cmd.held:
            self.buffered -= cmd.held
            cmd.held = 0
        for ttt in [t for t, r in self._r2ts.items() if r.cmd is cmd]:
            del self._r2ts[ttt]
        if cmd.queued:
            if cmd.task in self.data_ready:
                self.data_ready.remove(cmd.task)
            try:
                self.ready.remove(cmd.task)
            except ValueError:  # handed to the LU's task set already
                session = self.session
                if in_taskset and session is not None and session.device is not None \
                        and session.device.tmf.release(cmd.task):
                    self._taskset_changed = True

    # --- errors, closing ---------------------------------------------------------------

    def _reject(self, bhs: Bhs, reason: int) -> None:
        """Reject (11.17): the offending header goes back as the data segment."""
        session = self.session
        exp = session.exp_cmdsn if session else 0
        mx = session.max_cmdsn if session else 0
        self._send(pdu.reject(reason=reason, statsn=self._next_stat_sn(), exp_cmdsn=exp,
                              max_cmdsn=mx), bhs.raw)

    def _protocol_error(self, exc: ProtocolError) -> None:
        log.warning("%s: %s; closing the connection", self.peer or "connection", exc)
        if exc.header is not None and self.phase is Phase.FULL_FEATURE:
            self._reject(Bhs(exc.header), exc.reason)
        self.want_close = True

    def close_for_reinstatement(self) -> None:
        """Another login reinstated this session, or a cold reset: end the connection."""
        self.want_close = True
        self._end_session()
        if self._wakeup:
            self._wakeup()

    def connection_lost(self) -> None:
        """The transport is gone (peer closed, error, or we closed it). Nothing it held is
        kept in a reference cycle (task <-> command, session <-> connection), so its
        buffers go with the last reference, not at a later full garbage collection."""
        self._move(Transition.TRANSPORT_LOST)
        self.want_close = True
        cmds = list(self._cmds.values())
        for cmd in cmds:
            self._abort(cmd)
        for cmd in cmds:
            cmd.task.transport = None
        self._r2ts.clear()
        for entry in self._held.values():
            if entry is not _RECEIVED and type(entry[1]) is bytes:
                self.buffered -= len(entry[1])
        self._held.clear()
        self._end_session()
        if self.session is not None and self.session.connection is self:
            self.session.connection = None
        self._wakeup = None  # no cycle shell <-> connection keeps a dead link alive

    def _end_session(self) -> None:
        session = self.session
        if session is None or session.closed:
            return
        session.closed = True
        self.portal.registry.remove(session)
        if session.device is not None and self.nexus is not None:
            session.device.tmf.detach(self)
            session.device.nexus_lost(self.nexus)

    # --- output ------------------------------------------------------------------------

    def _next_stat_sn(self) -> int:
        sn = self.stat_sn
        self.stat_sn = (sn + 1) & 0xFFFFFFFF
        return sn

    def _send(self, header: bytes, data: bytes | memoryview = b"") -> None:
        out = self._out
        out.append(header + pdu.digest(header) if self._hdigest else header)
        if data:
            out.append(data)
            pad = pdu.padding(len(data))
            if pad:
                out.append(pad)
            if self._ddigest:
                out.append(pdu.digest(data, pad))

    def next_event(self) -> Event | None:
        """The next thing the shell is to do (target.iscsi.events), or None. TasksReady
        comes back until the shell has emptied its queues; the others are given once."""
        if self.ready or self.data_ready:
            return self._tasks_ready
        if self._taskset_changed:
            self._taskset_changed = False
            return TASKSET_CHANGED
        if self.want_close and not self._close_told:
            self._close_told = True
            return CLOSE_WANTED
        return None

    def data_to_send(self) -> list | tuple:
        """The buffers to send, in order (bytes and memoryviews, for sendmsg()); the caller
        owns a non-empty list; () when there is nothing."""
        out = self._out
        if not out:
            return ()
        self._out = []
        return out

    @property
    def has_output(self) -> bool:
        """Output is waiting (for tests that model a peer slow to read)."""
        return bool(self._out)



def _scratch_size(max_recv: int) -> int:
    """The receive scratch buffer: two of the largest PDUs (data segment, BHS and AHS
    room, digests), so that one is parsed while the next arrives."""
    return 2 * (max(max_recv, LOGIN_MAX_RECV) + 4096)


class _Reparse(Exception):
    """Raised out of _parse when the login is over (a new scratch buffer is in place)."""


class Request:
    """One row of the request table: an initiator opcode (RFC 7143 10.2.1.2), its handler
    (a Connection method taking the BHS, the data segment and the transport state of a
    SCSI command), the phases it is allowed in, what a discovery session does with it,
    and how it meets CmdSN ordering. As aioquic's frame handlers are kept."""

    __slots__ = ("opcode", "name", "handler", "phases", "discovery", "ordering")

    def __init__(self, opcode: Op, name: str,
                 handler: Callable[[Connection, Bhs, object, TaskTransport | None], None],
                 phases: frozenset[Phase], discovery: InDiscovery,
                 ordering: Ordering) -> None:
        self.opcode = opcode
        self.name = name
        self.handler = handler
        self.phases = phases
        self.discovery = discovery
        self.ordering = ordering


_FFP = frozenset({Phase.FULL_FEATURE})
_LOGIN = frozenset({Phase.LOGIN})

# Initiator opcodes (10.2.1.2). Not here: target opcodes and reserved ones, Rejected as
# COMMAND_NOT_SUPPORTED in full feature phase (11.17.1). A Data-Out in a discovery
# session is handled as data for no task (there are none) and discarded.
REQUESTS: dict[int, Request] = {r.opcode: r for r in (
    Request(Op.NOP_OUT, "NOP-Out", Connection._nop_out_pdu, _FFP,
            InDiscovery.ALLOWED, Ordering.CMDSN_UNLESS_REPLY),  # 11.18
    Request(Op.SCSI_COMMAND, "SCSI Command", Connection._scsi_command, _FFP,
            InDiscovery.ENDS, Ordering.CMDSN),  # 11.3
    Request(Op.TASK_MGMT_REQUEST, "Task Management Function Request",
            Connection._task_management_pdu, _FFP, InDiscovery.REJECTED,
            Ordering.CMDSN),  # 11.5
    Request(Op.LOGIN_REQUEST, "Login Request", Connection._login_pdu, _LOGIN,
            InDiscovery.ALLOWED, Ordering.NONE),  # 11.12; CmdSN is login's own (6)
    Request(Op.TEXT_REQUEST, "Text Request", Connection._text_pdu, _FFP,
            InDiscovery.ALLOWED, Ordering.CMDSN),  # 11.10
    Request(Op.DATA_OUT, "SCSI Data-Out", Connection._data_out_pdu, _FFP,
            InDiscovery.ALLOWED, Ordering.NONE),  # 11.7
    Request(Op.LOGOUT_REQUEST, "Logout Request", Connection._logout_pdu, _FFP,
            InDiscovery.ALLOWED, Ordering.CMDSN),  # 11.14
    Request(Op.SNACK_REQUEST, "SNACK Request", Connection._snack_pdu, _FFP,
            InDiscovery.ALLOWED, Ordering.NONE),  # 11.16: its handler Rejects it anyway
)}
assert set(REQUESTS) == pdu.INITIATOR_OPCODES
