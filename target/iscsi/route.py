"""Which target a new connection is for, from its first PDU: the portal's routing step.

With worker processes (target.shell.workers) the portal process accepts every
connection, reads its first PDU and hands the socket, with the bytes already read, to
the process that serves the target the login names. This module is that reading, sans-IO:
`first_login(buf)` looks at the bytes received so far.

Rules (RFC 7143):
- A connection's first PDU is a Login Request (6.1, 11.12); its BHS is 48 bytes, then
  TotalAHSLength words of AHS and DataSegmentLength bytes of text padded to 4 (11.2.1).
  No digest follows: digests are negotiated during login and apply after it (13.1).
- The text is key=value pairs, each ending in a NUL (6.1). The keys that route are
  SessionType (13.21; default Normal) and TargetName (13.4), which the initiator of a
  Normal session sends in its first Login Request (13.4; a login without it ends 02/07,
  target.iscsi.login). When the PDU has the C bit (11.12.2: the text
  goes on in the next PDU), only the pairs complete in this PDU count.
- The answer: `Incomplete` (read more), or `Route` with the TargetName (None: the
  portal process answers this connection itself: a discovery session, a first PDU that is
  not a Login Request, names no target, is malformed or is larger than MAX_FIRST_PDU,
  which the login then rejects with its own status and reason).
- Nothing here writes: the bytes go on, unchanged, to whoever serves the connection.
"""

from __future__ import annotations

from dataclasses import dataclass

from target.iscsi.keys import TextError, parse
from target.iscsi.pdu import BHS_LEN, F_CONTINUE, Op, pad_len

MAX_FIRST_PDU = BHS_LEN + 255 * 4 + 65536  # more than any login text we accept (8192)


@dataclass(frozen=True)
class Incomplete:
    """The first PDU is not all here yet; at least `need` bytes in all are wanted."""

    need: int


@dataclass(frozen=True)
class Route:
    """Where the connection goes: the TargetName its login names (None: stay here)."""

    target_name: str | None
    why: str  # for the log: what decided it


def first_login(buf: bytes | bytearray | memoryview) -> Incomplete | Route:
    """Decide from the bytes received so far on a new connection."""
    if len(buf) < BHS_LEN:
        return Incomplete(BHS_LEN)
    opcode = buf[0] & 0x3F
    if opcode != Op.LOGIN_REQUEST:
        return Route(None, f"first PDU is opcode 0x{opcode:02x}, not a Login Request")
    ahs_len = buf[4] * 4
    dsl = int.from_bytes(buf[5:8], "big")
    total = BHS_LEN + ahs_len + dsl + pad_len(dsl)
    if total > MAX_FIRST_PDU:
        return Route(None, f"first Login Request of {total} bytes")
    if len(buf) < total:
        return Incomplete(total)
    text = bytes(buf[BHS_LEN + ahs_len:BHS_LEN + ahs_len + dsl])
    if buf[1] & F_CONTINUE:
        text = text[:text.rfind(b"\x00") + 1]  # the pairs complete in this PDU
    try:
        values = dict(parse(text))
    except TextError as exc:
        return Route(None, f"login text: {exc}")
    if values.get("SessionType", "Normal") != "Normal":
        return Route(None, f"SessionType={values['SessionType']}")
    name = values.get("TargetName")
    if not name:
        return Route(None, "no TargetName in the first Login Request")
    return Route(name, "TargetName")
