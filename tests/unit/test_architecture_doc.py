"""docs/ARCHITECTURE.md stays true of the code (issue 13: the map must not go stale silently).

- Every `target.module:attribute.path` in backticks is imported and resolved.
- The module list names every module under target/, and nothing else.
- The hop tables of READ(10) and WRITE(10) (immediate data, R2T) are checked against the
  code itself, not against our reading of it: the command is sent over a real loopback
  TCP socket to a real target.shell.server.Link (real Connection, Dispatcher, LogicalUnit,
  MemoryStore) and the calls are recorded with sys.setprofile; the functions of each
  table must be entered in that order (a subsequence of the profile), and the stated
  READ(10) hop count must be the table's. The answers are checked too: Data-In with
  status GOOD and the data written (RFC 7143 11.7.4 phase collapse), R2T then SCSI
  Response (RFC 7143 11.8, 11.4).
"""

from __future__ import annotations

import asyncio
import importlib
import re
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from target.backing.memory import MemoryStore
from target.iscsi import pdu
from target.iscsi.pdu import Bhs, Op
from target.iscsi.session import Session, SessionParams, SessionRegistry
from target.scsi.device import ScsiDevice
from target.scsi.disk import make_disk
from target.shell.dispatch import Dispatcher
from target.shell.server import Link, Server

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "ARCHITECTURE.md"
REF = re.compile(r"`(target(?:\.\w+)*):([A-Za-z_][\w.]*)`")


def _doc() -> str:
    return DOC.read_text()


def resolve(module: str, path: str) -> object:
    obj: object = importlib.import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def test_every_reference_resolves() -> None:
    refs = REF.findall(_doc())
    assert len(refs) > 50, "the doc's references were not found: has their form changed?"
    missing = []
    for module, path in sorted(set(refs)):
        try:
            resolve(module, path)
        except (ImportError, AttributeError) as exc:
            missing.append(f"{module}:{path} ({exc})")
    assert not missing, "docs/ARCHITECTURE.md names what the code no longer has:\n" + \
        "\n".join(missing)


def _section(name: str) -> str:
    m = re.search(rf"<!-- {re.escape(name)} -->\n(.*?)<!-- /", _doc(), re.S)
    assert m, f"marker <!-- {name} --> not found in docs/ARCHITECTURE.md"
    return m.group(1)


def test_module_list_is_complete() -> None:
    listed = re.findall(r"^- `(target/[\w/]+\.py)`: \S", _section("modules"), re.M)
    present = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "target").rglob("*.py"))
    assert sorted(listed) == sorted(set(listed)), "a module is listed twice"
    assert set(listed) == set(present), (
        f"not in the module list: {sorted(set(present) - set(listed))}; "
        f"listed but absent: {sorted(set(listed) - set(present))}")


def _hops(name: str) -> list[str]:
    rows = re.findall(r"^\| (\d+) \| `([\w.]+:[\w.]+)` \|", _section(f"hops: {name}"), re.M)
    assert [int(n) for n, _ in rows] == list(range(1, len(rows) + 1)), f"{name}: numbering"
    return [ref for _, ref in rows]


def test_read10_hop_count_is_the_table() -> None:
    m = re.search(r"Hop count of one READ\(10\): \*\*(\d+) hops\*\* \(call boundaries between "
                  r"the (\d+) functions", _doc())
    assert m, "the READ(10) hop count sentence is missing"
    functions = len(_hops("read10"))
    assert (int(m.group(1)), int(m.group(2))) == (functions - 1, functions)


# --- the code path, profiled ---------------------------------------------------------------

def _frame_name(frame) -> str:
    return f"{frame.f_globals.get('__name__')}:{frame.f_code.co_qualname}"


def _expected(ref: str) -> str:
    """The profile's name for a reference: a class is entered through its __init__."""
    module, path = ref.split(":")
    return f"{ref}.__init__" if isinstance(resolve(module, path), type) else ref


