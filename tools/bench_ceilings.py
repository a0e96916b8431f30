"""Ceilings for tools/bench: what the client and the transport give with no storage at all.

Rules of this module:
- IOPS rows (4 KiB): the same client and workload against tgtd's null backing store
  (`tgtadm --mode logicalunit --op new --bstype null --backing-store /dev/null`, tgt's
  usr/bs_null.c: every read returns at once with no data copied from a medium, every write
  is dropped), as LUN 2 of the tgtd the bench already runs: the iSCSI protocol, tgtd's
  event loop and the client, with no store behind them.
- Bandwidth rows (1 MiB): loopback TCP between two processes, measured by iperf3 (Debian
  package iperf3): one stream, `-l 1M` (the rows' transfer size), for the run's seconds;
  the figure is the receiver's bytes per second (`end.sum_received.bits_per_second` of
  its `-J` report, / 8 / 1e9 for GB/s), what actually arrived, not what was queued.
  The iperf3 server is started one-off (`-s -1`) on a fresh ephemeral port of 127.0.0.1
  and stopped by its PID; a port collision (it exits before listening) is retried.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

from target.testing.servers import HOST, Tgtd, free_port, pid_listens_on, stop_process

NULL_LUN = 2
_ATTEMPTS = 5


class CeilingError(Exception):
    """A ceiling run failed; the message says how."""


def add_null_lun(tgtd: Tgtd, block_size: int = 512, lun: int = NULL_LUN) -> str:
    """Add tgtd's null store as `lun` of tid 1 of a running `tgtd`; its iscsi:// URL."""
    args = ["--lld", "iscsi", "--mode", "logicalunit", "--op", "new", "--tid", "1",
            "--lun", str(lun), "--bstype", "null", "--backing-store", "/dev/null"]
    if block_size != 512:
        args += ["--blocksize", str(block_size)]
    tgtd.tgtadm(*args)
    return f"iscsi://{HOST}:{tgtd.port}/{tgtd.iqn}/{lun}"


def parse_iperf3(text: str) -> float:
    """Receiver throughput in bytes per second from iperf3's `-J` report."""
    try:
        report = json.loads(text)
    except json.JSONDecodeError as e:
        raise CeilingError(f"iperf3 output is not JSON: {text[:200]!r}") from e
    if report.get("error"):
        raise CeilingError(f"iperf3: {report['error']}")
    try:
        received = report["end"]["sum_received"]
    except (KeyError, TypeError) as e:
        raise CeilingError("iperf3 report has no end.sum_received") from e
    return float(received["bits_per_second"]) / 8


def iperf3_run(seconds: float, length: int = 1 << 20, timeout: float | None = None) -> float:
    """Loopback TCP throughput (bytes/s) of one iperf3 stream for `seconds` (>= 1)."""
    iperf3 = shutil.which("iperf3")
    if not iperf3:
        raise CeilingError("iperf3 not found: install Debian package 'iperf3'")
    duration = str(max(1, round(seconds)))
    timeout = timeout or seconds * 3 + 30
    for _ in range(_ATTEMPTS):
        port = free_port()
        server = subprocess.Popen([iperf3, "-s", "-1", "-B", HOST, "-p", str(port)],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            if not _wait_listening(server, port):
                continue  # another process took the port: try a fresh one
            cmd = [iperf3, "-c", HOST, "-p", str(port), "-t", duration, "-l", str(length),
                   "-J"]
            try:
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                     stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired as e:
                raise CeilingError(f"iperf3 timed out after {timeout:g} s") from e
            if res.returncode != 0 and not res.stdout.strip():
                raise CeilingError(f"iperf3 exit {res.returncode}: {res.stderr[-300:]}")
            return parse_iperf3(res.stdout)
        finally:
            stop_process(server, grace=2.0)
    raise CeilingError(f"iperf3 server did not listen after {_ATTEMPTS} attempts")


def _wait_listening(server: subprocess.Popen, port: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            return False
        if pid_listens_on(server.pid, port):
            return True
        time.sleep(0.02)
    return False


def iperf3_version() -> str | None:
    """`iperf 3.12` or the like (first line of `iperf3 --version`), None when missing."""
    iperf3 = shutil.which("iperf3")
    if not iperf3:
        return None
    out = subprocess.run([iperf3, "--version"], capture_output=True, text=True, timeout=10)
    return out.stdout.splitlines()[0].strip() if out.stdout else None

