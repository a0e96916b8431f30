"""`serve --workers N` (target.shell.workers) against real peers: libiscsi's iscsi-ls and
qemu-io, the kernel's view of which process holds each TCP connection (/proc), and the
command line's status, fault and trace.

What is asserted is what a user of several disks relies on: every target is reachable
through the one portal (SendTargets lists all, RFC 7143 appendix C / 13.8), each keeps its
own data, each connection is served by the worker of its target (not the portal
process), a worker's broken store stops the server before it listens, and the server
stops as a whole."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from target.shell.initiator import Initiator
from target.testing.servers import HOST, OurTarget, find_program
from target.trace import read as read_trace

pytestmark = pytest.mark.integration

IQNS = [f"iqn.2026-12.local.workers:t{i}" for i in range(3)]


def config(tmp_path: Path, luns: list[str] | None = None) -> Path:
    luns = luns or ['size = "8M"'] * len(IQNS)
    text = "".join(f'[[target]]\niqn = "{iqn}"\n[[target.lun]]\nlun = 0\n{lun}\n'
                   for iqn, lun in zip(IQNS, luns, strict=True))
    path = tmp_path / "workers.toml"
    path.write_text(text)
    return path


def status(server: OurTarget, control: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "target", "status", "--control", str(control),
                          "--json"], capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "target", *args], capture_output=True,
                          text=True, timeout=30)


def socket_owner(local_port: int, peer_port: int) -> set[int]:
    """The PIDs holding the server end (local_port <- peer_port) of a TCP connection on
    127.0.0.1, from /proc/net/tcp and /proc/PID/fd (the kernel's view, not ours)."""
    inodes = set()
    want_local, want_peer = f"0100007F:{local_port:04X}", f"0100007F:{peer_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[1] == want_local and f[2] == want_peer:
            inodes.add(f[9])
    pids = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            for fd in (d / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    pids.add(int(d.name))
        except OSError:
            continue
    return pids


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.skipif(not find_program("iscsi-ls") or not find_program("qemu-io"),
                    reason="needs libiscsi-bin and qemu-utils (make test installs them)")
def test_each_target_in_its_worker(tmp_path):
    control = tmp_path / "ctl.sock"
    with OurTarget(["--workers", "2", "--control", str(control)], config=config(tmp_path),
                   workdir=tmp_path, iqn=IQNS[0]) as server:
        # SendTargets from the portal process names every target at the one portal.
        ls = subprocess.run(["iscsi-ls", f"iscsi://{HOST}:{server.port}"],
                            capture_output=True, text=True, timeout=30, check=True).stdout
        for iqn in IQNS:
            assert f"Target:{iqn} Portal:{HOST}:{server.port},1" in ls
        # Each target keeps its own data: a pattern per target, read back by qemu-io's -P.
        for i, iqn in enumerate(IQNS):
            url = f"iscsi://{HOST}:{server.port}/{iqn}/0"
            subprocess.run(["qemu-io", "-f", "raw", "-c", f"write -P {0x41 + i} 0 64k", url],
                           capture_output=True, timeout=60, check=True)
        for i, iqn in enumerate(IQNS):
            url = f"iscsi://{HOST}:{server.port}/{iqn}/0"
            out = subprocess.run(["qemu-io", "-f", "raw", "-c", f"read -P {0x41 + i} 0 64k",
                                  url], capture_output=True, text=True, timeout=60)
            assert out.returncode == 0 and "verification failed" not in out.stdout, out.stdout
        st = status(server, control)
        assert [t["iqn"] for t in st["targets"]] == IQNS
        workers = {w["pid"]: w["targets"] for w in st["workers"]}
        assert workers == {st["targets"][0]["pid"]: [IQNS[0], IQNS[2]],
                           st["targets"][1]["pid"]: [IQNS[1]]}
        for pid in workers:
            assert parent_of(pid) == server.pid  # forked by the portal process
        # The kernel says who holds each session's connection: its target's worker.
        for t in st["targets"]:
            with Initiator(HOST, server.port, t["iqn"]).connect() as ini:
                ini.login()
                peer_port = ini.sock.getsockname()[1]
                assert socket_owner(server.port, peer_port) == {t["pid"]}
                sessions = status(server, control)["sessions"]
                assert any(s["target"] == t["iqn"] for s in sessions)
                ini.logout()
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or \
            Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z"


@pytest.mark.skipif(not find_program("qemu-io"), reason="needs qemu-utils (make test)")
def test_fault_and_trace_across_workers(tmp_path):
    """A fault rule added through the portal reaches the worker of its target (MEDIUM ERROR
    03/11/00 for one READ, SBC-4 4.18 / SPC-4 4.5.6: qemu-io sees an I/O error); its hit
    is counted in `fault list`; both workers append to the one trace, whole chunks."""
    control = tmp_path / "ctl.sock"
    trace = tmp_path / "trace.bin"
    server = OurTarget(["--workers", "2", "--control", str(control), "--trace", str(trace)],
                       config=config(tmp_path), workdir=tmp_path, iqn=IQNS[0])
    with server:
        add = cli("fault", "add", "--control", str(control), "--action", "check-condition",
                  "--target", IQNS[1], "--op", "READ(10)", "--once", "--sense", "03/11/00")
        assert add.returncode == 0 and add.stdout.strip() == "fault 1 added", add.stderr
        for iqn in IQNS:
            url = f"iscsi://{HOST}:{server.port}/{iqn}/0"
            out = subprocess.run(["qemu-io", "-f", "raw", "-c", "read 0 4k", url],
                                 capture_output=True, text=True, timeout=60)
            failed = "read failed" in out.stdout + out.stderr
            assert failed == (iqn == IQNS[1]), (iqn, out.stdout, out.stderr)
        listed = cli("fault", "list", "--control", str(control))
        assert listed.returncode == 0
        assert re.search(r"\bid=1 .*\bhits=1\b", listed.stdout), listed.stdout
    records = list(read_trace(trace))
    reads = [r for r in records if r["op"] == "READ(10)" and r["cdb"][4:12] == "00000000"]
    # The three qemu-io connections (three targets, two workers), one READ of LBA 0 each at
    # least; the one on the faulted target ended in CHECK CONDITION, MEDIUM ERROR.
    assert {r["target"] for r in reads} == set(IQNS), reads
    assert [(r["target"], r["sense_key"]) for r in reads if r["status"] == "CHECK CONDITION"] \
        == [(IQNS[1], "MEDIUM ERROR")]
    summary = cli("trace", str(trace))
    assert summary.returncode == 0 and "READ(10)" in summary.stdout


def test_worker_store_error_stops_before_listening(tmp_path):
    """The second target's image is missing: the server says so, names the path, exits 2,
    and writes no port (nothing listened); no worker is left."""
    missing = tmp_path / "absent.img"
    cfg = config(tmp_path, ['size = "8M"', f'store = "file"\npath = "{missing}"',
                            'size = "8M"'])
    port_file = tmp_path / "port"
    proc = subprocess.run([sys.executable, "-m", "target", "serve", "--portal", f"{HOST}:0",
                           "--config", str(cfg), "--workers", "3", "--port-file",
                           str(port_file)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert str(missing) in proc.stderr and "Traceback" not in proc.stderr
    assert not port_file.exists()


def test_workers_auto_is_one_per_target_at_most_one_per_cpu(tmp_path):
    control = tmp_path / "ctl.sock"
    with OurTarget(["--workers", "auto", "--control", str(control)], config=config(tmp_path),
                   workdir=tmp_path, iqn=IQNS[0]) as server:
        workers = status(server, control)["workers"]
    assert len(workers) == min(len(IQNS), len(os.sched_getaffinity(0)))


def test_workers_must_fit_the_targets(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "target", "serve", "--portal", f"{HOST}:0",
                           "--config", str(config(tmp_path)), "--workers", "4"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--workers: expected 1 to 3" in proc.stderr


def test_a_dead_worker_stops_the_server(tmp_path):
    """A worker killed from outside: the portal logs it, stops the other worker and exits 1
    (not a clean stop), rather than go on routing to a target nobody serves."""
    control = tmp_path / "ctl.sock"
    log = tmp_path / "server.log"
    server = OurTarget(["--workers", "3", "--control", str(control), "--log-file", str(log)],
                       config=config(tmp_path), workdir=tmp_path, iqn=IQNS[0])
    with server:
        pids = [w["pid"] for w in status(server, control)["workers"]]
        os.kill(pids[1], signal.SIGKILL)
        assert server.proc is not None
        code = server.proc.wait(timeout=30)
    assert code == 1
    assert f"worker pid {pids[1]} ({IQNS[1]}) ended unexpectedly (signal 9)" in log.read_text()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.05)
    assert not any(Path(f"/proc/{p}").exists() for p in pids)


def test_the_portal_survives_what_is_not_a_login(tmp_path):
    """A first PDU that is not a Login Request (RFC 7143 6.1: a connection begins with the
    login phase) is answered by the portal process's own connection, which ends it; a
    connection that sends nothing is closed after FIRST_PDU_TIMEOUT; the portal then
    still routes a real login (iscsi-ls, iscsi-inq)."""
    import socket as socketmod

    from target.shell.workers import FIRST_PDU_TIMEOUT

    with OurTarget(["--workers", "2"], config=config(tmp_path), workdir=tmp_path,
                   iqn=IQNS[0]) as server:
        silent = socketmod.create_connection((HOST, server.port))
        garbage = socketmod.create_connection((HOST, server.port))
        started = time.monotonic()
        try:
            garbage.sendall(bytes([0x01, 0x80]) + bytes(46))  # a SCSI Command first
            garbage.settimeout(10)
            while garbage.recv(4096):  # whatever it answers, then the end of the stream
                pass
            silent.settimeout(FIRST_PDU_TIMEOUT + 10)
            assert silent.recv(4096) == b""  # closed by the portal, nothing sent
            assert time.monotonic() - started >= FIRST_PDU_TIMEOUT - 1
        finally:
            silent.close()
            garbage.close()
        if find_program("iscsi-inq"):
            out = subprocess.run(["iscsi-inq", f"iscsi://{HOST}:{server.port}/{IQNS[1]}/0"],
                                 capture_output=True, text=True, timeout=30)
            assert out.returncode == 0 and "QEMUSCSI" in out.stdout + out.stderr, out
