"""A malformed-input battery over real sockets (issue 15): each case on a fresh connection.

How it runs: one OurTarget for the module; every case opens its own connection (a raw
socket, or our initiator target.shell.initiator logged in as a rogue with an ISID of its
own), sends its malformed input and asserts what the clause in its `clause` string
requires of the target:
- a Reject with the reason code of RFC 7143 11.17.1 (02h data digest error, 03h SNACK
  reject, 04h protocol error, 05h command not supported, 07h task in progress, 09h invalid
  PDU field), the rejected header as its data segment (11.17);
- a Login Response with the Status-Class/Detail of 11.13.5 (02/00 initiator error, 02/01
  authentication, 02/03 not found, 02/05 unsupported version, 02/07 missing parameter,
  02/09 session type not supported, 02/0A session does not exist, 02/0B invalid during
  login) and T=0, after which the target closes the connection;
- a key answered Reject or NotUnderstood (6.2, 6.2.1), a Text/TMF/Logout response code
  (11.11, 11.6.1, 11.15.1);
- a SCSI Response with CHECK CONDITION and the sense key/ASC/ASCQ of SPC-4 / SBC-4 (and
  RFC 7143 11.4.7.2 for the iSCSI ones), or GOOD with the residual of 11.4.5.1, the
  transfer cut to min(the data's own length, ALLOCATION LENGTH, EDTL) (SPC-4 4.2.5.6);
- a closed connection where the RFC ends it: anything but a Login Request before the
  login completes (6.1, 11.12), a format error in a header (7.6, RFC 3720 6.6), a data
  segment over MaxRecvDataSegmentLength (13.12), a connection that stops mid-PDU.
Where the standard allows more than one answer the case accepts exactly those, and says so.
After each case (also a failed one) a second session logs in and READs a block; at the
end the target's log holds no "Traceback". A case whose clause the target does not meet
yet is xfail(strict=True) with its finding (`finding=`); a fix makes it XPASS, which
fails, so the mark goes with the fix (none is left: the three found, a lying AHS length,
a Logout for an unknown CID and a WRITE over MAXIMUM TRANSFER LENGTH, are fixed). Cases already in
tests/integration/test_robustness.py are not repeated. Oracles besides the standards'
tables: the crc32c library for digests; for the layouts of EXTENDED COPY, SPC-4 6.4.
"""

from __future__ import annotations

import itertools
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from target.iscsi import pdu
from target.iscsi.pdu import RESERVED_TAG, Bhs, Op, RejectReason
from target.shell.initiator import Initiator, InitiatorError
from target.testing import cdb as cdbs
from target.testing.servers import OurTarget

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
LOGIN_MRDSL = 8192  # 13.12: MaxRecvDataSegmentLength in the login phase
# s without a PDU after which a connection counts as still open: waited in full only when
# the target keeps a connection open that the case expects closed (EOF ends it at once),
# so it is long enough for a loaded machine (2 cores, shared)
QUIET = 5.0
GOOD, CHECK_CONDITION = 0x00, 0x02
ILLEGAL_REQUEST, ABORTED_COMMAND = 0x05, 0x0B
_isids = itertools.count(0x400000100000)


@dataclass
class Ctx:
    target: OurTarget
    block_size: int
    blocks: int


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    work = tmp_path_factory.mktemp("battery")
    with OurTarget(["--size", "16M"], workdir=work) as t:
        ini = healthy_login(t)
        rc = ini.command(bytes([0x9E, 0x10]) + bytes(8) + struct.pack(">I", 32) + bytes(2),
                         read=32)
        ini.close()
        last_lba, block_size = struct.unpack_from(">QI", rc.data)
        yield Ctx(t, block_size, last_lba + 1)
        log = t.log_path.read_text()
        assert "login failed" in log  # the log read is the one the battery filled
        assert "Traceback" not in log, log[-4000:]


def healthy_login(t: OurTarget) -> Initiator:
    ini = Initiator(HOST, t.port, t.iqn, initiator_name="iqn.2026-11.local.test:battery-ok",
                    isid=next(_isids), timeout=10)
    ini.login()
    for _ in range(8):  # unit attentions of a new I_T nexus first (SAM-5 5.14)
        if ini.command(cdbs.TEST_UNIT_READY).status == GOOD:
            break
    return ini


def still_serves(c: Ctx) -> None:
    """A second session logs in and READs one block (the after-case check)."""
    ini = healthy_login(c.target)
    try:
        result = ini.command(cdbs.read10(0, 1), read=c.block_size)
        assert result.status == GOOD and len(result.data) == c.block_size
    finally:
        ini.close()


# --- raw PDU helpers ------------------------------------------------------------------

