"""The conditions of a benchmark round: the load average and the other busy processes.

Rules of this module:
- A round is bracketed by two snapshots (`snapshot()`): /proc/loadavg and, for every
  process, its CPU time from /proc/PID/stat. proc(5): the second field `comm` is in
  parentheses and may itself hold spaces and ')', so fields are split after the LAST ')';
  counting from 1, field 4 is ppid, 14 utime, 15 stime (clock ticks, the whole thread
  group for a process's own stat file), 22 starttime (ticks since boot, which tells a
  reused PID from the process that had it before).
- "Ours" is this process and its descendants (the servers and clients the bench starts:
  our target, tgtd, iscsi-perf, qemu-img, iperf3), found from the ppid chain in the
  second snapshot. Any other process whose CPU time grew by more than `threshold`
  (default 5%) of one core over the round's wall time is "busy"; a machine with a busy
  process was not quiet, and the round says so. Another user's tgtd is not ours.
- Processes that started and ended inside the round are not seen (only both snapshots
  are); a process present in both with the same starttime is compared.
- Parsing is pure (text in, values out) so tests can feed it proc(5)'s sample lines.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
BUSY_THRESHOLD = 0.05  # of one core


@dataclass(frozen=True)
class LoadAvg:
    """/proc/loadavg: 1, 5 and 15 minute load averages, runnable/total tasks, last PID."""

    one: float
    five: float
    fifteen: float
    runnable: int
    tasks: int
    last_pid: int


def parse_loadavg(text: str) -> LoadAvg:
    """'0.50 0.40 0.30 2/123 4567' (proc(5), /proc/loadavg) as a LoadAvg."""
    one, five, fifteen, sched, last = text.split()[:5]
    runnable, tasks = sched.split("/")
    return LoadAvg(float(one), float(five), float(fifteen), int(runnable), int(tasks),
                   int(last))


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat this module uses (proc(5) numbering in comments)."""

    pid: int  # 1
    comm: str  # 2, without the parentheses
    ppid: int  # 4
    utime: int  # 14, clock ticks
    stime: int  # 15, clock ticks
    starttime: int  # 22, clock ticks after boot

    @property
    def cpu_ticks(self) -> int:
        return self.utime + self.stime


def parse_stat(text: str) -> ProcStat:
    """One /proc/PID/stat line; `comm` may contain spaces and parentheses."""
    head, _, rest = text.rpartition(")")
    pid, _, comm = head.partition(" (")
    f = rest.split()  # f[0] is field 3 (state)
    return ProcStat(int(pid), comm, int(f[1]), int(f[11]), int(f[12]), int(f[19]))


@dataclass
class Snapshot:
    when: float  # time.monotonic()
    loadavg: LoadAvg
    procs: dict[int, ProcStat]


def snapshot(proc: Path = Path("/proc")) -> Snapshot:
    """The load average and every process's stat line, now."""
    procs: dict[int, ProcStat] = {}
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            procs[int(entry.name)] = parse_stat((proc / entry.name / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue  # it ended while we looked
    return Snapshot(time.monotonic(), parse_loadavg((proc / "loadavg").read_text()), procs)


def descendants(procs: dict[int, ProcStat], root: int) -> set[int]:
    """`root` and every process whose ppid chain reaches it."""
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


@dataclass(frozen=True)
class Busy:
    pid: int
    comm: str
    cpu: float  # fraction of one core over the round


def busy_others(before: Snapshot, after: Snapshot, ours: set[int],
                threshold: float = BUSY_THRESHOLD, clk_tck: int = CLK_TCK) -> list[Busy]:
    """Processes not in `ours` that used more than `threshold` of one core between the
    snapshots, busiest first."""
    wall = after.when - before.when
    if wall <= 0:
        return []
    busy = []
    for pid, late in after.procs.items():
        early = before.procs.get(pid)
        if pid in ours or early is None or early.starttime != late.starttime:
            continue
        cpu = (late.cpu_ticks - early.cpu_ticks) / clk_tck / wall
        if cpu > threshold:
            busy.append(Busy(pid, late.comm, cpu))
    return sorted(busy, key=lambda b: -b.cpu)


@dataclass
class Conditions:
    """What a round ran beside: load averages at both ends, the busy other processes."""

    round: int
    seconds: float
    load_before: LoadAvg
    load_after: LoadAvg
    busy: list[Busy] = field(default_factory=list)

    @property
    def quiet(self) -> bool:
        return not self.busy

    def text(self) -> str:
        s = (f"round {self.round}: {self.seconds:.0f} s, load average "
             f"{self.load_before.one:.2f} -> {self.load_after.one:.2f}")
        if self.busy:
            s += ("; NOT QUIET, busy: " + ", ".join(
                f"{b.comm}[{b.pid}] {100 * b.cpu:.0f}%" for b in self.busy[:8]))
        return s

    def to_json(self) -> dict:
        return {"round": self.round, "seconds": self.seconds,
                "loadavg_before": [self.load_before.one, self.load_before.five,
                                   self.load_before.fifteen],
                "loadavg_after": [self.load_after.one, self.load_after.five,
                                  self.load_after.fifteen],
                "quiet": self.quiet,
                "busy": [{"pid": b.pid, "comm": b.comm, "cpu": round(b.cpu, 3)}
                         for b in self.busy]}


def conditions(n: int, before: Snapshot, after: Snapshot, root: int | None = None,
               threshold: float = BUSY_THRESHOLD) -> Conditions:
    """The Conditions of round `n` between two snapshots; ours = `root`'s process tree."""
    root = os.getpid() if root is None else root
    ours = descendants(after.procs, root) | descendants(before.procs, root)
    return Conditions(n, after.when - before.when, before.loadavg, after.loadavg,
                      busy_others(before, after, ours, threshold))
