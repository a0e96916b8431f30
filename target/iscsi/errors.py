"""The error that ends a connection in full feature phase (RFC 7143 7.1.5, 7.2, 11.17).

Rules:
- ErrorRecoveryLevel 0: a PDU the connection cannot continue after (a header digest
  error, a sequence error, a malformed PDU or text exchange) raises ProtocolError; the
  connection (target.iscsi.connection) answers with a Reject naming the PDU when it has
  its header (`header`, the 48-byte BHS, and `reason`, RFC 7143 11.17.1) and closes.
- Its own module so that the connection and the parts it calls (target.iscsi.text) both
  import it from below, with no import cycle between them.
"""

from __future__ import annotations

from target.iscsi.pdu import RejectReason


class ProtocolError(Exception):
    """A PDU the connection cannot continue after (ERL 0: the connection ends)."""

    def __init__(self, message: str, reason: int = RejectReason.PROTOCOL_ERROR,
                 header: bytes | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.header = header
