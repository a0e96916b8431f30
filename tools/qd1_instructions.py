#!/usr/bin/env python3
"""tools/qd1_instructions.py: the server's instructions per 4 KiB command at queue depth 1.

    tools/qd1_instructions.py                  # READ and WRITE under callgrind: Ir per command
    tools/qd1_instructions.py --ops read --n 300 1500
    tools/qd1_instructions.py --serve read 2000  # the driver itself (what callgrind runs)
    tools/qd1_instructions.py --serve read 2000 --prof   # cProfile call counts of the path
    tools/qd1_instructions.py --trace          # the same with the CDB trace on (a file)

Why instructions (issue 14, docs/COST.md): the machine is shared, so wall or CPU time
moves with the load; the instruction count of a run does not. The figure is what the
server's Python executes for one READ(10) or WRITE(10) of 4 KiB, not the socket or the
loop (COST.md's "inside the callbacks" share).

How it measures:
- The driver runs the product's real path in this process with no socket: the Connection,
  Session, Dispatcher, TaskSet, LogicalUnit and MemoryStore of tests/unit/shell_util.py's
  Shell and Initiator (a memory disk served inline, as the embedded default config does).
  One command = the SCSI Command PDU (immediate data for WRITE) written into
  Connection.get_buffer(), Connection.buffer_updated(), every event through
  target.shell.dispatch.run_ready (what target.shell.server.Link._on_readable does),
  then Connection.data_to_send() (what Link._flush hands to sendmsg).
- The initiator's PDUs are all built before the first is served (always `max(n)` of
  them, whatever the run's N), so their cost is the same in every run.
- --trace: a target.trace.Tracer writing to a temporary file is the Dispatcher's and
  run_ready's, as `serve --trace FILE` makes it, and is closed (its writer thread's work
  done) before the process ends, so the count includes the whole trace.
- The runs have PYTHONHASHSEED=0 unless the environment sets one: the layout of the
  interpreter's dicts moves the count by a few hundred instructions (docs/COST.md).
- valgrind --tool=callgrind counts the instructions (Ir) of the whole process for two
  values of N; (Ir(N2) - Ir(N1)) / (N2 - N1) is the cost of one command, free of the
  start-up, the imports, the PDU building and the first commands' warm-up.
"""

from __future__ import annotations

import argparse
import os
import re
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READ10 = 0x28
WRITE10 = 0x2A


def serve(op: str, n: int, built: int, prof: bool = False, trace: bool = False) -> None:
    """Build `built` PDUs of `op` (read or write, 4 KiB at LBA 8), serve the first n."""
    sys.path.insert(0, str(ROOT))
    from target.backing.memory import MemoryStore
    from target.scsi.disk import make_disk
    from target.shell.dispatch import run_ready
    from target.trace import Tracer
    from tests.unit.shell_util import Shell

    tmp = tempfile.TemporaryDirectory()
    tracer = Tracer(Path(tmp.name) / "trace") if trace else None
    lu = make_disk(0, MemoryStore(64 << 20))
    shell = Shell([lu], inline_luns=(0,), tracer=tracer)
    ini = shell.initiator(1)
    conn, link, dispatchers = ini.conn, ini.link, shell.dispatchers
    if op == "write":
        cdb = struct.pack(">BBIBHB", WRITE10, 0, 8, 0, 8, 0)
        pdus = [ini.command(cdb, data=bytes(4096))[1] for _ in range(built)]
    else:
        cdb = struct.pack(">BBIBHB", READ10, 0, 8, 0, 8, 0)
        pdus = [ini.command(cdb, read=4096)[1] for _ in range(built)]
    get_buffer, buffer_updated = conn.get_buffer, conn.buffer_updated
    next_event, data_to_send = conn.next_event, conn.data_to_send
    out = 0

    def one(raw: bytes) -> None:
        nonlocal out
        buf = get_buffer()
        size = len(raw)
        buf[:size] = raw
        buffer_updated(size)
        while (event := next_event()) is not None:
            run_ready(link, event, dispatchers, tracer)
        for chunk in data_to_send():
            out += len(chunk)

    if prof:
        import cProfile
        import pstats
        profile = cProfile.Profile()
        profile.enable()
        for raw in pdus[:n]:
            one(raw)
        profile.disable()
        pstats.Stats(profile).sort_stats("ncalls").print_stats(40)
    else:
        for raw in pdus[:n]:
            one(raw)
    if tracer is not None:
        tracer.close()
        tmp.cleanup()
    expected = n * (48 + 4096 if op == "read" else 48)
    if out != expected:
        raise SystemExit(f"{op}: {out} bytes sent for {n} commands, expected {expected}")


def instructions(op: str, n: int, built: int, trace: bool = False) -> int:
    """Ir of one callgrind run of the driver."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        sys.executable, __file__, "--serve", op, str(n), "--built",
                        str(built), *(["--trace"] if trace else [])],
                       check=True, capture_output=True,
                       env={**os.environ,  # a fixed hash seed: the count repeats exactly
                            "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED", "0")})
        summary = Path(out).read_text().splitlines()
    for line in summary:
        if m := re.match(r"(?:summary|totals):\s+(\d+)", line):
            return int(m.group(1))
    raise SystemExit("no totals in the callgrind output")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", nargs="+", default=["read", "write"], choices=["read", "write"])
    ap.add_argument("--n", nargs=2, type=int, default=[300, 1500], metavar=("N1", "N2"))
    ap.add_argument("--serve", nargs=2, metavar=("OP", "N"))
    ap.add_argument("--built", type=int, default=0)
    ap.add_argument("--prof", action="store_true")
    ap.add_argument("--trace", action="store_true", help="with the CDB trace on")
    args = ap.parse_args()
    if args.serve:
        op, n = args.serve[0], int(args.serve[1])
        serve(op, n, max(args.built, n), args.prof, args.trace)
        return
    n1, n2 = sorted(args.n)
    for op in args.ops:
        i1 = instructions(op, n1, n2, args.trace)
        i2 = instructions(op, n2, n2, args.trace)
        print(f"{op.upper()}: {(i2 - i1) / (n2 - n1):,.0f} instructions per command "
              f"(Ir {i1:,} at N={n1}, {i2:,} at N={n2})", flush=True)


if __name__ == "__main__":
    main()
