"""tools/bench_conditions.py: /proc/loadavg and /proc/PID/stat as proc(5) lays them out,
and the busy-process test of a round as the kernel accounts CPU time.

Oracles: proc(5) (loadavg: three averages, runnable/total, last PID; stat: comm in
parentheses, ppid field 4, utime 14, stime 15, starttime 22), sample lines read on this
machine, and the kernel's other interfaces: os.getloadavg() (getloadavg(3)), os.getppid(),
os.times() (times(2)) for our own CPU time, and a real busy child process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

from bench_conditions import (  # noqa: E402
    CLK_TCK,
    LoadAvg,
    ProcStat,
    Snapshot,
    busy_others,
    conditions,
    descendants,
    parse_loadavg,
    parse_stat,
    snapshot,
)

pytestmark = pytest.mark.unit

# Read on this machine (Linux 6.18): `cat /proc/loadavg`, `cat /proc/self/stat`.
LOADAVG = "1.05 1.60 1.43 1/87 6587\n"
STAT = ("6588 (cat) R 6584 6584 4111 0 -1 4194304 99 0 0 0 0 0 0 0 20 0 1 0 3666595 "
        "3133440 390 18446744073709551615 93859916115968 93859916135849 140733548212928 0 "
        "0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 93859916151856 93859916153472 93860282621952 "
        "140733548219108 140733548219128 140733548219128 140733548220395 0\n")


def test_loadavg_fields() -> None:
    assert parse_loadavg(LOADAVG) == LoadAvg(1.05, 1.60, 1.43, 1, 87, 6587)


def test_loadavg_agrees_with_getloadavg() -> None:
    for _ in range(3):  # the kernel updates it every 5 s: retry a read that straddled it
        ours = parse_loadavg(Path("/proc/loadavg").read_text())
        theirs = os.getloadavg()
        if (ours.one, ours.five, ours.fifteen) == pytest.approx(theirs, abs=0.011):
            return
    pytest.fail(f"/proc/loadavg {ours} vs getloadavg {theirs}")


def test_stat_fields_by_proc5_numbers() -> None:
    p = parse_stat(STAT)
    assert (p.pid, p.comm, p.ppid) == (6588, "cat", 6584)
    assert (p.utime, p.stime, p.starttime) == (0, 0, 3666595)


def test_stat_comm_with_spaces_and_parentheses() -> None:
    # comm is up to 15 bytes of anything: proc(5) says to split after the last ')'.
    line = STAT.replace("(cat)", "(a) b (c) d)", 1).replace(" 0 0 0 0 20 ", " 7 9 0 0 20 ", 1)
    p = parse_stat(line)
    assert (p.pid, p.comm, p.ppid) == (6588, "a) b (c) d", 6584)
    assert (p.utime, p.stime, p.cpu_ticks) == (7, 9, 16)


def test_own_stat_agrees_with_the_kernel() -> None:
    end = time.process_time() + 0.3
    while time.process_time() < end:  # burn some CPU so the ticks are not all zero
        pass
    t = os.times()
    p = parse_stat(Path("/proc/self/stat").read_text())
    assert (p.pid, p.ppid) == (os.getpid(), os.getppid())
    assert p.cpu_ticks / CLK_TCK == pytest.approx(t.user + t.system, abs=0.05)


def _snap(when: float, **ticks: tuple[int, int, int]) -> Snapshot:
    """procs as name=(pid, ppid, cpu ticks); starttime 1 for all."""
    procs = {pid: ProcStat(pid, name, ppid, cpu, 0, 1) for name, (pid, ppid, cpu) in
             ticks.items()}
    return Snapshot(when, LoadAvg(0, 0, 0, 1, 1, 1), procs)


def test_busy_threshold_and_ours_excluded() -> None:
    before = _snap(0.0, bench=(10, 1, 0), tgtd=(11, 10, 0), other=(20, 1, 0),
                   idle=(21, 1, 0))
    after = _snap(10.0, bench=(10, 1, 900), tgtd=(11, 10, 1000), other=(20, 1, 60),
                  idle=(21, 1, 40))
    ours = descendants(after.procs, 10)
    assert ours == {10, 11}
    busy = busy_others(before, after, ours, threshold=0.05, clk_tck=100)
    # other: 60 ticks / 100 Hz / 10 s = 6% of a core (> 5%); idle: 4% (not busy).
    assert [(b.comm, round(b.cpu, 3)) for b in busy] == [("other", 0.06)]


def test_reused_pid_is_not_compared() -> None:
    before = _snap(0.0, x=(20, 1, 0))
    after = Snapshot(1.0, before.loadavg, {20: ProcStat(20, "y", 1, 10_000, 0, 2)})
    assert busy_others(before, after, set(), clk_tck=100) == []


def test_a_real_busy_process_is_seen_and_ours_is_not() -> None:
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        a = snapshot()
        time.sleep(1.0)
        b = snapshot()
    finally:
        child.kill()
        child.wait()
    mine = conditions(1, a, b)  # the child descends from us: ours
    assert child.pid not in {x.pid for x in mine.busy}
    stranger = conditions(1, a, b, root=-1)  # nothing is ours: the child is another's
    seen = {x.pid: x.cpu for x in stranger.busy}
    assert child.pid in seen, stranger.text()  # above 5% of a core (it spins)
    assert not stranger.quiet and "NOT QUIET" in stranger.text()
    assert stranger.to_json()["quiet"] is False
