"""Persistent reservations through a target restart (APTPL, SPC-4 5.13.5.1) over iSCSI.

The server serves an image file; an initiator registers with APTPL=1 and reserves, the
server process is stopped and a new one started on the same image: the same initiator
ports (name and ISID) find their keys and the reservation again, the PRgeneration back at
zero (SPC-4 6.15.2). A state file that cannot be read stops the server with a message
naming it (SPC-4 5.13.5.3.3: the preserved information is not dropped silently).
"""

from __future__ import annotations

import struct

import pytest

from target.scsi.task import Status
from target.shell.initiator import Initiator
from target.testing.servers import OurTarget, ServerError

pytestmark = pytest.mark.integration

A = ("iqn.2026-11.local.test:aptpl-a", 0x400000000101)
B = ("iqn.2026-11.local.test:aptpl-b", 0x400000000102)
WE = 0x01
WRITE10 = struct.pack(">BBIBHB", 0x2A, 0, 0, 0, 1, 0)


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "lun0.img"
    with open(path, "wb") as f:
        f.truncate(16 << 20)
    return path


def session(target: OurTarget, who: tuple[str, int]) -> Initiator:
    ini = Initiator("127.0.0.1", target.port, target.iqn, initiator_name=who[0], isid=who[1],
                    timeout=20)
    ini.connect()
    ini.login()
    for _ in range(4):  # the first contact's unit attention
        if ini.command(bytes(6)).status == Status.GOOD:
            break
    return ini


def pr_out(ini: Initiator, action: int, key: int, sa_key: int, type_: int = 0,
           aptpl: bool = False):
    cdb = struct.pack(">BBB2xIB", 0x5F, action, type_, 24, 0)
    return ini.command(cdb, data=struct.pack(">QQIBx2x", key, sa_key, 0, int(aptpl)))


def pr_in(ini: Initiator, action: int) -> bytes:
    r = ini.command(struct.pack(">BB5xHB", 0x5E, action, 1024, 0), read=1024)
    assert r.status == Status.GOOD
    return r.data


def read_keys(ini: Initiator) -> tuple[int, list[int]]:
    d = pr_in(ini, 0)
    gen, n = struct.unpack_from(">II", d)
    return gen, [struct.unpack_from(">Q", d, 8 + 8 * i)[0] for i in range(n // 8)]


def test_registrations_and_reservation_survive_a_restart(image, tmp_path):
    with OurTarget(["--backing", str(image)], workdir=tmp_path) as t:
        a, b = session(t, A), session(t, B)
        try:
            assert pr_out(b, 0, 0, 0xBBBB).status == Status.GOOD              # REGISTER
            assert pr_out(a, 0, 0, 0xAAAA, aptpl=True).status == Status.GOOD  # APTPL=1
            assert pr_out(a, 1, 0xAAAA, 0, WE).status == Status.GOOD          # RESERVE
            caps = pr_in(a, 2)
            assert caps[2] & 0x01 and caps[3] & 0x01                          # PTPL_C, PTPL_A
        finally:
            a.logout()
            b.close()
    assert (tmp_path / "lun0.img.pr").exists()

    with OurTarget(["--backing", str(image)], workdir=tmp_path) as t:
        a, b = session(t, A), session(t, B)
        try:
            assert read_keys(a) == (0, [0xBBBB, 0xAAAA])
            res = pr_in(b, 1)
            assert struct.unpack_from(">IIQ", res) == (0, 16, 0xAAAA) and res[21] == WE
            assert a.command(WRITE10, data=bytes(512)).status == Status.GOOD
            assert b.command(WRITE10, data=bytes(512)).status == Status.RESERVATION_CONFLICT
            # B's registration is back under its key: PREEMPT with it works.
            assert pr_out(b, 4, 0xBBBB, 0xAAAA, WE).status == Status.GOOD
            assert b.command(WRITE10, data=bytes(512)).status == Status.GOOD
            # APTPL=0 in the last REGISTER: the state file goes.
            assert pr_out(b, 0, 0xBBBB, 0xBBBB).status == Status.GOOD
            assert not (tmp_path / "lun0.img.pr").exists()
        finally:
            a.close()
            b.close()


def test_memory_lun_refuses_aptpl(tmp_path):
    with OurTarget([], workdir=tmp_path) as t:
        a = session(t, A)
        try:
            r = pr_out(a, 0, 0, 0xAAAA, aptpl=True)
            assert r.status == Status.CHECK_CONDITION
            assert r.sense[2] & 0x0F == 0x05 and r.sense[12:14] == b"\x26\x00"
            assert pr_in(a, 2)[2] & 0x01 == 0                                 # PTPL_C=0
        finally:
            a.close()


def test_unreadable_state_file_stops_the_server(image, tmp_path):
    state = tmp_path / "lun0.img.pr"
    state.write_text("{ not json")
    with pytest.raises(ServerError) as info, \
            OurTarget(["--backing", str(image)], workdir=tmp_path):
        pass
    assert str(state) in str(info.value) and "rm " in str(info.value)
    assert state.read_text() == "{ not json"
