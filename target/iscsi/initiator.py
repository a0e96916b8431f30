"""The initiator side of one iSCSI connection as a sans-IO object (RFC 7143): requests in,
bytes out; bytes in, events out. The blocking shell is target.shell.initiator.

Rules:
- No socket, no clock, no blocking, as h11's Connection: the caller asks for a request
  (login(), command(), nop(), task_management(), logout(), text()), sends what
  data_to_send() hands back, feeds what it receives, and reads next_event() until None.
- Receiving follows asyncio.BufferedProtocol: get_buffer() offers exactly the rest of the
  piece of the PDU being received (BHS, AHS, header digest, data segment, padding), never
  more, so the caller can recv_into() it without copying and never reads past the PDU
  (a caller that also reads its socket directly stays in step). The data of a Data-In of
  a command is received straight into the command's buffer at its Buffer Offset (11.7.4).
  receive_data(bytes) is the same through a copy, for tests.
- StatSN: ExpStatSN becomes StatSN + 1 of every PDU that carries status (SCSI Response,
  Data-In with S, NOP-In, TMF/Logout/Text/Login Response, Reject) with a real ITT (and of
  every Reject); an R2T or an unsolicited NOP-In does not advance it (11.8.2, 11.19).
- Login goes straight to the operational stage with AuthMethod-free keys (6.3: the
  security stage may be skipped when the target requires no authentication), offering
  ImmediateData=Yes and InitialR2T=Yes; what the target answers is what is used: header
  digests (13.1) start with the first PDU after the final Login Response.
- With CHAP (login(chap=chap.InitiatorChap)), login starts in the security stage
  (12.1.3): AuthMethod=CHAP, then CHAP_A with our list, then CHAP_N and CHAP_R (RFC 1994
  4.1, chap.response) and, for mutual CHAP, our CHAP_I and a fresh CHAP_C of 16+ random
  bytes; each request asks to move to stage 1 (T=1), which the target grants when it is
  done. The target's CHAP_A must be one we offered, and its mutual CHAP_N and CHAP_R must
  verify (and not be the response our own secret gives, RFC 7143 9.2.1), else the login
  ends with InitiatorError. Then the operational keys go as without CHAP. `chap_hook`,
  for tests, may rewrite our CHAP keys before they are sent (target's keys, ours -> ours).
- Write data goes as immediate data up to FirstBurstLength and the target's
  MaxRecvDataSegmentLength (13.12, 13.14), then as Data-Out PDUs answering each R2T,
  which the object sends itself for the commands it tracks: DataSN from 0 per R2T, F on
  the last, Target Transfer Tag of the R2T (11.7, 11.8).
- Read data is collected from Data-In PDUs at their buffer offsets; status comes from the
  Data-In with S (phase collapse, 11.7.4) or the SCSI Response, sense from its data
  segment after its 2-byte SenseLength (11.4.7); residuals from 11.4.5.
- A PDU that belongs to no request being tracked (an unsolicited NOP-In, a response to a
  PDU the caller framed itself with send_pdu(), anything after forget()) is handed over as
  it is, in PduReceived: the caller decides. A Reject (11.17) of a tracked request ends it
  with Rejected (the rejected header's ITT is in its data segment).
- A protocol error of the target (a header digest mismatch, a PDU other than a Login
  Response during login, a PDU of a tracked command of the wrong kind) is raised as
  InitiatorError by next_event() at its place in the event order; nothing after it is
  parsed.
"""

from __future__ import annotations

import hmac
import secrets
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from target.iscsi import chap as chapmod
from target.iscsi import pdu
from target.iscsi.pdu import BHS_LEN, DIGEST_LEN, RESERVED_TAG, Bhs, Op
from target.scsi.task import encode_lun

_STATUS_OPCODES = frozenset({Op.SCSI_RESPONSE, Op.NOP_IN, Op.TASK_MGMT_RESPONSE,
                             Op.LOGOUT_RESPONSE, Op.TEXT_RESPONSE, Op.REJECT, Op.LOGIN_RESPONSE})
