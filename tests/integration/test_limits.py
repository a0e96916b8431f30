"""Bounded resources (issue 15): what one peer can make our target hold, over real sockets.

The attack of the issue, measured on the old main: 550 idle logins were never timed out;
under a 1024-fd limit 1100 idle connections made accept() fail with EMFILE, and the
target retried at once, spun at 100% CPU and logged 77,000 lines a second; a full CmdSN
window of 16 MiB WRITEs took RSS to 2143 MiB, and it stayed after the session ended.
What this file holds the target (OurTarget, our `serve`, on 127.0.0.1) to, and by what:

- test_idle_and_stalled_connections_do_not_lock_out: 1000 connections that send nothing
  and 100 that stall inside a Login PDU's header (20 of its 48 bytes, RFC 7143 11.2),
  with the defaults (the per-address limit sheds them) and under `prlimit --nofile=1024`
  with limits above 1024 (accept() meets EMFILE and sheds), also with --workers 2 (the
  portal process sheds connections still waiting for their first PDU). Then a healthy session (our
  initiator) logs in within 1 s and READs and WRITEs; over the next 5 s the server's CPU
  (/proc/PID/stat utime+stime, proc(5)) stays under 15% of a core and its log gains at
  most a few lines.
- test_accept_backs_off_when_nothing_to_shed: under `prlimit --nofile=64`, logged-in
  sessions take every descriptor and 10 more connections wait: over 3 s the server uses
  under 15% of a core and logs at most one line; when a session ends a new one logs in
  within 1 s.
- test_login_timeout: `login_timeout = 1`: an idle connection and a stalled one are closed
  by the target (the peer reads end of file) after 1 s, not before 0.8 s; the log names
  the peer.
- test_connection_limits: max_connections_per_address = 2 and max_connections = 4: a
  third connection from 127.0.0.1 while two sessions are logged in is closed at once
  (end of file before any answer), one from 127.0.0.2 logs in; a connection that would
  pass the limit sheds the oldest one still logging in; a fifth on the portal is closed.
- test_session_limit: max_sessions = 2: the third login gets a Login Response of status
  class 03, detail 02 (RFC 7143 11.13.5's table: Out of resources) and the connection
  ends; after a logout a new session logs in.
- test_write_over_max_transfer_length: a full window of WRITE(10)s with an EDTL of 16 MiB
  (twice the MAXIMUM TRANSFER LENGTH the Block Limits VPD page declares; read from the
  page, SBC-4 6.6.4) end in CHECK CONDITION, ILLEGAL REQUEST, INVALID FIELD IN CDB
  (fixed sense, SPC-4 4.5.3: key byte 2, ASC/ASCQ bytes 12-13, field pointer bytes 15-17
  naming CDB byte 7, WRITE(10)'s TRANSFER LENGTH, SBC-4 5.40) and the server's peak RSS
  (VmHWM, proc(5)) rises by less than 32 MiB: no buffer was made for them.
- test_largest_reads_not_read_rss_bounded: a full CmdSN window of READ(10)s of MAXIMUM
  TRANSFER LENGTH in one TCP segment to a peer that reads nothing for 2 s: every one ends
  GOOD or TASK SET FULL, and the queued Data-In holds VmHWM under the start + 64 MiB +
  48 MiB of slack (the old code queued the whole 1 GiB).
- test_largest_writes_rss_bounded: a full CmdSN window (128) of WRITE(10)s of MAXIMUM
  TRANSFER LENGTH (8 MiB), the largest a command may carry, pipelined with their R2Ts
  answered: every one ends GOOD or TASK SET FULL (SAM-5 5.3), the bound of
  max_buffered_bytes (64 MiB) holds VmHWM under the start + 64 MiB + 48 MiB of slack (the
  old code took 1 GiB), and after the session ends VmRSS comes back within 24 MiB of
  where it started.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import socket
import struct
import time
from pathlib import Path

import pytest

from target.iscsi import pdu
from target.iscsi.pdu import Op
from target.shell.initiator import Initiator, InitiatorError
from target.testing.servers import HOST, OUR_DEFAULT_IQN, OurTarget

pytestmark = pytest.mark.integration

CLK_TCK = os.sysconf("SC_CLK_TCK")
BLOCK = 512
READ10, WRITE10, INQUIRY = 0x28, 0x2A, 0x12


class LimitedTarget(OurTarget):
    """OurTarget under `prlimit --nofile=N` (util-linux execs the server: same PID; its
    worker processes, forked, inherit the limit)."""

    def __init__(self, nofile: int, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.nofile = nofile

    def command(self) -> list[str]:
        return ["prlimit", f"--nofile={self.nofile}:{self.nofile}", "--", *super().command()]


def _config(tmp_path: Path, limits: str, size: str = "64M", targets: int = 1) -> Path:
    path = tmp_path / "limits.toml"
    more = "".join(f"""
