#!/usr/bin/env python3
"""tools/qd1_budget.py: where the time of one 4 KiB command at queue depth 1 goes.

    .venv/bin/python tools/qd1_budget.py                 # READ and WRITE, uvloop, 20000 each
    .venv/bin/python tools/qd1_budget.py --loop asyncio  # on asyncio's own event loop
    .venv/bin/python tools/qd1_budget.py --strace        # also the server's system calls

How it measures (issue 14's cost budget; docs/COST.md holds the figures):
- Our server runs in this process (target.app.build + target.shell.server.Server, the
  embedded default config's LU: 1 GiB in memory), on the event loop chosen; the client is
  `qemu-img bench -f raw -t none -d 1 -s 4k [-w] -c N`, a real peer in its own process,
  exactly the `read-4k-qd1` row of tools/bench.
- Wall per command = the client's run time / N. Server CPU per command = this process's
  utime + stime (/proc/self/stat) over the run / N.
- Inside the server, the hops of docs/ARCHITECTURE.md are timed by wrappers this tool puts
  around them (the product is not changed): each wrapper adds perf_counter_ns() twice and
  a call; the cost of an empty wrapped call is measured first and subtracted from each
  figure, once per wrapped call nested inside it (the figures are inclusive: a row
  contains the rows indented under it).
- "loop + kernel (server)" is server CPU minus the time inside the Link's callbacks: the
  event loop's own work (epoll_wait and the callback dispatch) and the kernel's receive
  and send paths that are charged to the server. "client + wire" is wall minus server CPU:
  qemu-img's own time, the loopback TCP path and the wake-ups, which this tool cannot
  split further (tgtd's null store at QD1, ../shared/ENVIRONMENT.md, is the floor of that
  with a C target).
- --strace attaches `strace -c` to the server's thread for a second, shorter run and
  prints its system calls per command (the time figures of that run are not used: strace slows
  every call).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from target import app as appmod  # noqa: E402
from target.backing.memory import MemoryStore  # noqa: E402
from target.config import Config  # noqa: E402
from target.iscsi.connection import Connection  # noqa: E402
from target.scsi.lu import LogicalUnit  # noqa: E402
from target.scsi.taskset import TaskSet  # noqa: E402
from target.shell import dispatch, server  # noqa: E402

QEMU_RE = re.compile(r"Run completed in ([\d.]+) seconds")
TICK = os.sysconf("SC_CLK_TCK")

# (row label, depth, owner object, attribute): what is timed, in hop order.
HOPS = [
    ("Link._on_readable (the whole receive callback)", 0, server.Link, "_on_readable"),
    ("socket recv_into", 1, None, "recv_into"),
    ("Connection.buffer_updated (parse, dispatch, admit, queue)", 1, Connection,
     "buffer_updated"),
    ("run_ready (the task to its LU and back)", 1, server, "run_ready"),
    ("Dispatcher.submit", 2, dispatch.Dispatcher, "submit"),
    ("TaskSet.direct (the idle fast path, incl. the CDB's one lookup)", 3, TaskSet, "direct"),
    ("LogicalUnit.execute (checks, handler)", 3, LogicalUnit, "execute"),
    ("MemoryStore.read / write", 4, None, "store"),
    ("Connection.complete (status, Data-In headers)", 3, Connection, "complete"),
    ("Link._flush (the send)", 1, server.Link, "_flush"),
    ("Connection.data_to_send", 2, Connection, "data_to_send"),
    ("socket sendmsg", 2, None, "sendmsg"),
]

acc: dict[str, int] = defaultdict(int)
calls: dict[str, int] = defaultdict(int)
nested: dict[str, int] = defaultdict(int)  # wrapped calls made inside each key's calls
_stack: list[str] = []


def _timed(key: str, fn):
    clock = time.perf_counter_ns

    def wrapper(*args, **kw):
        for k in _stack:
            nested[k] += 1
        _stack.append(key)
        t0 = clock()
        try:
            return fn(*args, **kw)
        finally:
            acc[key] += clock() - t0
            calls[key] += 1
            _stack.pop()

    return wrapper


class _TimedSocket:
    """The Link's socket with recv_into and sendmsg timed; everything else passed on."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.recv_into = _timed("recv_into", sock.recv_into)
        self.sendmsg = _timed("sendmsg", sock.sendmsg)

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


def instrument() -> None:
    for _label, _depth, owner, name in HOPS:
        if owner is None:
            continue
        setattr(owner, name, _timed(_key(owner, name), getattr(owner, name)))
    MemoryStore.read = _timed("store", MemoryStore.read)
    MemoryStore.write = _timed("store", MemoryStore.write)
    init = server.Link.__init__

    def link_init(self, srv, sock, peer):
        init(self, srv, sock, peer)
        self.sock = _TimedSocket(sock)

    server.Link.__init__ = link_init


def _key(owner, name: str) -> str:
    return f"{owner.__name__}.{name}" if owner is not None else name