_SENSE_LENGTH = struct.Struct(">H")
_FULL_FEATURE = 3  # the NSG/CSG code of the full feature phase (11.12.3)
_LOGIN_MAX_DATA = 8192  # MaxRecvDataSegmentLength during login (13.12)


class InitiatorError(Exception):
    """The target broke the protocol, refused the login, or went away."""


@dataclass
class Result:
    status: int
    data: bytes = b""
    sense: bytes = b""
    residual: int = 0
    overflow: bool = False
    underflow: bool = False


# --- events (what next_event() returns) ---------------------------------------------------

@dataclass(slots=True)
class PduReceived:
    """A PDU no tracked request waits for, as received (data without padding or digest)."""
    bhs: Bhs
    data: bytes


@dataclass(slots=True)
class LoginComplete:
    """The final Login Response (T=1, NSG=3) arrived: the target's keys of every response."""
    itt: int
    keys: dict[str, str]


@dataclass(slots=True)
class LoginFailed:
    """A Login Response with a non-zero Status-Class/Status-Detail (11.13.5)."""
    itt: int
    status: int


@dataclass(slots=True)
class CommandDone:
    itt: int
    result: Result


@dataclass(slots=True)
class Rejected:
    """A Reject (11.17) naming a tracked request's PDU."""
    itt: int
    reason: int


@dataclass(slots=True)
class NopIn:
    """The NOP-In answering a NOP-Out of nop() (11.19)."""
    itt: int
    data: bytes


@dataclass(slots=True)
class TaskManagementDone:
    itt: int
    response: int  # 11.6.1


@dataclass(slots=True)
class LogoutDone:
    itt: int
    response: int  # 11.15.1


@dataclass(slots=True)
class TextDone:
    """The last Text Response (F=1) of a text() exchange: its key=value pairs in order."""
    itt: int
    pairs: list[tuple[str, str]]


Event = (PduReceived | LoginComplete | LoginFailed | CommandDone | Rejected | NopIn
         | TaskManagementDone | LogoutDone | TextDone)


def _pairs(data: bytes) -> list[tuple[str, str]]:
    out = []
    for item in data.split(b"\0"):
        if b"=" in item:
            k, v = item.decode().split("=", 1)
            out.append((k, v))
    return out


@dataclass(eq=False)
class _Command:
    data: bytes | memoryview  # write data
    buf: bytearray  # read data, at buffer offsets
    received: int = 0


ChapHook = Callable[[dict[str, str], dict[str, str]], dict[str, str]]


@dataclass(eq=False)
class _Login:
    isid: int
    tsih: int
    flags: int
    keys: dict[str, str] = field(default_factory=dict)
    chap: chapmod.InitiatorChap | None = None
    chap_hook: ChapHook | None = None
    phase: str = "operational"  # security stage: "method", "challenge", "response"
    operational: bytes = b""  # the operational-stage text, sent after the security stage
    algorithm: int = 0
    identifier: int = 0  # ours, for mutual CHAP
    challenge: bytes = b""
    sent: dict[str, str] = field(default_factory=dict)  # our last CHAP keys
    pending: bytes = b""  # the rest of a text longer than one PDU (C=1 pieces)


@dataclass(eq=False)
class _Text:
    data: bytearray = field(default_factory=bytearray)


