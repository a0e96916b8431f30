"""A small blocking iSCSI initiator (RFC 7143), for tools, tests and the dump path: the
socket shell of target.iscsi.initiator.InitiatorConnection, which decides everything the
standard specifies.

Rules:
- Blocking socket, one connection, one command at a time; no threads, no callbacks.
  Every receive has a timeout (the socket's, `timeout` unless a caller set another on
  `sock`), so a silent target is reported (TimeoutError), never waited on forever.
- The shell moves bytes only: it sends data_to_send() with sendmsg() after each request,
  and receives with recv_into() into the core's get_buffer(), which never reaches past
  the PDU being received, so callers that read or write `sock` themselves stay in step.
- A request's method waits for the core's event of that request. PDUs of nothing
  tracked (PduReceived) are skipped, except: while a command waits, a target's ping
  (NOP-In with the reserved ITT) is answered and any Reject ends the command with
  InitiatorError. A request given up (timeout, error) is forgotten by the core, so its
  later PDUs come to recv_pdu() as they are.
- CHAP (chap.InitiatorChap, `chap`): the core runs the exchange; a refusal of the target
  is InitiatorError("login failed: status 02/01").
- send_raw() writes any bytes, for tests that break the protocol on purpose; send_pdu()
  and recv_pdu() let callers frame their own PDUs with the session's numbers.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from target.iscsi.chap import InitiatorChap
from target.iscsi.initiator import (
    ChapHook,
    CommandDone,
    Event,
    InitiatorConnection,
    InitiatorError,
    LoginComplete,
    LoginFailed,
    LogoutDone,
    NopIn,
    PduReceived,
    Rejected,
    Result,
    TaskManagementDone,
)
from target.iscsi.pdu import RESERVED_TAG, Bhs, Op

__all__ = ["Initiator", "InitiatorError", "Result"]


@dataclass
class Initiator:
    host: str
    port: int
    target_name: str = ""
    initiator_name: str = "iqn.2026-11.local.scsi-target:initiator"
    isid: int = 0x400000000001
    timeout: float = 10.0
    header_digest: bool = False
    params: dict[str, str] = field(default_factory=dict)
    chap: InitiatorChap | None = None  # CHAP (one-way, or mutual with target_secret)
    chap_hook: ChapHook | None = None  # tests: rewrite our CHAP keys before sending

    def __post_init__(self) -> None:
        self.sock: socket.socket | None = None
        self.core = InitiatorConnection()

    # The session's numbers and negotiated values are the core's (callers framing their
    # own PDUs read and advance them).
    @property
    def cmdsn(self) -> int:
        return self.core.cmdsn

    @cmdsn.setter
    def cmdsn(self, value: int) -> None:
        self.core.cmdsn = value

    @property
    def exp_stat_sn(self) -> int:
        return self.core.exp_stat_sn

    @exp_stat_sn.setter
    def exp_stat_sn(self, value: int) -> None:
        self.core.exp_stat_sn = value

    @property
    def itt(self) -> int:
        return self.core.itt

    @itt.setter
    def itt(self, value: int) -> None:
        self.core.itt = value

    @property
    def tsih(self) -> int:
        return self.core.tsih

    @tsih.setter
    def tsih(self, value: int) -> None:
        self.core.tsih = value

    @property
    def max_send(self) -> int:
        return self.core.max_send

    @property
    def first_burst(self) -> int:
        return self.core.first_burst

    @property
    def immediate_data(self) -> bool:
        return self.core.immediate_data

    # --- connection --------------------------------------------------------------------

    def connect(self) -> Initiator:
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> Initiator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_raw(self, data: bytes) -> None:
        assert self.sock is not None
        self.sock.sendall(data)

    def _flush(self) -> None:
        buffers = self.core.data_to_send()
        while buffers:
            assert self.sock is not None
            sent = self.sock.sendmsg(buffers)
            while buffers and sent >= len(buffers[0]):
                sent -= len(buffers[0])
                buffers.pop(0)
            if sent:
                buffers[0] = memoryview(buffers[0])[sent:]

    def _event(self) -> Event:
        """The core's next event, receiving as long as it needs bytes."""
        core = self.core
        while (event := core.next_event()) is None:
            assert self.sock is not None
            n = self.sock.recv_into(core.get_buffer())
            if not n:
                raise InitiatorError("connection closed by the target")
            core.buffer_updated(n)
            self._flush()  # what the core answers by itself: Data-Out for an R2T
        return event

    def send_pdu(self, header: bytes, data: bytes = b"") -> None:
        self.core.send_pdu(header, data)
        self._flush()

    def recv_pdu(self) -> tuple[Bhs, bytes]:
        """The next PDU of no tracked request, as received."""
        while True:
            event = self._event()
            if type(event) is PduReceived:
                return event.bhs, event.data

    def _next_itt(self) -> int:
        return self.core.next_itt()

    def _wait(self, itt: int, kind: type) -> Event:
        """The event of request `itt`; other PDUs skipped; the request forgotten if not."""
        try:
            while True:
                event = self._event()
                if type(event) is kind and event.itt == itt:
                    return event
                if type(event) is LoginFailed and event.itt == itt:
                    status = event.status
                    raise InitiatorError(
                        f"login failed: status {status >> 8:02x}/{status & 0xFF:02x}")
                if type(event) is Rejected and event.itt == itt:
                    raise InitiatorError(f"command rejected, reason {event.reason:#x}")
                if type(event) is PduReceived and kind is CommandDone:
                    bhs = event.bhs
                    if bhs.opcode == Op.REJECT:
                        raise InitiatorError(f"command rejected, reason {bhs.b2:#x}")
                    if bhs.opcode == Op.NOP_IN and bhs.itt == RESERVED_TAG:
                        self.nop_reply(bhs)
        finally:
            self.core.forget(itt)

    # --- login / logout ----------------------------------------------------------------

    def login(self, session_type: str = "Normal") -> dict[str, str]:
        """Login to full feature phase (with `chap`, through the security stage first);
        returns the target's keys."""
        if self.sock is None:
            self.connect()
        itt = self.core.login(initiator_name=self.initiator_name, target_name=self.target_name,
                              isid=self.isid, session_type=session_type,
                              header_digest=self.header_digest, params=self.params,
                              chap=self.chap, chap_hook=self.chap_hook)
        self._flush()
        event = self._wait(itt, LoginComplete)
        assert type(event) is LoginComplete
        return event.keys

    def logout(self) -> int:
        itt = self.core.logout()
        self._flush()
        event = self._wait(itt, LogoutDone)
        assert type(event) is LogoutDone
        return event.response

    # --- commands ----------------------------------------------------------------------

    def command(self, cdb: bytes, *, lun: int = 0, read: int = 0, data: bytes = b"",
                attr: int = 1, immediate: bool = False) -> Result:
        """One SCSI command to completion: `read` bytes expected in, `data` sent out."""
        itt = self.core.command(cdb, lun=lun, read=read, data=data, attr=attr,
                                immediate=immediate)
        self._flush()
        event = self._wait(itt, CommandDone)
        assert type(event) is CommandDone
        return event.result

    def _answer_r2t(self, r2t: Bhs, data: bytes) -> None:
        self.core.answer_r2t(r2t, data)
        self._flush()

    def nop_reply(self, nop_in: Bhs) -> None:
        self.core.nop_reply(nop_in)
        self._flush()

    def nop(self, payload: bytes = b"") -> bytes:
        itt = self.core.nop(payload)
        self._flush()
        event = self._wait(itt, NopIn)
        assert type(event) is NopIn
        return event.data

    def task_management(self, function: int, *, lun: int = 0, ref_itt: int = RESERVED_TAG,
                        ref_cmdsn: int = 0) -> int:
        itt = self.core.task_management(function, lun=lun, ref_itt=ref_itt,
                                        ref_cmdsn=ref_cmdsn)
        self._flush()
        event = self._wait(itt, TaskManagementDone)
        assert type(event) is TaskManagementDone
        return event.response
