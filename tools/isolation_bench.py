"""tools/bench --isolation: does a slow medium on one LU hold up the other sessions?

    tools/bench --isolation                          # 2 x 10 s, flushes of 20 ms
    tools/bench --isolation --flush-ms 50 --seconds 20 --json isolation.json
    tools/bench --isolation --server-repo ../other-checkout   # the same, another commit

Rules of this tool (issue 11's measure of "nothing blocks the event loop"):
- One target serves two LUs: LUN 0 an image file on a disk (not tmpfs, --dir, default
  /var/tmp), LUN 1 a memory LU. Its medium is made slow the way a slow disk is: every
  fdatasync(2) of the server process takes --flush-ms longer (a sitecustomize module in
  the server's PYTHONPATH wraps os.fdatasync with a sleep that, like the system call,
  releases the GIL). The slowness is the same for any checkout, whatever its code does
  with flushes, so two commits are compared on one medium (--server-repo).
- The reader: one session, 4 KiB READ(10)s at random LBAs of LUN 1, one at a time,
  each timed from send to status in its own process (target.shell.initiator, so the
  writer's process cannot delay its clock). The writer: another session and process,
  4 KiB WRITE(10)s with FUA=1 at random LBAs of LUN 0, one after the other: every one
  needs a flush (SBC-4 4.15), so the slow medium is busy all the time.
- Phases, each --seconds long: the reader alone (idle), then the reader with the writer
  (loaded); --rounds times. Reported: the reader's p50, p99 and max latency in each phase,
  the writer's FUA writes per second, and loaded p99 / idle p99 (the goal: at most 2).
- Processes are stopped by PID; the image is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from target.shell.initiator import Initiator  # noqa: E402
from target.testing.servers import OurTarget, ServerError, initiator_iqn  # noqa: E402

IQN = "iqn.2026-12.local.scsi-target:isolation"
BS = 512
SITECUSTOMIZE = '''\
"""tools/isolation_bench.py: a slow medium, for this server process only."""
import os
import time

_delay = float(os.environ.get("ISOLATION_BENCH_FLUSH_MS", "0")) / 1000
if _delay > 0:
    _fdatasync = os.fdatasync

    def _slow_fdatasync(fd):
        time.sleep(_delay)
        return _fdatasync(fd)

    os.fdatasync = _slow_fdatasync
'''


def config(image: Path, size: int) -> str:
    return (f'[[target]]\niqn = "{IQN}"\n\n'
            f'[[target.lun]]\nlun = 0\nstore = "file"\npath = "{image}"\nsize = {size}\n\n'
            f'[[target.lun]]\nlun = 1\nstore = "memory"\nsize = {size}\n')


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ---------------------------------------------------------------- the client processes

def client(role: str, port: int, seconds: float, seed: int) -> None:
    """One session doing its role until `seconds` pass; prints a JSON line of figures."""
    rng = random.Random(seed)
    ini = Initiator("127.0.0.1", port, IQN, initiator_name=initiator_iqn(f"isolation-{role}"),
                    isid=0x400000000000 + (1 if role == "reader" else 2), timeout=30)
    ini.login()
    lun = 1 if role == "reader" else 0
    while ini.command(bytes(6), lun=lun).status != 0:  # 29h/00h first (SAM-5 5.14)
        pass
    blocks = 8  # 4 KiB
    latencies: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        lba = rng.randrange(0, (64 << 20) // BS - blocks) // blocks * blocks
        if role == "reader":
            cdb = struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)
            t0 = time.perf_counter_ns()
            r = ini.command(cdb, lun=lun, read=blocks * BS)
        else:
            cdb = struct.pack(">BBIBHB", 0x2A, 0x08, lba, 0, blocks, 0)  # FUA
            t0 = time.perf_counter_ns()
            r = ini.command(cdb, lun=lun, data=bytes([lba & 0xFF]) * (blocks * BS))
        latencies.append((time.perf_counter_ns() - t0) / 1e6)
        if r.status != 0:
            raise SystemExit(f"{role}: status {r.status:#x} at LBA {lba}")
    ini.logout()
    ini.close()
    print(json.dumps({"role": role, "n": len(latencies), "seconds": seconds,
                      "p50_ms": percentile(latencies, 0.50),
                      "p99_ms": percentile(latencies, 0.99), "max_ms": max(latencies),
                      "mean_ms": statistics.fmean(latencies)}), flush=True)


def start_client(role: str, port: int, seconds: float, seed: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, role, str(port), str(seconds),
                             str(seed)], stdout=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float) -> dict:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError("a client did not finish in time") from None
    if proc.returncode != 0:
        raise RuntimeError(f"a client failed with {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1])


# ---------------------------------------------------------------- the benchmark

def run(args: argparse.Namespace) -> dict:
    size = 64 << 20
    where = Path(args.dir)
    where.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="isolation-", dir=where))
    image = work / "slow.img"
    (work / "sitecustomize.py").write_text(SITECUSTOMIZE)
    conf = work / "isolation.toml"
    conf.write_text(config(image, size))
    env = dict(os.environ, ISOLATION_BENCH_FLUSH_MS=str(args.flush_ms), PYTHONPATH=str(work))
    rounds = []
    server_args = [a for a in args.ours_args.split() if a]
    with OurTarget(server_args, conf, workdir=work, iqn=IQN, env=env,
                   repo=Path(args.server_repo) if args.server_repo else None) as target:
        for n in range(args.rounds):
            seed = args.seed + n
            idle = finish(start_client("reader", target.port, args.seconds, seed),
                          args.seconds * 4 + 30)
            writer = start_client("writer", target.port, args.seconds + 1, seed)
            time.sleep(0.5)  # the writer is logged in and busy
            reader = start_client("reader", target.port, args.seconds, seed + 1000)
            loaded = finish(reader, args.seconds * 4 + 30)
            wrote = finish(writer, args.seconds * 4 + 30)
            rounds.append({"idle": idle, "loaded": loaded, "writer": wrote,
                           "p99_ratio": loaded["p99_ms"] / idle["p99_ms"]})
            print(f"isolation: round {n + 1}: reader idle p50 {idle['p50_ms']:.3f} ms "
                  f"p99 {idle['p99_ms']:.3f} ms; with the FUA writer p50 "
                  f"{loaded['p50_ms']:.3f} ms p99 {loaded['p99_ms']:.3f} ms max "
                  f"{loaded['max_ms']:.1f} ms; writer {wrote['n'] / wrote['seconds']:.0f} "
                  f"FUA writes/s; p99 ratio {loaded['p99_ms'] / idle['p99_ms']:.2f}",
                  file=sys.stderr)
    image.unlink(missing_ok=True)
    return {"meta": {"flush_ms": args.flush_ms, "seconds": args.seconds,
                     "rounds": args.rounds, "server_repo": str(args.server_repo or REPO),
                     "dir": str(where), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
            "rounds": rounds}


def main(args: argparse.Namespace) -> int:
    try:
        result = run(args)
    except (ServerError, RuntimeError) as e:
        print(f"isolation: {e}", file=sys.stderr)
        return 2
    best = min(result["rounds"], key=lambda r: r["p99_ratio"])
    worst = max(result["rounds"], key=lambda r: r["p99_ratio"])
    print(f"reader 4 KiB QD1 on a memory LU, while another session writes 4 KiB FUA to a "
          f"file LU whose flushes take {args.flush_ms:g} ms more:")
    for r in result["rounds"]:
        i, lo = r["idle"], r["loaded"]
        print(f"  idle p99 {i['p99_ms']:7.3f} ms | loaded p99 {lo['p99_ms']:7.3f} ms "
              f"(max {lo['max_ms']:6.1f}) | ratio {r['p99_ratio']:6.2f} | "
              f"writer {r['writer']['n'] / r['writer']['seconds']:5.0f}/s")
    print(f"p99 ratio: best {best['p99_ratio']:.2f}, worst {worst['p99_ratio']:.2f} "
          f"(goal: at most 2)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    client(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
