"""target.iscsi.route.first_login on the first PDU real initiators send (libiscsi's
iscsi-inq for a Normal session, iscsi-ls for a Discovery session), captured by a plain
listening socket that never answers, and on the RFC 7143 rules it states: a Normal
session's first Login Request names its TargetName (13.4), its length is the BHS, the AHS
and the padded data segment (11.2.1)."""

from __future__ import annotations

import socket
import subprocess

import pytest

from target.iscsi.route import MAX_FIRST_PDU, Incomplete, Route, first_login
from target.testing.servers import HOST, find_program

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not find_program("iscsi-inq"),
                                 reason="needs libiscsi-bin (make test installs it)")]


def capture(tool: str, url_path: str) -> bytes:
    """What `tool` sends first to a portal that never answers (until its 48-byte header
    and the data segment its header announces are in)."""
    lsock = socket.socket()
    lsock.bind((HOST, 0))
    lsock.listen(1)
    lsock.settimeout(20)
    port = lsock.getsockname()[1]
    proc = subprocess.Popen([tool, f"iscsi://{HOST}:{port}{url_path}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    got = bytearray()
    try:
        conn, _ = lsock.accept()
        conn.settimeout(20)
        with conn:
            while len(got) < 48 or len(got) < 48 + got[4] * 4 + \
                    (int.from_bytes(got[5:8], "big") + 3) // 4 * 4:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                got += chunk
    finally:
        proc.kill()
        proc.wait(timeout=30)
        lsock.close()
    return bytes(got)


def test_normal_login_routes_by_target_name():
    iqn = "iqn.2026-12.local.route:disk"
    raw = capture("iscsi-inq", f"/{iqn}/0")
    assert raw[0] & 0x3F == 0x03  # a Login Request (11.12)
    total = 48 + raw[4] * 4 + (int.from_bytes(raw[5:8], "big") + 3) // 4 * 4
    for k in (0, 1, 47, 48, total - 1):
        assert isinstance(first_login(raw[:k]), Incomplete), k
    assert first_login(raw[:total]) == Route(iqn, "TargetName")
    # Received a byte at a time: the first answer that is not Incomplete is the route.
    buf = bytearray()
    for b in raw[:total]:
        buf.append(b)
        decision = first_login(buf)
        if not isinstance(decision, Incomplete):
            break
    assert len(buf) == total and decision.target_name == iqn


def test_discovery_login_stays_with_the_portal():
    raw = capture("iscsi-ls", "")
    decision = first_login(raw)
    assert isinstance(decision, Route) and decision.target_name is None
    assert "Discovery" in decision.why


def test_what_is_not_a_routable_login():
    raw = bytearray(capture("iscsi-inq", "/iqn.2026-12.local.route:x/0"))
    nop = bytearray(raw[:48])
    nop[0] = 0x00  # NOP-Out first: not a login, the portal's login answers it
    assert first_login(nop).target_name is None
    huge = bytearray(raw[:48])
    huge[5:8] = (MAX_FIRST_PDU).to_bytes(3, "big")
    assert first_login(huge).target_name is None  # not waited for: too large
    # The C bit (11.12.2) with the text cut inside TargetName: only whole pairs count.
    dsl = int.from_bytes(raw[5:8], "big")
    text = bytes(raw[48:48 + dsl])
    cut = text.index(b"TargetName=") + 14
    part = bytearray(raw[:48]) + text[:cut] + bytes(-cut & 3)
    part[1] |= 0x40
    part[5:8] = cut.to_bytes(3, "big")
    decision = first_login(part)
    assert isinstance(decision, Route) and decision.target_name is None
