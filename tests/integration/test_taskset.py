"""Task management against commands that really wait in the task set.

The LU has dispatch depth 1 and the rotational model (each 4 KiB READ takes several ms),
so pipelined commands queue in its task set; a second initiator session stands for another
I_T nexus. Driven by the project's own initiator over TCP (PDU by PDU), and by libiscsi's
iSCSITMF tests with the same LU configuration.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from target.iscsi import pdu
from target.iscsi.pdu import Op, TmfFunction
from target.scsi.task import Status, TaskAttr, encode_lun
from target.shell.initiator import Initiator
from target.testing.servers import OurTarget

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
QUEUED = ["--rotational", "--dispatch-depth", "1"]
READ10 = 0x28


@pytest.fixture
def seeking_target(tmp_path):
    backing = tmp_path / "lun0.img"
    with open(backing, "wb") as f:
        f.truncate(256 << 20)
    with OurTarget(["--backing", str(backing), *QUEUED], workdir=tmp_path) as t:
        yield t


def session(target, name: str, isid: int) -> Initiator:
    ini = Initiator("127.0.0.1", target.port, target.iqn, initiator_name=name, isid=isid,
                    timeout=20)
    ini.connect()
    ini.login()
    clear_unit_attention(ini)
    return ini


def clear_unit_attention(ini: Initiator) -> None:
    for _ in range(4):
        if ini.command(bytes(6)).status == Status.GOOD:  # TEST UNIT READY
            return


def send_read(ini: Initiator, lba: int, attr: int = TaskAttr.SIMPLE) -> int:
    """Send READ(10) of 8 blocks without waiting; returns its ITT."""
    itt = ini._next_itt()
    header = pdu.scsi_command(flags=pdu.F_FINAL | pdu.F_READ | attr, dsl=0, lun=encode_lun(0),
                              itt=itt, edtl=4096, cmdsn=ini.cmdsn, exp_statsn=ini.exp_stat_sn,
                              cdb=struct.pack(">BBIBHB", READ10, 0, lba, 0, 8, 0))
    ini.cmdsn = (ini.cmdsn + 1) & 0xFFFFFFFF
    ini.send_pdu(header)
    return itt


def send_tmf(ini: Initiator, function: int, ref_itt: int = pdu.RESERVED_TAG) -> int:
    itt = ini._next_itt()
    ini.send_pdu(pdu.task_management_request(immediate=True, function=function,
                                             lun=encode_lun(0), itt=itt,
                                             referenced_task_tag=ref_itt, cmdsn=ini.cmdsn,
                                             exp_statsn=ini.exp_stat_sn))
    return itt


def collect(ini: Initiator, until: float = 3.0) -> dict[int, tuple[str, int]]:
    """Every status-carrying PDU that arrives within `until` s: ITT -> (kind, status)."""
    got: dict[int, tuple[str, int]] = {}
    ini.sock.settimeout(until)
    try:
        while True:
            bhs, _ = ini.recv_pdu()
            if (bhs.opcode == Op.DATA_IN and bhs.flags & pdu.F_STATUS
                    or bhs.opcode == Op.SCSI_RESPONSE):
                got[bhs.itt] = ("scsi", bhs.b3)
            elif bhs.opcode == Op.TASK_MGMT_RESPONSE:
                got[bhs.itt] = ("tmf", bhs.b2)
            elif bhs.opcode == Op.NOP_IN and bhs.itt == pdu.RESERVED_TAG:
                ini.nop_reply(bhs)
    except TimeoutError:
        pass
    finally:
        ini.sock.settimeout(20)
    return got


def test_abort_task_of_a_queued_command(seeking_target):
    """ABORT TASK (RFC 7143 11.5.1, SAM-5 7.2) of a command waiting in the task set: the
    function completes, the aborted command gets no response, every other command ends
    GOOD."""
    ini = session(seeking_target, "iqn.2026-11.local.test:tmf-a", 0x400000000001)
    try:
        itts = [send_read(ini, lba) for lba in (400_000, 10, 300_000, 20_000, 150_000, 90)]
        victim = itts[-2]
        tmf = send_tmf(ini, TmfFunction.ABORT_TASK, victim)
        got = collect(ini)
        assert got.get(tmf) == ("tmf", 0)  # Function complete
        assert victim not in got
        assert all(got.get(i) == ("scsi", Status.GOOD) for i in itts if i != victim), got
        assert ini.command(bytes(6)).status == Status.GOOD  # the session goes on
    finally:
        ini.close()


def test_abort_task_set_then_no_response_for_any(seeking_target):
    """ABORT TASK SET (SAM-5 7.3) aborts every task of the issuing nexus on the LU, queued
    or running: none of them is answered; the next command is served."""
    ini = session(seeking_target, "iqn.2026-11.local.test:tmf-b", 0x400000000002)
    try:
        itts = [send_read(ini, lba) for lba in (123_000, 7, 456_000, 33_000)]
        tmf = send_tmf(ini, TmfFunction.ABORT_TASK_SET)
        got = collect(ini)
        assert got.get(tmf) == ("tmf", 0)
        answered = [i for i in itts if i in got]
        # the first may have completed before the TMF arrived; the queued ones may not
        assert len(answered) <= 1 and all(got[i] == ("scsi", Status.GOOD) for i in answered)
        assert ini.command(bytes(6)).status == Status.GOOD
    finally:
        ini.close()


@pytest.mark.parametrize("function", [TmfFunction.LOGICAL_UNIT_RESET,
                                      TmfFunction.TARGET_WARM_RESET])
def test_reset_aborts_queued_tasks_and_every_nexus_sees_the_unit_attention(
        seeking_target, function):
    """LOGICAL UNIT RESET or TARGET WARM RESET from nexus B while nexus A has tasks queued
    (SAM-5 7.7, 7.9): A's tasks end without a response (TAS=0), and the next command of
    each nexus ends in CHECK CONDITION, UNIT ATTENTION, BUS DEVICE RESET FUNCTION OCCURRED
    (29h/03h; SAM-5 6.6)."""
    a = session(seeking_target, "iqn.2026-11.local.test:reset-a", 0x400000000003)
    b = session(seeking_target, "iqn.2026-11.local.test:reset-b", 0x400000000004)
    try:
        itts = [send_read(a, (lba * 7919) % 500_000) for lba in range(30)]
        a.nop()  # A's commands have all reached the target (the NOP is answered after them)
        assert b.task_management(function) == 0
        got = collect(a)
        answered = [i for i in itts if i in got]
        assert len(answered) < len(itts) // 2, got  # ~5 ms each: most were still queued
        assert all(got[i] == ("scsi", Status.GOOD) for i in answered)
        for ini in (a, b):
            r = ini.command(bytes(6))
            assert r.status == Status.CHECK_CONDITION
            assert r.sense[2] & 0x0F == 0x06 and r.sense[12:14] == b"\x29\x03", r.sense.hex()
            assert ini.command(bytes(6)).status == Status.GOOD
    finally:
        a.close()
        b.close()


def test_ordered_command_waits_for_older_ones(seeking_target):
    """An ORDERED task (SAM-5 8.6.2) completes after every older task and before every
    newer SIMPLE task, seen in the order the responses arrive on one connection."""
    ini = session(seeking_target, "iqn.2026-11.local.test:ordered", 0x400000000005)
    try:
        older = [send_read(ini, lba) for lba in (500_000, 100, 250_000)]
        barrier = send_read(ini, 10, TaskAttr.ORDERED)
        newer = [send_read(ini, lba) for lba in (1, 400_000)]
        order = []
        ini.sock.settimeout(10)
        while len(order) < 6:
            bhs, _ = ini.recv_pdu()
            if bhs.opcode == Op.DATA_IN and bhs.flags & pdu.F_STATUS:
                assert bhs.b3 == Status.GOOD
                order.append(bhs.itt)
        pos = order.index(barrier)
        assert set(order[:pos]) == set(older) and set(order[pos + 1:]) == set(newer)
    finally:
        ini.close()


@pytest.mark.skipif(not shutil.which("iscsi-test-cu"),
                    reason="needs iscsi-test-cu from libiscsi-bin (`make test` installs it)")
def test_libiscsi_tmf_tests_on_a_queueing_lu(tmp_path):
    """libiscsi's iSCSITMF family against a depth-1 LU with the disk model."""
    out = tmp_path / "tmf.tsv"
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "conformance"), "--test", "ALL.iSCSITMF",
         "--no-compare", "--out", str(out), "--ours-args", " ".join(QUEUED)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    report = proc.stdout + proc.stderr
    m = re.search(r"conformance: (\d+) run, (\d+) passed, (\d+) skipped, (\d+) failed", report)
    assert m, report
    run, passed, skipped, failed = map(int, m.groups())
    assert run >= 2 and passed == run and failed == 0, report


