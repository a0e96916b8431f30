"""Fuzz targets `connection` and `login`: the iSCSI PDU framing and connection state
machine, and the login and text negotiation, in-process and sans-IO.

Rules:
- `connection`: a target.iscsi.connection.Connection on a real Portal (one target, a
  memory disk at LUN 0), driven as target.shell.server's Link drives it (bytes into
  get_buffer()/buffer_updated(), every event through target.shell.dispatch's run_ready
  and pump_all, data_to_send() drained), with the Dispatchers of tests/unit/shell_util.py
  on a loop whose callbacks the harness runs. It logs in first (one Login Request,
  stage 1 to 3, RFC 7143 6.3, with the operational keys drawn: digests, ImmediateData,
  InitialR2T, the burst lengths, MaxRecvDataSegmentLength; sometimes a discovery
  session), then sends PDUs built per opcode as SPDK's iscsi_fuzz does
  (test/app/fuzz/iscsi_fuzz/iscsi_fuzz.c): each opcode's own fields (11.3-11.19), mostly
  valid sequence numbers and tags (the CmdSN window, the ITTs of commands sent, the TTTs
  of the R2Ts and NOP-Ins the target sent), with the header and data digests when they
  were negotiated, then mutated: the I bit, an AHS, a DataSegmentLength that lies, a cut
  PDU, a reserved opcode (11.2.1.2), a garbage header. Each PDU is received in one to
  three pieces. The connection is then lost (connection_lost()).
- `login`: target.iscsi.login.Login PDU by PDU with random stages, T/C bits, ISID/TSIH/CID
  changes, versions and key=value text (section 5's format, the keys of section 13 and
  12's CHAP keys, with values of every kind and malformed text: no '=', no NUL, non-UTF-8,
  duplicates, long values); after a login that completes, target.iscsi.text's
  TextResponder gets Text Requests (SendTargets, negotiation, continuation by TTT). In
  half the inputs the target (and discovery) requires CHAP (target.iscsi.chap, one-way
  or mutual), and half of those run a well-behaved CHAP login (AuthMethod=CHAP and
  CHAP_A, then CHAP_N/CHAP_R computed by RFC 1994 or drawn wrong, our own CHAP_I/CHAP_C
  or a reflection of the target's, then the operational stage), so that the fuzzer
  starts near the success, mutual and refusal paths of 12.1.3.
- Allowed: Login Responses (any status), Reject, CloseWanted, ProtocolError from the
  TextResponder (the Connection turns it into a Reject and a close). Anything raised out
  of the Connection, Login or TextResponder, or logged as an error, is a finding.
"""

from __future__ import annotations

import base64
import struct

import crc32c

from target.backing.memory import MemoryStore
from target.iscsi import chap
from target.iscsi.chap import Credentials
from target.iscsi.connection import Connection
from target.iscsi.errors import ProtocolError
from target.iscsi.keys import TextError, parse
from target.iscsi.login import Login, LoginOutcome
from target.iscsi.pdu import Bhs
from target.iscsi.portal import Portal, TargetEntry
from target.iscsi.session import SessionRegistry
from target.iscsi.text import TextResponder
from target.scsi.device import ScsiDevice
from target.scsi.disk import make_disk
from target.shell.dispatch import Dispatcher
from tests.fuzz import scsi
from tests.fuzz.harness import Finding, Target
from tests.fuzz.provider import Provider
from tests.unit.shell_util import FakeLink, FakeLoop, FakeWorkers

TNAME = "iqn.2026-12.local.fuzz:disk"
INAME = "iqn.2026-12.local.fuzz:initiator"
CHAP_USER, CHAP_SECRET = "fuzz-user", b"fuzz-initiator-secret"
CHAP_TUSER, CHAP_TSECRET = "fuzz-target", b"fuzz-target-secret-2"
RESERVED = 0xFFFFFFFF
# BHS (RFC 7143 11.2.1): opcode, flags, bytes 2-3, TotalAHSLength << 24 | DSL, LUN, ITT,
# then the eight opcode-specific words of bytes 20-47.
_BHS = struct.Struct(">BBBBI8sIIIIIIII")
_NOP_OUT, _SCSI_CMD, _TMF, _LOGIN, _TEXT, _DATA_OUT, _LOGOUT, _SNACK = 0, 1, 2, 3, 4, 5, 6, 0x10
_R2T, _NOP_IN, _TEXT_RSP, _LOGIN_RSP = 0x31, 0x20, 0x24, 0x23