def wrapper_cost() -> float:
    """ns one wrapped call adds (an empty function, wrapped, against the bare one)."""
    def empty():
        return None

    wrapped = _timed("_calibration", empty)
    n = 200_000
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            wrapped()
        t1 = time.perf_counter_ns()
        for _ in range(n):
            empty()
        t2 = time.perf_counter_ns()
        best = min(best, ((t1 - t0) - (t2 - t1)) / n)
    acc.pop("_calibration", None)
    calls.pop("_calibration", None)
    return best


def cpu_seconds() -> float:
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def run_client(url: str, count: int, write: bool) -> float:
    cmd = ["qemu-img", "bench", "-f", "raw", "-t", "none", "-d", "1", "-s", "4k",
           "-c", str(count), *(["-w"] if write else []), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    m = QEMU_RE.search(out.stdout + out.stderr)
    if not m:
        raise SystemExit(f"qemu-img bench failed: {(out.stdout + out.stderr)[-400:]}")
    return float(m[1])


def measure(args: argparse.Namespace) -> None:
    cfg = Config()
    built = appmod.build(cfg)
    srv = server.Server(built.portal, [("127.0.0.1", 0)], busy_poll_us=args.busy_poll_us)
    loop = server.new_event_loop(args.loop)
    ready = threading.Event()
    stop = threading.Event()
    bound: list = []
    server_tid: list[int] = []

    async def main() -> None:
        bound.extend(srv.start())
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await srv.shutdown()

    def serve() -> None:
        server_tid.append(threading.get_native_id())
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main())

    # The server's loop runs in a thread of this process (the main thread only waits); the
    # client is another process, so nothing else in this process competes for the GIL.
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(10)
    host, port = bound[0]
    iqn = next(iter(built.portal.targets))
    url = f"iscsi://{host}:{port}/{iqn}/0"
    run_client(url, 2000, True)  # warm-up: the blocks exist, the session code is hot
    overhead = wrapper_cost()
    print(f"event loop: {type(loop).__module__}; wrapper cost {overhead:.0f} ns per call; "
          f"{args.count} commands per row")
    for write in (False, True):
        acc.clear()
        calls.clear()
        nested.clear()
        cpu0 = cpu_seconds()
        seconds = run_client(url, args.count, write)
        cpu = cpu_seconds() - cpu0
        n = args.count
        print(f"\n4 KiB {'WRITE' if write else 'READ'} at QD1: {n / seconds:,.0f} IOPS")
        rows = [("wall per command (client's view)", 0, seconds / n * 1e6),
                ("server CPU per command", 0, cpu / n * 1e6)]
        callbacks = 0.0
        for label, depth, owner, name in HOPS:
            key = _key(owner, name)
            if key == "store":
                label = "MemoryStore.write" if write else "MemoryStore.read"
            per = (acc[key] - overhead * nested[key]) / n / 1000
            rows.append(("  " * (depth + 1) + label, depth, per))
            if key == "Link._on_readable":
                callbacks = per
        rows.append(("  loop + kernel (server CPU outside the callbacks)", 0,
                     cpu / n * 1e6 - callbacks))
        rows.append(("client + wire (wall - server CPU)", 0, (seconds - cpu) / n * 1e6))
        for label, _depth, us in rows:
            print(f"  {label:<62} {us:8.1f} us")
        per_call = {k: calls[k] / n for k in ("recv_into", "sendmsg", "Link._on_readable")}
        print("  calls per command: " + ", ".join(f"{k} {v:.2f}" for k, v in per_call.items()))
    if args.strace:
        strace_counts(url, args, server_tid[0])
    stop.set()
    thread.join(10)
    built.close()


def strace_counts(url: str, args: argparse.Namespace, tid: int) -> None:
    """strace -c of the server's thread alone (not the client qemu-img, which this process
    starts, nor the thread that waits for it)."""
    n = max(1000, args.count // 10)
    for write in (False, True):
        with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
            st = subprocess.Popen(["strace", "-c", "-o", out.name, "-p", str(tid)],
                                  stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            try:
                run_client(url, n, write)
            finally:
                st.terminate()
                st.wait(10)
            text = Path(out.name).read_text()
        print(f"\nsystem calls of the server per 4 KiB {'WRITE' if write else 'READ'} "
              f"(strace -c, {n} commands):")
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[0][0].isdigit() and not line.startswith("100"):
                name = parts[-1]
                count = int(parts[3])
                if count >= n // 10:
                    print(f"  {name:<16} {count / n:6.2f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=20000, help="commands per row")
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default=None,
                   help="event loop (default: uvloop when installed, as the server)")
    p.add_argument("--strace", action="store_true", help="also count system calls")
    p.add_argument("--busy-poll-us", type=float, default=Config().busy_poll_us,
                   help="the server's busy polling budget (default: the server's own, "
                        "%(default)g us; 0: off)")
    p.add_argument("--no-hops", action="store_true",
                   help="no wrappers: the uninstrumented figures, to see what they cost")
    args = p.parse_args()
    if not args.no_hops:
        instrument()
    measure(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