class _Rig:
    """A Link on one end of a loopback TCP connection, in full feature phase."""

    def __init__(self, immediate_data: bool) -> None:
        self.loop = asyncio.new_event_loop()
        self.lu = make_disk(0, MemoryStore(1 << 20))
        device = ScsiDevice("iqn.2026-12.local.test:arch", [self.lu])
        portal = SimpleNamespace(max_recv_data_segment_length=262144,
                                 registry=SessionRegistry())
        server = Server(portal, [])
        server.loop = self.loop
        server.dispatchers = {self.lu: Dispatcher(self.loop, self.lu)}
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        self.peer = socket.create_connection(lsock.getsockname())
        sock, _ = lsock.accept()
        lsock.close()
        sock.setblocking(False)
        self.link = Link(server, sock, "peer")
        p = SessionParams(initiator_name="iqn.2026-12.local.test:i", target_name=device.name,
                          isid=0x400000000001, tsih=1, immediate_data=immediate_data,
                          first_burst_length=65536, max_burst_length=262144,
                          max_recv_data_segment_length=262144)
        session = Session(p, device, exp_cmdsn=1)
        portal.registry.add(session)
        self.link.conn.enter_full_feature(session, 1)
        self.lu.ua.seen(self.link.conn.nexus).clear()  # a known nexus, nothing pending
        self.calls: list[str] = []

    def receive(self, raw: bytes) -> list[tuple[Bhs, bytes]]:
        """Send raw from the peer, run one readable event of the Link under the profiler,
        and return the PDUs the peer then receives."""
        self.peer.sendall(raw)
        time.sleep(0.02)  # loopback: the bytes are in the socket's receive queue

        def profile(frame, event, _arg) -> None:
            if event == "call" and frame.f_globals.get("__name__", "").startswith("target."):
                self.calls.append(_frame_name(frame))

        sys.setprofile(profile)
        try:
            self.link._on_readable()
        finally:
            sys.setprofile(None)
        self.peer.settimeout(5)
        out = b""
        while True:
            out += self.peer.recv(1 << 20)
            pdus, complete = _split(out)
            if complete:
                return pdus

    def close(self) -> None:
        self.link.close()
        self.peer.close()
        self.loop.close()


def _split(raw: bytes) -> tuple[list[tuple[Bhs, bytes]], bool]:
    out, pos = [], 0
    while pos + 48 <= len(raw):
        bhs = Bhs(raw[pos:pos + 48])
        end = pos + 48 + bhs.dsl + pdu.pad_len(bhs.dsl)
        if end > len(raw):
            return out, False
        out.append((bhs, raw[pos + 48:pos + 48 + bhs.dsl]))
        pos = end
    return out, pos == len(raw) and bool(out)


def _command(cdb: bytes, *, read: int = 0, data: bytes = b"", immediate: bytes = b"") -> bytes:
    flags = pdu.F_FINAL | (pdu.F_READ if read else 0) | (pdu.F_WRITE if data else 0) | 1
    hdr = pdu.scsi_command(flags=flags, dsl=len(immediate), lun=pdu.ZERO_LUN, itt=1,
                           edtl=read or len(data), cmdsn=1, exp_statsn=0, cdb=cdb)
    return hdr + immediate + pdu.padding(len(immediate))


def _assert_in_order(name: str, calls: list[str]) -> None:
    expected = [_expected(ref) for ref in _hops(name)]
    pos = 0
    for i, want in enumerate(expected, 1):
        try:
            pos = calls.index(want, pos) + 1
        except ValueError:
            pytest.fail(f"docs/ARCHITECTURE.md hops: {name}, row {i} ({want}) is not entered "
                        f"after row {i - 1} on the real path; the calls were:\n"
                        + "\n".join(calls))


READ10 = bytes([0x28, 0, 0, 0, 0, 8, 0, 0, 1, 0])   # LBA 8, 1 block (SBC-4 5.14)
WRITE10 = bytes([0x2A, 0, 0, 0, 0, 8, 0, 0, 1, 0])  # LBA 8, 1 block (SBC-4 5.39)


def test_read10_path_is_the_table() -> None:
    rig = _Rig(immediate_data=True)
    try:
        rig.lu.store.write(8 * 512, b"R" * 512)
        pdus = rig.receive(_command(READ10, read=512))
    finally:
        rig.close()
    (bhs, payload), = pdus
    assert bhs.opcode == Op.DATA_IN and bhs.flags & pdu.F_STATUS and bhs.b3 == 0
    assert payload == b"R" * 512
    _assert_in_order("read10", rig.calls)


def test_write10_immediate_path_is_the_table() -> None:
    rig = _Rig(immediate_data=True)
    try:
        data = b"W" * 512
        pdus = rig.receive(_command(WRITE10, data=data, immediate=data))
        assert rig.lu.store.read(8 * 512, 512) == data
    finally:
        rig.close()
    (bhs, _), = pdus
    assert bhs.opcode == Op.SCSI_RESPONSE and bhs.b3 == 0
    _assert_in_order("write10-immediate", rig.calls)


def test_write10_r2t_path_is_the_table() -> None:
    rig = _Rig(immediate_data=False)
    try:
        data = b"T" * 512
        (r2t, _), = rig.receive(_command(WRITE10, data=data))
        assert r2t.opcode == Op.R2T and (r2t.buffer_offset, r2t.desired_length) == (0, 512)
        dout = pdu.data_out(final=True, dsl=512, lun=pdu.ZERO_LUN, itt=1, ttt=r2t.ttt,
                            exp_statsn=0, datasn=0, buffer_offset=0)
        (resp, _), = rig.receive(dout + data)
        assert rig.lu.store.read(8 * 512, 512) == data
    finally:
        rig.close()
    assert resp.opcode == Op.SCSI_RESPONSE and resp.b3 == 0
    _assert_in_order("write10-r2t", rig.calls)