def test_status_shows_the_task_set_metrics(tmp_path):
    """`scsi-target status` over the control socket: the LU's task set configuration and
    what it did (commands queued, elevator seek distance, reorders) and the live session."""
    backing = tmp_path / "lun0.img"
    with open(backing, "wb") as f:
        f.truncate(64 << 20)
    control = tmp_path / "ctl" / "target.sock"
    with OurTarget(["--backing", str(backing), *QUEUED, "--elevator", "fifo",
                    "--control", str(control)], workdir=tmp_path) as t:
        ini = session(t, "iqn.2026-11.local.test:status", 0x400000000006)
        try:
            itts = [send_read(ini, lba) for lba in (9000, 10, 70000, 300)]
            got = collect(ini, until=2.0)
            assert all(got.get(i) == ("scsi", Status.GOOD) for i in itts)
            proc = subprocess.run([sys.executable, "-m", "target", "status", "--control",
                                   str(control), "--json"], capture_output=True, text=True,
                                  timeout=30, cwd=REPO)
            assert proc.returncode == 0, proc.stderr
            st = json.loads(proc.stdout)
            ts = st["targets"][0]["luns"][0]["task_set"]
            assert ts["policy"] == "fifo" and ts["depth"] == 1 and ts["model"]["rpm"] == 7200
            assert ts["elevator"]["served"] >= 4 and ts["elevator"]["reorders"] == 0
            assert ts["submitted"] >= 4
            assert [s["initiator"] for s in st["sessions"]] == ["iqn.2026-11.local.test:status"]
            # the session's connection's peer is this initiator's socket, as the OS names it
            host, port = ini.sock.getsockname()[:2]
            assert [s["peer"] for s in st["sessions"]] == [f"{host}:{port}"]
            text = subprocess.run([sys.executable, "-m", "target", "status", "--control",
                                   str(control)], capture_output=True, text=True, timeout=30,
                                  cwd=REPO).stdout
            assert "task set: fifo, dispatch depth 1, rotational 7200 rpm" in text
        finally:
            ini.close()
    assert not control.exists()  # removed at shutdown