[[target]]
iqn = "{OUR_DEFAULT_IQN}-{i}"

[[target.lun]]
lun = 0
store = "memory"
size = "16M"
""" for i in range(1, targets))
    path.write_text(("[limits]\n" + limits if limits else "") + f"""

[[target]]
iqn = "{OUR_DEFAULT_IQN}"

[[target.lun]]
lun = 0
store = "memory"
size = "{size}"
""" + more)
    return path


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (proc(5) 14, 15)


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _log_lines(target: OurTarget) -> int:
    return len(target.log_path.read_bytes().splitlines())


def _raise_nofile(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        if hard != resource.RLIM_INFINITY and hard < n:
            pytest.skip(f"this test opens {n} sockets; RLIMIT_NOFILE's hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))


def _connect_many(port: int, n: int, source: str = HOST) -> list[socket.socket]:
    """`n` non-blocking connects (a full accept queue does not block the test), 100 at a
    time: the server's accept queue holds 128 (listen(2)), and a handshake the queue had
    no room for completes only when the server's SYN-ACK is sent again, a second or more
    later."""
    socks = []
    for i in range(n):
        if i and i % 100 == 0:
            time.sleep(0.05)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.bind((source, 0))
        s.connect_ex((HOST, port))
        socks.append(s)
    return socks


def _login_header(isid: int = 0x400000000099) -> bytes:
    return pdu.login_request(flags=pdu.LOGIN_TRANSIT | 1 << 2 | 3, dsl=100, isid=isid,
                             tsih=0, itt=1, cmdsn=0, exp_statsn=0)


def _stall(socks: list[socket.socket]) -> None:
    """Part of a Login PDU's BHS (20 of 48 bytes) on each: a login stalled mid-header."""
    part = _login_header()[:20]
    deadline = time.monotonic() + 5
    poll = select.poll()
    pending = {s.fileno(): s for s in socks}
    for fd in pending:
        poll.register(fd, select.POLLOUT)
    while pending and time.monotonic() < deadline:
        for fd, _ in poll.poll(200):
            with contextlib.suppress(OSError):
                pending[fd].send(part)
            poll.unregister(fd)
            del pending[fd]


def _initiator(port: int, source: str = HOST, isid: int = 0x400000000001) -> Initiator:
    ini = Initiator(HOST, port, target_name=OUR_DEFAULT_IQN, isid=isid, timeout=10.0)
    ini.sock = socket.create_connection((HOST, port), timeout=10.0,
                                        source_address=(source, 0))
    ini.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ini


