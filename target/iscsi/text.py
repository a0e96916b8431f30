"""Text Requests in full feature phase (RFC 7143 11.10, 11.11, 13.3, appendix C).

API: `TextResponder(session, portal, local_address)`, one per connection;
`receive(bhs, data)` takes one Text Request and returns the Text Responses to send as a
list of `(flags, ttt, data)`: flags holds F (0x80) and C (0x40), ttt is the Target
Transfer Tag, data the text (not padded). The connection fills in the rest (LUN and ITT
echoed from the request, StatSN, ExpCmdSN, MaxCmdSN) and pads. Errors that end the
connection raise errors.ProtocolError (a Reject naming the PDU goes out first).
`local_address` is the address the connection came in on (host:port), given by the
connection that makes the responder.

Rules:
- An exchange is one ITT. A request with TTT 0xffffffff starts a new one (and drops any
  state of the previous, 11.10.4); a request with any other TTT must carry the one we
  last sent for this ITT (else Reject, invalid PDU field). F and C together are a
  protocol error (11.10.2).
- Initiator text spanning PDUs: a request with C=1 is answered with an empty response
  (F=0, C=0) and a TTT; its text is kept until the request with C=0.
- Our answer is split in pieces of at most the initiator's MaxRecvDataSegmentLength
  (13.12); all pieces but the last have C=1, F=0 and a TTT, and each further piece is sent
  when the initiator asks with an empty request carrying that TTT. The last piece has F=1
  and TTT 0xffffffff when the request had F=1, else F=0 and a new TTT (11.11.1, 11.11.4).
- SendTargets (13.3, appendix C): in a discovery session `All` reports every target the
  initiator's ACL allows, a target name reports that target, an empty value is rejected;
  in a normal session an empty value or the session's target name reports the session's
  target, `All` is rejected. Each target is `TargetName=` followed by one
  `TargetAddress=host:port,tpgt` per portal address (IPv6 in brackets, 13.8); a wildcard
  listening address is replaced by the address the connection came in on.
- Other keys: only keys of use ALL may be negotiated in full feature phase (13:
  MaxRecvDataSegmentLength, InitiatorAlias); IO/LO keys are answered Reject, unknown and
  X- keys NotUnderstood (keys.py). A key twice in one exchange is a protocol error.
"""

from __future__ import annotations

from target.iscsi.errors import ProtocolError
from target.iscsi.keys import (
    REJECT,
    Negotiation,
    NegotiationError,
    Stage,
    TextError,
    encode,
    parse,
)
from target.iscsi.pdu import F_CONTINUE, F_FINAL, RESERVED_TAG, Bhs, RejectReason
from target.iscsi.portal import Portal
from target.iscsi.session import Session

MAX_TEXT = 64 * 1024  # request text spanning PDUs beyond this ends the connection
_WILDCARDS = ("0.0.0.0", "::", "[::]", "")


class TextResponder:
    """The Text Request/Response exchanges of one connection in full feature phase."""

    def __init__(self, session: Session, portal: Portal, local_address: str = "") -> None:
        self.session = session
        self.portal = portal
        self.local_address = local_address  # where the connection came in (host:port)
        self._itt: int | None = None
        self._ttt = RESERVED_TAG
        self._next_ttt = 1
        self._text_in = bytearray()
        self._pending: bytes | None = None
        self._negotiation: Negotiation | None = None

    def receive(self, bhs: Bhs, data: bytes) -> list[tuple[int, int, bytes]]:
        final = bool(bhs.flags & F_FINAL)
        cont = bool(bhs.flags & F_CONTINUE)
        if final and cont:
            raise ProtocolError("Text Request with F and C set", header=bhs.raw)
        if bhs.ttt == RESERVED_TAG:
            self._start(bhs.itt)
        elif bhs.itt != self._itt or bhs.ttt != self._ttt:
            raise ProtocolError(f"Text Request with unknown TTT {bhs.ttt:#x}",
                                RejectReason.INVALID_PDU_FIELD, bhs.raw)
        if self._pending is not None:
            if data or cont:
                raise ProtocolError("text sent while the target's answer continues",
                                    header=bhs.raw)
            return [self._piece(final)]
        if cont:
            self._text_in += data
            if len(self._text_in) > MAX_TEXT:
                raise ProtocolError("text request too long", header=bhs.raw)
            return [(0, self._new_ttt(), b"")]
        text = bytes(self._text_in) + bytes(data)
        self._text_in.clear()
        try:
            pairs = parse(text)
            self._pending = encode(self._answer(pairs))
        except (TextError, NegotiationError) as exc:
            raise ProtocolError(f"text request: {exc}", header=bhs.raw) from None
        return [self._piece(final)]

    # --- exchange state --------------------------------------------------------------

    def _start(self, itt: int) -> None:
        self._itt = itt
        self._ttt = RESERVED_TAG
        self._text_in.clear()
        self._pending = None
        self._negotiation = Negotiation(self.portal.offers, self.session.params)

    def _new_ttt(self) -> int:
        ttt = self._next_ttt
        self._next_ttt = (ttt % 0xFFFFFFFE) + 1  # never 0 or the reserved value
        self._ttt = ttt
        return ttt

    def _piece(self, final: bool) -> tuple[int, int, bytes]:
        pending = self._pending or b""
        size = max(512, self.session.params.max_recv_data_segment_length)
        piece, rest = pending[:size], pending[size:]
        if rest:
            self._pending = rest
            return (F_CONTINUE, self._new_ttt(), piece)
        self._pending = None
        if final:
            self._itt = None
            self._ttt = RESERVED_TAG
            self._negotiation = None
            return (F_FINAL, RESERVED_TAG, piece)
        return (0, self._new_ttt(), piece)

    # --- answers ---------------------------------------------------------------------

    def _answer(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        params = self.session.params
        answers = self._negotiation.respond(pairs, Stage.FFP, params.session_type)
        for key, value in pairs:
            if key == "SendTargets":
                answers.extend(self._send_targets(value))
        return answers

    def _send_targets(self, value: str) -> list[tuple[str, str]]:
        params = self.session.params
        portal = self.portal
        if params.session_type == "Discovery":
            if value == "All":
                entries = portal.visible_to(params.initiator_name)
            elif value:
                entry = portal.find(value)
                entries = [entry] if entry and entry.allows(params.initiator_name) else []
            else:
                return [("SendTargets", REJECT)]
        else:
            if value == "All":
                return [("SendTargets", REJECT)]
            if value and value.lower() != params.target_name.lower():
                entries = []
            else:
                entry = portal.find(params.target_name)
                entries = [entry] if entry else []
        out = []
        for entry in entries:
            out.append(("TargetName", entry.name))
            for address in self._addresses():
                out.append(("TargetAddress", f"{address},{entry.tpgt}"))
        return out

    def _addresses(self) -> list[str]:
        local = self.local_address
        local_host = _split(local)[0] if local else ""
        out = []
        for address in self.portal.addresses:
            host, port = _split(address)
            if host in _WILDCARDS and local_host:
                host = local_host
            out.append(_join(host, port))
        return out


def _split(address: str) -> tuple[str, str]:
    """host:port or [v6]:port -> (host, port); the host of an IPv6 address unbracketed."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, rest.lstrip(":") or "3260"
    host, sep, port = address.rpartition(":")
    if not sep or ":" in host:  # no port, or a bare IPv6 address
        return address, "3260"
    return host, port


def _join(host: str, port: str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