class InitiatorConnection:
    """The protocol state of one connection of an initiator (one session, one connection)."""

    def __init__(self) -> None:
        self.cmdsn = 1
        self.exp_stat_sn = 0
        self.itt = 1  # the next Initiator Task Tag
        self.tsih = 0
        self.header_digest = False  # in use: negotiated, login over
        self.max_send = 8192  # the target's MaxRecvDataSegmentLength (13.12)
        self.first_burst = 65536
        self.immediate_data = True
        self._out: list[bytes | memoryview] = []
        self._events: deque[Event | InitiatorError] = deque()
        self._requests: dict[int, object] = {}  # ITT -> what is waited for
        self._login_itt: int | None = None
        self._broken = False
        # receive side: the PDU being received and the piece of it being filled
        self._scratch = bytearray(BHS_LEN)
        self._piece = memoryview(self._scratch)
        self._filled = 0
        self._bhs: Bhs | None = None
        self._pieces: deque[tuple[str, memoryview]] = deque()
        self._what = "bhs"
        self._digest = b""
        self._data: memoryview | None = None
        self._direct: _Command | None = None

    # --- output ------------------------------------------------------------------------

    def next_itt(self) -> int:
        itt = self.itt
        self.itt = (itt + 1) & 0x7FFFFFFF or 1
        return itt

    def send_pdu(self, header: bytes, data: bytes | memoryview = b"") -> None:
        """Queue one PDU the caller framed (BHS, no AHS): digest and padding are added."""
        self._out.append(header + pdu.digest(header) if self.header_digest else header)
        if data:
            self._out.append(data)
            if pad := pdu.pad_len(len(data)):
                self._out.append(bytes(pad))

    def data_to_send(self) -> list[bytes | memoryview]:
        """The buffers to send, in order; the queue is empty afterwards."""
        out, self._out = self._out, []
        return out

    def forget(self, itt: int) -> None:
        """Stop tracking a request (the caller gave up on it): its PDUs come as PduReceived."""
        self._requests.pop(itt, None)
        if self._login_itt == itt:
            self._login_itt = None

    # --- requests ----------------------------------------------------------------------

    def login(self, *, initiator_name: str, target_name: str, isid: int,
              session_type: str = "Normal", header_digest: bool = False,
              params: dict[str, str] | None = None, chap: chapmod.InitiatorChap | None = None,
              chap_hook: ChapHook | None = None) -> int:
        """The first Login Request: operational stage to full feature phase (6.3), or
        with `chap` the security stage first (12.1.3)."""
        keys = {"InitiatorName": initiator_name, "SessionType": session_type,
                "HeaderDigest": "CRC32C" if header_digest else "None",
                "DataDigest": "None", "MaxRecvDataSegmentLength": "262144",
                "ImmediateData": "Yes", "InitialR2T": "Yes", "MaxBurstLength": "1048576",
                "FirstBurstLength": "262144", "DefaultTime2Wait": "0",
                "DefaultTime2Retain": "0", "ErrorRecoveryLevel": "0", **(params or {})}
        if session_type == "Normal":
            keys["TargetName"] = target_name
        itt = self.next_itt()
        if chap is None:
            text = _text(keys)
            # T, CSG 1, NSG 3
            login = _Login(isid, self.tsih, pdu.LOGIN_TRANSIT | 1 << 2 | _FULL_FEATURE)
        else:
            first = {k: keys.pop(k) for k in ("InitiatorName", "SessionType", "TargetName")
                     if k in keys}
            first["AuthMethod"] = chap.auth_method
            text = _text(first)
            # T, CSG 0, NSG 1: the target answers T=0 until CHAP is done
            login = _Login(isid, self.tsih, pdu.LOGIN_TRANSIT | 1, chap=chap,
                           chap_hook=chap_hook, phase="method", operational=_text(keys))
        self._requests[itt] = login
        self._login_itt = itt
        self._login_request(itt, login, text)
        return itt

    def _login_request(self, itt: int, login: _Login, text: bytes = b"") -> None:
        """A Login Request; a text over 8192 bytes (the login-phase
        MaxRecvDataSegmentLength, 13.12) goes in pieces with C=1 and T=0 (11.12.2)."""
        flags = login.flags
        if len(text) > _LOGIN_MAX_DATA:
            text, login.pending = text[:_LOGIN_MAX_DATA], text[_LOGIN_MAX_DATA:]
            flags = pdu.F_CONTINUE | flags & 0x0C
        self.send_pdu(pdu.login_request(flags=flags, dsl=len(text), isid=login.isid,
                                        tsih=login.tsih, itt=itt, cmdsn=self.cmdsn,
                                        exp_statsn=self.exp_stat_sn), text)

    def command(self, cdb: bytes, *, lun: int = 0, read: int = 0,
                data: bytes | memoryview = b"", attr: int = 1, immediate: bool = False) -> int:
        """A SCSI Command (11.3): `read` bytes expected in, `data` sent out; returns its ITT."""
        itt = self.next_itt()
        edtl = read if read else len(data)
        flags = pdu.F_FINAL | (pdu.F_READ if read else 0) | (pdu.F_WRITE if data else 0) | attr
        imm = data[: min(self.first_burst, self.max_send)] if data and self.immediate_data \
            else b""
        header = pdu.scsi_command(immediate=immediate, flags=flags, dsl=len(imm),
                                  lun=encode_lun(lun), itt=itt, edtl=edtl, cmdsn=self.cmdsn,
                                  exp_statsn=self.exp_stat_sn, cdb=cdb)
        if not immediate:
            self.cmdsn = (self.cmdsn + 1) & 0xFFFFFFFF
        self._requests[itt] = _Command(data, bytearray(read))
        self.send_pdu(header, imm)
        return itt

    def answer_r2t(self, r2t: Bhs, data: bytes | memoryview) -> None:
        """The Data-Out PDUs one R2T asks for (11.7, 11.8): DataSN from 0, F on the last."""
        offset = r2t.buffer_offset
        end = offset + r2t.desired_length
        datasn = 0
        while offset < end:
            n = min(self.max_send, end - offset)
            self.send_pdu(pdu.data_out(final=offset + n == end, dsl=n, lun=r2t.lun,
                                       itt=r2t.itt, ttt=r2t.ttt, exp_statsn=self.exp_stat_sn,
                                       datasn=datasn, buffer_offset=offset),
                          data[offset:offset + n])
            datasn += 1
            offset += n

    def nop_reply(self, nop_in: Bhs) -> None:
        """The NOP-Out a target's ping (NOP-In, TTT not reserved) asks for (11.18.3)."""
        self.send_pdu(pdu.nop_out(immediate=True, itt=RESERVED_TAG, ttt=nop_in.ttt,
                                  cmdsn=self.cmdsn, exp_statsn=self.exp_stat_sn))

    def nop(self, payload: bytes = b"") -> int:
        """A NOP-Out ping (11.18) the target answers with a NOP-In of the same ITT."""
        itt = self.next_itt()
        self._requests[itt] = NopIn
        self.send_pdu(pdu.nop_out(immediate=True, dsl=len(payload), itt=itt, cmdsn=self.cmdsn,
                                  exp_statsn=self.exp_stat_sn), payload)
        return itt

    def task_management(self, function: int, *, lun: int = 0, ref_itt: int = RESERVED_TAG,
                        ref_cmdsn: int = 0) -> int:
        """A Task Management Function Request (11.5), immediate."""
        itt = self.next_itt()
        self._requests[itt] = TaskManagementDone
        self.send_pdu(pdu.task_management_request(
            immediate=True, function=function, lun=encode_lun(lun), itt=itt,
            referenced_task_tag=ref_itt, cmdsn=self.cmdsn, exp_statsn=self.exp_stat_sn,
            ref_cmdsn=ref_cmdsn))
        return itt

    def logout(self, reason: int = 0) -> int:
        """A Logout Request (11.14), immediate; reason 0 closes the session."""
        itt = self.next_itt()
        self._requests[itt] = LogoutDone
        self.send_pdu(pdu.logout_request(immediate=True, reason=reason, itt=itt,
                                         cmdsn=self.cmdsn, exp_statsn=self.exp_stat_sn))
        return itt

    def text(self, pairs: dict[str, str]) -> int:
        """A Text Request (11.10), e.g. SendTargets=All; continued while the target's
        responses have F=0 (11.11.2: an empty request with the response's TTT)."""
        itt = self.next_itt()
        self._requests[itt] = _Text()
        body = "".join(f"{k}={v}\0" for k, v in pairs.items()).encode()
        self._text_request(itt, RESERVED_TAG, body)
        return itt

    def _text_request(self, itt: int, ttt: int, body: bytes = b"") -> None:
        self.send_pdu(pdu.text_request(immediate=True, dsl=len(body), itt=itt, ttt=ttt,
                                       cmdsn=self.cmdsn, exp_statsn=self.exp_stat_sn), body)

    # --- input -------------------------------------------------------------------------

    def get_buffer(self) -> memoryview:
        """Where the next received bytes go: the rest of the piece being received."""
        return self._piece[self._filled:]

    def buffer_updated(self, nbytes: int) -> None:
        """`nbytes` were written at the start of the last get_buffer()."""
        if self._broken:
            return
        self._filled += nbytes
        while self._filled == len(self._piece) and not self._broken:
            self._piece_done()

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes through a copy (tests; a shell that has bytes already)."""
        view = memoryview(data)
        while view and not self._broken:
            buf = self.get_buffer()
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            view = view[n:]
            self.buffer_updated(n)

    def next_event(self) -> Event | None:
        """The next event, None when more bytes are needed; raises InitiatorError at a
        protocol error of the target."""
        if not self._events:
            return None
        event = self._events.popleft()
        if isinstance(event, InitiatorError):
            raise event
        return event

    def _expect(self, what: str, view: memoryview) -> None:
        self._what, self._piece, self._filled = what, view, 0

    def _piece_done(self) -> None:
        what = self._what
        if what == "bhs":
            bhs = self._bhs = Bhs(self._scratch)
            pieces = self._pieces
            if bhs.ahs_len:
                pieces.append(("ahs", memoryview(bytearray(bhs.ahs_len))))
            if self.header_digest:
                pieces.append(("hdigest", memoryview(bytearray(DIGEST_LEN))))
            self._data = None
            if bhs.dsl:
                pieces.append(("data", self._data_destination(bhs)))
                if pad := pdu.pad_len(bhs.dsl):
                    pieces.append(("pad", memoryview(bytearray(pad))))
        elif what == "hdigest":
            if bytes(self._piece) != pdu.digest(self._bhs.raw):
                self._fail("header digest mismatch from the target")
                return
        elif what == "data":
            self._data = self._piece
        if self._pieces:
            self._expect(*self._pieces.popleft())
            return
        bhs, data = self._bhs, self._data
        self._scratch = bytearray(BHS_LEN)
        self._expect("bhs", memoryview(self._scratch))
        self._received(bhs, data)

    def _data_destination(self, bhs: Bhs) -> memoryview:
        """A Data-In of a tracked command lands in its buffer at its offset (no copy)."""
        self._direct = None
        if bhs.opcode == Op.DATA_IN:
            cmd = self._requests.get(bhs.itt)
            off = bhs.buffer_offset
            if type(cmd) is _Command and off + bhs.dsl <= len(cmd.buf):
                self._direct = cmd
                return memoryview(cmd.buf)[off:off + bhs.dsl]
        return memoryview(bytearray(bhs.dsl))

    def _fail(self, message: str) -> None:
        self._broken = True
        self._events.append(InitiatorError(message))

    def _received(self, bhs: Bhs, data: memoryview | None) -> None:
        op = bhs.opcode
        if ((op in _STATUS_OPCODES or (op == Op.DATA_IN and bhs.flags & pdu.F_STATUS))
                and (bhs.itt != RESERVED_TAG or op == Op.REJECT)):
            self.exp_stat_sn = (bhs.statsn + 1) & 0xFFFFFFFF
        if self._login_itt is not None and op != Op.LOGIN_RESPONSE:
            self._fail(f"expected a Login Response, got {bhs!r}")
            return
        itt = bhs.itt
        if op == Op.REJECT and data is not None and len(data) >= BHS_LEN:
            itt = pdu.u32(data, 16)  # the rejected PDU's ITT
            if itt in self._requests:
                self.forget(itt)
                self._events.append(Rejected(itt, bhs.b2))
                return
        request = self._requests.get(itt)
        if request is None or op == Op.REJECT:
            self._events.append(PduReceived(bhs, b"" if data is None else bytes(data)))
            return
        if type(request) is _Command:
            self._command_pdu(bhs, data, request)
        elif type(request) is _Login and op == Op.LOGIN_RESPONSE:
            self._login_response(bhs, data, request)
        elif request is NopIn and op == Op.NOP_IN:
            self.forget(itt)
            self._events.append(NopIn(itt, b"" if data is None else bytes(data)))
        elif request is TaskManagementDone and op == Op.TASK_MGMT_RESPONSE:
            self.forget(itt)
            self._events.append(TaskManagementDone(itt, bhs.b2))
        elif request is LogoutDone and op == Op.LOGOUT_RESPONSE:
            self.forget(itt)
            self._events.append(LogoutDone(itt, bhs.b2))
        elif type(request) is _Text and op == Op.TEXT_RESPONSE:
            if data is not None:
                request.data += data
            if bhs.flags & pdu.F_FINAL:
                self.forget(itt)
                self._events.append(TextDone(itt, _pairs(bytes(request.data))))
            else:
                self._text_request(itt, bhs.ttt)
        else:
            self._fail(f"unexpected {bhs!r}")

    def _command_pdu(self, bhs: Bhs, data: memoryview | None, cmd: _Command) -> None:
        op = bhs.opcode
        if op == Op.R2T:
            self.answer_r2t(bhs, cmd.data)
            return
        if op == Op.DATA_IN:
            if data is not None:
                off = bhs.buffer_offset
                if self._direct is not cmd:  # beyond the buffer: it grows, as asked
                    cmd.buf[off:off + len(data)] = data
                cmd.received = max(cmd.received, off + len(data))
            self._direct = None
            if bhs.flags & pdu.F_STATUS:
                self._done(bhs, cmd, b"")
            return
        if op == Op.SCSI_RESPONSE:
            sense = b""
            if data is not None and len(data) >= 2:
                n = _SENSE_LENGTH.unpack_from(data)[0]
                sense = bytes(data[2:2 + n])
            self._done(bhs, cmd, sense)
            return
        self._fail(f"unexpected {bhs!r}")

    def _done(self, bhs: Bhs, cmd: _Command, sense: bytes) -> None:
        self.forget(bhs.itt)
        self._events.append(CommandDone(bhs.itt, Result(
            bhs.b3, bytes(cmd.buf[:cmd.received]), sense, bhs.residual_count,
            bool(bhs.flags & pdu.F_OVERFLOW), bool(bhs.flags & pdu.F_UNDERFLOW))))

    def _login_response(self, bhs: Bhs, data: memoryview | None, login: _Login) -> None:
        itt = bhs.itt
        status = bhs.status_class << 8 | bhs.status_detail  # 11.13.5
        if status:
            self.forget(itt)
            self._events.append(LoginFailed(itt, status))
            return
        if login.pending:  # the target took a C=1 piece: the next one
            text, login.pending = login.pending, b""
            self._login_request(itt, login, text)
            return
        pairs = _pairs(bytes(data)) if data is not None else []
        login.keys.update(pairs)
        if login.phase != "operational":
            if bhs.flags & pdu.F_CONTINUE:
                self._login_request(itt, login)  # the rest of the target's text
                return
            self._security_response(bhs, dict(pairs), login, itt)
            return
        if not (bhs.flags & pdu.LOGIN_TRANSIT and bhs.flags & 3 == _FULL_FEATURE):
            self._login_request(itt, login)  # the target is not done: go on (11.12.2)
            return
        self.forget(itt)
        answer = login.keys
        self.tsih = bhs.tsih
        self.header_digest = answer.get("HeaderDigest") == "CRC32C"
        self.max_send = int(answer.get("MaxRecvDataSegmentLength", "8192"))
        self.first_burst = int(answer.get("FirstBurstLength", "65536"))
        self.immediate_data = answer.get("ImmediateData", "Yes") == "Yes"
        self._events.append(LoginComplete(itt, answer))

    def _security_response(self, bhs: Bhs, got: dict[str, str], login: _Login,
                           itt: int) -> None:
        """One Login Response of the security stage with CHAP (12.1.3)."""
        chap = login.chap
        assert chap is not None
        transit = bool(bhs.flags & pdu.LOGIN_TRANSIT)
        if login.phase == "method":
            if got.get("AuthMethod") != "CHAP" or transit:
                self._fail(f"the target answered AuthMethod={got.get('AuthMethod')} "
                           f"{'and moved on ' if transit else ''}to our AuthMethod=CHAP")
                return
            login.phase = "challenge"
            self._chap_send(itt, login, got, {"CHAP_A": chap.algorithms})
            return
        if login.phase == "challenge":
            offered = chapmod.parse_algorithms(chap.algorithms)
            try:
                algorithm = int(got.get("CHAP_A", ""))
                identifier = chapmod.parse_identifier(got.get("CHAP_I", ""))
                challenge = chapmod.decode_binary(got.get("CHAP_C", ""))
            except ValueError as exc:
                self._fail(f"the target's CHAP_A/CHAP_I/CHAP_C: {exc or 'missing'}")
                return
            if algorithm not in offered or algorithm not in chapmod.ALGORITHMS:
                self._fail(f"the target chose CHAP_A={algorithm}, not one we offered")
                return
            login.algorithm = algorithm
            keys = {"CHAP_N": chap.user, "CHAP_R": chapmod.encode_hex(
                chapmod.response(algorithm, identifier, chap.secret, challenge))}
            if chap.mutual:
                login.identifier = secrets.randbelow(256)
                login.challenge = chapmod.new_challenge(algorithm)
                keys["CHAP_I"] = str(login.identifier)
                keys["CHAP_C"] = chapmod.encode_hex(login.challenge)
            login.phase = "response"
            self._chap_send(itt, login, got, keys)
            return
        # "response": the target moves to stage 1 when it has verified us
        if not transit:
            self._login_request(itt, login)
            return
        if chap.mutual and not self._target_verified(got, login, chap):
            return
        login.phase = "operational"
        login.flags = pdu.LOGIN_TRANSIT | 1 << 2 | _FULL_FEATURE
        self._login_request(itt, login, login.operational)

    def _target_verified(self, got: dict[str, str], login: _Login,
                         chap: chapmod.InitiatorChap) -> bool:
        """Mutual CHAP: the target's CHAP_N and CHAP_R (12.1.3, RFC 7143 9.2.1)."""
        try:
            answer = chapmod.decode_binary(got.get("CHAP_R", ""))
        except ValueError as exc:
            self._fail(f"the target's CHAP_R: {exc}")
            return False
        ours = chapmod.response(login.algorithm, login.identifier, chap.secret,
                                login.challenge)
        expected = chapmod.response(login.algorithm, login.identifier, chap.target_secret,
                                    login.challenge)
        if got.get("CHAP_N") != chap.target_user:
            self._fail(f"the target's CHAP_N {got.get('CHAP_N')!r} is not the one expected")
        elif hmac.compare_digest(answer, ours):
            self._fail("the target's CHAP_R is made with our own secret")
        elif not hmac.compare_digest(answer, expected):
            self._fail("the target's CHAP_R does not verify (mutual CHAP)")
        else:
            return True
        return False

    def _chap_send(self, itt: int, login: _Login, got: dict[str, str],
                   keys: dict[str, str]) -> None:
        if login.chap_hook is not None:
            keys = login.chap_hook(dict(got), dict(keys))
        login.sent = dict(keys)
        self._login_request(itt, login, _text(keys))


def _text(keys: dict[str, str]) -> bytes:
    return "".join(f"{k}={v}\0" for k, v in keys.items()).encode()
