"""Busy polling (target.shell.server.Link._after_send, --busy-poll-us): the real Server on
a loopback socket with a memory LU, in this process; the initiator (our blocking one) in a
child process, so that the two run at once as a guest and the target do (a thread would
share this process's GIL with the polling loop).

What is asserted: the commands a polling link catches are answered exactly as the loop's
path answers them (the data written is read back, SBC-4 5.15 / 5.40 READ(10)/WRITE(10));
a quick initiator is caught by polling, and the loop's timers still fire all along (polling
gives the loop a turn every SPIN_ROUNDS receives); a slow initiator (gaps longer than the
budget) costs at most a missed poll or two, after which the link sleeps in the loop; with
two links nobody polls (one link's poll would hold up the other's commands)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
import time

from target import app as appmod
from target.config import Config, LunConfig, TargetConfig
from target.shell.server import Server

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

IQN = "iqn.2026-12.local.test:busy-poll"

CLIENT = textwrap.dedent('''
    import json, struct, sys, time
    from target.shell.initiator import Initiator
    port, iqn, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]

    def session(isid):
        ini = Initiator("127.0.0.1", port, iqn, isid=isid, timeout=10).connect()
        ini.login()
        while ini.command(bytes(6)).status:  # TEST UNIT READY past the unit attention
            pass
        return ini

    def rw(op, lba):
        return struct.pack(">BBIBHB", op, 0, lba, 0, 1, 0)

    bad = []
    if mode == "quick":
        ini = session(0x400000000001)
        print("start", time.time(), flush=True)
        for i in range(1500):
            data = bytes([i & 0xFF]) * 512
            if ini.command(rw(0x2A, i), data=data).status:
                bad.append(("write", i))
            got = ini.command(rw(0x28, i), read=512)
            if (got.status, got.data) != (0, data):
                bad.append(("read", i))
        print("end", time.time(), flush=True)
        ini.logout()
    elif mode == "slow":
        ini = session(0x400000000001)
        for i in range(20):
            time.sleep(0.005)
            if ini.command(rw(0x28, i), read=512).status:
                bad.append(("read", i))
        ini.logout()
    else:  # two sessions
        a, b = session(0x400000000001), session(0x400000000002)
        print("both", flush=True)
        sys.stdin.readline()
        for i in range(50):
            for ini in (a, b):
                if ini.command(rw(0x28, i), read=512).status:
                    bad.append(("read", i))
        print("done", flush=True)
        sys.stdin.readline()
        a.logout()
        b.logout()
    print(json.dumps(bad), flush=True)
''')


def serve(budget_us: float, mode: str, during=None) -> tuple[Server, list, list[float]]:
    """Serve a 1 MiB memory LU until the child initiator of `mode` ends; the server, what
    the child reported wrong, and the times a 10 ms timer fired meanwhile. `during(line,
    server)` is called for each line the child prints before its last."""
    cfg = Config(targets=[TargetConfig(iqn=IQN, luns=[LunConfig(size=1 << 20, serial="bp")])])
    application = appmod.build(cfg)
    server = Server(application.portal, [("127.0.0.1", 0)], busy_poll_us=budget_us)
    ticks: list[float] = []

    def sample_load() -> None:  # a free core, always; and a timer that must keep firing
        server.spin_allowed = True
        ticks.append(time.time())
        if server.serving:
            server.loop.call_later(0.01, sample_load)

    server._sample_load = sample_load
    lines: list[str] = []

    async def main() -> None:
        server.start()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLIENT, str(server.bound[0][1]), IQN, mode,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": ROOT})
        try:
            assert proc.stdout is not None and proc.stdin is not None
            while line := (await asyncio.wait_for(proc.stdout.readline(), 60)).decode():
                lines.append(line)
                if during is not None and not line.startswith("["):
                    during(line.strip(), server)
                    proc.stdin.write(b"\n")  # the child goes on
            assert await asyncio.wait_for(proc.wait(), 30) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await server.shutdown(grace=0.1)

    try:
        asyncio.run(main())
    finally:
        application.close()
    return server, json.loads(lines[-1]), ticks


def test_quick_initiator_is_caught_by_polling_and_answered_alike():
    times = {}

    def during(line: str, server: Server) -> None:
        word, when = line.split()
        times[word] = float(when)

    server, bad, ticks = serve(10_000, "quick", during)  # 10 ms: more than any gap here
    assert bad == []
    assert server.spun >= 2000, (server.spun, server.spin_missed)
    # Polling never kept the loop from its timers: the 10 ms timer fired all along the
    # 3,000 commands (a quarter of its nominal rate at least, on a busy machine).
    start, end = times["start"], times["end"]
    fired = [t for t in ticks if start <= t <= end]
    assert len(fired) >= (end - start) / 0.01 / 4, (len(fired), end - start)


def test_slow_initiator_costs_at_most_a_missed_poll_or_two_then_sleeps():
    server, bad, _ = serve(1_000, "slow")  # 5 ms gaps against a 1 ms budget
    assert bad == []
    # A miss turns polling off until a gap shorter than the budget is seen again; these
    # gaps are all long, so only the quick answers right after login may poll and miss.
    assert server.spin_missed <= 2, server.spin_missed


def test_two_links_never_poll():
    seen = {}

    def during(line: str, server: Server) -> None:
        seen[line] = (server.spun, server.spin_missed)

    _, bad, _ = serve(10_000, "two", during)
    assert bad == []
    assert seen["done"] == seen["both"]  # 100 commands on two links: not one polled for


def test_polling_is_allowed_only_with_a_core_free_and_little_steal(tmp_path, monkeypatch):
    """Server._sample_load from /proc/loadavg's running count (field 4, proc(5)) and the
    steal column of /proc/stat's cpu line (field 8): both as the kernel writes them."""
    from target.shell import server as srvmod

    loadavg, stat = tmp_path / "loadavg", tmp_path / "stat"
    monkeypatch.setattr(srvmod, "PROC_LOADAVG", str(loadavg))
    monkeypatch.setattr(srvmod, "PROC_STAT", str(stat))
    monkeypatch.setattr(srvmod, "CPUS", 2)
    server = Server.__new__(Server)
    server.serving = False
    server._jiffies = (0, 0)

    def look(running: int, user: int, steal: int) -> bool:
        loadavg.write_text(f"0.50 0.40 0.30 {running}/180 4242\n")
        stat.write_text(f"cpu  {user} 0 100 5000 10 0 20 {steal} 0 0\ncpu0 1 0 0 0 0 0 0 0 0 0\n")
        server._sample_load()
        return server.spin_allowed

    look(1, 1000, 0)  # the first look sets the base
    assert look(2, 2000, 10)  # 2 running on 2 CPUs, 1% stolen
    assert not look(3, 3000, 20)  # one more running than CPUs
    assert not look(1, 4000, 200)  # 180 of 1180 jiffies stolen
    assert look(1, 5000, 210)
    loadavg.write_text("garbage\n")
    server._sample_load()
    assert not server.spin_allowed  # unreadable: no polling