def connect(c: Ctx) -> socket.socket:
    s = socket.create_connection((HOST, c.target.port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exact(s: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def recv_pdu(s: socket.socket) -> tuple[Bhs, bytes] | None:
    """The next PDU (no digests), or None at EOF."""
    head = recv_exact(s, pdu.BHS_LEN)
    if head is None:
        return None
    bhs = Bhs(head)
    rest = recv_exact(s, bhs.ahs_len + bhs.dsl + pdu.pad_len(bhs.dsl))
    if rest is None:
        return None
    return bhs, rest[bhs.ahs_len:bhs.ahs_len + bhs.dsl]


def drain(s: socket.socket, quiet: float = QUIET) -> tuple[list[tuple[Bhs, bytes]], bool]:
    """Every PDU until EOF (closed=True) or `quiet` seconds of silence (closed=False)."""
    got = []
    s.settimeout(quiet)
    try:
        while (p := recv_pdu(s)) is not None:
            got.append(p)
        return got, True
    except TimeoutError:
        return got, False
    except ConnectionResetError:
        return got, True


def keys(*pairs: str) -> bytes:
    return b"".join(p.encode() + b"\0" for p in pairs)


def login_keys(c: Ctx, *extra: str, name: str = "iqn.2026-11.local.test:battery-rogue",
               session_type: str | None = None, target: bool = True) -> bytes:
    pairs = [f"InitiatorName={name}"]
    if session_type:
        pairs.append(f"SessionType={session_type}")
    if target:
        pairs.append(f"TargetName={c.target.iqn}")
    return keys(*pairs, *extra)


T_BIT, C_BIT = pdu.LOGIN_TRANSIT, pdu.F_CONTINUE
OP_TO_FFP = T_BIT | 1 << 2 | 3  # T, CSG 1 (operational), NSG 3 (full feature)
SEC_TO_OP = T_BIT | 0 << 2 | 1  # T, CSG 0 (security), NSG 1


def login_request(text: bytes, *, flags: int = OP_TO_FFP, isid: int | None = None,
                  tsih: int = 0, itt: int = 1, cmdsn: int = 0, version_min: int = 0,
                  cid: int = 0, dsl: int | None = None) -> bytes:
    header = pdu.login_request(flags=flags, version_min=version_min,
                               dsl=len(text) if dsl is None else dsl,
                               isid=next(_isids) if isid is None else isid, tsih=tsih,
                               itt=itt, cid=cid, cmdsn=cmdsn)
    return header + text + pdu.padding(len(text))


def login_status(s: socket.socket) -> tuple[int, int]:
    """Status-Class and Status-Detail of the next Login Response (11.13.5)."""
    got = recv_pdu(s)
    assert got is not None, "the target closed the connection without a Login Response"
    bhs, _ = got
    assert bhs.opcode == Op.LOGIN_RESPONSE, bhs
    return bhs.w36 >> 24, bhs.w36 >> 16 & 0xFF


def login_refused(c: Ctx, data: bytes, status: tuple[int, int]) -> None:
    """The login is refused with `status`, T=0 (11.13.5), and the target closes."""
    with connect(c) as s:
        s.sendall(data)
        got = recv_pdu(s)
        assert got is not None, "closed without a Login Response"
        bhs, _ = got
        assert bhs.opcode == Op.LOGIN_RESPONSE
        assert (bhs.w36 >> 24, bhs.w36 >> 16 & 0xFF) == status, \
            f"status {bhs.w36 >> 24:02x}/{bhs.w36 >> 16 & 0xFF:02x}"
        assert not bhs.flags & T_BIT  # 11.13.5: T=0 on a reject
        _, closed = drain(s)
        assert closed


def parse_keys(text: bytes) -> dict[str, str]:
    out = {}
    for item in text.split(b"\0"):
        if item:
            k, _, v = item.decode().partition("=")
            out[k] = v
    return out


def login_answers(c: Ctx, *extra: str) -> dict[str, str]:
    """A login to full feature phase with `extra` keys; the target's answers."""
    with connect(c) as s:
        s.sendall(login_request(login_keys(c, *extra)))
        got = recv_pdu(s)
        assert got is not None
        bhs, data = got
        assert bhs.opcode == Op.LOGIN_RESPONSE and bhs.w36 >> 16 == 0, hex(bhs.w36)
        return parse_keys(data)


def closed_before_login(c: Ctx, data: bytes, *, half_close: bool = False) -> None:
    """Anything but a Login Request first, or a PDU cut short: the connection ends with
    no Login Response of success (6.1, 7.6); a Login reject 02/0B is allowed too."""
    with connect(c) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        got, closed = drain(s, quiet=5.0)
        assert closed, got
        for bhs, _ in got:
            assert bhs.opcode == Op.LOGIN_RESPONSE and bhs.w36 >> 24 == 2, bhs


def rogue(c: Ctx, **kw) -> Initiator:
    ini = Initiator(HOST, c.target.port, c.target.iqn,
                    initiator_name="iqn.2026-11.local.test:battery-rogue",
                    isid=next(_isids), timeout=5, **kw)
    ini.login()
    return ini


def rogue_ready(c: Ctx) -> Initiator:
    ini = rogue(c)
    for _ in range(8):
        if ini.command(cdbs.TEST_UNIT_READY).status == GOOD:
            break
    return ini


_pings = itertools.count(0x7FFF0000)


def pdus_then(ini: Initiator, quiet: float | None = None,
              until: Callable[[list[tuple[Bhs, bytes]]], bool] | None = None,
              ) -> tuple[list[tuple[Bhs, bytes]], bool]:
    """What the target sent after our last PDU, and whether it then closed. A NOP-Out ping
    (immediate, RFC 7143 11.18) marks the end: PDUs are answered in order, so what came
    before its NOP-In is the answer to what we sent (no waiting for silence); `until`
    asks for more (an answer that comes from a worker thread, after the ping). With
    `quiet` set it waits for that much silence instead."""
    assert ini.sock is not None
    if quiet is not None:
        return drain(ini.sock, quiet)
    itt = next(_pings)
    got: list[tuple[Bhs, bytes]] = []
    try:
        ini.sock.sendall(pdu.nop_out(immediate=True, itt=itt, cmdsn=ini.cmdsn,
                                     exp_statsn=ini.exp_stat_sn))
    except OSError:
        pass  # closed already: what it sent first is still to be read
    ini.sock.settimeout(5)
    pinged = False
    try:
        while (p := recv_pdu(ini.sock)) is not None:
            if p[0].opcode == Op.NOP_IN and p[0].itt == itt:
                pinged = True
            else:
                got.append(p)
            if pinged and (until is None or until(got)):
                return got, False
        return got, True
    except ConnectionResetError:
        return got, True


def expect_reject(ini: Initiator, header: bytes, data: bytes = b"", *,
                  reasons: set[int], closes: bool | None) -> Bhs:
    """`header` is answered with a Reject of one of `reasons` carrying it (11.17.3);
    closes: True the connection then ends, False it goes on (a NOP answered), None
    either."""
    ini.send_pdu(header, data)
    got, closed = pdus_then(ini, quiet=5.0 if closes else None)
    rejects = [b for b, d in got if b.opcode == Op.REJECT]
    assert rejects, (got, closed)
    r = rejects[0]
    assert r.b2 in reasons, f"reason {r.b2:#x}, expected {sorted(reasons)}"
    body = [d for b, d in got if b.opcode == Op.REJECT][0]
    assert body[:1] == header[:1] and body[16:20] == header[16:20]  # the rejected BHS
    if closes is True:
        assert closed
    elif closes is False:
        assert not closed
        assert ini.sock is not None
        ini.sock.settimeout(5)
        assert ini.nop(b"after") == b"after"
    return r


def expect_closed(ini: Initiator, header: bytes, data: bytes = b"",
                  *, reject: set[int] | None = None) -> None:
    """The connection ends (a Reject of one of `reject` may come first)."""
    ini.send_raw(header + data + pdu.padding(len(data)))
    got, closed = pdus_then(ini, quiet=5.0)
    assert closed, got
    for bhs, _ in got:
        assert bhs.opcode == Op.REJECT and reject is not None and bhs.b2 in reject, bhs


def sense_of(sense: bytes) -> tuple[int, int, int]:
    """(key, ASC, ASCQ) of fixed or descriptor sense data (SPC-4 4.5.2, 4.5.3)."""
    if sense[0] & 0x7F in (0x72, 0x73):
        return sense[1] & 0x0F, sense[2], sense[3]
    return sense[2] & 0x0F, sense[12], sense[13]


def scsi(ini: Initiator, cdb: bytes, *, edtl: int, read: bool = False, write: bool = False,
         data: bytes = b"", lun: int = 0, final: bool = True,
         ahs: bytes = b"") -> tuple[Bhs, bytes, list[tuple[Bhs, bytes]]]:
    """A SCSI Command of our own framing; its SCSI Response, its sense, every PDU."""
    itt = 0x7000 + next(_isids) % 0x1000
    flags = (pdu.F_FINAL if final else 0) | (pdu.F_READ if read else 0) \
        | (pdu.F_WRITE if write else 0) | 1
    head = bytearray(pdu.scsi_command(flags=flags, dsl=len(data),
                                      lun=struct.pack(">HHI", lun, 0, 0), itt=itt,
                                      edtl=edtl, cmdsn=ini.cmdsn, exp_statsn=ini.exp_stat_sn,
                                      cdb=cdb[:16]))
    if ahs:
        head[4] = len(ahs) // 4
    ini.cmdsn = (ini.cmdsn + 1) & 0xFFFFFFFF
    ini.send_pdu(bytes(head) + ahs, data)
    got = []
    assert ini.sock is not None
    ini.sock.settimeout(5)
    while True:
        p = recv_pdu(ini.sock)
        assert p is not None, ("closed", got)
        got.append(p)
        bhs, body = p
        if bhs.opcode == Op.SCSI_RESPONSE and bhs.itt == itt:
            sense = body[2:2 + struct.unpack_from(">H", body)[0]] if len(body) >= 2 else b""
            return bhs, sense, got
        if bhs.opcode == Op.DATA_IN and bhs.itt == itt and bhs.flags & pdu.F_STATUS:
            return bhs, b"", got
        assert bhs.opcode in (Op.DATA_IN, Op.R2T, Op.NOP_IN), bhs


def expect_check(ini: Initiator, cdb: bytes, key: int, asc: int, ascq: int = 0, *,
                 edtl: int = 0, read: bool = False, write: bool = False,
                 data: bytes = b"", lun: int = 0) -> None:
    bhs, sense, _ = scsi(ini, cdb, edtl=edtl, read=read, write=write, data=data, lun=lun)
    assert bhs.b3 == CHECK_CONDITION, f"status {bhs.b3:#x}"
    assert sense_of(sense) == (key, asc, ascq), [hex(x) for x in sense_of(sense)]


def data_in_bytes(got: list[tuple[Bhs, bytes]]) -> bytes:
    return b"".join(d for b, d in got if b.opcode == Op.DATA_IN)


def residual(bhs: Bhs) -> tuple[bool, bool, int]:
    """(overflow, underflow, Residual Count) of a SCSI Response or a Data-In with S."""
    return bool(bhs.flags & pdu.F_OVERFLOW), bool(bhs.flags & pdu.F_UNDERFLOW), bhs.w44


# --- the cases ------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    name: str
    clause: str
    run: Callable[[Ctx], None]
    finding: str | None = None  # a known departure from the clause: xfail(strict)


CASES: list[Case] = []


def case(name: str, clause: str, finding: str | None = None):
    def register(fn: Callable[[Ctx], None]) -> Callable[[Ctx], None]:
        CASES.append(Case(name, clause, fn, finding))
        return fn
    return register


def add(name: str, clause: str, fn: Callable[[Ctx], None],
        finding: str | None = None) -> None:
    CASES.append(Case(name, clause, fn, finding))


# -- before login: non-login PDUs, truncated and lying headers (6.1, 7.6, 11.12, 13.12)

for _op in (Op.NOP_OUT, Op.SCSI_COMMAND, Op.TASK_MGMT_REQUEST, Op.TEXT_REQUEST,
            Op.DATA_OUT, Op.LOGOUT_REQUEST, Op.SNACK_REQUEST, 0x07, 0x1C, Op.LOGIN_RESPONSE,
            Op.REJECT):
    add(f"first-pdu-opcode-{int(_op):02x}", "RFC 7143 6.1/11.12: the first PDU of a "
        "connection is a Login Request; anything else ends it",
        lambda c, op=int(_op): closed_before_login(c, pdu.pack(op | 0x40, 0x80, itt=1)))

for _n in (1, 20, 47):
    add(f"truncated-bhs-{_n}-bytes-then-eof", "RFC 7143 11.2: a PDU is at least its 48-byte "
        "BHS; a connection that ends inside it is dropped, nothing else disturbed",
        lambda c, n=_n: closed_before_login(c, login_request(login_keys(c))[:n],
                                            half_close=True))


@case("login-ahs-length-lies-then-eof", "RFC 7143 11.2.1.4 TotalAHSLength: the AHS it "
      "announces never comes; the connection ends at EOF")
def _(c: Ctx) -> None:
    head = bytearray(login_request(b""))
    head[4] = 0xFF  # 1020 bytes of AHS announced
    closed_before_login(c, bytes(head) + bytes(100), half_close=True)


@case("login-data-length-lies-then-eof", "RFC 7143 11.2.1.5 DataSegmentLength: 4000 "
      "bytes announced, 10 sent, then EOF")
def _(c: Ctx) -> None:
    closed_before_login(c, login_request(b"", dsl=4000) + b"InitiatorN", half_close=True)


@case("login-data-over-8192", "RFC 7143 13.12: MaxRecvDataSegmentLength is 8192 during "
      "login; a longer data segment is a protocol error: the connection ends")
def _(c: Ctx) -> None:
    text = login_keys(c, "X-pad=" + "a" * 9000)
    closed_before_login(c, login_request(text))


@case("login-data-max-24-bit", "RFC 7143 13.12 / 11.2.1.5: DataSegmentLength 0xFFFFFF "
      "during login: the connection ends, nothing is buffered for it")
def _(c: Ctx) -> None:
    closed_before_login(c, login_request(b"", dsl=0xFFFFFF)[:48] + bytes(64))


# -- login: stages and fields (11.12, 11.13.5)

add("login-version-min-1", "RFC 7143 11.12.4 / 11.13.5: Version-min above ours: 02/05",
    lambda c: login_refused(c, login_request(login_keys(c), version_min=1), (2, 0x05)))
add("login-csg-full-feature", "RFC 7143 11.12.3: CSG 3 is not a login stage: 02/00",
    lambda c: login_refused(c, login_request(login_keys(c), flags=T_BIT | 3 << 2 | 3),
                            (2, 0x00)))
add("login-nsg-reserved-2", "RFC 7143 11.12.3: NSG 2 is reserved: 02/00",
    lambda c: login_refused(c, login_request(login_keys(c), flags=T_BIT | 1 << 2 | 2),
                            (2, 0x00)))
add("login-csg-reserved-2", "RFC 7143 11.12.3: CSG 2 is reserved: 02/00",
    lambda c: login_refused(c, login_request(login_keys(c), flags=T_BIT | 2 << 2 | 3),
                            (2, 0x00)))
add("login-transit-backwards", "RFC 7143 11.12.3 / 6.3: T=1 to an earlier stage "
    "(operational to security): 02/00",
    lambda c: login_refused(c, login_request(login_keys(c), flags=T_BIT | 1 << 2 | 0),
                            (2, 0x00)))
add("login-t-and-c", "RFC 7143 11.12.2: T and C both 1 is an error: 02/00",
    lambda c: login_refused(c, login_request(login_keys(c), flags=OP_TO_FFP | C_BIT),
                            (2, 0x00)))
add("login-no-initiator-name", "RFC 7143 13.10 / 11.13.5: InitiatorName is required in "
    "the first request: 02/07",
    lambda c: login_refused(c, login_request(keys(f"TargetName={c.target.iqn}")),
                            (2, 0x07)))
add("login-empty-data", "RFC 7143 13.10 / 11.13.5: no keys at all: 02/07 missing "
    "parameter", lambda c: login_refused(c, login_request(b""), (2, 0x07)))
add("login-no-target-name", "RFC 7143 13.4 / 11.13.5: a Normal session needs TargetName: "
    "02/07", lambda c: login_refused(c, login_request(login_keys(c, target=False)),
                                     (2, 0x07)))
add("login-unknown-target", "RFC 7143 11.13.5: an unknown TargetName: 02/03 not found",
    lambda c: login_refused(c, login_request(keys(
        "InitiatorName=iqn.2026-11.local.test:x", "TargetName=iqn.2026-11.local.nope:x")),
        (2, 0x03)))
add("login-session-type-bogus", "RFC 7143 13.21 / 11.13.5: a SessionType we do not "
    "support: 02/09",
    lambda c: login_refused(c, login_request(login_keys(c, session_type="Bogus")),
                            (2, 0x09)))
add("login-unknown-tsih", "RFC 7143 11.12.6 / 11.13.5: a TSIH naming no session: 02/0A",
    lambda c: login_refused(c, login_request(login_keys(c), tsih=0x7777), (2, 0x0A)))
add("login-sendtargets", "RFC 7143 13.3 (SendTargets is FFPO) / 11.13.5: during login "
    "it is invalid: 02/0B",
    lambda c: login_refused(c, login_request(login_keys(c, "SendTargets=All")),
                            (2, 0x0B)))
add("login-target-only-key", "RFC 7143 13.9 TargetPortalGroupTag (target to initiator "
    "only): sent by the initiator, an initiator error 02/00",
    lambda c: login_refused(c, login_request(login_keys(c, "TargetPortalGroupTag=1")),
                            (2, 0x00)))
add("login-security-key-in-operational", "RFC 7143 6.3 / 12.1: AuthMethod belongs to the "
    "security stage; in the operational stage it is an initiator error 02/00",
    lambda c: login_refused(c, login_request(login_keys(c, "AuthMethod=None")), (2, 0x00)))
add("login-chap-only", "RFC 7143 12.1 / 11.13.5: AuthMethod=CHAP alone, which the "
    "target does not offer, cannot be downgraded: 02/01",
    lambda c: login_refused(c, login_request(login_keys(c, "AuthMethod=CHAP"),
                                             flags=SEC_TO_OP), (2, 0x01)))

# duplicate keys (6.2: "MUST be detected ... Login reject (initiator error)")
for _key in ("InitiatorName=iqn.2026-11.local.test:other", "MaxBurstLength=65536",
             "HeaderDigest=None", "TargetName=iqn.2026-11.local.scsi-target:default",
             "X-com.example.vendor=1"):
    add(f"login-duplicate-{_key.split('=')[0]}", "RFC 7143 6.2: a key sent twice in one "
        "negotiation is an initiator error: 02/00",
        lambda c, k=_key: login_refused(c, login_request(
            login_keys(c, k, k) if not k.startswith(("InitiatorName", "TargetName"))
            else login_keys(c, k)), (2, 0x00)))

# malformed text (6.1: UTF-8 key=value pairs, NUL-terminated, key names up to 63 bytes)
for _label, _raw in (("non-utf8-key", b"\xff\xfe=1\0"), ("non-utf8-value",
                     b"X-a=\xc3\x28\0"), ("overlong-utf8-key", b"\xc0\xafX=1\0"),
                     ("no-equals", b"JustAName\0"), ("empty-key", b"=value\0"),
                     ("key-64-bytes", b"X-" + b"k" * 62 + b"=1\0"),
                     ("no-final-nul", b"X-a=1"), ("bad-key-chars", b"Max Burst=1\0")):
    add(f"login-text-{_label}", "RFC 7143 6.1: text is UTF-8 key=value pairs each ended "
        "by a NUL, key names 1..63 characters of the name set; anything else is a "
        "protocol error: 02/00",
        lambda c, raw=_raw: login_refused(c, login_request(login_keys(c) + raw), (2, 0x00)))

# values answered Reject / NotUnderstood, the login goes on (6.2, 6.2.1, 13)
for _key, _answer in (("MaxBurstLength=100", "Reject"),
                      ("MaxBurstLength=99999999999999999999999", "Reject"),
                      ("FirstBurstLength=0x", "Reject"), ("ErrorRecoveryLevel=3", "Reject"),
                      ("HeaderDigest=Bogus", "Reject"), ("InitialR2T=Maybe", "Reject"),
                      ("MaxBurstLength=" + "9" * 300, "Reject"),
                      ("NoSuchKey=1", "NotUnderstood"), ("X-vendor.key=1", "NotUnderstood")):
    add(f"login-answer-{_key[:24]}-{len(_key)}", "RFC 7143 6.2 / 6.2.1: a value out of "
        "range or of the wrong syntax is answered Reject, an unknown key NotUnderstood; "
        "the login continues",
        lambda c, k=_key, a=_answer: _assert_answer(c, k, a))


def _assert_answer(c: Ctx, key: str, answer: str) -> None:
    got = login_answers(c, key)
    assert got.get(key.split("=")[0]) == answer, got


def _long_login(c: Ctx, text: bytes) -> tuple[tuple[int, int], dict[str, str]]:
    """A login whose text spans PDUs (C=1, 6.2 / 11.12.2); the target's status and
    every key of its answer, taken in pieces when it answers with C=1."""
    isid = next(_isids)
    pieces = [text[i:i + LOGIN_MRDSL] for i in range(0, len(text), LOGIN_MRDSL)]
    answer = b""
    with connect(c) as s:
        s.settimeout(10)
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            s.sendall(login_request(piece, flags=OP_TO_FFP if last else (1 << 2 | 3 | C_BIT),
                                    isid=isid, itt=1))
            status = login_status_and_text(s)
            if status[0]:
                return status[:2], {}
            answer += status[2]
            if not last:
                continue
            while status[3] & C_BIT:  # the answer goes on: empty requests fetch the rest
                s.sendall(login_request(b"", flags=OP_TO_FFP, isid=isid, itt=1))
                status = login_status_and_text(s)
                if status[0]:
                    return status[:2], {}
                answer += status[2]
        return (0, 0), parse_keys(answer)


def login_status_and_text(s: socket.socket) -> tuple[int, int, bytes, int]:
    got = recv_pdu(s)
    assert got is not None, "closed without a Login Response"
    bhs, data = got
    assert bhs.opcode == Op.LOGIN_RESPONSE
    return bhs.w36 >> 24, bhs.w36 >> 16 & 0xFF, data, bhs.flags


@case("login-10000-unknown-keys", "RFC 7143 6.2 (each unknown key answered "
      "NotUnderstood) / 11.12.2 (text across PDUs with C): 10,000 keys are either all "
      "answered or refused with 02/00 or 03/02 (out of resources); never a hang")
def _(c: Ctx) -> None:
    text = login_keys(c) + b"".join(b"X-k%05d=1\0" % i for i in range(10000))
    status, answer = _long_login(c, text)
    assert status in ((0, 0), (2, 0), (3, 2)), status
    if status == (0, 0):
        assert sum(1 for k in answer if k.startswith("X-k")) == 10000
        assert set(v for k, v in answer.items() if k.startswith("X-k")) == {"NotUnderstood"}


@case("login-10000-duplicate-keys", "RFC 7143 6.2: the same key 10,000 times across PDUs "
      "is a duplicate: 02/00 (or 03/02 when bounded first)")
def _(c: Ctx) -> None:
    text = login_keys(c) + b"X-dup=1\0" * 10000
    status, _ = _long_login(c, text)
    assert status in ((2, 0), (3, 2)), status


@case("login-text-spanning-pdus-ok", "RFC 7143 11.12.2: a login split across PDUs with C=1 "
      "(a key cut mid-name) is put back together and completes")
def _(c: Ctx) -> None:
    text = login_keys(c, "X-p=" + "p" * 200)
    isid = next(_isids)
    with connect(c) as s:
        s.sendall(login_request(text[:37], flags=1 << 2 | 3 | C_BIT, isid=isid))
        assert login_status_and_text(s)[:2] == (0, 0)
        s.sendall(login_request(text[37:], isid=isid))
        st = login_status_and_text(s)
        assert st[:2] == (0, 0) and st[3] & T_BIT


@case("login-isid-changes-mid-login", "RFC 7143 11.12.5 / 6.3: the ISID must not change "
      "within a login: 02/00")
def _(c: Ctx) -> None:
    with connect(c) as s:
        s.sendall(login_request(login_keys(c), flags=0 << 2 | 1, isid=0x400000000AAA))
        assert login_status_and_text(s)[:2] == (0, 0)
        s.sendall(login_request(b"", flags=OP_TO_FFP, isid=0x400000000BBB))
        assert login_status_and_text(s)[:2] == (2, 0)
        assert drain(s)[1]


for _op in (Op.SCSI_COMMAND, Op.NOP_OUT, Op.TEXT_REQUEST, Op.LOGOUT_REQUEST, Op.DATA_OUT):
    add(f"non-login-pdu-during-login-{int(_op):02x}", "RFC 7143 6.1 / 11.12 (spdk#3927): "
        "after a first Login Request, a non-login PDU before the login is over ends the "
        "connection (or is refused 02/0B); no session results",
        lambda c, op=int(_op): _non_login_during_login(c, op))


def _non_login_during_login(c: Ctx, op: int) -> None:
    isid = next(_isids)
    with connect(c) as s:
        s.sendall(login_request(login_keys(c), flags=0 << 2 | 1, isid=isid))  # T=0: stays
        assert login_status_and_text(s)[:2] == (0, 0)
        s.sendall(pdu.pack(op, 0x80, itt=2, w24=0))
        got, closed = drain(s, quiet=5.0)
        assert closed, got
        for bhs, _ in got:
            assert bhs.opcode == Op.LOGIN_RESPONSE and bhs.w36 >> 24 == 2


# -- full feature phase: opcodes (11.2.1.2, 11.17.1)

for _op in (*range(0x07, 0x10), *range(0x11, 0x1C), 0x1C, 0x1D, 0x1F):
    add(f"ffp-reserved-opcode-{_op:02x}", "RFC 7143 11.2.1.2 opcodes / 11.17.1: an opcode we "
        "do not support is Rejected 05h (command not supported); the connection goes on",
        lambda c, op=_op: _reserved_opcode(c, op))

for _op in (Op.NOP_IN, Op.SCSI_RESPONSE, Op.TASK_MGMT_RESPONSE, Op.TEXT_RESPONSE,
            Op.DATA_IN, Op.R2T, Op.REJECT, 0x27, 0x3C):
    add(f"ffp-target-opcode-{int(_op):02x}", "RFC 7143 11.2.1.2 (target opcodes 20h-3Fh) / "
        "11.17.1: a target opcode from an initiator is not a request we support: Reject 05h",
        lambda c, op=int(_op): _reserved_opcode(c, op))


def _reserved_opcode(c: Ctx, op: int) -> None:
    ini = rogue(c)
    try:
        expect_reject(ini, pdu.pack(op | 0x40, 0x80, itt=9, w24=ini.cmdsn,
                                    w28=ini.exp_stat_sn),
                      reasons={RejectReason.COMMAND_NOT_SUPPORTED}, closes=False)
    finally:
        ini.close()


@case("ffp-second-login-request", "RFC 7143 11.12 / 11.17.1: a Login Request in full "
      "feature phase is a protocol error: Reject 04h (the connection may end)")
def _(c: Ctx) -> None:
    ini = rogue(c)
    try:
        text = login_keys(c)
        header = pdu.login_request(flags=OP_TO_FFP, dsl=len(text), isid=ini.isid, itt=77,
                                   cmdsn=ini.cmdsn, exp_statsn=ini.exp_stat_sn)
        expect_reject(ini, header, text, reasons={RejectReason.PROTOCOL_ERROR}, closes=None)
    finally:
        ini.close()


for _n in (1, 30, 47):
    add(f"ffp-truncated-bhs-{_n}-then-eof", "RFC 7143 11.2: a full feature connection that "
        "ends inside a BHS is dropped; other sessions go on",
        lambda c, n=_n: _truncated_ffp(c, n))


def _truncated_ffp(c: Ctx, n: int) -> None:
    ini = rogue(c)
    try:
        ini.send_raw(pdu.nop_out(itt=5, cmdsn=ini.cmdsn, exp_statsn=ini.exp_stat_sn,
                                 immediate=True)[:n])
        assert ini.sock is not None
        ini.sock.shutdown(socket.SHUT_WR)
        assert pdus_then(ini, quiet=5.0)[1]
    finally:
        ini.close()


@case("ffp-data-length-max-recv-plus-1", "RFC 7143 13.12: a data segment one byte over "
      "our MaxRecvDataSegmentLength: Reject, then the connection ends")
def _(c: Ctx) -> None:
    ini = rogue(c)
    try:
        mrdsl = ini.max_send
        header = pdu.nop_out(immediate=True, dsl=mrdsl + 1, itt=5, cmdsn=ini.cmdsn,
                             exp_statsn=ini.exp_stat_sn)
        expect_closed(ini, header, reject={RejectReason.PROTOCOL_ERROR,
                                           RejectReason.INVALID_PDU_FIELD})
    finally:
        ini.close()


@case("ffp-nop-ping-at-max-recv", "RFC 7143 11.18 / 11.19: a ping of exactly "
      "MaxRecvDataSegmentLength bytes is answered with the same data (the boundary)")
def _(c: Ctx) -> None:
    ini = rogue(c)
    try:
        payload = bytes(range(256)) * (ini.max_send // 256)
        assert ini.nop(payload) == payload
    finally:
        ini.close()


@case("ffp-data-length-lies-then-eof", "RFC 7143 11.2.1.5: a NOP-Out announcing 4096 bytes "
      "of data, sending 100, then EOF: dropped")
def _(c: Ctx) -> None:
    ini = rogue(c)
    try:
        ini.send_raw(pdu.nop_out(immediate=True, dsl=4096, itt=5, cmdsn=ini.cmdsn,
                                 exp_statsn=ini.exp_stat_sn) + bytes(100))
        assert ini.sock is not None
        ini.sock.shutdown(socket.SHUT_WR)
        assert pdus_then(ini, quiet=5.0)[1]
    finally:
        ini.close()


@case("ffp-ahs-length-lies-then-eof", "RFC 7143 11.2.1.4: TotalAHSLength 1020 bytes "
      "announced on a SCSI Command, 8 sent, then EOF: dropped")
def _(c: Ctx) -> None:
    ini = rogue(c)
    try:
        head = bytearray(pdu.scsi_command(flags=0x81, dsl=0, lun=bytes(8), itt=5, edtl=0,
                                          cmdsn=ini.cmdsn, exp_statsn=ini.exp_stat_sn,
                                          cdb=cdbs.TEST_UNIT_READY))
        head[4] = 0xFF
        ini.send_raw(bytes(head) + bytes(8))
        assert ini.sock is not None
        ini.sock.shutdown(socket.SHUT_WR)
        assert pdus_then(ini, quiet=5.0)[1]
    finally:
        ini.close()


def _ahs(ahs_type: int, body: bytes, length: int | None = None) -> bytes:
    """One AHS (RFC 7143 11.2.2): AHSLength (2 bytes: the length of what follows AHSType,
    the AHS-specific byte included, here `length` when given), AHSType, an AHS-specific
    byte (reserved for type 1), then the body, padded to 4 bytes."""
    n = len(body) if length is None else length
    raw = struct.pack(">HBB", n, ahs_type, 0) + body
    return raw + pdu.padding(len(raw))


@case("ffp-ahs-length-beyond-total", "RFC 7143 11.2.2: an AHS whose AHSLength reaches past "
      "TotalAHSLength is inconsistent (a format error, 7.6): Reject and/or the "
      "connection ends")
def _(c: Ctx) -> None:
    ini = rogue_ready(c)
    try:
        ahs = _ahs(1, bytes([0xA0]) * 16, length=200)  # Extended CDB AHS, length lies
        head = bytearray(pdu.scsi_command(flags=0x81, dsl=0, lun=bytes(8), itt=5, edtl=0,
                                          cmdsn=ini.cmdsn, exp_statsn=ini.exp_stat_sn,
                                          cdb=bytes([0x7F]) + bytes(15)))
        head[4] = len(ahs) // 4
        ini.send_pdu(bytes(head) + ahs)
        got, closed = pdus_then(ini, until=lambda g: any(
            b.opcode in (Op.SCSI_RESPONSE, Op.REJECT) for b, _ in g))
        rejects = [b for b, _ in got if b.opcode == Op.REJECT]
        assert closed or rejects, got
        for b in rejects:
            assert b.b2 in (RejectReason.PROTOCOL_ERROR, RejectReason.INVALID_PDU_FIELD)
        assert not [b for b, _ in got if b.opcode == Op.SCSI_RESPONSE and b.b3 == GOOD]
    finally:
        ini.close()


# -- full feature phase: CmdSN (4.2.2.1: outside [ExpCmdSN, MaxCmdSN] silently ignored)

for _label, _delta in (("minus-1", -1), ("plus-2-31", 1 << 31), ("plus-2-31-minus-1",
                       (1 << 31) - 1), ("plus-window", 4096), ("minus-2-31", -(1 << 31) + 1)):
    add(f"cmdsn-out-of-window-{_label}", "RFC 7143 4.2.2.1: a non-immediate command with "
        "CmdSN outside [ExpCmdSN, MaxCmdSN] is silently ignored; the session goes on",
        lambda c, d=_delta: _cmdsn_outside(c, d))


def _cmdsn_outside(c: Ctx, delta: int) -> None:
    ini = rogue_ready(c)
    try:
        head = pdu.scsi_command(flags=pdu.F_FINAL | pdu.F_READ | 1, dsl=0, lun=bytes(8),
                                itt=0x6001, edtl=c.block_size,
                                cmdsn=(ini.cmdsn + delta) & 0xFFFFFFFF,
                                exp_statsn=ini.exp_stat_sn, cdb=cdbs.read10(0, 1))
        ini.send_pdu(head)
        got, closed = pdus_then(ini)
        assert not closed and not [b for b, _ in got if b.itt == 0x6001], got
        assert ini.command(cdbs.read10(0, 1), read=c.block_size).status == GOOD
    finally:
        ini.close()


@case("cmdsn-immediate-any-cmdsn", "RFC 7143 4.2.2.1 / 3.2.2.1: an immediate command is "
      "not ordered by CmdSN: executed even with a CmdSN far from ExpCmdSN")
def _(c: Ctx) -> None:
    ini = rogue_ready(c)
    try:
        head = pdu.scsi_command(immediate=True, flags=pdu.F_FINAL | 1, dsl=0, lun=bytes(8),
                                itt=0x6002, edtl=0, cmdsn=(ini.cmdsn + 99999) & 0xFFFFFFFF,
                                exp_statsn=ini.exp_stat_sn, cdb=cdbs.TEST_UNIT_READY)
        ini.send_pdu(head)
        assert ini.sock is not None
        got = recv_pdu(ini.sock)
        assert got is not None and got[0].opcode == Op.SCSI_RESPONSE and got[0].b3 == GOOD
    finally:
        ini.close()


@case("itt-reserved-ffffffff", "RFC 7143 11.2.1.8 / 11.17.1: ITT ffffffff is reserved; a "
      "SCSI Command with it is Rejected 09h (invalid PDU field)")
def _(c: Ctx) -> None:
    ini = rogue_ready(c)
    try:
        head = pdu.scsi_command(flags=pdu.F_FINAL | 1, dsl=0, lun=bytes(8), itt=RESERVED_TAG,
                                edtl=0, cmdsn=ini.cmdsn, exp_statsn=ini.exp_stat_sn,
                                cdb=cdbs.TEST_UNIT_READY)
        expect_reject(ini, head, reasons={RejectReason.INVALID_PDU_FIELD}, closes=None)
    finally:
        ini.close()


@case("itt-in-use", "RFC 7143 11.17.1: a command whose ITT is that of a task still in "
      "progress is Rejected (07h task in progress, or 09h invalid PDU field)")
def _(c: Ctx) -> None:
    ini = rogue_ready(c)
    try:
        # a WRITE waiting for its data (InitialR2T=Yes: an R2T comes, we do not answer)
        w = pdu.scsi_command(flags=pdu.F_FINAL | pdu.F_WRITE | 1, dsl=0, lun=bytes(8),
                             itt=0x6100, edtl=c.block_size, cmdsn=ini.cmdsn,
                             exp_statsn=ini.exp_stat_sn, cdb=cdbs.write10(0, 1))
        ini.cmdsn += 1
        ini.send_pdu(w)
        assert ini.sock is not None
        got = recv_pdu(ini.sock)
        assert got is not None and got[0].opcode == Op.R2T
        dup = pdu.scsi_command(flags=pdu.F_FINAL | 1, dsl=0, lun=bytes(8), itt=0x6100,
                               edtl=0, cmdsn=ini.cmdsn, exp_statsn=ini.exp_stat_sn,
                               cdb=cdbs.TEST_UNIT_READY)
        expect_reject(ini, dup, reasons={RejectReason.TASK_IN_PROGRESS,
                                         RejectReason.INVALID_PDU_FIELD}, closes=None)
    finally:
        ini.close()


# -- full feature phase: write data (11.7, 11.8; ERL 0 7.1.5)

def _write_waiting(c: Ctx, ini: Initiator, blocks: int = 2, itt: int = 0x6200) -> Bhs:
    """A WRITE(10) of `blocks` blocks without immediate data; the target's R2T."""
    w = pdu.scsi_command(flags=pdu.F_FINAL | pdu.F_WRITE | 1, dsl=0, lun=bytes(8), itt=itt,
                         edtl=blocks * c.block_size, cmdsn=ini.cmdsn,
                         exp_statsn=ini.exp_stat_sn, cdb=cdbs.write10(100, blocks))
    ini.cmdsn += 1
    ini.send_pdu(w)
    assert ini.sock is not None
    got = recv_pdu(ini.sock)
    assert got is not None and got[0].opcode == Op.R2T, got
    return got[0]


def _data_out(ini: Initiator, r2t: Bhs, *, itt: int | None = None, ttt: int | None = None,
              datasn: int = 0, offset: int = 0, length: int = 512,
              final: bool = True) -> bytes:
    return pdu.data_out(final=final, dsl=length, lun=bytes(8),
                        itt=r2t.itt if itt is None else itt,
                        ttt=r2t.ttt if ttt is None else ttt, exp_statsn=ini.exp_stat_sn,
                        datasn=datasn, buffer_offset=offset)


def _data_fails(c: Ctx, reason: int, sense: set[tuple[int, int]], **kw) -> None:
    """A Data-Out out of sequence or range: Reject `reason` and the command ends CHECK
    CONDITION, ABORTED COMMAND with `asc` (11.4.7.2, SAM-5 / SPC-4 table of ASCs)."""
    ini = rogue_ready(c)
    try:
        r2t = _write_waiting(c, ini)
        length = kw.pop("length", 512)
        ini.send_pdu(_data_out(ini, r2t, length=length, **kw), bytes(length))
        got, _ = pdus_then(ini, until=lambda g: any(b.opcode == Op.SCSI_RESPONSE
                                                    for b, _ in g))
        rejects = [b for b, _ in got if b.opcode == Op.REJECT]
        assert rejects and rejects[0].b2 == reason, got
        (b, d), = [(b, d) for b, d in got if b.opcode == Op.SCSI_RESPONSE]
        key, asc, ascq = sense_of(d[2:2 + struct.unpack_from(">H", d)[0]])
        assert b.b3 == CHECK_CONDITION and key == ABORTED_COMMAND and (asc, ascq) in sense
    finally:
        ini.close()


TTT_ASC = {(0x4B, 0x01)}  # INVALID TARGET PORT TRANSFER TAG RECEIVED (SPC-4; 11.4.7.2)
PHASE_ASC = {(0x4B, 0x00)}  # DATA PHASE ERROR
OFFSET_ASC = {(0x4B, 0x05), (0x4B, 0x02)}  # DATA OFFSET ERROR, TOO MUCH WRITE DATA

add("data-out-unknown-ttt", "RFC 7143 11.7.4 / 11.17.1: a Data-Out whose TTT is no R2T's: "
    "Reject 09h; the WRITE ends ABORTED COMMAND, INVALID TARGET PORT TRANSFER TAG "
    "RECEIVED (4Bh/01h, 11.4.7.2)",
    lambda c: _data_fails(c, RejectReason.INVALID_PDU_FIELD, TTT_ASC, ttt=0x12345))
add("data-out-datasn-gap", "RFC 7143 11.7.5 DataSN / 7.1.5 (ERL 0): DataSN 1 where 0 is "
    "due: Reject 04h, the WRITE ends ABORTED COMMAND, DATA PHASE ERROR (4Bh/00h)",
    lambda c: _data_fails(c, RejectReason.PROTOCOL_ERROR, PHASE_ASC, datasn=1))
add("data-out-datasn-far", "RFC 7143 11.7.5: DataSN ffffffff: Reject 04h, ABORTED COMMAND, "
    "DATA PHASE ERROR (4Bh/00h)",
    lambda c: _data_fails(c, RejectReason.PROTOCOL_ERROR, PHASE_ASC, datasn=0xFFFFFFFF))
add("data-out-offset-beyond-edtl", "RFC 7143 11.7.6 Buffer Offset / 11.8: data at an offset "
    "past the EDTL and the R2T: Reject 09h, ABORTED COMMAND, DATA OFFSET ERROR (4Bh/05h) "
    "or TOO MUCH WRITE DATA (4Bh/02h)",
    lambda c: _data_fails(c, RejectReason.INVALID_PDU_FIELD, OFFSET_ASC, offset=1 << 20))
add("data-out-length-beyond-r2t", "RFC 7143 11.8.4 Desired Data Transfer Length: more data "
    "than the R2T asked for (beyond the EDTL): Reject 09h, ABORTED COMMAND 4Bh/05h or "
    "4Bh/02h", lambda c: _data_fails(c, RejectReason.INVALID_PDU_FIELD, OFFSET_ASC,
                                     length=2048))
add("data-out-offset-out-of-order", "RFC 7143 13.19 DataPDUInOrder=Yes: a Data-Out at "
    "offset 512 before offset 0: Reject 09h, ABORTED COMMAND 4Bh/05h",
    lambda c: _data_fails(c, RejectReason.INVALID_PDU_FIELD, OFFSET_ASC, offset=512))


@case("data-out-unknown-itt-nonzero-ttt", "RFC 7143 11.7 / 11.5.1: a Data-Out for an ITT "
      "the target does not have, with a TTT it never issued: discarded, the session goes "
      "on")
def _(c: Ctx) -> None:
    ini = rogue_ready(c)
    try:
        ini.send_pdu(pdu.data_out(final=True, dsl=512, lun=bytes(8), itt=0x4242,
                                  ttt=0x4242, exp_statsn=ini.exp_stat_sn, datasn=0,
                                  buffer_offset=0), bytes(512))
        assert ini.nop(b"alive") == b"alive"
    finally:
        ini.close()


@case("data-out-after-all-data", "RFC 7143 11.7 / 11.17.1: a Data-Out for a WRITE whose "
      "data is all in: Reject 04h, the WRITE itself completes GOOD")
def _(c: Ctx) -> None:
    ini = rogue_ready(c)
    try:
        r2t = _write_waiting(c, ini, blocks=1, itt=0x6300)
        ini.send_pdu(_data_out(ini, r2t, length=c.block_size), bytes(c.block_size))
        ini.send_pdu(_data_out(ini, r2t, datasn=1, length=c.block_size), bytes(c.block_size))
        got, _ = pdus_then(ini, until=lambda g: any(b.opcode == Op.SCSI_RESPONSE
                                                    for b, _ in g))
        ops = [(b.opcode, b.b2 if b.opcode == Op.REJECT else b.b3) for b, _ in got]
        assert (Op.SCSI_RESPONSE, GOOD) in ops, ops
        assert not [o for o in ops if o[0] == Op.REJECT and o[1] != RejectReason.PROTOCOL_ERROR]
    finally:
        ini.close()


@case("unsolicited-data-with-initial-r2t", "RFC 7143 13.13 InitialR2T=Yes: no unsolicited "
      "Data-Out; one with TTT ffffffff is out of sequence: Reject, the WRITE aborted")
def _(c: Ctx) -> None:
    ini = rogue_ready(c)
    try:
        r2t = _write_waiting(c, ini, blocks=2, itt=0x6400)
        ini.send_pdu(_data_out(ini, r2t, ttt=RESERVED_TAG, length=512), bytes(512))
        got, _ = pdus_then(ini, until=lambda g: any(b.opcode in (Op.SCSI_RESPONSE, Op.REJECT)
                                                    for b, _ in g))
        rejects = [b for b, _ in got if b.opcode == Op.REJECT]
        assert rejects and rejects[0].b2 in (RejectReason.PROTOCOL_ERROR,
                                             RejectReason.INVALID_PDU_FIELD), got
    finally:
        ini.close()


@case("immediate-data-beyond-edtl", "RFC 7143 11.3 / 13.14: immediate data longer than the "
      "EDTL: a protocol error: Reject, the connection ends")
def _(c: Ctx) -> None:
    ini = rogue_ready(c)
    try:
        head = pdu.scsi_command(flags=pdu.F_FINAL | pdu.F_WRITE | 1, dsl=1024, lun=bytes(8),
                                itt=0x6500, edtl=512, cmdsn=ini.cmdsn,
                                exp_statsn=ini.exp_stat_sn, cdb=cdbs.write10(0, 1))
        expect_closed(ini, head, bytes(1024), reject={RejectReason.PROTOCOL_ERROR,
                                                      RejectReason.INVALID_PDU_FIELD})
    finally:
        ini.close()


@case("immediate-data-without-w-bit", "RFC 7143 11.3.1: a data segment on a command "
      "without W is inconsistent: Reject, the connection ends")
def _(c: Ctx) -> None:
    ini = rogue_ready(c)
    try:
        head = pdu.scsi_command(flags=pdu.F_FINAL | 1, dsl=512, lun=bytes(8), itt=0x6501,
                                edtl=512, cmdsn=ini.cmdsn, exp_statsn=ini.exp_stat_sn,
                                cdb=cdbs.TEST_UNIT_READY)
        expect_closed(ini, head, bytes(512), reject={RejectReason.PROTOCOL_ERROR,
                                                     RejectReason.INVALID_PDU_FIELD})
    finally:
        ini.close()


@case("write-edtl-4gib", "RFC 7143 11.3.4 / issue 15: a WRITE with EDTL ffffffff is refused "
      "before any buffer: Reject or CHECK CONDITION, never 4 GiB held")
def _(c: Ctx) -> None:
    ini = rogue_ready(c)
    try:
        head = pdu.scsi_command(flags=pdu.F_FINAL | pdu.F_WRITE | 1, dsl=0, lun=bytes(8),
                                itt=0x6502, edtl=0xFFFFFFFF, cmdsn=ini.cmdsn,
                                exp_statsn=ini.exp_stat_sn, cdb=cdbs.write16(0, 0xFFFFFFFF))
        ini.cmdsn += 1
        ini.send_pdu(head)
        got, _ = pdus_then(ini, until=lambda g: any(b.opcode in (Op.SCSI_RESPONSE, Op.REJECT)
                                                    for b, _ in g))
        kinds = {b.opcode for b, _ in got}
        assert Op.R2T not in kinds or Op.SCSI_RESPONSE in kinds
        assert got and (Op.REJECT in kinds or any(
            b.opcode == Op.SCSI_RESPONSE and b.b3 == CHECK_CONDITION for b, _ in got)), got
    finally:
        ini.close()


# -- EDTL against the CDB's transfer length (11.4.5.1 residuals; SAM-5 5.4.3)

@case("read-edtl-less-than-cdb", "RFC 7143 11.4.5.1: READ(10) of 8 blocks with EDTL of 1 "
      "block: GOOD, EDTL bytes sent, O bit and Residual Count = 7 blocks")
def _(c: Ctx) -> None:
    ini = rogue_ready(c)
    try:
        bhs, _, got = scsi(ini, cdbs.read10(0, 8), edtl=c.block_size, read=True)
        assert bhs.b3 == GOOD and len(data_in_bytes(got)) == c.block_size
        assert residual(bhs) == (True, False, 7 * c.block_size)
    finally:
        ini.close()


@case("read-edtl-more-than-cdb", "RFC 7143 11.4.5.1: READ(10) of 1 block with EDTL of 4 "
      "blocks: GOOD, U bit and Residual Count = 3 blocks")
def _(c: Ctx) -> None:
    ini = rogue_ready(c)
    try:
        bhs, _, got = scsi(ini, cdbs.read10(0, 1), edtl=4 * c.block_size, read=True)
        assert bhs.b3 == GOOD and len(data_in_bytes(got)) == c.block_size
        assert residual(bhs) == (False, True, 3 * c.block_size)
    finally:
        ini.close()


@case("read-edtl-zero", "RFC 7143 11.4.5.1: READ(10) of 1 block with EDTL 0 (and no R bit): "
      "no Data-In, O bit, Residual Count = 1 block (or CHECK CONDITION)")
def _(c: Ctx) -> None:
    ini = rogue_ready(c)
    try:
        bhs, _, got = scsi(ini, cdbs.read10(0, 1), edtl=0)
        assert not data_in_bytes(got)
        if bhs.b3 == GOOD:
            assert residual(bhs) == (True, False, c.block_size)
        else:
            assert bhs.b3 == CHECK_CONDITION
    finally:
        ini.close()


@case("read-edtl-not-block-multiple", "RFC 7143 11.4.5.1: READ(10) of 1 block with EDTL 100: "
      "GOOD, 100 bytes, O bit, residual block - 100")
def _(c: Ctx) -> None:
    ini = rogue_ready(c)
    try:
        bhs, _, got = scsi(ini, cdbs.read10(0, 1), edtl=100, read=True)
        assert bhs.b3 == GOOD and len(data_in_bytes(got)) == 100
        assert residual(bhs) == (True, False, c.block_size - 100)
    finally:
        ini.close()


@case("write-edtl-less-than-cdb", "RFC 7143 11.4.5.1 / SAM-5: WRITE(10) of 2 blocks with "
      "EDTL of 1 block: the data the command needs never comes: not GOOD without the O "
      "bit (O bit with residual 1 block, or CHECK CONDITION)")
def _(c: Ctx) -> None:
    ini = rogue_ready(c)
    try:
        data = bytes(c.block_size)
        bhs, _, got = scsi(ini, cdbs.write10(200, 2), edtl=c.block_size, write=True,
                           data=data)
        if bhs.b3 == GOOD:
            assert residual(bhs) == (True, False, c.block_size)
        else:
            assert bhs.b3 == CHECK_CONDITION
    finally:
        ini.close()


@case("write-edtl-more-than-cdb", "RFC 7143 11.4.5.1: WRITE(10) of 1 block with EDTL of "
      "2 blocks, every byte the target asks for sent: GOOD with the U bit and Residual "
      "Count 1 block (what the command did not need), or CHECK CONDITION")
def _(c: Ctx) -> None:
    ini = rogue_ready(c)
    try:
        n = c.block_size
        itt = 0x6600
        head = pdu.scsi_command(flags=pdu.F_FINAL | pdu.F_WRITE | 1, dsl=n, lun=bytes(8),
                                itt=itt, edtl=2 * n, cmdsn=ini.cmdsn,
                                exp_statsn=ini.exp_stat_sn, cdb=cdbs.write10(200, 1))
        ini.cmdsn += 1
        ini.send_pdu(head, bytes(n))
        assert ini.sock is not None
        while True:
            p = recv_pdu(ini.sock)
            assert p is not None, "closed"
            bhs = p[0]
            if bhs.opcode == Op.R2T and bhs.itt == itt:  # 11.8: send what it asks for
                length = bhs.w44
                ini.send_pdu(pdu.data_out(final=True, dsl=length, lun=bytes(8), itt=itt,
                                          ttt=bhs.ttt, exp_statsn=ini.exp_stat_sn,
                                          datasn=0, buffer_offset=bhs.w40), bytes(length))
                continue
            if bhs.opcode == Op.SCSI_RESPONSE and bhs.itt == itt:
                break
        if bhs.b3 == GOOD:
            assert residual(bhs) == (False, True, n)
        else:
            assert bhs.b3 == CHECK_CONDITION
    finally:
        ini.close()


# -- CDBs: LBA + length past 2^64 and the capacity (SBC-4 4.5, 5.x: LBA OUT OF RANGE 21h/00h)

MAX_LBA = (1 << 64) - 1


def _read16(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBQIBB", 0x88, 0, lba, blocks, 0, 0)


def _verify16(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBQIBB", 0x8F, 0, lba, blocks, 0, 0)


def _sync16(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBQIBB", 0x91, 0, lba, blocks, 0, 0)


def _prefetch16(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBQIBB", 0x90, 0, lba, blocks, 0, 0)


for _label, _cdb_fn, _kw in (
        ("read16-max-lba-2", lambda c: _read16(MAX_LBA, 2), "read"),
        ("read16-max-lba-1", lambda c: _read16(MAX_LBA, 1), "read"),
        ("read16-wrap-to-zero", lambda c: _read16(MAX_LBA - 1, 3), "read"),
        ("read16-capacity", lambda c: _read16(c.blocks, 1), "read"),
        ("read16-last-plus-2", lambda c: _read16(c.blocks - 1, 2), "read"),
        ("read10-max", lambda c: cdbs.read10(0xFFFFFFFF, 0xFFFF), "read"),
        ("write16-max-lba-2", lambda c: cdbs.write16(MAX_LBA, 2), "write"),
        ("write16-wrap", lambda c: cdbs.write16(MAX_LBA - 1, 4), "write"),
        ("write10-capacity", lambda c: cdbs.write10(c.blocks, 1), "write"),
        ("verify16-max", lambda c: _verify16(MAX_LBA, 2), "none"),
        ("sync-cache16-max", lambda c: _sync16(MAX_LBA, 2), "none"),
        ("prefetch16-max", lambda c: _prefetch16(MAX_LBA, 2), "none"),
        ("write-same16-max", lambda c: cdbs.write_same16(MAX_LBA, 2), "write1"),
        ("write-same16-wrap", lambda c: cdbs.write_same16(MAX_LBA - 1, 8), "write1"),
        ("compare-and-write-max", lambda c: cdbs.compare_and_write(MAX_LBA, 1), "write2"),
):
    add(f"lba-overflow-{_label}", "SBC-4 4.5 / the command's clause (5.17 READ(16), 5.16 "
        "READ(10), 5.40/5.38 WRITE, 5.34 VERIFY(16), 5.25 SYNCHRONIZE CACHE(16), 5.11 "
        "PRE-FETCH(16), 5.45 WRITE SAME(16), 5.3 COMPARE AND WRITE): LBA + length beyond "
        "the capacity (or past 2^64): CHECK CONDITION, ILLEGAL REQUEST, LOGICAL BLOCK "
        "ADDRESS OUT OF RANGE (21h/00h)",
        lambda c, f=_cdb_fn, k=_kw: _lba_out_of_range(c, f(c), k))


def _lba_out_of_range(c: Ctx, cdb: bytes, kind: str) -> None:
    ini = rogue_ready(c)
    try:
        n = c.block_size
        if kind == "read":
            expect_check(ini, cdb, ILLEGAL_REQUEST, 0x21, edtl=2 * n, read=True)
        elif kind in ("write", "write1"):
            expect_check(ini, cdb, ILLEGAL_REQUEST, 0x21, edtl=n, write=True, data=bytes(n))
        elif kind == "write2":
            expect_check(ini, cdb, ILLEGAL_REQUEST, 0x21, edtl=2 * n, write=True,
                         data=bytes(2 * n))
        else:
            expect_check(ini, cdb, ILLEGAL_REQUEST, 0x21)
    finally:
        ini.close()


@case("unmap-descriptor-max-lba", "SBC-4 5.30 UNMAP: a descriptor whose LBA + NUMBER OF "
      "LOGICAL BLOCKS passes the capacity: CHECK CONDITION, ILLEGAL REQUEST, 21h/00h")
def _(c: Ctx) -> None:
    ini = rogue_ready(c)
    try:
        # SBC-4 6.6.4: LBPU (byte 5 bit 7 of the Logical Block Provisioning VPD page) says
        # whether UNMAP is supported; if not, the opcode is invalid (20h/00h).
        vpd = ini.command(bytes([0x12, 1, 0xB2, 0, 64, 0]), read=64)
        lbpu = vpd.status == GOOD and len(vpd.data) > 5 and bool(vpd.data[5] & 0x80)
        cdb, params = cdbs.unmap([(MAX_LBA, 2)])
        expect_check(ini, cdb, ILLEGAL_REQUEST, 0x21 if lbpu else 0x20, edtl=len(params),
                     write=True, data=params)
    finally:
        ini.close()


# -- allocation lengths of ffffffffh / ffffh (SPC-4 4.2.5.6: the device server returns
#    what it has, up to the ALLOCATION LENGTH; iSCSI sends at most the EDTL, 11.4.5.1)

def _u16(d: bytes, at: int) -> int:
    return int.from_bytes(d[at:at + 2], "big")


def _u32(d: bytes, at: int) -> int:
    return int.from_bytes(d[at:at + 4], "big")


# (label, CDB, its ALLOCATION LENGTH, the smallest parameter data, how long the whole
# parameter data is by its own header: the clause's length field)
ALLOC_CASES: list[tuple[str, bytes, int, int, Callable[[bytes], int]]] = [
    ("report-luns", bytes([0xA0, 0, 0, 0, 0, 0]) + b"\xff" * 4 + bytes(2), 0xFFFFFFFF, 16,
     lambda d: 8 + _u32(d, 0)),  # SPC-4 6.33: LUN LIST LENGTH, bytes 0-3
    ("report-luns-select-2", bytes([0xA0, 0, 2, 0, 0, 0]) + b"\xff" * 4 + bytes(2),
     0xFFFFFFFF, 8, lambda d: 8 + _u32(d, 0)),
    ("read-capacity16", bytes([0x9E, 0x10]) + bytes(8) + b"\xff" * 4 + bytes(2), 0xFFFFFFFF,
     32, lambda d: 32),  # SBC-4 5.20.2: 32 bytes of parameter data
    ("rsoc-all", bytes([0xA3, 0x0C, 0, 0, 0, 0]) + b"\xff" * 4 + bytes(2), 0xFFFFFFFF, 4,
     lambda d: 4 + _u32(d, 0)),  # SPC-4 6.35.2: COMMAND DATA LENGTH
    ("rsoc-one-read10", bytes([0xA3, 0x0C, 1, 0x28, 0, 0]) + b"\xff" * 4 + bytes(2),
     0xFFFFFFFF, 4, lambda d: 4 + _u16(d, 2)),  # 6.35.3: CDB SIZE, bytes 2-3 (CTDP 0)
    ("inquiry-std", bytes([0x12, 0, 0, 0xFF, 0xFF, 0]), 0xFFFF, 36,
     lambda d: 5 + d[4]),  # SPC-4 6.6.2: ADDITIONAL LENGTH, byte 4
    ("inquiry-vpd-00", bytes([0x12, 1, 0x00, 0xFF, 0xFF, 0]), 0xFFFF, 4,
     lambda d: 4 + _u16(d, 2)),  # SPC-4 7.8.1: PAGE LENGTH, bytes 2-3
    ("inquiry-vpd-83", bytes([0x12, 1, 0x83, 0xFF, 0xFF, 0]), 0xFFFF, 4,
     lambda d: 4 + _u16(d, 2)),
    ("inquiry-vpd-b0", bytes([0x12, 1, 0xB0, 0xFF, 0xFF, 0]), 0xFFFF, 4,
     lambda d: 4 + _u16(d, 2)),
    ("mode-sense10-all", bytes([0x5A, 0, 0x3F, 0, 0, 0, 0, 0xFF, 0xFF, 0]), 0xFFFF, 8,
     lambda d: 2 + _u16(d, 0)),  # SPC-4 7.5.5: MODE DATA LENGTH
    ("mode-sense6-all", bytes([0x1A, 0, 0x3F, 0, 0xFF, 0]), 0xFF, 4,
     lambda d: 1 + d[0]),
    ("request-sense", bytes([0x03, 0, 0, 0, 0xFF, 0]), 0xFF, 8,
     lambda d: 8 + d[7]),  # SPC-4 4.5.2 / 4.5.3: ADDITIONAL SENSE LENGTH, byte 7
    ("pr-in-read-keys", bytes([0x5E, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0]), 0xFFFF, 8,
     lambda d: 8 + _u32(d, 4)),  # SPC-4 6.15.2: ADDITIONAL LENGTH, bytes 4-7
    ("pr-in-read-full", bytes([0x5E, 3, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0]), 0xFFFF, 8,
     lambda d: 8 + _u32(d, 4)),  # 6.15.5
    ("get-lba-status", bytes([0x9E, 0x12]) + bytes(8) + b"\xff" * 4 + bytes(2), 0xFFFFFFFF,
     8, lambda d: 4 + _u32(d, 0)),  # SBC-4 5.7.2: PARAMETER DATA LENGTH
]

for _label, _cdb, _alloc_len, _min, _total in ALLOC_CASES:
    for _edtl_label, _edtl in (("edtl-4k", 4096), ("edtl-4g", 0xFFFFFFFF)):
        add(f"alloc-max-{_label}-{_edtl_label}", "SPC-4 4.2.5.6 allocation length / RFC "
            "7143 11.4.5.1: GOOD with min(the parameter data's own length, ALLOCATION "
            "LENGTH, EDTL) bytes and the U bit with the rest of the EDTL as residual, or "
            "CHECK CONDITION ILLEGAL REQUEST for a command or field we do not support; "
            "never a buffer the size of the allocation length or the EDTL",
            lambda c, cdb=_cdb, a=_alloc_len, m=_min, t=_total, e=_edtl:
            _alloc(c, cdb, a, m, t, e))


def _alloc(c: Ctx, cdb: bytes, alloc: int, minimum: int, total: Callable[[bytes], int],
           edtl: int) -> None:
    ini = rogue_ready(c)
    try:
        bhs, sense, got = scsi(ini, cdb, edtl=edtl, read=True)
        data = data_in_bytes(got)
        if bhs.b3 == CHECK_CONDITION:
            assert sense_of(sense)[0] == ILLEGAL_REQUEST, sense_of(sense)
            return
        assert bhs.b3 == GOOD, hex(bhs.b3)
        assert len(data) >= minimum, data
        assert len(data) == min(total(data), alloc, edtl), (len(data), total(data))
        over, under, count = residual(bhs)
        if len(data) < edtl:
            assert under and not over and count == edtl - len(data)
    finally:
        ini.close()


# -- CDB fields (SPC-4 4.5.6 table of ASCs; SAM-5)

for _label, _cdb, _asc in (
        ("unknown-opcode-02", bytes([0x02, 0, 0, 0, 0, 0]), 0x20),
        ("unknown-opcode-ff", bytes([0xFF]) + bytes(15), 0x20),
        ("inquiry-page-without-evpd", bytes([0x12, 0, 0x83, 0, 96, 0]), 0x24),
        ("inquiry-unknown-vpd", bytes([0x12, 1, 0xEE, 0, 96, 0]), 0x24),
        ("mode-sense-unknown-page", bytes([0x5A, 0, 0x3E, 0, 0, 0, 0, 0, 252, 0]), 0x24),
        ("report-luns-select-reserved", bytes([0xA0, 0, 0xFE, 0, 0, 0, 0, 0, 1, 0, 0, 0]),
         0x24),
        ("rsoc-reporting-options-7", bytes([0xA3, 0x0C, 7, 0, 0, 0, 0, 0, 1, 0, 0, 0]),
         0x24),
        ("service-action-in-unknown", bytes([0x9E, 0x1F]) + bytes(14), 0x24),
        ("control-naca", bytes([0x00, 0, 0, 0, 0, 0x04]), 0x24),
):
    add(f"cdb-{_label}", "SPC-4 4.5.6 / the command's clause: an unsupported operation code "
        "is ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE (20h/00h); a bad field "
        "(an unknown page, a reserved SELECT REPORT, NACA=1 when NACA is not supported, "
        "SAM-5 5.2 / SPC-4 7.5.8) is ILLEGAL REQUEST, INVALID FIELD IN CDB (24h/00h)",
        lambda c, cdb=_cdb, asc=_asc: _cdb_check(c, cdb, asc))


def _cdb_check(c: Ctx, cdb: bytes, asc: int) -> None:
    ini = rogue_ready(c)
    try:
        expect_check(ini, cdb, ILLEGAL_REQUEST, asc, edtl=256, read=True)
    finally:
        ini.close()


@case("lun-not-present-tur", "SPC-4 4.5.6 / SAM-5 5.9 (the REPORT LUNS well-known LUN "
      "aside): a command to a LUN with no logical unit: CHECK CONDITION, ILLEGAL REQUEST, "
      "LOGICAL UNIT NOT SUPPORTED (25h/00h)")
def _(c: Ctx) -> None:
    ini = rogue_ready(c)
    try:
        expect_check(ini, cdbs.TEST_UNIT_READY, ILLEGAL_REQUEST, 0x25, lun=7)
    finally:
        ini.close()


@case("lun-not-present-inquiry", "SPC-4 6.6.2: INQUIRY to a LUN with no logical unit is "
      "answered GOOD with PERIPHERAL QUALIFIER 011b (not capable of supporting)")
def _(c: Ctx) -> None:
    ini = rogue_ready(c)
    try:
        bhs, _, got = scsi(ini, bytes([0x12, 0, 0, 0, 96, 0]), edtl=96, read=True, lun=7)
        assert bhs.b3 == GOOD and data_in_bytes(got)[0] >> 5 == 0b011
    finally:
        ini.close()


# -- text requests in full feature phase (11.10, 11.11, 6.2)

def _text(ini: Initiator, text: bytes, *, ttt: int = RESERVED_TAG, flags: int = pdu.F_FINAL,
          itt: int = 0x5100) -> bytes:
    header = pdu.text_request(flags=flags, dsl=len(text), itt=itt, ttt=ttt, cmdsn=ini.cmdsn,
                              exp_statsn=ini.exp_stat_sn)
    ini.cmdsn += 1
    return header


@case("text-unknown-key", "RFC 7143 6.2: an unknown key in a Text Request is answered "
      "NotUnderstood; the session goes on")
def _(c: Ctx) -> None:
    ini = rogue(c)
    try:
        text = keys("X-nosuch=1")
        ini.send_pdu(_text(ini, text), text)
        assert ini.sock is not None
        got = recv_pdu(ini.sock)
        assert got is not None and got[0].opcode == Op.TEXT_RESPONSE
        assert parse_keys(got[1]).get("X-nosuch") == "NotUnderstood"
        assert ini.nop(b"x") == b"x"
    finally:
        ini.close()


@case("text-leading-only-key", "RFC 7143 13 / 6.3: a LO or IO key (MaxConnections, "
      "InitialR2T) in full feature phase is answered Reject")
def _(c: Ctx) -> None:
    ini = rogue(c)
    try:
        text = keys("InitialR2T=No")
        ini.send_pdu(_text(ini, text), text)
        assert ini.sock is not None
        got = recv_pdu(ini.sock)
        assert got is not None and got[0].opcode == Op.TEXT_RESPONSE
        assert parse_keys(got[1]).get("InitialR2T") == "Reject"
    finally:
        ini.close()


@case("text-sendtargets-normal-session", "RFC 7143 13.3 / appendix C: SendTargets with an "
      "empty value in a Normal (operational) session answers the target it is logged in to")
def _(c: Ctx) -> None:
    ini = rogue(c)
    try:
        text = keys("SendTargets=")
        ini.send_pdu(_text(ini, text), text)
        assert ini.sock is not None
        got = recv_pdu(ini.sock)
        assert got is not None and got[0].opcode == Op.TEXT_RESPONSE
        assert f"TargetName={c.target.iqn}".encode() in got[1]
    finally:
        ini.close()


for _label, _raw in (("non-utf8", b"\xff\xfe=1\0"), ("no-equals", b"abc\0"),
                     ("no-nul", b"X-a=1"), ("key-64", b"X-" + b"k" * 62 + b"=1\0")):
    add(f"text-malformed-{_label}", "RFC 7143 6.1: malformed text in a Text Request is a "
        "protocol error: Reject 04h/09h or the connection ends; never a traceback",
        lambda c, raw=_raw: _text_malformed(c, raw))


def _text_malformed(c: Ctx, raw: bytes) -> None:
    ini = rogue(c)
    try:
        ini.send_pdu(_text(ini, raw), raw)
        got, closed = pdus_then(ini)
        ops = [b.opcode for b, _ in got]
        assert Op.REJECT in ops or closed or (
            Op.TEXT_RESPONSE in ops and b"Reject" in got[0][1]), got
        for b, _ in got:
            if b.opcode == Op.REJECT:
                assert b.b2 in (RejectReason.PROTOCOL_ERROR, RejectReason.INVALID_PDU_FIELD)
    finally:
        ini.close()


@case("text-bad-ttt", "RFC 7143 11.10.4: a Text Request with a TTT the target never gave "
      "(not ffffffff): Reject 09h (invalid PDU field) or 04h; not a silent hang")
def _(c: Ctx) -> None:
    ini = rogue(c)
    try:
        text = keys("X-a=1")
        ini.send_pdu(_text(ini, text, ttt=0x1234), text)
        got, _ = pdus_then(ini)
        assert got, "no answer to a Text Request with an unknown TTT"
        b = got[0][0]
        assert (b.opcode == Op.REJECT and b.b2 in (RejectReason.PROTOCOL_ERROR,
                                                    RejectReason.INVALID_PDU_FIELD)) \
            or b.opcode == Op.TEXT_RESPONSE, b
    finally:
        ini.close()


@case("text-10000-keys-continued", "RFC 7143 11.10.2 (C bit) / 6.2: 10,000 keys over Text "
      "Requests with C=1: answered (in pieces), or refused with a Reject; bounded, no hang")
def _(c: Ctx) -> None:
    ini = rogue(c)
    try:
        body = b"".join(b"X-t%05d=1\0" % i for i in range(10000))
        step = 8192
        pieces = [body[i:i + step] for i in range(0, len(body), step)]
        assert ini.sock is not None
        ttt = RESERVED_TAG
        rejected = False
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            flags = pdu.F_FINAL if last else pdu.F_CONTINUE
            header = pdu.text_request(flags=flags, dsl=len(piece), itt=0x5200, ttt=ttt,
                                      cmdsn=ini.cmdsn, exp_statsn=ini.exp_stat_sn)
            ini.send_pdu(header, piece)
            ini.cmdsn += 1  # every Text Request is a command of its own (4.2.2.1)
            ini.sock.settimeout(10)
            got = recv_pdu(ini.sock)
            assert got is not None, "closed"
            if got[0].opcode == Op.REJECT:
                rejected = True
                break
            assert got[0].opcode == Op.TEXT_RESPONSE
            ttt = got[0].ttt
        answered = 0
        if not rejected:
            data = got[1]
            while got[0].flags & pdu.F_CONTINUE:
                ini.send_pdu(pdu.text_request(flags=pdu.F_FINAL, dsl=0, itt=0x5200, ttt=ttt,
                                              cmdsn=ini.cmdsn, exp_statsn=ini.exp_stat_sn))
                ini.cmdsn += 1
                got = recv_pdu(ini.sock)
                assert got is not None and got[0].opcode == Op.TEXT_RESPONSE
                ttt = got[0].ttt
                data += got[1]
            answered = sum(1 for k in parse_keys(data) if k.startswith("X-t"))
            assert answered == 10000
    finally:
        ini.close()


# -- task management (11.5, 11.6)

def _tmf(c: Ctx, function: int, *, lun: int = 0, rtt: int = RESERVED_TAG, ref_cmdsn=None,
         expected: set[int]) -> None:
    ini = rogue_ready(c)
    try:
        header = pdu.task_management_request(
            immediate=True, function=function, lun=struct.pack(">HHI", lun, 0, 0), itt=0x5300,
            referenced_task_tag=rtt, cmdsn=ini.cmdsn, exp_statsn=ini.exp_stat_sn,
            ref_cmdsn=ini.cmdsn if ref_cmdsn is None else ref_cmdsn(ini))
        ini.send_pdu(header)
        assert ini.sock is not None
        got = recv_pdu(ini.sock)
        assert got is not None and got[0].opcode == Op.TASK_MGMT_RESPONSE, got
        assert got[0].b2 in expected, got[0].b2
        assert ini.nop(b"ok") == b"ok"
    finally:
        ini.close()


add("tmf-abort-task-refcmdsn-outside-window", "RFC 7143 11.5.1: ABORT TASK for an unknown "
    "task whose RefCmdSN is outside the window: 1 (task does not exist)",
    lambda c: _tmf(c, 1, rtt=0x9999, ref_cmdsn=lambda i: (i.cmdsn + 100000) & 0xFFFFFFFF,
                   expected={1}))
add("tmf-abort-task-refcmdsn-far-past", "RFC 7143 11.5.1: RefCmdSN 2^31 behind ExpCmdSN: "
    "task does not exist (1)",
    lambda c: _tmf(c, 1, rtt=0x9998, ref_cmdsn=lambda i: (i.cmdsn - (1 << 31) + 1)
                   & 0xFFFFFFFF, expected={1}))
add("tmf-abort-task-reserved-rtt", "RFC 7143 11.5.1: ABORT TASK naming the reserved tag "
    "ffffffff: no such task (1)", lambda c: _tmf(c, 1, rtt=RESERVED_TAG,
                                                 ref_cmdsn=lambda i: (i.cmdsn - 5000)
                                                 & 0xFFFFFFFF, expected={1}))
add("tmf-function-reserved-0x7f", "RFC 7143 11.5.1 / 11.6.1: a function code we do not know "
    "is answered 5 (task management function not supported)",
    lambda c: _tmf(c, 0x7F, expected={5}))
add("tmf-function-0", "RFC 7143 11.5.1 (function 0 is not defined) / 11.6.1: 5 (not "
    "supported) or 255 (function rejected)", lambda c: _tmf(c, 0, expected={5, 255}))
add("tmf-task-reassign-erl0", "RFC 7143 11.5.1 TASK REASSIGN: at ErrorRecoveryLevel below 2 "
    "the answer is 4 (task allegiance reassignment not supported)",
    lambda c: _tmf(c, 8, rtt=0x1111, expected={4}))
add("tmf-lu-reset-no-lun", "RFC 7143 11.6.1: LOGICAL UNIT RESET of a LUN with no logical "
    "unit: 2 (LUN does not exist)", lambda c: _tmf(c, 5, lun=9, expected={2}))
add("tmf-abort-task-set-no-lun", "RFC 7143 11.6.1: ABORT TASK SET of a LUN with no logical "
    "unit: 2 (LUN does not exist)", lambda c: _tmf(c, 2, lun=9, expected={2}))


# -- SNACK at ErrorRecoveryLevel 0 (11.16, 11.17.1)

for _type in (0, 1, 2, 3, 7):
    add(f"snack-type-{_type}", "RFC 7143 11.16 / 7.1.5: no SNACK support at "
        "ErrorRecoveryLevel 0: Reject 03h (SNACK reject), or 04h; the session goes on",
        lambda c, t=_type: _snack(c, t))


def _snack(c: Ctx, snack_type: int) -> None:
    ini = rogue(c)
    try:
        header = pdu.pack(Op.SNACK_REQUEST, 0x80 | snack_type, itt=0x5400,
                          w20=RESERVED_TAG, w28=ini.exp_stat_sn, w40=0, w44=1)
        expect_reject(ini, header, reasons={RejectReason.SNACK_REJECT,
                                            RejectReason.PROTOCOL_ERROR}, closes=False)
    finally:
        ini.close()


# -- NOP-Out (11.18)

@case("nop-out-bad-ttt-reply", "RFC 7143 11.18.2: a NOP-Out answering a ping the target "
      "never sent (ITT ffffffff, an unknown TTT) gets no answer; the session goes on")
def _(c: Ctx) -> None:
    ini = rogue(c)
    try:
        ini.send_pdu(pdu.nop_out(immediate=True, itt=RESERVED_TAG, ttt=0x4444,
                                 cmdsn=ini.cmdsn, exp_statsn=ini.exp_stat_sn))
        got, closed = pdus_then(ini)
        assert not closed and not [b for b, _ in got if b.opcode == Op.NOP_IN
                                   and b.itt == RESERVED_TAG and b.ttt == 0x4444]
        assert ini.nop(b"ok") == b"ok"
    finally:
        ini.close()


@case("nop-out-ping-with-ttt", "RFC 7143 11.18.2: a ping (ITT not ffffffff) must carry TTT "
      "ffffffff; with another TTT it is answered as a ping or Rejected 09h; never closed")
def _(c: Ctx) -> None:
    ini = rogue(c)
    try:
        ini.send_pdu(pdu.nop_out(immediate=True, itt=0x5500, ttt=0x4444, cmdsn=ini.cmdsn,
                                 exp_statsn=ini.exp_stat_sn))
        got, closed = pdus_then(ini)
        assert not closed and got
        b = got[0][0]
        assert (b.opcode == Op.NOP_IN and b.itt == 0x5500) or (
            b.opcode == Op.REJECT and b.b2 in (RejectReason.INVALID_PDU_FIELD,
                                               RejectReason.PROTOCOL_ERROR)), b
    finally:
        ini.close()


@case("nop-out-no-reply-itt-ttt-reserved", "RFC 7143 11.18.1: ITT and TTT both ffffffff is "
      "a NOP-Out that wants no answer: none is sent")
def _(c: Ctx) -> None:
    ini = rogue(c)
    try:
        ini.send_pdu(pdu.nop_out(immediate=True, itt=RESERVED_TAG, ttt=RESERVED_TAG,
                                 cmdsn=ini.cmdsn, exp_statsn=ini.exp_stat_sn))
        got, closed = pdus_then(ini)
        assert not closed and not got
    finally:
        ini.close()


# -- Logout (11.14, 11.15)

def _logout(c: Ctx, reason: int, cid: int, expected: set[int] | None) -> None:
    ini = rogue(c)
    try:
        header = pdu.logout_request(immediate=True, reason=reason, itt=0x5600, cid=cid,
                                    cmdsn=ini.cmdsn, exp_statsn=ini.exp_stat_sn)
        ini.send_pdu(header)
        got, closed = pdus_then(ini)
        assert got, "no answer to a Logout Request"
        b = got[0][0]
        if expected is None:  # a reserved reason: Reject 09h/04h or a logout response
            assert b.opcode in (Op.REJECT, Op.LOGOUT_RESPONSE), b
            if b.opcode == Op.REJECT:
                assert b.b2 in (RejectReason.INVALID_PDU_FIELD, RejectReason.PROTOCOL_ERROR)
            else:
                assert b.b2 != 0 or closed
            return
        assert b.opcode == Op.LOGOUT_RESPONSE and b.b2 in expected, (b, b.b2)
        if b.b2 == 0:
            assert closed
    finally:
        ini.close()


add("logout-reason-reserved-7f", "RFC 7143 11.14.1: reason codes above 2 are reserved: "
    "Rejected (09h), or answered without closing the session as if it were a close",
    lambda c: _logout(c, 0x7F, 0, None))
add("logout-reason-reserved-3", "RFC 7143 11.14.1: reason 3 is reserved: as above",
    lambda c: _logout(c, 3, 0, None))
add("logout-recovery-erl0", "RFC 7143 11.15.1: reason 2 (remove the connection for "
    "recovery) at ErrorRecoveryLevel 0: response 2 (connection recovery not supported)",
    lambda c: _logout(c, 2, 0, {2}))
add("logout-close-connection-unknown-cid", "RFC 7143 11.15.1: reason 1 (close the "
    "connection) naming a CID the session does not have: response 1 (CID not found)",
    lambda c: _logout(c, 1, 0x4321, {1}))


@case("command-after-logout-response", "RFC 7143 11.15: after a Logout Response (0) the "
      "target closes the connection; a command sent behind the logout gets no answer")
def _(c: Ctx) -> None:
    ini = rogue(c)
    try:
        header = pdu.logout_request(immediate=True, reason=0, itt=0x5700, cmdsn=ini.cmdsn,
                                    exp_statsn=ini.exp_stat_sn)
        tur = pdu.scsi_command(flags=pdu.F_FINAL | 1, dsl=0, lun=bytes(8), itt=0x5701,
                               edtl=0, cmdsn=ini.cmdsn, exp_statsn=ini.exp_stat_sn,
                               cdb=cdbs.TEST_UNIT_READY)
        ini.send_raw(header + tur)
        got, closed = pdus_then(ini, quiet=5.0)
        assert closed
        assert [b.opcode for b, _ in got] == [Op.LOGOUT_RESPONSE], got
    finally:
        ini.close()


# -- discovery sessions (4.3 / 13.21: only Text and Logout)

def _discovery(c: Ctx) -> socket.socket:
    s = connect(c)
    s.sendall(login_request(login_keys(c, session_type="Discovery", target=False)))
    st = login_status_and_text(s)
    assert st[:2] == (0, 0) and st[3] & T_BIT
    return s


@case("discovery-scsi-command", "RFC 7143 4.3 / 13.21 (SessionType=Discovery: only Text "
      "and Logout): a SCSI Command in a discovery session: Reject 04h and/or the "
      "connection ends")
def _(c: Ctx) -> None:
    with _discovery(c) as s:
        s.sendall(pdu.scsi_command(flags=pdu.F_FINAL | 1, dsl=0, lun=bytes(8), itt=3,
                                   edtl=0, cmdsn=0, exp_statsn=1, cdb=cdbs.TEST_UNIT_READY))
        got, closed = drain(s, quiet=2.0)  # a Reject alone (no close) waits this long
        assert closed or [b for b, _ in got if b.opcode == Op.REJECT], got
        assert not [b for b, _ in got if b.opcode == Op.SCSI_RESPONSE]


@case("discovery-tmf", "RFC 7143 4.3 / 13.21: a Task Management Request in a discovery "
      "session: Reject 04h and/or the connection ends")
def _(c: Ctx) -> None:
    with _discovery(c) as s:
        s.sendall(pdu.task_management_request(immediate=True, function=5, lun=bytes(8),
                                              itt=3, cmdsn=0, exp_statsn=1))
        got, closed = drain(s, quiet=2.0)
        assert closed or [b for b, _ in got if b.opcode == Op.REJECT], got
        assert not [b for b, _ in got if b.opcode == Op.TASK_MGMT_RESPONSE]


@case("discovery-sendtargets-bogus-value", "RFC 7143 13.3 / appendix C: SendTargets=<a "
      "name we do not have> answers no TargetName; the session goes on")
def _(c: Ctx) -> None:
    with _discovery(c) as s:
        text = keys("SendTargets=iqn.2026-11.local.nope:x")
        s.sendall(pdu.text_request(dsl=len(text), itt=4, cmdsn=0, exp_statsn=1) + text
                  + pdu.padding(len(text)))
        got = recv_pdu(s)
        assert got is not None and got[0].opcode == Op.TEXT_RESPONSE
        assert b"TargetName=" not in got[1]


# -- digests, ImmediateData=No, InitialR2T=No (13.1, 13.11, 13.13, 13.14, 7.8)

def _raw_session(c: Ctx, *extra: str) -> tuple[socket.socket, dict[str, str], int]:
    """A raw full feature session (no digests on our side unless negotiated); its socket,
    the target's keys and the next ExpStatSN."""
    s = connect(c)
    s.sendall(login_request(login_keys(c, *extra)))
    got = recv_pdu(s)
    assert got is not None and got[0].opcode == Op.LOGIN_RESPONSE and got[0].w36 >> 16 == 0
    return s, parse_keys(got[1]), (got[0].statsn + 1) & 0xFFFFFFFF


def _recv_digested(s: socket.socket) -> tuple[Bhs, bytes] | None:
    """A PDU with a data digest after its (padded) data segment, the digest checked."""
    head = recv_exact(s, pdu.BHS_LEN)
    if head is None:
        return None
    bhs = Bhs(head)
    if not bhs.dsl:
        return bhs, b""
    body = recv_exact(s, bhs.dsl + pdu.pad_len(bhs.dsl) + pdu.DIGEST_LEN)
    if body is None:
        return None
    assert pdu.digest(body[:-pdu.DIGEST_LEN]) == body[-pdu.DIGEST_LEN:]
    return bhs, body[:bhs.dsl]


def _nop_digested(s: socket.socket, exp_statsn: int, payload: bytes, *,
                  corrupt: bool) -> None:
    padded = payload + pdu.padding(len(payload))
    d = pdu.digest(padded)
    if corrupt:
        d = bytes([d[0] ^ 0xFF]) + d[1:]
    s.sendall(pdu.nop_out(immediate=True, dsl=len(payload), itt=0x5800, cmdsn=0,
                          exp_statsn=exp_statsn) + padded + d)


@case("data-digest-ping-ok", "RFC 7143 13.1 / 11.18: with DataDigest=CRC32C a ping whose "
      "data digest is right (CRC32C, crc32c library as the oracle) is echoed, its own "
      "digest right (the control for the next case)")
def _(c: Ctx) -> None:
    s, answer, exp = _raw_session(c, "DataDigest=CRC32C")
    with s:
        assert answer.get("DataDigest") == "CRC32C"
        _nop_digested(s, exp, b"digest-me", corrupt=False)
        s.settimeout(5)
        got = _recv_digested(s)
        assert got is not None and got[0].opcode == Op.NOP_IN and got[1] == b"digest-me"


@case("data-digest-error-nop", "RFC 7143 7.8 / 11.17.1: a PDU whose data digest fails is "
      "discarded and Rejected 02h (data digest error), the header returned; the connection "
      "may then end at ErrorRecoveryLevel 0")
def _(c: Ctx) -> None:
    s, answer, exp = _raw_session(c, "DataDigest=CRC32C")
    with s:
        assert answer.get("DataDigest") == "CRC32C"
        _nop_digested(s, exp, b"digest-me", corrupt=True)
        s.settimeout(5)
        got = _recv_digested(s)
        assert got is not None and got[0].opcode == Op.REJECT, got
        assert got[0].b2 == RejectReason.DATA_DIGEST_ERROR and got[1][:1] == b"\x40"
        assert not [b for b, _ in drain(s)[0] if b.opcode == Op.NOP_IN and b.itt == 0x5800]


@case("immediate-data-with-immediatedata-no", "RFC 7143 13.11 ImmediateData=No: the "
      "initiator MUST NOT send immediate data; a command that does is a protocol error: "
      "Reject, the connection ends")
def _(c: Ctx) -> None:
    ini = rogue(c, params={"ImmediateData": "No"})
    try:
        head = pdu.scsi_command(flags=pdu.F_FINAL | pdu.F_WRITE | 1, dsl=c.block_size,
                                lun=bytes(8), itt=0x5900, edtl=c.block_size, cmdsn=ini.cmdsn,
                                exp_statsn=ini.exp_stat_sn, cdb=cdbs.write10(0, 1))
        expect_closed(ini, head, bytes(c.block_size), reject={
            RejectReason.PROTOCOL_ERROR, RejectReason.INVALID_PDU_FIELD})
    finally:
        ini.close()


FIRST_BURST = 4096


def _unsolicited(c: Ctx, *, final: bool, datasn: int, offset: int, length: int,
                 reason: int, sense: set[tuple[int, int, int]]) -> None:
    """InitialR2T=No, FirstBurstLength 4096: a WRITE of 4 bursts, then one unsolicited
    Data-Out out of its rules: Reject `reason` and the WRITE ends CHECK CONDITION with
    one of `sense` (RFC 7143 11.4.7.2 sense table)."""
    ini = rogue(c, params={"InitialR2T": "No", "ImmediateData": "No",
                           "FirstBurstLength": str(FIRST_BURST)})
    try:
        assert ini.first_burst == FIRST_BURST
        for _ in range(8):
            if ini.command(cdbs.TEST_UNIT_READY).status == GOOD:
                break
        edtl = 4 * FIRST_BURST
        head = pdu.scsi_command(flags=(pdu.F_FINAL if final else 0) | pdu.F_WRITE | 1, dsl=0,
                                lun=bytes(8), itt=0x5A00, edtl=edtl, cmdsn=ini.cmdsn,
                                exp_statsn=ini.exp_stat_sn,
                                cdb=cdbs.write10(300, edtl // c.block_size))
        ini.cmdsn += 1
        ini.send_pdu(head)
        ini.send_pdu(pdu.data_out(final=True, dsl=length, lun=bytes(8), itt=0x5A00,
                                  exp_statsn=ini.exp_stat_sn, datasn=datasn,
                                  buffer_offset=offset), bytes(length))
        got, _ = pdus_then(ini, until=lambda g: any(b.opcode == Op.SCSI_RESPONSE
                                                    for b, _ in g))
        rejects = [b for b, _ in got if b.opcode == Op.REJECT]
        assert rejects and rejects[0].b2 == reason, got
        (b, d), = [(b, d) for b, d in got if b.opcode == Op.SCSI_RESPONSE]
        assert b.b3 == CHECK_CONDITION
        assert sense_of(d[2:2 + struct.unpack_from(">H", d)[0]]) in sense, d
    finally:
        ini.close()


add("unsolicited-beyond-first-burst", "RFC 7143 13.14 FirstBurstLength: unsolicited data "
    "past it: Reject 09h; ABORTED COMMAND, DATA OFFSET ERROR 4Bh/05h or TOO MUCH WRITE "
    "DATA 4Bh/02h", lambda c: _unsolicited(c, final=False, datasn=0, offset=0,
                                           length=FIRST_BURST + 512,
                                           reason=RejectReason.INVALID_PDU_FIELD,
                                           sense={(ABORTED_COMMAND, 0x4B, 5),
                                                  (ABORTED_COMMAND, 0x4B, 2)}))
add("unsolicited-datasn-gap", "RFC 7143 11.7.5 DataSN (from 0 in the unsolicited "
    "sequence): DataSN 3 first: Reject 04h; ABORTED COMMAND, DATA PHASE ERROR 4Bh/00h",
    lambda c: _unsolicited(c, final=False, datasn=3, offset=0, length=512,
                           reason=RejectReason.PROTOCOL_ERROR,
                           sense={(ABORTED_COMMAND, 0x4B, 0)}))
add("unsolicited-after-f-bit", "RFC 7143 11.3.1 (F=1: no unsolicited Data-Out follows): "
    "one that does: Reject 09h/04h; ABORTED COMMAND 4Bh/05h or 4Bh/00h",
    lambda c: _unsolicited(c, final=True, datasn=0, offset=0, length=512,
                           reason=RejectReason.INVALID_PDU_FIELD,
                           sense={(ABORTED_COMMAND, 0x4B, 5), (ABORTED_COMMAND, 0x4B, 0)}))


@case("login-stage-back-to-security", "RFC 7143 6.3 / 11.12.3: once the target moved the "
      "login to the operational stage, a request with CSG 0 (security) is out of order: "
      "02/00")
def _(c: Ctx) -> None:
    isid = next(_isids)
    with connect(c) as s:
        s.sendall(login_request(login_keys(c, "AuthMethod=None"), flags=SEC_TO_OP,
                                isid=isid))
        st = login_status_and_text(s)
        assert st[:2] == (0, 0) and st[3] & T_BIT and st[3] & 0x03 == 1  # now stage 1
        s.sendall(login_request(b"", flags=SEC_TO_OP, isid=isid))
        assert login_status_and_text(s)[:2] == (2, 0)
        assert drain(s)[1]


@case("login-skip-stage-unauthenticated-ok", "RFC 7143 6.3.2 (counter-case): with no "
      "authentication required a login may start in the operational stage and go straight "
      "to full feature phase; T=1 and TSIH set in the final response (11.13.4)")
def _(c: Ctx) -> None:
    with connect(c) as s:
        s.sendall(login_request(login_keys(c)))
        got = recv_pdu(s)
        assert got is not None and got[0].w36 >> 16 == 0 and got[0].flags & T_BIT
        assert got[0].tsih != 0


@case("login-cid-changes-mid-login", "RFC 7143 11.12.7 / 6.3: the CID must not change "
      "within a login: 02/00")
def _(c: Ctx) -> None:
    isid = next(_isids)
    with connect(c) as s:
        s.sendall(login_request(login_keys(c), flags=0 << 2 | 1, isid=isid, cid=1))
        assert login_status_and_text(s)[:2] == (0, 0)
        s.sendall(login_request(b"", flags=OP_TO_FFP, isid=isid, cid=2))
        assert login_status_and_text(s)[:2] == (2, 0)
        assert drain(s)[1]


@case("login-tsih-changes-mid-login", "RFC 7143 11.12.6 / 6.3: the TSIH must not change "
      "within a login: 02/00 (or 02/0A for a TSIH of no session)")
def _(c: Ctx) -> None:
    isid = next(_isids)
    with connect(c) as s:
        s.sendall(login_request(login_keys(c), flags=0 << 2 | 1, isid=isid))
        assert login_status_and_text(s)[:2] == (0, 0)
        s.sendall(login_request(b"", flags=OP_TO_FFP, isid=isid, tsih=0x0505))
        assert login_status_and_text(s)[:2] in ((2, 0), (2, 0x0A))
        assert drain(s)[1]


@case("text-f-and-c", "RFC 7143 11.10.2: F and C both 1 in a Text Request is a protocol "
      "error: Reject 04h (the connection may end)")
def _(c: Ctx) -> None:
    ini = rogue(c)
    try:
        text = keys("X-a=1")
        header = pdu.text_request(flags=pdu.F_FINAL | pdu.F_CONTINUE, dsl=len(text),
                                  itt=0x5B00, cmdsn=ini.cmdsn, exp_statsn=ini.exp_stat_sn)
        ini.cmdsn += 1
        expect_reject(ini, header, text, reasons={RejectReason.PROTOCOL_ERROR}, closes=None)
    finally:
        ini.close()


# -- limits the target declares (Block Limits VPD, SBC-4 6.6.4) and parameter lists

def _block_limits(ini: Initiator) -> bytes:
    r = ini.command(bytes([0x12, 1, 0xB0, 0, 64, 0]), read=64)
    assert r.status == GOOD and r.data[1] == 0xB0
    return r.data


@case("read16-over-max-transfer-length", "SBC-4 6.6.4 (MAXIMUM TRANSFER LENGTH, Block Limits "
      "VPD) / 5.17: a READ(16) of one block more than it: CHECK CONDITION, ILLEGAL REQUEST, "
      "INVALID FIELD IN CDB (24h/00h)")
def _(c: Ctx) -> None:
    ini = rogue_ready(c)
    try:
        mtl = _u32(_block_limits(ini), 8)
        assert 0 < mtl < c.blocks, (mtl, c.blocks)  # within the capacity: not 21h first
        expect_check(ini, _read16(0, mtl + 1), ILLEGAL_REQUEST, 0x24,
                     edtl=(mtl + 1) * c.block_size, read=True)
    finally:
        ini.close()


@case("write16-over-max-transfer-length", "SBC-4 6.6.4 / 5.40: a WRITE(16) of one block more "
      "than MAXIMUM TRANSFER LENGTH, EDTL to match: CHECK CONDITION, ILLEGAL REQUEST, "
      "24h/00h (any R2T it sends first is answered with zeros)")
def _(c: Ctx) -> None:
    ini = rogue_ready(c)
    try:
        mtl = _u32(_block_limits(ini), 8)
        edtl = (mtl + 1) * c.block_size
        itt = 0x5C00
        ini.send_pdu(pdu.scsi_command(flags=pdu.F_FINAL | pdu.F_WRITE | 1, dsl=0,
                                      lun=bytes(8), itt=itt, edtl=edtl, cmdsn=ini.cmdsn,
                                      exp_statsn=ini.exp_stat_sn, cdb=cdbs.write16(0, mtl + 1)))
        ini.cmdsn += 1
        assert ini.sock is not None
        while True:
            got = recv_pdu(ini.sock)
            assert got is not None, "closed"
            bhs, body = got
            if bhs.opcode == Op.R2T and bhs.itt == itt:
                sent, want, offset = 0, bhs.w44, bhs.w40
                while sent < want:
                    n = min(ini.max_send, want - sent)
                    ini.send_pdu(pdu.data_out(final=sent + n == want, dsl=n, lun=bytes(8),
                                              itt=itt, ttt=bhs.ttt,
                                              exp_statsn=ini.exp_stat_sn,
                                              datasn=sent // ini.max_send,
                                              buffer_offset=offset + sent), bytes(n))
                    sent += n
                continue
            if bhs.opcode == Op.SCSI_RESPONSE and bhs.itt == itt:
                break
        assert bhs.b3 == CHECK_CONDITION
        sense = body[2:2 + struct.unpack_from(">H", body)[0]]
        assert sense_of(sense) == (ILLEGAL_REQUEST, 0x24, 0)
    finally:
        ini.close()


@case("write16-over-max-transfer-length-no-r2t", "issue 15 (\"a WRITE beyond the declared "
      "MAXIMUM TRANSFER LENGTH is refused before any buffer is allocated\") / SBC-4 6.6.4: "
      "the answer to such a WRITE is its CHECK CONDITION (24h/00h), with no R2T before it "
      "(RFC 7143 11.4.1: a target may end a command before asking for its data)")
def _(c: Ctx) -> None:
    ini = rogue_ready(c)
    try:
        mtl = _u32(_block_limits(ini), 8)
        ini.send_pdu(pdu.scsi_command(flags=pdu.F_FINAL | pdu.F_WRITE | 1, dsl=0,
                                      lun=bytes(8), itt=0x5D00,
                                      edtl=(mtl + 1) * c.block_size, cmdsn=ini.cmdsn,
                                      exp_statsn=ini.exp_stat_sn,
                                      cdb=cdbs.write16(0, mtl + 1)))
        ini.cmdsn += 1
        assert ini.sock is not None
        got = recv_pdu(ini.sock)
        assert got is not None and got[0].opcode == Op.SCSI_RESPONSE, got
        body = got[1]
        assert got[0].b3 == CHECK_CONDITION
        assert sense_of(body[2:2 + struct.unpack_from(">H", body)[0]]) == (
            ILLEGAL_REQUEST, 0x24, 0)
    finally:
        ini.close()


def _param_list_check(c: Ctx, cdb: bytes, params: bytes, key: int, asc: int,
                      ascq: int = 0) -> None:
    ini = rogue_ready(c)
    try:
        expect_check(ini, cdb, key, asc, ascq, edtl=len(params), write=bool(params),
                     data=params)
    finally:
        ini.close()


add("pr-out-register-list-23", "SPC-4 6.16.3 (PERSISTENT RESERVE OUT parameter list): "
    "PARAMETER LIST LENGTH other than 24 for REGISTER without SPEC_I_PT: ILLEGAL REQUEST, "
    "PARAMETER LIST LENGTH ERROR (1Ah/00h)",
    lambda c: _param_list_check(c, bytes([0x5F, 0x00, 0, 0, 0, 0, 0, 0, 23, 0]), bytes(23),
                                ILLEGAL_REQUEST, 0x1A))
add("pr-out-register-list-0xffff-short", "SPC-4 6.16.3: PARAMETER LIST LENGTH ffffh "
    "for REGISTER (not 24): ILLEGAL REQUEST, 1Ah/00h; the EDTL of 24 bytes is all that comes",
    lambda c: _param_list_check(c, bytes([0x5F, 0x00, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0]),
                                bytes(24), ILLEGAL_REQUEST, 0x1A))
add("mode-select10-truncated-header", "SPC-4 6.12 / 7.5.5: a MODE SELECT(10) parameter list "
    "shorter than its 8-byte header: ILLEGAL REQUEST, PARAMETER LIST LENGTH ERROR (1Ah/00h)",
    lambda c: _param_list_check(c, cdbs.mode_select10(4), bytes(4), ILLEGAL_REQUEST, 0x1A))


# -- EXTENDED COPY (LID1, SPC-4 6.4): the path of LIO's CVE-2020-28374

COPY_ABORTED = 0x0A


def _xcopy_cdb(length: int) -> bytes:
    """EXTENDED COPY (LID1): 83h, service action 00h, PARAMETER LIST LENGTH bytes 10-13."""
    return bytes([0x83, 0x00]) + bytes(8) + struct.pack(">I", length) + bytes(2)


def _cscd_e4(designator: bytes, *, code_set: int = 1, designator_type: int = 3,
             block_length: int = 512) -> bytes:
    """An identification descriptor CSCD descriptor (E4h, SPC-4 6.4.5.?), 32 bytes: PDT 0,
    the designation descriptor header (code set, association 00b + type, length) and
    designator in bytes 4-27, the block device parameters (DISK BLOCK LENGTH, 29-31)."""
    body = bytes([0xE4, 0x00, 0, 0, code_set, designator_type, 0, len(designator)])
    body += designator.ljust(20, b"\0")
    return body + bytes(1) + block_length.to_bytes(3, "big")


def _segment_b2b(src: int, dst: int, blocks: int, src_lba: int, dst_lba: int) -> bytes:
    """Segment descriptor 02h, block to block (SPC-4 6.4.6.?), 28 bytes."""
    return struct.pack(">BBHHH2xHQQ", 0x02, 0, 0x18, src, dst, blocks, src_lba, dst_lba)


def _xcopy_list(cscds: list[bytes], segments: list[bytes]) -> bytes:
    cscd, seg = b"".join(cscds), b"".join(segments)
    return struct.pack(">BBH4xII", 0, 0x18, len(cscd), len(seg), 0) + cscd + seg  # no list ID


def _our_designator(ini: Initiator) -> tuple[int, int, bytes]:
    """The LU's first logical-unit designator in its Device Identification VPD page (SPC-4
    7.8.6): (code set, designator type, designator)."""
    r = ini.command(bytes([0x12, 1, 0x83, 1, 0, 0]), read=256)
    page, pos = r.data[4:4 + _u16(r.data, 2)], 0
    while pos + 4 <= len(page):
        length = page[pos + 3]
        if (page[pos + 1] >> 4) & 3 == 0 and page[pos + 1] & 0x0F in (2, 3):
            return page[pos] & 0x0F, page[pos + 1] & 0x0F, page[pos + 4:pos + 4 + length]
        pos += 4 + length
    raise AssertionError("no EUI-64 or NAA logical-unit designator in page 83h")


def _xcopy(c: Ctx, build, expected: set[tuple[int, int, int]]) -> None:
    ini = rogue_ready(c)
    try:
        code_set, dtype, ours = _our_designator(ini)
        params = build(c, _cscd_e4(ours, code_set=code_set, designator_type=dtype,
                                   block_length=c.block_size))
        bhs, sense, _ = scsi(ini, _xcopy_cdb(len(params)), edtl=len(params), write=True,
                             data=params)
        assert bhs.b3 == CHECK_CONDITION, hex(bhs.b3)
        assert sense_of(sense) in expected, [hex(x) for x in sense_of(sense)]
    finally:
        ini.close()


def _foreign_naa() -> bytes:
    return bytes([0x60, 0x01, 0x40, 0x5F, 0xDE, 0xAD, 0xBE, 0xEF]) + bytes(8)


add("xcopy-unknown-designator", "SPC-4 6.4 (errors in segment processing) / LIO "
    "CVE-2020-28374: a CSCD descriptor naming an NAA designator of no LU this nexus can "
    "reach: COPY ABORTED, UNREACHABLE COPY TARGET (08h/04h); nothing copied",
    lambda c: _xcopy(c, lambda c, ours: _xcopy_list(
        [ours, _cscd_e4(_foreign_naa(), block_length=c.block_size)],
        [_segment_b2b(0, 1, 1, 0, 0)]), {(COPY_ABORTED, 0x08, 0x04)}))
add("xcopy-cscd-index-beyond-list", "SPC-4 6.4: a segment naming CSCD descriptor 7 of a "
    "list of 1: COPY ABORTED, UNREACHABLE COPY TARGET (08h/04h)",
    lambda c: _xcopy(c, lambda c, ours: _xcopy_list([ours], [_segment_b2b(0, 7, 1, 0, 0)]),
                     {(COPY_ABORTED, 0x08, 0x04)}))
add("xcopy-lba-wraps-2-64", "SPC-4 6.4 / SBC-4 4.5: a segment whose source LBA + blocks "
    "passes 2^64: COPY ABORTED (libiscsi's test_extendedcopy accepts ASC 00h/00h, 08h/04h, "
    "0Dh/02h, or LBA OUT OF RANGE 21h/00h); nothing copied",
    lambda c: _xcopy(c, lambda c, ours: _xcopy_list(
        [ours], [_segment_b2b(0, 0, 2, MAX_LBA, 0)]),
        {(COPY_ABORTED, 0, 0), (COPY_ABORTED, 0x08, 0x04), (COPY_ABORTED, 0x0D, 0x02),
         (COPY_ABORTED, 0x21, 0)}))
add("xcopy-list-shorter-than-header-says", "SPC-4 6.4.1: a parameter list shorter than "
    "the lengths in its header: ILLEGAL REQUEST, PARAMETER LIST LENGTH ERROR (1Ah/00h)",
    lambda c: _xcopy(c, lambda c, ours: _xcopy_list([ours], [_segment_b2b(0, 0, 1, 0, 1)])
                     [:-8], {(ILLEGAL_REQUEST, 0x1A, 0)}))
add("xcopy-cscd-type-unsupported", "SPC-4 6.4.5: a CSCD descriptor type code we do not "
    "support (E0h, Fibre Channel N_Port_Name): ILLEGAL REQUEST, UNSUPPORTED TARGET "
    "DESCRIPTOR TYPE CODE (26h/07h)",
    lambda c: _xcopy(c, lambda c, ours: _xcopy_list(
        [bytes([0xE0]) + ours[1:]], [_segment_b2b(0, 0, 1, 0, 1)]),
        {(ILLEGAL_REQUEST, 0x26, 0x07)}))
add("xcopy-segment-type-unsupported", "SPC-4 6.4.6: a segment descriptor type code we do "
    "not support (01h, block to stream): ILLEGAL REQUEST, UNSUPPORTED SEGMENT DESCRIPTOR "
    "TYPE CODE (26h/09h)",
    lambda c: _xcopy(c, lambda c, ours: _xcopy_list(
        [ours], [bytes([0x01]) + _segment_b2b(0, 0, 1, 0, 1)[1:]]),
        {(ILLEGAL_REQUEST, 0x26, 0x09)}))


# --- the test ---------------------------------------------------------------------------

assert len({k.name for k in CASES}) == len(CASES), "case names repeat"


@pytest.mark.parametrize("item", [
    pytest.param(k, id=k.name, marks=[pytest.mark.xfail(strict=True, reason=k.finding)]
                 if k.finding else []) for k in CASES])
def test_battery(ctx, item: Case) -> None:
    """One malformed input on a fresh connection (item.clause says what is required), then
    a second session logs in and READs."""
    try:
        item.run(ctx)
    except InitiatorError as exc:  # our initiator saw the target end the connection
        still_serves(ctx)
        raise AssertionError(f"{item.name}: {exc} ({item.clause})") from exc
    except BaseException:
        still_serves(ctx)  # a departure found must not have cost the other sessions
        raise
    still_serves(ctx)


def test_battery_has_100_cases() -> None:
    assert len(CASES) >= 100, len(CASES)
