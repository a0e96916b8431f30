"""Micro-benchmark of the CDB trace: the CPU cost per record of Tracer.record and close().

Rules:
- Feeds N realistic completed tasks through one Tracer writing its file in a temporary
  directory (binary chunks; an old trace.py given by --module, JSON lines): 4 KiB
  READ(10) (Data-In of 4096 bytes) and WRITE(10) (Data-Out of 4096 bytes) at random LBAs,
  512-byte blocks, half of them through the task set (a `queued` count), and one in
  CHECK_EVERY ending in CHECK CONDITION (LOGICAL BLOCK ADDRESS OUT OF RANGE, fixed
  sense), as target/shell/dispatch.py records them.
- Reports, per record, CPU time (not wall time: the machine is shared): `record` is the
  calling thread's CPU in record() (time.thread_time: the event loop's share), `close` the
  calling thread's CPU in close(), `total` the whole process's CPU from the first record to
  the end of close() (time.process_time: every thread, the writer's encoding and write
  included). The best of --repeat runs is kept (others' load only adds time).
- `--module FILE` benchmarks another trace.py (the main branch's, for the "before"); it
  is imported under its own name and uses this tree's target package for the rest.
- Never run under pytest or with the suite: it is a tool, run by hand.

Usage: python tools/trace_bench.py [-n 200000] [--repeat 5] [--module /work/main/target/trace.py]
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from target.scsi.disk import DISK_COMMANDS  # noqa: E402
from target.scsi.sense import LBA_OUT_OF_RANGE, CheckCondition, SenseKey  # noqa: E402
from target.scsi.task import Nexus, ScsiTask, Status, TaskAttr  # noqa: E402
from target.trace import read as read_trace  # noqa: E402

CHECK_EVERY = 64
BLOCKS = 8  # 4 KiB of 512-byte blocks
NEXUS = Nexus("iqn.2026-11.local.bench:host,i,0x1", "iqn.2026-11.local.bench:t,t,0x1",
              initiator_name="iqn.2026-11.local.bench:host")
PEER = "127.0.0.1:51234"


def load(module: str | None):
    if module is None:
        import target.trace as trace

        return trace
    spec = importlib.util.spec_from_file_location("trace_under_test", module)
    trace = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trace)
    return trace


def tasks(n: int) -> list[tuple[ScsiTask, int, int, int | None]]:
    """(task, start_ns, end_ns, queued) for n completed commands."""
    rnd = random.Random(14)
    data = memoryview(bytes(BLOCKS * 512))
    sense = CheckCondition(SenseKey.ILLEGAL_REQUEST, LBA_OUT_OF_RANGE).sense(False)
    out = []
    now = time.perf_counter_ns()
    for i in range(n):
        write = rnd.random() < 0.5
        lba = rnd.randrange(0, 1 << 24) & ~7
        cdb = struct.pack(">BBIBHB", 0x2A if write else 0x28, 0, lba, 0, BLOCKS, 0) + bytes(6)
        task = ScsiTask(NEXUS, 0, cdb, tag=i, attr=TaskAttr.SIMPLE,
                        data_out=data if write else None,
                        expected_in=0 if write else len(data))
        DISK_COMMANDS.parse(task)
        if i % CHECK_EVERY == CHECK_EVERY - 1:
            task.status = Status.CHECK_CONDITION
            task.sense = sense
        elif not write:
            task.data_in = data
        start = now + i * 20_000
        out.append((task, start, start + rnd.randrange(30_000, 900_000),
                    rnd.randrange(0, 32) if i % 2 else None))
    return out


def run(trace, work: list, directory: Path) -> tuple[float, float, float]:
    """ns per record: (record, close, total), CPU time."""
    path = directory / "bench.trace"
    path.unlink(missing_ok=True)
    tracer = trace.Tracer(path)
    record = tracer.record
    p0 = time.process_time_ns()
    t0 = time.thread_time_ns()
    for task, start, end, queued in work:
        record(PEER, task, start, end, queued)
    t1 = time.thread_time_ns()
    tracer.close()
    t2 = time.thread_time_ns()
    p1 = time.process_time_ns()
    got = sum(1 for _ in read_trace(path))  # this tree's reader reads either format
    if got != len(work):
        raise SystemExit(f"{path}: {got} records read back for {len(work)} recorded")
    n = len(work)
    return (t1 - t0) / n, (t2 - t1) / n, (p1 - p0) / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=200_000, help="records per run")
    ap.add_argument("--repeat", type=int, default=5, help="runs; the best is reported")
    ap.add_argument("--module", help="the trace.py to measure (default: this tree's)")
    args = ap.parse_args(argv)
    trace = load(args.module)
    work = tasks(args.n)
    best = None
    with tempfile.TemporaryDirectory() as d:
        for _ in range(args.repeat):
            got = run(trace, work, Path(d))
            best = got if best is None or got[2] < best[2] else best
    rec, close, total = best
    print(f"{args.module or 'target/trace.py'}: {args.n} records, best of {args.repeat}: "
          f"record {rec:.0f} ns, close {close:.0f} ns, total CPU {total:.0f} ns per record")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