def _pack(op: int, flags: int, b2: int, b3: int, ahs: bytes, dsl: int, lun: bytes, itt: int,
          w: tuple) -> bytes:
    """A BHS; `ahs` only gives TotalAHSLength (the caller appends it)."""
    words = (tuple(w) + (0,) * 7)[:7]
    return _BHS.pack(op & 0xFF, flags & 0xFF, b2 & 0xFF, b3 & 0xFF,
                     ((len(ahs) // 4) & 0xFF) << 24 | (dsl & 0xFFFFFF), lun,
                     itt & 0xFFFFFFFF, *(x & 0xFFFFFFFF for x in words))


def _digest(*parts: bytes) -> bytes:
    """CRC32C (RFC 7143 13.1, appendix B.4), little-endian on the wire as the crc32c
    package computes it (Castagnoli, the iSCSI polynomial)."""
    value = 0
    for part in parts:
        value = crc32c.crc32c(part, value)
    return struct.pack("<I", value)


def _pad(n: int) -> bytes:
    return bytes(-n % 4)


def keytext(pairs) -> bytes:
    return b"".join(k.encode() + b"=" + v.encode() + b"\0" for k, v in pairs)


# --- the world one connection lives in ------------------------------------------------------

class World:
    """A portal with one target (a memory disk at LUN 0, and LUN 1 unless `one_lun`), its
    Dispatchers on a FakeLoop, medium access inline or left to FakeWorkers."""

    def __init__(self, p: Provider) -> None:
        self.loop = FakeLoop()
        self.workers = FakeWorkers()
        luns = [make_disk(0, MemoryStore(1 << 20), thin=True)]
        if p.bool():
            luns.append(make_disk(1, MemoryStore(64 << 10), block_size=4096))
        self.device = ScsiDevice(TNAME, luns)
        self.offload = p.bool()
        self.dispatchers = {}
        for lu in luns:
            if self.offload:
                self.dispatchers[lu] = Dispatcher(self.loop, lu, None, executor=self.workers)
            else:
                lu.io_threads = 0
                self.dispatchers[lu] = Dispatcher(self.loop, lu, None)
        self.portal = Portal({TNAME: TargetEntry(TNAME, self.device, alias="fuzz")},
                             ["127.0.0.1:3260"], SessionRegistry(),
                             max_outstanding_r2t=p.pick((16, 1, 4)),
                             initial_r2t=p.chance(4), immediate_data=not p.chance(4))

    def settle(self, run_workers: bool = True) -> None:
        self.loop.run()
        if run_workers:
            self.workers.run_all(self.loop)


class Peer:
    """The initiator's side of the one connection: what it knows of the target's state."""

    def __init__(self, world: World, link: FakeLink) -> None:
        self.world = world
        self.link = link
        self.conn: Connection = link.conn
        self.cmdsn = 1
        self.itt = 1
        self.exp_statsn = 0
        self.hdigest = self.ddigest = False
        self.send_max = 8192
        self.first_burst = 65536
        self.immediate = True
        self.commands: dict[int, list] = {}  # ITT -> [EDTL, LUN, offset sent, DataSN]
        self.r2ts: list[tuple[int, int, int, int]] = []  # (ITT, TTT, offset, length)
        self.nop_ttts: list[int] = []
        self.text_ttt: tuple[int, int] | None = None  # (ITT, TTT) of a continuing answer
        self.statuses: list[tuple[int, int]] = []  # Login Responses' (class, detail)

    # output of the target --------------------------------------------------------------

    def take(self) -> None:
        """Read what the target sent, learning its R2Ts, pings and text TTTs."""
        raw = b"".join(bytes(b) for b in self.conn.data_to_send())
        pos = 0
        while pos + 48 <= len(raw):
            head = raw[pos:pos + 48]
            op = head[0] & 0x3F
            ahs = head[4] * 4
            dsl = int.from_bytes(head[5:8], "big")
            itt, ttt = struct.unpack_from(">II", head, 16)
            pos += 48 + ahs + (4 if self.hdigest else 0)
            data = raw[pos:pos + dsl]
            pos += dsl + (-dsl % 4) + (4 if self.ddigest and dsl else 0)
            statsn = struct.unpack_from(">I", head, 24)[0]
            self.exp_statsn = (statsn + 1) & 0xFFFFFFFF
            exp_cmdsn = struct.unpack_from(">I", head, 28)[0]
            if op == _R2T:
                offset, length = struct.unpack_from(">II", head, 40)
                self.r2ts.append((itt, ttt, offset, length))
            elif op == _NOP_IN and ttt != RESERVED:
                self.nop_ttts.append(ttt)
            elif op == _TEXT_RSP:
                self.text_ttt = (itt, ttt) if head[1] & 0x40 else None
            elif op == _LOGIN_RSP:
                self.statuses.append((head[36], head[37]))
                self.cmdsn = exp_cmdsn
            del data

    # input to the target ---------------------------------------------------------------

    def send(self, p: Provider, raw: bytes) -> None:
        cuts = sorted(p.int_in_range(0, len(raw)) for _ in range(p.int_in_range(0, 2)))
        start = 0
        for cut in [*cuts, len(raw)]:
            if cut > start:
                self.link.feed(raw[start:cut])
                start = cut
            if self.conn.want_close:
                break

    def frame(self, header: bytes, data: bytes = b"", ahs: bytes = b"",
              p: Provider | None = None) -> bytes:
        """Header (+AHS), header digest, data, padding, data digest: a PDU (11.2)."""
        h = header + ahs
        bad = p is not None and p.chance(32)  # a digest that does not match
        out = h + (_digest(h) if not bad else b"\xde\xad\xbe\xef") if self.hdigest else h
        if data:
            out += data + _pad(len(data))
            if self.ddigest:
                out += _digest(data, _pad(len(data))) if not (p and p.chance(32)) else bytes(4)
        return out

    def next_itt(self) -> int:
        itt, self.itt = self.itt, (self.itt + 1) & 0x7FFFFFFF or 1
        return itt


def login(p: Provider, peer: Peer) -> bool:
    """One Login Request from stage 1 straight to full feature phase (6.3: allowed when no
    authentication is required), its keys drawn; True when the target accepted it."""
    discovery = p.chance(16)
    pairs = [("InitiatorName", INAME)]
    pairs += [("SessionType", "Discovery")] if discovery else [("TargetName", TNAME)]
    pairs += [
        ("HeaderDigest", p.pick(("None", "CRC32C", "CRC32C,None", "None,CRC32C"))),
        ("DataDigest", p.pick(("None", "CRC32C", "CRC32C,None"))),
        ("ImmediateData", p.pick(("Yes", "No"))),
        ("InitialR2T", p.pick(("No", "Yes"))),
        ("MaxBurstLength", str(p.pick((262144, 512, 4096, 65536, 16777215)))),
        ("FirstBurstLength", str(p.pick((65536, 512, 8192, 262144)))),
        ("MaxRecvDataSegmentLength", str(p.pick((262144, 512, 8192, 16777215)))),
        ("MaxOutstandingR2T", str(p.pick((1, 16, 2)))),
        ("ErrorRecoveryLevel", "0"),
    ]
    text = keytext(pairs)
    header = _pack(_LOGIN | 0x40, 0x80 | 1 << 2 | 3, 0, 0, b"", len(text),
                   (0x400000000000 + 1 << 16).to_bytes(8, "big"), 0, (0, 1, 0))
    peer.link.feed(header + text + _pad(len(text)))
    peer.take()
    conn = peer.conn
    if conn.session is None:
        return False
    params = conn.params
    peer.hdigest, peer.ddigest = params.header_digest, params.data_digest
    peer.send_max = params.target_max_recv_data_segment_length
    peer.first_burst = params.first_burst_length
    peer.immediate = params.immediate_data
    peer.initial_r2t = params.initial_r2t
    return True


# --- PDUs per opcode (SPDK iscsi_fuzz's approach: valid fields first, then mutated) ----------

def _lun(p: Provider) -> bytes:
    if p.chance(16):
        return p.exact_bytes(8)
    return bytes((0, p.pick((0, 1, 0, 7)), 0, 0, 0, 0, 0, 0))


def _cmdsn(p: Provider, peer: Peer, immediate: bool) -> int:
    """Mostly the next CmdSN; sometimes a repeat, one far ahead or behind (4.2.2.1)."""
    sn = peer.cmdsn
    choice = p.int_in_range(0, 15)
    if choice == 13:
        sn += p.pick((1, 2, 200, 1 << 31))
    elif choice == 14:
        sn -= p.pick((1, 2, 1 << 31))
    elif choice == 15:
        sn = p.int_in_range(0, RESERVED)
    elif not immediate:
        peer.cmdsn = (peer.cmdsn + 1) & 0xFFFFFFFF
    return sn & 0xFFFFFFFF


def scsi_command(p: Provider, peer: Peer) -> bytes:
    """SCSI Command (11.3): a CDB of the disk table, R/W and EDTL mostly as it asks,
    immediate data within FirstBurstLength and the target's MaxRecvDataSegmentLength."""
    cdb = scsi.cdb(p, 2048)
    out = scsi.parameter_list(p, 512)
    read = p.bool()
    write = bool(out) and not p.chance(8)
    edtl = p.pick((len(out), len(out), 512, 4096, 0, 1 << 20, 0xFFFFFFFF,
                   p.int_in_range(0, 1 << 17), 16 << 20))
    immediate = p.chance(16)
    final = not p.chance(8)
    itt = peer.next_itt() if not p.chance(32) else p.pick((RESERVED, peer.itt - 1))
    lun = _lun(p)
    attr = p.pick((1, 1, 2, 3, 0, 4, 5, 7))
    flags = (0x80 if final else 0) | (0x40 if read else 0) | (0x20 if write else 0) | attr
    data = b""
    if write and peer.immediate and not p.chance(4):
        data = out[:min(peer.first_burst, peer.send_max, edtl)]
    ahs = b""
    if len(cdb) > 16:  # the Extended CDB AHS (11.2.1.3): type 1, the CDB beyond byte 16
        rest = cdb[16:]
        ahs = struct.pack(">HBB", len(rest) + 1, 1, 0) + rest + _pad(len(rest) + 4)
    sn = _cmdsn(p, peer, immediate)
    cdb16 = cdb[:16].ljust(16, b"\0")
    header = _pack(_SCSI_CMD | (0x40 if immediate else 0), flags, 0, 0, ahs, len(data), lun,
                   itt, (edtl, sn, peer.exp_statsn, *struct.unpack(">IIII", cdb16)))
    if write:
        peer.commands[itt] = [edtl, lun, len(data), 0]
    return peer.frame(header, data, ahs, p)


def data_out(p: Provider, peer: Peer) -> bytes:
    """Data-Out (11.7): for an R2T the target sent (its TTT, offset, length), or
    unsolicited (TTT ffffffff) after a command's immediate data, or for any tag at all."""
    choice = p.int_in_range(0, 7)
    if peer.r2ts and choice < 5:
        itt, ttt, offset, length = peer.r2ts[p.int_in_range(0, len(peer.r2ts) - 1)]
        cmd = peer.commands.get(itt)
        lun = cmd[1] if cmd else bytes(8)
    elif peer.commands and choice < 7:
        itt = p.pick(sorted(peer.commands))
        edtl, lun, offset, _ = peer.commands[itt]
        ttt, length = RESERVED, max(0, min(edtl, peer.first_burst) - offset)
    else:
        itt, ttt, lun = p.int_in_range(0, RESERVED), p.pick((RESERVED, 1, 0)), bytes(8)
        offset, length = p.int_in_range(0, 1 << 20), p.int_in_range(0, 8192)
    n = min(length, peer.send_max, 65536)
    if p.chance(8):
        n = p.pick((0, 1, n + 1, n + 512))
    cmd = peer.commands.get(itt)
    datasn = cmd[3] if cmd else 0
    if p.chance(16):
        datasn = p.pick((datasn + 1, datasn - 1, 0xFFFFFFFF, 0))
    if p.chance(16):
        offset = p.pick((offset + 1, offset + n, 0, 0xFFFFFFFF, offset - 512))
    final = n >= length or p.chance(8)
    if cmd:
        cmd[3] = (datasn + 1) & 0xFFFFFFFF
        if ttt == RESERVED:
            cmd[2] = offset + n
    if final and ttt != RESERVED:
        peer.r2ts = [r for r in peer.r2ts if r[1] != ttt]
    data = bytes(n)
    header = _pack(_DATA_OUT, 0x80 if final else 0, 0, 0, b"", n, lun, itt,
                   (ttt, 0, peer.exp_statsn, 0, datasn, offset, 0))
    return peer.frame(header, data, b"", p)


def nop_out(p: Provider, peer: Peer) -> bytes:
    """NOP-Out (11.18): a ping (ITT, TTT ffffffff, maybe data), or the answer to a NOP-In
    (ITT ffffffff, its TTT), or both tags reserved."""
    data = p.bytes(p.pick((0, 0, 4, 100, 9000)))
    if peer.nop_ttts and p.bool():
        itt, ttt, immediate = RESERVED, peer.nop_ttts.pop(0), True
    else:
        itt = p.pick((peer.next_itt(), peer.next_itt(), RESERVED))
        ttt, immediate = p.pick((RESERVED, RESERVED, 5)), p.bool()
    sn = _cmdsn(p, peer, immediate)
    header = _pack(_NOP_OUT | (0x40 if immediate else 0), 0x80, 0, 0, b"", len(data), _lun(p),
                   itt, (ttt, sn, peer.exp_statsn))
    return peer.frame(header, data, b"", p)


def task_management(p: Provider, peer: Peer) -> bytes:
    """TMF Request (11.5): every function 1-14 and reserved ones, referencing a command
    sent or any tag, with a RefCmdSN near or far."""
    function = p.pick((1, 2, 3, 4, 5, 6, 7, 8, 14, 0, 9, 15, 127))
    ref = p.pick(sorted(peer.commands)) if peer.commands and p.bool() else p.pick(
        (RESERVED, 1, peer.itt - 1, p.int_in_range(0, RESERVED)))
    immediate = not p.chance(4)
    sn = _cmdsn(p, peer, immediate)
    refsn = p.pick((peer.cmdsn - 1, peer.cmdsn, 0, peer.cmdsn + 100))
    header = _pack(_TMF | (0x40 if immediate else 0), 0x80 | function, 0, 0, b"", 0, _lun(p),
                   peer.next_itt(), (ref, sn, peer.exp_statsn, refsn, 0))
    return peer.frame(header, b"", b"", p)


def text_request(p: Provider, peer: Peer) -> bytes:
    """Text Request (11.10): SendTargets, operational keys in full feature phase, a
    continuation of the target's answer by its TTT, F and C in every combination."""
    if peer.text_ttt and p.bool():
        itt, ttt = peer.text_ttt
        data = b""
    else:
        itt, ttt = peer.next_itt(), p.pick((RESERVED, RESERVED, 1))
        data = key_text(p, 3)
    flags = p.pick((0x80, 0x80, 0x40, 0x00, 0xC0))
    immediate = p.bool()
    sn = _cmdsn(p, peer, immediate)
    header = _pack(_TEXT | (0x40 if immediate else 0), flags, 0, 0, b"", len(data), bytes(8),
                   itt, (ttt, sn, peer.exp_statsn))
    return peer.frame(header, data, b"", p)


def logout(p: Provider, peer: Peer) -> bytes:
    """Logout Request (11.14): reason 0-2 and reserved ones."""
    reason = p.pick((0, 1, 2, 3, 127))
    immediate = p.bool()
    sn = _cmdsn(p, peer, immediate)
    header = _pack(_LOGOUT | (0x40 if immediate else 0), 0x80 | reason, 0, 0, b"", 0,
                   bytes(8), peer.next_itt(), (p.pick((0, 1)) << 16, sn, peer.exp_statsn))
    return peer.frame(header, b"", b"", p)


def snack(p: Provider, peer: Peer) -> bytes:
    """SNACK Request (11.16): any type; ErrorRecoveryLevel 0 has none to serve."""
    header = _pack(_SNACK, 0x80 | p.int_in_range(0, 15), 0, 0, b"", 0, bytes(8),
                   p.int_in_range(0, RESERVED), (RESERVED, 0, peer.exp_statsn, 0, 0,
                                                 p.int_in_range(0, 10), p.int_in_range(0, 10)))
    return peer.frame(header, b"", b"", p)


def login_again(p: Provider, peer: Peer) -> bytes:
    """A Login Request in full feature phase (not allowed: 11.12 after login)."""
    text = key_text(p, 2)
    header = _pack(_LOGIN | 0x40, p.int_in_range(0, 255), 0, 0, b"", len(text),
                   p.exact_bytes(8), peer.next_itt(), (0, peer.cmdsn, peer.exp_statsn))
    return peer.frame(header, text, b"", p)


def any_opcode(p: Provider, peer: Peer) -> bytes:
    """Any opcode (reserved ones, target opcodes: 11.2.1.2) and random fields."""
    op = p.int_in_range(0, 0xFF)
    rest = p.exact_bytes(47)
    dsl = p.pick((0, 0, 4, 100))
    raw = bytearray(bytes([op]) + rest)
    raw[4] = p.pick((0, 0, 1))
    raw[5:8] = dsl.to_bytes(3, "big")
    return peer.frame(bytes(raw[:48]), bytes(dsl), bytes(raw[4] * 4), p)


PDUS = (scsi_command, scsi_command, scsi_command, scsi_command, data_out, data_out, data_out,
        nop_out, task_management, text_request, scsi_command, data_out, snack, login_again,
        any_opcode, logout)


def mutate(p: Provider, raw: bytes) -> bytes:
    """After the per-opcode build: a DataSegmentLength or AHS length that lies, a PDU cut
    short, or a flipped byte of the header."""
    if not p.chance(8):
        return raw
    b = bytearray(raw)
    kind = p.int_in_range(0, 3)
    if kind == 0:
        b[5:8] = p.pick((0, 1, 0xFFFFFF, 262145, len(raw))).to_bytes(3, "big")
    elif kind == 1:
        b[4] = p.pick((1, 255, 2))
    elif kind == 2:
        b = b[:p.int_in_range(0, len(b))]
    else:
        b[p.int_in_range(0, 47)] ^= 1 << p.int_in_range(0, 7)
    return bytes(b)


def run_connection(data: bytes) -> None:
    p = Provider(data)
    world = World(p)
    link = FakeLink(world.portal, "127.0.0.1:40000", world.dispatchers, world.loop)
    peer = Peer(world, link)
    if login(p, peer):
        for _ in range(p.int_in_range(1, 24)):
            if link.conn.want_close or not p.remaining:
                break
            build = p.pick(PDUS)
            peer.send(p, mutate(p, build(p, peer)))
            world.settle(run_workers=not p.chance(4))
            peer.take()
    link.close()
    world.settle()
    for lu in world.device.luns.values():
        if world.dispatchers[lu].lu is not lu:
            raise Finding("dispatcher lost its LU")


# --- login and text negotiation --------------------------------------------------------------

KEYS = ("InitiatorName", "TargetName", "SessionType", "AuthMethod", "HeaderDigest",
        "DataDigest", "MaxConnections", "SendTargets", "InitiatorAlias", "TargetAlias",
        "TargetAddress", "TargetPortalGroupTag", "InitialR2T", "ImmediateData",
        "MaxRecvDataSegmentLength", "MaxBurstLength", "FirstBurstLength", "DefaultTime2Wait",
        "DefaultTime2Retain", "MaxOutstandingR2T", "DataPDUInOrder", "DataSequenceInOrder",
        "ErrorRecoveryLevel", "TaskReporting", "iSCSIProtocolLevel", "IFMarker", "OFMarker",
        "IFMarkInt", "OFMarkInt", "CHAP_A", "CHAP_I", "CHAP_C", "CHAP_N", "CHAP_R",
        "X-com.example.vendor", "X#org.example", "Unknown")
VALUES = ("None", "CRC32C", "CRC32C,None", "Yes", "No", "0", "1", "512", "8192", "262144",
          "16777215", "16777216", "4294967296", "-1", "0x10", "0xFFFFFFFFFFFFFFFFFF", "",
          "Normal", "Discovery", "All", TNAME, INAME, "iqn.bogus", "CHAP", "CHAP,None",
          "None,CHAP", "5", "5,6,7,8", "56", "NotUnderstood", "Irrelevant", "Reject",
          "1~65535", "0b1010", "a,b,,c", "3600", "65535", "Discovery,Normal",
          "0x" + "ab" * 600, "0b" + "QUJD" * 10)


def key_text(p: Provider, max_pairs: int) -> bytes:
    """key=value text (RFC 7143 6.1, 5.1), mostly well-formed, sometimes not at all."""
    kind = p.int_in_range(0, 15)
    if kind == 15:
        return p.bytes(p.pick((0, 16, 300, 9000)))
    out = bytearray()
    for _ in range(p.int_in_range(0, max_pairs)):
        key = p.pick(KEYS).encode()
        value = p.pick(VALUES).encode()
        if kind == 14:
            value += bytes((0xFF, 0xFE))  # not UTF-8
        if kind == 13:
            value = value * 40
        sep = b"=" if kind != 12 else b""
        out += key + sep + value + (b"\0" if kind != 11 else b"")
    return bytes(out)


def chap_answer(p: Provider, offered: dict[str, str]) -> list[tuple[str, str]]:
    """After the target's CHAP_A/CHAP_I/CHAP_C (RFC 7143 12.1.3): CHAP_N and CHAP_R, the
    response right (RFC 1994) or not, sometimes with our own CHAP_I/CHAP_C (mutual), a
    reflection of the target's, or nothing at all."""
    kind = p.int_in_range(0, 7)
    if kind == 7:
        return []
    try:
        alg, ident = int(offered["CHAP_A"]), int(offered["CHAP_I"])
        challenge = chap.decode_binary(offered["CHAP_C"])
        good = chap.response(alg, ident, CHAP_SECRET, challenge)
    except (KeyError, ValueError):
        alg, good, challenge = 5, b"\0" * 16, b"\0" * 16
    r = good if kind < 4 else p.bytes(p.pick((0, 1, 16, 32, 1025)))
    value = "0b" + base64.b64encode(r).decode() if p.chance(4) else "0x" + r.hex()
    pairs = [("CHAP_N", CHAP_USER if kind != 5 else p.pick(VALUES)), ("CHAP_R", value)]
    if kind in (1, 2):  # mutual: our identifier and challenge
        pairs += [("CHAP_I", str(p.int_in_range(0, 256))),
                  ("CHAP_C", "0x" + (challenge if kind == 2 else p.bytes(16)).hex())]
    return pairs


def login_pdu(p: Provider, first: bool, isid: int, tsih: int,
              extra: list[tuple[str, str]] = (), stages: tuple | None = None) -> bytes:
    """A Login Request (11.12): flags T/C/CSG/NSG, versions, ISID/TSIH/CID, key text. The
    first one names the initiator and the target unless the draw says otherwise; `extra`
    (CHAP keys) go in first; `stages` (CSG, NSG) makes a T=1 request of a well-behaved
    initiator (the scripted CHAP login)."""
    if stages is not None:
        (csg, nsg), transit, cont = stages, True, False
    else:
        csg = 0 if extra and not p.chance(8) else p.pick((0, 1, 0, 1, 3, 2))
        nsg = p.pick((1, 3, 0, 2))
        transit, cont = p.pick((True, True, False)), p.chance(8)
    flags = (0x80 if transit else 0) | (0x40 if cont else 0) | csg << 2 | nsg
    pairs = []
    if first and (stages is not None or not p.chance(8)):
        pairs = [("InitiatorName", INAME)]
        pairs += [("TargetName", p.pick((TNAME, TNAME.upper(), "iqn.no.such")))] if not p.chance(
            8) else [("SessionType", "Discovery")]
        if stages is not None:
            pairs[1:] = [("TargetName", TNAME)] if not p.chance(4) else [
                ("SessionType", "Discovery")]
            pairs += [("AuthMethod", "CHAP"), ("CHAP_A", p.pick(("5", "7,6,5", "8", "6")))]
        elif csg == 0:
            pairs.append(("AuthMethod", p.pick(("None", "CHAP,None", "CHAP", "None,CHAP"))))
        if csg == 0 and stages is None and p.chance(2):
            pairs.append(("CHAP_A", p.pick(("5", "7,6,5", "8", "56", "5,6,7,8", "99"))))
    pairs = list(extra) + pairs
    text = keytext(pairs) + (key_text(p, 6) if stages is None or p.chance(8) else b"")
    if p.chance(16):
        isid ^= 1
    if p.chance(16):
        tsih = p.pick((1, 0xFFFF, tsih + 1))
    vmax, vmin = (0, 0) if not p.chance(16) else (p.int_in_range(0, 3), p.int_in_range(0, 3))
    return _pack(_LOGIN | 0x40, flags, vmax, vmin, b"", len(text),
                 (isid << 16 | tsih).to_bytes(8, "big"), 0x1000,
                 (p.pick((0, 1)) << 16, 10, 20)) + text + _pad(len(text))


def run_login(data: bytes) -> None:
    p = Provider(data)
    world = World(p)
    portal = world.portal
    if p.chance(8):
        portal.auth_required = True
    if p.chance(2):  # CHAP required for the target (and for discovery), mutual or not
        mutual = p.chance(2)
        cred = Credentials(CHAP_USER, CHAP_SECRET, CHAP_TUSER if mutual else "",
                           CHAP_TSECRET if mutual else b"")
        portal.targets[TNAME].chap = cred
        portal.discovery_chap = cred
    # A well-behaved CHAP login (AuthMethod and CHAP_A, the answer, then to full feature
    # phase) with drawn algorithms and answers: the fuzzer starts near the success paths.
    script = ((0, 1), (0, 1), (1, 3)) if portal.discovery_chap and p.chance(2) else None
    step_login = Login(portal, "127.0.0.1:3260")
    isid, tsih = 0x400000000001, 0
    session = None
    extra: list[tuple[str, str]] = []
    for i in range(3 if script else p.int_in_range(1, 8)):
        raw = login_pdu(p, i == 0, isid, tsih, extra, script[i] if script else None)
        extra = []
        header = raw[:48]
        step = step_login.receive(Bhs(header), raw[48:48 + int.from_bytes(header[5:8], "big")])
        for out in step.pdus:
            if out[0] != _LOGIN_RSP:
                raise Finding(f"login answered with opcode {out[0]:#x}")
            try:
                offered = dict(parse(out[48:48 + int.from_bytes(out[5:8], "big")]))
            except TextError:
                offered = {}
            if "CHAP_C" in offered:
                extra = chap_answer(p, offered)
        if step.outcome is LoginOutcome.COMPLETE:
            session = step.session
            break
        if step.outcome is LoginOutcome.FAILED:
            return
    if session is None:
        return
    text = TextResponder(session, portal, "127.0.0.1:3260")
    ttt = RESERVED
    for _ in range(p.int_in_range(0, 6)):
        body = key_text(p, 4)
        flags = p.pick((0x80, 0x80, 0x40, 0x00, 0xC0))
        header = _pack(_TEXT, flags, 0, 0, b"", len(body), bytes(8), p.pick((7, 7, 8)),
                       (p.pick((ttt, RESERVED, 99)), 1, 0))
        try:
            pieces = text.receive(Bhs(header), body)
        except ProtocolError:
            return
        for _flags, next_ttt, _piece in pieces:
            ttt = next_ttt


def seed_connection() -> list[bytes]:
    """Exhausted after login: the default keys, one lone login (the harness's first
    choices). The fuzzer grows the rest."""
    return [b"", bytes(64), bytes(range(256))]


def seed_login() -> list[bytes]:
    return [b"", bytes(32), bytes(range(256)), keytext([("SendTargets", "All")])]


CONNECTION = Target("connection", run_connection,
                    "PDU framing and the connection state machine, logged in first",
                    seed_connection)
LOGIN = Target("login", run_login, "login (Login) and text negotiation (TextResponder)",
               seed_login)