def pr_out(ini: Initiator, action: int, key: int, sa_key: int, type_: int = 0):
    """PERSISTENT RESERVE OUT (SPC-4 6.16) with a basic 24-byte parameter list."""
    cdb = struct.pack(">BBB2xIB", 0x5F, action, type_, 24, 0)
    return ini.command(cdb, data=struct.pack(">QQ8x", key, sa_key))


def test_preempt_and_abort_aborts_the_preempted_nexus_tasks(seeking_target):
    """PREEMPT AND ABORT (SPC-4 5.13.11.4.5): the preempted nexus loses its registration
    and its queued tasks are aborted (TAS=0: no response); the preempter's go on."""
    a = session(seeking_target, "iqn.2026-11.local.test:pa-a", 0x400000000007)
    b = session(seeking_target, "iqn.2026-11.local.test:pa-b", 0x400000000008)
    try:
        assert pr_out(a, 0, 0, 0xAAAA).status == Status.GOOD          # REGISTER
        assert pr_out(b, 0, 0, 0xBBBB).status == Status.GOOD
        assert pr_out(a, 1, 0xAAAA, 0, 0x01).status == Status.GOOD    # RESERVE, WE
        itts = [send_read(a, (lba * 7919) % 500_000) for lba in range(30)]
        a.nop()
        r = pr_out(b, 5, 0xBBBB, 0xAAAA, 0x01)                        # PREEMPT AND ABORT
        assert r.status == Status.GOOD
        got = collect(a)
        assert len([i for i in itts if i in got]) < len(itts) // 2, got
        # A's next command learns of it: REGISTRATIONS PREEMPTED (2Ah/05h)
        r = a.command(bytes(6))
        assert r.status == Status.CHECK_CONDITION and r.sense[12:14] == b"\x2a\x05"
        assert b.command(bytes(6)).status == Status.GOOD
    finally:
        a.close()
        b.close()