def _cdb10(op: int, lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", op, 0, lba, 0, blocks, 0)


def _clear_unit_attention(ini: Initiator) -> None:
    """TEST UNIT READY until no UNIT ATTENTION (SAM-5 5.14: a new I_T nexus is told of
    the power on first)."""
    for _ in range(4):
        res = ini.command(bytes(6))
        if res.status == 0:
            return
        assert res.sense[2] & 0x0F == 0x06, res  # UNIT ATTENTION only
    raise AssertionError("unit attentions do not end")


def _healthy_session(port: int) -> float:
    """Log in and do I/O; returns the seconds from connect() to full feature phase."""
    t0 = time.monotonic()
    ini = _initiator(port)
    try:
        ini.login()
        took = time.monotonic() - t0
        payload = bytes(range(256)) * 16  # 4 KiB
        _clear_unit_attention(ini)
        assert ini.command(_cdb10(WRITE10, 8, 8), data=payload).status == 0
        res = ini.command(_cdb10(READ10, 8, 8), read=4096)
        assert res.status == 0 and res.data == payload
        assert ini.logout() == 0
    finally:
        ini.close()
    return took


def _closed_by_peer(s: socket.socket, within: float) -> bool:
    """The target closed `s` (end of file or a reset) within `within` s."""
    s.setblocking(True)
    s.settimeout(within)
    try:
        return s.recv(4096) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("nofile, workers", [(None, 0), (1024, 0), (1024, 2)],
                         ids=["default-limits", "nofile-1024", "nofile-1024-workers-2"])
def test_idle_and_stalled_connections_do_not_lock_out(nofile: int | None, workers: int,
                                                      tmp_path: Path) -> None:
    _raise_nofile(4096)
    args = ["--workers", str(workers)] if workers else []
    if nofile is None:  # the defaults: max_connections_per_address (128) sheds them
        target = OurTarget(config=_config(tmp_path, ""), workdir=tmp_path)
    else:  # limits above the fd limit: accept() meets EMFILE (in the portal process)
        target = LimitedTarget(nofile, args, config=_config(
            tmp_path, "max_connections = 4096\nmax_connections_per_address = 4096",
            targets=max(1, workers)), workdir=tmp_path)
    socks: list[socket.socket] = []
    try:
        with target:
            socks = _connect_many(target.port, 1000)
            stalled = _connect_many(target.port, 100)
            socks += stalled
            _stall(stalled)
            time.sleep(1.0)  # the target takes in what it can
            took = _healthy_session(target.port)
            assert took < 1.0, f"login took {took:.2f} s"
            lines, cpu = _log_lines(target), _cpu_seconds(target.pid)
            time.sleep(5.0)
            cpu = _cpu_seconds(target.pid) - cpu
            lines = _log_lines(target) - lines
            print(f"login {took * 1000:.1f} ms; {cpu:.2f} s CPU and {lines} log lines in 5 s")
            assert cpu < 0.15 * 5.0, f"{cpu:.2f} s of CPU in 5 s: the target spins"
            assert lines <= 5, f"{lines} log lines in 5 s:\n" + target.log_path.read_text()[-2000:]
            # Still serving once more, with the attackers' sockets still open.
            assert _healthy_session(target.port) < 1.0
            log = target.log_path.read_text()
            assert "Traceback" not in log
            if nofile is not None:
                assert "accept failed" in log and "oldest connections" in log, log[-2000:]
            else:
                assert "max_connections_per_address (128) reached" in log, log[-2000:]
            assert len(log.splitlines()) < 100, log[-3000:]
    finally:
        for s in socks:
            s.close()


def test_accept_backs_off_when_nothing_to_shed(tmp_path: Path) -> None:
    """Every descriptor is a logged-in session: accept() fails with EMFILE and there is
    nothing to shed. The listening socket rests (ACCEPT_BACKOFF) rather than being
    retried at once: low CPU, one log line; when a session ends, a waiting connection
    comes in."""
    with LimitedTarget(64, config=_config(tmp_path, ""), workdir=tmp_path) as target:
        sessions = []
        try:
            while len(os.listdir(f"/proc/{target.pid}/fd")) < 64:
                ini = _initiator(target.port, isid=0x400000000100 + len(sessions))
                ini.login()
                sessions.append(ini)
            waiting = _connect_many(target.port, 10)
            time.sleep(0.5)
            cpu, lines = _cpu_seconds(target.pid), _log_lines(target)
            time.sleep(3.0)
            cpu = _cpu_seconds(target.pid) - cpu
            lines = _log_lines(target) - lines
            print(f"{len(sessions)} sessions; {cpu:.2f} s CPU and {lines} log lines in 3 s")
            assert cpu < 0.15 * 3.0, f"{cpu:.2f} s of CPU in 3 s: accept() retried at once"
            assert lines <= 1, target.log_path.read_text()[-2000:]
            assert "nothing to shed, not accepting for" in target.log_path.read_text()
            sessions.pop().close()  # a descriptor comes free
            took = _healthy_session(target.port)
            assert took < 1.0, f"login took {took:.2f} s"
            for s in waiting:
                s.close()
        finally:
            for ini in sessions:
                ini.close()


def test_login_timeout(tmp_path: Path) -> None:
    with OurTarget(config=_config(tmp_path, "login_timeout = 1"), workdir=tmp_path) as target:
        idle = socket.create_connection((HOST, target.port))
        stalled = socket.create_connection((HOST, target.port))
        stalled.sendall(_login_header()[:20])
        t0 = time.monotonic()
        assert not _closed_by_peer(idle, 0.8), "closed before login_timeout"
        assert _closed_by_peer(idle, 2.0), "an idle connection outlived login_timeout"
        assert _closed_by_peer(stalled, 1.0), "a stalled login outlived login_timeout"
        assert time.monotonic() - t0 < 3.0
        host, port = idle.getsockname()
        peer = f"{host}:{port}"
        idle.close()
        stalled.close()
        log = target.log_path.read_text()
        assert f"{peer}: login not finished within 1 s" in log, log
        assert _healthy_session(target.port) < 1.0  # a login that finishes is not closed


def test_connection_limits(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "max_connections = 4\nmax_connections_per_address = 2")
    with OurTarget(config=cfg, workdir=tmp_path) as target:
        a = _initiator(target.port, isid=0x400000000001)
        b = _initiator(target.port, isid=0x400000000002)
        a.login()
        b.login()
        third = socket.create_connection((HOST, target.port))
        assert _closed_by_peer(third, 2.0), "a third connection from one address stayed"
        c = _initiator(target.port, "127.0.0.2", isid=0x400000000003)
        c.login()  # another address has its own count
        # 127.0.0.2's second place is taken by one that never logs in; a new one from
        # there sheds it (the oldest still logging in), and logs in.
        idle = socket.create_connection((HOST, target.port), source_address=("127.0.0.2", 0))
        time.sleep(0.2)
        d = _initiator(target.port, "127.0.0.2", isid=0x400000000004)
        d.login()
        assert _closed_by_peer(idle, 2.0), "the idle connection was not shed"
        # Four sessions: the portal is full and none is logging in, so a fifth is closed.
        fifth = socket.create_connection((HOST, target.port), source_address=("127.0.0.3", 0))
        assert _closed_by_peer(fifth, 2.0), "a fifth connection on the portal stayed"
        for ini in (a, b, c, d):
            assert ini.command(bytes([INQUIRY, 0, 0, 0, 36, 0]), read=36).status == 0
            ini.close()
        for s in (third, idle, fifth):
            s.close()
        time.sleep(0.3)
        assert _healthy_session(target.port) < 1.0  # the counts went down with the links
        log = target.log_path.read_text()
        assert "max_connections_per_address (2) reached, every connection logged in" in log
        assert "max_connections (4) reached, every connection logged in" in log


def test_session_limit(tmp_path: Path) -> None:
    with OurTarget(config=_config(tmp_path, "max_sessions = 2"), workdir=tmp_path) as target:
        a = _initiator(target.port, isid=0x400000000001)
        b = _initiator(target.port, isid=0x400000000002)
        a.login()
        b.login()
        c = _initiator(target.port, isid=0x400000000003)
        text = (b"InitiatorName=iqn.2026-11.local:c\0SessionType=Normal\0TargetName="
                + OUR_DEFAULT_IQN.encode() + b"\0")
        c.sock.sendall(pdu.login_request(flags=pdu.LOGIN_TRANSIT | 1 << 2 | 3, dsl=len(text),
                                         isid=0x400000000003, itt=1, cmdsn=0)
                       + text + pdu.padding(len(text)))
        head = b""
        while len(head) < 48:
            chunk = c.sock.recv(48 - len(head))
            assert chunk, "closed without a Login Response"
            head += chunk
        assert head[0] & 0x3F == Op.LOGIN_RESPONSE
        assert (head[36], head[37]) == (0x03, 0x02)  # RFC 7143 11.13.5: Out of resources
        assert _closed_by_peer(c.sock, 2.0)
        c.close()
        assert a.logout() == 0
        a.close()
        e = _initiator(target.port, isid=0x400000000005)
        e.login()  # a place was freed
        e.close()
        b.close()
        assert "login refused 03/02 (out of resources)" in target.log_path.read_text()


def _max_transfer_bytes(ini: Initiator) -> int:
    """MAXIMUM TRANSFER LENGTH from the Block Limits VPD page (B0h, SBC-4 6.6.4: bytes
    8-11, in logical blocks) times the block size of READ CAPACITY(10) (SBC-4 5.20)."""
    page = ini.command(bytes([INQUIRY, 1, 0xB0, 0, 64, 0]), read=64).data
    cap = ini.command(bytes([0x25]) + bytes(9), read=8).data
    return struct.unpack_from(">I", page, 8)[0] * struct.unpack_from(">I", cap, 4)[0]


def test_write_over_max_transfer_length(tmp_path: Path) -> None:
    with OurTarget(config=_config(tmp_path, ""), workdir=tmp_path) as target:
        ini = _initiator(target.port)
        ini.login()
        _clear_unit_attention(ini)
        mtl = _max_transfer_bytes(ini)
        assert mtl == 8 << 20
        edtl = 2 * mtl
        hwm = _status_kib(target.pid, "VmHWM")
        itts = []
        core = ini.core
        for _ in range(64):  # half the CmdSN window, F=1: no data follows without an R2T
            itt = core.next_itt()
            itts.append(itt)
            ini.send_pdu(pdu.scsi_command(flags=pdu.F_FINAL | pdu.F_WRITE | 1, dsl=0,
                                          lun=bytes(8), itt=itt, edtl=edtl, cmdsn=core.cmdsn,
                                          exp_statsn=core.exp_stat_sn,
                                          cdb=_cdb10(WRITE10, 0, edtl // BLOCK)))
            core.cmdsn += 1
        seen = 0
        while seen < len(itts):
            bhs, data = ini.recv_pdu()
            assert bhs.opcode == Op.SCSI_RESPONSE, f"{bhs!r}: an R2T for a refused write?"
            assert bhs.b3 == 0x02  # CHECK CONDITION
            sense = data[2:]
            assert sense[0] & 0x7F == 0x70, sense.hex()  # fixed format, current
            assert sense[2] & 0x0F == 0x05  # ILLEGAL REQUEST
            assert (sense[12], sense[13]) == (0x24, 0x00)  # INVALID FIELD IN CDB
            assert sense[15] & 0xC0 == 0xC0  # SKSV, C/D = 1 (the CDB)
            assert struct.unpack_from(">H", sense, 16)[0] == 7  # TRANSFER LENGTH
            seen += 1
        grew = _status_kib(target.pid, "VmHWM") - hwm
        assert grew < 32 << 10, f"peak RSS grew {grew} KiB for writes that were refused"
        ini.command(_cdb10(WRITE10, 0, 8), data=bytes(4096))  # the session goes on
        assert ini.logout() == 0
        ini.close()


def test_largest_reads_not_read_rss_bounded(tmp_path: Path) -> None:
    with OurTarget(config=_config(tmp_path, ""), workdir=tmp_path) as target:
        ini = _initiator(target.port)
        ini.login()
        _clear_unit_attention(ini)
        mtl = _max_transfer_bytes(ini)
        time.sleep(0.3)
        start = max(_status_kib(target.pid, "VmHWM"), _status_kib(target.pid, "VmRSS"))
        core = ini.core
        batch = []
        for _ in range(128):
            itt = core.next_itt()
            batch.append(pdu.scsi_command(flags=pdu.F_FINAL | pdu.F_READ | 1, dsl=0,
                                          lun=bytes(8), itt=itt, edtl=mtl, cmdsn=core.cmdsn,
                                          exp_statsn=core.exp_stat_sn,
                                          cdb=_cdb10(READ10, 0, mtl // BLOCK)))
            core.cmdsn += 1
        ini.send_raw(b"".join(batch))  # one segment: the target parses all 128 at once
        time.sleep(2.0)
        peak = _status_kib(target.pid, "VmHWM")
        statuses: dict[int, int] = {}
        while sum(statuses.values()) < 128:
            bhs, _ = ini.recv_pdu()
            if bhs.opcode == Op.SCSI_RESPONSE or (bhs.opcode == Op.DATA_IN
                                                  and bhs.flags & pdu.F_STATUS):
                statuses[bhs.b3] = statuses.get(bhs.b3, 0) + 1
        assert set(statuses) <= {0x00, 0x28}, statuses  # GOOD, TASK SET FULL
        assert statuses.get(0x00, 0) >= 7, statuses
        bound = start + (64 << 10) + (48 << 10)
        assert peak < bound, f"peak RSS {peak} KiB over {bound} KiB ({statuses})"
        ini.close()


def test_largest_writes_rss_bounded(tmp_path: Path) -> None:
    with OurTarget(config=_config(tmp_path, ""), workdir=tmp_path) as target:
        ini = _initiator(target.port)
        ini.login()
        _clear_unit_attention(ini)
        mtl = _max_transfer_bytes(ini)
        payload = bytes(mtl)
        ini.command(_cdb10(WRITE10, 0, mtl // BLOCK), data=payload)  # the store's pages
        time.sleep(0.5)
        start_rss = _status_kib(target.pid, "VmRSS")
        start_hwm = _status_kib(target.pid, "VmHWM")
        core = ini.core
        itts = {core.command(_cdb10(WRITE10, 0, mtl // BLOCK), data=payload)
                for _ in range(128)}  # the whole CmdSN window (MaxCmdSN - ExpCmdSN + 1)
        ini._flush()
        statuses: dict[int, int] = {}
        while itts:
            event = ini._event()
            if getattr(event, "itt", None) in itts:
                itts.discard(event.itt)
                status = event.result.status
                statuses[status] = statuses.get(status, 0) + 1
        assert set(statuses) <= {0x00, 0x28}, statuses  # GOOD, TASK SET FULL
        assert statuses.get(0x00, 0) >= 7, statuses  # 64 MiB of buffers: 8 at a time
        peak = _status_kib(target.pid, "VmHWM")
        bound = max(start_hwm, start_rss) + (64 << 10) + (48 << 10)
        assert peak < bound, f"peak RSS {peak} KiB over {bound} KiB ({statuses})"
        assert ini.logout() == 0
        ini.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            rss = _status_kib(target.pid, "VmRSS")
            if rss < start_rss + (24 << 10):
                break
            time.sleep(0.2)
        assert rss < start_rss + (24 << 10), f"RSS {rss} KiB after the session, {start_rss} before"
        print(f"RSS {start_rss} KiB -> peak {peak} KiB -> {rss} KiB; statuses {statuses}")


def test_login_refused_by_initiator_error(tmp_path: Path) -> None:
    """Our initiator reports the 03/02 refusal (its LoginFailed) as an error, not a hang."""
    with OurTarget(config=_config(tmp_path, "max_sessions = 1"), workdir=tmp_path) as target:
        a = _initiator(target.port, isid=0x400000000001)
        a.login()
        b = _initiator(target.port, isid=0x400000000002)
        with pytest.raises(InitiatorError, match="03/02"):
            b.login()
        a.close()
        b.close()
