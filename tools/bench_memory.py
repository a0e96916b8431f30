"""tools/bench --memory: our server's resident memory, idle, per idle session, and filled.

Rules of this module:
- RSS is the kernel's: VmRSS of /proc/PID/status (proc(5): "Resident set size", the sum
  of RssAnon, RssFile and RssShmem, in kB), read from our server's own PID (the Python
  process `python -m target serve`, no wrapper). RssAnon is shown beside it: the memory
  LU is a private anonymous mapping (target/backing/memory.py), so its written pages are
  anonymous, and /proc/PID/smaps_rollup's Anonymous agrees with RssAnon.
- Three figures, one server (a memory LU of --size, default 1 GiB, --block-size):
  1. idle: after the server listens and has settled (--settle seconds);
  2. per idle session: N logins (--sessions, each its own ISID, our blocking initiator
     target.shell.initiator.Initiator), RSS with all N in full feature phase, minus idle,
     over N; then they log out and close;
  3. filled: qemu-img bench writes the whole LU once, 1 MiB requests at QD8 with a
     non-zero pattern (`-w -s 1M -S 1M -c size/1M --pattern=0xa5`), through iSCSI;
     growth = RSS after - RSS before the fill; ratio = growth / bytes written.
- Issue 14's bar: the growth is within 10% of the data written (ratio <= 1.10, no double
  buffer of the data), and at least 0.90 (else the data was not kept where we look).
- Pure parsing (parse_status) apart from the run, for tests.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from target.shell.initiator import Initiator
from target.testing.servers import HOST, OurTarget, initiator_iqn

MiB = 1 << 20
BAR = 0.10  # issue 14: within 10% of the data written


def parse_status(text: str) -> dict[str, int]:
    """The 'Name:  N kB' lines of /proc/PID/status as {name: bytes} (proc(5))."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            found[name] = int(parts[0]) * 1024
    return found


@dataclass(frozen=True)
class Rss:
    rss: int  # VmRSS, bytes
    anon: int  # RssAnon, bytes


def rss(pid: int) -> Rss:
    s = parse_status(Path(f"/proc/{pid}/status").read_text())
    return Rss(s["VmRSS"], s.get("RssAnon", 0))


def fill_ratio(before: Rss, after: Rss, written: int) -> float:
    """RSS growth over bytes written."""
    return (after.rss - before.rss) / written


def verdict(r: float) -> str:
    return ("ok" if 1 - BAR <= r <= 1 + BAR else
            "OVER: more than the data written (a second buffer?)" if r > 1 + BAR else
            "UNDER: less than the data written")


def _mib(n: float) -> str:
    return f"{n / MiB:.1f} MiB"


def open_sessions(server: OurTarget, n: int, tag: str) -> list[Initiator]:
    sessions = []
    for i in range(n):
        ini = Initiator(HOST, server.port, target_name=server.iqn,
                        initiator_name=initiator_iqn(tag), isid=0x400000000001 + i)
        sessions.append(ini)
        ini.login()
    return sessions


def close_sessions(sessions: list[Initiator]) -> None:
    for ini in sessions:
        try:
            ini.logout()
        except (OSError, TimeoutError, AssertionError):
            pass
        ini.close()


def fill(url: str, size: int, timeout: float) -> int:
    """Write the whole LU once through qemu-img bench (1 MiB at QD8); bytes written."""
    count = size // MiB
    cmd = ["qemu-img", "bench", "-f", "raw", "-t", "none", "-w", "-d", "8", "-s", str(MiB),
           "-S", str(MiB), "-c", str(count), "--pattern=0xa5", url]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise RuntimeError(f"qemu-img bench failed ({res.returncode}): {res.stderr[-400:]}")
    return count * MiB


def run(args: argparse.Namespace, workdir: Path) -> dict:
    """The three figures (and the ratio) as a dict; printed as they are measured."""
    extra = ["--size", str(args.size), "--block-size", str(args.block_size)]
    with OurTarget(extra, workdir=workdir / "memory") as server:
        time.sleep(args.settle)
        idle = rss(server.pid)
        print(f"memory: idle RSS {_mib(idle.rss)} (anon {_mib(idle.anon)}), pid {server.pid}")
        sessions = open_sessions(server, args.sessions, "bench-memory")
        try:
            time.sleep(args.settle)
            busy = rss(server.pid)
        finally:
            close_sessions(sessions)
        per_session = (busy.rss - idle.rss) / args.sessions
        print(f"memory: {args.sessions} idle sessions: RSS {_mib(busy.rss)}, "
              f"{per_session / 1024:.1f} KiB per session")
        time.sleep(args.settle)
        before = rss(server.pid)
        written = fill(server.url, args.size, timeout=600)
        time.sleep(args.settle)
        after = rss(server.pid)
        r = fill_ratio(before, after, written)
        print(f"memory: after writing {_mib(written)} through iSCSI: RSS {_mib(after.rss)} "
              f"(anon {_mib(after.anon)}); growth {_mib(after.rss - before.rss)}, "
              f"growth/written {r:.3f}: {verdict(r)}")
    return {"idle_rss": idle.rss, "idle_rss_anon": idle.anon, "sessions": args.sessions,
            "sessions_rss": busy.rss, "rss_per_session": per_session,
            "before_fill_rss": before.rss, "after_fill_rss": after.rss,
            "after_fill_rss_anon": after.anon, "bytes_written": written,
            "growth_over_written": r, "verdict": verdict(r)}
